"""The asyncio shell: two Sessions over a loopback TCP connection."""
from __future__ import annotations

import asyncio
import hashlib

import pytest

from edge.tunnel.errors import SessionClosedError, StreamResetError
from edge.tunnel.session import Session, SessionConfig, Stream
from edge.tunnel.stream import StreamState


class Recorder:
    """A stream protocol that records everything it is told."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.eof = False
        self.lost: list = []
        self.paused = 0
        self.resumed = 0
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, stream):
        self.stream = stream

    def data_received(self, data):
        self.data += data

    def eof_received(self):
        self.eof = True

    def pause_writing(self):
        self.paused += 1

    def resume_writing(self):
        self.resumed += 1

    def connection_lost(self, exc):
        self.lost.append(exc)
        if not self.done.done():
            self.done.set_result(exc)


async def session_pair(on_server_stream, config: SessionConfig | None = None):
    loop = asyncio.get_running_loop()
    holder = {}

    def factory():
        holder["server"] = Session(client=False, on_stream=on_server_stream, config=config)
        return holder["server"]

    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, client = await loop.create_connection(lambda: Session(client=True, config=config), "127.0.0.1", port)
    for _ in range(100):
        if "server" in holder:
            break
        await asyncio.sleep(0.01)
    return server, client, holder["server"]


async def echo_handler(stream: Stream) -> None:
    while True:
        data = await stream.read()
        if not data:
            break
        stream.write(data)
        await stream.drain()
    stream.close()


def test_stream_echo_round_trip_and_clean_close():
    async def main():
        tasks = []
        server, client, _ = await session_pair(lambda st: tasks.append(asyncio.ensure_future(echo_handler(st))))
        st = client.open_stream()
        rec = Recorder()
        st.set_protocol(rec)
        st.write(b"hello ")
        st.write(b"tunnel")
        st.close()
        exc = await asyncio.wait_for(rec.done, 5)
        assert exc is None
        assert bytes(rec.data) == b"hello tunnel" and rec.eof
        assert rec.lost == [None]
        assert client.streams == {}
        client.close()
        server.close()

    asyncio.run(main())


def test_bulk_through_one_stream_with_backpressure_and_growing_window():
    size = 24 * 1024 * 1024

    async def main():
        digest = hashlib.sha256()
        got = {"n": 0}
        done = asyncio.get_running_loop().create_future()

        class Sink:
            def connection_made(self, stream):
                self.stream = stream

            def data_received(self, data):
                digest.update(data)
                got["n"] += len(data)
                conn = self.stream.get_extra_info("session").conn
                got["window"] = max(got.get("window", 0), conn.receive_window(self.stream.stream_id))

            def eof_received(self):
                done.set_result(got["n"])
                self.stream.close()

            def pause_writing(self):
                pass

            def resume_writing(self):
                pass

            def connection_lost(self, exc):
                pass

        server, client, srv = await session_pair(lambda st: st.set_protocol(Sink()))
        st = client.open_stream()
        rec = Recorder()
        st.set_protocol(rec)
        chunk = bytes(range(256)) * 1024  # 256 KiB
        expect = hashlib.sha256()
        sent = 0
        while sent < size:
            st.write(chunk)
            expect.update(chunk)
            sent += len(chunk)
            await st.drain()
        st.close()
        assert await asyncio.wait_for(done, 60) == size
        assert digest.hexdigest() == expect.hexdigest()
        assert rec.paused >= 1 and rec.resumed >= 1  # backpressure was exercised
        # the receiver grew the window past the spec's 256 KiB
        assert got["window"] >= 4 * 1024 * 1024
        await asyncio.wait_for(rec.done, 5)
        client.close()
        server.close()

    asyncio.run(main())


def test_paused_reader_stops_the_sender_after_one_window():
    async def main():
        streams = []
        server, client, srv = await session_pair(lambda st: streams.append(st))
        st = client.open_stream()
        st.write(b"x")
        for _ in range(100):
            if streams:
                break
            await asyncio.sleep(0.01)
        remote = streams[0]
        rec = Recorder()
        remote.set_protocol(rec)
        remote.pause_reading()
        st.write(b"y" * (4 * 1024 * 1024))
        for _ in range(50):
            await asyncio.sleep(0.01)
        # the peer may only send its window (256 KiB) while nothing is consumed
        assert len(rec.data) == 1
        assert client.conn.send_window(st.stream_id) == 0
        assert st.get_write_buffer_size() >= 4 * 1024 * 1024 + 1 - 256 * 1024
        remote.resume_reading()
        for _ in range(500):
            if len(rec.data) == 4 * 1024 * 1024 + 1:
                break
            await asyncio.sleep(0.01)
        assert len(rec.data) == 4 * 1024 * 1024 + 1
        client.close()
        server.close()

    asyncio.run(main())


def test_abort_resets_peer_stream_and_others_continue():
    async def main():
        peers = []
        server, client, _ = await session_pair(lambda st: peers.append(st))
        a = client.open_stream()
        b = client.open_stream()
        a.write(b"a")
        b.write(b"b")
        for _ in range(100):
            if len(peers) == 2:
                break
            await asyncio.sleep(0.01)
        ra, rb = Recorder(), Recorder()
        peers[0].set_protocol(ra)
        peers[1].set_protocol(rb)
        a.abort()
        exc = await asyncio.wait_for(ra.done, 5)
        assert isinstance(exc, StreamResetError)
        b.write(b"still here")
        for _ in range(100):
            if bytes(rb.data) == b"bstill here":
                break
            await asyncio.sleep(0.01)
        assert bytes(rb.data) == b"bstill here"
        client.close()
        server.close()

    asyncio.run(main())


def test_session_loss_fails_streams_in_flight_cleanly():
    async def main():
        peers = []
        server, client, srv = await session_pair(lambda st: peers.append(st))
        st = client.open_stream()
        rec = Recorder()
        st.set_protocol(rec)
        st.write(b"x")
        await asyncio.sleep(0.05)
        srv.abort()
        exc = await asyncio.wait_for(rec.done, 5)
        assert isinstance(exc, SessionClosedError)
        with pytest.raises(SessionClosedError):
            client.open_stream()
        server.close()

    asyncio.run(main())


def test_garbage_from_peer_closes_only_that_session_with_go_away():
    async def main():
        loop = asyncio.get_running_loop()
        sessions = []

        def factory():
            s = Session(client=False, on_stream=lambda st: None)
            sessions.append(s)
            return s

        server = await loop.create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        good_t, good = await loop.create_connection(lambda: Session(client=True), "127.0.0.1", port)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\n\r\n")
        reply = await asyncio.wait_for(reader.read(100), 5)
        # go-away, protocol error (yamux spec "Go Away": code 1), then close
        assert reply == bytes([0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1])
        assert await asyncio.wait_for(reader.read(100), 5) == b""
        rtt = await good.ping(5)
        assert rtt >= 0
        writer.close()
        good.close()
        server.close()

    asyncio.run(main())


def test_protocol_set_while_write_buffer_is_full_is_told_to_pause_then_resume():
    async def main():
        peers = []
        server, client, _ = await session_pair(lambda st: peers.append(st))
        st = client.open_stream()
        # the peer never reads: our window closes after 256 KiB
        st.write(b"w" * (3 * 1024 * 1024))
        assert st.get_write_buffer_size() > client.config.stream_high_water
        rec = Recorder()
        st.set_protocol(rec)
        assert rec.paused == 1  # it must know, or its source writes without bound
        for _ in range(100):
            if peers:
                break
            await asyncio.sleep(0.01)
        sink = Recorder()
        peers[0].set_protocol(sink)
        for _ in range(500):
            if rec.resumed:
                break
            await asyncio.sleep(0.01)
        assert rec.resumed == 1
        client.close()
        server.close()

    asyncio.run(main())


def test_protocol_set_right_after_a_reset_still_gets_connection_lost():
    async def main():
        peers = []
        server, client, _ = await session_pair(lambda st: peers.append(st))
        st = client.open_stream()
        st.write(b"hi")
        for _ in range(100):
            if peers:
                break
            await asyncio.sleep(0.01)
        remote = peers[0]
        st.abort()
        for _ in range(100):
            if remote.state is StreamState.RESET:
                break
            await asyncio.sleep(0)
        rec = Recorder()
        remote.set_protocol(rec)  # same iteration as the reset's notification
        exc = await asyncio.wait_for(rec.done, 5)
        assert isinstance(exc, StreamResetError)
        assert len(rec.lost) == 1
        client.close()
        server.close()

    asyncio.run(main())


def test_readexactly_above_the_reader_limit_plus_the_window():
    # the default reader pauses above its limit (1 MiB) and the peer stops
    # after one window: a readexactly(8 MiB) must still get its bytes
    n = 8 * 1024 * 1024
    tail = 2 * 1024 * 1024 + 3

    async def main():
        got = asyncio.get_running_loop().create_future()

        async def reader(stream: Stream) -> None:
            try:
                first = await stream.readexactly(n)
                rest = bytearray()
                while True:
                    data = await stream.read()
                    if not data:
                        break
                    rest += data
                stream.close()
                got.set_result((first, bytes(rest)))
            except Exception as exc:  # reported to the test, never lost
                got.set_exception(exc)

        tasks = []
        server, client, _ = await session_pair(lambda st: tasks.append(asyncio.ensure_future(reader(st))))
        st = client.open_stream()
        payload = hashlib.sha256(b"seed").digest() * ((n + tail) // 32 + 1)
        payload = payload[: n + tail]
        for off in range(0, len(payload), 256 * 1024):
            st.write(payload[off : off + 256 * 1024])
            await st.drain()
        st.close()
        first, rest = await got
        assert first == payload[:n]
        assert rest == payload[n:]
        assert await st.read() == b""
        client.close()
        server.close()

    # bounded: a deadlock (the old reader) fails here instead of hanging
    asyncio.run(asyncio.wait_for(main(), 120))


def test_go_away_refuses_new_streams_from_the_peer_open_ones_go_on():
    async def main():
        tasks = []
        server, client, srv = await session_pair(lambda st: tasks.append(asyncio.ensure_future(echo_handler(st))))
        st = client.open_stream()
        st.write(b"before ")
        assert await st.readexactly(7) == b"before "
        srv.go_away()
        for _ in range(500):  # bounded poll for the frame to arrive
            if client.remote_go_away is not None:
                break
            await asyncio.sleep(0.01)
        assert client.remote_go_away == 0
        with pytest.raises(SessionClosedError):
            client.open_stream()
        st.write(b"after")
        assert await st.readexactly(5) == b"after"
        st.close()
        assert await st.read() == b""
        assert not srv.is_closed  # go-away alone does not close the session
        client.close()
        server.close()

    asyncio.run(asyncio.wait_for(main(), 60))


# -- stream states (edge/tunnel/stream.py: the transitions in its docstring) ----------------------

async def until(pred, seconds: float = 5.0) -> None:
    """Poll `pred` each loop iteration (and 10 ms), for at most `seconds`."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while not pred():
        assert loop.time() < end, "condition not reached in time"
        await asyncio.sleep(0.01)


