"""asyncio shell around the sans-IO yamux `Connection`.

Owns: one `Session` (an asyncio.Protocol over the TLS transport of an agent
connection) and its `Stream`s, which look like asyncio transports to their
users and talk to asyncio-Protocol-like receivers, so the edge and the agent
relay client transport <-> stream with no buffering of their own.

Write path: `Stream.write` queues bytes; once per event-loop iteration the
session moves queued bytes into the connection (bounded by each stream's
send window, round robin, at most `write_budget` bytes) and writes everything
produced in that iteration with a single `transport.write`: measured at
load, about 24 small responses share one TLS write, which makes the
tunnel's TLS nearly free for them.

Read path: data is handed to the stream's protocol at once and acknowledged
(window update) when handed over; `pause_reading()` keeps later data in the
stream (bounded by its window) and stops acknowledging, so the peer stops.

Must not touch: authentication, bindings, control messages (hub.py, agent/).
"""
from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from edge.tunnel.connection import Connection, ConnectionConfig
from edge.tunnel.errors import (
    GO_AWAY_NORMAL,
    GO_AWAY_PROTOCOL_ERROR,
    ProtocolError,
    SessionClosedError,
    StreamClosedError,
    StreamResetError,
    TunnelError,
)
from edge.tunnel.events import (
    DataReceived,
    GoAwayReceived,
    PingAcked,
    StreamEnded,
    StreamOpened,
    StreamReset,
    WindowUpdated,
)

log = logging.getLogger("edge.tunnel")


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """Buffer limits of the asyncio shell (bytes)."""

    connection: ConnectionConfig = field(default_factory=ConnectionConfig)
    write_budget: int = 2 * 1024 * 1024  # moved into frames per loop iteration
    stream_high_water: int = 1024 * 1024  # Stream calls pause_writing above this
    stream_low_water: int = 256 * 1024  # ... and resume_writing at or below this
    transport_high_water: int = 4 * 1024 * 1024  # session stops moving data above this


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

    def __init__(self, session: "Session", stream_id: int) -> None:
        self._session = session
        self._loop = session._loop
        self.stream_id = stream_id
        self.extra: dict[str, Any] = {}
        cfg = session.config
        self._reader: _Reader | None = _Reader(self, cfg.stream_high_water)
        self._protocol: Any = self._reader
        # write side
        self._wbuf: collections.deque[bytes] = collections.deque()
        self._wsize = 0
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._close_requested = False
        self._fin_sent = False
        self._queued = False  # in the session's ready queue
        # read side
        self._reading_paused = False
        self._inbox: collections.deque[bytes] = collections.deque()
        self._eof_pending = False
        self._eof_delivered = False
        self._drain_scheduled = False
        self._done = False

    def __repr__(self) -> str:
        return f"<Stream id={self.stream_id} done={self._done}>"

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
        return self._close_requested or self._done

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._done:
            return  # like asyncio transports: writes after loss are dropped
        if self._close_requested:
            raise StreamClosedError(f"stream {self.stream_id}: write() after close()")
        if not data:
            return
        if type(data) is not bytes:
            data = bytes(data)
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
        if self._close_requested or self._done:
            return
        self._close_requested = True
        if not self._wbuf:
            self._send_fin()
        else:
            self._session._mark_ready(self)

    def abort(self) -> None:
        """Reset the stream (RST) and drop queued data both ways."""
        if self._done:
            return
        self._session.conn.reset_stream(self.stream_id)
        self._session._schedule_flush()
        self._wbuf.clear()
        self._wsize = 0
        self._inbox.clear()
        self._finish(None)

    def pause_reading(self) -> None:
        """Stop handing data over and stop window updates: the peer stops
        after at most one window."""
        self._reading_paused = True

    def resume_reading(self) -> None:
        if not self._reading_paused:
            return
        self._reading_paused = False
        if (self._inbox or self._eof_pending) and not self._drain_scheduled:
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
        if self._done:
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

    def _feed(self, data: bytes) -> None:
        if self._done:
            return
        if self._reading_paused or self._inbox:
            self._inbox.append(data)
            return
        self._protocol.data_received(data)
        # consumed: return the bytes to the peer's window (spec, "Flow Control")
        self._session.conn.acknowledge_received(self.stream_id, len(data))

    def _feed_eof(self) -> None:
        if self._done:
            return
        if self._reading_paused or self._inbox:
            self._eof_pending = True
            return
        self._deliver_eof()

    def _deliver_eof(self) -> None:
        self._eof_pending = False
        self._eof_delivered = True
        self._protocol.eof_received()
        if self._fin_sent and not self._done:
            self._finish(None)

    def _drain_inbox(self) -> None:
        self._drain_scheduled = False
        acked = 0
        while self._inbox and not self._reading_paused and not self._done:
            data = self._inbox.popleft()
            self._protocol.data_received(data)
            acked += len(data)
        if acked:
            self._session.conn.acknowledge_received(self.stream_id, acked)
            self._session._schedule_flush()
        if self._eof_pending and not self._inbox and not self._reading_paused and not self._done:
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
        if not self._wsize and self._close_requested and not self._fin_sent:
            self._send_fin()
        return take

    def _send_fin(self) -> None:
        self._fin_sent = True
        try:
            self._session.conn.end_stream(self.stream_id)
        except StreamClosedError:
            pass
        self._session._schedule_flush()
        if self._eof_delivered and not self._done:
            self._finish(None)

    def _finish(self, exc: BaseException | None) -> None:
        if self._done:
            return
        self._done = True
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


