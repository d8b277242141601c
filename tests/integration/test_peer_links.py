"""PeerLinks in one process on loopback (127.0.0.21/.22): mutual TLS with the
lab CA both ways, one session per peer reused in both directions, the Y side
splicing into the local binding, reset when there is none."""
from __future__ import annotations

import asyncio
import socket
import ssl

import pytest

from edge.certs import CertAuthority
from edge.config import parse
from edge.peer.header import PeerHeader
from edge.peer.links import PeerLinks, PeerUnavailable
from edge.tunnel.errors import StreamResetError

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

A, B = "127.0.0.21", "127.0.0.22"


def free_port() -> int:
    for _ in range(50):  # bounded
        s = socket.socket()
        s.bind((A, 0))
        port = s.getsockname()[1]
        s.close()
        try:
            t = socket.socket()
            t.bind((B, port))
            t.close()
            return port
        except OSError:
            continue
    raise RuntimeError("no free port")


class EchoStream:
    """The agent side as a stand-in: whatever is written comes back."""

    def __init__(self):
        self.protocol = None
        self.closed = False

    def set_protocol(self, p):
        self.protocol = p
        p.connection_made(self)

    def write(self, data):
        # the protocol is looked up when the echo runs: like a real Stream,
        # this one takes writes before set_protocol (splice replays what the
        # other stream buffered before it sets this one's protocol)
        asyncio.get_running_loop().call_soon(lambda: self.protocol.data_received(data))

    def close(self):
        if not self.closed:
            self.closed = True
            asyncio.get_running_loop().call_soon(lambda: self.protocol.eof_received())

    def abort(self):
        self.closed = True

    def is_closing(self):
        return self.closed

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass


class EchoBinding:
    def __init__(self):
        self.opened = []

    async def open_stream(self, client_addr, client_port, *, sni=None, tls_terminated=False):
        self.opened.append((client_addr, client_port, sni, tls_terminated))
        return EchoStream()


def config(tmp, pop, port):
    return parse(f"""
zone = "lab.test"
[edge]
ca_dir = "{tmp / 'ca'}"
[peers.a]
address = "{A}:{port}"
[peers.b]
address = "{B}:{port}"
[peers.c]
address = "{B}:{port}"
[pops.a]
listen = ["{A}"]
[pops.b]
listen = ["{B}"]
""", pop)


def header(endpoint="demo.app.lab.test"):
    return PeerHeader(kind="http", endpoint=endpoint, session="s1", client_addr="198.19.5.10", client_port=4242,
                      sni=endpoint, tls_terminated=True)


async def read_n(stream, n):
    got = b""
    async with asyncio.timeout(10):
        while len(got) < n:
            chunk = await stream.read()
            assert chunk
            got += chunk
    return got


def test_peer_links_mutual_tls_reuse_and_splice(tmp_path):
    ca = CertAuthority.create(tmp_path / "ca")
    foreign = CertAuthority.create(tmp_path / "foreign", common_name="not the lab CA")
    port = free_port()

    async def go():
        binding = EchoBinding()
        at_b = {("http", "demo.app.lab.test"): binding}
        at_a = {("http", "back.app.lab.test"): EchoBinding()}
        a = PeerLinks(config(tmp_path, "a", port), ca, tmp_path / "a", lambda k, n: at_a.get((k, n)))
        b = PeerLinks(config(tmp_path, "b", port), ca, tmp_path / "b", lambda k, n: at_b.get((k, n)))
        await a.start()
        await b.start()
        try:
            st = await a.open_stream("b", header())
            st.write(b"hello over the link")
            assert await read_n(st, 19) == b"hello over the link"
            assert binding.opened == [("198.19.5.10", 4242, "demo.app.lab.test", True)]
            session = a.sessions["b"]
            st2 = await a.open_stream("b", header())
            st2.write(b"x" * 300_000)  # more than one initial window: flow control across the splice
            assert await read_n(st2, 300_000) == b"x" * 300_000
            assert a.sessions["b"] is session  # one session, reused
            # b learnt a's identity from its certificate and uses the same link back
            back = await b.open_stream("a", header("back.app.lab.test"))
            back.write(b"ping")
            assert await read_n(back, 4) == b"ping"
            assert b.sessions["a"].conn is not None and len(b.sessions) == 1

            # no local binding at b: the stream is reset
            gone = await a.open_stream("b", header("gone.app.lab.test"))
            with pytest.raises(StreamResetError):
                async with asyncio.timeout(10):
                    await gone.read()

            # b's certificate is not c's: a refuses it
            with pytest.raises(PeerUnavailable):
                await a.open_stream("c", header())

            # a client with a certificate from another CA, or none: no handshake
            for client_ca in (foreign, None):
                ctx = ssl.create_default_context(cafile=str(ca.cert_path))
                if client_ca is not None:
                    issued = client_ca.issue(["x.peer.lab.test"], client_auth=True)
                    (tmp_path / "x.pem").write_bytes(issued.cert_pem)
                    (tmp_path / "x.key").write_bytes(issued.key_pem)
                    ctx.load_cert_chain(tmp_path / "x.pem", tmp_path / "x.key")
                r, w = await asyncio.wait_for(asyncio.open_connection(
                    B, port, ssl=ctx, server_hostname="b.peer.lab.test"), 10)
                # TLS 1.3: the server's verdict on the client certificate comes after the handshake
                with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
                    async with asyncio.timeout(10):
                        data = await r.read(100)
                        if not data:
                            raise ConnectionError("closed")
                w.close()
            # a lab-CA certificate that is not a peer name: accepted by TLS, refused by name
            ctx = ssl.create_default_context(cafile=str(ca.cert_path))
            issued = ca.issue(["demo.app.lab.test"], client_auth=True)
            (tmp_path / "d.pem").write_bytes(issued.cert_pem)
            (tmp_path / "d.key").write_bytes(issued.key_pem)
            ctx.load_cert_chain(tmp_path / "d.pem", tmp_path / "d.key")
            r, w = await asyncio.wait_for(asyncio.open_connection(B, port, ssl=ctx,
                                                                  server_hostname="b.peer.lab.test"), 10)
            async with asyncio.timeout(10):
                try:
                    assert await r.read(100) == b""
                except (ConnectionError, ssl.SSLError):
                    pass
            w.close()
            assert "demo" not in b.sessions and set(b.sessions) == {"a"}
        finally:
            await a.close()
            await b.close()

    asyncio.run(go())
