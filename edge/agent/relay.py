"""Byte relay between a tunnel stream and a local upstream TCP connection.

Two asyncio Protocols that hold no buffers: each side's writes go straight
to the other's transport, and each side's pause_writing pauses reading on
the other (the stream's pause_reading stops yamux window updates, so the
edge stops sending too). Must not touch: headers, the control channel.
"""
from __future__ import annotations

import asyncio
from typing import Any

from edge.tunnel.session import Stream

# how long to wait for the upstream's write buffer to drain before the
# half-close (write_eof) is given up and the connection closed instead
EOF_DRAIN_LIMIT = 30.0


# Bytes relayed by this process: [edge -> upstream, upstream -> edge] (edge/agent/metrics.py).
BYTES = [0, 0]


class UpstreamProtocol(asyncio.Protocol):
    """The local connection (agent -> 127.0.0.1:PORT); its bytes go into the stream."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        BYTES[1] += len(data)
        self.stream.write(data)

    def eof_received(self) -> bool:
        self.stream.close()  # FIN on the stream; keep writing to upstream
        return True

    def pause_writing(self) -> None:
        self.stream.pause_reading()

    def resume_writing(self) -> None:
        self.stream.resume_reading()

    def connection_lost(self, exc: BaseException | None) -> None:
        if exc is not None:
            self.stream.abort()
        else:
            self.stream.close()


class StreamToUpstream:
    """The stream's protocol: its bytes go to the upstream transport."""

    def __init__(self, upstream: asyncio.Transport) -> None:
        self.upstream = upstream
        self.stream: Stream | None = None

    def connection_made(self, stream: Any) -> None:
        self.stream = stream

    def data_received(self, data: bytes) -> None:
        BYTES[0] += len(data)
        self.upstream.write(data)

    def eof_received(self) -> None:
        # Half-close towards the upstream only once its buffer is empty:
        # uvloop 0.23 crashed when a write_eof was pending as the connection
        # closed (seen under connection churn; tests/integration/test_tunnel_agent.py churns).
        half_close_when_drained(self.upstream)

    def pause_writing(self) -> None:
        self.upstream.pause_reading()

    def resume_writing(self) -> None:
        if not self.upstream.is_closing():
            self.upstream.resume_reading()

    def connection_lost(self, exc: BaseException | None) -> None:
        if exc is not None:
            self.upstream.abort()
        else:
            self.upstream.close()


class CapturingUpstreamProtocol(UpstreamProtocol):
    """UpstreamProtocol that also hands a copy of each read to the inspector's
    capture, after the bytes are on their way (HTTP endpoints with the
    inspector on; otherwise the plain class runs and capture costs nothing)."""

    def __init__(self, stream: Stream, capture: Any) -> None:
        super().__init__(stream)
        self.capture = capture

    def data_received(self, data: bytes) -> None:
        BYTES[1] += len(data)
        self.stream.write(data)
        self.capture.feed_response(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        self.capture.close()


class CapturingStreamToUpstream(StreamToUpstream):
    def __init__(self, upstream: asyncio.Transport, capture: Any) -> None:
        super().__init__(upstream)
        self.capture = capture

    def data_received(self, data: bytes) -> None:
        BYTES[0] += len(data)
        self.upstream.write(data)
        self.capture.feed_request(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        self.capture.close()


def half_close_when_drained(transport: asyncio.Transport, waited: float = 0.0) -> None:
    if transport.is_closing():
        return
    if transport.get_write_buffer_size() == 0 or waited >= EOF_DRAIN_LIMIT:
        if transport.can_write_eof() and transport.get_write_buffer_size() == 0:
            transport.write_eof()
        else:
            transport.close()
        return
    loop = asyncio.get_running_loop()
    loop.call_later(0.01, half_close_when_drained, transport, waited + 0.01)


def relay(stream: Stream, upstream: asyncio.Transport, upstream_protocol: UpstreamProtocol, first: bytes = b"",
          capture: Any = None) -> None:
    """Wire an open stream to a connected upstream; `first` are stream bytes
    already read (after the proxy header). `capture` (edge/agent/inspect/
    capture.py) gets a copy of the bytes each way; its protocol then must be
    a CapturingUpstreamProtocol."""
    if first:
        BYTES[0] += len(first)
        upstream.write(first)
        if capture is not None:
            capture.feed_request(first)
    stream.set_protocol(StreamToUpstream(upstream) if capture is None else CapturingStreamToUpstream(upstream, capture))
