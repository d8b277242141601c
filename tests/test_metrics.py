"""/metrics collectors (dns/metrics.py, edge/metrics.py, edge/agent/metrics.py) with real counters,
read back through prometheus_client's own parser; docs/metrics.md agrees with what is registered."""
from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path
from types import SimpleNamespace

import dnslib
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from _tools import need_tools

from dns import metrics as dm
from dns.config import ConfigError, load_dns_config
from dns.engine import Engine
from dns.server import DnsServer
from edge import metrics as em
from edge.agent import relay
from edge.agent.client import Agent
from edge.agent.config import AgentConfig, ConfigError as AgentConfigError, EndpointConfig, load_agent_config
from edge.agent.metrics import AgentCollector
from edge.hub import Hub, HubConfig
from edge.modules import Verdict, build_chain
from edge.modules.base import Decision, Module
from edge.server import Stats

ROOT = Path(__file__).resolve().parent.parent
DNS_TOML = ROOT / "examples" / "dns.toml"


def scrape(*collectors) -> dict[str, dict[tuple, float]]:
    """Expose through prometheus_client, parse it back: {sample name: {sorted labels: value}}."""
    reg = CollectorRegistry(auto_describe=False)
    for c in collectors:
        reg.register(c)
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(generate_latest(reg).decode()):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def families(*collectors) -> dict[str, tuple[str, set[str]]]:
    """{exposed name: (type, label names)} as docs/metrics.md names them (counters with _total)."""
    reg = CollectorRegistry(auto_describe=False)
    for c in collectors:
        reg.register(c)
    out = {}
    for fam in text_string_to_metric_families(generate_latest(reg).decode()):
        name = fam.name + "_total" if fam.type == "counter" else fam.name
        labels = {k for s in fam.samples for k in s.labels if k != "le"}
        out[name] = (fam.type, labels)
    return out


def q(name: str, qtype: str | int = "A", ecs: str | None = None) -> bytes:
    if isinstance(qtype, int):
        rec = dnslib.DNSRecord(q=dnslib.DNSQuestion(name, qtype))
    else:
        rec = dnslib.DNSRecord.question(name, qtype)
    if ecs:
        net, plen = ecs.split("/")
        opt = dnslib.EDNSOption(8, b"\x00\x01" + bytes([int(plen), 0]) + bytes(map(int, net.split(".")))[:3])
        rec.add_ar(dnslib.EDNS0(udp_len=1232, opts=[opt]))
    return rec.pack()


def dns_server() -> DnsServer:
    cfg = load_dns_config(str(DNS_TOML))
    return DnsServer(Engine.from_config(cfg), ())


def traffic(srv: DnsServer) -> None:
    """5 A (1 miss, 4 hits), 1 AAAA over TCP, 2 A with ECS, 1 NXDOMAIN, 1 unknown type, 1 garbage."""
    e = srv.engine
    for _ in range(5):
        assert e.respond(q("www.lab.test"), "192.0.2.1") is not None
    assert e.respond(q("www.lab.test", "AAAA"), "192.0.2.1", True) is not None
    for _ in range(2):
        assert e.respond(q("www.lab.test", ecs="198.51.100.0/24"), "192.0.2.1") is not None
    assert e.respond(q("nope.lab.test"), "192.0.2.1") is not None
    assert e.respond(q("www.lab.test", 65000), "192.0.2.1") is not None
    e.respond(b"\x00\x01\x01", "192.0.2.1")  # too short for a header: dropped


