"""Sans-IO capture of one HTTP/1.1 stream, fed the bytes the agent relays.

`HttpCapture.feed_request(data)` gets what the edge sends towards the
upstream, `feed_response(data)` what the upstream answers, `close()` the end
of the stream. It frames the messages (RFC 9112 6: Content-Length, chunked,
until close; RFC 9110 15.2/15.3.5/15.4.5: no body after a HEAD request, 1xx,
204 or 304), pairs responses with requests in order (pipelining, RFC 9112
9.3.2), keeps each head and up to `body_cap` bytes of each body, and after a
101 answer to an Upgrade (RFC 9110 7.8) counts WebSocket frames each way
(RFC 6455 5.2) instead.

Owns: reading copies of the bytes. Must not touch: the bytes themselves, the
relay, the clock (times come from the caller's `now`). A malformed message
ends the capture of that stream (`broken`), never raises to the caller, and
never changes what is relayed.
"""
from __future__ import annotations

from typing import Callable

from edge.agent.inspect.store import Entry, Message, Store

MAX_HEAD = 64 * 1024          # a head larger than this is not HTTP we show
MAX_HEADERS = 200
MAX_CHUNK_LINE = 4096         # chunk-size line with extensions
MAX_HELD_AFTER_UPGRADE = 64 * 1024  # client bytes held while a 101 is awaited
MAX_PIPELINED = 256           # requests awaiting their response on one stream

_NO_BODY_STATUS = (204, 304)


class CaptureError(Exception):
    """Bytes that are not HTTP/1.x as framed here; the stream's capture stops."""


def parse_head(raw: bytes, request: bool) -> tuple[str, str, str, list[tuple[str, str]]]:
    """A head (without the blank line) -> (a, b, c, headers): request (method,
    target, version), response (version, status code, reason). CaptureError if
    bad. Run when an entry is shown, not while the bytes are relayed."""
    lines = raw.split(b"\r\n")
    start = lines[0].decode("latin-1")
    if request:
        parts = start.split(" ")
        if len(parts) != 3 or not parts[0].isalpha() or not parts[2].startswith("HTTP/1."):
            raise CaptureError(f"bad request line {start[:80]!r}")
        a, b, c = parts
    else:
        parts = start.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not (len(parts[1]) == 3 and parts[1].isdigit()):
            raise CaptureError(f"bad status line {start[:80]!r}")
        a, b, c = parts[0], parts[1], parts[2] if len(parts) == 3 else ""
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise CaptureError(f"bad header line {line[:80]!r}")
        headers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
        if len(headers) > MAX_HEADERS:
            raise CaptureError("too many header fields")
    return a, b, c, headers


def header(headers: list[tuple[str, str]], name: str) -> str | None:
    """The values of a field, comma-joined (RFC 9110 5.3); None if absent."""
    vals = [v for k, v in headers if k.lower() == name]
    return ", ".join(vals) if vals else None


