"""What the tests that run real servers and clients share: free ports,
dig output parsers, child processes whose output a thread reads, the upstream apps behind the
edge (aiohttp HTTP app, echo servers), and the curl, SSE and websocket
clients that talk to an edge on loopback.

Importable from tests/ and tests/integration/ (pytest puts tests/ on
sys.path for its conftest.py); a file that runs as a script inside a lab host
puts tests/ there itself before importing this. Nothing here starts anything
on import, and nothing sends anywhere but loopback.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import queue
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parents[1]
CURL = shutil.which("curl")
GSLB = [sys.executable, "-m", "gslb.cli"]  # the command line, as a user runs it
HOST = "demo.app.lab.test"


# ---------------------------------------------------------------- ports and files


def free_port(*addrs: str) -> int:
    """A TCP port free on every address of addrs (default 127.0.0.1)."""
    addrs = addrs or ("127.0.0.1",)
    for _ in range(50):  # bounded
        with socket.socket() as s:
            s.bind((addrs[0], 0))
            port = s.getsockname()[1]
        try:
            for a in addrs[1:]:
                with socket.socket() as t:
                    t.bind((a, port))
            return port
        except OSError:
            continue
    raise RuntimeError(f"no port free on all of {addrs}")


def free_range(n: int) -> tuple[int, int]:
    """n consecutive TCP ports free on 127.0.0.1: (first, last)."""
    for base in range(31000, 40000, 97):
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                s.bind(("127.0.0.1", p))
                socks.append(s)
            return base, base + n - 1
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


def secret_file(path: Path, text: str) -> Path:
    """A file only its owner reads (0600), as authtoken files must be."""
    path.write_text(text)
    os.chmod(path, 0o600)
    return path


# ---------------------------------------------------------------- dig and kdig output


def loopback_edge_toml(tmp: Path, token: Path, https_port: int, tcp_ports: tuple[int, int], *,
                       pop: str = "t", listen: tuple[str, ...] = ("127.0.0.1",), edge_extra: str = "",
                       pop_extra: str = "") -> Path:
    """tmp/edge.toml for a `gslb edge` on loopback (zone lab.test, the CA in tmp/ca, certificates
    in tmp/certs, `token` the authtokens file): `edge_extra` lines go into [edge] and its tables
    after the common keys, `pop_extra` into [pops.<pop>] after `https_port`."""
    cfg = tmp / "edge.toml"
    listen_toml = ", ".join(f'"{a}"' for a in listen)
    cfg.write_text(f"""
zone = "lab.test"
[edge]
ca_dir = "{tmp / 'ca'}"
cert_dir = "{tmp / 'certs'}"
authtokens_file = "{token}"
tcp_ports = "{tcp_ports[0]}-{tcp_ports[1]}"
{edge_extra}
[pops.{pop}]
listen = [{listen_toml}]
https_port = {https_port}
{pop_extra}
""")
    return cfg


def dig_answers(text: str, rtype: str = "A") -> list[tuple[str, int, str]]:
    """(owner, ttl, data) of the answer lines of dig/kdig output."""
    out = []
    for line in text.splitlines():
        m = re.match(rf"^(\S+)\s+(\d+)\s+IN\s+{rtype}\s+(.+)$", line.strip())
        if m:
            out.append((m.group(1), int(m.group(2)), m.group(3).strip()))
    return out


def dig_flags(text: str) -> set[str]:
    """The header flags of dig (";; flags:") or kdig (";; Flags:") output."""
    m = re.search(r";; [Ff]lags: ([a-z ]*);", text)
    assert m, text
    return set(m.group(1).split())


def dig_status(text: str) -> str:
    """The RCODE name of dig/kdig output (NOERROR, NXDOMAIN, ...)."""
    m = re.search(r"status: ([A-Z]+)", text)
    assert m, text
    return m.group(1)


# ---------------------------------------------------------------- child processes


class AiohttpUpstream:
    """A local aiohttp service on 127.0.0.1 (any free port: `self.port`), run by its own event
    loop in a daemon thread, for tests whose upstream must answer while the test blocks.
    Subclasses give the application: `app()` (called on that loop)."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        assert self.ready.wait(20)

    def app(self):  # -> aiohttp.web.Application
        raise NotImplementedError

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self._setup())
        self.ready.set()
        self.loop.run_forever()

    async def _setup(self) -> None:
        from aiohttp import web

        runner = web.AppRunner(self.app())
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self.port = runner.addresses[0][1]


