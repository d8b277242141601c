"""The abuse tracker: per-source accounting, pattern rules, escalating blocks.

Owns: the per-source tables (hosts: IPv4 /32, IPv6 /64; networks: IPv4 /24,
IPv6 /48), their token buckets and window counters, the rules that turn
them into blocks, the block list with its escalation and expiry, and the
counters of `stats()`. Sans-IO: it is fed events and `now` (seconds, any
monotonic clock) by the shells (edge/server.py at accept and after the TLS
handshake, edge/front/http_front.py per request and per connection end) and
answers whether the source may go on. It logs through the `on_log(event,
fields)` callback it is given: one abuse_block and one abuse_unblock per
block, never one line per refused connection (those are counted).
Must not touch: sockets, the clock, the module chain.

Cost on the data path: with nothing blocked, `admit` is two table look-ups
(host, network) per connection, `request` one per-endpoint bucket per table
(the connection holds its `Conn`, so no source look-up per request); the
block list is consulted only while it holds something.
"""
from __future__ import annotations

import heapq
from collections import OrderedDict
from typing import Any, Callable

from edge.abuse.config import AbuseConfig
from edge.abuse.source import Exempt, keys

REASONS = ("connection_rate", "concurrent", "handshake_rate", "request_flood", "slowloris",
           "idle_connections", "error_ratio")
ERROR_KINDS = ("edge_4xx", "malformed", "handshake_failed")
SLOW_KINDS = ("slow_header", "header_timeout", "slow_body")
IDLE = "idle"
_MAX_ENDPOINTS = 32   # per-endpoint request buckets kept per source


class Source:
    """One prefix's counters. Buckets are [tokens, last_refill]."""

    __slots__ = ("key", "exempt", "conn_bucket", "hs_bucket", "endpoints", "open", "win_start", "slow",
                 "idle", "errors", "events", "connections", "requests", "bytes")

    def __init__(self, key: str, exempt: bool, burst_conn: float, burst_hs: float, now: float) -> None:
        self.key = key
        self.exempt = exempt
        self.conn_bucket = [burst_conn, now]
        self.hs_bucket = [burst_hs, now]
        self.endpoints: OrderedDict[str, list[float]] = OrderedDict()
        self.open = 0
        self.win_start = now
        self.slow = 0
        self.idle = 0
        self.errors = 0
        self.events = 0
        self.connections = 0
        self.requests = 0
        self.bytes = 0


class Conn:
    """What a shell holds for one accepted connection and hands back with its events."""

    __slots__ = ("host", "net", "requests", "closed", "endpoint", "host_bucket", "net_bucket")

    def __init__(self, host: Source, net: Source) -> None:
        self.host = host
        self.net = net
        self.requests = 0
        self.closed = False
        self.endpoint: str | None = None      # the endpoint of the buckets below
        self.host_bucket: list[float] = []
        self.net_bucket: list[float] = []


class Block:
    __slots__ = ("prefix", "reason", "since", "until", "duration", "offence", "refused")

    def __init__(self, prefix: str, reason: str, since: float, duration: float, offence: int) -> None:
        self.prefix = prefix
        self.reason = reason
        self.since = since
        self.until = since + duration
        self.duration = duration
        self.offence = offence
        self.refused = 0


def _take(bucket: list[float], rate: float, burst: float, now: float) -> bool:
    """Token bucket: True when a token was there (then it is taken)."""
    tokens = bucket[0] + (now - bucket[1]) * rate
    if tokens > burst:
        tokens = burst
    bucket[1] = now
    if tokens >= 1.0:
        bucket[0] = tokens - 1.0
        return True
    bucket[0] = tokens
    return False


