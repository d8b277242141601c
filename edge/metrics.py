"""`/metrics` for `gslb edge` (docs/metrics.md), served on the health listener.

The data path bumps plain counters (`EdgeCounters`: dict and list adds, no
prometheus_client call per request or connection); `EdgeCollector` turns them,
and what the hub, the peer links and the protection components (`stats()`)
report, into metric families at scrape time.

Protection components: every module of the chain with a `stats()` method
(circuit breaker, rate limit, ...) shows up as gslb_edge_module_stat{module,stat};
the abuse tracker (`server.abuse`, when there is one) as gslb_edge_abuse_stat{stat};
the ACME manager (`server.acme`) as gslb_edge_acme_stat{stat}.
"""
from __future__ import annotations

from bisect import bisect_left
from typing import Any, Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from plumbing.stats import stats_of

# Seconds from a request head let through to its response head (upstream answers).
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
MAX_ENDPOINTS = 1000   # distinct endpoint labels; names past that count as "other" (SNI is client input)
KINDS = ("https", "tls", "tcp", "agent")


_CLASSES = ("other", "1xx", "2xx", "3xx", "4xx", "5xx")
_ORIGINS = ("upstream", "edge")
BYTE_KINDS = ("https", "tls", "tcp")


class EdgeCounters:
    """What the data path counts: a few list and dict adds per request or connection
    (no string is built, no prometheus_client call is made; the collector names things)."""

    def __init__(self) -> None:
        self.connections = dict.fromkeys(KINDS, 0)
        # endpoint -> 12 counts: [status class 0-5 (other, 1xx..5xx)] for the upstream, then for the edge
        self.requests: dict[str, list[int]] = {}
        self.bytes_in = dict.fromkeys(BYTE_KINDS, 0)          # from clients, of ended connections
        self.bytes_out = dict.fromkeys(BYTE_KINDS, 0)         # to clients
        self.buckets = [0] * (len(DURATION_BUCKETS) + 1)      # per bucket, not cumulative; last: +Inf
        self.duration_sum = 0.0
        self.decisions: dict[tuple[str, str], int] = {}       # (module, verdict) -> n

    def connection(self, kind: str) -> None:
        self.connections[kind] += 1

    def _row(self, endpoint: str) -> list[int]:
        if len(self.requests) >= MAX_ENDPOINTS:
            endpoint = "other"
            row = self.requests.get(endpoint)
            if row is not None:
                return row
        row = self.requests[endpoint] = [0] * 12
        return row

    def request(self, endpoint: str, status: int, origin: str) -> None:
        """One response to a client: from the upstream (via the agent) or from the edge itself."""
        row = self.requests.get(endpoint) or self._row(endpoint)
        c = status // 100
        row[(c if 0 < c < 6 else 0) + (6 if origin == "edge" else 0)] += 1

    def response(self, endpoint: str, status: int, seconds: float) -> None:
        """An upstream's response head, `seconds` after its request head was let through."""
        row = self.requests.get(endpoint) or self._row(endpoint)
        c = status // 100
        row[c if 0 < c < 6 else 0] += 1
        self.buckets[bisect_left(DURATION_BUCKETS, seconds)] += 1
        self.duration_sum += seconds

    def page_status(self, endpoint: str, page: bytes) -> None:
        """An answer the edge wrote itself ("HTTP/1.1 NNN ...")."""
        code = page[9:12]
        self.request(endpoint, int(code) if code.isdigit() else 0, "edge")

    def decided(self, decision: Any) -> None:
        # Verdict's _value_ (its string): an Enum member's own hash and .value are Python-level calls.
        key = (decision.module, decision.verdict._value_)
        self.decisions[key] = self.decisions.get(key, 0) + 1

    def transferred(self, kind: str, bytes_in: int, bytes_out: int) -> None:
        """A connection ended: bytes from the client (in) and to it (out)."""
        self.bytes_in[kind] += bytes_in
        self.bytes_out[kind] += bytes_out

    def request_counts(self) -> dict[tuple[str, str, str], int]:
        """{(endpoint, "2xx", origin): n} for the counts that are not zero."""
        return request_counts(self.requests)


# Counters nobody exposes: a front made without a server (tests) counts here.
DISCARD = EdgeCounters()


