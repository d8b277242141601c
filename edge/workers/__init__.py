"""`gslb edge --workers N`: N processes serving one PoP, one supervisor (docs/workers.md).

Owns: binding every listener in the supervisor (as root, before --user drops), forking and
restarting workers (supervisor.py), the registry the workers share (ipc.py: the supervisor's
MemoryRegistry over Unix sockets) and handing a client connection to the worker that owns its
endpoint without decrypting it (handover.py). Must not touch: what a worker does with a
connection (edge/server.py dispatches; it only asks `WorkerSlot.owner_of` first).
"""
from __future__ import annotations

import socket
from dataclasses import dataclass, field


@dataclass
class WorkerSlot:
    """What one worker gets from the supervisor: its sockets, all bound before the fork."""

    index: int
    count: int
    https: list[socket.socket] = field(default_factory=list)      # its own SO_REUSEPORT :443 sockets
    http: list[socket.socket] = field(default_factory=list)       # its own SO_REUSEPORT :80 sockets
    tcp: dict[int, list[socket.socket]] = field(default_factory=dict)   # shared: served by the owner only
    health: socket.socket | None = None                           # worker 0 only
    handover_in: socket.socket | None = None                      # connections handed to this worker
    handover_out: list[socket.socket] = field(default_factory=list)   # index -> that worker's channel
    registry: socket.socket | None = None                         # its end of the registry connection
    stats_ask: dict[int, socket.socket] = field(default_factory=dict)  # worker 0: index -> ask that worker
    stats_serve: socket.socket | None = None                      # workers 1..N-1: worker 0 asks here

    def fds(self) -> set[int]:
        socks = [*self.https, *self.http, *(s for v in self.tcp.values() for s in v), *self.handover_out]
        socks += [s for s in (self.health, self.handover_in, self.registry, self.stats_serve) if s is not None]
        socks += list(self.stats_ask.values())
        return {s.fileno() for s in socks}


__all__ = ["WorkerSlot"]