def test_states_of_a_clean_close_local_side_first():
    async def main():
        peers: list[Stream] = []
        server, client, _ = await session_pair(peers.append)
        st = client.open_stream()
        assert st.state is StreamState.SYN_SENT
        rec = Recorder()
        st.set_protocol(rec)
        await until(lambda: st.state is StreamState.ESTABLISHED)  # the peer's ACK
        assert peers and peers[0].state is StreamState.ESTABLISHED  # acked on arrival
        remote = peers[0]
        remote_rec = Recorder()
        remote.set_protocol(remote_rec)
        st.close()  # nothing queued: FIN now
        assert st.state is StreamState.LOCAL_CLOSE and st.is_closing()
        with pytest.raises(Exception, match="after close"):
            st.write(b"late")
        await until(lambda: remote_rec.eof)
        assert remote.state is StreamState.REMOTE_CLOSE and not remote.is_closing()
        # the other direction stays open; a write above the direct-framing
        # size (stream.py _DIRECT_MAX) waits in the queue for the next flush
        answer = b"answer" * 3000
        remote.write(answer)
        remote.close()
        assert remote.state is StreamState.CLOSING  # the answer is queued before the FIN
        assert await asyncio.wait_for(rec.done, 5) is None
        assert st.state is StreamState.CLOSED and bytes(rec.data) == answer and rec.eof
        assert await asyncio.wait_for(remote_rec.done, 5) is None
        st.write(b"dropped")  # after the end: dropped, like an asyncio transport
        assert client.streams == {} and st.get_write_buffer_size() == 0
        client.close()
        server.close()

    asyncio.run(main())