def test_dns_collector_counts_each_query_once_by_kind():
    srv = dns_server()
    traffic(srv)
    c = dm.DnsCollector()
    c.snapshot = dm.local_snapshot(srv)
    m = scrape(c)
    qs = m["gslb_dns_queries_total"]
    assert qs[(("ecs", "no"), ("qtype", "A"), ("rcode", "NOERROR"), ("transport", "udp"))] == 5
    assert qs[(("ecs", "no"), ("qtype", "AAAA"), ("rcode", "NOERROR"), ("transport", "tcp"))] == 1
    assert qs[(("ecs", "yes"), ("qtype", "A"), ("rcode", "NOERROR"), ("transport", "udp"))] == 2
    assert qs[(("ecs", "no"), ("qtype", "A"), ("rcode", "NXDOMAIN"), ("transport", "udp"))] == 1
    assert qs[(("ecs", "no"), ("qtype", "other"), ("rcode", "NOERROR"), ("transport", "udp"))] == 1
    assert qs[(("ecs", "no"), ("qtype", "other"), ("rcode", "none"), ("transport", "udp"))] == 1
    assert sum(qs.values()) == 11
    hits, misses = m["gslb_dns_cache_hits_total"][()], m["gslb_dns_cache_misses_total"][()]
    assert hits + misses == 11
    assert hits == 5  # the 4 repeats of A and the repeated ECS query
    assert m["gslb_dns_cache_hit_ratio"][()] == pytest.approx(5 / 11)
    # The A and AAAA answers for www name a PoP; NXDOMAIN and the unknown type name none.
    assert sum(m["gslb_dns_answers_total"].values()) == 8


def test_dns_counters_survive_a_reload_and_count_it():
    srv = dns_server()
    srv._reload = lambda: Engine.from_config(load_dns_config(str(DNS_TOML)))
    traffic(srv)
    before = dm.local_snapshot(srv)
    assert srv.reload()
    srv._reload = lambda: (_ for _ in ()).throw(ConfigError("bad.toml:1: zone: broken"))
    assert not srv.reload()
    srv.engine.respond(q("www.lab.test"), "192.0.2.1")
    c = dm.DnsCollector()
    c.snapshot = dm.local_snapshot(srv)
    m = scrape(c)
    assert sum(m["gslb_dns_queries_total"].values()) == sum(r[-1] for r in before["tally"]) + 1
    assert m["gslb_dns_reloads_total"] == {(("result", "ok"),): 1, (("result", "failed"),): 1}


class TinyRRL:
    def stats(self):
        return {"dropped": 7, "slipped": 3, "buckets": 2.5, "label": "not a number"}


class BrokenStats:
    def stats(self):
        raise RuntimeError("bug")


def test_dns_rrl_stats_are_read_from_the_server_or_the_engine():
    srv = dns_server()
    srv.engine.rrl = TinyRRL()
    c = dm.DnsCollector()
    c.snapshot = dm.local_snapshot(srv)
    assert scrape(c)["gslb_dns_rrl_stat"] == {(("stat", "dropped"),): 7, (("stat", "slipped"),): 3,
                                              (("stat", "buckets"),): 2.5}
    srv.rrl = BrokenStats()   # the server's wins; a failing one costs its series only
    c.snapshot = dm.local_snapshot(srv)
    assert "gslb_dns_rrl_stat" not in scrape(c)


def test_worker_snapshots_sum_and_a_dead_worker_never_makes_a_counter_go_backwards():
    async def main():
        loop = asyncio.get_running_loop()
        collector = dm.DnsCollector()
        ws = dm.WorkerStats(collector)
        workers = []
        for pid in (101, 102):
            srv = dns_server()
            srv.engine.rrl = TinyRRL()
            mine, theirs = socket.socketpair()
            dm.serve_worker_stats(theirs, srv)
            ws.add(pid, mine)
            workers.append((srv, theirs))
        traffic(workers[0][0])
        traffic(workers[1][0])
        workers[1][0].engine.respond(q("www.lab.test"), "192.0.2.9")
        total = await ws.collect()
        collector.snapshot = total
        m = scrape(collector)
        assert sum(m["gslb_dns_queries_total"].values()) == 23
        assert m["gslb_dns_rrl_stat"][(("stat", "dropped"),)] == 14
        assert m["gslb_dns_workers"][()] == 2
        # Worker 102 dies (its end closes); its totals stay; a new one starts from zero.
        loop.remove_reader(workers[1][1].fileno())
        workers[1][1].close()
        ws.forget(102)
        srv3 = dns_server()
        mine, theirs = socket.socketpair()
        dm.serve_worker_stats(theirs, srv3)
        ws.add(103, mine)
        srv3.engine.respond(q("www.lab.test"), "192.0.2.1")
        collector.snapshot = await ws.collect()
        m = scrape(collector)
        assert sum(m["gslb_dns_queries_total"].values()) == 24
        assert m["gslb_dns_workers"][()] == 2
        for _, s in workers[:1]:
            loop.remove_reader(s.fileno())
            s.close()
        loop.remove_reader(theirs.fileno())
        theirs.close()
    asyncio.run(main())


