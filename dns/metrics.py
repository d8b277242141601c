"""`/metrics` for `gslb dns` (docs/metrics.md): Prometheus text exposition of plain counters.

The query path counts with plain ints (`Engine.tally`, `Engine.stats`,
`DnsServer.stats`): a cached answer costs one add. Nothing here runs per
query: a scrape turns a *snapshot* of those counters into metric families
(`DnsCollector`, a prometheus_client custom collector).

With workers, the process that owns them serves `/metrics`: at each scrape it
asks every worker for its snapshot over a socket pair made before the fork
(`WorkerStats`; the worker side is `serve_worker_stats`; both in plumbing/workerstats.py) and
sums them. A worker
that does not answer in time counts with its last snapshot; one that died
leaves its last snapshot in `retired`, so a respawn never makes a counter go
backwards (what it counted after its last snapshot is lost, never shown twice).

Snapshots are JSON: {"tally": [[qtype, rcode, tcp, ecs, [pops...], n], ...],
"engine": {...}, "server": {...}, "reloads": {"ok", "failed"}, "rrl": {...}}.
"""
from __future__ import annotations

import socket
from typing import Any, Awaitable, Callable, Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from dns.engine import TALLY_TYPES
from dns.wire import RCODE_NAMES
from plumbing.stats import stats_of
from plumbing.workerstats import MAX_SNAPSHOT, WORKER_TIMEOUT, SnapshotAsker, serve_snapshots  # noqa: F401



def rrl_stats(server: Any) -> dict[str, float]:
    """The response rate limiter's stats(): on the server or on its engine, wherever it lives."""
    rrl = getattr(server, "rrl", None)
    if rrl is None:
        rrl = getattr(server.engine, "rrl", None)
    return stats_of(rrl) if rrl is not None else {}


def local_snapshot(server: Any) -> dict[str, Any]:
    """This process's counters, JSON-able."""
    eng = server.engine
    return {
        "tally": [[qt, rc, int(tcp), int(ecs), list(pops), cell[0]]
                  for (qt, rc, tcp, ecs, pops), cell in list(eng.tally.items())],
        "engine": dict(eng.stats), "server": dict(server.stats), "reloads": dict(server.reloads),
        "rrl": rrl_stats(server),
        "acme": stats_of(server.acme) if getattr(server, "acme", None) is not None else {},
    }


def empty_snapshot() -> dict[str, Any]:
    return {"tally": [], "engine": {}, "server": {}, "reloads": {}, "rrl": {}, "acme": {}}


