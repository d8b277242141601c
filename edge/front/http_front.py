"""The HTTPS endpoint front: TLS terminated, HTTP/1.1 relayed to a tunnel stream.

Owns: one client connection's requests: route (by SNI) to the `Endpoint`
(edge/endpoint.py, local or at another PoP alike), ask the module chain
(edge/modules/README.md: its answers, header edits upstream and effects,
and the outcome of each request for modules that observe), open one tunnel
stream for the connection (keep-alive requests share it; the agent keeps
one upstream connection per stream), rewrite request heads
(`http1.RequestRewriter`) and stream bodies, relay responses back byte for
byte, answer offline (404 ERR_GSLB_3200), denied (403) and broken
(400/431/502) requests itself.
Must not touch: TLS (done by the transport) or the tunnel's framing.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import deque
from typing import Any, Callable, Protocol

from edge import errors as E
from edge.abuse import AbuseTracker, MinRate
from edge.abuse import Conn as AbuseConn
from edge.endpoint import Endpoint, open_stream_within
from edge.front.http1 import BodyData, HttpError, RequestEnd, RequestHead, RequestRewriter, error_response, host_name
from edge.front.relay import ClientSide, log
from edge.front.response import ResponseRewriter, add_via
from edge.metrics import DISCARD
from edge.modules import Chain, Decision, EffectResult, HttpCall, Outcome, Subject, Verdict
from edge.modules.base import ALLOW, Compute, ReadBody
from edge.modules import base as modbase
from plumbing.kvlog import kv

# A stream the agent's PoP could not open (its edge died, the peer link broke)
# carried nothing of the request to the agent: the request waits up to this
# long for the endpoint to be bound elsewhere (the agent reconnects to another
# PoP within about half a second) and goes there instead of getting a 502.
REROUTE_WAIT = 2.0      # seconds (at most stream_open)
REROUTE_POLL = 0.05     # seconds between two lookups while waiting
# Compute effects (a KDF, xmlsec1) queued or running in the thread pool, per process: beyond
# MAX_COMPUTE a new one fails at once ("busy"), so a flood of wrong passwords or forged
# assertions costs a bounded queue, not an unbounded one (a timed-out job still runs to its end).
MAX_COMPUTE = 64
_compute = [0]


class FrontContext(Protocol):
    """What a front needs from the server that made it."""

    chain: Chain
    https_port: int
    max_header_bytes: int
    stream_open_timeout: float
    idle_timeout: float
    via: str | None  # received-by of this PoP for Via (RFC 9110 7.6.3), e.g. "eu.lab.test"; None: no Via
    header_timeout: float | None  # seconds a request head may take (slowloris); None: no limit
    stats: Any  # the server's counters: .requests += 1 per request head (edge.server.Stats)
    abuse: AbuseTracker | None    # the abuse layer (edge/abuse/), None: off
    max_header_count: int         # header fields in one request head
    min_header_rate: float        # bytes/s a head must average after rate_grace; 0: off
    min_body_rate: float          # bytes/s a body must average after rate_grace; 0: off
    rate_grace: float             # seconds

    def lookup(self, kind: str, name: str) -> Endpoint | None: ...

    async def perform(self, effect: HttpCall) -> EffectResult: ...  # a module's effect (PERFORM)


def edit_head(head: bytes, add: tuple[tuple[str, str], ...], strip: tuple[str, ...]) -> bytes:
    """A request head with the fields named in `strip` removed (any case),
    then `add` appended: a module strips what a client must not send (its
    own identity headers) before it adds the real ones."""
    lines = head[:-4].split(b"\r\n")
    gone = {n.lower().encode("latin-1") for n in strip}
    kept = [lines[0]] + [ln for ln in lines[1:] if ln.partition(b":")[0].lower() not in gone]
    kept += [f"{n}: {v}".encode("latin-1") for n, v in add]
    return b"\r\n".join(kept) + b"\r\n\r\n"


# A client's address as an ip object and its text (ipaddress parses and formats in Python:
# several us a connection); clients come back, so the pair is kept, up to a bound.
_IPS: dict[str, tuple[Any, str]] = {}
_MAX_IPS = 4096


def _client_ip(addr: str) -> tuple[Any, str]:
    got = _IPS.get(addr)
    if got is None:
        if len(_IPS) >= _MAX_IPS:
            _IPS.clear()
        ip = modbase.client_ip(addr)
        got = _IPS[addr] = (ip, str(ip))
    return got


class _Exchange:
    """A request the chain let through, until its response ends."""

    __slots__ = ("subject", "up0", "down0", "status")

    def __init__(self, subject: Subject, up0: int, down0: int) -> None:
        self.subject = subject
        self.up0 = up0
        self.down0 = down0
        self.status = 0


class HttpFront(ClientSide):
    def __init__(self, ctx: FrontContext, sni: str,
                 on_closed: Callable[[BaseException | None], None] | None = None,
                 abuse: AbuseConn | None = None) -> None:
        super().__init__()
        self.ctx = ctx
        # The abuse layer (edge/abuse/README.md): this connection's accounting, fed per request.
        self._abuse = abuse if ctx.abuse is not None else None
        self._head_rate = MinRate(ctx.min_header_rate, ctx.rate_grace)   # slowloris: heads trickled in
        self._body_rate = MinRate(ctx.min_body_rate, ctx.rate_grace)     # and bodies
        self.bytes_in = 0                                                # from the client, all told
        self._on_closed = on_closed  # fn(exc) once the client connection is gone
        self.sni = sni
        self.idle_timeout = ctx.idle_timeout
        self.rw: RequestRewriter | None = None
        self.endpoint: Endpoint | None = None
        self._opening = False
        self._answer_when_done: bytes | None = None   # page to send once the stream ends
        self._stop = False                            # no more client bytes are forwarded
        self._requests = 0
        self._ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
        self._ip_text = ""
        self._open_task: asyncio.Task[None] | None = None  # held: the loop keeps tasks weakly
        self._finished = False
        self._log_requests = log.isEnabledFor(logging.INFO)  # `gslb edge -v`; checked once a connection
        self._header_timeout: float | None = ctx.header_timeout
        self._header_timer: asyncio.TimerHandle | None = None
        self._head_deadline: float | None = None  # when the head under way must be in; None: no head under way
        self._host_ok = ""                        # a Host value already found to name the SNI
        self._idle_chain = False                  # the module chain has nothing to do for this endpoint
        via = ctx.via
        self._via = f"1.1 {via}".encode("ascii") if via else None
        self._observing = ctx.chain.observes  # some module learns from outcomes
        self._metrics = getattr(ctx, "metrics", None) or DISCARD  # edge/metrics.py
        self._sent_at: deque[float] = deque()         # when each request let through went on (metrics)
        self._inflight: deque[_Exchange] = deque()    # requests let through, awaiting their response head
        self._answering: _Exchange | None = None      # the one whose response is coming
        self._effect_task: asyncio.Task[None] | None = None  # a module's effect (PERFORM) running
        self._held: list[Any] = []                    # request events waiting for it
        self._body_wait: tuple[Subject, Decision] | None = None  # a ReadBody effect: the body is being read
        self.resp: ResponseRewriter | None = (
            ResponseRewriter(f"1.1 {via}", on_final=self._response_head) if via else None)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._ip, self._ip_text = _client_ip(self.peer[0]) if self.peer[0] else (None, self.peer[0])
        self.rw = RequestRewriter(
            self._ip_text, forwarded_port=self.ctx.https_port,
            proto="https", max_header_bytes=self.ctx.max_header_bytes,
            max_header_count=self.ctx.max_header_count,
        )
        # The first request head must come within the header timeout of the
        # handshake's end: a client that opens TLS and sends nothing, or a
        # head a byte at a time (slowloris), must not hold a connection for
        # the whole idle timeout.
        self._arm_header_timer()

    # -- header timeout (slowloris) -------------------------------------------
    # A keep-alive connection starts a head after every request: one timer handle made
    # and cancelled per request was ~4 % of the edge's CPU (py-spy, 100 B). The deadline
    # is a float set and cleared per request instead; the one handle, when it fires,
    # finds no head under way, or a later deadline (it waits on), or the timeout.
    def _arm_header_timer(self) -> None:
        if self._header_timeout is not None and self._head_deadline is None and not self._closed:
            loop = self._loop
            self._head_deadline = loop.time() + self._header_timeout
            if self._header_timer is None:
                self._header_timer = loop.call_at(self._head_deadline, self._header_expired)

    def _cancel_header_timer(self) -> None:
        self._head_deadline = None

    def _drop_header_timer(self) -> None:
        self._head_deadline = None
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_expired(self) -> None:
        self._header_timer = None
        deadline = self._head_deadline
        if deadline is None or self._closed or self._stop:
            return
        loop = self._loop
        if loop.time() < deadline - 0.001:  # a head begun after the one this handle was made for
            self._header_timer = loop.call_at(deadline, self._header_expired)
            return
        self._head_deadline = None
        log.info(kv("header_timeout", client=self.peer[0], sni=self.sni, seconds=self._header_timeout))
        # RFC 9110 15.5.9: 408, the server closes the connection. For the abuse layer:
        # nothing at all on a new connection is one held idle, a head begun and not ended a slow one.
        idle = self._requests == 0 and self.bytes_in == 0
        self._refuse(E.REQUEST_TIMEOUT.status, E.REQUEST_TIMEOUT.code, "Request timeout",
                     f"The request head did not arrive within {self._header_timeout:g} s.",
                     abuse_kind="idle" if idle else "header_timeout")

    def _too_slow(self, what: str, rate: MinRate) -> None:
        """A head or body averaged less than its minimum rate (edge/abuse/rate.py): 408, closed."""
        log.info(kv(f"slow_{what}", client=self.peer[0], sni=self.sni, bytes=rate.n, min_rate=rate.min_rate))
        self._refuse(E.REQUEST_TIMEOUT.status, E.REQUEST_TIMEOUT.code, "Request timeout",
                     f"The request {what} arrived slower than {rate.min_rate:g} bytes/s.",
                     abuse_kind=f"slow_{what}")

    def set_client_paused(self, reason: str, paused: bool) -> None:
        super().set_client_paused(reason, paused)
        if not paused and not self._pause_reasons and self._body_rate.running:
            # the edge itself stopped reading (stream opening, backpressure): not the client's time
            self._body_rate.start(self._loop.time())

    # -- client bytes ---------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._stop:
            return
        self.bytes_in += len(data)
        if self._body_rate.running or (self._head_rate.min_rate and self.rw.in_head):  # type: ignore[union-attr]
            now = self._loop.time()
            if self._body_rate.running:
                if not self._body_rate.feed(len(data), now):
                    self._too_slow("body", self._body_rate)
                    return
            else:
                if not self._head_rate.running:
                    self._head_rate.start(now)
                if not self._head_rate.feed(len(data), now):
                    self._too_slow("header", self._head_rate)
                    return
        try:
            events = self.rw.feed(data)  # type: ignore[union-attr]
        except HttpError as exc:
            self._refuse(exc.status, exc.code, "Bad request", exc.message, abuse_kind="malformed")
            return
        if self._effect_task is not None or self._body_wait is not None:
            self._held.extend(events)  # a module's effect runs: what follows keeps its place
            if self._body_wait is not None:
                self._body_check()
            return
        self._forward(events)

    def _forward(self, events: list[Any], decided: tuple[Subject, Decision] | None = None) -> None:
        out: list[bytes] = []
        for i, ev in enumerate(events):
            if type(ev) is RequestHead:
                if decided is None:
                    self._requests += 1
                    self.ctx.stats.requests += 1  # the edge's counter in /healthz (a rate: `gslb lab top`)
                    self._head_rate.stop()
                    if self._abuse is not None or self._body_rate.min_rate:
                        now = self._loop.time()
                        if self._abuse is not None and not self._blocked_check(out, now):
                            break
                        if self._body_rate.min_rate:
                            self._body_rate.start(now)
                head = self._admit(ev, out, decided)
                decided = None
                if head is None:  # waiting for an effect: this head and the rest wait too
                    self._held = list(events[i:])
                    if self._body_wait is not None:
                        self._body_check()
                    break
                if head is False:
                    break
                if self.resp is not None:
                    self.resp.expect(ev.method)
                out.append(head)
                continue
            if type(ev) is not BodyData:
                self._body_rate.stop()  # RequestEnd, Upgraded
            out.append(ev.data)
        if out and not self._stop:
            self.send_to_stream(b"".join(out))
        # A head under way (the first one, or the next keep-alive request's
        # first bytes) runs the header timer; a complete head stops it.
        if self.rw.in_head and not self._stop:  # type: ignore[union-attr]
            self._arm_header_timer()
        else:
            self._cancel_header_timer()

    def _blocked_check(self, out: list[bytes], now: float) -> bool:
        """Count a request with the abuse layer; False when its source is blocked:
        then 429 ERR_GSLB_3430 with Retry-After, and the connection closes."""
        tracker = self.ctx.abuse
        if tracker.request(self._abuse, self.sni, now):  # type: ignore[union-attr,arg-type]
            return True
        if out:  # earlier requests of this read go on; their answers come first
            self.send_to_stream(b"".join(out))
            out.clear()
        block = tracker.is_blocked(self.peer[0], now)  # type: ignore[union-attr]
        retry = max(1, int((block.until - now) + 0.999)) if block is not None else 1
        log.info(kv("request_blocked", client=self.peer[0], sni=self.sni, code=E.ABUSE_BLOCKED.code,
                    retry_after=retry))
        page = error_response(E.ABUSE_BLOCKED.status, E.ABUSE_BLOCKED.code, "Too many requests",
                              f"Requests from your network are blocked for {retry} s (abuse protection).")
        self._answer(page.replace(b"\r\n", b"\r\nRetry-After: %d\r\n" % retry, 1))
        return False

    def _admit(self, head: RequestHead, out: list[bytes],
               decided: tuple[Subject, Decision] | None = None) -> bytes | bool | None:
        """Route and decide a request: the head to forward, False when the
        edge answers it itself, None while a module's effect runs."""
        if head.host and head.host != self._host_ok and host_name(head.host) != self.sni:
            # RFC 9110 7.4 / 15.5.20: this connection's certificate and route are
            # for the SNI name; a request for another host is misdirected.
            log.info(kv("misdirected_request", client=self.peer[0], sni=self.sni, host=head.host))
            if out:
                self.send_to_stream(b"".join(out))
                out.clear()
            self._refuse(E.MISDIRECTED.status, E.MISDIRECTED.code, "Misdirected request",
                         f"This connection is for {self.sni}, not {host_name(head.host)}.")
            return False
        self._host_ok = head.host  # the connection's clients send the same Host: compared once
        if self.endpoint is None:
            self.endpoint = self.ctx.lookup("http", self.sni)
            if self.endpoint is None:
                log.info(kv("endpoint_offline", client=self.peer[0], sni=self.sni, code=E.OFFLINE.code))
                # Not the client's fault: a client that polls an endpoint while its agent
                # reconnects must not be blocked by the abuse layer for it.
                self._refuse(E.OFFLINE.status, E.OFFLINE.code, "Endpoint offline",
                             f"The endpoint {self.sni} is offline: no agent serves it right now.", abuse_kind=None)
                return False
            # The options are the binding's: a reroute keeps them (_reroute), so this holds
            # for the connection. No module to ask: no Subject, no clock, no observing.
            self._idle_chain = self.ctx.chain.idle(self.endpoint.options)
        data = head.data
        if self._idle_chain:
            self._metrics.decided(ALLOW)  # what the chain answers when every module passes
        elif self.ctx.chain.modules:
            if decided is not None:
                subject, decision = decided
            else:
                subject = Subject(
                    client_ip=self._ip, client_port=self.peer[1], kind="http", endpoint=self.sni,  # type: ignore[arg-type]
                    options=self.endpoint.options, now=self._loop.time(), wall=time.time(),
                    request=modbase.RequestHead(head.method, head.target, head.host, data),
                )
                decision = self.ctx.chain.decide(subject)
            self._metrics.decided(decision)
            if decision.verdict is Verdict.PERFORM:
                if out:  # earlier requests of this read go on
                    self.send_to_stream(b"".join(out))
                    out.clear()
                self._perform(subject, decision)
                return None
            if decision.verdict is Verdict.ANSWER:
                if out:  # earlier requests of this read go on; their answers come first
                    self.send_to_stream(b"".join(out))
                    out.clear()
                if decision.response is not None:
                    log.info(kv("request_answered", client=self.peer[0], sni=self.sni, module=decision.module,
                                status=decision.response.status, reason=decision.reason))
                    self._answer(decision.response.encode())
                    return False
                log.info(kv("request_refused", client=self.peer[0], sni=self.sni, module=decision.module,
                            status=decision.status, reason=decision.reason))
                status = decision.status or E.FORBIDDEN.status
                self._refuse(status, decision.code or E.FORBIDDEN.code, "Forbidden" if status == 403 else
                             "Bad gateway" if status == 502 else "Refused",
                             f"Access to {self.sni} is not allowed: {decision.reason}.")
                return False
            if decision.add_upstream or decision.strip_upstream:
                data = edit_head(data, decision.add_upstream, decision.strip_upstream)
            if self._observing:
                self._inflight.append(_Exchange(subject, self.bytes_up, self.bytes_down))
        if self._log_requests:
            log.info(kv("request", client=self.peer[0], sni=self.sni, method=head.method, target=head.target[:200]))
        if self.stream is None and not self._opening:
            self._start_stream()
        if self.resp is not None:  # its response head is seen (and timed) there
            self._sent_at.append(self._loop.time())
        return data

    def _perform(self, subject: Subject, decision: Decision) -> None:
        """Run a module's effect (docs: edge/modules/README.md); the client is
        not read meanwhile and later requests wait their turn. A ReadBody
        effect reads on instead, until the request's body is in."""
        if isinstance(decision.effect, ReadBody):
            self._body_wait = (subject, decision)  # _forward/_body_check go on once the events are held
            return
        self.set_client_paused("effect", True)
        self._effect_task = self._loop.create_task(self._run_effect(subject, decision))

    def _body_check(self) -> None:
        """With a ReadBody effect pending: once the held request's body is in
        (or past the limit), resume the chain with it. `_held[0]` is the head."""
        subject, decision = self._body_wait  # type: ignore[misc]
        limit = decision.effect.limit  # type: ignore[union-attr]
        chunked = "chunked" in (subject.request.header("transfer-encoding") or "").lower()  # type: ignore[union-attr]
        parts: list[bytes] = []
        size = 0
        complete = False
        for ev in self._held[1:]:
            if type(ev) is BodyData:
                data = ev.data
                if chunked:  # re-framed by the rewriter as "<hex>\r\n<data>\r\n"
                    data = data[data.index(b"\r\n") + 2:-2]
                parts.append(data)
                size += len(data)
                if size > limit:
                    break
            elif type(ev) is RequestEnd:
                complete = True
                break
        if size > limit:
            result = EffectResult(error="body_too_large")
        elif complete:
            result = EffectResult(200, body=b"".join(parts))
        else:
            return  # more to come (the idle timeout bounds a client that stops sending)
        self._body_wait = None
        self._resume(subject, decision, result)

    async def _run_effect(self, subject: Subject, decision: Decision) -> None:
        effect = decision.effect
        try:
            if isinstance(effect, Compute):
                # CPU-heavy or blocking work (a KDF, xmlsec1) in the loop's thread pool; on timeout the
                # thread finishes on its own (fn is bounded by the module: sizes, costs, a subprocess timeout)
                loop = self._loop
                if _compute[0] >= MAX_COMPUTE:
                    result = EffectResult(error="busy")
                else:
                    _compute[0] += 1
                    job = loop.run_in_executor(None, effect.fn)
                    job.add_done_callback(lambda _: _compute.__setitem__(0, _compute[0] - 1))
                    try:
                        value = await asyncio.wait_for(asyncio.shield(job), effect.timeout)
                        result = EffectResult(value=value)
                    except asyncio.TimeoutError:
                        result = EffectResult(error="timeout")
            else:
                result = await self.ctx.perform(effect)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - the module decides what a failed effect means
            result = EffectResult(error=type(exc).__name__)
        if self._closed:
            return
        self._effect_task = None
        self._resume(subject, decision, result)

    def _resume(self, subject: Subject, decision: Decision, result: EffectResult) -> None:
        try:
            after = self.ctx.chain.resume(subject, decision, result)
        except Exception:  # noqa: BLE001 - a module's bug: answer, do not hang the client
            log.exception(kv("module_failed", client=self.peer[0], sni=self.sni, module=decision.module))
            self._refuse(E.BAD_GATEWAY.status, E.BAD_GATEWAY.code, "Bad gateway",
                         f"The edge could not decide on a request for {self.sni}.")
            return
        held, self._held = self._held, []
        self.set_client_paused("effect", False)
        self._forward(held, (subject, after))

    def _start_stream(self) -> None:
        """Open the connection's stream; requests read meanwhile wait in order."""
        self._opening = True
        self.set_client_paused("opening", True)
        self._open_task = self._loop.create_task(self._open(self.endpoint))  # type: ignore[arg-type]

    async def _open(self, endpoint: Endpoint) -> None:
        try:
            stream = await open_stream_within(endpoint, (self._ip_text, self.peer[1]), self.sni, True,
                                              self.ctx.stream_open_timeout)
        except Exception as exc:  # noqa: BLE001 - the agent went away, the tunnel or the peer link failed
            stream = await self._reroute(exc)
            if stream is None:
                self._opening = False
                self._pending.clear()
                self._open_failed(exc)
                return
        self._opening = False
        if self._closed:
            stream.abort()
            return
        self.attach_stream(stream)

    async def _reroute(self, exc: BaseException) -> Any:
        """After a failed open: the stream to the endpoint's new binding, or None (then 502)."""
        old = self.endpoint
        loop = self._loop
        end = loop.time() + min(REROUTE_WAIT, self.ctx.stream_open_timeout)
        while loop.time() < end and not self._closed:
            await asyncio.sleep(REROUTE_POLL)
            ep = self.ctx.lookup("http", self.sni)
            if ep is None or ep is old:
                continue
            if dict(ep.options) != dict(old.options if old is not None else {}):
                # bound again with other options (allow/deny lists): the module chain decided
                # this request on the old ones; a 502, the client's retry is decided afresh
                return None
            self.endpoint = ep
            try:
                stream = await open_stream_within(ep, (self._ip_text, self.peer[1]), self.sni, True,
                                                  self.ctx.stream_open_timeout)
            except Exception:  # noqa: BLE001 - the new route failed too: 502
                return None
            log.info(kv("stream_rerouted", client=self.peer[0], sni=self.sni, error=type(exc).__name__,
                        to_pop=ep.pop))
            return stream
        return None

    def _open_failed(self, exc: BaseException) -> None:
        log.info(kv("stream_open_failed", client=self.peer[0], sni=self.sni, error=type(exc).__name__))
        if self._observing:
            # The requests waiting for the stream get the edge's 502: an upstream
            # failure for the modules (a circuit breaker), not the client's close.
            for ex in self._inflight:
                ex.status = E.BAD_GATEWAY.status
            self._observe_rest("stream_open_failed")
        self._refuse(E.BAD_GATEWAY.status, E.BAD_GATEWAY.code, "Bad gateway",
                     f"The agent for {self.sni} could not be reached.")

    def _refuse(self, status: int, code: str, title: str, detail: str, abuse_kind: str | None = "edge_4xx") -> None:
        """Answer with the edge's error page and close (see `_answer`); a 4xx
        counts for the abuse layer as `abuse_kind` (edge/abuse/tracker.py),
        unless that is None (the endpoint is offline: the client did nothing wrong)."""
        if self._abuse is not None and abuse_kind is not None and 400 <= status < 500:
            self.ctx.abuse.error(self._abuse, abuse_kind, self._loop.time())  # type: ignore[union-attr]
        self._answer(error_response(status, code, title, detail))

    def _answer(self, page: bytes) -> None:
        """Answer from the edge and close; after requests already sent on, once their answers are done."""
        self._stop = True
        self._metrics.page_status(self.sni, page)
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

    def on_closed(self, exc: BaseException | None) -> None:
        if self._abuse is not None:
            self.ctx.abuse.closed(self._abuse, self._loop.time(),  # type: ignore[union-attr]
                                  nbytes=self.bytes_in + self.bytes_down)
        if self._effect_task is not None:
            self._effect_task.cancel()
        self._observe_rest("client_closed")
        self._metrics.transferred("https", self.bytes_up, self.bytes_down)
        if self._on_closed is not None:
            self._on_closed(exc)

    # -- outcomes for the module chain (observe) --------------------------------------
    def _response_head(self, status: int) -> None:
        """ResponseRewriter saw a final response head: the previous response is
        complete (HTTP/1.1 answers in order), this one belongs to the oldest
        request still waiting. Bytes are counted per read of the stream."""
        if self._sent_at:
            self._metrics.response(self.sni, status, self._loop.time() - self._sent_at.popleft())
        if self._answering is not None:
            self._observe(self._answering, "")
            self._answering = None
        if self._inflight:
            ex = self._inflight.popleft()
            ex.status, ex.down0 = status, self.bytes_down
            self._answering = ex

    def _observe(self, ex: "_Exchange", error: str) -> None:
        now = self._loop.time()
        self.ctx.chain.observe(ex.subject, Outcome(ex.status, self.bytes_up - ex.up0, self.bytes_down - ex.down0,
                                                   now - ex.subject.now, error))

    def _observe_rest(self, error: str) -> None:
        """The stream or the client is gone: what is still open ends now."""
        if self._answering is not None:
            self._observe(self._answering, error)
            self._answering = None
        while self._inflight:
            self._observe(self._inflight.popleft(), error or "no_response")

    # -- stream end ---------------------------------------------------------------
    def stream_eof(self) -> None:
        self._stream_eof = True
        self._finish_from_stream(None)

    def stream_lost(self, exc: BaseException | None) -> None:
        self._stream_closed = True
        self._finish_from_stream(exc)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._drop_header_timer()
        super().connection_lost(exc)

    def _finish_from_stream(self, exc: BaseException | None) -> None:
        # Called on the stream's EOF and again when it is gone: act once,
        # unless the loss (an error) comes after a clean EOF's answer.
        if self._closed or self._finished:
            return
        self._finished = True
        if self._observing:
            self._observe_rest(type(exc).__name__ if exc else "")
        if self._answer_when_done is not None:
            self.client.write(self._answer_when_done)  # type: ignore[union-attr]
            self._answer_when_done = None
        elif self.bytes_down == 0 and self._requests:
            log.info(kv("upstream_no_answer", client=self.peer[0], sni=self.sni,
                        error=type(exc).__name__ if exc else "eof"))
            self._metrics.request(self.sni, E.BAD_GATEWAY.status, "edge")
            self.client.write(error_response(  # type: ignore[union-attr]
                E.BAD_GATEWAY.status, E.BAD_GATEWAY.code, "Bad gateway",
                f"The service behind {self.sni} closed without answering."))
        elif exc is not None:
            self.abort_client()  # a response was cut: tell the client, not a clean end
            return
        self.close_client()