# Read buffer shared by all sessions of the process (one per session would be
# 256 KiB per agent on a hub). Why a BufferedProtocol (measured with a
# native profiler): with a plain Protocol, uvloop's TLS transport reads with
# SSLObject.read(256 KiB), which allocates a fresh 256 KiB bytes object for
# every read and every final SSLWantRead attempt; glibc serves that with
# mmap, then mremap (shrink) and munmap, plus page faults: ~17 % of the
# edge's CPU at 100 B responses. Reading into this buffer costs one memcpy
# of what was read, no syscalls. Sharing is safe: transports call get_buffer,
# read into it and call buffer_updated synchronously, and buffer_updated
# copies what was read out before anything else runs.
_READ_BUFFER = memoryview(bytearray(256 * 1024))


class Session(asyncio.BufferedProtocol):
    """A yamux session over one (TLS) transport.

    `on_stream(stream)` is called for each stream the peer opens (the
    callback sets its protocol or reads it). `on_lost(session, exc)` once the
    transport is gone; every live stream gets connection_lost first."""

    def __init__(
        self,
        client: bool,
        *,
        on_stream: Callable[[Stream], None] | None = None,
        on_lost: Callable[["Session", BaseException | None], None] | None = None,
        config: SessionConfig | None = None,
        name: str = "",
    ) -> None:
        self.config = config or SessionConfig()
        self.conn = Connection(client, self.config.connection)
        self.name = name
        self.streams: dict[int, Stream] = {}
        self.on_stream = on_stream
        self.on_lost = on_lost
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:  # built outside the loop; connection_made fixes it
            self._loop = asyncio.get_event_loop_policy().get_event_loop()
        self._transport: asyncio.Transport | None = None
        self._flush_scheduled = False
        self._writing_paused = False
        self._ready: collections.deque[Stream] = collections.deque()
        self._ping_waiters: dict[int, asyncio.Future[None]] = {}
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self.closed_exc: BaseException | None = None
        self.last_received = self._loop.time()
        self.remote_go_away: int | None = None

    # ---------------------------------------------------------- protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._loop = asyncio.get_running_loop()
        self.last_received = self._loop.time()
        hw = self.config.transport_high_water
        try:
            transport.set_write_buffer_limits(high=hw, low=hw // 4)  # type: ignore[attr-defined]
        except (AttributeError, NotImplementedError):
            pass
        self._schedule_flush()  # frames queued before the transport existed

    def get_buffer(self, sizehint: int) -> memoryview:
        return _READ_BUFFER

    def buffer_updated(self, nbytes: int) -> None:
        # a copy: the buffer is reused by the next read, and payload pieces
        # handed to streams may be views of what is passed on here
        self.data_received(bytes(_READ_BUFFER[:nbytes]))

    def data_received(self, data: bytes) -> None:
        self.last_received = self._loop.time()
        try:
            events = self.conn.receive_data(data)
        except ProtocolError as exc:
            self._protocol_error(exc)
            return
        streams = self.streams
        for ev in events:
            t = type(ev)
            if t is DataReceived:
                st = streams.get(ev.stream_id)
                if st is not None:
                    st._feed(ev.data)
                else:
                    self.conn.acknowledge_received(ev.stream_id, len(ev.data))
            elif t is WindowUpdated:
                st = streams.get(ev.stream_id)
                if st is not None and st._wsize:
                    self._mark_ready(st)
            elif t is StreamOpened:
                st = Stream(self, ev.stream_id)
                streams[ev.stream_id] = st
                if self.on_stream is None:
                    st.abort()
                else:
                    try:
                        self.on_stream(st)
                    except Exception:
                        log.exception("event=on_stream_failed session=%s stream=%d", self.name, ev.stream_id)
                        st.abort()
            elif t is StreamEnded:
                st = streams.get(ev.stream_id)
                if st is not None:
                    st._feed_eof()
            elif t is StreamReset:
                st = streams.get(ev.stream_id)
                if st is not None:
                    st._inbox.clear()
                    st._finish(StreamResetError(f"stream {ev.stream_id} reset by peer"))
            elif t is PingAcked:
                w = self._ping_waiters.pop(ev.opaque, None)
                if w is not None and not w.done():
                    w.set_result(None)
            elif t is GoAwayReceived:
                self.remote_go_away = ev.code
                log.info("event=go_away_received session=%s code=%d", self.name, ev.code)
        if self.conn.has_data_to_send or self._ready:
            self._schedule_flush()

    def eof_received(self) -> bool:
        return False  # close the transport: a half-closed session is useless

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._schedule_flush()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._transport = None
        err: BaseException = self.closed_exc or SessionClosedError(
            f"tunnel session lost: {exc}" if exc else "tunnel session closed"
        )
        self.closed_exc = err
        for st in list(self.streams.values()):
            st._finish(err)
        for w in self._ping_waiters.values():
            if not w.done():
                w.set_exception(err)
                w.exception()
        self._ping_waiters.clear()
        if not self._closed.done():
            self._closed.set_result(None)
        if self.on_lost is not None:
            self.on_lost(self, exc)

    # --------------------------------------------------------------- API

    @property
    def is_closed(self) -> bool:
        return self._closed.done() or self._transport is None or self._transport.is_closing()

    def open_stream(self) -> Stream:
        """Open a stream now (SYN goes out this iteration); write at once."""
        if self.is_closed:
            raise SessionClosedError("tunnel session is closed")
        sid = self.conn.open_stream()
        st = Stream(self, sid)
        self.streams[sid] = st
        self._schedule_flush()
        return st

    async def ping(self, timeout: float) -> float:
        """Round-trip time of a yamux ping, seconds."""
        if self.is_closed:
            raise SessionClosedError("tunnel session is closed")
        start = self._loop.time()
        opaque = self.conn.ping()
        fut = self._loop.create_future()
        self._ping_waiters[opaque] = fut
        self._schedule_flush()
        try:
            await asyncio.wait_for(fut, timeout)
        finally:
            self._ping_waiters.pop(opaque, None)
        return self._loop.time() - start

    def go_away(self, code: int = GO_AWAY_NORMAL) -> None:
        """Refuse new streams from the peer (go-away, yamux spec "Go Away");
        streams already open go on. Idempotent."""
        if self.conn.local_go_away:
            return
        self.conn.go_away(code)
        self._schedule_flush()  # before connection_made: sent once it comes

    def close(self, code: int = GO_AWAY_NORMAL) -> None:
        """Go away with `code` and close the transport once written.
        (close, never write_eof: uvloop 0.23 crashed with a double free under
        connection churn when a write_eof was still pending at close.)"""
        t = self._transport
        if t is None or t.is_closing():
            return
        if not self.conn.local_go_away:
            self.conn.go_away(code)
        self._flush()
        t.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        t = self._transport
        return t.get_extra_info(name, default) if t is not None else default

    # ----------------------------------------------------------- internal

    def _protocol_error(self, exc: ProtocolError) -> None:
        log.warning("event=protocol_error session=%s error=%r", self.name, str(exc))
        self.closed_exc = exc
        t = self._transport
        if t is None:
            return
        self.conn.go_away(getattr(exc, "go_away_code", GO_AWAY_PROTOCOL_ERROR))
        data = self.conn.data_to_send()
        if data:
            t.write(data)
        t.close()

    def _mark_ready(self, st: Stream) -> None:
        if not st._queued:
            st._queued = True
            self._ready.append(st)
        self._schedule_flush()

    def _forget(self, st: Stream) -> None:
        self.streams.pop(st.stream_id, None)

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and self._transport is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        t = self._transport
        if t is None or t.is_closing():
            return
        if not self._writing_paused and self._ready:
            self._move_data()
        chunks = self.conn.data_to_send_chunks()
        if chunks:
            # one call per iteration; small frames are coalesced into one TLS
            # record, large payloads go to the TLS layer without a copy
            if len(chunks) == 1:
                t.write(chunks[0])
            else:
                t.writelines(chunks)
        if self._ready and not self._writing_paused and any(
            self.conn.send_window(s.stream_id) for s in self._ready
        ):
            self._schedule_flush()

    def _move_data(self) -> None:
        """Round robin over streams with queued bytes, one frame's worth
        each per round, until the budget is spent or windows are closed."""
        budget = self.config.write_budget
        quantum = self.config.connection.max_frame_size
        ready = self._ready
        rounds_without_progress = 0
        while budget > 0 and ready and rounds_without_progress < len(ready):
            st = ready.popleft()
            if st._done or (not st._wsize and st._fin_sent):
                st._queued = False
                continue
            moved = st._pull(min(budget, quantum))
            budget -= moved
            if st._wsize and not st._done:
                ready.append(st)  # window closed or quantum spent: stay queued
                rounds_without_progress = 0 if moved else rounds_without_progress + 1
            else:
                st._queued = False
                rounds_without_progress = 0


__all__ = ["Session", "SessionConfig", "Stream", "TunnelError"]
