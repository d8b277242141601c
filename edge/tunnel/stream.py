"""One yamux stream on the asyncio side: a `Stream` shaped like an asyncio transport.

Owns: a stream's write queue (bytes waiting for the send window), its read
side (data held while reading is paused, acknowledged when handed over), the
default buffering reader that serves `await read()`, and the stream's state
(`StreamState`: yamux's stream states, seen from what the application did
and was told). Must not touch: framing or windows (`connection.py` counts
those), the transport, the choice of what to write in which loop iteration
(`session.py`).

States and transitions (docs/protocol.md 2.3; HashiCorp yamux's stream.go
names them streamSYNSent ... streamReset). yamux's Close sends its FIN at
once, since its Write blocks until the data is framed; here `close()` may
find bytes still queued behind a closed window, so the FIN waits behind
them (LOCAL_CLOSING, CLOSING):

    SYN_SENT -- the peer's ACK ------------------------------> ESTABLISHED
    SYN_SENT | ESTABLISHED -- close(), nothing queued: FIN --> LOCAL_CLOSE
    SYN_SENT | ESTABLISHED -- close(), bytes queued ---------> LOCAL_CLOSING
    LOCAL_CLOSING -- queue sent, FIN -----------------------> LOCAL_CLOSE
    SYN_SENT | ESTABLISHED -- peer's FIN handed over --------> REMOTE_CLOSE
    LOCAL_CLOSING -- peer's FIN handed over -----------------> CLOSING
    REMOTE_CLOSE -- close(), bytes queued -------------------> CLOSING
    LOCAL_CLOSE -- peer's FIN handed over -------------------> CLOSED
    REMOTE_CLOSE -- close(), nothing queued: FIN ------------> CLOSED
    CLOSING -- queue sent, FIN ------------------------------> CLOSED
    any state but CLOSED -- abort(), peer's RST, session lost -> RESET

"Handed over" is eof_received() on the stream's protocol: while reading is
paused, the peer's FIN waits behind the data held for it. CLOSED and RESET
are final: the stream has left its session and its protocol gets
connection_lost (None, or the reason; None after a local abort()).
"""
from __future__ import annotations

import asyncio
import collections
import enum
from typing import TYPE_CHECKING, Any

from edge.tunnel.errors import SessionClosedError, StreamClosedError, StreamResetError

if TYPE_CHECKING:
    from edge.tunnel.session import Session


class StreamState(enum.Enum):
    """Where a stream is; see the module docstring for the transitions."""

    SYN_SENT = "syn_sent"  # opened here (SYN sent), the peer's ACK not seen yet
    ESTABLISHED = "established"  # open both ways (a stream the peer opens is acked at once)
    LOCAL_CLOSING = "local_closing"  # close() called, our FIN waits behind queued bytes
    LOCAL_CLOSE = "local_close"  # our FIN sent; the peer may still send
    REMOTE_CLOSE = "remote_close"  # the peer's FIN handed over; we may still write
    CLOSING = "closing"  # the peer's FIN handed over, ours waits behind queued bytes
    CLOSED = "closed"  # FIN both ways
    RESET = "reset"  # abort() here, RST from the peer, or the session died


# module-level names: the hot paths compare by identity
_SYN_SENT = StreamState.SYN_SENT
_ESTABLISHED = StreamState.ESTABLISHED
_LOCAL_CLOSING = StreamState.LOCAL_CLOSING
_LOCAL_CLOSE = StreamState.LOCAL_CLOSE
_REMOTE_CLOSE = StreamState.REMOTE_CLOSE
_CLOSING = StreamState.CLOSING
_CLOSED = StreamState.CLOSED
_RESET = StreamState.RESET

# writes up to this size are framed at once when nothing is queued before
# them (Stream.write); larger ones go through the session's round robin
_DIRECT_MAX = 16 * 1024

# the inbox's marker for the peer's FIN, behind the data held before it
_EOF = None


