"""Sans-IO yamux connection (HashiCorp yamux spec), in the style of h2.

Owns: framing, stream ids and states, per-stream flow control with windows
that grow for bulk transfer, a session-wide cap on granted receive windows,
ping and go-away. Must not touch: sockets, event loops, clocks, logging; the
asyncio shell (`session.py`) feeds bytes in and writes `data_to_send()` out.

Usage:

    conn = Connection(client=True)
    sid = conn.open_stream()
    accepted = conn.send_data(sid, b"hello")      # bounded by the send window
    transport.write(conn.data_to_send())
    for event in conn.receive_data(received):     # may raise ProtocolError
        ...
"""
from __future__ import annotations

from dataclasses import dataclass

from edge.tunnel import frames as F
from edge.tunnel.errors import (
    GO_AWAY_NORMAL,
    LocalProtocolError,
    ProtocolError,
    SessionClosedError,
    StreamClosedError,
)
from edge.tunnel.events import (
    DataReceived,
    Event,
    GoAwayReceived,
    PingAcked,
    PingReceived,
    StreamAcked,
    StreamEnded,
    StreamOpened,
    StreamReset,
    WindowUpdated,
)


# Ids of the peer's parity above the low-water mark that were used (see
# Connection._remote_used): at most this many are remembered; beyond it the
# lower half is folded into the mark (ids skipped below it count as used).
_MAX_USED_ABOVE_FLOOR = 4096

# Payload pieces at least this large are handed over as memoryviews of the
# received buffer; smaller ones are copied (cheap, and plain bytes).
_VIEW_MIN = 16 * 1024

_pack = F.HEADER.pack


@dataclass(frozen=True, slots=True)
class ConnectionConfig:
    """Limits of one yamux connection. Sizes in bytes."""

    initial_window: int = F.INITIAL_WINDOW  # spec, "Flow Control": 256 KiB
    max_window: int = 16 * 1024 * 1024  # a stream's receive window grows up to this
    max_frame_size: int = 256 * 1024  # largest data frame this side sends
    session_window_cap: int = 64 * 1024 * 1024  # sum of granted receive windows
    max_streams: int = 1024  # concurrent streams; more SYNs are answered with RST

    def __post_init__(self) -> None:
        if self.initial_window != F.INITIAL_WINDOW:
            # spec: the initial window is fixed; larger windows are granted
            # with window updates, never assumed.
            raise ValueError("initial_window must be 262144 (yamux spec)")
        if not (self.initial_window <= self.max_window <= F.MAX_UINT32):
            raise ValueError("max_window must be between 256 KiB and 2**32-1")
        if not (1 <= self.max_frame_size <= F.MAX_UINT32):
            raise ValueError("max_frame_size out of range")
        if self.session_window_cap < self.initial_window:
            raise ValueError("session_window_cap below one initial window")
        if self.max_streams < 1:
            raise ValueError("max_streams must be at least 1")


class _Stream:
    __slots__ = (
        "send_window",
        "recv_window",
        "window_size",
        "unacked",
        "credit",
        "local_closed",
        "remote_closed",
    )

    def __init__(self, initial_window: int) -> None:
        self.send_window = initial_window  # bytes we may still send
        # Receive side invariant: recv_window + unacked + credit == window_size.
        self.recv_window = initial_window  # bytes the peer may still send
        self.window_size = initial_window  # current size of our receive window
        self.unacked = 0  # received, not yet consumed by the application
        self.credit = 0  # consumed, not yet returned in a window update
        self.local_closed = False  # FIN sent
        self.remote_closed = False  # FIN received