class MessageReader:
    """Frames one direction's messages. `feed(data)` calls `on_head(head)` ->
    its framing (body_framing's answer, 'held' or 'raw'), `on_body(data)`, `on_end()`."""

    def __init__(self, request: bool, on_head: Callable[[bytes], str],
                 on_body: Callable[[bytes], None], on_end: Callable[[], None],
                 on_raw: Callable[[bytes], None] | None = None) -> None:
        self.request = request
        self._on_head, self._on_body, self._on_end = on_head, on_body, on_end
        self._on_raw = on_raw  # bytes after a 101: not HTTP any more
        self._buf = b""
        # head | length | chunk_size | chunk_data | chunk_crlf | trailers | close | held | raw
        self.state = "head"
        self._left = 0

    def feed(self, data: bytes) -> None:
        if self.state == "close":
            self._on_body(data)
            return
        buf = self._buf + data if self._buf else data
        self._buf = b""
        while buf:
            st = self.state
            if st == "head":
                if self.request and buf[:2] == b"\r\n":
                    buf = buf[2:]  # RFC 9112 2.2: ignore an empty line before a request-line
                    continue
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        raise CaptureError("head over the size the inspector shows")
                    self._buf = buf
                    return
                head, buf = buf[:end + 4], buf[end + 4:]
                framing = self._on_head(head)
                self._start_body(framing)
            elif st == "length":
                n = min(self._left, len(buf))
                self._on_body(buf[:n])
                buf = buf[n:]
                self._left -= n
                if self._left == 0:
                    self._finish()
            elif st == "chunk_size":
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > MAX_CHUNK_LINE:
                        raise CaptureError("chunk-size line too long")
                    self._buf = buf
                    return
                line = buf[:end].split(b";", 1)[0].strip()
                try:
                    size = int(line, 16)
                except ValueError:
                    raise CaptureError(f"bad chunk size {line[:20]!r}") from None
                buf = buf[end + 2:]
                if size == 0:
                    self.state = "trailers"
                else:
                    self._left, self.state = size, "chunk_data"
            elif st == "chunk_data":
                n = min(self._left, len(buf))
                self._on_body(buf[:n])
                buf = buf[n:]
                self._left -= n
                if self._left == 0:
                    self.state = "chunk_crlf"
            elif st == "chunk_crlf":
                if len(buf) < 2:
                    self._buf = buf
                    return
                if buf[:2] != b"\r\n":
                    raise CaptureError("chunk data not followed by CRLF")
                buf = buf[2:]
                self.state = "chunk_size"
            elif st == "trailers":
                # RFC 9112 7.1.2: trailer fields, then an empty line
                if buf[:2] == b"\r\n":
                    buf = buf[2:]
                    self._finish()
                    continue
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        raise CaptureError("trailers too long")
                    self._buf = buf
                    return
                buf = buf[end + 4:]
                self._finish()
            elif st == "close":
                self._on_body(buf)
                return
            elif st == "raw":
                if self._on_raw is not None:
                    self._on_raw(buf)
                return
            else:  # held: the caller takes the bytes (after an upgrade request)
                self._buf = buf
                if len(buf) > MAX_HELD_AFTER_UPGRADE:
                    raise CaptureError("client sent too much before the upgrade was answered")
                return

    def _start_body(self, framing: str) -> None:
        if framing == "chunked":
            self.state = "chunk_size"
        elif framing == "close":
            self.state = "close"
        elif framing == "held":
            self._on_end()
            self.state = "held"
        elif framing == "raw":
            self.state = "raw"
            self._on_end()
        elif framing.startswith("length:") and int(framing[7:]) > 0:
            self._left, self.state = int(framing[7:]), "length"
        else:
            self._finish()

    def _finish(self) -> None:
        self.state = "head"
        self._on_end()

    def take_held(self) -> bytes:
        buf, self._buf = self._buf, b""
        return buf


def parse_start(head: bytes, request: bool) -> tuple[str, str, str]:
    """Only the start line (the hot path): request (method, target, version),
    response (version, status code, reason). CaptureError if bad."""
    end = head.find(b"\r\n")
    start = (head if end < 0 else head[:end]).decode("latin-1")
    if request:
        parts = start.split(" ")
        if len(parts) != 3 or not parts[0].isalpha() or not parts[2].startswith("HTTP/1."):
            raise CaptureError(f"bad request line {start[:80]!r}")
        return parts[0], parts[1], parts[2]
    parts = start.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not (len(parts[1]) == 3 and parts[1].isdigit()):
        raise CaptureError(f"bad status line {start[:80]!r}")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else ""


def field_values(lower_head: bytes, name: bytes) -> list[bytes]:
    """The values of field `name` (lower case) in a lower-cased head: a few
    finds in C, not a parse of every line (the relay waits for this)."""
    out = []
    key = b"\r\n" + name + b":"
    i = lower_head.find(key)
    while i >= 0:
        j = lower_head.find(b"\r\n", i + len(key))
        out.append(lower_head[i + len(key):j if j >= 0 else len(lower_head)].strip())
        i = lower_head.find(key, i + len(key))
    return out


