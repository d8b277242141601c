"""`/metrics` for `gslb agent` (docs/metrics.md): `--metrics ADDR:PORT` or agent.toml `metrics`.

A separate listener from the inspector's: the agents of one process (one per
--server) count with plain ints (`Agent.counts`, the relay's byte counts) and
`AgentCollector` sums them at scrape time.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from edge.agent import relay

COUNTS = ("sessions", "reconnects", "connect_failures", "streams", "upstream_errors")


def new_counts() -> dict[str, int]:
    return dict.fromkeys(COUNTS, 0)


class AgentCollector(Collector):
    def __init__(self, agents: Sequence[Any]) -> None:
        self.agents = agents

    def collect(self) -> Iterable[Any]:
        up = GaugeMetricFamily("gslb_agent_session_up", "1: the session to this edge server is online",
                               labels=["server"])
        total = new_counts()
        open_streams = 0
        for a in self.agents:
            host, port = a.config.server_address()
            up.add_metric([f"{host}:{port}"], 1 if a.online.is_set() else 0)
            for k in COUNTS:
                total[k] += a.counts[k]
            open_streams += len(a._stream_tasks)
        yield up
        yield CounterMetricFamily("gslb_agent_sessions", "Sessions that reached the edge (connected, then auth)",
                                  value=total["sessions"])
        yield CounterMetricFamily("gslb_agent_reconnects", "Reconnect attempts after a lost or failed session",
                                  value=total["reconnects"])
        yield CounterMetricFamily("gslb_agent_connect_failures", "Connects or sessions that failed (before online)",
                                  value=total["connect_failures"])
        yield CounterMetricFamily("gslb_agent_streams", "Streams the edge opened to this agent", value=total["streams"])
        yield GaugeMetricFamily("gslb_agent_streams_open", "Streams being served now", value=open_streams)
        b = CounterMetricFamily("gslb_agent_bytes", "Bytes relayed: in from the edge to the upstream, out back",
                                labels=["direction"])
        b.add_metric(["in"], relay.BYTES[0])
        b.add_metric(["out"], relay.BYTES[1])
        yield b
        yield CounterMetricFamily("gslb_agent_upstream_errors", "Streams whose local upstream could not be reached",
                                  value=total["upstream_errors"])


async def start_listener(host: str, port: int, agents: Sequence[Any]) -> Any:
    """aiohttp on host:port with GET /metrics; returns the runner (cleanup() it)."""
    from aiohttp import web
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from plumbing.listen import listen_socket
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(agents))

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, listen_socket(host, port)).start()
    return runner