def _add(a: Any, b: Any) -> Any:
    """a + b over numbers, lists of numbers (element by element) and dicts (key by key)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = dict(a)
        for k, v in b.items():
            out[k] = _add(out[k], v) if k in out else v
        return out
    if isinstance(a, list) and isinstance(b, list):
        n = max(len(a), len(b))
        return [_add(a[i] if i < len(a) else 0, b[i] if i < len(b) else 0) for i in range(n)]
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a + b
    return a


def local_snapshot(server: Any) -> dict[str, Any]:
    """This process's counters and gauges, JSON-able (what another worker sends worker 0)."""
    c: EdgeCounters = server.metrics
    st = server.stats
    hub = server.hub
    modules: dict[str, dict[str, float]] = {}
    for m in getattr(server.chain, "modules", ()):
        name = getattr(m, "name", "") or type(m).__name__
        modules[name] = _add(modules.get(name, {}), stats_of(m))
    tracker, manager = getattr(server, "abuse", None), getattr(server, "acme", None)
    peers = getattr(hub, "peers", None)
    return {
        "connections": dict(c.connections),
        "requests": {k: list(v) for k, v in list(c.requests.items())},
        "bytes_in": dict(c.bytes_in), "bytes_out": dict(c.bytes_out),
        "buckets": list(c.buckets), "duration_sum": c.duration_sum,
        "decisions": {f"{m or 'none'}\0{v}": n for (m, v), n in list(c.decisions.items())},
        "stats": {"open": st.open, "refused_limit": st.refused_limit, "bad_hello": st.bad_hello,
                  "accept_errors": st.accept_errors, "accepted": st.accepted, "requests": st.requests,
                  "handed_over": st.handed_over, "handed_in": st.handed_in, "handover_failed": st.handover_failed},
        "modules": modules,
        "abuse": stats_of(tracker) if tracker is not None else {},
        "acme": stats_of(manager) if manager is not None else {},
        "hub": {k: hub.stats()[k] for k in ("sessions", "bindings", "streams")},
        "links": {pop: len(getattr(sess, "streams", ())) for pop, sess in getattr(peers, "sessions", {}).items()},
        "registry_errors": getattr(hub, "registry_errors", 0),
    }


def merge(snaps: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The sum of several workers' snapshots: counters and gauges (open connections, sessions,
    a module's table sizes) alike, key by key; "seq" (the asker's) is dropped."""
    out: dict[str, Any] = {}
    for snap in snaps:
        out = _add(out, {k: v for k, v in snap.items() if k != "seq"})
    return out


class EdgeCollector(Collector):
    """Metric families from `snapshot` (the sum over workers, set before each scrape) or, when it
    is None, from this process's counters."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.snapshot: dict[str, Any] | None = None
        self.workers: int | None = None       # --workers: how many processes serve
        self.answering = 0                    # of them, counted in the newest scrape
        self.timeouts = 0

    def collect(self) -> Iterable[Any]:
        snap = self.snapshot if self.snapshot is not None else local_snapshot(self.server)
        conns = CounterMetricFamily("gslb_edge_connections", "Connections accepted and dispatched, by kind",
                                    labels=["kind"])
        for kind in KINDS:
            conns.add_metric([kind], snap["connections"].get(kind, 0))
        yield conns
        st = snap["stats"]
        yield GaugeMetricFamily("gslb_edge_connections_open", "Client connections open now", value=st["open"])
        yield CounterMetricFamily("gslb_edge_connections_refused", "Connections closed at once: over max_connections",
                                  value=st["refused_limit"])
        yield CounterMetricFamily("gslb_edge_bad_client_hello", "Connections closed: no valid TLS ClientHello",
                                  value=st["bad_hello"])
        yield CounterMetricFamily("gslb_edge_accept_errors", "accept() failures (EMFILE ...)",
                                  value=st["accept_errors"])
        reqs = CounterMetricFamily("gslb_edge_requests", "HTTP responses to clients, by endpoint, status class, origin",
                                   labels=["endpoint", "code", "origin"])
        for key, n in sorted(request_counts(snap["requests"]).items()):
            reqs.add_metric(list(key), n)
        yield reqs
        bts = CounterMetricFamily("gslb_edge_bytes", "Bytes of ended client connections, by kind and direction",
                                  labels=["kind", "direction"])
        for kind in BYTE_KINDS:
            bts.add_metric([kind, "in"], snap["bytes_in"].get(kind, 0))
            bts.add_metric([kind, "out"], snap["bytes_out"].get(kind, 0))
        yield bts
        cum, buckets = 0, []
        for le, n in zip((*map(repr, DURATION_BUCKETS), "+Inf"), snap["buckets"]):
            cum += n
            buckets.append((le, cum))
        yield HistogramMetricFamily("gslb_edge_request_duration_seconds",
                                    "From a request head let through to the upstream's response head",
                                    buckets=buckets, sum_value=snap["duration_sum"])
        dec = CounterMetricFamily("gslb_edge_module_decisions", "Module chain decisions, by deciding module and verdict",
                                  labels=["module", "verdict"])
        for key, n in sorted(snap["decisions"].items()):
            dec.add_metric(key.split("\0", 1), n)
        yield dec
        mod = GaugeMetricFamily("gslb_edge_module_stat", "A chain module's stats() values (summed over workers)",
                                labels=["module", "stat"])
        for name, stats in snap["modules"].items():
            for k, v in sorted(stats.items()):
                mod.add_metric([name, k], v)
        yield mod
        abuse = GaugeMetricFamily("gslb_edge_abuse_stat", "The abuse tracker's stats() values (summed over workers)",
                                  labels=["stat"])
        for k, v in sorted(snap["abuse"].items()):
            abuse.add_metric([k], v)
        yield abuse
        acme = GaugeMetricFamily("gslb_edge_acme_stat", "The ACME manager's stats() values (docs/acme.md)",
                                 labels=["stat"])
        for k, v in sorted(snap["acme"].items()):
            acme.add_metric([k], v)
        yield acme
        hs = snap["hub"]
        yield GaugeMetricFamily("gslb_edge_agent_sessions", "Agent tunnel sessions connected now", value=hs["sessions"])
        yield GaugeMetricFamily("gslb_edge_bindings", "Endpoints bound on this PoP now", value=hs["bindings"])
        yield GaugeMetricFamily("gslb_edge_tunnel_streams", "Streams open in agent sessions now", value=hs["streams"])
        links = GaugeMetricFamily("gslb_edge_peer_link_streams", "Streams open on the link to a peer PoP",
                                  labels=["peer"])
        for pop, n in sorted(snap["links"].items()):
            links.add_metric([pop], n)
        yield links
        yield CounterMetricFamily("gslb_edge_registry_errors", "Registry operations that failed (bind, unbind)",
                                  value=snap["registry_errors"])
        if self.workers is not None:
            yield GaugeMetricFamily("gslb_edge_workers", "Worker processes of this edge (--workers)",
                                    value=self.workers)
            yield GaugeMetricFamily("gslb_edge_workers_answering",
                                    "Workers counted in this scrape (the others did not answer in time)",
                                    value=self.answering)
            yield CounterMetricFamily("gslb_edge_worker_scrape_timeouts",
                                      "Scrapes a worker did not answer in time (left out of that scrape)",
                                      value=self.timeouts)


