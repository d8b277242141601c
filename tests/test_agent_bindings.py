"""The agent serves a proxy stream for a binding as soon as that binding's
bind_ok has arrived (docs/protocol.md 3.2, 4): the edge opens streams for a
binding the moment it has sent bind_ok, so the stream can reach the agent
in the same read as the reply, or before the replies to the session's other
binds.

The edge side is the sans-IO yamux core (`Connection`) driven by the test;
the agent's real Session reads and writes bytes through an in-memory
transport, so which bytes arrive together is chosen here, not by timing.
The upstream is a real echo server on 127.0.0.1.
"""
from __future__ import annotations

import asyncio

from _helpers import start_echo

from edge.agent.client import Agent
from edge.agent.config import AgentConfig, EndpointConfig
from edge.tunnel import messages as M
from edge.tunnel.connection import Connection
from edge.tunnel.events import DataReceived, StreamOpened, StreamReset

DEADLINE = 10.0  # seconds: a bound on waiting, never a measurement


class _MemoryTransport(asyncio.Transport):
    """The agent's TLS connection, in memory: what the session writes is
    kept for the test's edge; close() ends the session as a socket would."""

    def __init__(self, protocol: asyncio.BaseProtocol) -> None:
        super().__init__()
        self.protocol = protocol
        self.written = bytearray()
        self._closing = False

    def write(self, data) -> None:
        self.written += data

    def writelines(self, chunks) -> None:
        for c in chunks:
            self.written += c

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name, default=None):
        return default


class _Edge:
    """The edge's end of one agent session: yamux bytes in and out."""

    def __init__(self, session, transport: _MemoryTransport) -> None:
        self.session = session
        self.transport = transport
        self.conn = Connection(client=False)
        self.data: dict[int, bytearray] = {}
        self.reset: set[int] = set()
        self.messages: list[M.Message] = []
        self._reader = M.MessageReader()

    def _pump(self) -> None:
        out = bytes(self.transport.written)
        self.transport.written.clear()
        if not out:
            return
        for ev in self.conn.receive_data(out):
            if isinstance(ev, StreamOpened):
                self.data.setdefault(ev.stream_id, bytearray())
            elif isinstance(ev, DataReceived):
                self.conn.acknowledge_received(ev.stream_id, len(ev.data))
                if ev.stream_id == 1:  # the agent's control stream
                    self.messages += [M.parse_message(o) for o in self._reader.feed(ev.data)]
                else:
                    self.data.setdefault(ev.stream_id, bytearray()).extend(ev.data)
            elif isinstance(ev, StreamReset):
                self.reset.add(ev.stream_id)
        self.deliver()  # window updates

    async def until(self, what: str, done) -> None:
        """Run the loop until done() holds, bounded by DEADLINE."""
        loop = asyncio.get_running_loop()
        end = loop.time() + DEADLINE
        while not done():
            if loop.time() > end:
                raise AssertionError(f"no {what} within {DEADLINE}s; control messages {self.messages}")
            await asyncio.sleep(0.001)
            self._pump()

    async def message(self, typ: type) -> M.Message:
        await self.until(typ.__name__, lambda: any(isinstance(m, typ) for m in self.messages))
        msg = next(m for m in self.messages if isinstance(m, typ))
        self.messages.remove(msg)
        return msg

    def reply(self, msg: M.Message) -> None:
        """Queue a control reply (sent with the next deliver())."""
        self.conn.send_data(1, M.encode_message(msg))

    def open_proxy_stream(self, binding_id: str, endpoint: str, payload: bytes) -> int:
        sid = self.conn.open_stream()
        header = M.ProxyHeader(binding_id=binding_id, kind="tcp", endpoint=endpoint,
                               client_addr="198.19.5.10", client_port=40000)
        self.conn.send_data(sid, header.encode() + payload)
        return sid

    def deliver(self) -> None:
        """Everything queued so far reaches the agent in one read."""
        data = self.conn.data_to_send()
        if data:
            self.session.data_received(data)


async def _agent_online_to_bind(endpoints) -> tuple[Agent, _Edge, asyncio.Task, list[str]]:
    """An agent whose session is past auth, its first bind sent."""
    lines: list[str] = []
    cfg = AgentConfig(endpoints=tuple(endpoints), authtoken="t", heartbeat_interval=1000.0,
                      heartbeat_timeout=3000.0, connect_timeout=DEADLINE)
    agent = Agent(cfg, ssl_context=object(), out=lines.append)  # no TLS: the transport is in memory
    session = agent._new_session()
    transport = _MemoryTransport(session)
    session.connection_made(transport)
    edge = _Edge(session, transport)
    task = asyncio.get_running_loop().create_task(agent._run_session(session))
    auth = await edge.message(M.Auth)
    edge.reply(M.AuthOk(auth.id, "s1"))
    edge.deliver()
    return agent, edge, task, lines