def body_framing(lower_head: bytes, request: bool, method: str = "", status: int = 0) -> str:
    """RFC 9112 6.3 message body length, as 'none' | 'chunked' | 'length:N' | 'close'."""
    if not request and (method == "HEAD" or 100 <= status < 200 or status in _NO_BODY_STATUS):
        return "none"
    if not request and method == "CONNECT" and 200 <= status < 300:
        return "close"
    te = field_values(lower_head, b"transfer-encoding")
    if te:
        if b",".join(te).rsplit(b",", 1)[-1].strip() == b"chunked":
            return "chunked"
        if request:
            raise CaptureError("request Transfer-Encoding without final chunked")  # RFC 9112 6.3 (4)
        return "close"
    cl = field_values(lower_head, b"content-length")
    if cl:
        # RFC 9112 6.3 (5): differing or invalid values are an error
        values = {v.strip() for c in cl for v in c.split(b",")}
        if len(values) != 1 or not next(iter(values)).isdigit():
            raise CaptureError(f"bad Content-Length {b','.join(cl)[:40]!r}")
        return f"length:{int(values.pop())}"
    return "none" if request else "close"


class WsCounter:
    """Counts WebSocket frames in one direction (RFC 6455 5.2), skipping payloads."""

    def __init__(self) -> None:
        self.frames = 0
        self._hdr = b""
        self._skip = 0

    def feed(self, data: bytes) -> None:
        i, n = 0, len(data)
        while i < n:
            if self._skip:
                k = min(self._skip, n - i)
                self._skip -= k
                i += k
                continue
            need = 2
            hdr = self._hdr + data[i:i + 14]
            if len(hdr) >= 2:
                ln = hdr[1] & 0x7F
                need = 2 + (2 if ln == 126 else 8 if ln == 127 else 0) + (4 if hdr[1] & 0x80 else 0)
            if len(hdr) < need:
                self._hdr = hdr
                i = n
                continue
            used = need - len(self._hdr)
            ln = hdr[1] & 0x7F
            if ln == 126:
                ln = int.from_bytes(hdr[2:4], "big")
            elif ln == 127:
                ln = int.from_bytes(hdr[2:10], "big")
            self._hdr = b""
            self.frames += 1
            self._skip = ln
            i += used


