"""Cross-PoP routing on loopback: a real 3-member etcd, two `gslb edge`
processes (PoPs a and b on 127.0.0.11 and 127.0.0.12) with a peer link, a
`gslb agent` bound at a, an upstream in a thread of this test, and curl.

One module-scoped network, tests in order (pytest keeps file order):
route through b -> a with Via naming b; measure cross-PoP vs same-PoP
latency (printed, not asserted); etcd faults (one member: nothing visible;
two: traffic flows, a new bind fails clearly; back: binds work); SIGKILL
of edge a: the agent moves to b (pinned-ingress fallback) and serves again.
"""
from __future__ import annotations

import http.client
import json
import signal
import socket
import ssl
import statistics
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from _helpers import CURL, GSLB, Proc, free_port, free_range, secret_file
from test_registry_etcd import EtcdCluster, _need_etcd

from edge.certs import CertAuthority

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

A, B = "127.0.0.11", "127.0.0.12"
HOST = "demo.app.lab.test"
RESULTS: dict[str, object] = {}


class _Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # head and body are two writes: without this, Nagle + delayed ACK add 40 ms
    disable_nagle_algorithm = True

    def do_GET(self):  # noqa: N802
        body = json.dumps({"path": self.path, "xff": self.headers.get("X-Forwarded-For")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.path == "/via":
            self.send_header("Via", "1.1 upstream-proxy")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    _need_etcd()
    if CURL is None:
        pytest.skip("curl not installed")
    tmp = tmp_path_factory.mktemp("peer")
    cluster = EtcdCluster(tmp)
    cluster.start()
    ca = CertAuthority.create(tmp / "ca")
    token = secret_file(tmp / "authtokens", "peer-token-123\n")
    https_port, peer_port = free_port(A, B), free_port(A, B)
    lo, hi = free_range(4)
    cfg = tmp / "edge.toml"
    cfg.write_text(f"""
zone = "lab.test"
[edge]
ca_dir = "{tmp / 'ca'}"
authtokens_file = "{token}"
https_port = {https_port}
http_port = 0
tcp_ports = "{lo}-{hi}"

[registry]
kind = "etcd"
endpoints = {json.dumps(list(cluster.endpoints))}
lease_ttl = 4
request_timeout = 0.5
write_timeout = 2.0

[peer]
ping_interval = 1.0
ping_timeout = 2.0

[peers.a]
address = "{A}:{peer_port}"
ingress = ["{A}:{https_port}"]
[peers.b]
address = "{B}:{peer_port}"
ingress = ["{B}:{https_port}"]

[pops.a]
listen = ["{A}"]
cert_dir = "{tmp / 'certs-a'}"
[pops.b]
listen = ["{B}"]
cert_dir = "{tmp / 'certs-b'}"
""")
    up = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    threading.Thread(target=up.serve_forever, daemon=True).start()
    edges = {p: Proc([*GSLB, "edge", "--config", str(cfg), "--pop", p, "-v"], f"edge-{p}") for p in "ab"}
    for p, e in edges.items():
        e.wait_line(rf"gslb edge: pop={p} .*registry=etcd peer=")
    common = ["--zone", "lab.test", "--ca", str(ca.cert_path), "--authtoken-file", str(token),
              "--heartbeat-interval", "0.5", "--heartbeat-timeout", "2", "-v"]
    agent = Proc([*GSLB, "agent", "http", str(up.server_address[1]), "--name", "demo",
                  "--server", f"{A}:{https_port}", *common], "agent")
    agent.wait_line(r"forwarding https://demo\.app\.lab\.test")
    ns = dict(ca=ca, cluster=cluster, edges=edges, agent=agent, https_port=https_port, common=common,
              up=up, tmp=tmp, extra=[])
    n = type("Net", (), ns)
    yield n
    for p in [agent, *n.extra, *edges.values()]:
        p.stop()
    up.shutdown()
    cluster.stop()
    if RESULTS:
        print("\npeer routing results:", json.dumps(RESULTS))


def curl(net, addr, path="/", name=HOST):
    return subprocess.run(
        [CURL, "-sS", "-i", "--max-time", "10", "--cacert", str(net.ca.cert_path),
         "--resolve", f"{name}:{net.https_port}:{addr}", f"https://{name}:{net.https_port}{path}"],
        capture_output=True, timeout=30, text=True)


def _headers(out: str) -> dict[str, list[str]]:
    h: dict[str, list[str]] = {}
    for line in out.replace("\r\n", "\n").split("\n\n", 1)[0].split("\n")[1:]:
        k, _, v = line.partition(":")
        h.setdefault(k.strip().lower(), []).append(v.strip())
    return h


class Client:
    """One keep-alive HTTPS connection to an edge address (sequential requests)."""

    def __init__(self, net, addr):
        ctx = ssl.create_default_context(cafile=str(net.ca.cert_path))
        self.c = http.client.HTTPSConnection(HOST, net.https_port, context=ctx, timeout=10)
        self.c.sock = ctx.wrap_socket(socket.create_connection((addr, net.https_port), timeout=10),
                                      server_hostname=HOST)

    def get(self, path="/"):
        self.c.request("GET", path)
        r = self.c.getresponse()
        return r.status, r.getheader("Via"), r.read()

    def close(self):
        self.c.close()


def test_request_entering_b_reaches_agent_at_a_with_via_b(net):
    r = curl(net, B, "/x")
    assert r.returncode == 0, r.stderr
    h = _headers(r.stdout)
    assert r.stdout.startswith("HTTP/1.1 200")
    assert h.get("via") == ["1.1 b.lab.test"], r.stdout
    assert json.loads(r.stdout.replace("\r\n", "\n").split("\n\n", 1)[1]) == {"path": "/x", "xff": "127.0.0.1"}
    r = curl(net, A, "/x")  # same PoP: Via names a
    assert _headers(r.stdout)["via"] == ["1.1 a.lab.test"]
    assert any("peer_stream" in line or "peer_accepted" in line or "peer_connected" in line
               for line in net.edges["b"].log + net.edges["a"].log)


def test_existing_via_is_appended_to(net):
    r = curl(net, B, "/via")
    assert _headers(r.stdout)["via"] == ["1.1 upstream-proxy, 1.1 b.lab.test"]


def test_unknown_endpoint_is_404_on_both_pops(net):
    for addr in (A, B):
        r = curl(net, addr, "/", name="nobody.app.lab.test")
        assert r.stdout.startswith("HTTP/1.1 404"), r.stdout[:200]


def _echo_server():
    srv = socket.create_server(("127.0.0.1", 0))

    def serve():
        while True:  # daemon thread: ends with the test process
            try:
                c, _ = srv.accept()
            except OSError:
                return

            def one(c=c):
                with c:
                    while data := c.recv(65536):
                        c.sendall(data)
            threading.Thread(target=one, daemon=True).start()
    threading.Thread(target=serve, daemon=True).start()
    return srv


def test_tcp_endpoint_port_is_global_and_reached_through_the_other_pop(net):
    srv = _echo_server()
    agent = Proc([*GSLB, "agent", "tcp", str(srv.getsockname()[1]), "--server", f"{A}:{net.https_port}",
                  *net.common], "agent-tcp")
    net.extra.append(agent)
    port = int(agent.wait_line(r"forwarding tcp://[^:]+:(\d+)").group(1))
    for addr in (B, A):
        with socket.create_connection((addr, port), timeout=10) as c:
            c.sendall(b"over the peer link\n" * 1000)
            got = b""
            while len(got) < 19000:  # bounded by the socket timeout
                chunk = c.recv(65536)
                assert chunk
                got += chunk
            assert got == b"over the peer link\n" * 1000
    agent.stop()
    srv.close()


def test_latency_cross_pop_vs_same_pop_reported(net):
    out = {}
    for label, addr in (("same_pop", A), ("cross_pop", B)):
        c = Client(net, addr)
        try:
            for _ in range(20):  # warm-up: TLS, peer link, upstream connection
                c.get()
            samples = []
            for _ in range(200):
                t0 = time.perf_counter()
                status, via, _ = c.get()
                samples.append(time.perf_counter() - t0)
                assert status == 200
        finally:
            c.close()
        samples.sort()
        out[label] = {"p50_ms": round(statistics.median(samples) * 1000, 3),
                      "p99_ms": round(samples[int(len(samples) * 0.99) - 1] * 1000, 3)}
    out["added_p50_ms"] = round(out["cross_pop"]["p50_ms"] - out["same_pop"]["p50_ms"], 3)
    out["added_p99_ms"] = round(out["cross_pop"]["p99_ms"] - out["same_pop"]["p99_ms"], 3)
    RESULTS["latency"] = out
    print("latency:", out)


def _traffic(net, addr, stop, counts):
    c = None
    while not stop.is_set():  # bounded by the test setting `stop`
        try:
            if c is None:
                c = Client(net, addr)
            status, _, _ = c.get()
            counts["ok" if status == 200 else "bad"] += 1
        except Exception:  # noqa: BLE001 - counted, reconnect
            counts["err"] += 1
            c = None
        time.sleep(0.01)
    if c is not None:
        c.close()


def test_etcd_faults_one_member_invisible_two_members_new_binds_fail(net):
    counts = {"ok": 0, "bad": 0, "err": 0}
    stop = threading.Event()
    t = threading.Thread(target=_traffic, args=(net, B, stop, counts), daemon=True)
    t.start()
    try:
        time.sleep(0.5)
        net.cluster.kill(0)
        time.sleep(2.0)
        one = dict(counts)
        assert one["ok"] > 0 and one["bad"] == 0 and one["err"] == 0, one
        net.cluster.kill(1)
        # no quorum: a new bind fails with the clear, retryable error
        other = Proc([*GSLB, "agent", "http", str(net.up.server_address[1]), "--name", "other",
                      "--server", f"{B}:{net.https_port}", *net.common], "agent-other")
        net.extra.append(other)
        m = other.wait_line(r"registry_unavailable", timeout=20)
        assert m
        time.sleep(1.0)
        two = dict(counts)
        assert two["ok"] > one["ok"] and two["bad"] == 0 and two["err"] == 0, two
        net.cluster.start_member(0)
        net.cluster.start_member(1)
        t0 = time.monotonic()
        other.wait_line(r"forwarding https://other\.app\.lab\.test", timeout=40)
        RESULTS["bind_after_quorum_back_s"] = round(time.monotonic() - t0, 2)
    finally:
        stop.set()
        t.join(10)
    RESULTS["etcd_faults_requests"] = dict(counts)
    assert counts["bad"] == 0 and counts["err"] == 0, counts
    r = curl(net, A, "/", name="other.app.lab.test")  # bound at b, entering a
    assert r.stdout.startswith("HTTP/1.1 200") and _headers(r.stdout)["via"] == ["1.1 a.lab.test"]


def test_sigkill_edge_a_agent_moves_to_b(net):
    killed = time.monotonic()
    net.edges["a"].p.send_signal(signal.SIGKILL)
    net.edges["a"].p.wait(5)
    ok_at = None
    deadline = killed + 30
    while time.monotonic() < deadline:  # bounded
        r = curl(net, B, "/after")
        if r.stdout.startswith("HTTP/1.1 200"):
            ok_at = time.monotonic()
            break
        time.sleep(0.1)
    assert ok_at is not None, "\n".join(net.agent.log[-30:])
    RESULTS["agent_failover_s"] = round(ok_at - killed, 2)
    assert _headers(r.stdout)["via"] == ["1.1 b.lab.test"]
    assert any("connected_via_fallback" in line for line in net.agent.log)
    # bound again at once: the same agent took its name over from a's session,
    # without waiting for a's lease to expire
    assert any("session_takeover" in line for line in net.edges["b"].log)