async def _stop(agent: Agent, edge: _Edge, task: asyncio.Task) -> None:
    agent.stop()
    await edge.until("end of the session", task.done)
    assert task.result() is True  # it had got online


def test_stream_in_the_same_read_as_its_bind_ok_is_served_not_reset():
    """The flake of test_agent_with_two_servers...: bind_ok and the edge's
    first stream for it arrive together; the stream was looked up before the
    bind's reply had been handled, found no binding and was reset."""

    async def main() -> None:
        echo, port = await start_echo()
        agent, edge, task, lines = await _agent_online_to_bind([EndpointConfig(kind="tcp", port=port)])
        bind = await edge.message(M.Bind)
        edge.reply(M.BindOk(bind.id, "b1", "tcp://lab.test:20001", port=20001))
        sid = edge.open_proxy_stream("b1", "tcp:20001", b"pop")
        edge.deliver()  # reply, SYN, header and payload: one read
        await edge.until("echo or reset", lambda: sid in edge.reset or len(edge.data.get(sid, b"")) >= 3)
        assert sid not in edge.reset
        assert bytes(edge.data[sid]) == b"pop"
        assert lines == [f"forwarding tcp://lab.test:20001 -> localhost:{port}"]
        await _stop(agent, edge, task)
        echo.close()

    asyncio.run(main())


def test_stream_for_the_first_binding_is_served_before_the_second_bind_ok():
    """Two endpoints on one session: the edge has answered the first bind
    and opens a stream for it; the second reply is still to come. The
    stream is served at once (it used to wait for nothing and be reset:
    bindings were recorded only after every bind had its reply)."""

    async def main() -> None:
        echo, port = await start_echo()
        endpoints = [EndpointConfig(kind="tcp", port=port), EndpointConfig(kind="http", port=port, name="web")]
        agent, edge, task, lines = await _agent_online_to_bind(endpoints)
        bind1 = await edge.message(M.Bind)
        edge.reply(M.BindOk(bind1.id, "b1", "tcp://lab.test:20001", port=20001))
        edge.deliver()
        bind2 = await edge.message(M.Bind)  # sent: the agent handled the first reply
        assert bind2.name == "web"
        sid = edge.open_proxy_stream("b1", "tcp:20001", b"pop")
        edge.deliver()
        await edge.until("echo or reset", lambda: sid in edge.reset or len(edge.data.get(sid, b"")) >= 3)
        assert sid not in edge.reset
        assert bytes(edge.data[sid]) == b"pop"
        assert lines == []  # online (and its lines) only once every endpoint is bound
        edge.reply(M.BindOk(bind2.id, "b2", "https://web.app.lab.test", hostname="web.app.lab.test"))
        edge.deliver()
        await edge.until("forwarding lines", lambda: len(lines) == 2)
        assert lines == [
            f"forwarding tcp://lab.test:20001 -> localhost:{port}",
            f"forwarding https://web.app.lab.test -> http://localhost:{port}",
        ]
        await _stop(agent, edge, task)
        echo.close()

    asyncio.run(main())


def test_stream_for_a_binding_the_edge_never_confirmed_is_reset():
    """What stays unknown once the binds are done is still refused at once."""

    async def main() -> None:
        echo, port = await start_echo()
        agent, edge, task, lines = await _agent_online_to_bind([EndpointConfig(kind="tcp", port=port)])
        bind = await edge.message(M.Bind)
        edge.reply(M.BindOk(bind.id, "b1", "tcp://lab.test:20001", port=20001))
        edge.deliver()
        await edge.until("forwarding line", lambda: len(lines) == 1)
        sid = edge.open_proxy_stream("b-unknown", "tcp:20001", b"pop")
        edge.deliver()
        await edge.until("reset", lambda: sid in edge.reset)
        assert bytes(edge.data.get(sid, b"")) == b""
        await _stop(agent, edge, task)
        echo.close()

    asyncio.run(main())


def test_table_lookup_answers_known_and_unknown_at_once_after_binding_and_waits_while_binding():
    from edge.agent.bindings import BindingTable

    async def main() -> None:
        ep = EndpointConfig(kind="http", name="demo", host="127.0.0.1", port=8080)
        table = BindingTable()
        waiting = asyncio.ensure_future(table.lookup("b1", timeout=30.0))
        await asyncio.sleep(0)
        assert not waiting.done()          # binds in flight: it waits for b1
        table.add("b1", ep)
        assert await waiting is ep
        table.binding_done()
        # once bound: a known id and an unknown one are answered without waiting
        known = table.lookup("b1", timeout=30.0)
        assert await asyncio.wait_for(known, 1.0) is ep
        assert await asyncio.wait_for(table.lookup("nope", timeout=30.0), 1.0) is None

    asyncio.run(main())
