"""`gslb edge --workers 2` on loopback, real processes: curl -> either worker -> (handover) -> the
worker holding the agent's session -> `gslb agent` -> upstream (docs/workers.md)."""
from __future__ import annotations

import http.server
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.request

import pytest

from _helpers import CURL, GSLB, Proc, curl_https, free_port, free_range, loopback_edge_toml, secret_file, tcp_echo_through, LineEcho
from edge.certs import CertAuthority

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def _upstream(body: bytes) -> int:
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv.server_address[1]


def _echo() -> int:
    import asyncio
    ready, box = threading.Event(), {}

    def run():
        loop = asyncio.new_event_loop()
        srv = loop.run_until_complete(loop.create_server(LineEcho, "127.0.0.1", 0))
        box["port"] = srv.sockets[0].getsockname()[1]
        ready.set()
        loop.run_forever()
    threading.Thread(target=run, daemon=True).start()
    assert ready.wait(10)
    return box["port"]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    if CURL is None:
        pytest.fail("curl not installed")
    tmp = tmp_path_factory.mktemp("workers")
    ca = CertAuthority.create(tmp / "ca")
    token = secret_file(tmp / "authtokens", "workers-token-123\n")
    https_port, health_port = free_port(), free_port()
    lo, hi = free_range(2)
    cfg = loopback_edge_toml(tmp, token, https_port, (lo, hi), edge_extra="http_port = 0",
                             pop_extra=f'health_listen = "127.0.0.1:{health_port}"')
    edge = Proc([*GSLB, "edge", "--config", str(cfg), "--pop", "t", "--workers", "2", "-v"], "edge")
    m = edge.wait_line(r"gslb edge: workers=2 supervisor=(\d+) worker0=(\d+) worker1=(\d+)")
    pids = [int(m.group(2)), int(m.group(3))]
    common = ["--server", f"127.0.0.1:{https_port}", "--zone", "lab.test", "--ca", str(ca.cert_path),
              "--authtoken-file", str(token)]
    agents = []
    for name in ("one", "two"):
        a = Proc([*GSLB, "agent", "http", str(_upstream(f"upstream {name}".encode())), "--name", name, *common], name)
        a.wait_line(rf"forwarding https://{name}\.app\.lab\.test")
        agents.append(a)
    tcp = Proc([*GSLB, "agent", "tcp", str(_echo()), *common], "agent-tcp")
    tcp_port = int(tcp.wait_line(r"forwarding tcp://[^:]+:(\d+)").group(1))
    agents.append(tcp)
    ns = dict(ca=ca, token=token, edge=edge, pids=pids, https_port=https_port, health_port=health_port, tcp_port=tcp_port,
              agents=agents)
    yield type("Net", (), ns)
    for a in agents:
        a.stop()
    edge.stop()


def _health(net) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{net.health_port}/healthz", timeout=10) as r:
        return json.loads(r.read())


def _get(net, name: str) -> tuple[int, bytes]:
    r = curl_https(net.ca.cert_path, net.https_port, f"{name}.app.lab.test", "/", "-w", "\n%{http_code}")
    body, _, code = r.stdout.rpartition(b"\n")
    return int(code or 0), body


def test_agent_sessions_are_spread_over_the_workers(net):
    """Agents one and two connected one after the other: whichever worker the kernel gave the
    second one, it was handed to the worker without a session (docs/workers.md), so each
    worker holds one of them (the socket of each agent's connection lives in its worker)."""
    def conns(flt: str) -> list[tuple[str, str, int]]:
        r = subprocess.run(["ss", "-tnpH", "state", "established", flt], capture_output=True, text=True, timeout=20)
        assert r.returncode == 0, r.stderr
        out = []
        for line in r.stdout.splitlines():
            f = line.split()
            m = re.search(r"pid=(\d+)", line)
            if len(f) >= 4 and m:
                out.append((f[2], f[3], int(m.group(1))))   # local, peer, pid
        return out
    # the agents' side: their local address -> agent pid; the edge's side: the peer (= agent's local) -> worker
    agent_of = {local: pid for local, _, pid in conns(f"( dport = :{net.https_port} )")}
    worker_of = {agent_of.get(peer): pid for _, peer, pid in conns(f"( sport = :{net.https_port} )")}
    one, two = (a.p.pid for a in net.agents[:2])
    assert worker_of.get(one) in net.pids and worker_of.get(two) in net.pids, (worker_of, net.pids)
    assert worker_of[one] != worker_of[two], worker_of


