"""Sans-IO HTTP/1.1 response-side rewriter: adds this PoP to `Via`.

RFC 9110 7.6.3: each proxy that forwards a response appends its
received-protocol and received-by to Via, e.g. `Via: 1.1 eu.lab.test`; an
existing Via keeps its entries and ours goes last (the nearest proxy to the
client is the last entry). The edge is the proxy the client talks to, so
every response going back through it gets the entry of the PoP it entered.

Fed the bytes coming back from the agent, `feed(data)` returns the bytes to
send to the client: heads rewritten, bodies passed through as they come
(never buffered; only a head is held until it is complete, bounded by
`max_head`). The message framing follows RFC 9112 6.3, which needs the
request method (a response to HEAD has no body), so the front calls
`expect(method)` for each request it forwards, in order:

- 1xx other than 101: an interim head, then the final response follows;
- 101 Switching Protocols: the head, then raw bytes both ways (websockets);
- HEAD request, 204, 304: no body;
- Transfer-Encoding chunked: chunks walked (sizes, data, trailers), passed on;
- Content-Length: that many bytes;
- otherwise: the body runs until the connection closes.

A head that cannot be parsed (or is larger than `max_head`) switches the
rewriter to raw pass-through for the rest of the connection: the response
reaches the client as the upstream sent it, without our Via. It never raises.
"""
from __future__ import annotations

import re
from collections import deque
from typing import Callable

__all__ = ["ResponseRewriter", "add_via"]

_STATUS = re.compile(rb"^HTTP/(\d)\.(\d) (\d{3})(?: [^\r\n]*)?$")
# A head every line of which the general path accepts (field names are tokens, RFC 9110 5.1;
# no bare CR or LF): checked in C in one match, then the framing fields are found with a
# few searches of its lower-case copy instead of a split and a loop over its lines.
_PLAIN_HEAD = re.compile(rb"HTTP/\d\.\d (\d{3})(?: [^\r\n]*+)?\r\n"   # possessive: nothing to backtrack
                         rb"(?:[!#$%&'*+.^_`|~0-9A-Za-z-]++:[^\r\n]*+\r\n)*+\r\n")
_HEAD_END = b"\r\n\r\n"
_MAX_CHUNK_LINE = 4096
_PROBE = 16 * 1024  # where feed() looks for the end of a head first

_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILER, _UNTIL_CLOSE, _RAW = range(8)


def add_via(head: bytes, via: bytes) -> bytes | None:
    """`head` (status line and fields, ending in CRLF CRLF) with `via` appended
    to the last Via field, or as a new one; None if it is not a response head."""
    lines = head[:-4].split(b"\r\n")
    if not _STATUS.match(lines[0]):
        return None
    last_via = -1
    for i in range(1, len(lines)):
        name, sep, _ = lines[i].partition(b":")
        if not sep or not name or name != name.strip():
            return None  # RFC 9112 5.1: no whitespace before the colon
        if name.lower() == b"via":
            last_via = i
    if last_via >= 0:
        lines[last_via] = lines[last_via].rstrip() + b", " + via
    else:
        lines.insert(1, b"Via: " + via)
    return b"\r\n".join(lines) + _HEAD_END