def merge(snaps: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The sum of several processes' snapshots (gauges in `rrl` are summed too: per-process tables)."""
    tally: dict[tuple, int] = {}
    out = empty_snapshot()
    for snap in snaps:
        for qt, rc, tcp, ecs, pops, n in snap.get("tally", ()):
            key = (qt, rc, tcp, ecs, tuple(pops))
            tally[key] = tally.get(key, 0) + n
        for part in ("engine", "server", "reloads", "rrl", "acme"):
            acc = out[part]
            for k, v in snap.get(part, {}).items():
                acc[k] = acc.get(k, 0) + v
    out["tally"] = [[qt, rc, tcp, ecs, list(pops), n] for (qt, rc, tcp, ecs, pops), n in tally.items()]
    return out


def _qtype(code: int) -> str:
    return TALLY_TYPES.get(code, "other") if code >= 0 else "other"


def _rcode(code: int) -> str:
    if code < 0:
        return "none"
    return "BADCOOKIE" if code == 23 else RCODE_NAMES.get(code, str(code))


class DnsCollector(Collector):
    """Metric families from the newest snapshot (`self.snapshot`), the health monitor and the
    worker bookkeeping; the listener refreshes the snapshot before each scrape."""

    def __init__(self) -> None:
        self.snapshot = empty_snapshot()
        self.monitor: Any = None        # dns.monitor.HealthMonitor, in the process that runs it
        self.workers = 1                # serving processes alive
        self.respawns = 0
        self.worker_timeouts = 0

    def collect(self) -> Iterable[Any]:
        snap = self.snapshot
        queries = CounterMetricFamily("gslb_dns_queries", "DNS queries answered (or dropped), by kind",
                                      labels=["qtype", "rcode", "transport", "ecs"])
        answers = CounterMetricFamily("gslb_dns_answers", "Answers handing out addresses of a PoP, by PoP",
                                      labels=["pop"])
        by_kind: dict[tuple[str, str, str, str], int] = {}
        by_pop: dict[str, int] = {}
        total = 0
        for qt, rc, tcp, ecs, pops, n in snap["tally"]:
            key = (_qtype(qt), _rcode(rc), "tcp" if tcp else "udp", "yes" if ecs else "no")
            by_kind[key] = by_kind.get(key, 0) + n
            total += n
            for pop in pops:
                by_pop[pop] = by_pop.get(pop, 0) + n
        for key, n in sorted(by_kind.items()):
            queries.add_metric(list(key), n)
        for pop, n in sorted(by_pop.items()):
            answers.add_metric([pop], n)
        yield queries
        yield answers
        eng = snap["engine"]
        misses = int(eng.get("misses", 0))
        hits = max(0, total - misses)
        yield CounterMetricFamily("gslb_dns_cache_hits", "Queries answered from the reply cache", value=hits)
        yield CounterMetricFamily("gslb_dns_cache_misses", "Queries answered the slow way (parsed, resolved)",
                                  value=misses)
        yield GaugeMetricFamily("gslb_dns_cache_hit_ratio", "cache hits / queries since start (0 before any)",
                                value=hits / total if total else 0.0)
        yield CounterMetricFamily("gslb_dns_internal_errors", "Bugs turned into SERVFAIL",
                                  value=int(eng.get("internal_errors", 0)))
        srv = snap["server"]
        yield CounterMetricFamily("gslb_dns_tcp_refused", "TCP connections closed at once: over tcp_max_connections",
                                  value=int(srv.get("tcp_refused", 0)))
        yield CounterMetricFamily("gslb_dns_tcp_idle_closed", "TCP connections closed after tcp_idle_timeout",
                                  value=int(srv.get("tcp_idle_closed", 0)))
        yield CounterMetricFamily("gslb_dns_udp_send_errors", "UDP replies the kernel refused (dropped)",
                                  value=int(srv.get("udp_send_errors", 0)))
        reloads = CounterMetricFamily("gslb_dns_reloads", "Configuration reloads (SIGHUP) per serving process",
                                      labels=["result"])
        for result in ("ok", "failed"):
            reloads.add_metric([result], int(snap["reloads"].get(result, 0)))
        yield reloads
        rrl = GaugeMetricFamily("gslb_dns_rrl_stat", "The response rate limiter's stats(), summed over workers",
                                labels=["stat"])
        for k, v in sorted(snap["rrl"].items()):
            rrl.add_metric([k], v)
        yield rrl
        acme = GaugeMetricFamily("gslb_dns_acme_stat", "The DNS-01 TXT source's stats(), summed over workers",
                                 labels=["stat"])
        for k, v in sorted(snap.get("acme", {}).items()):
            acme.add_metric([k], v)
        yield acme
        yield from self._health()
        yield GaugeMetricFamily("gslb_dns_workers", "Processes serving queries", value=self.workers)
        yield CounterMetricFamily("gslb_dns_worker_respawns", "Workers replaced after dying by a signal",
                                  value=self.respawns)
        yield CounterMetricFamily("gslb_dns_worker_scrape_timeouts",
                                  "Scrapes a worker did not answer in time (its last snapshot was used)",
                                  value=self.worker_timeouts)

    def _health(self) -> Iterable[Any]:
        up = GaugeMetricFamily("gslb_dns_health_up", "Health of a PoP address: 1 up, 0 down",
                               labels=["pop", "address", "family"])
        trans = CounterMetricFamily("gslb_dns_health_transitions", "Up/down changes of a PoP address",
                                    labels=["pop", "address", "family"])
        drained = GaugeMetricFamily("gslb_dns_pop_drained", "1: the PoP is drained (config or `gslb dns drain`)",
                                    labels=["pop"])
        mon = self.monitor
        if mon is not None:
            for s in mon.states.states():
                labels = [s.pop, s.address, f"ipv{s.family}"]
                up.add_metric(labels, 1 if s.up else 0)
                trans.add_metric(labels, s.transitions)
            gone = mon.states.drained
            for pop in mon.states.pops:
                drained.add_metric([pop], 1 if pop in gone else 0)
        yield up
        yield trans
        yield drained


# -- the workers' side and the supervisor's side --------------------------------------------------

def serve_worker_stats(sock: socket.socket, server: Any) -> None:
    """In a worker: answer each request line on `sock` with a snapshot line (same "seq")."""
    serve_snapshots(sock, lambda: local_snapshot(server))


class WorkerStats(SnapshotAsker):
    """In the supervisor: each worker's socket and last snapshot; `collect()` sums them
    (plumbing/workerstats.py; a worker that misses a scrape counts with its last snapshot)."""

    def __init__(self, collector: DnsCollector) -> None:
        super().__init__(merge, empty_snapshot)
        self.collector = collector

    def add(self, pid: int, sock: socket.socket) -> None:
        super().add(pid, sock)
        self.collector.workers = len(self.socks)

    def forget(self, pid: int) -> None:
        """A worker died: its last totals stay in the sum."""
        super().forget(pid)
        self.collector.workers = len(self.socks)

    async def collect(self, timeout: float = WORKER_TIMEOUT, fresh_only: bool = False) -> dict[str, Any]:
        out = await super().collect(timeout, fresh_only)
        self.collector.worker_timeouts = self.timeouts
        return out


# -- the listener ------------------------------------------------------------------------------

async def start_listener(host: str, port: int, collector: DnsCollector,
                         refresh: Callable[[], Awaitable[dict[str, Any]]]) -> Any:
    """aiohttp on `host:port`: GET /metrics (refresh the snapshot, then expose). Returns the runner."""
    from aiohttp import web
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from plumbing.listen import listen_socket
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)

    async def metrics(request: web.Request) -> web.Response:
        collector.snapshot = await refresh()
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = listen_socket(host, port)
    await web.SockSite(runner, sock).start()
    from dns.log import log
    from plumbing.addr import join_host_port
    log("metrics_listening", address=join_host_port(host, sock.getsockname()[1]))
    return runner