class Connection:
    """One side of a yamux session. `client=True` opens odd stream ids, the
    server even ones (spec, "StreamID")."""

    def __init__(self, client: bool, config: ConnectionConfig | None = None) -> None:
        self.client = client
        self.config = config or ConnectionConfig()
        self._streams: dict[int, _Stream] = {}
        self._out: list[bytes] = []
        self._next_local_id = 1 if client else 2
        self._remote_parity = 0 if client else 1
        # Ids the peer used (opened: live, closed or refused). HashiCorp's
        # spec sets no order on SYNs (its library sends concurrent opens in
        # any order), so a SYN is accepted for any unused id of the peer's
        # parity. Every id below _remote_floor is used; above it, the used
        # ones are in _remote_used (bounded: _MAX_USED_ABOVE_FLOOR).
        self._remote_floor = 2 if client else 1
        self._remote_used: set[int] = set()
        self._granted_total = 0  # sum of window_size over open streams
        self._next_ping = 0
        self.local_go_away = False
        self.remote_go_away: int | None = None
        # parser state: a partial header (< 12 bytes) and the data frame whose
        # payload is being streamed out
        self._partial = b""
        self._payload_left = 0
        self._payload_sid = 0
        self._payload_live = False
        self._payload_flags = 0
        self._dead: ProtocolError | None = None

    # ---------------------------------------------------------------- queries

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    @property
    def granted_receive_window(self) -> int:
        """Sum of the receive windows granted to the peer over all streams."""
        return self._granted_total

    def is_open(self, stream_id: int) -> bool:
        return stream_id in self._streams

    def send_window(self, stream_id: int) -> int:
        """Bytes `send_data` would accept now on the stream (0 if closed)."""
        st = self._streams.get(stream_id)
        if st is None or st.local_closed:
            return 0
        return st.send_window

    def receive_window(self, stream_id: int) -> int:
        st = self._streams.get(stream_id)
        return 0 if st is None else st.window_size

    # ---------------------------------------------------------------- sending

    @property
    def has_data_to_send(self) -> bool:
        return bool(self._out)

    def data_to_send(self) -> bytes:
        """All bytes produced since the last call, to be written in one go."""
        if not self._out:
            return b""
        out = b"".join(self._out)
        self._out.clear()
        return out

    def data_to_send_chunks(self, coalesce: int = 16 * 1024) -> list[bytes]:
        """Like data_to_send, as a list for `transport.writelines`: small
        pieces (headers, control frames, small payloads) are joined into
        chunks of about `coalesce` bytes (one TLS record), large payloads are
        passed through uncopied."""
        out = self._out
        if not out:
            return []
        self._out = []
        chunks: list[bytes] = []
        small: list[bytes] = []
        small_len = 0
        for piece in out:
            n = len(piece)
            if n >= coalesce:
                if small:
                    chunks.append(b"".join(small))
                    small = []
                    small_len = 0
                chunks.append(piece)
            else:
                small.append(piece)
                small_len += n
                if small_len >= coalesce:
                    chunks.append(b"".join(small))
                    small = []
                    small_len = 0
        if small:
            chunks.append(b"".join(small))
        return chunks

    def open_stream(self) -> int:
        """Open a stream; returns its id. spec, "Stream Establishment": the
        opener sends a window update with SYN (delta 0: initial window)."""
        if self.local_go_away or self.remote_go_away is not None:
            raise SessionClosedError("go-away sent or received: no new streams")
        sid = self._next_local_id
        if sid > F.MAX_UINT32:
            raise SessionClosedError("stream ids exhausted")
        self._next_local_id += 2
        self._streams[sid] = _Stream(self.config.initial_window)
        self._granted_total += self.config.initial_window
        self._out.append(F.pack_header(F.TYPE_WINDOW_UPDATE, F.FLAG_SYN, sid, 0))
        return sid

    def send_data(self, stream_id: int, data: bytes | bytearray | memoryview) -> int:
        """Frame as much of `data` as the send window allows; returns how many
        bytes were taken. The caller keeps the rest until a WindowUpdated."""
        st = self._streams.get(stream_id)
        if st is None or st.local_closed:
            raise StreamClosedError(f"stream {stream_id} is closed for sending")
        n = min(len(data), st.send_window)
        if n <= 0:
            return 0
        st.send_window -= n
        step = self.config.max_frame_size
        out = self._out
        if n == len(data) and n <= step and type(data) is bytes:
            out.append(F.pack_header(F.TYPE_DATA, 0, stream_id, n))
            out.append(data)
            return n
        view = memoryview(data)
        immutable = type(data) is bytes  # slices of bytes cannot change under us
        for off in range(0, n, step):
            chunk = view[off : min(off + step, n)]
            out.append(F.pack_header(F.TYPE_DATA, 0, stream_id, len(chunk)))
            out.append(chunk if immutable else bytes(chunk))
        return n

    def send_whole(self, stream_id: int, data: bytes) -> bool:
        """Frame all of `data` (bytes, at most max_frame_size) as one data
        frame if the send window takes all of it; else do nothing and return
        False. The small-write path of send_data, with one lookup."""
        st = self._streams.get(stream_id)
        n = len(data)
        if st is None or st.local_closed or n > st.send_window or n > self.config.max_frame_size or not n:
            return False
        st.send_window -= n
        out = self._out
        out.append(_pack(0, F.TYPE_DATA, 0, stream_id, n))
        out.append(data)
        return True

    def end_stream(self, stream_id: int) -> None:
        """Half-close: FIN (spec, "Stream Close"). Receiving goes on."""
        st = self._streams.get(stream_id)
        if st is None or st.local_closed:
            raise StreamClosedError(f"stream {stream_id} is already closed for sending")
        st.local_closed = True
        self._out.append(F.pack_header(F.TYPE_WINDOW_UPDATE, F.FLAG_FIN, stream_id, 0))
        if st.remote_closed:
            self._forget(stream_id)

    def reset_stream(self, stream_id: int) -> None:
        """Abort the stream both ways: RST. Idempotent on closed streams."""
        if stream_id not in self._streams:
            return
        self._forget(stream_id)
        self._out.append(F.pack_header(F.TYPE_WINDOW_UPDATE, F.FLAG_RST, stream_id, 0))

    def acknowledge_received(self, stream_id: int, n: int) -> None:
        """The application consumed `n` bytes of the stream's data: return them
        to the peer's window (spec, "Flow Control") once at least half the
        window is consumed, growing the window on the way (see docs)."""
        if n < 0:
            raise LocalProtocolError("cannot acknowledge a negative byte count")
        st = self._streams.get(stream_id)
        if st is None:
            return  # stream gone: nothing left to flow-control
        if n > st.unacked:
            raise LocalProtocolError(
                f"stream {stream_id}: acknowledged {n} bytes, only {st.unacked} outstanding"
            )
        st.unacked -= n
        st.credit += n
        if st.remote_closed or st.credit < st.window_size // 2:
            return
        # Growth: a window doubles each time it is replenished, up to
        # max_window, so only streams that keep moving data grow; the sum of
        # all windows stays under session_window_cap (memory bound).
        grow = min(st.window_size, self.config.max_window - st.window_size)
        grow = max(0, min(grow, self.config.session_window_cap - self._granted_total))
        st.window_size += grow
        self._granted_total += grow
        delta = st.credit + grow
        st.credit = 0
        st.recv_window += delta
        self._out.append(F.pack_header(F.TYPE_WINDOW_UPDATE, 0, stream_id, delta))

    def ping(self, opaque: int | None = None) -> int:
        """Send a ping (SYN); the answer comes back as PingAcked(opaque)."""
        if opaque is None:
            self._next_ping = (self._next_ping + 1) & F.MAX_UINT32
            opaque = self._next_ping
        if not 0 <= opaque <= F.MAX_UINT32:
            raise LocalProtocolError("ping opaque value must fit 32 bits")
        self._out.append(F.pack_header(F.TYPE_PING, F.FLAG_SYN, 0, opaque))
        return opaque

    def go_away(self, code: int = GO_AWAY_NORMAL) -> None:
        """Refuse new streams from now on (spec, "Go Away"); streams already
        open go on until closed."""
        if not 0 <= code <= F.MAX_UINT32:
            raise LocalProtocolError("go-away code must fit 32 bits")
        self.local_go_away = True
        self._out.append(F.pack_header(F.TYPE_GO_AWAY, 0, 0, code))

    def _forget(self, stream_id: int) -> None:
        st = self._streams.pop(stream_id)
        self._granted_total -= st.window_size

    # -------------------------------------------------------------- receiving

    def receive_data(self, data: bytes) -> list[Event]:
        """Parse received bytes; return the events they carry, in order.

        Raises ProtocolError on the first frame that breaks the spec; the
        connection is dead afterwards (every later call raises it again)."""
        if self._dead is not None:
            raise self._dead
        try:
            return self._receive(data)
        except ProtocolError as exc:
            self._dead = exc
            raise

    def _receive(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        if self._partial:
            data = self._partial + data
            self._partial = b""
        pos = 0
        end = len(data)
        view: memoryview | None = None
        unpack = F.HEADER.unpack_from
        streams = self._streams
        while pos < end:
            if self._payload_left:
                n = min(self._payload_left, end - pos)
                if self._payload_live:
                    if pos == 0 and n == end:
                        chunk = data
                    elif n >= _VIEW_MIN:
                        # A frame's payload inside a larger read (every read,
                        # in bulk: 256 KiB frames, 256 KiB TLS reads): a view,
                        # not a copy (profiled: the slice copy was 7 % of the
                        # edge's CPU in bulk). Consumers take bytes-like data.
                        if view is None:
                            view = memoryview(data)
                        chunk = view[pos : pos + n]
                    else:
                        chunk = data[pos : pos + n]
                    events.append(DataReceived(self._payload_sid, chunk))
                self._payload_left -= n
                pos += n
                if not self._payload_left:
                    self._finish_data_frame(events)
                continue
            if end - pos < F.HEADER_SIZE:
                self._partial = bytes(data[pos:])
                break
            version, ftype, flags, sid, length = unpack(data, pos)
            pos += F.HEADER_SIZE
            if ftype == 0 and not flags and not version and 0 < length <= end - pos:
                # Fast path: a whole data frame with no flags on a live
                # stream (every small request and response); the same checks
                # as _on_header, without its calls. Profiled: about a third
                # of the receive path's CPU for 100-byte frames.
                st = streams.get(sid)
                if st is not None and not st.remote_closed and length <= st.recv_window:
                    st.recv_window -= length
                    st.unacked += length
                    if length >= _VIEW_MIN:
                        if view is None:
                            view = memoryview(data)
                        chunk = view[pos : pos + length]
                    else:
                        chunk = data[pos : pos + length]
                    events.append(DataReceived(sid, chunk))
                    pos += length
                    continue
            self._on_header(version, ftype, flags, sid, length, events)
        return events

    def _on_header(self, version: int, ftype: int, flags: int, sid: int, length: int, events: list[Event]) -> None:
        if version != F.VERSION:
            raise ProtocolError(f"unsupported yamux version {version} (spec, \"Version\": 0)")
        if flags & ~F.KNOWN_FLAGS:
            raise ProtocolError(f"unknown flags 0x{flags:04x} in {F.TYPE_NAMES.get(ftype, ftype)} frame")
        if ftype == F.TYPE_DATA or ftype == F.TYPE_WINDOW_UPDATE:
            if sid == 0:
                raise ProtocolError(f"{F.TYPE_NAMES[ftype]} frame on stream 0")
            st = self._stream_for_frame(ftype, flags, sid, events)
            if ftype == F.TYPE_DATA:
                if st is not None:
                    if st.remote_closed:
                        raise ProtocolError(f"stream {sid}: data after FIN")
                    if length > st.recv_window:
                        raise ProtocolError(
                            f"stream {sid}: data frame of {length} bytes exceeds the window ({st.recv_window})"
                        )
                    st.recv_window -= length
                    st.unacked += length
                elif length > self.config.max_window:
                    raise ProtocolError(f"stream {sid}: data frame of {length} bytes exceeds any window")
                if length:
                    self._payload_left = length
                    self._payload_sid = sid
                    self._payload_live = st is not None
                    self._payload_flags = flags
                    return
                self._apply_end_flags(sid, flags, events)
                return
            # window update: length is the delta
            if st is not None and length:
                if st.send_window + length > F.MAX_UINT32:
                    raise ProtocolError(f"stream {sid}: window update overflows 2**32-1")
                st.send_window += length
                if not st.local_closed:
                    events.append(WindowUpdated(sid, length))
            self._apply_end_flags(sid, flags, events)
            return
        if ftype == F.TYPE_PING:
            if sid != 0:
                raise ProtocolError(f"ping on stream {sid} (spec: stream id 0)")
            if flags == F.FLAG_SYN:
                self._out.append(F.pack_header(F.TYPE_PING, F.FLAG_ACK, 0, length))
                events.append(PingReceived(length))
            elif flags == F.FLAG_ACK:
                events.append(PingAcked(length))
            else:
                raise ProtocolError(f"ping with flags 0x{flags:04x} (expected SYN or ACK)")
            return
        if ftype == F.TYPE_GO_AWAY:
            if sid != 0:
                raise ProtocolError(f"go-away on stream {sid} (spec: stream id 0)")
            if flags:
                raise ProtocolError(f"go-away with flags 0x{flags:04x}")
            self.remote_go_away = length
            events.append(GoAwayReceived(length))
            return
        raise ProtocolError(f"unknown frame type {ftype}")

    def _stream_for_frame(self, ftype: int, flags: int, sid: int, events: list[Event]) -> _Stream | None:
        """The live stream a data/window-update frame belongs to, opening it on
        SYN; None for a stream closed earlier (late frames are dropped, as the
        spec allows frames in flight after RST)."""
        st = self._streams.get(sid)
        if flags & F.FLAG_SYN:
            if sid % 2 != self._remote_parity:
                raise ProtocolError(f"SYN on stream {sid}: wrong parity for the peer (spec, \"StreamID\")")
            if st is not None:
                # two streams on one id: frames could not be told apart
                raise ProtocolError(f"SYN on stream {sid}: the stream is already open (duplicate SYN)")
            if self._remote_used_id(sid):
                # reuse of a closed id: late frames of the old stream and
                # the new one would be ambiguous. Refuse this stream only
                # (docs/protocol.md 2.2): RST, no state.
                self._out.append(F.pack_header(F.TYPE_WINDOW_UPDATE, F.FLAG_RST, sid, 0))
                return None
            self._mark_remote_used(sid)
            if self.local_go_away or len(self._streams) >= self.config.max_streams:
                # refuse: RST, no state (hashicorp yamux does the same when
                # its accept backlog is full)
                self._out.append(F.pack_header(F.TYPE_WINDOW_UPDATE, F.FLAG_RST, sid, 0))
                return None
            st = _Stream(self.config.initial_window)
            self._streams[sid] = st
            self._granted_total += self.config.initial_window
            # a window update's delta is applied by the caller: the opener's
            # receive window is 256 KiB + delta (spec, "Flow Control")
            self._out.append(F.pack_header(F.TYPE_WINDOW_UPDATE, F.FLAG_ACK, sid, 0))
            events.append(StreamOpened(sid))
            return st
        if st is None:
            if sid % 2 == self._remote_parity:
                if not self._remote_used_id(sid):
                    raise ProtocolError(f"frame on stream {sid}, which the peer never opened")
            elif sid >= self._next_local_id:
                raise ProtocolError(f"frame on stream {sid}, which this side never opened")
            return None
        if flags & F.FLAG_ACK and sid % 2 != self._remote_parity:
            events.append(StreamAcked(sid))
        return st

    def _remote_used_id(self, sid: int) -> bool:
        """The peer opened `sid` before (or skipped it below the floor)."""
        return sid < self._remote_floor or sid in self._remote_used

    def _mark_remote_used(self, sid: int) -> None:
        used = self._remote_used
        used.add(sid)
        floor = self._remote_floor
        while floor in used:
            used.discard(floor)
            floor += 2
        if len(used) > _MAX_USED_ABOVE_FLOOR:
            # Bounded memory: the lower half of the remembered ids joins the
            # floor; ids never opened below it count as used from now on (a
            # SYN for one that is that late gets RST, never a stream).
            ordered = sorted(used)
            keep = ordered[len(ordered) // 2 :]
            floor = keep[0]
            used.clear()
            used.update(keep)
            while floor in used:
                used.discard(floor)
                floor += 2
        self._remote_floor = floor

    def _finish_data_frame(self, events: list[Event]) -> None:
        sid, flags = self._payload_sid, self._payload_flags
        self._payload_live = False
        self._apply_end_flags(sid, flags, events)

    def _apply_end_flags(self, sid: int, flags: int, events: list[Event]) -> None:
        if not flags & (F.FLAG_FIN | F.FLAG_RST):
            return
        st = self._streams.get(sid)
        if st is None:
            return
        if flags & F.FLAG_RST:
            self._forget(sid)
            events.append(StreamReset(sid))
            return
        if not st.remote_closed:
            st.remote_closed = True
            events.append(StreamEnded(sid))
            if st.local_closed:
                self._forget(sid)