def test_a_worker_that_does_not_answer_counts_with_its_last_snapshot():
    async def main():
        collector = dm.DnsCollector()
        ws = dm.WorkerStats(collector)
        srv = dns_server()
        mine, theirs = socket.socketpair()
        loop = asyncio.get_running_loop()
        dm.serve_worker_stats(theirs, srv)
        ws.add(7, mine)
        traffic(srv)
        first = await ws.collect()
        loop.remove_reader(theirs.fileno())   # stuck: reads nothing, answers nothing
        srv.engine.respond(q("www.lab.test"), "192.0.2.1")
        second = await ws.collect(timeout=0.2)
        assert second["tally"] and sorted(map(str, second["tally"])) == sorted(map(str, first["tally"]))
        assert collector.worker_timeouts == 1
        # Unstuck, the late reply to the missed request is skipped (by its seq) and the new one used.
        dm.serve_worker_stats(theirs, srv)
        third = await ws.collect()
        assert sum(r[-1] for r in third["tally"]) == sum(r[-1] for r in first["tally"]) + 1
        loop.remove_reader(theirs.fileno())
        theirs.close()
        mine.close()
    asyncio.run(main())


def test_health_series_come_from_the_monitor_states():
    from dns.monitor import HealthMonitor, LocalPublisher
    cfg = load_dns_config(str(DNS_TOML))
    srv = DnsServer(Engine.from_config(cfg), ())
    mon = HealthMonitor(cfg, LocalPublisher(srv), control_path=None)
    first = mon.states.targets[0]
    for t in range(cfg.health.fall):
        mon.states.record(first.pop, first.address, False, float(t), "refused")
    mon.states.set_drained(first.pop, True)
    c = dm.DnsCollector()
    c.monitor = mon
    m = scrape(c)
    fam = "ipv6" if ":" in first.address else "ipv4"
    key = (("address", first.address), ("family", fam), ("pop", first.pop))
    assert m["gslb_dns_health_up"][key] == 0
    assert m["gslb_dns_health_transitions_total"][key] == 1
    assert sum(m["gslb_dns_health_up"].values()) == len(mon.states.targets) - 1
    assert m["gslb_dns_pop_drained"][(("pop", first.pop),)] == 1


def test_metrics_listen_config_key(tmp_path):
    text = DNS_TOML.read_text()
    assert load_dns_config(str(DNS_TOML)).server.metrics_listen is None
    good = tmp_path / "good.toml"
    good.write_text(text.replace("[server]\n", '[server]\nmetrics_listen = "[::1]:9153"\n', 1))
    assert load_dns_config(str(good)).server.metrics_listen == ("::1", 9153)
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace("[server]\n", '[server]\nmetrics_listen = "localhost:9153"\n', 1))
    with pytest.raises(ConfigError, match=r"bad\.toml:\d+: .*metrics_listen.*not a valid ADDR:PORT"):
        load_dns_config(str(bad))


# -- edge ------------------------------------------------------------------------------------------

class TinyBreaker(Module):
    """A module of our own with stats(), as the circuit breaker and the rate limit have."""

    name = "tiny_breaker"

    def decide(self, subject):
        return Decision(Verdict.PASS)

    def stats(self):
        return {"state": 2, "trips": 5, "error_ratio": 0.25}


class TinyAbuse:
    def stats(self):
        return {"blocks": 4, "tracked": 9}


class TinyAcme:
    def stats(self):
        return {"orders_ok": 2, "fallback_handshakes": 1}


def edge_server(with_components: bool = True):
    chain = build_chain(["ip_restriction"], {"ip_restriction": {"deny_cidrs": []}})
    if with_components:
        chain = type(chain)(chain.modules + (TinyBreaker(),))
    srv = SimpleNamespace(metrics=em.EdgeCounters(), stats=Stats(), chain=chain,
                          hub=Hub(HubConfig(domain="app.lab.test"), ["t"]))
    if with_components:
        srv.abuse = TinyAbuse()
        srv.acme = TinyAcme()
    return srv


