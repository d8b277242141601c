"""splice(): two tunnel streams relayed both ways, FIN as FIN, RST as RST,
and backpressure from one stream's full buffer to the other's reading."""
from __future__ import annotations

from edge.peer.links import splice
from edge.tunnel.errors import StreamResetError


class FakeStream:
    def __init__(self, name):
        self.name = name
        self.written = []
        self.closed = False
        self.aborted = False
        self.reading = True
        self.protocol = None

    def set_protocol(self, p):
        self.protocol = p
        p.connection_made(self)

    def write(self, data):
        self.written.append(data)

    def close(self):
        self.closed = True

    def abort(self):
        self.aborted = True

    def is_closing(self):
        return self.closed or self.aborted

    def pause_reading(self):
        self.reading = False

    def resume_reading(self):
        self.reading = True


def test_bytes_flow_both_ways_and_the_first_bytes_go_first():
    peer, agent = FakeStream("peer"), FakeStream("agent")
    splice(peer, agent, b"GET / HTTP/1.1\r\n")
    peer.protocol.data_received(b"Host: x\r\n\r\n")
    agent.protocol.data_received(b"HTTP/1.1 200 OK\r\n")
    assert agent.written == [b"GET / HTTP/1.1\r\n", b"Host: x\r\n\r\n"]
    assert peer.written == [b"HTTP/1.1 200 OK\r\n"]


def test_fin_is_passed_on_as_half_close_and_reset_as_reset():
    peer, agent = FakeStream("peer"), FakeStream("agent")
    splice(peer, agent)
    peer.protocol.eof_received()
    assert agent.closed and not agent.aborted
    agent.protocol.connection_lost(StreamResetError("reset by agent"))
    assert peer.aborted


def test_clean_loss_closes_the_other_side():
    peer, agent = FakeStream("peer"), FakeStream("agent")
    splice(peer, agent)
    agent.protocol.connection_lost(None)
    assert peer.closed and not peer.aborted


def test_a_full_stream_pauses_reading_of_the_other_until_it_drains():
    peer, agent = FakeStream("peer"), FakeStream("agent")
    splice(peer, agent)
    # the agent stream's send buffer is full: its receiver hears pause_writing
    agent.protocol.pause_writing()
    assert not peer.reading and agent.reading
    agent.protocol.resume_writing()
    assert peer.reading
    peer.protocol.pause_writing()
    assert not agent.reading


def test_no_write_after_the_destination_is_closing():
    peer, agent = FakeStream("peer"), FakeStream("agent")
    splice(peer, agent)
    agent.aborted = True
    peer.protocol.data_received(b"late")
    assert agent.written == []
