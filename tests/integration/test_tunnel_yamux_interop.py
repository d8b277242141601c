"""Interop: HashiCorp's yamux (Go, Debian's golang-github-hashicorp-yamux-dev)
against our edge/tunnel Session, on 127.0.0.1.

The Go side is tests/interop/yamux_peer (built here offline in GOPATH mode,
no module proxy). Each over plain TCP and over TLS (as agents and edges
talk). Both directions:

- Go as yamux client opens streams to our server-side Session (its
  scenarios, run from Go; our side serves them);
- our Session as client opens streams to Go's server (our scenarios).

Each: echo 1 KiB / 1 MiB / 64 MiB, 100 streams opened concurrently (from
goroutines on the Go side: SYNs in any order), half-close, RST, ping both
ways, go-away both ways (with Go refusing a SYN that crossed its go-away:
RST), windows grown beyond 256 KiB.
"""
from __future__ import annotations

import asyncio
import datetime
import hashlib
import ipaddress
import os
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge.tunnel.errors import SessionClosedError, StreamResetError
from edge.tunnel.events import WindowUpdated
from edge.tunnel.frames import INITIAL_WINDOW
from edge.tunnel.session import Session, Stream
from _tools import need_tools

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PEER_SRC = ROOT / "tests" / "interop" / "yamux_peer"
GOPATH = "/usr/share/gocode"  # where Debian's golang-*-dev packages put Go sources
YAMUX_SRC = f"{GOPATH}/src/github.com/hashicorp/yamux/session.go"
KiB = 1024
MiB = 1024 * KiB
DEADLINE = 240  # seconds for a whole direction (~1 s here): generous, never a speed assertion

needs_go_yamux = need_tools("go", YAMUX_SRC)