def test_connections_accepted_by_either_worker_reach_the_right_agent(net):
    before = _health(net)
    for _ in range(12):   # each curl a new connection: the kernel spreads them over both workers
        for name in ("one", "two"):
            assert _get(net, name) == (200, f"upstream {name}".encode())
    h = _health(net)
    assert h["workers"] == 2 and h["worker"] == 0
    # worker 0 either handed connections over or had them handed in (24 connections, 2 workers)
    moved = (h["handed_over"] + h["handed_in"]) - (before["handed_over"] + before["handed_in"])
    assert moved > 0 and h["handover_failed"] == 0, h


def _metrics(net) -> dict[tuple, float]:
    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(f"http://127.0.0.1:{net.health_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def _served(m: dict[tuple, float], name: str) -> float:
    key = ("gslb_edge_requests_total", (("code", "2xx"), ("endpoint", f"{name}.app.lab.test"), ("origin", "upstream")))
    return m.get(key, 0.0)


def test_metrics_and_healthz_sum_what_both_workers_served(net):
    n = 10
    before = _metrics(net)
    h0 = _health(net)
    for _ in range(n):   # new connections each: both workers accept some; the session owner serves
        for name in ("one", "two"):
            assert _get(net, name) == (200, f"upstream {name}".encode())
    m = _metrics(net)
    assert m[("gslb_edge_workers", ())] == 2 and m[("gslb_edge_workers_answering", ())] == 2, m
    # "one" and "two" may live in different workers: the edge's sum counts every request once
    for name in ("one", "two"):
        assert _served(m, name) - _served(before, name) == n, (name, _served(before, name), _served(m, name))
    assert m[("gslb_edge_agent_sessions", ())] == 3      # two http agents and the tcp agent, wherever they are
    h = _health(net)
    assert h["workers_answering"] == 2 and sorted(h["per_worker"]) == ["0", "1"]
    assert h["sessions"] == 3 == sum(w["sessions"] for w in h["per_worker"].values())
    assert h["requests"] - h0["requests"] >= 2 * n
    assert h["requests"] == sum(w["requests"] for w in h["per_worker"].values())


def test_tcp_endpoint_is_served_by_the_worker_owning_it(net):
    for i in range(5):
        assert tcp_echo_through("127.0.0.1", net.tcp_port, b"w%d" % i).endswith(b"echo:w%d" % i)


def _handshake(net, name: str) -> bool:
    """True: the edge finished a TLS handshake for `name` (it would answer HTTPS); False: closed."""
    ctx = ssl.create_default_context(cafile=str(net.ca.cert_path))   # accepts the edge's own certificate
    try:
        with socket.create_connection(("127.0.0.1", net.https_port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname=f"{name}.app.lab.test"):
                return True
    except (ssl.SSLError, ConnectionError, OSError):
        return False


def test_an_offline_tls_endpoint_is_closed_by_every_worker(net):
    """The name was bound as a TLS endpoint in one worker; after its agent left, a connection
    accepted by the other worker is closed too, not terminated for the HTTPS 404 page."""
    common = ["--server", f"127.0.0.1:{net.https_port}", "--zone", "lab.test", "--ca", str(net.ca.cert_path),
              "--authtoken-file", str(net.token)]
    extra = Proc([*GSLB, "agent", "tls", str(_echo()), "--name", "brief", *common], "agent-tls")
    extra.wait_line(r"forwarding tls://brief\.app\.lab\.test")
    extra.stop()
    deadline = time.monotonic() + 30      # until the edge saw the session end (the binding is gone)
    while time.monotonic() < deadline and _health(net)["sessions"] != 3:
        time.sleep(0.1)
    assert _health(net)["sessions"] == 3
    # 16 new connections: the kernel spreads them over both workers; every one must be closed
    terminated = sum(_handshake(net, "brief") for _ in range(16))
    assert terminated == 0, net.edge.log[-30:]


def test_a_killed_worker_is_restarted_and_its_agents_reconnect(net):
    victim = net.pids[1]
    os.kill(victim, signal.SIGKILL)
    m = net.edge.wait_line(r"event=worker_respawned .*new=(\d+)", 30)
    net.pids[1] = int(m.group(1))
    assert _alive(net.pids[1]) and not _alive(victim)
    deadline = time.monotonic() + 60     # the agents back off and reconnect (to either worker)
    ok: dict[str, bool] = {}
    while time.monotonic() < deadline and len(ok) < 2:
        for name in ("one", "two"):
            if name not in ok and _get(net, name) == (200, f"upstream {name}".encode()):
                ok[name] = True
        time.sleep(0.2)
    assert set(ok) == {"one", "two"}, net.edge.log[-30:]


def test_sigterm_stops_the_supervisor_and_every_worker(net):
    net.edge.stop()
    assert net.edge.p.returncode == 0, net.edge.log[-20:]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in net.pids):
        time.sleep(0.05)
    assert not any(_alive(p) for p in net.pids)