class _Reader:
    """Default protocol of a stream until `set_protocol`: buffers for
    `Stream.read()`; pauses the stream above `limit` (so memory stays bounded)."""

    def __init__(self, stream: "Stream", limit: int) -> None:
        self.stream = stream
        self.limit = limit
        self.buf = bytearray()
        self.eof = False
        self.lost = False
        self.exc: BaseException | None = None
        self.paused = False
        self.want = 0  # bytes a pending readexactly() needs buffered at once
        self.waiter: asyncio.Future[None] | None = None

    def _wake(self) -> None:
        w, self.waiter = self.waiter, None
        if w is not None and not w.done():
            w.set_result(None)

    def connection_made(self, stream: "Stream") -> None:
        pass

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.paused and len(self.buf) > max(self.limit, self.want):
            self.paused = True
            self.stream.pause_reading()
        self._wake()

    def need(self, n: int) -> None:
        """A readexactly(n) waits: buffer up to n bytes before pausing (else
        an n above the limit plus the window never arrives)."""
        self.want = n
        if self.paused and len(self.buf) < n:
            self.paused = False
            self.stream.resume_reading()

    def eof_received(self) -> None:
        self.eof = True
        self._wake()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = True
        self.eof = True
        self.exc = exc
        self._wake()

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    def take(self, n: int) -> bytes:
        self.want = 0
        data = bytes(self.buf[:n])
        del self.buf[:n]
        if self.paused and len(self.buf) <= self.limit // 2:
            self.paused = False
            self.stream.resume_reading()
        elif not self.paused and len(self.buf) > self.limit:
            # more arrived while a readexactly() waited for a large n
            self.paused = True
            self.stream.pause_reading()
        return data


