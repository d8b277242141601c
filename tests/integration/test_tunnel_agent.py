"""Hub + TLS listener + agent + local upstream, all on 127.0.0.1.

The edge front is played by the test: it looks a binding up in the hub and
opens proxy streams the way edge/front does.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import ssl
import sys
from pathlib import Path

import pytest

from _helpers import secret_file, start_echo

from edge.agent.client import Agent
from edge.agent.config import AgentConfig, EndpointConfig
from edge.certs import CertAuthority
from edge.hub import Hub, HubConfig, agent_protocol_factory
from edge.tunnel import messages as M
from edge.tunnel.session import Session

pytestmark = pytest.mark.integration

ZONE = "lab.test"
TOKEN = "tok-" + "a1b2c3d4" * 4
ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ helpers


def make_ca_and_cert(tmp: Path) -> tuple[Path, Path, Path]:
    """The edge's CA (edge.certs, as `gslb edge` makes one) and a certificate
    for connect.<zone>; returns (ca, cert, key)."""
    ca = CertAuthority.create(tmp / "ca")
    leaf = ca.issue([f"connect.{ZONE}"])
    cert_path, key_path = tmp / "edge.pem", tmp / "edge.key"
    cert_path.write_bytes(leaf.cert_pem)
    key_path.write_bytes(leaf.key_pem)
    os.chmod(key_path, 0o600)
    return ca.cert_path, cert_path, key_path


class Edge:
    """Hub + TLS listener for agents on 127.0.0.1."""

    def __init__(self, tmp: Path, certs: tuple[Path, Path, Path] | None = None, **hub_kw) -> None:
        self.tmp = tmp
        self.certs = certs or make_ca_and_cert(tmp)
        self.ca, cert, key = self.certs
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(cert, key)
        self.hub = Hub(HubConfig(domain=f"app.{ZONE}", **hub_kw), [TOKEN])
        self.token_file = secret_file(tmp / "token", TOKEN + "\n")

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(agent_protocol_factory(self.hub), "127.0.0.1", 0, ssl=self.ctx)
        self.port = self.server.sockets[0].getsockname()[1]

    def agent_config(self, endpoints, token=TOKEN, **kw) -> AgentConfig:
        return AgentConfig(
            endpoints=tuple(endpoints), authtoken=token, server=f"127.0.0.1:{self.port}", zone=ZONE, ca=self.ca, **kw
        )

    async def wait_binding(self, kind, key, present=True, timeout=10.0):
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while loop.time() < end:
            b = self.hub.lookup(kind, key)
            if (b is not None) == present:
                return b
            await asyncio.sleep(0.02)
        raise AssertionError(f"binding {kind} {key} present={not present} after {timeout}s")

    def close(self) -> None:
        self.server.close()
        for c in list(self.hub.connections):
            c.abort()


def run(coro, timeout=120):
    async def bounded():
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


async def start_agent(edge: Edge, endpoints, **kw):
    lines: list[str] = []
    agent = Agent(edge.agent_config(endpoints, **kw), out=lines.append)
    task = asyncio.ensure_future(agent.run())
    return agent, task, lines


async def stop_agent(agent, task):
    agent.stop()
    return await asyncio.wait_for(task, 10)


# -------------------------------------------------------------------- tests


def test_stream_relays_bytes_both_ways_through_agent_to_upstream(tmp_path):
    async def main():
        edge = Edge(tmp_path)
        await edge.start()
        echo, port = await start_echo()
        agent, task, lines = await start_agent(edge, [EndpointConfig("http", port, "demo")])
        b = await edge.wait_binding("http", "demo.app.lab.test")
        assert lines == [f"forwarding https://demo.app.lab.test -> http://localhost:{port}"]
        assert edge.hub.lookup("http", "DEMO.app.lab.test.") is b
        assert edge.hub.lookup("tls", "demo.app.lab.test") is None
        for i in range(3):  # several streams on one session
            st = await b.open_stream("198.19.5.10", 40000 + i)
            st.write(b"ping %d" % i)
            assert await asyncio.wait_for(st.readexactly(6), 5) == b"ping %d" % i
            st.close()
            assert await asyncio.wait_for(st.read(), 5) == b""
        assert await stop_agent(agent, task) == 0
        await edge.wait_binding("http", "demo", present=False)
        echo.close()
        edge.close()

    run(main())


def test_64_mib_through_one_stream_window_grows(tmp_path):
    size = 64 * 1024 * 1024

    async def main():
        edge = Edge(tmp_path)
        await edge.start()
        echo, port = await start_echo()
        agent, task, lines = await start_agent(edge, [EndpointConfig("tcp", port)])
        await edge.wait_binding("tcp", 20000)
        b = edge.hub.lookup("tcp", 20000)
        assert b.url == f"tcp://app.{ZONE}:20000"
        st = await b.open_stream("198.19.5.10", 40000)
        windows = []
        got = hashlib.sha256()
        received = 0

        async def reader():
            nonlocal received
            while received < size:
                data = await st.read(1 << 20)
                assert data
                got.update(data)
                received += len(data)
                windows.append(b.connection.session.conn.receive_window(st.stream_id))

        rtask = asyncio.ensure_future(reader())
        sent = hashlib.sha256()
        chunk = os.urandom(256 * 1024)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for _ in range(size // len(chunk)):
            st.write(chunk)
            sent.update(chunk)
            await st.drain()
        await asyncio.wait_for(rtask, 60)
        elapsed = loop.time() - t0
        assert got.hexdigest() == sent.hexdigest()
        assert max(windows) >= 8 * 1024 * 1024  # grew from 256 KiB
        print(f"\n64 MiB echoed (both ways through the tunnel) in {elapsed:.2f}s: {2 * size / elapsed / 1e6:.0f} MB/s total")
        st.close()
        assert await stop_agent(agent, task) == 0
        echo.close()
        edge.close()

    run(main())


def test_bad_authtoken_is_a_final_error(tmp_path, capsys):
    async def main():
        edge = Edge(tmp_path)
        await edge.start()
        agent, task, lines = await start_agent(edge, [EndpointConfig("http", 9, "demo")], token="wrong-token-123")
        rc = await asyncio.wait_for(task, 10)
        assert rc == 1 and lines == []
        assert agent.sessions_started == 1  # no retry
        assert edge.hub.bindings() == []
        edge.close()

    run(main())
    err = capsys.readouterr().err
    assert "auth_failed" in err and "authtoken" in err
    assert "wrong-token-123" not in err


def test_duplicate_name_is_a_final_error_and_first_agent_keeps_it(tmp_path, capsys):
    async def main():
        edge = Edge(tmp_path)
        await edge.start()
        echo, port = await start_echo()
        a1, t1, _ = await start_agent(edge, [EndpointConfig("http", port, "demo")])
        b = await edge.wait_binding("http", "demo")
        a2, t2, lines2 = await start_agent(edge, [EndpointConfig("http", port, "demo")])
        assert await asyncio.wait_for(t2, 10) == 1
        assert lines2 == []
        assert edge.hub.lookup("http", "demo") is b  # unchanged
        await stop_agent(a1, t1)
        echo.close()
        edge.close()

    run(main())
    assert "already online" in capsys.readouterr().err


def test_port_range_exhausted_is_a_final_error(tmp_path, capsys):
    async def main():
        edge = Edge(tmp_path, tcp_port_range=(20000, 20001))
        await edge.start()
        eps = [EndpointConfig("tcp", 9), EndpointConfig("tcp", 10), EndpointConfig("tcp", 11)]
        agent, task, lines = await start_agent(edge, eps)
        assert await asyncio.wait_for(task, 10) == 1
        edge.close()

    run(main())
    assert "port_range_exhausted" in capsys.readouterr().err


def test_agent_killed_binding_disappears_and_restart_binds_again(tmp_path):
    async def main():
        edge = Edge(tmp_path)
        await edge.start()
        echo, port = await start_echo()
        cmd = [
            sys.executable, "-m", "gslb.cli", "agent", "http", str(port), "--name", "demo",
            "--server", f"127.0.0.1:{edge.port}", "--zone", ZONE, "--ca", str(edge.ca),
            "--authtoken-file", str(edge.token_file),
        ]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        for round_ in range(2):
            proc = await asyncio.create_subprocess_exec(
                *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=ROOT
            )
            line = await asyncio.wait_for(proc.stdout.readline(), 20)
            assert line.decode().strip() == f"forwarding https://demo.app.lab.test -> http://localhost:{port}"
            b = await edge.wait_binding("http", "demo")
            st = await b.open_stream("::1", 5555)
            st.write(b"through a subprocess")
            assert await asyncio.wait_for(st.readexactly(20), 5) == b"through a subprocess"
            # first SIGKILL (the kernel closes the socket), then SIGTERM (go-away, exit 0)
            proc.send_signal(signal.SIGKILL if round_ == 0 else signal.SIGTERM)
            rc = await asyncio.wait_for(proc.wait(), 10)
            assert rc == (-signal.SIGKILL if round_ == 0 else 0)
            await edge.wait_binding("http", "demo", present=False, timeout=5)
            err = await proc.stderr.read()
            assert TOKEN.encode() not in err and TOKEN.encode() not in line
        echo.close()
        edge.close()

    run(main())


def test_edge_detects_silent_agent_by_heartbeat_timeout(tmp_path):
    async def main():
        edge = Edge(tmp_path)
        await edge.start()
        loop = asyncio.get_running_loop()
        ctx = ssl.create_default_context(cafile=str(edge.ca))
        _, session = await loop.create_connection(
            lambda: Session(client=True), "127.0.0.1", edge.port, ssl=ctx, server_hostname=f"connect.{ZONE}"
        )
        control = session.open_stream()
        # a hand-written agent: auth asking for a 1 s heartbeat timeout, bind, then silence
        control.write(M.encode_message(M.Auth(1, TOKEN, "test", 0.5, 1.0)))
        control.write(M.encode_message(M.Bind(2, "http", "silent")))
        reader = M.MessageReader()
        replies = []
        while len(replies) < 2:
            replies += reader.feed(await asyncio.wait_for(control.read(), 5))
        assert [r["type"] for r in replies] == ["auth_ok", "bind_ok"]
        assert edge.hub.lookup("http", "silent") is not None
        t0 = loop.time()
        await asyncio.wait_for(session.wait_closed(), 10)
        assert edge.hub.lookup("http", "silent") is None
        assert loop.time() - t0 >= 0.9  # not before the timeout it asked for
        edge.close()

    run(main())


def test_agent_detects_dead_edge_by_heartbeat_timeout_and_reconnects(tmp_path):
    async def main():
        edge = Edge(tmp_path)
        await edge.start()
        echo, port = await start_echo()
        agent, task, lines = await start_agent(
            edge, [EndpointConfig("http", port, "demo")], heartbeat_interval=0.2, heartbeat_timeout=1.0
        )
        b1 = await edge.wait_binding("http", "demo")
        conn = b1.connection
        # the edge stops reading this session: heartbeats go unanswered
        conn.session._transport.pause_reading()
        loop = asyncio.get_running_loop()
        end = loop.time() + 15
        while agent.sessions_started < 2 and loop.time() < end:
            await asyncio.sleep(0.05)
        assert agent.sessions_started >= 2
        # same agent id: the new session takes the name over from the stale one
        end = loop.time() + 10
        while loop.time() < end:
            b2 = edge.hub.lookup("http", "demo")
            if b2 is not None and b2.connection is not conn:
                break
            await asyncio.sleep(0.05)
        assert b2 is not None and b2.connection is not conn
        st = await b2.open_stream("198.19.5.10", 1)
        st.write(b"after reconnect")
        assert await asyncio.wait_for(st.readexactly(15), 5) == b"after reconnect"
        assert lines.count(f"forwarding https://demo.app.lab.test -> http://localhost:{port}") == 2
        await stop_agent(agent, task)
        echo.close()
        edge.close()

    run(main())


def test_streams_in_flight_fail_cleanly_when_session_dies_and_new_ones_work(tmp_path):
    async def main():
        edge = Edge(tmp_path)
        await edge.start()
        echo, port = await start_echo()
        agent, task, lines = await start_agent(edge, [EndpointConfig("tcp", port)])
        agent.config = agent.config.__class__(**{**{f: getattr(agent.config, f) for f in agent.config.__dataclass_fields__}, "backoff_initial": 0.05})
        b = await edge.wait_binding("tcp", 20000)
        st = await b.open_stream("198.19.5.10", 1)
        st.write(b"x")
        assert await asyncio.wait_for(st.readexactly(1), 5) == b"x"
        b.connection.abort()  # the edge loses the session
        with pytest.raises(Exception) as info:
            await asyncio.wait_for(st.readexactly(1), 5)
        assert "session" in str(info.value)
        b2 = await edge.wait_binding("tcp", 20000, timeout=15)
        st2 = await b2.open_stream("198.19.5.10", 2)
        st2.write(b"y")
        assert await asyncio.wait_for(st2.readexactly(1), 5) == b"y"
        await stop_agent(agent, task)
        echo.close()
        edge.close()

    run(main())


def test_stream_churn_many_short_streams_half_closed_both_ways(tmp_path):
    """A known uvloop pitfall: uvloop 0.23 crashed under connection churn with a
    write_eof pending at close. 600 short streams, 40 at a time."""

    async def main():
        edge = Edge(tmp_path)
        await edge.start()
        echo, port = await start_echo()
        agent, task, _ = await start_agent(edge, [EndpointConfig("tcp", port)])
        b = await edge.wait_binding("tcp", 20000)
        sem = asyncio.Semaphore(40)

        async def one(i: int) -> bytes:
            async with sem:
                st = await b.open_stream("198.19.5.10", i)
                payload = b"%05d" % i * 200
                st.write(payload)
                st.close()  # FIN after the payload: the echo closes at EOF
                out = bytearray()
                while True:
                    data = await st.read()
                    if not data:
                        break
                    out += data
                return bytes(out) == payload

        results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(600))), 60)
        assert all(results)
        # every proxy stream fully closed on the edge (1 is the control stream)
        assert list(b.connection.session.streams) == [1]
        assert b.connection.session.conn.open_streams == 1  # the sans-IO core forgot them too
        assert edge.hub.stats() == {"sessions": 1, "bindings": 1, "streams": 1}
        for _ in range(100):
            if list(agent.session.streams) == [1]:
                break
            await asyncio.sleep(0.02)
        assert list(agent.session.streams) == [1]  # ... and on the agent
        await stop_agent(agent, task)
        echo.close()
        edge.close()

    import uvloop  # the data path runs on uvloop: churn it there

    uvloop.run(asyncio.wait_for(main(), 120))


def test_unauthenticated_session_is_closed_after_auth_timeout_even_if_it_pings(tmp_path):
    async def main():
        edge = Edge(tmp_path, auth_timeout=0.5)
        await edge.start()
        loop = asyncio.get_running_loop()
        ctx = ssl.create_default_context(cafile=str(edge.ca))
        _, session = await loop.create_connection(
            lambda: Session(client=True), "127.0.0.1", edge.port, ssl=ctx, server_hostname=f"connect.{ZONE}"
        )

        async def keep_pinging():
            while not session.is_closed:
                await session.ping(5)
                await asyncio.sleep(0.05)

        pinger = asyncio.ensure_future(keep_pinging())
        await asyncio.wait_for(session.wait_closed(), 10)
        pinger.cancel()
        assert edge.hub.connections == set()
        edge.close()

    run(main())


def test_garbage_on_the_control_stream_closes_that_session_only(tmp_path):
    async def main():
        edge = Edge(tmp_path)
        await edge.start()
        echo, port = await start_echo()
        agent, task, _ = await start_agent(edge, [EndpointConfig("http", port, "good")])
        await edge.wait_binding("http", "good")
        loop = asyncio.get_running_loop()
        ctx = ssl.create_default_context(cafile=str(edge.ca))
        _, session = await loop.create_connection(
            lambda: Session(client=True), "127.0.0.1", edge.port, ssl=ctx, server_hostname=f"connect.{ZONE}"
        )
        control = session.open_stream()
        control.write(b"\x00\x00\x00\x05hello")  # length-prefixed, not JSON
        await asyncio.wait_for(session.wait_closed(), 10)
        b = edge.hub.lookup("http", "good")  # the other agent is untouched
        st = await b.open_stream("198.19.5.10", 1)
        st.write(b"ok")
        assert await asyncio.wait_for(st.readexactly(2), 5) == b"ok"
        await stop_agent(agent, task)
        echo.close()
        edge.close()

    run(main())


def test_agent_start_config_binds_several_endpoints_on_one_session(tmp_path):
    from edge.agent.config import load_agent_config

    async def main():
        edge = Edge(tmp_path)
        await edge.start()
        echo, port = await start_echo()
        conf = tmp_path / "agent.toml"
        conf.write_text(
            f'server = "127.0.0.1:{edge.port}"\nzone = "{ZONE}"\nca = "{edge.ca}"\n'
            f'authtoken_file = "{edge.token_file}"\n'
            f'[[endpoints]]\nkind = "http"\nname = "web"\nport = {port}\n'
            f'[[endpoints]]\nkind = "tls"\nname = "sec"\nport = {port}\nproxy_protocol = true\n'
            f'[[endpoints]]\nkind = "tcp"\nport = {port}\n'
        )
        cfg = load_agent_config(conf, env={})
        lines: list[str] = []
        agent = Agent(cfg, out=lines.append)
        task = asyncio.ensure_future(agent.run())
        await edge.wait_binding("tcp", 20000)
        assert lines == [
            f"forwarding https://web.app.lab.test -> http://localhost:{port}",
            f"forwarding tls://sec.app.lab.test:443 -> localhost:{port}",
            f"forwarding tcp://app.lab.test:20000 -> localhost:{port}",
        ]
        bs = [edge.hub.lookup("http", "web"), edge.hub.lookup("tls", "sec"), edge.hub.lookup("tcp", 20000)]
        assert len({b.connection for b in bs}) == 1  # one session
        assert bs[1].proxy_protocol and bs[1].terminate_at == "agent"
        for i, b in enumerate(bs):
            st = await b.open_stream("2001:db8::5", 443, sni="sec.app.lab.test" if b.kind == "tls" else None)
            st.write(b"kind %d" % i)
            assert await asyncio.wait_for(st.readexactly(6), 5) == b"kind %d" % i
        await stop_agent(agent, task)
        echo.close()
        edge.close()

    run(main())


def test_upstream_down_gives_502_for_http_and_reset_for_tcp(tmp_path):
    from edge.tunnel.errors import StreamResetError

    async def main():
        edge = Edge(tmp_path)
        await edge.start()
        echo, dead_port = await start_echo()
        echo.close()  # nothing listens there any more
        await echo.wait_closed()
        agent, task, _ = await start_agent(edge, [EndpointConfig("http", dead_port, "down"), EndpointConfig("tcp", dead_port)])
        await edge.wait_binding("tcp", 20000)
        st = await edge.hub.lookup("http", "down").open_stream("198.19.5.10", 1)
        st.write(b"GET / HTTP/1.1\r\nHost: down.app.lab.test\r\n\r\n")
        reply = bytearray()
        while True:
            data = await asyncio.wait_for(st.read(), 10)
            if not data:
                break
            reply += data
        assert reply.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
        assert b"down.app.lab.test" in reply and b"ERR_GSLB_AGENT_UPSTREAM" in reply
        st2 = await edge.hub.lookup("tcp", 20000).open_stream("198.19.5.10", 2)
        with pytest.raises(StreamResetError):
            await asyncio.wait_for(st2.read(), 10)
        await stop_agent(agent, task)
        edge.close()

    run(main())


def test_agent_with_two_servers_binds_at_both_edges_and_prints_once(tmp_path):
    async def main():
        e1 = Edge(tmp_path)
        e2 = Edge(tmp_path, certs=e1.certs)
        await e1.start()
        await e2.start()
        echo, port = await start_echo()
        cmd = [
            sys.executable, "-m", "gslb.cli", "agent", "http", str(port), "--name", "both",
            "--server", f"127.0.0.1:{e1.port}", "--server", f"127.0.0.1:{e2.port}",
            "--zone", ZONE, "--ca", str(e1.ca), "--authtoken-file", str(e1.token_file),
        ]
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT
        )
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert line.decode().strip() == f"forwarding https://both.app.lab.test -> http://localhost:{port}"
        for edge in (e1, e2):
            b = await edge.wait_binding("http", "both")
            st = await b.open_stream("198.19.5.10", 1)
            st.write(b"pop")
            assert await asyncio.wait_for(st.readexactly(3), 5) == b"pop"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        assert await proc.stdout.read() == b""  # the second edge's line was not repeated
        for edge in (e1, e2):
            await edge.wait_binding("http", "both", present=False, timeout=5)
        echo.close()
        e1.close()
        e2.close()

    run(main())
