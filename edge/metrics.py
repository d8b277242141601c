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
        out = {}
        for endpoint, row in list(self.requests.items()):
            for i, n in enumerate(row):
                if n:
                    out[(endpoint, _CLASSES[i % 6], _ORIGINS[i // 6])] = n
        return out


# Counters nobody exposes: a front made without a server (tests) counts here.
DISCARD = EdgeCounters()


class EdgeCollector(Collector):
    def __init__(self, server: Any) -> None:
        self.server = server

    def collect(self) -> Iterable[Any]:
        srv = self.server
        c: EdgeCounters = srv.metrics
        conns = CounterMetricFamily("gslb_edge_connections", "Connections accepted and dispatched, by kind",
                                    labels=["kind"])
        for kind in KINDS:
            conns.add_metric([kind], c.connections[kind])
        yield conns
        st = srv.stats
        yield GaugeMetricFamily("gslb_edge_connections_open", "Client connections open now", value=st.open)
        yield CounterMetricFamily("gslb_edge_connections_refused", "Connections closed at once: over max_connections",
                                  value=st.refused_limit)
        yield CounterMetricFamily("gslb_edge_bad_client_hello", "Connections closed: no valid TLS ClientHello",
                                  value=st.bad_hello)
        yield CounterMetricFamily("gslb_edge_accept_errors", "accept() failures (EMFILE ...)", value=st.accept_errors)
        reqs = CounterMetricFamily("gslb_edge_requests", "HTTP responses to clients, by endpoint, status class, origin",
                                   labels=["endpoint", "code", "origin"])
        for key, n in sorted(c.request_counts().items()):
            reqs.add_metric(list(key), n)
        yield reqs
        bts = CounterMetricFamily("gslb_edge_bytes", "Bytes of ended client connections, by kind and direction",
                                  labels=["kind", "direction"])
        for kind in BYTE_KINDS:
            bts.add_metric([kind, "in"], c.bytes_in[kind])
            bts.add_metric([kind, "out"], c.bytes_out[kind])
        yield bts
        cum, buckets = 0, []
        for le, n in zip((*map(repr, DURATION_BUCKETS), "+Inf"), c.buckets):
            cum += n
            buckets.append((le, cum))
        yield HistogramMetricFamily("gslb_edge_request_duration_seconds",
                                    "From a request head let through to the upstream's response head",
                                    buckets=buckets, sum_value=c.duration_sum)
        dec = CounterMetricFamily("gslb_edge_module_decisions", "Module chain decisions, by deciding module and verdict",
                                  labels=["module", "verdict"])
        for (module, verdict), n in sorted(((m or "none", v), n) for (m, v), n in list(c.decisions.items())):
            dec.add_metric([module, verdict], n)
        yield dec
        mod = GaugeMetricFamily("gslb_edge_module_stat", "A chain module's stats() values", labels=["module", "stat"])
        for m in getattr(srv.chain, "modules", ()):
            name = getattr(m, "name", "") or type(m).__name__
            for k, v in sorted(stats_of(m).items()):
                mod.add_metric([name, k], v)
        yield mod
        abuse = GaugeMetricFamily("gslb_edge_abuse_stat", "The abuse tracker's stats() values", labels=["stat"])
        tracker = getattr(srv, "abuse", None)
        if tracker is not None:
            for k, v in sorted(stats_of(tracker).items()):
                abuse.add_metric([k], v)
        yield abuse
        acme = GaugeMetricFamily("gslb_edge_acme_stat", "The ACME manager's stats() values (docs/acme.md)",
                                 labels=["stat"])
        manager = getattr(srv, "acme", None)
        if manager is not None:
            for k, v in sorted(stats_of(manager).items()):
                acme.add_metric([k], v)
        yield acme
        hub = srv.hub
        hs = hub.stats()
        yield GaugeMetricFamily("gslb_edge_agent_sessions", "Agent tunnel sessions connected now", value=hs["sessions"])
        yield GaugeMetricFamily("gslb_edge_bindings", "Endpoints bound on this PoP now", value=hs["bindings"])
        yield GaugeMetricFamily("gslb_edge_tunnel_streams", "Streams open in agent sessions now", value=hs["streams"])
        links = GaugeMetricFamily("gslb_edge_peer_link_streams", "Streams open on the link to a peer PoP",
                                  labels=["peer"])
        peers = getattr(hub, "peers", None)
        for pop, session in sorted(getattr(peers, "sessions", {}).items()):
            links.add_metric([pop], len(getattr(session, "streams", ())))
        yield links
        yield CounterMetricFamily("gslb_edge_registry_errors", "Registry operations that failed (bind, unbind)",
                                  value=getattr(hub, "registry_errors", 0))


def registry_for(server: Any) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(EdgeCollector(server))
    return reg


def add_route(app: Any, server: Any) -> None:
    """GET /metrics on the health listener's aiohttp app."""
    from aiohttp import web
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    registry = registry_for(server)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/metrics", metrics)