class Stream:
    """One yamux stream, shaped like an asyncio.Transport.

    Its receiver is set with `set_protocol(p)`; p gets connection_made(stream),
    data_received(bytes), eof_received(), pause_writing(), resume_writing()
    and, exactly once, connection_lost(exc): None after a clean close both
    ways or a local abort(), StreamResetError if the peer reset it,
    SessionClosedError/ProtocolError if the session died. Until then a
    buffering reader serves `await read()`."""

    def __init__(self, session: "Session", stream_id: int, state: StreamState) -> None:
        self._session = session
        self._loop = session._loop
        self.stream_id = stream_id
        self.extra: dict[str, Any] = {}
        self._state = state
        cfg = session.config
        self._reader: _Reader | None = _Reader(self, cfg.stream_high_water)
        self._protocol: Any = self._reader
        # write side
        self._wbuf: collections.deque[bytes] = collections.deque()
        self._wsize = 0
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._queued = False  # in the session's ready queue
        # read side: data (and then the peer's FIN, _EOF) held while paused
        self._reading_paused = False
        self._inbox: collections.deque[bytes | None] = collections.deque()
        self._drain_scheduled = False

    def __repr__(self) -> str:
        return f"<Stream id={self.stream_id} state={self._state.value}>"

    @property
    def state(self) -> StreamState:
        return self._state

    def _ended(self) -> bool:
        st = self._state
        return st is _CLOSED or st is _RESET

    # --------------------------------------------------- transport interface

    def set_protocol(self, protocol: Any) -> None:
        """Hand the stream to `protocol`; whatever the default reader holds
        (data, EOF, loss) is replayed to it, in order."""
        reader, self._reader = self._reader, None
        self._protocol = protocol
        protocol.connection_made(self)
        if self._write_paused:
            # the buffer is already above high water: the new protocol must
            # hear it, or its source keeps writing without bound
            protocol.pause_writing()
        if reader is None:
            return
        if reader.paused:
            reader.paused = False
            self.resume_reading()
        if reader.buf:
            protocol.data_received(bytes(reader.buf))
        if reader.lost:
            protocol.connection_lost(reader.exc)
        elif reader.eof:
            protocol.eof_received()

    def get_protocol(self) -> Any:
        return self._protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name in self.extra:
            return self.extra[name]
        if name == "stream_id":
            return self.stream_id
        if name == "session":
            return self._session
        t = self._session._transport
        return t.get_extra_info(name, default) if t is not None else default

    def is_closing(self) -> bool:
        st = self._state
        return not (st is _ESTABLISHED or st is _REMOTE_CLOSE or st is _SYN_SENT)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        st = self._state
        if not (st is _ESTABLISHED or st is _REMOTE_CLOSE or st is _SYN_SENT):
            if st is _CLOSED or st is _RESET:
                return  # like asyncio transports: writes after loss are dropped
            raise StreamClosedError(f"stream {self.stream_id}: write() after close()")
        if not data:
            return
        if type(data) is not bytes:
            data = bytes(data)
        session = self._session
        if not self._wsize and len(data) <= _DIRECT_MAX and not session._writing_paused:
            # Fast path (small writes: requests, responses): nothing queued
            # before it, so frame it now instead of through the ready queue;
            # the frame still goes out with this iteration's single write.
            # Bounded as the queue is: at most _DIRECT_MAX per write, and only
            # while the tunnel transport takes data (else the queue and its
            # pause_writing apply). Profiled (two sessions in one process,
            # 64 streams of 100-byte round trips): the queue round trip was
            # about a third of the send path's CPU.
            if session.conn.send_whole(self.stream_id, data):
                if not session._flush_scheduled:
                    session._schedule_flush()
                return
        self._wbuf.append(data)
        self._wsize += len(data)
        if self._wsize > self._session.config.stream_high_water and not self._write_paused:
            self._write_paused = True
            self._protocol.pause_writing()
        self._session._mark_ready(self)

    def writelines(self, chunks: Any) -> None:
        for c in chunks:
            self.write(c)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.close()

    def close(self) -> None:
        """Half-close once queued data is sent (FIN); reading goes on until
        the peer's FIN, then connection_lost(None)."""
        st = self._state
        if st is _ESTABLISHED or st is _SYN_SENT:
            if self._wbuf:
                self._state = _LOCAL_CLOSING
                self._session._mark_ready(self)
            else:
                self._send_fin()
        elif st is _REMOTE_CLOSE:
            if self._wbuf:
                self._state = _CLOSING
                self._session._mark_ready(self)
            else:
                self._send_fin()
        # closing or ended already: nothing to do

    def abort(self) -> None:
        """Reset the stream (RST) and drop queued data both ways."""
        if self._ended():
            return
        self._session.conn.reset_stream(self.stream_id)
        self._session._schedule_flush()
        self._wbuf.clear()
        self._wsize = 0
        self._inbox.clear()
        self._finish(_RESET, None)

    def pause_reading(self) -> None:
        """Stop handing data over and stop window updates: the peer stops
        after at most one window."""
        self._reading_paused = True

    def resume_reading(self) -> None:
        if not self._reading_paused:
            return
        self._reading_paused = False
        if self._inbox and not self._drain_scheduled:
            self._drain_scheduled = True
            self._loop.call_soon(self._drain_inbox)

    def is_reading(self) -> bool:
        return not self._reading_paused

    def get_write_buffer_size(self) -> int:
        return self._wsize

    # ------------------------------------------------- awaitable convenience

    async def read(self, n: int = 65536) -> bytes:
        """Up to n bytes; b"" at EOF. Only before set_protocol()."""
        r = self._require_reader()
        while not r.buf and not r.eof:
            r.waiter = self._loop.create_future()
            await r.waiter
        if r.buf:
            return r.take(n)
        if r.exc is not None:
            raise r.exc
        return b""

    async def readexactly(self, n: int) -> bytes:
        """Exactly n bytes (IncompleteReadError at EOF before them). While it
        waits, the stream buffers up to n bytes (the caller's bound) instead
        of pausing at the reader's limit."""
        r = self._require_reader()
        if len(r.buf) < n:
            r.need(n)
        try:
            while len(r.buf) < n and not r.eof:
                r.waiter = self._loop.create_future()
                await r.waiter
        finally:
            r.want = 0
        if len(r.buf) < n:
            if r.exc is not None:
                raise r.exc
            raise asyncio.IncompleteReadError(bytes(r.buf), n)
        return r.take(n)

    async def drain(self) -> None:
        """Wait until the write buffer is under the low-water mark."""
        if self._ended():
            raise SessionClosedError(f"stream {self.stream_id} is closed")
        if not self._write_paused:
            return
        fut = self._loop.create_future()
        self._drain_waiters.append(fut)
        await fut

    def _require_reader(self) -> _Reader:
        if self._reader is None:
            raise RuntimeError("read() after set_protocol(): the protocol receives the data")
        return self._reader

    # ------------------------------------------------------ session side

    def _acked(self) -> None:
        """The peer's ACK of a stream opened here arrived."""
        if self._state is _SYN_SENT:
            self._state = _ESTABLISHED

    def _feed(self, data: bytes) -> None:
        st = self._state
        if st is _CLOSED or st is _RESET:
            return
        if self._reading_paused or self._inbox:
            self._inbox.append(data)
            return
        self._protocol.data_received(data)
        # consumed: return the bytes to the peer's window (spec, "Flow Control")
        self._session.conn.acknowledge_received(self.stream_id, len(data))

    def _feed_eof(self) -> None:
        if self._ended():
            return
        if self._reading_paused or self._inbox:
            self._inbox.append(_EOF)
            return
        self._deliver_eof()

    def _reset_by_peer(self) -> None:
        self._inbox.clear()
        self._finish(_RESET, StreamResetError(f"stream {self.stream_id} reset by peer"))

    def _deliver_eof(self) -> None:
        st = self._state
        if st is _ESTABLISHED or st is _SYN_SENT:
            self._state = _REMOTE_CLOSE
        elif st is _LOCAL_CLOSING:
            self._state = _CLOSING
        self._protocol.eof_received()
        if self._state is _LOCAL_CLOSE:  # our FIN went earlier: closed both ways
            self._finish(_CLOSED, None)

    def _drain_inbox(self) -> None:
        self._drain_scheduled = False
        inbox = self._inbox
        acked = 0
        while inbox and inbox[0] is not _EOF and not self._reading_paused and not self._ended():
            data = inbox.popleft()
            self._protocol.data_received(data)
            acked += len(data)  # type: ignore[arg-type]
        if acked:
            self._session.conn.acknowledge_received(self.stream_id, acked)
            self._session._schedule_flush()
        if inbox and inbox[0] is _EOF and not self._reading_paused and not self._ended():
            inbox.popleft()
            self._deliver_eof()

    def _pull(self, budget: int) -> int:
        """Move up to `budget` queued bytes into the connection (window
        permitting). Returns bytes moved."""
        conn = self._session.conn
        win = conn.send_window(self.stream_id)
        take = min(budget, win, self._wsize)
        if take <= 0:
            return 0
        first = self._wbuf[0]
        if len(first) >= take:
            if len(first) == take:
                chunk = self._wbuf.popleft()
            else:
                chunk = first[:take]
                self._wbuf[0] = first[take:]
        else:
            parts = []
            need = take
            while need:
                c = self._wbuf[0]
                if len(c) <= need:
                    parts.append(self._wbuf.popleft())
                    need -= len(c)
                else:
                    parts.append(c[:need])
                    self._wbuf[0] = c[need:]
                    need = 0
            chunk = b"".join(parts)
        conn.send_data(self.stream_id, chunk)
        self._wsize -= take
        if self._write_paused and self._wsize <= self._session.config.stream_low_water:
            self._write_paused = False
            waiters, self._drain_waiters = self._drain_waiters, []
            for w in waiters:
                if not w.done():
                    w.set_result(None)
            self._protocol.resume_writing()
        if not self._wsize and (self._state is _LOCAL_CLOSING or self._state is _CLOSING):
            self._send_fin()
        return take

    def _send_fin(self) -> None:
        """Our FIN, now that nothing is queued before it."""
        try:
            self._session.conn.end_stream(self.stream_id)
        except StreamClosedError:
            pass
        self._session._schedule_flush()
        st = self._state
        if st is _CLOSING or st is _REMOTE_CLOSE:  # the peer's FIN was handed over
            self._finish(_CLOSED, None)
        else:
            self._state = _LOCAL_CLOSE

    def _finish(self, state: StreamState, exc: BaseException | None) -> None:
        """Enter a final state (CLOSED or RESET) and tell the protocol."""
        if self._ended():
            return
        self._state = state
        self._session._forget(self)
        waiters, self._drain_waiters = self._drain_waiters, []
        for w in waiters:
            if not w.done():
                w.set_exception(exc or SessionClosedError(f"stream {self.stream_id} closed"))
                w.exception()  # mark retrieved: nobody may be waiting any more
        # looked up when it runs: a protocol set in the meantime gets it
        self._loop.call_soon(self._deliver_lost, exc)

    def _deliver_lost(self, exc: BaseException | None) -> None:
        self._protocol.connection_lost(exc)


__all__ = ["Stream", "StreamState"]