class HttpCapture:
    """One stream's capture. Entries go into `store` as their request head ends."""

    def __init__(self, store: Store, tunnel_name: str, remote_addr: str, now: Callable[[], float],
                 *, replay_of: str | None = None) -> None:
        self.store = store
        self.tunnel_name = tunnel_name
        self.remote_addr = remote_addr
        self.now = now
        self.replay_of = replay_of
        self.broken: str | None = None  # why the capture stopped
        self._req = MessageReader(True, self._req_head, self._req_body, self._req_end)
        self._resp = MessageReader(False, self._resp_head, self._resp_body, self._resp_end, self._ws_in_feed)
        self._waiting: list[Entry] = []   # requests whose response has not begun, in order
        self._req_entry: Entry | None = None
        self._resp_entry: Entry | None = None
        self._ws_out: WsCounter | None = None  # client -> upstream
        self._ws_in: WsCounter | None = None
        self._ws_entry: Entry | None = None
        self.last_entry: Entry | None = None   # the newest request seen (replay reports it)
        self._closed = False

    # -- the relay's side ------------------------------------------------
    def feed_request(self, data: bytes) -> None:
        if self.broken is not None:
            return
        try:
            if self._ws_out is not None:
                self._ws_out.feed(data)
                self._ws_entry.ws_frames_out = self._ws_out.frames  # type: ignore[union-attr]
                self.store.touch()
            else:
                self._req.feed(data)
        except Exception as exc:  # never raise into the relay
            self._break(exc)

    def feed_response(self, data: bytes) -> None:
        if self.broken is not None:
            return
        try:
            if self._ws_in is not None:
                self._ws_in.feed(data)
                self._ws_entry.ws_frames_in = self._ws_in.frames  # type: ignore[union-attr]
                self.store.touch()
            else:
                self._resp.feed(data)
        except Exception as exc:
            self._break(exc)

    def close(self) -> None:
        """The stream ended: a response read until close is complete; others are cut short."""
        if self._closed:
            return
        self._closed = True
        if self._resp_entry is not None and self._resp.state == "close":
            self._resp_entry.complete(self.now())
            self._resp_entry = None
        if self._ws_entry is not None:
            self._ws_entry.ws_closed = True
            self.store.touch()
        for e in [self._req_entry, self._resp_entry, *self._waiting]:
            if e is not None and e.end is None:
                e.abort(self.now(), "stream closed before the exchange completed")
        self._waiting.clear()
        self._req_entry = self._resp_entry = None

    # -- request direction -----------------------------------------------
    def _req_head(self, head: bytes) -> str:
        method, target, version = parse_start(head, True)
        entry = Entry(self.tunnel_name, self.remote_addr, self.now(), replay_of=self.replay_of)
        entry.request = Message(head, version, method=method, uri=target)
        self.store.add(entry)
        self.last_entry = self._req_entry = entry
        self._waiting.append(entry)
        if len(self._waiting) > MAX_PIPELINED:
            raise CaptureError(f"more than {MAX_PIPELINED} requests await their responses")
        lower = head.lower()
        framing = body_framing(lower, True)
        upgrade = b"\r\nupgrade:" in lower and any(b"upgrade" in v for v in field_values(lower, b"connection"))
        if upgrade and framing == "none":
            entry.upgrade_requested = True
            return "held"
        return framing

    def _req_body(self, data: bytes) -> None:
        if self._req_entry is not None:
            self.store.add_body(self._req_entry, self._req_entry.request, data)  # type: ignore[arg-type]

    def _req_end(self) -> None:
        if self._req_entry is not None:
            self._req_entry.request.done = True  # type: ignore[union-attr]
        self._req_entry = None

    # -- response direction ----------------------------------------------
    def _resp_head(self, head: bytes) -> str:
        version, code, reason = parse_start(head, False)
        status = int(code)
        if not self._waiting:
            raise CaptureError("a response with no request")
        entry = self._waiting[0]
        if 100 <= status < 200 and status != 101:
            return "none"  # interim (100 Continue): not shown, as ngrok does not
        self._waiting.pop(0)
        self.store.set_response(entry, Message(head, version, status=status, reason=reason))
        self._resp_entry = entry
        if status == 101 and entry.upgrade_requested:
            # RFC 9110 15.2.2: the protocol changes right after this head
            self._ws_entry = entry
            self._ws_in, self._ws_out = WsCounter(), WsCounter()
            entry.websocket = True
            held = self._req.take_held()
            self._req.state = "raw"
            if held:
                self._ws_out.feed(held)
                entry.ws_frames_out = self._ws_out.frames
            return "raw"
        framing = body_framing(head.lower(), False, entry.request.method, status)  # type: ignore[union-attr]
        if entry.upgrade_requested:
            # refused upgrade: what the client sent meanwhile is HTTP again
            self._resume_requests()
        return framing

    def _resp_body(self, data: bytes) -> None:
        if self._resp_entry is not None:
            self.store.add_body(self._resp_entry, self._resp_entry.response, data)  # type: ignore[arg-type]

    def _resp_end(self) -> None:
        if self._resp_entry is not None:
            self._resp_entry.complete(self.now())
        self._resp_entry = None

    def _ws_in_feed(self, data: bytes) -> None:
        if self._ws_in is not None and self._ws_entry is not None:
            self._ws_in.feed(data)
            self._ws_entry.ws_frames_in = self._ws_in.frames

    def _resume_requests(self) -> None:
        held = self._req.take_held()
        self._req.state = "head"
        if held:
            self._req.feed(held)

    def _break(self, exc: Exception) -> None:
        self.broken = str(exc) or type(exc).__name__
        for e in [self._req_entry, self._resp_entry, *self._waiting]:
            if e is not None and e.end is None:
                e.abort(self.now(), f"capture stopped: {self.broken}")
        self._waiting.clear()
        self._req_entry = self._resp_entry = None
