"""Sans-IO HTTP/1.1 request-side rewriter for the edge's HTTPS endpoints.

Fed the plaintext bytes a client sends, it returns events in order: a
rewritten request head (with X-Forwarded-* added and hop-by-hop headers
removed), body bytes framed for forwarding, the end of a request, or the
switch to raw bytes after an Upgrade. Bodies are never buffered: each call
returns what the bytes fed so far allow. httptools (C, llhttp) finds the
message boundaries; it costs 1-4 us a head here (h11 cost 15-51 us: docs/bench.md).

Responses are not touched here: they go back to the client byte for byte
(the agent side speaks to the upstream as the proxy that owns the response's
hop-by-hop fields).
"""
from __future__ import annotations

from dataclasses import dataclass

import httptools

from edge import errors as E

__all__ = [
    "HttpError", "RequestHead", "BodyData", "RequestEnd", "Upgraded", "RequestRewriter",
    "error_response", "host_name", "HOP_BY_HOP",
]

# RFC 9110 7.6.1: Connection and the fields it names are hop-by-hop, as are
# Proxy-Connection, Keep-Alive, TE, Transfer-Encoding and Upgrade. Transfer-
# Encoding is re-added when the body is re-chunked (RFC 9112 7.1); Upgrade is
# kept for an upgrade request (RFC 9110 7.8), with "Connection: upgrade".
HOP_BY_HOP = frozenset(
    {b"connection", b"proxy-connection", b"keep-alive", b"te", b"transfer-encoding", b"upgrade", b"trailer"}
)
# The edge is the first proxy: what the client claims in these is not trusted
# (RFC 7239 8.1 on forged forwarding fields); they are replaced.
_REPLACED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port"})
MAX_HEADERS = 100