def test_edge_collector_counts_and_reads_component_stats():
    srv = edge_server()
    c = srv.metrics
    for kind in ("https", "https", "agent", "tcp"):
        c.connection(kind)
    c.response("demo.app.lab.test", 200, 0.003)
    c.response("demo.app.lab.test", 204, 0.0005)
    c.response("demo.app.lab.test", 503, 40.0)
    c.page_status("gone.app.lab.test", b"HTTP/1.1 404 Not Found\r\n\r\n")
    c.decided(Decision(Verdict.ANSWER, 403, "denied", module="ip_restriction"))
    c.decided(Decision(Verdict.ALLOW))
    c.transferred("https", 100, 2000)
    c.transferred("https", 1, 2)
    srv.stats.open = 3
    m = scrape(em.EdgeCollector(srv))
    assert m["gslb_edge_connections_total"] == {(("kind", "https"),): 2, (("kind", "tls"),): 0,
                                                (("kind", "tcp"),): 1, (("kind", "agent"),): 1}
    reqs = m["gslb_edge_requests_total"]
    assert reqs[(("code", "2xx"), ("endpoint", "demo.app.lab.test"), ("origin", "upstream"))] == 2
    assert reqs[(("code", "5xx"), ("endpoint", "demo.app.lab.test"), ("origin", "upstream"))] == 1
    assert reqs[(("code", "4xx"), ("endpoint", "gone.app.lab.test"), ("origin", "edge"))] == 1
    b = m["gslb_edge_request_duration_seconds_bucket"]
    assert b[(("le", "0.001"),)] == 1 and b[(("le", "0.005"),)] == 2 and b[(("le", "30.0"),)] == 2
    assert b[(("le", "+Inf"),)] == 3
    assert m["gslb_edge_request_duration_seconds_count"][()] == 3
    assert m["gslb_edge_request_duration_seconds_sum"][()] == pytest.approx(40.0035)
    assert m["gslb_edge_module_decisions_total"] == {(("module", "ip_restriction"), ("verdict", "answer")): 1,
                                                     (("module", "none"), ("verdict", "allow")): 1}
    b = m["gslb_edge_bytes_total"]
    assert b[(("direction", "in"), ("kind", "https"))] == 101 and b[(("direction", "out"), ("kind", "https"))] == 2002
    assert b[(("direction", "in"), ("kind", "tcp"))] == 0 and len(b) == 6
    assert m["gslb_edge_module_stat"] == {(("module", "tiny_breaker"), ("stat", "error_ratio")): 0.25,
                                          (("module", "tiny_breaker"), ("stat", "state")): 2,
                                          (("module", "tiny_breaker"), ("stat", "trips")): 5}
    assert m["gslb_edge_abuse_stat"] == {(("stat", "blocks"),): 4, (("stat", "tracked"),): 9}
    assert m["gslb_edge_acme_stat"] == {(("stat", "fallback_handshakes"),): 1, (("stat", "orders_ok"),): 2}
    assert m["gslb_edge_connections_open"][()] == 3
    assert m["gslb_edge_agent_sessions"][()] == 0


def test_edge_endpoint_labels_are_bounded():
    c = em.EdgeCounters()
    for i in range(em.MAX_ENDPOINTS + 50):
        c.page_status(f"n{i}.app.lab.test", b"HTTP/1.1 404 Not Found\r\n\r\n")
    counts = c.request_counts()
    names = {k[0] for k in counts}
    assert len(names) == em.MAX_ENDPOINTS + 1 and "other" in names
    assert counts[("other", "4xx", "edge")] == 50
    assert counts[("n0.app.lab.test", "4xx", "edge")] == 1


# -- agent -----------------------------------------------------------------------------------------