class AbuseTracker:
    def __init__(self, cfg: AbuseConfig, on_log: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self.cfg = cfg
        self.on_log = on_log
        self.exempt = Exempt(cfg.exempt)
        f = float(cfg.net_factor)
        # (rate, burst) for hosts and for networks
        self._conn_limits = ((cfg.connections_per_second, float(cfg.connections_burst)),
                             (cfg.connections_per_second * f, cfg.connections_burst * f))
        self._hs_limits = ((cfg.handshakes_per_second, float(cfg.handshakes_burst)),
                           (cfg.handshakes_per_second * f, cfg.handshakes_burst * f))
        self._req_limits = ((cfg.requests_per_second, float(cfg.requests_burst)),
                            (cfg.requests_per_second * f, cfg.requests_burst * f))
        self._concurrent = (cfg.max_concurrent, cfg.max_concurrent * cfg.net_factor)
        self._window_s = cfg.window
        self._slow = (cfg.slow_headers, cfg.slow_headers * cfg.net_factor)
        self._idle = (cfg.idle_connections, cfg.idle_connections * cfg.net_factor)
        self.hosts: OrderedDict[str, Source] = OrderedDict()
        self.nets: OrderedDict[str, Source] = OrderedDict()
        self.blocks: dict[str, Block] = {}
        self._expiry: list[tuple[float, str]] = []     # heap of (until, prefix)
        self._offences: OrderedDict[str, tuple[int, float]] = OrderedDict()  # prefix -> (offences, last until)
        self.counts: dict[str, int] = dict.fromkeys((
            "connections", "handshakes", "handshake_failures", "requests", "errors", "slow", "idle",
            "bytes", "refused", "answered", "blocks", "unblocks", "evicted", "blocks_evicted",
            "bad_address"), 0)
        for r in REASONS:
            self.counts["blocks_" + r] = 0

    # -- the shells' events ----------------------------------------------------------
    def admit(self, addr: str, now: float) -> Conn | None:
        """A connection was accepted from `addr`: its Conn, or None when the
        source is blocked (or this connection makes it so): close it, send nothing."""
        try:
            hkey, nkey = keys(addr)
        except ValueError:
            self.counts["bad_address"] += 1
            return None
        if self.blocks and self._blocked_key(hkey, nkey, addr, now):
            return None
        host = self._source(self.hosts, hkey, addr, now, 0)
        net = self._source(self.nets, nkey, addr, now, 1)
        self.counts["connections"] += 1
        host.connections += 1
        if host.exempt:
            # counted as itself only: an exempt checker's connections must not fill its /24's budget
            host.open += 1
            return Conn(host, net)
        net.connections += 1
        reason = None
        if not _take(host.conn_bucket, *self._conn_limits[0], now):
            reason, victim = "connection_rate", host
        elif not _take(net.conn_bucket, *self._conn_limits[1], now):
            reason, victim = "connection_rate", net
        elif host.open >= self._concurrent[0]:
            reason, victim = "concurrent", host
        elif net.open >= self._concurrent[1]:
            reason, victim = "concurrent", net
        if reason is not None:
            self._block(victim, reason, now)
            self.counts["refused"] += 1
            self.blocks[victim.key].refused += 1
            return None
        host.open += 1
        net.open += 1
        return Conn(host, net)

    def handshake(self, conn: Conn, ok: bool, now: float) -> bool:
        """A TLS handshake ended; False when the source is (now) blocked."""
        self.counts["handshakes"] += 1
        host, net = conn.host, conn.net
        if host.exempt:
            return True
        if not ok:
            self.counts["handshake_failures"] += 1
        if not _take(host.hs_bucket, *self._hs_limits[0], now):
            self._block(host, "handshake_rate", now)
            return False
        if not _take(net.hs_bucket, *self._hs_limits[1], now):
            self._block(net, "handshake_rate", now)
            return False
        if not self._event(conn, now, error=not ok):
            return False
        return not (self.blocks and self._conn_blocked(conn, now))

    def request(self, conn: Conn, endpoint: str, now: float) -> bool:
        """An HTTP request head to `endpoint` arrived: False when the source is
        (now) blocked; the edge answers 429 ERR_GSLB_3430 and closes.

        The hot path: the connection keeps its endpoint's buckets (a front's
        endpoint is its SNI, one per connection), so no table look-up here."""
        conn.requests += 1
        host = conn.host
        host.requests += 1
        self.counts["requests"] += 1
        if host.exempt:
            return True
        if self.blocks and self._conn_blocked(conn, now):
            self.counts["answered"] += 1
            return False
        if conn.endpoint != endpoint:
            conn.endpoint = endpoint
            conn.host_bucket = self._endpoint_bucket(host, endpoint, 0, now)
            conn.net_bucket = self._endpoint_bucket(conn.net, endpoint, 1, now)
        (hrate, hburst), (nrate, nburst) = self._req_limits
        b = conn.host_bucket                    # _take, inlined: this runs for every request
        tokens = b[0] + (now - b[1]) * hrate
        b[1] = now
        b[0] = (hburst if tokens > hburst else tokens) - 1.0
        if b[0] < 0.0:
            b[0] += 1.0
            self._block(host, "request_flood", now)
            self.counts["answered"] += 1
            return False
        net = conn.net
        b = conn.net_bucket
        tokens = b[0] + (now - b[1]) * nrate
        b[1] = now
        b[0] = (nburst if tokens > nburst else tokens) - 1.0
        if b[0] < 0.0:
            b[0] += 1.0
            self._block(net, "request_flood", now)
            self.counts["answered"] += 1
            return False
        # one more event for the error ratio (what _event does, without an error)
        if now - host.win_start >= self._window_s:
            self._window(host, now)
        if now - net.win_start >= self._window_s:
            self._window(net, now)
        host.events += 1
        net.events += 1
        return True

    def _endpoint_bucket(self, src: Source, endpoint: str, level: int, now: float) -> list[float]:
        eps = src.endpoints
        b = eps.get(endpoint)
        if b is None:
            b = eps[endpoint] = [self._req_limits[level][1], now]
            if len(eps) > _MAX_ENDPOINTS:
                eps.popitem(last=False)
        return b

    def error(self, conn: Conn, kind: str, now: float) -> bool:
        """The edge answered a request with a 4xx ("edge_4xx") or found it
        malformed ("malformed"); a TLS handshake failed ("handshake_failed");
        a head or body came too slowly ("slow_header", "header_timeout",
        "slow_body"); or the edge closed a connection that sent nothing within
        its timeout ("idle": no ClientHello, no first request head; a client
        that connects and closes at once, as a TCP health check does, is no
        pattern: it holds nothing). False: the source is now blocked."""
        host, net = conn.host, conn.net
        if kind == "idle":
            self.counts["idle"] += 1
            if host.exempt:
                return True
            self._window(host, now)
            self._window(net, now)
            host.idle += 1
            net.idle += 1
            if host.idle >= self._idle[0]:
                self._block(host, "idle_connections", now)
                return False
            if net.idle >= self._idle[1]:
                self._block(net, "idle_connections", now)
                return False
            return True
        if kind in SLOW_KINDS:
            self.counts["slow"] += 1
            if host.exempt:
                return True
            self._window(host, now)
            self._window(net, now)
            host.slow += 1
            net.slow += 1
            if host.slow >= self._slow[0]:
                self._block(host, "slowloris", now)
                return False
            if net.slow >= self._slow[1]:
                self._block(net, "slowloris", now)
                return False
            return True
        if kind == "handshake_failed":
            return self.handshake(conn, False, now)
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown abuse event kind {kind!r}")
        if host.exempt:
            self.counts["errors"] += 1
            return True
        return self._event(conn, now, error=True)

    def closed(self, conn: Conn, now: float, nbytes: int = 0) -> None:
        """A connection accepted by `admit` ended (once; later calls are ignored)."""
        if conn.closed:
            return
        conn.closed = True
        host, net = conn.host, conn.net
        host.open -= 1
        if not host.exempt:
            net.open -= 1
        host.bytes += nbytes
        self.counts["bytes"] += nbytes

    def expire(self, now: float) -> int:
        """Lift the blocks whose time is up (one abuse_unblock line each); how many."""
        n = 0
        heap = self._expiry
        while heap and heap[0][0] <= now:
            until, prefix = heapq.heappop(heap)
            b = self.blocks.get(prefix)
            if b is None or b.until != until:
                continue  # dropped or replaced meanwhile
            del self.blocks[prefix]
            self._fresh_start(prefix, now)
            n += 1
            self.counts["unblocks"] += 1
            self._log("abuse_unblock", prefix=prefix, reason=b.reason, duration_s=b.duration,
                      refused=b.refused)
        return n

    def is_blocked(self, addr: str, now: float) -> Block | None:
        """The block that holds `addr` now (host or network), None if none (exempt: None)."""
        try:
            hkey, nkey = keys(addr)
        except ValueError:
            return None
        if self._expiry and self._expiry[0][0] <= now:
            self.expire(now)
        b = self.blocks.get(hkey) or self.blocks.get(nkey)
        if b is None or self.exempt.contains(addr):
            return None
        return b

    def stats(self) -> dict[str, int | float]:
        """Counters (monotonic) and gauges: sources, networks, blocked."""
        out: dict[str, int | float] = dict(self.counts)
        out["sources"] = len(self.hosts)
        out["networks"] = len(self.nets)
        out["blocked"] = len(self.blocks)
        return out

    # -- inside ---------------------------------------------------------------------
    def _log(self, event: str, **fields: Any) -> None:
        if self.on_log is not None:
            self.on_log(event, fields)

    def _source(self, table: OrderedDict[str, Source], key: str, addr: str, now: float, level: int) -> Source:
        src = table.get(key)
        if src is not None:
            table.move_to_end(key)
            return src
        exempt = level == 0 and bool(self.exempt) and self.exempt.contains(addr)   # a host's, not a network's
        src = table[key] = Source(key, exempt, self._conn_limits[level][1], self._hs_limits[level][1], now)
        if len(table) > self.cfg.table_size:
            # Least recently seen first. A Conn may still hold an evicted Source:
            # its counts go on there, and the block list (own table) is not touched.
            table.popitem(last=False)
            self.counts["evicted"] += 1
        return src

    def _fresh_start(self, prefix: str, now: float) -> None:
        """A source whose block ends starts with full buckets and empty windows
        (its refused connections took no tokens, but a slow rate could leave the
        bucket empty and block it again at once); its open count stays true."""
        level = 0 if prefix in self.hosts else 1
        src = (self.hosts if level == 0 else self.nets).get(prefix)
        if src is None:
            return
        src.conn_bucket = [self._conn_limits[level][1], now]
        src.hs_bucket = [self._hs_limits[level][1], now]
        for b in src.endpoints.values():   # in place: connections hold them
            b[0], b[1] = self._req_limits[level][1], now
        src.win_start = now
        src.slow = src.idle = src.errors = src.events = 0

    def _window(self, src: Source, now: float) -> None:
        if now - src.win_start >= self.cfg.window:
            src.win_start = now
            src.slow = src.idle = src.errors = src.events = 0

    def _event(self, conn: Conn, now: float, error: bool) -> bool:
        """One handshake or request (an error or not) for the error ratio."""
        if error:
            self.counts["errors"] += 1
        cfg = self.cfg
        for src in (conn.host, conn.net):
            self._window(src, now)
            src.events += 1
            if error:
                src.errors += 1
                if src.events >= cfg.error_min_events and src.errors >= cfg.error_ratio * src.events:
                    self._block(src, "error_ratio", now)
                    return False
        return True

    def _blocked_key(self, hkey: str, nkey: str, addr: str, now: float) -> bool:
        if self._expiry[0][0] <= now:
            self.expire(now)
        b = self.blocks.get(hkey) or self.blocks.get(nkey)
        if b is None:
            return False
        src = self.hosts.get(hkey)
        exempt = src.exempt if src is not None else self.exempt.contains(addr)
        if exempt:
            return False
        b.refused += 1
        self.counts["refused"] += 1
        return True

    def _conn_blocked(self, conn: Conn, now: float) -> bool:
        if self._expiry[0][0] <= now:
            self.expire(now)
        return conn.host.key in self.blocks or conn.net.key in self.blocks

    def _block(self, src: Source, reason: str, now: float) -> None:
        prefix = src.key
        if prefix in self.blocks:
            return  # already blocked (events of connections accepted before the block)
        cfg = self.cfg
        done, last_until = self._offences.pop(prefix, (0, now))
        if done and cfg.escalation_decay > 0 and now > last_until:
            done = max(0, done - int((now - last_until) // cfg.escalation_decay))
        durations = cfg.block_durations
        duration = durations[min(done, len(durations) - 1)]
        b = Block(prefix, reason, now, duration, done + 1)
        self._offences[prefix] = (done + 1, b.until)
        while len(self._offences) > 4 * cfg.max_blocks:
            self._offences.popitem(last=False)
        self.blocks[prefix] = b
        heapq.heappush(self._expiry, (b.until, prefix))
        if len(self.blocks) > cfg.max_blocks:
            oldest = next(iter(self.blocks))
            del self.blocks[oldest]
            self.counts["blocks_evicted"] += 1
        if len(self._expiry) > 4 * cfg.max_blocks:
            # stale heap entries (dropped blocks): rebuild from what is held
            self._expiry = [(x.until, p) for p, x in self.blocks.items()]
            heapq.heapify(self._expiry)
        self.counts["blocks"] += 1
        self.counts["blocks_" + reason] += 1
        self._log("abuse_block", prefix=prefix, reason=reason, duration_s=duration, offence=done + 1)