@pytest.fixture(scope="module")
def peer_binary(tmp_path_factory: pytest.TempPathFactory) -> str:
    # need_tools' CI wrapper still asks for this fixture: say what is
    # missing here too, not "No such file: 'go'"
    missing = [t for t in ("go", YAMUX_SRC) if not (shutil.which(t) if t == "go" else os.path.exists(t))]
    if missing:
        msg = f"needs {', '.join(missing)}: run `make install` (golang-go, golang-github-hashicorp-yamux-dev)"
        if os.environ.get("CI"):
            pytest.fail(f"CI: {msg}", pytrace=False)
        pytest.skip(msg)
    out = tmp_path_factory.mktemp("yamux_peer") / "yamux_peer"
    cache = ROOT / ".venv" / "go-cache" if (ROOT / ".venv").is_dir() else out.parent / "go-cache"
    env = dict(os.environ, GO111MODULE="off", GOPROXY="off", GOFLAGS="", GOPATH=GOPATH,
               GOCACHE=str(cache), CGO_ENABLED="0")
    r = subprocess.run(["go", "build", "-o", str(out), "."], cwd=PEER_SRC, env=env,
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        pytest.fail(f"building {PEER_SRC} failed (GOPATH mode, offline):\n{r.stdout}\n{r.stderr}")
    return str(out)


TLS_NAME = "connect.lab.test"


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A CA and a certificate for TLS_NAME and 127.0.0.1: {ca, cert, key} paths."""
    d = tmp_path_factory.mktemp("tls")
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "interop test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, TLS_NAME)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName(TLS_NAME), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = {"ca": d / "ca.pem", "cert": d / "cert.pem", "key": d / "key.pem"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return {k: str(v) for k, v in files.items()}


def pattern(n: int, seed: bytes) -> bytes:
    block = hashlib.sha256(seed).digest() * 2048  # 64 KiB
    return (block * (n // len(block) + 1))[:n]


async def read_line(st: Stream) -> str:
    line = bytearray()
    while len(line) < 256:
        c = await st.readexactly(1)
        if c == b"\n":
            return line.decode()
        line += c
    raise AssertionError(f"line too long: {bytes(line)!r}")


async def read_all(st: Stream) -> bytes:
    out = bytearray()
    while True:
        data = await st.read()
        if not data:
            return bytes(out)
        out += data


def spy_window_updates(session: Session) -> dict:
    """Record the largest window update the peer sent (a view of the real
    connection's events; nothing is changed)."""
    seen = {"max_delta": 0}
    receive = session.conn.receive_data

    def receive_data(data: bytes):
        events = receive(data)
        for ev in events:
            if type(ev) is WindowUpdated and ev.delta > seen["max_delta"]:
                seen["max_delta"] = ev.delta
        return events

    session.conn.receive_data = receive_data  # type: ignore[method-assign]
    return seen


async def read_stdout_lines(proc: asyncio.subprocess.Process, lines: list[str]) -> None:
    assert proc.stdout is not None
    while True:
        raw = await proc.stdout.readline()
        if not raw:
            return
        lines.append(raw.decode().rstrip("\n"))


async def wait_for_line(lines: list[str], prefix: str, timeout: float = 60) -> str:
    """Poll (bounded) for a line of the peer's output starting with prefix."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        for line in lines:
            if line.startswith(prefix):
                return line
        await asyncio.sleep(0.02)
    raise AssertionError(f"the Go peer never printed {prefix!r}; it printed: {lines}")


# ------------------------------------------- Go client -> our server Session


class Service:
    """Our side of the Go client's scenarios (the commands main.go sends)."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task] = []
        self.opened: list[int] = []
        self.max_receive_window = 0
        self.errors: list[str] = []
        self.half_close: tuple[str, str] | None = None  # (expected answer, answer)
        self.remote_go_away_seen: int | None = None

    def on_stream(self, st: Stream) -> None:
        self.opened.append(st.stream_id)
        self.tasks.append(asyncio.ensure_future(self.serve(st)))

    async def serve(self, st: Stream) -> None:
        try:
            await self._serve(st)
        except Exception as exc:  # reported by the test, never lost
            self.errors.append(f"stream {st.stream_id}: {exc!r}")
            st.abort()

    async def echo(self, st: Stream) -> None:
        conn = st.get_extra_info("session").conn
        while True:
            data = await st.read()
            if not data:
                break
            self.max_receive_window = max(self.max_receive_window, conn.receive_window(st.stream_id))
            st.write(data)
            await st.drain()
        st.close()

    async def _serve(self, st: Stream) -> None:
        session = st.get_extra_info("session")
        cmd, *args = (await read_line(st)).split()
        if cmd == "echo":
            await self.echo(st)
        elif cmd == "halfclose":
            # we write N bytes and FIN first; the peer answers after our FIN
            data = pattern(int(args[0]), b"halfclose")
            st.write(data)
            st.close()
            answer = (await read_all(st)).decode()
            self.half_close = (f"got {len(data)} {hashlib.sha256(data).hexdigest()}\n", answer)
        elif cmd == "reset":
            st.abort()
        elif cmd == "ping":
            await session.ping(60)
            st.write(b"ok\n")
            st.close()
        elif cmd == "check-remote-goaway":
            self.remote_go_away_seen = session.remote_go_away
            try:
                session.open_stream()
            except SessionClosedError:
                st.write(b"ok refused\n")
            else:
                st.write(b"fail: opened a stream after the peer's go-away\n")
            st.close()
        elif cmd == "goaway":
            session.go_away()
            st.write(b"ok\n")
            await self.echo(st)
        else:
            raise AssertionError(f"unknown command {cmd!r}")


@needs_go_yamux
@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_go_client_opens_streams_to_our_server_session(peer_binary: str, tls_files: dict, transport: str) -> None:
    async def main() -> None:
        svc = Service()
        loop = asyncio.get_running_loop()
        holder: dict[str, Session] = {}

        def factory() -> Session:
            holder["s"] = Session(client=False, on_stream=svc.on_stream, name="go-client")
            holder["spy"] = spy_window_updates(holder["s"])  # type: ignore[assignment]
            return holder["s"]

        ctx, tls_args = None, []
        if transport == "tls":
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(tls_files["cert"], tls_files["key"])
            tls_args = ["-tls-ca", tls_files["ca"], "-tls-name", TLS_NAME]
        server = await loop.create_server(factory, "127.0.0.1", 0, ssl=ctx)
        port = server.sockets[0].getsockname()[1]
        # the Go client keeps yamux's stock 256 KiB receive window
        proc = await asyncio.create_subprocess_exec(
            peer_binary, "-mode", "client", "-addr", f"127.0.0.1:{port}", "-window", str(INITIAL_WINDOW), *tls_args,
            "-deadline", f"{DEADLINE - 30}s", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            # more threads than cores: goroutines opening at once interleave
            # more, so SYNs arrive out of order more often (not always)
            env=dict(os.environ, GOMAXPROCS="8"))
        try:
            out, err = await asyncio.wait_for(proc.communicate(), DEADLINE)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        lines = out.decode().splitlines()
        report = f"Go peer exit {proc.returncode}\nstdout:\n{out.decode()}\nstderr:\n{err.decode()[-4000:]}"
        assert proc.returncode == 0, report
        for name in ("echo-1024", "echo-1048576", "echo-67108864", "concurrent-100", "half-close",
                     "reset", "ping", "goaway-ours", "goaway-theirs"):
            assert any(line.startswith(f"ok {name}") for line in lines), f"scenario {name} missing\n{report}"
        await asyncio.gather(*svc.tasks)
        assert svc.errors == []
        # 3 echoes + 100 + half-close + reset + ping + 2 go-away checks
        assert len(svc.opened) == 3 + 100 + 5
        assert svc.half_close is not None and svc.half_close[1] == svc.half_close[0]
        assert svc.remote_go_away_seen == 0  # the Go client's GoAway(): code 0, normal
        # our receive windows grew past the spec's initial 256 KiB for the
        # 64 MiB echo; the Go side (stock config) never granted beyond it
        assert svc.max_receive_window > INITIAL_WINDOW
        assert 0 < holder["spy"]["max_delta"] <= INITIAL_WINDOW  # type: ignore[index]
        out_of_order = sum(1 for a, b in zip(svc.opened, svc.opened[1:]) if b < a)
        print(f"{transport}: streams opened by Go: {len(svc.opened)}, SYNs out of order: {out_of_order}, "
              f"max receive window {svc.max_receive_window}; "
              + "; ".join(line for line in lines if line.startswith("ok echo-67108864")))
        holder["s"].close()
        server.close()

    asyncio.run(main())


# ------------------------------------------- our client Session -> Go server


async def echo_through(st: Stream, data: bytes) -> tuple[bytes, int]:
    """Send data on an echo stream while reading it back; returns what came
    back and the largest receive window our side granted meanwhile."""
    conn = st.get_extra_info("session").conn
    st.write(b"echo\n")

    async def writer() -> None:
        for off in range(0, len(data), 256 * KiB):
            st.write(data[off : off + 256 * KiB])
            await st.drain()
        st.close()

    task = asyncio.ensure_future(writer())
    back = bytearray()
    window = 0
    while True:
        chunk = await st.read()
        if not chunk:
            break
        back += chunk
        window = max(window, conn.receive_window(st.stream_id))
    await task
    return bytes(back), window


@needs_go_yamux
@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_our_client_session_opens_streams_to_go_server(peer_binary: str, tls_files: dict, transport: str) -> None:
    ctx, tls_args = None, []
    if transport == "tls":
        ctx = ssl.create_default_context(cafile=tls_files["ca"])
        tls_args = ["-tls-cert", tls_files["cert"], "-tls-key", tls_files["key"]]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        proc = await asyncio.create_subprocess_exec(
            peer_binary, "-mode", "server", "-listen", "127.0.0.1:0", "-window", str(16 * MiB), *tls_args,
            "-deadline", f"{DEADLINE - 30}s", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        lines: list[str] = []
        reader = asyncio.ensure_future(read_stdout_lines(proc, lines))
        try:
            await asyncio.wait_for(run(proc, lines, loop), DEADLINE)
            rc = await asyncio.wait_for(proc.wait(), 30)
            await reader
            err = (await proc.stderr.read()).decode()  # type: ignore[union-attr]
            assert rc == 0 and not any(line.startswith("FAIL") for line in lines), \
                f"Go peer exit {rc}\nstdout: {lines}\nstderr:\n{err[-4000:]}"
            assert "event session-closed" in lines
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            reader.cancel()

    async def run(proc, lines: list[str], loop) -> None:
        listening = await wait_for_line(lines, "listening ")
        host, port = listening.split()[1].rsplit(":", 1)
        wire, client = await loop.create_connection(
            lambda: Session(client=True, name="go-server"), host, int(port),
            **({"ssl": ctx, "server_hostname": TLS_NAME} if ctx is not None else {}))
        spy = spy_window_updates(client)

        # echo 1 KiB / 1 MiB / 64 MiB
        for n in (KiB, MiB, 64 * MiB):
            data = pattern(n, str(n).encode())
            start = loop.time()
            back, window = await echo_through(client.open_stream(), data)
            assert len(back) == n and back == data, f"echo of {n} bytes came back different"
        print(f"{transport}: 64 MiB echo through Go's server took {loop.time() - start:.2f} s")
        # the 64 MiB echo grew our window, and Go (16 MiB window) granted us more than 256 KiB
        assert window > INITIAL_WINDOW
        assert spy["max_delta"] > INITIAL_WINDOW

        # 100 streams at once
        datas = [pattern(16 * KiB + i, b"c%d" % i) for i in range(100)]
        backs = await asyncio.gather(*(echo_through(client.open_stream(), d) for d in datas))
        assert [b for b, _ in backs] == datas

        # half-close: our FIN first, then we read Go's answer written after it
        st = client.open_stream()
        data = pattern(MiB, b"sink")
        st.write(b"sink\n" + data)
        st.close()
        assert (await read_all(st)).decode() == f"got {len(data)} {hashlib.sha256(data).hexdigest()}\n"

        # RST from us: Go's Read and Write fail with "connection reset"
        st = client.open_stream()
        st.write(b"wait-reset r1\n")
        assert await read_line(st) == "ready"
        st.abort()
        line = await wait_for_line(lines, "event wait-reset r1")
        assert line == "event wait-reset r1 read=connection reset write=connection reset", line
        assert st.is_closing()

        # ping both ways
        assert await client.ping(60) >= 0
        st = client.open_stream()
        st.write(b"ping\n")
        st.close()
        assert await read_all(st) == b"ok\n"
        await wait_for_line(lines, "event ping-sent")

        # go-away both ways. Both streams opened first: after a go-away
        # nobody opens streams.
        st_theirs, st_ours = client.open_stream(), client.open_stream()
        # Go's refusal: we stop reading, so our side cannot know of Go's
        # go-away yet when it opens one more stream; Go answers that SYN with
        # RST (the stream gets StreamResetError)
        wire.pause_reading()
        st_theirs.write(b"goaway\n")
        await wait_for_line(lines, "event goaway-sent")
        st_refused = client.open_stream()
        st_refused.write(b"echo\n")
        await asyncio.sleep(0)  # its SYN is written before anything is read
        wire.resume_reading()
        with pytest.raises(StreamResetError):
            await st_refused.read()
        assert await read_line(st_theirs) == "ok"
        assert client.remote_go_away == 0
        with pytest.raises(SessionClosedError):
            client.open_stream()
        st_theirs.write(b"after\n")  # the open stream goes on
        assert await read_line(st_theirs) == "after"
        st_theirs.close()
        assert await read_all(st_theirs) == b""
        client.go_away()
        st_ours.write(b"tryopen\n")  # arrives after our go-away frame
        st_ours.close()
        assert await read_all(st_ours) == b"error remote end is not accepting connections\n"

        client.close()  # go-away (already sent) then close: Go's session ends
        await client.wait_closed()

    asyncio.run(main())

