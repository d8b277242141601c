"""The edge front on 127.0.0.1 with real curl, websockets and ssl clients.

The edge runs in a thread on its own uvloop loop. The hub is a stand-in
with the real hub's interface (`lookup`, `add_listener`, `Endpoint.open_stream`), whose
streams are loopback TCP connections straight to local upstreams, so these
tests pin the front (SNI dispatch, TLS, HTTP rewriting, relaying, modules)
apart from the tunnel.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import ssl
import subprocess
import threading
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from _helpers import (CURL, LineEcho, check_sse_event_by_event, curl_https, free_port, make_app, tcp_echo_through,
                      tls_exchange, websocket)

from edge.certs import CertAuthority, CertStore
from edge.config import EdgeConfig, Limits, Timeouts
from edge.endpoint import Endpoint
from edge.modules import Chain, Decision, HttpCall, Module, Response, Verdict
from edge.server import EdgeServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

DOMAIN = "app.lab.test"


# ---------------------------------------------------------------- fake tunnel


class LoopbackStream(asyncio.Protocol):
    """Shaped like edge.tunnel.session.Stream, carried by a TCP connection to an upstream."""

    def __init__(self) -> None:
        self.t: asyncio.Transport | None = None
        self.p: Any = None
        self._early: list[tuple[str, Any]] = []
        self._closing = False
        self._eof = False

    # upstream TCP callbacks
    def connection_made(self, transport):
        self.t = transport

    def data_received(self, data):
        self._to_p("data_received", data)

    def eof_received(self):
        self._eof = True
        self._to_p("eof_received", None)
        return True

    def connection_lost(self, exc):
        self._to_p("connection_lost", exc)

    def pause_writing(self):
        self._to_p("pause_writing", None)

    def resume_writing(self):
        self._to_p("resume_writing", None)

    def _to_p(self, name, arg):
        if self.p is None:
            self._early.append((name, arg))
            return
        fn = getattr(self.p, name)
        fn() if name in ("eof_received", "pause_writing", "resume_writing") else fn(arg)

    # transport interface
    def set_protocol(self, p):
        self.p = p
        p.connection_made(self)
        early, self._early = self._early, []
        for name, arg in early:
            self._to_p(name, arg)

    def write(self, data):
        self.t.write(data)

    def close(self):
        if self._closing:
            return
        self._closing = True
        if self._eof:
            self.t.close()
        else:
            self.t.write_eof()  # half-close, as a yamux FIN

    def abort(self):
        self._closing = True
        self.t.abort()

    def is_closing(self):
        return self._closing or self.t.is_closing()

    def pause_reading(self):
        self.t.pause_reading()

    def resume_reading(self):
        if not self.t.is_closing():
            self.t.resume_reading()

    def get_extra_info(self, name, default=None):
        return self.t.get_extra_info(name, default)


class FakeBinding(Endpoint):
    def __init__(self, kind, hostname, port, upstream, options=None):
        self.kind, self.hostname, self.port = kind, hostname, port
        self.url = f"tcp://127.0.0.1:{port}" if kind == "tcp" else f"https://{hostname}"
        self.upstream = upstream
        self.options = MappingProxyType(dict(options or {}))
        self.opened: list[dict] = []

    async def open_stream(self, client_addr, client_port, *, sni=None, tls_terminated=False):
        self.opened.append(dict(client_addr=client_addr, client_port=client_port, sni=sni,
                                tls_terminated=tls_terminated))
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(LoopbackStream, *self.upstream)
        return proto


class FakeHub:
    def __init__(self):
        self.by_host: dict[str, FakeBinding] = {}
        self.by_port: dict[int, FakeBinding] = {}
        self.connections: set = set()
        self.peers = None  # one node: no peer links
        self.listeners: list = []

    def add_listener(self, fn):
        self.listeners.append(fn)

    def add(self, b: FakeBinding):
        if b.kind == "tcp":
            self.by_port[b.port] = b
        else:
            self.by_host[b.hostname] = b
        for fn in self.listeners:
            fn("bind", b)
        return b

    def lookup(self, kind, key):
        b = self.by_port.get(int(key)) if kind == "tcp" else self.by_host.get(str(key))
        return b if b is not None and b.kind == kind else None

    def bindings(self):
        return list(self.by_host.values()) + list(self.by_port.values())


# ---------------------------------------------------------------- upstreams


# ---------------------------------------------------------------- the edge


class Lab:
    def __init__(self, tmp: Path, limits: Limits | None = None):
        self.limits = limits or Limits(max_header_bytes=8192)
        self.tmp = tmp
        self.ca = CertAuthority.create(tmp / "ca")
        self.agent_ca = CertAuthority.create(tmp / "agent-ca", common_name="agent-side CA")
        self.https_port = free_port()
        self.http_port = free_port()
        self.health_port = free_port()
        self.tcp_port = free_port()
        self.hub = FakeHub()
        self.state: dict[str, Any] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ready = threading.Event()
        self.error: BaseException | None = None

    def start(self):
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(30), "edge did not start"
        if self.error:
            raise self.error

    def _run(self):
        import uvloop

        self.loop = uvloop.new_event_loop()
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._setup())
        except BaseException as exc:  # noqa: BLE001
            self.error = exc
            self.ready.set()
            return
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self._teardown())
        self.loop.close()

    async def _setup(self):
        from aiohttp import web

        self.state["sse_release"] = asyncio.Event()
        runner = web.AppRunner(make_app(self.state["sse_release"]))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.runner = runner
        http_up = ("127.0.0.1", runner.addresses[0][1])

        # TLS passthrough upstream: its own certificate from another CA
        up_store = CertStore(self.agent_ca, self.tmp / "agent-certs")
        up_ctx = up_store.context("secure.app.lab.test")
        loop = asyncio.get_running_loop()
        self.tls_srv = await loop.create_server(lambda: LineEcho(), "127.0.0.1", 0, ssl=up_ctx)
        self.plain_srv = await loop.create_server(lambda: LineEcho(), "127.0.0.1", 0)
        self.proxy_srv = await loop.create_server(lambda: LineEcho(proxy=True), "127.0.0.1", 0)
        https_site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=up_store.context("securehttp.app.lab.test"))
        await https_site.start()
        https_up = ("127.0.0.1", https_site._server.sockets[0].getsockname()[1])
        addr = lambda srv: ("127.0.0.1", srv.sockets[0].getsockname()[1])  # noqa: E731

        hub = self.hub
        self.demo = hub.add(FakeBinding("http", "demo.app.lab.test", None, http_up))
        hub.add(FakeBinding("http", "private.app.lab.test", None, http_up, {"deny_cidrs": ["127.0.0.0/8"]}))
        hub.add(FakeBinding("tls", "secure.app.lab.test", None, addr(self.tls_srv), {"terminate_at": "agent"}))
        hub.add(FakeBinding("tls", "securehttp.app.lab.test", None, https_up, {"terminate_at": "agent"}))
        hub.add(FakeBinding("tls", "plain.app.lab.test", None, addr(self.plain_srv), {"terminate_at": "edge"}))
        hub.add(FakeBinding("tls", "pp.app.lab.test", None, addr(self.proxy_srv),
                            {"terminate_at": "agent", "proxy_protocol": True}))
        hub.add(FakeBinding("tcp", None, self.tcp_port, addr(self.proxy_srv), {"proxy_protocol": True}))

        cfg = EdgeConfig(
            source="test", zone="lab.test", pop="test", https_domain=DOMAIN,
            listen=("127.0.0.1", "::1"), https_port=self.https_port, http_port=self.http_port,
            tcp_ports=(self.tcp_port, self.tcp_port), health_listen=("127.0.0.1", self.health_port),
            ca_dir=str(self.tmp / "ca"), cert_dir=str(self.tmp / "certs"), authtokens_file=None,
            timeouts=Timeouts(handshake=3.0, idle=60.0, stream_open=5.0),
            limits=self.limits,
            module_order=("ip_restriction",), module_options={"ip_restriction": {}},
        )
        self.edge = EdgeServer(cfg, hub, CertStore(self.ca, self.tmp / "certs"))
        await self.edge.start()

    async def _teardown(self):
        await self.edge.close()
        for s in (self.tls_srv, self.plain_srv, self.proxy_srv):
            s.close()
        await self.runner.cleanup()

    def call(self, fn, *args):
        self.loop.call_soon_threadsafe(fn, *args)

    def stop(self):
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)

    def curl(self, name: str, path: str, *extra: str, port: int | None = None,
             cafile: Path | None = None) -> subprocess.CompletedProcess:
        return curl_https(cafile or self.ca.cert_path, port or self.https_port, name, path, *extra)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if CURL is None:
        pytest.skip("curl not installed")
    lab = Lab(tmp_path_factory.mktemp("edge"))
    lab.start()
    yield lab
    lab.stop()


@pytest.fixture(scope="module")
def small_lab(tmp_path_factory):
    lab = Lab(tmp_path_factory.mktemp("edge-small"), Limits(max_connections=2))
    lab.start()
    yield lab
    lab.stop()


# ---------------------------------------------------------------- tests


def test_https_request_reaches_upstream_with_forwarded_headers(lab):
    r = lab.curl("demo.app.lab.test", "/headers?x=1")
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout)
    assert seen["X-Forwarded-For"] == "127.0.0.1"
    assert seen["X-Forwarded-Proto"] == "https"
    assert seen["X-Forwarded-Host"] == f"demo.app.lab.test:{lab.https_port}"
    assert seen["_path"] == "/headers?x=1"
    assert lab.demo.opened[-1]["sni"] == "demo.app.lab.test" and lab.demo.opened[-1]["tls_terminated"]


def test_client_forged_forwarded_for_is_replaced(lab):
    r = lab.curl("demo.app.lab.test", "/headers", "-H", "X-Forwarded-For: 6.6.6.6")
    assert json.loads(r.stdout)["X-Forwarded-For"] == "127.0.0.1"


def test_keep_alive_two_requests_one_connection_one_stream(lab):
    before = len(lab.demo.opened)
    port = lab.https_port
    r = subprocess.run(
        [CURL, "-sS", "--max-time", "20", "--cacert", str(lab.ca.cert_path),
         "--resolve", f"demo.app.lab.test:{port}:127.0.0.1", "-w", "|%{num_connects}\n",
         f"https://demo.app.lab.test:{port}/headers?n=1", f"https://demo.app.lab.test:{port}/headers?n=2"],
        capture_output=True, timeout=60)
    out = r.stdout.decode()
    assert '"_path": "/headers?n=1"' in out and '"_path": "/headers?n=2"' in out
    assert "|1\n" in out and "|0\n" in out  # second request reused the connection
    assert len(lab.demo.opened) == before + 1


def test_offline_endpoint_answers_404_page_with_error_code(lab):
    r = lab.curl("nobody.app.lab.test", "/", "-i")
    out = r.stdout.decode()
    assert out.startswith("HTTP/1.1 404")
    assert "ERR_GSLB_3200" in out and "nobody.app.lab.test" in out


def test_http_port_redirects_308_to_https(lab):
    r = subprocess.run([CURL, "-sS", "-i", "--max-time", "10", "-H", "Host: demo.app.lab.test",
                        f"http://127.0.0.1:{lab.http_port}/a/b?c=d"], capture_output=True, timeout=30)
    out = r.stdout.decode()
    assert out.startswith("HTTP/1.1 308")
    assert f"Location: https://demo.app.lab.test:{lab.https_port}/a/b?c=d" in out


def test_http_port_unknown_host_is_404(lab):
    r = subprocess.run([CURL, "-sS", "-i", "--max-time", "10", "-H", "Host: example.com",
                        f"http://127.0.0.1:{lab.http_port}/"], capture_output=True, timeout=30)
    assert r.stdout.decode().startswith("HTTP/1.1 404")


def test_http_port_serves_healthz_on_every_address(lab):
    for host in ("127.0.0.1", "[::1]"):
        r = subprocess.run([CURL, "-sS", "--max-time", "10", f"http://{host}:{lab.http_port}/healthz"],
                           capture_output=True, timeout=30)
        assert json.loads(r.stdout)["pop"] == "test"


def test_ip_deny_answers_403(lab):
    r = lab.curl("private.app.lab.test", "/headers", "-i")
    out = r.stdout.decode()
    assert out.startswith("HTTP/1.1 403") and "ERR_GSLB_3210" in out


def test_chunked_upload_streams_through(lab):
    data = os.urandom(3 * 1024 * 1024 + 17)
    r = subprocess.run(
        [CURL, "-sS", "--max-time", "30", "--cacert", str(lab.ca.cert_path),
         "--resolve", f"demo.app.lab.test:{lab.https_port}:127.0.0.1", "-T", "-", "-X", "POST",
         f"https://demo.app.lab.test:{lab.https_port}/upload"],
        input=data, capture_output=True, timeout=60)
    got = json.loads(r.stdout)
    assert got["bytes"] == len(data) and got["sha256"] == hashlib.sha256(data).hexdigest()
    assert got["chunked"] == "chunked"


def test_download_arrives_whole(lab):
    n = 20 * 1024 * 1024 + 3
    r = lab.curl("demo.app.lab.test", f"/download?n={n}")
    assert r.returncode == 0 and len(r.stdout) == n
    assert r.stdout[:256] == bytes(range(256))


def test_sse_first_event_arrives_before_the_stream_ends(lab):
    """The upstream holds event two until the test has read event one: buffering would hang here."""
    lab.call(lab.state["sse_release"].clear)
    check_sse_event_by_event(lab.ca.cert_path, lab.https_port, lambda: lab.call(lab.state["sse_release"].set))


def test_websocket_echo_through_upgrade(lab):
    with websocket(lab.ca.cert_path, lab.https_port) as ws:
        for i in range(3):
            ws.send(f"hello {i}")
            assert ws.recv(timeout=10) == f"echo:hello {i}"
        ws.send(b"\x00" * 100000)
        assert ws.recv(timeout=10) == b"\x00" * 100000


def _tls_client(lab, name, cafile, payload=b"ping\n", port=None):
    ctx = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port or lab.https_port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=name) as s:
            issuer = dict(x[0] for x in s.getpeercert()["issuer"])
            s.sendall(payload)
            buf = b""
            while buf.count(b"\n") < payload.count(b"\n") + (1 if b"proxy" in buf else 0) or not buf:
                chunk = s.recv(4096)
                if not chunk:
                    break
                buf += chunk
                if buf.endswith(payload) or buf.count(b"\n") >= 2:
                    break
            return issuer, buf


def test_tls_passthrough_client_sees_the_upstream_certificate(lab):
    issuer, reply = _tls_client(lab, "secure.app.lab.test", lab.agent_ca.cert_path)
    assert issuer["commonName"] == "agent-side CA"
    assert reply == b"echo:ping\n"
    # and the edge's CA does not verify it: the edge never served its own cert
    with pytest.raises(ssl.SSLCertVerificationError):
        _tls_client(lab, "secure.app.lab.test", lab.ca.cert_path)


def test_tls_passthrough_with_curl_to_an_https_upstream(lab):
    """curl trusts only the agent-side CA: it succeeds only if the upstream's own certificate came through."""
    r = lab.curl("securehttp.app.lab.test", "/headers", cafile=lab.agent_ca.cert_path)
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout)
    assert "X-Forwarded-For" not in seen  # the edge never saw the plaintext
    r = lab.curl("securehttp.app.lab.test", "/headers")  # the edge's CA
    assert r.returncode == 60  # SSL certificate problem