class HttpError(Exception):
    """A request the edge answers itself; `status` is what to answer with."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    @classmethod
    def of(cls, error: E.ErrorCode, message: str) -> "HttpError":
        """An error of the table (`edge.errors`): its status and code, this message."""
        return cls(error.status, error.code, message)


@dataclass(slots=True)
class RequestHead:
    method: str
    target: str
    host: str
    version: str
    keep_alive: bool
    upgrade: bool
    data: bytes  # the rewritten head, ready to forward


@dataclass(slots=True)
class BodyData:
    data: bytes


@dataclass(slots=True)
class RequestEnd:
    data: bytes  # terminator to forward (the last chunk for chunked bodies)


@dataclass(slots=True)
class Upgraded:
    data: bytes  # bytes after the upgrade request head: relay raw from here on


Event = RequestHead | BodyData | RequestEnd | Upgraded
# The events are plain slotted records, not frozen dataclasses: a frozen one's __init__ sets
# each field through object.__setattr__, ~1.5 us a request head (py-spy, `make bench --profile`).
# Nothing changes an event after it is made.


class RequestRewriter:
    """One per client connection. `feed(data)` -> events; raises HttpError."""

    def __init__(
        self,
        client_addr: str,
        forwarded_port: int = 443,
        proto: str = "https",
        max_header_bytes: int = 16 * 1024,
        max_header_count: int = MAX_HEADERS,
    ) -> None:
        self._xff = client_addr.encode("ascii")
        self._xfport = str(forwarded_port).encode("ascii")  # the port the client connected to
        self._proto = proto.encode("ascii")
        self._max_header = max_header_bytes
        self._max_fields = max_header_count
        self._parser = httptools.HttpRequestParser(self)
        self._events: list[Event] = []
        self._reset_head()
        self._head_pending = 0
        self._closed = False      # after a non-keep-alive request: ignore what follows
        self.upgraded = False

    # -- public ---------------------------------------------------------
    @property
    def in_head(self) -> bool:
        """Waiting for (the rest of) a request head: the header timeout runs."""
        return self._in_head and not self._closed and not self.upgraded

    def feed(self, data: bytes) -> list[Event]:
        if self._closed or self.upgraded:
            return [Upgraded(data)] if self.upgraded and data else []
        self._events = []
        if self._in_head:
            # httptools holds a partial field inside; count raw bytes so a
            # head that never ends is still bounded.
            self._head_pending += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.upgraded = True
            offset = exc.args[0] if exc.args else len(data)
            self._events.append(Upgraded(data[offset:]))
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, HttpError):
                raise exc.__context__ from None  # raised by one of our callbacks
            if self._closed:
                # Bytes after a request that ends the connection: dropped.
                return self._events
            raise HttpError.of(E.BAD_REQUEST, f"malformed request: {exc}") from None
        if self._in_head and self._head_pending > self._max_header:
            raise HttpError.of(E.HEAD_TOO_LARGE, f"request head larger than {self._max_header} bytes")
        return self._events

    # -- httptools callbacks -----------------------------------------------
    def _reset_head(self) -> None:
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._in_head = True
        self._chunked = False

    def on_message_begin(self) -> None:
        self._reset_head()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # trailer fields (RFC 9112 7.1.2): not forwarded, we re-chunk
        self._count(len(name) + len(value) + 4)
        if len(self._headers) >= self._max_fields:
            raise HttpError.of(E.HEAD_TOO_LARGE, f"more than {self._max_fields} header fields")
        self._headers.append((name, value))

    def _count(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > self._max_header:
            raise HttpError.of(E.HEAD_TOO_LARGE, f"request head larger than {self._max_header} bytes")

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_pending = 0
        p = self._parser
        method = p.get_method()
        version = p.get_http_version()
        keep_alive = p.should_keep_alive()
        upgrade = p.should_upgrade()
        if method == b"CONNECT":
            raise HttpError.of(E.METHOD_NOT_ALLOWED, "CONNECT is not served by this edge")
        connection_tokens: set[bytes] = set()
        host = b""
        chunked = False
        te_value = b""
        for name, value in self._headers:
            lname = name.lower()
            if lname == b"connection":
                for t in value.lower().split(b","):
                    connection_tokens.add(t.strip())
            elif lname == b"host":
                if host:
                    # RFC 9112 3.2: more than one Host field -> 400.
                    raise HttpError.of(E.BAD_REQUEST, "more than one Host header")
                host = value
            elif lname == b"transfer-encoding":
                te_value = value.strip()
                chunked = te_value.lower().endswith(b"chunked")
        if chunked and version == "1.0":
            # RFC 9112 6.1: Transfer-Encoding in an HTTP/1.0 message means its
            # framing cannot be trusted; refuse rather than pass it on.
            raise HttpError.of(E.BAD_REQUEST, "Transfer-Encoding in an HTTP/1.0 request")
        if not host and version == "1.1":
            raise HttpError.of(E.BAD_REQUEST, "HTTP/1.1 request without Host")
        self._chunked = chunked
        out = [method, b" ", self._url, b" HTTP/", version.encode("ascii"), b"\r\n"]
        upgrade_value = b""
        for name, value in self._headers:
            lname = name.lower()
            if lname == b"upgrade":
                upgrade_value = value
                continue
            if lname in HOP_BY_HOP or lname in connection_tokens or lname in _REPLACED:
                continue
            out += [name, b": ", value, b"\r\n"]
        if chunked:
            # Codings before the final chunked (e.g. "gzip, chunked") stay on
            # the body; only the chunking is redone (RFC 9112 7).
            out += [b"Transfer-Encoding: ", te_value, b"\r\n"]
        if upgrade and upgrade_value:
            out += [b"Connection: upgrade\r\nUpgrade: ", upgrade_value, b"\r\n"]
        elif not keep_alive:
            out.append(b"Connection: close\r\n")
        elif version == "1.0":
            out.append(b"Connection: keep-alive\r\n")
        out += [
            b"X-Forwarded-For: ", self._xff, b"\r\n",
            b"X-Forwarded-Proto: ", self._proto, b"\r\n",
            b"X-Forwarded-Host: ", host, b"\r\n",
            b"X-Forwarded-Port: ", self._xfport, b"\r\n\r\n",
        ] if host else [
            b"X-Forwarded-For: ", self._xff, b"\r\n",
            b"X-Forwarded-Proto: ", self._proto, b"\r\n\r\n",
        ]
        self._events.append(
            RequestHead(
                method=method.decode("ascii", "replace"),
                target=self._url.decode("latin-1"),
                host=host.decode("latin-1").strip(),
                version=version,
                keep_alive=keep_alive,
                upgrade=bool(upgrade and upgrade_value),
                data=b"".join(out),
            )
        )

    def on_body(self, body: bytes) -> None:
        if self._chunked:
            # Re-frame (RFC 9112 7.1): chunk extensions are dropped on the way.
            self._events.append(BodyData(b"%x\r\n%b\r\n" % (len(body), body)))
        else:
            self._events.append(BodyData(body))

    def on_message_complete(self) -> None:
        self._events.append(RequestEnd(b"0\r\n\r\n" if self._chunked else b""))
        self._in_head = True  # waiting for the next head (keep-alive)
        self._head_pending = 0
        if not self._parser.should_keep_alive() and not self._parser.should_upgrade():
            self._closed = True


_REASONS = {
    308: "Permanent Redirect", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 421: "Misdirected Request", 431: "Request Header Fields Too Large", 502: "Bad Gateway",
    503: "Service Unavailable",
    429: "Too Many Requests",
}


def host_name(host: str) -> str:
    """The name in a Host field value (RFC 9110 7.2: uri-host [":" port]): no port, no trailing
    dot, lower case; an IPv6 literal keeps its brackets. Tolerant: a value that is not a
    name comes back as it is, to be compared with a name and not match."""
    h = host.strip().lower()
    if h.startswith("["):
        h = h[: h.find("]") + 1]
    elif h.count(":") == 1:
        h = h.split(":", 1)[0]
    return h.rstrip(".")


def _html_escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def error_response(status: int, code: str, title: str, detail: str, *, keep_alive: bool = False) -> bytes:
    """A small HTML page naming what failed and its error code (cf. ngrok's ERR_NGROK_3200)."""
    body = (
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title></head>\n"
        "<body><h1>{t}</h1>\n<p>{d}</p>\n<p><code>{c}</code></p>\n</body></html>\n"
    ).format(t=_html_escape(title), d=_html_escape(detail), c=_html_escape(code)).encode("utf-8")
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        "Content-Type: text/html; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"X-Gslb-Error-Code: {code}\r\n"
        "Cache-Control: no-store\r\n"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    ).encode("ascii")
    return head + body


def redirect_response(location: str) -> bytes:
    """RFC 9110 15.4.9: 308 keeps the method and body on the redirected request."""
    loc = location.encode("latin-1")
    return (
        b"HTTP/1.1 308 Permanent Redirect\r\nLocation: " + loc +
        b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