def test_agent_collector_sums_the_agents_of_the_process():
    async def main():
        cfg = AgentConfig(endpoints=(EndpointConfig(kind="http", port=8080, name="demo"),), authtoken="x",
                          server="127.0.0.1:4443")
        import dataclasses
        a = Agent(cfg, out=lambda _: None)
        b = Agent(dataclasses.replace(cfg, server="127.0.0.1:4444"), out=lambda _: None)
        a.counts["reconnects"] += 2
        b.counts["reconnects"] += 1
        a.counts["streams"] += 4
        b.counts["upstream_errors"] += 1
        a.online.set()
        before = list(relay.BYTES)
        relay.BYTES[0] += 10
        relay.BYTES[1] += 30
        try:
            m = scrape(AgentCollector([a, b]))
        finally:
            relay.BYTES[:] = before
        assert m["gslb_agent_reconnects_total"][()] == 3
        assert m["gslb_agent_streams_total"][()] == 4
        assert m["gslb_agent_upstream_errors_total"][()] == 1
        assert m["gslb_agent_session_up"] == {(("server", "127.0.0.1:4443"),): 1, (("server", "127.0.0.1:4444"),): 0}
        assert m["gslb_agent_bytes_total"][(("direction", "in"),)] == before[0] + 10
        assert m["gslb_agent_bytes_total"][(("direction", "out"),)] == before[1] + 30
    asyncio.run(main())


def test_agent_metrics_key(tmp_path):
    f = tmp_path / "agent.toml"
    f.write_text('authtoken = "x"\nserver = "127.0.0.1:4443"\nmetrics = "127.0.0.1:9101"\n'
                 '[[endpoints]]\nkind = "http"\nport = 8080\nname = "demo"\n')
    assert load_agent_config(f).metrics == ("127.0.0.1", 9101)
    f.write_text(f.read_text().replace("127.0.0.1:9101", "localhost"))
    with pytest.raises(AgentConfigError, match="metrics.*expected IP:PORT"):
        load_agent_config(f)


# -- docs/metrics.md -------------------------------------------------------------------------------

def documented() -> dict[str, tuple[str, set[str]]]:
    rows = {}
    for line in (ROOT / "docs" / "metrics.md").read_text().splitlines():
        m = re.match(r"\| `(gslb_\w+)` \| (counter|gauge|histogram) \| ([^|]+) \|", line)
        if m:
            labels = {x.strip() for x in m.group(3).split(",")} - {"-"}
            assert m.group(1) not in rows, f"{m.group(1)} documented twice"
            rows[m.group(1)] = (m.group(2), labels)
    return rows


def test_docs_list_every_registered_metric_and_nothing_else():
    """Every family the three collectors yield (with every component present, so that every
    family has samples and its labels show) is in docs/metrics.md with its type and labels."""
    from dns.monitor import HealthMonitor, LocalPublisher
    srv = dns_server()
    srv.engine.rrl = TinyRRL()
    from dns.acme import AcmeTxtSource
    from dns.config import AcmeSettings
    srv.acme = AcmeTxtSource(AcmeSettings(), lambda txt: None)
    traffic(srv)
    dc = dm.DnsCollector()
    dc.snapshot = dm.local_snapshot(srv)
    dc.monitor = HealthMonitor(srv.engine.cfg, LocalPublisher(srv), control_path=None)
    esrv = edge_server()
    esrv.metrics.connection("https")
    esrv.metrics.response("demo.app.lab.test", 200, 0.01)
    esrv.metrics.decided(Decision(Verdict.ALLOW))
    esrv.metrics.transferred("https", 1, 1)

    class Peers:
        sessions = {"eu": SimpleNamespace(streams={1: None})}
    esrv.hub.peers = Peers()

    async def agent_families():
        cfg = AgentConfig(endpoints=(EndpointConfig(kind="http", port=8080, name="demo"),), authtoken="x",
                          server="127.0.0.1:4443")
        return families(AgentCollector([Agent(cfg, out=lambda _: None)]))
    ec = em.EdgeCollector(esrv)
    ec.workers, ec.answering = 2, 2      # the --workers families too
    registered = {**families(dc), **families(ec), **asyncio.run(agent_families())}
    docs = documented()
    assert sorted(set(registered) - set(docs)) == [], "registered but not in docs/metrics.md"
    assert sorted(set(docs) - set(registered)) == [], "in docs/metrics.md but not registered"
    for name, (typ, labels) in registered.items():
        assert docs[name] == (typ, labels), name