def test_fin_waits_behind_queued_bytes_and_a_paused_reader_holds_the_peers_fin():
    async def main():
        peers: list[Stream] = []

        def on_stream(remote):
            remote.pause_reading()  # nothing acknowledged: the sender's window stays shut
            peers.append(remote)

        server, client, _ = await session_pair(on_stream)
        st = client.open_stream()
        rec = Recorder()
        st.set_protocol(rec)
        st.write(b"x" * (512 * 1024))  # two windows' worth
        st.close()
        assert st.state is StreamState.LOCAL_CLOSING  # the FIN waits behind the bytes
        await until(lambda: peers and st.get_write_buffer_size() == 256 * 1024)  # one window went
        remote = peers[0]
        remote_rec = Recorder()
        remote.set_protocol(remote_rec)
        assert st.state is StreamState.LOCAL_CLOSING and remote.state is StreamState.ESTABLISHED
        remote.close()  # the remote's FIN reaches a reader that is not paused
        assert remote.state is StreamState.LOCAL_CLOSE
        await until(lambda: rec.eof)
        assert st.state is StreamState.CLOSING  # both FINs decided, ours still queued
        remote.resume_reading()
        assert await asyncio.wait_for(rec.done, 5) is None
        assert st.state is StreamState.CLOSED
        assert await asyncio.wait_for(remote_rec.done, 5) is None
        assert remote.state is StreamState.CLOSED and len(remote_rec.data) == 512 * 1024

        # the peer's FIN held behind data a paused reader keeps
        peers.clear()
        st = client.open_stream()
        st.write(b"held")
        st.close()
        await until(lambda: peers)
        remote = peers[0]
        remote_rec = Recorder()
        remote.set_protocol(remote_rec)  # still paused (by on_stream)
        assert st.state is StreamState.LOCAL_CLOSE
        await until(lambda: len(remote._inbox) == 2)  # the data, then the peer's FIN, held
        assert remote.state is StreamState.ESTABLISHED and not remote_rec.eof and not remote_rec.data
        remote.resume_reading()
        await until(lambda: remote_rec.eof)
        assert bytes(remote_rec.data) == b"held" and remote.state is StreamState.REMOTE_CLOSE
        remote.close()
        assert remote.state is StreamState.CLOSED
        client.close()
        server.close()

    asyncio.run(main())


