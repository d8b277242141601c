"""The HTTPS endpoint front: TLS terminated, HTTP/1.1 relayed to a tunnel stream.

Owns: one client connection's requests: route (by SNI) to the endpoint's
binding, ask the module chain, open one tunnel stream for the connection
(keep-alive requests share it; the agent keeps one upstream connection per
stream), rewrite request heads (`http1.RequestRewriter`) and stream bodies,
relay responses back byte for byte, answer offline (404 ERR_GSLB_3200),
denied (403) and broken (400/431/502) requests itself.
Must not touch: TLS (done by the transport) or the tunnel's framing.
"""
from __future__ import annotations

import asyncio
import inspect
import ipaddress
import logging
from typing import Any, Protocol

from edge.front.http1 import HttpError, RequestHead, RequestRewriter, error_response
from edge.front.relay import ClientSide, kv, log, start_stream
from edge.front.response import ResponseRewriter, add_via
from edge.modules import Chain, Subject, Verdict
from edge.modules import base as modbase

ERR_OFFLINE = "ERR_GSLB_3200"
ERR_UPSTREAM = "ERR_GSLB_3502"
# A stream the agent's PoP could not open (its edge died, the peer link broke)
# carried nothing of the request to the agent: the request waits up to this
# long for the endpoint to be bound elsewhere (the agent reconnects to another
# PoP within about half a second) and goes there instead of getting a 502.
REROUTE_WAIT = 2.0      # seconds (at most stream_open)
REROUTE_POLL = 0.05     # seconds between two lookups while waiting


class FrontContext(Protocol):
    """What a front needs from the server that made it."""

    chain: Chain
    https_port: int
    max_header_bytes: int
    stream_open_timeout: float
    idle_timeout: float
    # header_timeout (optional; seconds a request head may take, slowloris):
    # a context without it (tests' stand-ins) has none.

    def lookup(self, kind: str, name: str) -> Any: ...

    # received-by of this PoP for Via (RFC 9110 7.6.3), e.g. "eu.lab.test";
    # a context without it (tests' stand-ins) adds no Via.


def _host_name(host: str) -> str:
    """The name in a Host field value: no port, no trailing dot, lower case."""
    h = host.strip().lower()
    if h.startswith("["):
        h = h[: h.find("]") + 1]
    elif h.count(":") == 1:
        h = h.split(":", 1)[0]
    return h.rstrip(".")