def test_tls_terminated_at_edge_relays_plaintext(lab):
    issuer, reply = _tls_client(lab, "plain.app.lab.test", lab.ca.cert_path)
    assert issuer["commonName"] == "gslb-edge lab CA"
    assert reply == b"echo:ping\n"


def test_tls_passthrough_with_proxy_v2_header(lab):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    # The upstream here is plain: it reads the PROXY header, then the raw ClientHello bytes follow.
    with socket.create_connection(("127.0.0.1", lab.https_port), timeout=10) as raw:
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(inc, out, server_hostname="pp.app.lab.test")
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        hello = out.read()
        raw.sendall(hello)
        buf = b""
        while b"\n" not in buf or len(buf) < len(hello) + 10:
            chunk = raw.recv(65536)
            if not chunk:
                break
            buf += chunk
            if buf.endswith(hello):
                break
    line, rest = buf.split(b"\n", 1)
    assert line.startswith(b"proxy src=127.0.0.1:")
    assert f"dst=127.0.0.1:{lab.https_port}".encode() in line and b"authority=pp.app.lab.test" in line
    assert rest == b"echo:" + hello


@pytest.mark.parametrize("family,addr", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_tcp_endpoint_relays_with_proxy_v2(lab, family, addr):
    buf = tcp_echo_through(addr, lab.tcp_port)
    line = buf.split(b"\n")[0].decode()
    assert line.startswith(f"proxy src={addr}:") and f"dst={addr}:{lab.tcp_port}" in line


def test_https_over_ipv6_listener(lab):
    r = subprocess.run(
        [CURL, "-sS", "--max-time", "10", "--cacert", str(lab.ca.cert_path),
         "--resolve", f"demo.app.lab.test:{lab.https_port}:[::1]",
         f"https://demo.app.lab.test:{lab.https_port}/headers"], capture_output=True, timeout=30)
    assert json.loads(r.stdout)["X-Forwarded-For"] == "::1"


@pytest.mark.parametrize("payload", [b"GET / HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00", b"\x16\x03"])
def test_bad_or_truncated_client_hello_is_closed_quietly(lab, payload):
    with socket.create_connection(("127.0.0.1", lab.https_port), timeout=10) as s:
        s.sendall(payload)
        try:
            # closed with nothing sent back (truncated ones after the handshake
            # timeout); unread bytes make the kernel send RST instead of FIN
            assert s.recv(100) == b""
        except ConnectionResetError:
            pass


def test_unknown_sni_is_closed(lab):
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _tls_client(lab, "example.com", lab.ca.cert_path)


def test_bad_request_gets_400_and_close(lab):
    data = tls_exchange(lab.ca.cert_path, lab.https_port, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 400")


def test_health_endpoint_reports_pop(lab):
    r = subprocess.run([CURL, "-sS", "--max-time", "10", f"http://127.0.0.1:{lab.health_port}/healthz"],
                       capture_output=True, timeout=30)
    got = json.loads(r.stdout)
    assert got["pop"] == "test" and got["status"] == "ok" and got["bindings"] == 7


class IdpGate(Module):
    """Exchanges the client's X-Code at an identity provider (here the lab's
    aiohttp upstream, which echoes request headers) for X-User upstream; no
    code: a redirect that sets a cookie. Observes what it let through."""

    name = "idp_gate"
    observes = True

    def __init__(self, idp_url):
        self.idp_url = idp_url
        self.outcomes = []

    def decide(self, subject):
        code = subject.request.header("X-Code") if subject.request else None
        if code is None:
            return Decision(Verdict.ANSWER, module=self.name, reason="login needed",
                            response=Response(302, (("Location", "https://idp.lab.test/login"),
                                                    ("Set-Cookie", "gslb_state=s1; Secure; HttpOnly"))))
        return Decision(Verdict.PERFORM, effect=HttpCall("GET", self.idp_url, (("X-Code", code),), timeout=5.0))

    def resume(self, subject, effect, result):
        if result.status != 200:
            return Decision(Verdict.ANSWER, status=403, reason=f"idp said {result.status} {result.error}")
        user = "user-" + json.loads(result.body)["X-Code"]
        return Decision(Verdict.PASS, add_upstream=(("X-User", user),), strip_upstream=("X-User",))

    def observe(self, subject, outcome):
        self.outcomes.append(outcome)


def test_module_effects_whole_responses_and_outcomes_through_the_real_edge(lab):
    import time

    gate = IdpGate(f"http://127.0.0.1:{lab.runner.addresses[0][1]}/headers")
    old = lab.edge.chain
    lab.call(setattr, lab.edge, "chain", Chain((gate,)))
    try:
        deadline = time.monotonic() + 10
        while lab.edge.chain is old and time.monotonic() < deadline:
            time.sleep(0.01)
        r = lab.curl("demo.app.lab.test", "/headers", "-i")
        out = r.stdout.decode()
        assert out.startswith("HTTP/1.1 302 Found\r\n"), out
        assert "Location: https://idp.lab.test/login\r\n" in out and "Set-Cookie: gslb_state=s1; Secure; HttpOnly" in out
        assert "Via: 1.1 test.lab.test" in out
        r = lab.curl("demo.app.lab.test", "/headers", "-H", "X-Code: 42", "-H", "X-User: mallory")
        seen = json.loads(r.stdout)
        assert seen["X-User"] == "user-42"  # the client's own X-User was stripped first
        deadline = time.monotonic() + 10
        while not gate.outcomes and time.monotonic() < deadline:
            time.sleep(0.01)
        (outcome,) = gate.outcomes
        assert outcome.status == 200 and outcome.bytes_down > len(r.stdout) and outcome.duration > 0
    finally:
        lab.call(setattr, lab.edge, "chain", old)
        deadline = time.monotonic() + 10
        while lab.edge.chain is not old and time.monotonic() < deadline:
            time.sleep(0.01)


def test_connection_count_returns_to_zero(lab):
    for _ in range(5):
        lab.curl("demo.app.lab.test", "/headers")
    lab.curl("nobody.app.lab.test", "/")
    # failed handshakes: the client refuses the edge's certificate, or sends garbage after the hello
    with pytest.raises(ssl.SSLCertVerificationError):
        _tls_client(lab, "demo.app.lab.test", lab.agent_ca.cert_path)
    ctx = ssl.create_default_context()
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="demo.app.lab.test")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    with socket.create_connection(("127.0.0.1", lab.https_port), timeout=10) as s:
        s.sendall(out.read() + b"\x15\x03\x03\x00\x02\x02\x28garbage")
        try:
            while s.recv(4096):
                pass
        except ConnectionResetError:
            pass
    deadline = 50
    import time

    for _ in range(deadline):
        if lab.edge.stats.open == 0:
            break
        time.sleep(0.1)
    assert lab.edge.stats.open == 0


def test_connections_over_the_limit_are_dropped_until_one_ends(small_lab):
    import time

    lab = small_lab
    held = [socket.create_connection(("127.0.0.1", lab.https_port), timeout=10) for _ in range(2)]
    try:
        for _ in range(50):
            if lab.edge.stats.open == 2:
                break
            time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", lab.https_port), timeout=10) as s:
            try:
                assert s.recv(10) == b""
            except ConnectionResetError:
                pass
        assert lab.edge.stats.refused_limit >= 1
    finally:
        for s in held:
            s.close()
    for _ in range(50):
        if lab.edge.stats.open == 0:
            break
        time.sleep(0.05)
    r = lab.curl("demo.app.lab.test", "/headers")
    assert json.loads(r.stdout)["X-Forwarded-Proto"] == "https"