class Proc:
    """A child process whose output lines a thread reads (never blocks the
    test). Stopped by its own pid only."""

    wait_timeout = 60.0  # wait_line's default, seconds
    stop_timeout = 10.0  # SIGTERM -> SIGKILL after this long

    def __init__(self, argv: list[str], name: str, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.started = time.monotonic()
        self.p = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT,
                                  env=env if env is not None else dict(os.environ, PYTHONUNBUFFERED="1"))
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.p.pid

    def _pump(self) -> None:
        assert self.p.stdout is not None
        for raw in self.p.stdout:
            line = raw.decode(errors="replace").rstrip()
            self.log.append(line)
            self.lines.put(line)

    def wait_line(self, pattern: str, timeout: float | None = None) -> re.Match:
        """The first new output line matching pattern; AssertionError (with
        the output) if none comes within timeout or the process ends first."""
        timeout = self.wait_timeout if timeout is None else timeout
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.p.poll() is not None and self.lines.empty():
                    break
                continue
            m = re.search(pattern, line)
            if m:
                return m
        raise AssertionError(f"{self.name}: no line matching {pattern!r} within {timeout:.0f} s "
                             f"(exit {self.p.poll()}); output:\n" + "\n".join(self.log[-40:]))

    def wait(self, timeout: float) -> int:
        return self.p.wait(timeout)

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.p.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(self.stop_timeout)


# ---------------------------------------------------------------- upstreams


class LineEcho(asyncio.Protocol):
    """Echo server answering b"echo:" + data; with proxy=True it first
    decodes a PROXY v2 header and says what it saw in one line."""

    def __init__(self, proxy: bool = False) -> None:
        self.proxy = proxy
        self.buf = b""

    def connection_made(self, t):
        self.t = t

    def data_received(self, data):
        if self.proxy:
            from edge.front.proxy_v2 import decode as proxy_decode

            self.buf += data
            got = proxy_decode(self.buf)
            if got is None:
                return
            hdr, used = got
            self.proxy = False
            self.t.write(f"proxy src={hdr.src_addr}:{hdr.src_port} dst={hdr.dst_addr}:{hdr.dst_port} "
                         f"authority={hdr.authority}\n".encode())
            data, self.buf = self.buf[used:], b""
            if not data:
                return
        self.t.write(b"echo:" + data)


