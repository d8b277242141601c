"""Plain-HTTP listener (:80): 308 to https:// for HTTPS endpoints, 404 otherwise.

RFC 9110 15.4.9: 308 keeps the method and body, so a POST sent to http://
is repeated as a POST to https://. One answer per connection, then close.

`GET /healthz` for a Host that is not an endpoint name (an address literal,
as the DNS health checker sends) answers the edge's health JSON: the checker
probes every PoP address on :80, and this listener is on every address.

`GET /.well-known/acme-challenge/<token>` (RFC 8555 8.3), for any Host, when
the edge runs ACME: 200 with the key authorization from the registry
(edge/acme/solvers.py: whichever PoP the CA reaches answers), else 404.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any, Awaitable, Callable

import httptools

from edge import errors as E
from edge.front.http1 import error_response, host_name, redirect_response

MAX_HEAD = 16 * 1024
ACME_CHALLENGE_PATH = "/.well-known/acme-challenge/"


class RedirectFront(asyncio.Protocol):
    def __init__(self, is_https_name: Callable[[str], bool], https_port: int, timeout: float,
                 health: Callable[[], dict[str, Any]] | None = None,
                 acme_http01: Callable[[str], Awaitable[str | None]] | None = None) -> None:
        self._is_https_name = is_https_name
        self._acme_http01 = acme_http01
        self._task: asyncio.Task[None] | None = None
        self._health = health
        self._https_port = https_port
        self._timeout = timeout
        self._url = b""
        self._host = b""
        self._seen = 0
        self._done = False
        self._parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._timer = asyncio.get_running_loop().call_later(self._timeout, transport.abort)  # type: ignore[attr-defined]

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._timer:
            self._timer.cancel()
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def data_received(self, data: bytes) -> None:
        if self._done:
            return
        self._seen += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # answered in on_headers_complete
        except httptools.HttpParserError:
            if not self._done:
                self._answer(error_response(E.BAD_REQUEST.status, E.BAD_REQUEST.code, "Bad request",
                                            "Malformed HTTP request."))
            return
        if not self._done and self._seen > MAX_HEAD:
            self._answer(error_response(E.HEAD_TOO_LARGE.status, E.HEAD_TOO_LARGE.code, "Request too large",
                                        "Request head too large."))

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"host":
            self._host = value

    def on_headers_complete(self) -> None:
        # Host may carry a port (RFC 9110 7.2); the redirect goes to the https port.
        name = host_name(self._host.decode("latin-1"))
        target = self._url.decode("latin-1")
        if not target.startswith("/"):
            target = "/"  # absolute-form or asterisk: redirect to the root
        path = target.split("?", 1)[0]
        if self._acme_http01 is not None and path.startswith(ACME_CHALLENGE_PATH):
            self._done = True   # no more parsing: the task answers once the registry has
            # Held on self: the loop keeps only a weak reference to a task.
            self._task = asyncio.get_running_loop().create_task(self._answer_http01(path[len(ACME_CHALLENGE_PATH):]))
            return
        if self._health is not None and path == "/healthz" and not self._is_https_name(name):
            body = (json.dumps(self._health()) + "\n").encode()
            self._answer(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n"
                         b"Content-Length: %d\r\nConnection: close\r\n\r\n%b" % (len(body), body))
        elif name and self._is_https_name(name):
            port = "" if self._https_port == 443 else f":{self._https_port}"
            self._answer(redirect_response(f"https://{name}{port}{target}"))
        else:
            self._answer(error_response(E.UNKNOWN_HOST.status, E.UNKNOWN_HOST.code, "Unknown host",
                                        f"No HTTPS endpoint is named {name or '(no Host)'}."))

    async def _answer_http01(self, token: str) -> None:
        assert self._acme_http01 is not None
        try:
            key_auth = await self._acme_http01(token)
        except Exception:  # noqa: BLE001 - registry down: the CA gets a 503 and tries again
            self._answer(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        if key_auth is None:
            self._answer(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        body = key_auth.encode("ascii", "replace")
        self._answer(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nCache-Control: no-store\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n%b" % (len(body), body))

    def _answer(self, data: bytes) -> None:
        self._done = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            self.transport.close()