# -- the lab's Prometheus ----------------------------------------------------------------------------

@need_tools("promtool")
def test_lab_prometheus_config_lists_every_daemon_and_promtool_accepts_it(tmp_path):
    import subprocess
    from netns import render
    from netns.plan import load_plan
    plan = load_plan(str(ROOT / "examples" / "lab.toml"))
    assert [h.name for h in plan.by_role("metrics")] == ["metrics"]
    text = render.prometheus_yml(plan, 9153, 9180, 1.0)
    assert "scrape_interval: 1s" in text
    for h in plan.by_role("dns"):
        assert f"'{h.ipv4[0]}:9153'" in text and f"host: {h.name}}}" in text
    for h in plan.by_role("pop"):
        assert f"'{h.ipv4[0]}:9180'" in text and f"host: {h.name}}}" in text
    f = tmp_path / "prometheus.yml"
    f.write_text(text)
    r = subprocess.run(["promtool", "check", "config", str(f)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    # The name servers and the edges are told to listen where Prometheus looks.
    assert 'metrics_listen = "0.0.0.0:9153"' in render.dns_toml(plan, "/x.mmdb", metrics_port=9153)
    edge = render.edge_toml(plan, "/ca", "/certs", "/tok", health_port=9180)
    for h in plan.by_role("pop"):
        assert f'health_listen = "{h.ipv4[0]}:9180"' in edge


def test_a_plan_has_at_most_one_metrics_host(tmp_path):
    from netns.errors import PlanError
    from netns.plan import load_plan
    text = (ROOT / "examples" / "lab.toml").read_text()
    extra = '\n[[host]]\nname = "metrics2"\nrole = "metrics"\nipv4 = ["198.18.0.91"]\nipv6 = ["fd7a:5e1b:c00::91"]\n'
    f = tmp_path / "lab.toml"
    f.write_text(text.replace("# PoPs: each runs", extra + "\n# PoPs: each runs", 1))
    with pytest.raises(PlanError, match="at most one host with role 'metrics'"):
        load_plan(str(f))


def test_a_query_with_a_dns_cookie_counts_once():
    """The cookie path answers through an inner respond() of a placeholder query: one count."""
    srv = dns_server()
    assert srv.engine.cookies is not None
    rec = dnslib.DNSRecord.question("www.lab.test", "A")
    rec.add_ar(dnslib.EDNS0(udp_len=1232, opts=[dnslib.EDNSOption(10, b"\x01" * 8)]))
    for _ in range(3):
        reply = srv.engine.respond(rec.pack(), "192.0.2.7")
        assert reply is not None and reply[3] & 0xF == 0
    c = dm.DnsCollector()
    c.snapshot = dm.local_snapshot(srv)
    m = scrape(c)
    assert m["gslb_dns_queries_total"] == {
        (("ecs", "no"), ("qtype", "A"), ("rcode", "NOERROR"), ("transport", "udp")): 3}
    assert m["gslb_dns_cache_hits_total"][()] == 2


# -- gslb edge --workers: worker 0 sums every worker's snapshot ------------------------------------

def _edge_traffic(srv, n_ok: int, n_404: int, open_now: int) -> None:
    c = srv.metrics
    for _ in range(n_ok):
        c.connection("https")
        c.response("one.app.lab.test", 200, 0.003)
    for _ in range(n_404):
        c.page_status("gone.app.lab.test", b"HTTP/1.1 404 Not Found\r\n\r\n")
    c.decided(Decision(Verdict.ALLOW))
    c.transferred("https", 10 * n_ok, 100 * n_ok)
    srv.stats.open = open_now
    srv.stats.accepted = n_ok + n_404


def test_edge_snapshots_add_up_counters_gauges_histograms_and_component_stats():
    a, b = edge_server(), edge_server()
    _edge_traffic(a, 3, 1, open_now=2)
    _edge_traffic(b, 4, 0, open_now=5)
    b.metrics.response("two.app.lab.test", 503, 40.0)
    c = em.EdgeCollector(a)
    c.snapshot = em.merge([em.local_snapshot(a), {"seq": "9", **em.local_snapshot(b)}])
    m = scrape(c)
    reqs = m["gslb_edge_requests_total"]
    assert reqs[(("code", "2xx"), ("endpoint", "one.app.lab.test"), ("origin", "upstream"))] == 7
    assert reqs[(("code", "4xx"), ("endpoint", "gone.app.lab.test"), ("origin", "edge"))] == 1
    assert reqs[(("code", "5xx"), ("endpoint", "two.app.lab.test"), ("origin", "upstream"))] == 1
    assert m["gslb_edge_connections_total"][(("kind", "https"),)] == 7
    assert m["gslb_edge_connections_open"][()] == 7
    assert m["gslb_edge_request_duration_seconds_count"][()] == 8
    assert m["gslb_edge_request_duration_seconds_bucket"][(("le", "0.005"),)] == 7
    assert m["gslb_edge_request_duration_seconds_sum"][()] == pytest.approx(40.0 + 7 * 0.003)
    assert m["gslb_edge_module_decisions_total"] == {(("module", "none"), ("verdict", "allow")): 2}
    assert m["gslb_edge_bytes_total"][(("direction", "out"), ("kind", "https"))] == 700
    assert m["gslb_edge_module_stat"][(("module", "tiny_breaker"), ("stat", "trips"))] == 10
    assert m["gslb_edge_abuse_stat"] == {(("stat", "blocks"),): 8, (("stat", "tracked"),): 18}
    assert "gslb_edge_workers" not in m     # set by the --workers scrape only


def test_edge_worker_zero_asks_the_others_and_leaves_out_one_that_does_not_answer():
    from plumbing.workerstats import serve_snapshots

    async def main():
        loop = asyncio.get_running_loop()
        w0, w1, w2 = edge_server(), edge_server(), edge_server()
        for srv, n in ((w0, 1), (w1, 2), (w2, 4)):
            _edge_traffic(srv, n, 0, open_now=n)
        socks = {}
        theirs = {}
        for i, srv in ((1, w1), (2, w2)):
            mine, other = socket.socketpair()
            serve_snapshots(other, lambda srv=srv: em.local_snapshot(srv))
            socks[i], theirs[i] = mine, other
        ws = em.EdgeWorkerStats(w0, socks, timeout=1.0)
        total, each = await ws.collect()
        assert sorted(each) == [0, 1, 2] and total["stats"]["open"] == 7 and ws.asker.timeouts == 0
        h = em.health_totals({"status": "ok", "pop": "t", "connections": 1, "worker": 0}, total, each, ws.count)
        assert h["connections"] == 7 and h["accepted"] == 7 and h["status"] == "ok" and h["pop"] == "t"
        assert h["workers"] == 3 and h["workers_answering"] == 3
        assert [h["per_worker"][k]["connections"] for k in ("0", "1", "2")] == [1, 2, 4]
        # Worker 2 is stuck: left out of this scrape (not its old numbers), counted, the scrape ends.
        loop.remove_reader(theirs[2].fileno())
        _edge_traffic(w1, 1, 0, open_now=0)
        total, each = await ws.collect()
        assert sorted(each) == [0, 1] and ws.asker.timeouts == 1
        assert total["stats"]["open"] == 1
        assert total["connections"]["https"] == 1 + 3
        c = em.EdgeCollector(w0)
        c.snapshot, c.workers, c.answering, c.timeouts = total, ws.count, len(each), ws.asker.timeouts
        m = scrape(c)
        assert m["gslb_edge_workers"][()] == 3 and m["gslb_edge_workers_answering"][()] == 2
        assert m["gslb_edge_worker_scrape_timeouts_total"][()] == 1
        # Unstuck: its late reply is skipped by seq, the fresh one counted again.
        serve_snapshots(theirs[2], lambda: em.local_snapshot(w2))
        total, each = await ws.collect()
        assert sorted(each) == [0, 1, 2] and total["connections"]["https"] == 1 + 3 + 4
        for i in (1, 2):
            loop.remove_reader(theirs[i].fileno())
            theirs[i].close()
            socks[i].close()
    asyncio.run(main())