def test_abort_and_peer_reset_and_session_loss_end_in_reset():
    async def main():
        peers: list[Stream] = []
        server, client, srv = await session_pair(peers.append)
        st = client.open_stream()
        rec = Recorder()
        st.set_protocol(rec)
        st.write(b"x")
        await until(lambda: peers)
        remote_rec = Recorder()
        peers[0].set_protocol(remote_rec)
        st.abort()
        assert st.state is StreamState.RESET and st.is_closing()
        assert await asyncio.wait_for(rec.done, 5) is None  # a local abort: None
        assert isinstance(await asyncio.wait_for(remote_rec.done, 5), StreamResetError)
        assert peers[0].state is StreamState.RESET
        st.close()  # closing an ended stream changes nothing
        assert st.state is StreamState.RESET
        st2 = client.open_stream()
        rec2 = Recorder()
        st2.set_protocol(rec2)
        await until(lambda: st2.state is StreamState.ESTABLISHED)
        srv.abort()  # the session dies under the stream
        assert isinstance(await asyncio.wait_for(rec2.done, 5), SessionClosedError)
        assert st2.state is StreamState.RESET
        client.close()
        server.close()

    asyncio.run(main())


class WireTransport(asyncio.Transport):
    """Records what a Session writes, one entry per write/writelines call."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data) -> None:
        self.writes.append(bytes(data))

    def writelines(self, chunks) -> None:
        self.writes.append(b"".join(bytes(c) for c in chunks))

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def get_extra_info(self, name, default=None):
        return default


def test_small_write_with_nothing_queued_is_framed_at_once_and_sent_with_the_iterations_one_write():
    from edge.tunnel import frames as F

    async def main():
        s = Session(client=True)
        wire = WireTransport()
        s.connection_made(wire)
        await asyncio.sleep(0)
        st = s.open_stream()
        st.write(b"GET / HTTP/1.1\r\n\r\n")
        assert st.get_write_buffer_size() == 0  # framed, not queued
        st.close()  # nothing queued: the FIN follows the data at once
        assert st.state is StreamState.LOCAL_CLOSE
        await asyncio.sleep(0)
        assert wire.writes == [
            F.pack_header(F.TYPE_WINDOW_UPDATE, F.FLAG_SYN, 1, 0)
            + F.pack_header(F.TYPE_DATA, 0, 1, 18) + b"GET / HTTP/1.1\r\n\r\n"
            + F.pack_header(F.TYPE_WINDOW_UPDATE, F.FLAG_FIN, 1, 0)]

    asyncio.run(main())


def test_writes_while_the_tunnel_is_paused_or_behind_queued_bytes_wait_in_the_queue_in_order():
    from edge.tunnel import frames as F

    async def main():
        s = Session(client=True)
        wire = WireTransport()
        s.connection_made(wire)
        st = s.open_stream()
        await asyncio.sleep(0)
        wire.writes.clear()
        s.pause_writing()  # the tunnel transport is above its high-water mark
        st.write(b"a" * 10)
        st.write(b"b" * 10)  # behind queued bytes: queued too, never framed ahead of them
        assert st.get_write_buffer_size() == 20
        await asyncio.sleep(0)
        assert wire.writes == []
        s.resume_writing()
        await asyncio.sleep(0)
        assert b"".join(wire.writes) == F.pack_header(F.TYPE_DATA, 0, 1, 20) + b"a" * 10 + b"b" * 10
        assert st.get_write_buffer_size() == 0
        # a write larger than the send window waits for the window, in order
        wire.writes.clear()
        st.write(b"c" * (256 * 1024 - 20))  # the rest of the initial window (above the direct size)
        st.write(b"d")
        await asyncio.sleep(0)
        assert st.get_write_buffer_size() == 1 and s.conn.send_window(1) == 0
        s.data_received(F.pack_header(F.TYPE_WINDOW_UPDATE, F.FLAG_ACK, 1, 5))
        await asyncio.sleep(0)
        assert wire.writes[-1].endswith(F.pack_header(F.TYPE_DATA, 0, 1, 1) + b"d")

    asyncio.run(main())
