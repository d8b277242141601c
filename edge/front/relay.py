"""Relaying bytes between a client transport and a tunnel stream.

Owns: the two asyncio protocols of a relayed connection and their flow
control. Both ends look like asyncio transports (a `Stream` from
`edge.tunnel` has write/close/abort/pause_reading/resume_reading), so the
relay is symmetrical: when one side's write buffer fills (pause_writing),
the other side stops reading until it drains. Memory per connection is thus
bounded by the two transports' high-water marks, never by the transfer size.

Closing: a side's EOF closes the other with close(), not write_eof():
uvloop 0.23 crashed (a double free) under connection churn when a
write_eof() was still pending as the connection closed.
A tunnel stream's close() is a half-close (yamux FIN), so the client's EOF
still lets the response come back.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

from plumbing.kvlog import kv

log = logging.getLogger("gslb.edge")




class StreamSide(asyncio.Protocol):
    """Receiver set on the tunnel stream: what comes from the agent goes to the client."""

    __slots__ = ("owner",)

    def __init__(self, owner: "ClientSide") -> None:
        self.owner = owner

    def connection_made(self, transport: Any) -> None:
        pass

    def data_received(self, data: bytes) -> None:
        self.owner.from_stream(data)

    def eof_received(self) -> bool | None:
        self.owner.stream_eof()
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        self.owner.stream_lost(exc)

    def pause_writing(self) -> None:
        # The stream's send buffer is full: stop reading the client.
        self.owner.set_client_paused("stream", True)

    def resume_writing(self) -> None:
        self.owner.set_client_paused("stream", False)


# One read buffer shared by all client connections of this process. Why a
# BufferedProtocol (measured with a native profiler): with a plain Protocol, uvloop's
# TLS transport reads with SSLObject.read(256 KiB), which allocates a fresh
# 256 KiB bytes object per read (glibc: mmap, mremap, munmap and page faults,
# ~17 % of the edge's CPU at 100 B). Sharing is safe: transports call
# get_buffer, read into it and call buffer_updated synchronously, and
# buffer_updated copies what was read out before returning.
_SHARED_READ_BUFFER = memoryview(bytearray(256 * 1024))


class ClientSide(asyncio.BufferedProtocol):
    """Base of the client-facing protocols: a client transport, maybe a stream.

    Subclasses decide what to send to the stream (`to_stream`) and what to do
    when it ends. Reading from the client pauses for any of several reasons
    (stream not open yet, stream buffer full); it resumes when none is left.
    """

    idle_timeout = 300.0

    def __init__(self) -> None:
        self.client: asyncio.Transport | None = None
        self.stream: Any = None
        self.peer: tuple[str, int] = ("", 0)
        self.local_port = 0
        self._pause_reasons: set[str] = set()
        self._client_write_paused = False
        self._pending: list[bytes] = []     # for the stream, while it opens
        self._closed = False
        self._stream_closed = False
        self._stream_eof = False
        self._activity = True
        self._idle_handle: asyncio.TimerHandle | None = None
        self.bytes_up = 0
        self.bytes_down = 0
        self._tls = False
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set in connection_made

    # -- client transport callbacks ------------------------------------------
    def get_buffer(self, sizehint: int) -> memoryview:
        return _SHARED_READ_BUFFER

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(_SHARED_READ_BUFFER[:nbytes]))

    def data_received(self, data: bytes) -> None:  # pragma: no cover - subclasses
        raise NotImplementedError

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.client = transport  # type: ignore[assignment]
        # Held: on Python 3.11 every asyncio.get_running_loop() is a getpid() system call
        # (strace -c of the edge at 100 B: 4 a request, more than its reads and writes).
        self._loop = asyncio.get_running_loop()
        peer = transport.get_extra_info("peername") or ("", 0)
        self.peer = (str(peer[0]), int(peer[1]))
        sock = transport.get_extra_info("sockname") or ("", 0)
        self.local_port = int(sock[1])
        self._tls = transport.get_extra_info("sslcontext") is not None
        self._idle_handle = self._loop.call_later(self.idle_timeout, self._idle_check)

    def pause_writing(self) -> None:
        # The client is slower than the agent: stop reading the stream.
        self._client_write_paused = True
        if self.stream is not None:
            self.stream.pause_reading()

    def resume_writing(self) -> None:
        self._client_write_paused = False
        if self.stream is not None and not self._stream_closed:
            self.stream.resume_reading()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._closed = True
        if self._idle_handle is not None:
            self._idle_handle.cancel()
        if self.stream is not None and not self._stream_closed:
            if exc is None and self._stream_eof:
                self._close_stream()  # both sides said all they had: a clean end
            else:
                # Nobody is left to read what the agent still sends (an SSE
                # stream would go on forever): reset, so its window and the
                # upstream connection are freed now.
                self.stream.abort()
        self.on_closed(exc)

    def eof_received(self) -> bool | None:
        # Client half-closed: FIN the stream, keep the connection for the answer.
        if self.stream is not None:
            self._close_stream()
        else:
            self._pending.append(b"")  # marker: FIN once the stream opens
        # asyncio's TLS transports cannot stay half-open (TLS 1.3 close_notify
        # ends the connection for the peer anyway); plain TCP can.
        return None if self._tls else True

    # -- helpers ---------------------------------------------------------------
    def set_client_paused(self, reason: str, paused: bool) -> None:
        if self.client is None or self._closed:
            return
        was = bool(self._pause_reasons)
        if paused:
            self._pause_reasons.add(reason)
        else:
            self._pause_reasons.discard(reason)
        now = bool(self._pause_reasons)
        if now and not was:
            self.client.pause_reading()
        elif was and not now:
            self.client.resume_reading()

    def send_to_stream(self, data: bytes) -> None:
        if not data:
            return
        self._activity = True
        self.bytes_up += len(data)
        if self.stream is None:
            self._pending.append(data)
        elif not self._stream_closed and not self.stream.is_closing():
            self.stream.write(data)

    def attach_stream(self, stream: Any, first: bytes = b"") -> None:
        """The stream is open: hand it our receiver, flush what waited, read again."""
        if self._closed:
            stream.abort()
            return
        self.stream = stream
        stream.set_protocol(StreamSide(self))
        if self._stream_closed:
            return  # set_protocol replayed a loss
        if first:
            stream.write(first)
        pending, self._pending = self._pending, []
        fin = False
        for chunk in pending:
            if chunk:
                stream.write(chunk)
            else:
                fin = True
        if fin:
            self._close_stream()
        if self._client_write_paused:
            stream.pause_reading()
        self.set_client_paused("opening", False)

    def _close_stream(self) -> None:
        if self.stream is not None and not self.stream.is_closing():
            self.stream.close()

    def close_client(self) -> None:
        if self.client is not None and not self._closed:
            self.client.close()

    def abort_client(self) -> None:
        if self.client is not None and not self._closed:
            self.client.abort()

    def _idle_check(self) -> None:
        if self._closed:
            return
        if self._activity:
            self._activity = False
            self._idle_handle = self._loop.call_later(self.idle_timeout, self._idle_check)
            return
        log.info(kv("idle_timeout", client=self.peer[0], port=self.peer[1]))
        if self.stream is not None and not self._stream_closed:
            self.stream.abort()
        self.abort_client()

    # -- stream side callbacks ---------------------------------------------------
    def from_stream(self, data: bytes) -> None:
        self._activity = True
        self.bytes_down += len(data)
        if self.client is not None and not self._closed:
            self.client.write(data)

    def stream_eof(self) -> None:
        self._stream_eof = True
        # The agent side finished sending. Closing (not write_eof) flushes what
        # is buffered and then closes: see the module docstring.
        self.close_client()

    def stream_lost(self, exc: BaseException | None) -> None:
        self._stream_closed = True
        if exc is None:
            self.close_client()
        else:
            self.abort_client() if self.bytes_down else self.close_client()

    def on_closed(self, exc: BaseException | None) -> None:
        """Hook for subclasses (accounting, logs)."""


class RawRelay(ClientSide):
    """TLS passthrough, TLS terminated at the edge, TCP: bytes both ways, unchanged.

    `await open_(relay)` gives the stream (`edge.endpoint.Endpoint.open_stream`,
    bounded by `open_stream_within`) or None (no agent: close). While it is
    awaited the client is not read, so a passthrough ClientHello simply
    waits in the socket.
    """

    def __init__(self, open_: Callable[["RawRelay"], Awaitable[Any]], first: Callable[["RawRelay"], bytes] | None = None,
                 on_closed: Callable[["RawRelay", BaseException | None], None] | None = None,
                 idle_timeout: float = 300.0) -> None:
        super().__init__()
        self._open = open_
        self._first = first
        self._on_closed = on_closed
        self.idle_timeout = idle_timeout
        self._task: asyncio.Task[Any] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.set_client_paused("opening", True)
        self._task = asyncio.get_running_loop().create_task(self._wait_open())

    async def _wait_open(self) -> None:
        try:
            stream = await self._open(self)
        except Exception as exc:  # noqa: BLE001 - any failure to open means: close the client
            self._open_failed(exc)
            return
        self._opened(stream)

    def _open_failed(self, exc: BaseException) -> None:
        log.info(kv("stream_open_failed", client=self.peer[0], error=type(exc).__name__, detail=exc))
        self.close_client()

    def _opened(self, stream: Any) -> None:
        if stream is None:
            self.close_client()
            return
        self.attach_stream(stream, self._first(self) if self._first else b"")

    def data_received(self, data: bytes) -> None:
        self.send_to_stream(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        super().connection_lost(exc)

    def on_closed(self, exc: BaseException | None) -> None:
        if self._on_closed is not None:
            self._on_closed(self, exc)
