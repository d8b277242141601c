"""The abuse layer's settings: one frozen dataclass, production defaults.

Owns: what `[edge.abuse]` can set and its defaults (docs/configuration.md
documents each key; edge/config.py parses the table into `AbuseConfig`).
Must not touch: parsing or files (edge/config.py), state (edge/abuse/tracker.py).

Host limits apply to one IPv4 address (/32) or one IPv6 /64; a network (IPv4
/24, IPv6 /48) gets `net_factor` times each host limit, so one address of a
NAT or a campus does not block its neighbours, and a source that spreads over
its /24 is still caught.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AbuseConfig:
    enabled: bool = True
    # CIDRs never blocked (health checkers, monitoring); loopback: processes on the edge's own machine
    exempt: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    table_size: int = 65536                   # sources remembered per table (hosts, networks): LRU eviction
    max_blocks: int = 16384                   # prefixes blocked at once (oldest block dropped beyond)
    net_factor: int = 8                       # a /24 or /48 may do this many times a host's limits
    connections_per_second: float = 50.0      # new connections, token bucket rate ...
    connections_burst: int = 200              # ... and depth
    max_concurrent: int = 256                 # open connections of one host at once
    handshakes_per_second: float = 50.0       # TLS handshakes (successful or not)
    handshakes_burst: int = 200
    requests_per_second: float = 500.0        # HTTP requests to one endpoint (request flood)
    requests_burst: int = 1000
    window: float = 10.0                      # seconds: the window of the pattern counts below
    slow_headers: int = 5                     # slowloris: heads/bodies too slow or timed out, per window
    idle_connections: int = 20                # connections the edge closed for sending nothing, per window
    error_ratio: float = 0.5                  # share of errors (edge 4xx, failed handshakes, malformed) ...
    error_min_events: int = 40                # ... once a window holds this many events
    block_durations: tuple[float, ...] = (10.0, 60.0, 600.0)   # seconds, by repeat offence
    escalation_decay: float = 600.0           # seconds without a block that forget one offence