def request_counts(requests: dict[str, list[int]]) -> dict[tuple[str, str, str], int]:
    """{(endpoint, "2xx", origin): n} for the counts that are not zero."""
    out = {}
    for endpoint, row in list(requests.items()):
        for i, n in enumerate(row):
            if n:
                out[(endpoint, _CLASSES[i % 6], _ORIGINS[i // 6])] = n
    return out


class EdgeWorkerStats:
    """Worker 0 of `gslb edge --workers N`: asks workers 1..N-1 at each scrape
    (plumbing/workerstats.py) and sums their snapshots with its own. A worker that does not answer
    within `timeout` is left out of that scrape (gslb_edge_workers_answering says how many were
    counted) and never blocks it for longer."""

    def __init__(self, server: Any, socks: dict[int, Any], timeout: float = 1.0) -> None:
        from plumbing.workerstats import SnapshotAsker
        self.server = server
        self.timeout = timeout
        self.asker = SnapshotAsker(merge, dict, keep_retired=False)
        for index, sock in socks.items():
            self.asker.add(index, sock)
        self.count = len(socks) + 1

    async def collect(self) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
        """(the sum over this worker and the workers that answered, {worker index: its snapshot})."""
        await self.asker.collect(self.timeout, fresh_only=True)
        each = {0: local_snapshot(self.server)}
        each.update({k: v for k, v in sorted(self.asker.last.items()) if k in self.asker.fresh})
        return merge(each.values()), each


# /healthz key -> where it is in a snapshot (summed over workers with --workers)
_HEALTH_SUMS = {"sessions": ("hub", "sessions"), "bindings": ("hub", "bindings"), "connections": ("stats", "open"),
                "accepted": ("stats", "accepted"), "requests": ("stats", "requests"),
                "refused_limit": ("stats", "refused_limit"), "accept_errors": ("stats", "accept_errors"),
                "bad_client_hello": ("stats", "bad_hello"), "handed_over": ("stats", "handed_over"),
                "handed_in": ("stats", "handed_in"), "handover_failed": ("stats", "handover_failed")}


def health_totals(local: dict[str, Any], total: dict[str, Any], each: dict[int, dict[str, Any]],
                  workers: int) -> dict[str, Any]:
    """Worker 0's /healthz made the edge's: the same keys, summed over the workers in `each`
    (`total` is their merge), plus "workers_answering" and "per_worker" (index -> its counts)."""
    out = dict(local)
    for key, (part, field) in _HEALTH_SUMS.items():
        out[key] = total.get(part, {}).get(field, 0)
    out["workers"] = workers
    out["workers_answering"] = len(each)
    out["per_worker"] = {str(i): {key: snap.get(part, {}).get(field, 0) for key, (part, field) in _HEALTH_SUMS.items()}
                         for i, snap in sorted(each.items())}
    return out


def registry_for(server: Any) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(EdgeCollector(server))
    return reg


def add_route(app: Any, server: Any) -> None:
    """GET /metrics on the health listener's aiohttp app. With --workers (worker 0 serves the
    health listener) the sum over every worker that answers (`server.worker_stats`)."""
    from aiohttp import web
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    collector = EdgeCollector(server)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)

    async def metrics(request: web.Request) -> web.Response:
        ws = getattr(server, "worker_stats", None)
        if ws is not None:
            collector.snapshot, each = await ws.collect()
            collector.workers, collector.answering, collector.timeouts = ws.count, len(each), ws.asker.timeouts
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/metrics", metrics)
