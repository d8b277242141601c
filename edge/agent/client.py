"""Agent session lifecycle: resolve, connect (TLS), auth, bind, heartbeat,
serve proxy streams, and reconnect with full-jitter backoff.

Owns: the agent side of docs/protocol.md 3-4. Must not touch: what the
upstream speaks (bytes are relayed as they are; relay.py).
"""
from __future__ import annotations

import asyncio
import logging
import random
import secrets
import socket
import ssl
import sys
from dataclasses import dataclass
from typing import Any, Callable

from edge import errors as E
from edge.agent.bindings import BindingTable
from edge.agent.config import AgentConfig, EndpointConfig
from edge.agent.metrics import new_counts
from edge.agent.relay import CapturingUpstreamProtocol, UpstreamProtocol, relay
from edge.tunnel import messages as M
from edge.tunnel.errors import ControlError, MessageError, SessionClosedError, TunnelError
from plumbing.addr import split_host_port
from edge.tunnel.session import Session, SessionConfig, Stream
from edge.tunnel.stream_header import read_header
from plumbing.kvlog import kv

log = logging.getLogger("edge.agent")

AGENT_VERSION = "0.1.0"
HEADER_TIMEOUT = 10.0  # seconds for the edge to send a proxy header
UPSTREAM_CONNECT_TIMEOUT = 5.0
MAX_ADDRESSES = 8  # addresses tried per connection attempt
MAX_INGRESS_TRIED = 16  # fallback ingresses tried per connection attempt


def split_addr(text: str, default_port: int) -> tuple[str, int]:
    """"ADDR:PORT", "[V6]:PORT" or "ADDR" -> (host, port); ValueError if malformed."""
    return split_host_port(text, default_port)
# control errors after which retrying cannot help: the agent exits non-zero
FATAL_CODES = {M.ERR_AUTH_FAILED, M.ERR_NAME_IN_USE, M.ERR_PORT_RANGE_EXHAUSTED, M.ERR_BAD_REQUEST, M.ERR_TOO_MANY_BINDINGS}
FATAL_TEXT = {
    M.ERR_AUTH_FAILED: "the edge refused the authtoken (check --authtoken / GSLB_AUTHTOKEN_FILE)",
    M.ERR_NAME_IN_USE: "the endpoint name is already online (another agent bound it)",
    M.ERR_PORT_RANGE_EXHAUSTED: "the edge has no free TCP port left in its range",
}


