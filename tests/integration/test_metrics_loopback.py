"""/metrics of real processes on loopback, read with curl after real traffic (dig, curl).

`gslb dns` with two workers (the supervisor sums them; a SIGKILLed worker must not make
a counter go backwards), and `gslb edge` + `gslb agent --metrics` with an HTTP upstream.
"""
from __future__ import annotations

import http.server
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from _helpers import CURL, GSLB, Proc, curl_https, free_port, free_range, secret_file
from _tools import need_tools

from edge.certs import CertAuthority

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
ROOT = Path(__file__).resolve().parents[2]


def scrape(port: int, host: str = "127.0.0.1") -> dict[str, dict[tuple, float]]:
    r = subprocess.run([CURL, "-sS", "--max-time", "10", f"http://{host}:{port}/metrics"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(r.stdout):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def poll(pred, timeout: float, what: str):
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        last = pred()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {last!r})")


def queries(m) -> float:
    return sum(m.get("gslb_dns_queries_total", {}).values())


@pytest.fixture
def dns(tmp_path):
    port, mport = free_port(), free_port()
    text = (ROOT / "examples" / "dns.toml").read_text()
    text = text.replace('listen = ["127.0.0.1:5300", "[::1]:5300"]', f'listen = ["127.0.0.1:{port}"]')
    text = text.replace('geoip_db = "lab.mmdb"', f'geoip_db = "{ROOT / "examples" / "lab.mmdb"}"')
    text = text.replace("workers = 1 ", "workers = 2 ")
    text = text.replace("[server]\n", f'[server]\nmetrics_listen = "127.0.0.1:{mport}"\n', 1)
    cfg = tmp_path / "dns.toml"
    cfg.write_text(text)
    p = Proc([*GSLB, "dns", "--config", str(cfg), "--control", str(tmp_path / "ctl.sock")], "dns")
    # The workers and the supervisor's listener start in any order.
    poll(lambda: sum("event=listening" in line for line in p.log) == 2
         and any("event=metrics_listening" in line for line in p.log), 60, "dns workers and /metrics up")
    yield p, port, mport, cfg
    p.stop()


def dig_batch(port: int, lines: list[str], tmp: Path, *opts: str) -> None:
    """One dig for every line (dig -f; options for all of them in `opts`: +tcp is not read per line)."""
    batch = tmp / "batch.txt"
    batch.write_text("\n".join(lines) + "\n")
    r = subprocess.run(["dig", "@127.0.0.1", "-p", str(port), "+time=2", "+tries=2", *opts, "-f", str(batch)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("status: NOERROR") + r.stdout.count("status: NXDOMAIN") == len(lines), r.stdout[-2000:]


@need_tools("dig", "curl")
def test_dns_workers_summed_and_a_killed_worker_keeps_its_counts(dns, tmp_path):
    p, port, mport, cfg = dns
    base = scrape(mport)
    assert base["gslb_dns_workers"][()] == 2
    n0 = queries(base)
    dig_batch(port, ["www.lab.test A"] * 30 + ["www.lab.test A +subnet=198.51.100.0/24"] * 3
              + ["nope.lab.test A"] * 2, tmp_path)
    dig_batch(port, ["www.lab.test AAAA"] * 5, tmp_path, "+tcp")
    m = scrape(mport)
    qs = m["gslb_dns_queries_total"]
    assert queries(m) - n0 == 40
    assert qs[(("ecs", "no"), ("qtype", "AAAA"), ("rcode", "NOERROR"), ("transport", "tcp"))] == 5
    assert qs[(("ecs", "yes"), ("qtype", "A"), ("rcode", "NOERROR"), ("transport", "udp"))] == 3
    assert qs[(("ecs", "no"), ("qtype", "A"), ("rcode", "NXDOMAIN"), ("transport", "udp"))] == 2
    assert m["gslb_dns_cache_hits_total"][()] + m["gslb_dns_cache_misses_total"][()] == queries(m)
    assert m["gslb_dns_cache_hits_total"][()] >= 30  # at most one miss per worker and kind
    assert sum(m["gslb_dns_answers_total"].values()) >= 38
    # Kill one worker: it is respawned; what it counted stays in the sums.
    pids = [int(x) for x in next(line for line in p.log if "event=workers_started" in line)
            .split("pids=")[1].split()[0].split(",")]
    os.kill(pids[0], signal.SIGKILL)
    after = poll(lambda: (lambda x: x if x["gslb_dns_worker_respawns_total"][()] == 1
                          and x["gslb_dns_workers"][()] == 2 else None)(scrape(mport)), 30, "respawn")
    assert queries(after) == queries(m)
    dig_batch(port, ["www.lab.test A"] * 10, tmp_path)
    assert queries(scrape(mport)) == queries(m) + 10
    # A reload counts once per serving process.
    os.kill(p.pid, signal.SIGHUP)
    poll(lambda: scrape(mport)["gslb_dns_reloads_total"][(("result", "ok"),)] == 2, 30, "two reloads")


class _Upstream(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        body = b"hello from upstream\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@need_tools("curl")
def test_edge_and_agent_metrics_after_curl_traffic(tmp_path):
    ca = CertAuthority.create(tmp_path / "ca")
    token = secret_file(tmp_path / "authtokens", "metrics-token-123\n")
    https_port, http_port, health_port, agent_port = free_port(), free_port(), free_port(), free_port()
    lo, hi = free_range(2)
    cfg = tmp_path / "edge.toml"
    cfg.write_text(f"""
zone = "lab.test"
[edge]
ca_dir = "{tmp_path / 'ca'}"
cert_dir = "{tmp_path / 'certs'}"
authtokens_file = "{token}"
tcp_ports = "{lo}-{hi}"
[edge.modules]
order = ["ip_restriction"]
[pops.t]
listen = ["127.0.0.1"]
https_port = {https_port}
http_port = {http_port}
health_listen = "127.0.0.1:{health_port}"
""")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    edge = Proc([*GSLB, "edge", "--config", str(cfg), "--pop", "t", "--workers", "1"], "edge")
    agent = None
    try:
        edge.wait_line(r"gslb edge: pop=t")
        agent = Proc([*GSLB, "agent", "http", str(server.server_address[1]), "--name", "demo",
                      "--server", f"127.0.0.1:{https_port}", "--zone", "lab.test", "--ca", str(ca.cert_path),
                      "--authtoken-file", str(token), "--metrics", f"127.0.0.1:{agent_port}"], "agent")
        agent.wait_line(r"forwarding https://demo\.app\.lab\.test")
        for _ in range(5):
            r = curl_https(ca.cert_path, https_port, "demo.app.lab.test", "/x", max_time=30, timeout=60)
            assert r.returncode == 0 and r.stdout == b"hello from upstream\n", r.stderr
        r = curl_https(ca.cert_path, https_port, "nobody.app.lab.test", "/", "-o", "/dev/null", "-w", "%{http_code}",
                       max_time=30, timeout=60)
        assert r.stdout == b"404", r
        # Connections end asynchronously after curl exits: their bytes count once they are closed.
        # What stays open is the agent's session.
        m = poll(lambda: (lambda x: x if x["gslb_edge_connections_open"][()] == 1 else None)(scrape(health_port)),
                 30, "the clients' connections closed")
        assert m["gslb_edge_connections_total"][(("kind", "https"),)] == 6
        assert m["gslb_edge_connections_total"][(("kind", "agent"),)] == 1
        reqs = m["gslb_edge_requests_total"]
        assert reqs[(("code", "2xx"), ("endpoint", "demo.app.lab.test"), ("origin", "upstream"))] == 5
        assert reqs[(("code", "4xx"), ("endpoint", "nobody.app.lab.test"), ("origin", "edge"))] == 1
        assert m["gslb_edge_request_duration_seconds_count"][()] == 5
        assert 0 < m["gslb_edge_request_duration_seconds_sum"][()] < 5 * 30
        assert m["gslb_edge_module_decisions_total"][(("module", "none"), ("verdict", "allow"))] == 5
        out = m["gslb_edge_bytes_total"][(("direction", "out"), ("kind", "https"))]
        assert out >= 5 * len(b"hello from upstream\n")
        assert m["gslb_edge_bytes_total"][(("direction", "in"), ("kind", "https"))] >= 5 * len(b"GET /x HTTP/1.1\r\n")
        assert m["gslb_edge_agent_sessions"][()] == 1 and m["gslb_edge_bindings"][()] == 1
        # The abuse layer is on by default: its stats() are there (loopback is exempt: nothing blocked).
        assert m["gslb_edge_abuse_stat"][(("stat", "blocked"),)] == 0
        a = scrape(agent_port)
        assert a["gslb_agent_session_up"] == {(("server", f"127.0.0.1:{https_port}"),): 1}
        assert a["gslb_agent_sessions_total"][()] == 1
        assert a["gslb_agent_streams_total"][()] == 5
        assert a["gslb_agent_upstream_errors_total"][()] == 0
        assert a["gslb_agent_bytes_total"][(("direction", "in"),)] >= 5 * len(b"GET /x HTTP/1.1\r\n")
        assert a["gslb_agent_bytes_total"][(("direction", "out"),)] >= 5 * len(b"hello from upstream\n")
        # The upstream goes away: the next request is an upstream error at the agent, a 502 to the client.
        server.shutdown()
        server.server_close()
        r = curl_https(ca.cert_path, https_port, "demo.app.lab.test", "/", "-o", "/dev/null", "-w", "%{http_code}",
                       max_time=30, timeout=60)
        assert r.stdout == b"502", r
        poll(lambda: scrape(agent_port)["gslb_agent_upstream_errors_total"][()] == 1, 30, "upstream error counted")
        poll(lambda: scrape(health_port)["gslb_edge_requests_total"].get(
            (("code", "5xx"), ("endpoint", "demo.app.lab.test"), ("origin", "upstream"))) == 1, 30,
            "502 counted (the agent's page is the upstream's answer)")
    finally:
        if agent is not None:
            agent.stop()
        edge.stop()