class HttpFront(ClientSide):
    def __init__(self, ctx: FrontContext, sni: str) -> None:
        super().__init__()
        self.ctx = ctx
        self.sni = sni
        self.idle_timeout = ctx.idle_timeout
        self.rw: RequestRewriter | None = None
        self.binding: Any = None
        self._opening = False
        self._answer_when_done: bytes | None = None   # page to send once the stream ends
        self._stop = False                            # no more client bytes are forwarded
        self._requests = 0
        self._ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
        self._open_task: asyncio.Task[None] | None = None  # held: the loop keeps tasks weakly
        self._finished = False
        self._log_requests = log.isEnabledFor(logging.INFO)  # `gslb edge -v`; checked once a connection
        self._header_timeout: float | None = getattr(ctx, "header_timeout", None)
        self._header_timer: asyncio.TimerHandle | None = None
        via = getattr(ctx, "via", None)
        self._via = f"1.1 {via}".encode("ascii") if via else None
        self.resp: ResponseRewriter | None = ResponseRewriter(f"1.1 {via}") if via else None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._ip = modbase.client_ip(self.peer[0]) if self.peer[0] else None
        self.rw = RequestRewriter(
            str(self._ip) if self._ip else self.peer[0], forwarded_port=self.ctx.https_port,
            proto="https", max_header_bytes=self.ctx.max_header_bytes,
        )
        # The first request head must come within the header timeout of the
        # handshake's end: a client that opens TLS and sends nothing, or a
        # head a byte at a time (slowloris), must not hold a connection for
        # the whole idle timeout.
        self._arm_header_timer()

    # -- header timeout (slowloris) -------------------------------------------
    def _arm_header_timer(self) -> None:
        if self._header_timeout is not None and self._header_timer is None and not self._closed:
            self._header_timer = asyncio.get_running_loop().call_later(self._header_timeout, self._header_expired)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_expired(self) -> None:
        self._header_timer = None
        if self._closed or self._stop:
            return
        log.info(kv("header_timeout", client=self.peer[0], sni=self.sni, seconds=self._header_timeout))
        # RFC 9110 15.5.9: 408, the server closes the connection.
        self._refuse(408, "ERR_GSLB_3408", "Request timeout",
                     f"The request head did not arrive within {self._header_timeout:g} s.")

    # -- client bytes ---------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._stop:
            return
        try:
            events = self.rw.feed(data)  # type: ignore[union-attr]
        except HttpError as exc:
            self._refuse(exc.status, exc.code, "Bad request", exc.message)
            return
        out: list[bytes] = []
        for ev in events:
            if type(ev) is RequestHead:
                self._requests += 1
                if not self._admit(ev, out):
                    break
                if self.resp is not None:
                    self.resp.expect(ev.method)
            out.append(ev.data)
        if out and not self._stop:
            self.send_to_stream(b"".join(out))
        # A head under way (the first one, or the next keep-alive request's
        # first bytes) runs the header timer; a complete head stops it.
        if self.rw.in_head and not self._stop:  # type: ignore[union-attr]
            self._arm_header_timer()
        else:
            self._cancel_header_timer()

    def _admit(self, head: RequestHead, out: list[bytes]) -> bool:
        """Route and decide a request; False when the edge answers it itself."""
        if head.host and _host_name(head.host) != self.sni:
            # RFC 9110 7.4 / 15.5.20: this connection's certificate and route are
            # for the SNI name; a request for another host is misdirected.
            log.info(kv("misdirected_request", client=self.peer[0], sni=self.sni, host=head.host))
            if out:
                self.send_to_stream(b"".join(out))
                out.clear()
            self._refuse(421, "ERR_GSLB_3421", "Misdirected request",
                         f"This connection is for {self.sni}, not {_host_name(head.host)}.")
            return False
        if self.binding is None:
            self.binding = self.ctx.lookup("http", self.sni)
            if self.binding is None:
                log.info(kv("endpoint_offline", client=self.peer[0], sni=self.sni, code=ERR_OFFLINE))
                self._refuse(404, ERR_OFFLINE, "Endpoint offline",
                             f"The endpoint {self.sni} is offline: no agent serves it right now.")
                return False
        if self.ctx.chain.modules:
            decision = self.ctx.chain.decide(Subject(
                client_ip=self._ip, client_port=self.peer[1], kind="http", endpoint=self.sni,  # type: ignore[arg-type]
                options=getattr(self.binding, "options", None) or {},
                request=modbase.RequestHead(head.method, head.target, head.host),
            ))
            if decision.verdict is Verdict.ANSWER:
                log.info(kv("request_refused", client=self.peer[0], sni=self.sni, module=decision.module,
                            status=decision.status, reason=decision.reason))
                if out:  # earlier requests of this read go on; their answers come first
                    self.send_to_stream(b"".join(out))
                    out.clear()
                self._refuse(decision.status or 403, decision.code or "ERR_GSLB_3403", "Forbidden",
                             f"Access to {self.sni} is not allowed: {decision.reason}.")
                return False
        if self._log_requests:
            log.info(kv("request", client=self.peer[0], sni=self.sni, method=head.method, target=head.target[:200]))
        if self.stream is None and not self._opening:
            return self._start_stream()
        return True

    def _start_stream(self) -> bool:
        try:
            res = start_stream(self.binding, (str(self._ip), self.peer[1]), self.sni, True,
                               self.ctx.stream_open_timeout)
        except Exception as exc:  # noqa: BLE001 - the agent went away or the tunnel failed
            self._open_failed(exc)
            return False
        if inspect.isawaitable(res):
            self._opening = True
            self.set_client_paused("opening", True)
            self._open_task = asyncio.get_running_loop().create_task(self._wait_open(res))
            return True
        if res is None:
            self._refuse(404, ERR_OFFLINE, "Endpoint offline", f"The endpoint {self.sni} is offline.")
            return False
        self.attach_stream(res)
        return not self._stop

    async def _wait_open(self, res: Any) -> None:
        try:
            stream = await res
        except Exception as exc:  # noqa: BLE001
            stream = await self._reroute(exc)
            if stream is not None:
                self._opening = False
                if self._closed:
                    stream.abort()
                    return
                self.attach_stream(stream)
                return
            self._opening = False
            self._pending.clear()
            self._open_failed(exc)
            return
        self._opening = False
        if self._closed:
            if stream is not None:
                stream.abort()
            return
        if stream is None:
            self._pending.clear()
            self._refuse(404, ERR_OFFLINE, "Endpoint offline", f"The endpoint {self.sni} is offline.")
            return
        self.attach_stream(stream)

    async def _reroute(self, exc: BaseException) -> Any:
        """After a failed open: the stream to the endpoint's new binding, or None (then 502)."""
        old = self.binding
        loop = asyncio.get_running_loop()
        end = loop.time() + min(REROUTE_WAIT, self.ctx.stream_open_timeout)
        while loop.time() < end and not self._closed:
            await asyncio.sleep(REROUTE_POLL)
            b = self.ctx.lookup("http", self.sni)
            if b is None or b is old:
                continue
            if (getattr(b, "options", None) or {}) != (getattr(old, "options", None) or {}):
                # bound again with other options (allow/deny lists): the module chain decided
                # this request on the old ones; a 502, the client's retry is decided afresh
                return None
            self.binding = b
            try:
                res = start_stream(b, (str(self._ip), self.peer[1]), self.sni, True, self.ctx.stream_open_timeout)
                stream = (await res) if inspect.isawaitable(res) else res
            except Exception:  # noqa: BLE001 - the new route failed too: 502
                return None
            log.info(kv("stream_rerouted", client=self.peer[0], sni=self.sni, error=type(exc).__name__,
                        to_pop=getattr(b, "pop", None)))
            return stream
        return None

    def _open_failed(self, exc: BaseException) -> None:
        log.info(kv("stream_open_failed", client=self.peer[0], sni=self.sni, error=type(exc).__name__))
        self._refuse(502, ERR_UPSTREAM, "Bad gateway", f"The agent for {self.sni} could not be reached.")

    def _refuse(self, status: int, code: str, title: str, detail: str) -> None:
        """Answer from the edge and close; after requests already sent on, once their answers are done."""
        self._stop = True
        page = error_response(status, code, title, detail)
        if self._via is not None:
            end = page.index(b"\r\n\r\n") + 4
            page = (add_via(page[:end], self._via) or page[:end]) + page[end:]
        if self.stream is None and not self._opening:
            if self.client is not None and not self._closed:
                self.client.write(page)
            self.close_client()
            return
        # Earlier requests are with the agent: their answers come first.
        self._answer_when_done = page
        self.set_client_paused("refused", True)
        if self.stream is not None:
            self._close_stream()
        else:
            self._pending.append(b"")  # FIN as soon as it opens

    def from_stream(self, data: bytes) -> None:
        if self.resp is not None:
            n = len(data)
            data = self.resp.feed(data)
            self.bytes_down += n - len(data)  # count what the agent sent, not our Via
        super().from_stream(data)

    # -- stream end ---------------------------------------------------------------
    def stream_eof(self) -> None:
        self._stream_eof = True
        self._finish_from_stream(None)

    def stream_lost(self, exc: BaseException | None) -> None:
        self._stream_closed = True
        self._finish_from_stream(exc)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _finish_from_stream(self, exc: BaseException | None) -> None:
        # Called on the stream's EOF and again when it is gone: act once,
        # unless the loss (an error) comes after a clean EOF's answer.
        if self._closed or self._finished:
            return
        self._finished = True
        if self._answer_when_done is not None:
            self.client.write(self._answer_when_done)  # type: ignore[union-attr]
            self._answer_when_done = None
        elif self.bytes_down == 0 and self._requests:
            log.info(kv("upstream_no_answer", client=self.peer[0], sni=self.sni,
                        error=type(exc).__name__ if exc else "eof"))
            self.client.write(error_response(  # type: ignore[union-attr]
                502, ERR_UPSTREAM, "Bad gateway", f"The service behind {self.sni} closed without answering."))
        elif exc is not None:
            self.abort_client()  # a response was cut: tell the client, not a clean end
            return
        self.close_client()
