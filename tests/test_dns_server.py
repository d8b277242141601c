"""dns.server protocols without sockets: TCP framing, pipelining, connection cap."""
from __future__ import annotations

import struct

import dnslib
import pytest

from dns.engine import Engine
from dns.policy import HealthView
from dns.server import DnsServer, TcpProtocol, UdpReader
from dns.wire import A, SOA, make_query


class FakeTransport:
    def __init__(self, peer=("127.0.0.1", 40000)):
        self.peer = peer
        self.written: list[bytes] = []
        self.sent: list[tuple[bytes, object]] = []
        self.closed = self.aborted = self.paused = False

    def get_extra_info(self, key):
        return self.peer if key == "peername" else None

    def write(self, data):
        self.written.append(data)

    def sendto(self, data, addr):
        self.sent.append((data, addr))

    def abort(self):
        self.aborted = True

    def close(self):
        self.closed = True

    def pause_reading(self):
        self.paused = True

    def resume_reading(self):
        self.paused = False


@pytest.fixture
def server(example_config):
    return DnsServer(Engine(example_config), (("127.0.0.1", 0),), tcp_max_connections=2)


def frames(data: bytes) -> list[bytes]:
    out = []
    while data:
        n = struct.unpack("!H", data[:2])[0]
        out.append(data[2:2 + n])
        data = data[2 + n:]
    return out


def framed(msg: bytes) -> bytes:
    return struct.pack("!H", len(msg)) + msg


def test_tcp_pipelined_queries_in_one_segment_are_answered_in_order(server):
    conn, t = TcpProtocol(server), FakeTransport()
    conn.connection_made(t)
    q = [make_query("lab.test", SOA, qid=i) for i in (1, 2, 3)]
    conn.data_received(b"".join(framed(m) for m in q))
    replies = frames(b"".join(t.written))
    assert [dnslib.DNSRecord.parse(r).header.id for r in replies] == [1, 2, 3]


def test_tcp_message_split_across_segments(server):
    conn, t = TcpProtocol(server), FakeTransport()
    conn.connection_made(t)
    data = framed(make_query("demo.app.lab.test", A, qid=9))
    for i in range(len(data)):
        conn.data_received(data[i:i + 1])
    replies = frames(b"".join(t.written))
    assert len(replies) == 1 and dnslib.DNSRecord.parse(replies[0]).header.id == 9


def test_tcp_garbage_message_does_not_stop_the_connection(server):
    conn, t = TcpProtocol(server), FakeTransport()
    conn.connection_made(t)
    conn.data_received(framed(b"\x01") + framed(b"\xff" * 40) + framed(make_query("lab.test", SOA, qid=5)))
    ids = [struct.unpack("!H", r[:2])[0] for r in frames(b"".join(t.written))]
    assert ids[-1] == 5 and not t.aborted


def test_connections_over_the_cap_are_closed(server):
    conns = []
    for _ in range(3):
        c, t = TcpProtocol(server), FakeTransport()
        c.connection_made(t)
        conns.append((c, t))
    assert [t.aborted for _, t in conns] == [False, False, True]
    assert len(server.tcp_connections) == 2 and server.stats["tcp_refused"] == 1
    conns[0][0].connection_lost(None)
    c, t = TcpProtocol(server), FakeTransport()
    c.connection_made(t)
    assert not t.aborted


def test_client_not_reading_pauses_reading(server):
    conn, t = TcpProtocol(server), FakeTransport()
    conn.connection_made(t)
    conn.pause_writing()
    assert t.paused
    conn.resume_writing()
    assert not t.paused


class FakeUdpSocket:
    """recvfrom() hands out queued datagrams, then EAGAIN; sendto() records."""

    def __init__(self, datagrams, fail_send=False):
        self.queue = list(datagrams)
        self.sent = []
        self.fail_send = fail_send

    def recvfrom(self, n):
        if not self.queue:
            raise BlockingIOError
        item = self.queue.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    def sendto(self, data, addr):
        if self.fail_send:
            raise BlockingIOError
        self.sent.append((data, addr))


def test_udp_answers_and_ignores_garbage_and_icmp_errors(server):
    sock = FakeUdpSocket([(b"\x00", ("127.0.0.1", 1)), ConnectionRefusedError(),
                          (make_query("lab.test", SOA, qid=77), ("127.0.0.1", 2))])
    UdpReader(server, sock).on_readable()
    assert len(sock.sent) == 1 and sock.sent[0][1] == ("127.0.0.1", 2)
    assert dnslib.DNSRecord.parse(sock.sent[0][0]).header.id == 77


def test_udp_batch_is_bounded_and_full_send_buffer_drops(server):
    sock = FakeUdpSocket([(make_query("lab.test", SOA, qid=i), ("127.0.0.1", 2)) for i in range(100)],
                         fail_send=True)
    UdpReader(server, sock).on_readable()
    assert len(sock.queue) == 100 - UdpReader.BATCH
    assert server.stats["udp_send_errors"] == UdpReader.BATCH


def test_reload_failure_keeps_the_old_engine(server):
    old = server.engine

    def broken():
        raise ValueError("dns.toml:3: zone.name: bad")
    server._reload = broken
    assert server.reload() is False and server.engine is old


def test_reload_swaps_the_engine(server, example_config):
    new = Engine(example_config)
    server._reload = lambda: new
    assert server.reload() is True and server.engine is new


def test_reload_keeps_the_health_view(server, example_config):
    view = HealthView(drained=frozenset({"us"}))
    server.engine.set_health(view)
    server._reload = lambda: Engine(example_config)
    assert server.reload() and server.engine.health is view