class FatalAgentError(Exception):
    """An error retrying cannot fix; the agent exits with status 1."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Forwarding:
    url: str
    endpoint: EndpointConfig

    def line(self) -> str:
        return f"forwarding {self.url} -> {self.endpoint.local_url()}"


def backoff_delay(attempt: int, initial: float, cap: float, rng: Callable[[float, float], float] = random.uniform) -> float:
    """Full jitter (AWS architecture blog, "Exponential Backoff and Jitter"):
    uniform(0, min(cap, initial * 2**attempt))."""
    return rng(0.0, min(cap, initial * (2 ** min(attempt, 30))))


class ControlChannel:
    """Requests and replies on the control stream, matched by id."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self._next_id = 0
        self._waiters: dict[int, asyncio.Future[M.Message]] = {}
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def send(self, make: Callable[[int], M.Message]) -> int:
        msg = make(self._new_id())
        self.stream.write(M.encode_message(msg))
        return msg.id

    async def request(self, make: Callable[[int], M.Message], timeout: float) -> M.Message:
        """Send; return the reply; raise ControlError for an error reply."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[M.Message] = loop.create_future()
        mid = self.send(make)
        self._waiters[mid] = fut
        try:
            reply = await asyncio.wait_for(fut, timeout)
        finally:
            self._waiters.pop(mid, None)
        if isinstance(reply, M.Error):
            raise ControlError(reply.code, reply.message)
        return reply

    async def _read_loop(self) -> None:
        reader = M.MessageReader()
        exc: BaseException = SessionClosedError("control stream closed by the edge")
        try:
            while True:
                data = await self.stream.read()
                if not data:
                    break
                for obj in reader.feed(data):
                    msg = M.parse_message(obj)
                    fut = self._waiters.get(msg.id)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
        except (TunnelError, MessageError) as e:
            exc = e
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(exc)

    def close(self) -> None:
        self._task.cancel()


class Agent:
    """One agent: a session at a time, its endpoints bound on each."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        ssl_context: ssl.SSLContext | None = None,
        out: Callable[[str], None] | None = None,
        session_config: SessionConfig | None = None,
        agent_id: str | None = None,
        inspector: Any = None,
    ) -> None:
        self.config = config
        self.ssl_context = ssl_context or make_client_ssl_context(config)
        self.out = out or (lambda line: print(line, flush=True))
        self.session_config = session_config or SessionConfig()
        self.agent_id = agent_id or secrets.token_hex(8)
        # edge/agent/inspect/server.py Inspector: captures HTTP endpoints' traffic; None: off, no cost
        self.inspector = inspector
        if inspector is not None:
            inspector.agents.append(self)
        self.session: Session | None = None
        self.forwardings: list[Forwarding] = []
        self.online = asyncio.Event()
        self.ingress: list[dict[str, Any]] = []  # from the last auth_ok: where to go if DNS fails us
        self.sessions_started = 0
        self.counts = new_counts()  # /metrics (edge/agent/metrics.py)
        self._bindings = BindingTable()  # the current session's (a new one per session)
        self._bindings.binding_done()
        self._stop = asyncio.Event()
        self._stream_tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        self._stop.set()
        if self.session is not None:
            self.session.close()

    async def run(self) -> int:
        """Connect, serve, reconnect until stop() or a fatal error.
        Returns the exit status (0 stopped, 1 fatal)."""
        attempt = 0
        while not self._stop.is_set():
            try:
                was_online = await self._session_once()
            except FatalAgentError as exc:
                print(f"gslb agent: error: {exc.message} ({exc.code})", file=sys.stderr, flush=True)
                return 1
            except (OSError, ssl.SSLError, asyncio.TimeoutError, TunnelError, ControlError) as exc:
                log.warning(kv("connect_failed", error=_describe(exc), attempt=attempt + 1))
                self.counts["connect_failures"] += 1
                was_online = False
            if self._stop.is_set():
                break
            if was_online:
                attempt = 0
            delay = backoff_delay(attempt, self.config.backoff_initial, self.config.backoff_max)
            attempt += 1
            log.warning(kv("reconnecting", delay=f"{delay:.2f}", attempt=attempt))
            self.counts["reconnects"] += 1
            try:
                await asyncio.wait_for(self._stop.wait(), delay)
            except asyncio.TimeoutError:
                pass
        return 0

    async def _connect(self) -> Session:
        """The configured server (re-resolved: DNS steers to the nearest
        healthy PoP), then, if none of its addresses answers, the ingresses
        the last edge listed in auth_ok (docs/protocol.md 3.6): a resolver may
        still hand out a PoP that just died, for up to its TTL."""
        host, port = self.config.server_address()
        try:
            return await self._connect_to(host, port)
        except (OSError, ssl.SSLError, asyncio.TimeoutError) as exc:
            if not self.ingress:
                raise
            first = exc
        for entry in self.ingress[:MAX_INGRESS_TRIED]:
            # Addresses the edge listed first (no resolver involved), then the
            # pinned name, which the DNS answers along its ranking.
            targets = []
            for a in entry.get("addresses", []):
                try:
                    targets.append(split_addr(a, port))
                except ValueError:
                    log.info(kv("bad_ingress_address", pop=entry.get("pop"), address=a))
            targets.append((entry["name"], port))
            for h, p in targets:
                try:
                    session = await self._connect_to(h, p)
                    log.warning(kv("connected_via_fallback", pop=entry.get("pop"), address=f"{h}:{p}"))
                    return session
                except (OSError, ssl.SSLError, asyncio.TimeoutError, ValueError) as exc:
                    log.info(kv("fallback_failed", pop=entry.get("pop"), address=f"{h}:{p}", error=_describe(exc)))
        raise first

    async def _connect_to(self, host: str, port: int) -> Session:
        loop = asyncio.get_running_loop()
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), self.config.connect_timeout
        )
        last: BaseException = OSError(f"{host}: no address")
        for family, type_, proto, _, addr in infos[:MAX_ADDRESSES]:
            try:
                _, session = await asyncio.wait_for(
                    loop.create_connection(
                        self._new_session,
                        host=addr[0],
                        port=addr[1],
                        family=family,
                        ssl=self.ssl_context,
                        server_hostname=self.config.server_name(),
                        ssl_handshake_timeout=self.config.connect_timeout,
                    ),
                    self.config.connect_timeout,
                )
                log.info(kv("connected", server=f"{host}:{port}", address=addr[0]))
                return session  # type: ignore[return-value]
            except (OSError, ssl.SSLError, asyncio.TimeoutError) as exc:
                last = exc
                log.info(kv("connect_attempt_failed", address=addr[0], error=_describe(exc)))
        raise last

    def _new_session(self) -> Session:
        return Session(client=True, on_stream=self._on_stream, config=self.session_config, name="edge")

    async def _session_once(self) -> bool:
        """One session from connect to loss. Returns whether it got online."""
        return await self._run_session(await self._connect())

    async def _run_session(self, session: Session) -> bool:
        """Auth, bind, heartbeat on a connected session until it is lost.
        Returns whether it got online."""
        self.session = session
        self.sessions_started += 1
        self.counts["sessions"] += 1
        # before the first bind: the edge's streams come from its first bind_ok on
        self._bindings = bindings = BindingTable()
        control = ControlChannel(session.open_stream())
        timeout = self.config.connect_timeout
        online = False
        try:
            cfg = self.config
            try:
                auth_ok = await control.request(
                    lambda i: M.Auth(i, cfg.authtoken, AGENT_VERSION, cfg.heartbeat_interval, cfg.heartbeat_timeout, self.agent_id),
                    timeout,
                )
                if isinstance(auth_ok, M.AuthOk) and auth_ok.ingress:
                    self.ingress = list(auth_ok.ingress)
                forwardings = []
                try:
                    for ep in cfg.endpoints:
                        reply = await control.request(lambda i, ep=ep: M.Bind(i, ep.kind, ep.domain or ep.name, ep.bind_options()), timeout)
                        assert isinstance(reply, M.BindOk)
                        # Serve it now, not once every bind has its reply: the
                        # edge opens streams for it from its bind_ok on.
                        bindings.add(reply.binding_id, ep)
                        forwardings.append(Forwarding(reply.url, ep))
                finally:
                    bindings.binding_done()
            except ControlError as exc:
                if exc.code in FATAL_CODES:
                    text = FATAL_TEXT.get(exc.code)
                    # bad_request has no text of its own: the edge's message says it all (once)
                    raise FatalAgentError(exc.code, f"{text}: {exc.message}" if text else exc.message) from None
                raise
            self.forwardings = forwardings
            for f in forwardings:
                self.out(f.line())
            online = True
            self.online.set()
            await self._heartbeat(session, control)
        finally:
            self.online.clear()
            control.close()
            if not session.is_closed:
                session.close()
            await session.wait_closed()
            self.session = None
            if online:
                log.warning(kv("session_lost", error=str(session.closed_exc or "closed")))
        return online

    async def _heartbeat(self, session: Session, control: ControlChannel) -> None:
        """Heartbeat every interval; no frame for heartbeat_timeout -> dead."""
        loop = asyncio.get_running_loop()
        interval, timeout = self.config.heartbeat_interval, self.config.heartbeat_timeout
        tick = min(interval, timeout) / 4
        next_beat = loop.time() + interval
        closed = loop.create_task(session.wait_closed())
        stop = loop.create_task(self._stop.wait())
        try:
            while not closed.done() and not stop.done():
                # FIRST_COMPLETED: a lost session (RST from a dead PoP) must end
                # the heartbeat at once, not at the next tick; the default
                # (ALL_COMPLETED) waited out the tick and delayed failover.
                await asyncio.wait({closed, stop}, timeout=tick, return_when=asyncio.FIRST_COMPLETED)
                now = loop.time()
                if now - session.last_received > timeout:
                    log.warning(kv("heartbeat_timeout", idle=f"{now - session.last_received:.1f}"))
                    session.abort()
                    await closed
                    return
                if now >= next_beat and not session.is_closed:
                    control.send(M.Heartbeat)
                    next_beat = now + interval
        finally:
            closed.cancel()
            stop.cancel()

    # ------------------------------------------------------------ proxying

    def _on_stream(self, stream: Stream) -> None:
        # the table of the session this stream belongs to (the one running now)
        task = asyncio.get_running_loop().create_task(self._serve_stream(stream, self._bindings))
        self._stream_tasks.add(task)
        task.add_done_callback(self._stream_tasks.discard)

    async def _serve_stream(self, stream: Stream, bindings: BindingTable) -> None:
        self.counts["streams"] += 1
        try:
            header_obj, rest = await read_header(stream, HEADER_TIMEOUT)
            if header_obj is None:
                stream.abort()
                return
            header = M.ProxyHeader.from_dict(header_obj)
        except (MessageError, asyncio.TimeoutError, TunnelError) as exc:
            log.warning(kv("bad_proxy_header", stream=stream.stream_id, error=_describe(exc)))
            stream.abort()
            return
        # A stream can be read before its binding's bind_ok has been handled
        # (both in one read): wait for the binds in flight, bounded.
        ep = await bindings.lookup(header.binding_id, self.config.connect_timeout)
        if ep is None:
            log.warning(kv("unknown_binding", stream=stream.stream_id, binding=header.binding_id))
            stream.abort()
            return
        stream.extra["header"] = header
        stream.extra["peername"] = (header.client_addr, header.client_port)
        loop = asyncio.get_running_loop()
        capture = None
        if self.inspector is not None and ep.kind == "http":
            capture = self.inspector.new_capture(ep, header.client_addr)
        factory: Callable[[], UpstreamProtocol] = (
            (lambda: UpstreamProtocol(stream)) if capture is None else (lambda: CapturingUpstreamProtocol(stream, capture))
        )
        try:
            async with asyncio.timeout(UPSTREAM_CONNECT_TIMEOUT):
                upstream, proto = await open_upstream(loop, factory, ep.host, ep.port)
        except (OSError, asyncio.TimeoutError) as exc:
            log.warning(kv("upstream_unreachable", endpoint=header.endpoint, upstream=f"{ep.host}:{ep.port}",
                           client=header.client_addr, error=_describe(exc)))
            self.counts["upstream_errors"] += 1
            if ep.kind == "http" and not stream.is_closing():
                answer = _bad_gateway(header.endpoint, ep)
                stream.write(answer)
                stream.close()
                if capture is not None:  # shown as the 502 the client got
                    capture.feed_request(rest)
                    capture.feed_response(answer)
                    capture.close()
            else:
                stream.abort()
            return
        if log.isEnabledFor(logging.DEBUG):  # kv() formats: not once per stream for nothing
            log.debug(kv("stream_open", endpoint=header.endpoint, client=f"{header.client_addr}:{header.client_port}"))
        relay(stream, upstream, proto, rest, capture)  # type: ignore[arg-type]


