"""asyncio shell around the sans-IO yamux `Connection`.

Owns: one `Session` (an asyncio.Protocol over the TLS transport of an agent
connection): its streams (`edge.tunnel.stream.Stream`, which look like
asyncio transports to their users and talk to asyncio-Protocol-like
receivers, so the edge and the agent relay client transport <-> stream with
no buffering of their own), the loop iteration's write, pings and go-away.

Write path: `Stream.write` frames a small write (<= 16 KiB) at once when
nothing is queued before it, the window allows and the transport is not
paused; otherwise it queues the bytes, and once per event-loop iteration the
session moves queued bytes into the connection (bounded by each stream's
send window, round robin, at most `write_budget` bytes). Either way
everything produced in that iteration leaves with a single
`transport.write`: measured at
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
    TunnelError,
)
from edge.tunnel.events import (
    DataReceived,
    GoAwayReceived,
    PingAcked,
    StreamAcked,
    StreamEnded,
    StreamOpened,
    StreamReset,
    WindowUpdated,
)
from edge.tunnel.stream import Stream, StreamState

log = logging.getLogger("edge.tunnel")


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """Buffer limits of the asyncio shell (bytes)."""

    connection: ConnectionConfig = field(default_factory=ConnectionConfig)
    write_budget: int = 2 * 1024 * 1024  # moved into frames per loop iteration
    stream_high_water: int = 1024 * 1024  # Stream calls pause_writing above this
    stream_low_water: int = 256 * 1024  # ... and resume_writing at or below this
    transport_high_water: int = 4 * 1024 * 1024  # session stops moving data above this


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
                # acked by the connection at once: established
                st = Stream(self, ev.stream_id, StreamState.ESTABLISHED)
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
                    st._reset_by_peer()
            elif t is StreamAcked:
                st = streams.get(ev.stream_id)
                if st is not None:
                    st._acked()
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
            st._finish(StreamState.RESET, err)
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
        st = Stream(self, sid, StreamState.SYN_SENT)
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
            if not st._wsize or st._ended():
                st._queued = False
                continue
            moved = st._pull(min(budget, quantum))
            budget -= moved
            if st._wsize and not st._ended():
                ready.append(st)  # window closed or quantum spent: stay queued
                rounds_without_progress = 0 if moved else rounds_without_progress + 1
            else:
                st._queued = False
                rounds_without_progress = 0


# Stream and StreamState live in edge.tunnel.stream; importable from here as well.
__all__ = ["Session", "SessionConfig", "Stream", "StreamState", "TunnelError"]