async def start_echo() -> tuple[asyncio.AbstractServer, int]:
    """A plain echo server on 127.0.0.1 with backpressure both ways and
    half-close: (server, port)."""

    class Echo(asyncio.Protocol):
        def connection_made(self, t):
            self.t = t

        def data_received(self, data):
            self.t.write(data)

        def pause_writing(self):
            self.t.pause_reading()

        def resume_writing(self):
            self.t.resume_reading()

        def eof_received(self):
            self.t.close()

    server = await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def make_app(release: asyncio.Event, *, digest: bool = True):
    """The HTTP upstream (aiohttp): /headers (request headers and "_path" as
    JSON), /sse (event one, then event two once `release` is set or
    /sse-release is asked for), /ws (echo: "echo:" + text, binary as is),
    /upload (POST or PUT: bytes, and with digest their sha256 and the
    Transfer-Encoding), /download?n= (n bytes of a 0..255 pattern)."""
    from aiohttp import web

    async def headers(request):
        return web.json_response({k: v for k, v in request.headers.items()} | {"_path": request.path_qs})

    async def sse(request):
        release.clear()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        await resp.write(b"data: one\n\n")
        await asyncio.wait_for(release.wait(), 30)
        await resp.write(b"data: two\n\n")
        await resp.write_eof()
        return resp

    async def sse_release(request):
        release.set()
        return web.Response(text="released")

    async def ws(request):
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == web.WSMsgType.TEXT:
                await sock.send_str("echo:" + msg.data)
            elif msg.type == web.WSMsgType.BINARY:
                await sock.send_bytes(msg.data)
        return sock

    async def upload(request):
        h = hashlib.sha256() if digest else None
        n = 0
        async for chunk in request.content.iter_chunked(65536):
            if h is not None:
                h.update(chunk)
            n += len(chunk)
        got: dict[str, Any] = {"bytes": n}
        if h is not None:
            got |= {"sha256": h.hexdigest(), "chunked": request.headers.get("Transfer-Encoding", "")}
        return web.json_response(got)

    async def download(request):
        n = int(request.query["n"])
        resp = web.StreamResponse(headers={"Content-Length": str(n)})
        await resp.prepare(request)
        block = bytes(range(256)) * 1024
        left = n
        while left:
            part = block[: min(left, len(block))]
            await resp.write(part)
            left -= len(part)
        await resp.write_eof()
        return resp

    app = web.Application(client_max_size=1 << 34)
    app.router.add_get("/headers", headers)
    app.router.add_get("/sse", sse)
    app.router.add_get("/sse-release", sse_release)
    app.router.add_get("/ws", ws)
    app.router.add_post("/upload", upload)
    app.router.add_put("/upload", upload)
    app.router.add_get("/download", download)
    return app


# ---------------------------------------------------------------- clients of an edge on loopback


def curl_https(cafile: Path | str, port: int, name: str, path: str, *extra: str, addr: str = "127.0.0.1",
               max_time: float = 20, timeout: float = 60) -> subprocess.CompletedProcess:
    """curl https://name:port/path, name resolved to addr (loopback)."""
    a = f"[{addr}]" if ":" in addr else addr
    return subprocess.run(
        [CURL, "-sS", "--max-time", str(max_time), "--cacert", str(cafile), "--resolve", f"{name}:{port}:{a}",
         *extra, f"https://{name}:{port}{path}"],
        capture_output=True, timeout=timeout)


def check_sse_event_by_event(cafile: Path | str, port: int, release: Callable[[], None], name: str = HOST) -> None:
    """GET /sse with curl -N: event one must arrive while the upstream still
    holds the stream (release() lets it send event two and end): an edge that
    buffered the response would hang here."""
    p = subprocess.Popen(
        [CURL, "-sS", "-N", "--max-time", "30", "--cacert", str(cafile),
         "--resolve", f"{name}:{port}:127.0.0.1", f"https://{name}:{port}/sse"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert p.stdout.readline() + p.stdout.readline() == b"data: one\n\n"
        release()
        rest, _ = p.communicate(timeout=30)
        assert rest == b"data: two\n\n"
    finally:
        p.kill()
        p.wait()


def tcp_echo_through(addr: str, port: int, payload: bytes = b"hi") -> bytes:
    """Send payload to a TCP endpoint at addr:port (v4 or v6); what comes
    back up to and with b"echo:" + payload (a PROXY line may come first)."""
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    want = b"echo:" + payload
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect((addr, port))
        s.sendall(payload)
        buf = b""
        while not buf.endswith(want):
            chunk = s.recv(4096)
            assert chunk, buf
            buf += chunk
    return buf


def tls_exchange(cafile: Path | str, port: int, request: bytes, name: str = HOST) -> bytes:
    """Send request over one TLS connection to name on 127.0.0.1:port; all
    the server sends until it closes."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=name) as s:
            s.sendall(request)
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    return data


@contextlib.contextmanager
def websocket(cafile: Path | str, port: int, name: str = HOST, path: str = "/ws") -> Iterator[Any]:
    """A wss:// client (websockets' sync client) to name:port on 127.0.0.1."""
    import websockets.sync.client as wsc

    ctx = ssl.create_default_context(cafile=str(cafile))
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    with wsc.connect(f"wss://{name}:{port}{path}", sock=sock, ssl=ctx, server_hostname=name,
                     open_timeout=10) as ws:
        yield ws