async def open_upstream(loop: asyncio.AbstractEventLoop, factory: Callable[[], asyncio.Protocol],
                        host: str, port: int) -> tuple[asyncio.Transport, asyncio.Protocol]:
    """A TCP connection to the local service. For an address literal (the
    usual 127.0.0.1) the socket is connected directly and handed to the loop:
    create_connection's resolution, address loop and error collection cost
    the agent CPU on every stream (Connection: close opens one per request).
    A name goes through create_connection (it resolves, tries each address)."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        socket.inet_pton(family, host)
    except OSError:
        return await loop.create_connection(factory, host, port)  # type: ignore[return-value]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, (host, port))
        return await loop.create_connection(factory, sock=sock)  # type: ignore[return-value]
    except BaseException:
        sock.close()
        raise


def _bad_gateway(endpoint: str, ep: EndpointConfig) -> bytes:
    body = (
        f"502 Bad Gateway\n\nThe agent for {endpoint} could not reach its upstream "
        f"{ep.host}:{ep.port} ({E.AGENT_UPSTREAM.code}).\n"
    ).encode()
    head = (
        "HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode()
    return head + body


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def make_client_ssl_context(config: AgentConfig) -> ssl.SSLContext:
    """Verify the edge: --ca when given, else the system's CAs."""
    ctx = ssl.create_default_context(cafile=str(config.ca) if config.ca else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