class ResponseRewriter:
    def __init__(self, via: str, max_head: int = 64 * 1024,
                 on_final: "Callable[[int], None] | None" = None) -> None:
        self.via = via.encode("ascii")
        self.max_head = max_head
        self.on_final = on_final      # fn(status) at each final response head (the module chain's observe)
        self._methods: deque[str] = deque()
        self._state = _HEAD
        self._buf = bytearray()       # head, or a chunk-size / trailer line
        self._left = 0                # bytes left of a Content-Length body or chunk
        self.responses = 0            # final responses seen (for tests and logs)

    @property
    def raw(self) -> bool:
        return self._state == _RAW

    def expect(self, method: str) -> None:
        """A request was forwarded: its response comes in this order."""
        self._methods.append(method)

    def feed(self, data: bytes | memoryview) -> bytes | memoryview:
        # Fast paths (`make bench PROFILE=1`: feed and its bytes() copies were ~10 %
        # of the edge's CPU at 64 KiB): a read that lies wholly inside a body
        # goes out as it came, no slice, no copy, no join. The tunnel may hand
        # over a memoryview of its read buffer (tunnel/connection.py).
        st = self._state
        if st == _RAW or st == _UNTIL_CLOSE:
            return data
        if st == _LENGTH and len(data) <= self._left:
            self._left -= len(data)
            if self._left == 0:
                self._state = _HEAD
            return data
        raw = data if type(data) is bytes else None  # searchable form, made when needed
        out: list[bytes | memoryview] = []
        mv = memoryview(data)
        i, n = 0, len(data)
        while i < n:
            st = self._state
            if st == _RAW or st == _UNTIL_CLOSE:
                out.append(mv[i:])
                break
            if st == _HEAD:
                if not self._buf:
                    # The usual case: a head starts here. Look for its end in
                    # the first bytes only, so a 64 KiB read is not copied
                    # into _buf, out of it and joined (4 copies before).
                    if raw is not None:  # searched in place: no 16 KiB slice per response
                        end = raw.find(_HEAD_END, i, i + _PROBE)
                        if end >= 0:
                            out.append(self._on_head(raw[i:end + 4]))
                            i = end + 4
                            continue
                    else:
                        probe = bytes(mv[i:i + _PROBE])
                        end = probe.find(_HEAD_END)
                        if end >= 0:
                            out.append(self._on_head(probe[: end + 4]))
                            i += end + 4
                            continue
                self._buf += mv[i:]
                i = n
                end = self._buf.find(_HEAD_END)
                if end < 0:
                    if len(self._buf) > self.max_head:
                        out.append(bytes(self._buf))
                        self._buf.clear()
                        self._state = _RAW
                    break
                head = bytes(self._buf[: end + 4])
                rest = bytes(self._buf[end + 4:])
                self._buf.clear()
                out.append(self._on_head(head))
                if rest:
                    out.append(self.feed(rest))
                break
            if st == _LENGTH or st == _CHUNK_DATA:
                take = min(self._left, n - i)
                out.append(mv[i:i + take])  # joined once below: no copy per piece
                i += take
                self._left -= take
                if self._left == 0:
                    self._state = _CHUNK_CRLF if st == _CHUNK_DATA else _HEAD
                    if st == _CHUNK_DATA:
                        self._left = 2
                continue
            if st == _CHUNK_CRLF:
                take = min(self._left, n - i)
                out.append(bytes(mv[i:i + take]))
                i += take
                self._left -= take
                if self._left == 0:
                    self._state = _CHUNK_SIZE
                continue
            # _CHUNK_SIZE or _TRAILER: line based
            if raw is None:
                raw = bytes(data)
            nl = raw.find(b"\n", i)
            if nl < 0:
                self._buf += mv[i:]
                out.append(bytes(mv[i:]))
                i = n
                if len(self._buf) > _MAX_CHUNK_LINE:
                    self._buf.clear()
                    self._state = _RAW
                break
            line = bytes(self._buf) + bytes(mv[i:nl])
            self._buf.clear()
            out.append(bytes(mv[i:nl + 1]))
            i = nl + 1
            if st == _CHUNK_SIZE:
                size_text = line.rstrip(b"\r").split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    self._state = _RAW
                    continue
                if size == 0:
                    self._state = _TRAILER
                else:
                    self._state, self._left = _CHUNK_DATA, size
            else:  # trailer section ends with an empty line
                if line.rstrip(b"\r") == b"":
                    self._state = _HEAD
        if len(out) == 1 and type(out[0]) is bytes:
            return out[0]
        return b"".join(out)

    def _on_head(self, head: bytes) -> bytes:
        m = _PLAIN_HEAD.fullmatch(head)
        if m is not None:
            low = head.lower()
            if b"\r\nvia:" not in low:  # (an existing Via: the general path appends to it)
                # What the general path does to such a head, found without splitting it
                # (`make bench --profile`: _on_head was ~9 % of the edge's CPU at 100 B).
                te, length = b"", None
                j = low.rfind(b"\r\ntransfer-encoding:")
                if j >= 0:
                    j += 20
                    te = low[j:low.index(b"\r\n", j)].strip()
                j = low.rfind(b"\r\ncontent-length:")
                if j >= 0:
                    j += 17
                    try:
                        length = int(head[j:head.index(b"\r\n", j)].strip())
                    except ValueError:
                        length = -1
                eol = head.index(b"\r\n") + 2
                return self._framing(head[:eol] + b"Via: " + self.via + b"\r\n" + head[eol:], int(m.group(1)),
                                     te, length)
        return self._general_head(head)

    def _general_head(self, head: bytes) -> bytes:
        # One pass over the head's lines does what add_via() checks and finds
        # the framing fields (it used to split and scan the head twice: `make bench
        # PROFILE=1`, add_via + _on_head ~8 % of the edge's CPU at 100 B).
        lines = head[:-4].split(b"\r\n")
        m = _STATUS.match(lines[0])
        if m is None:
            self._state = _RAW
            return head
        last_via = -1
        te, length = b"", None
        for i in range(1, len(lines)):
            name, sep, value = lines[i].partition(b":")
            if not sep or not name or name != name.strip():
                self._state = _RAW  # RFC 9112 5.1: no whitespace before the colon
                return head
            lname = name.lower()
            if lname == b"via":
                last_via = i
            elif lname == b"transfer-encoding":
                te = value.strip().lower()
            elif lname == b"content-length":
                try:
                    length = int(value.strip())
                except ValueError:
                    length = -1
        if last_via >= 0:
            lines[last_via] = lines[last_via].rstrip() + b", " + self.via
        else:
            lines.insert(1, b"Via: " + self.via)
        return self._framing(b"\r\n".join(lines) + _HEAD_END, int(m.group(3)), te, length)

    def _framing(self, rewritten: bytes, status: int, te: bytes, length: int | None) -> bytes:
        """The state after a head (RFC 9112 6.3), given its status and framing fields."""
        if 100 <= status < 200:
            if status == 101:
                self._state = _RAW  # the protocol switched: bytes from here on are not HTTP
            # other 1xx: interim, the final response to the same request follows
            return rewritten
        method = self._methods.popleft() if self._methods else "GET"
        self.responses += 1
        if self.on_final is not None:
            self.on_final(status)
        if method == "HEAD" or status in (204, 304):
            self._state = _HEAD
        elif te:
            # RFC 9112 6.3: chunked last -> chunked framing; any other coding -> until close
            self._state = _CHUNK_SIZE if te.endswith(b"chunked") else _UNTIL_CLOSE
        elif length is not None:
            if length < 0:
                self._state = _RAW
            elif length == 0:
                self._state = _HEAD
            else:
                self._state, self._left = _LENGTH, length
        else:
            self._state = _UNTIL_CLOSE
        if method == "CONNECT" and 200 <= status < 300:
            self._state = _RAW
        return rewritten
