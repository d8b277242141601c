"""Peer links: the asyncio shell that carries client connections between PoPs.

Owns: this edge's peer listener(s), one yamux session per peer PoP (opened on
demand, kept open and reused, pinged while idle, opened again after a loss),
mutual TLS with the lab CA (each edge holds a certificate for
<pop>.peer.<zone> with serverAuth and clientAuth; both sides verify), and the
serving side: a stream from a peer -> the local endpoint's agent -> splice.
Must not touch: the registry (the hub decides where an endpoint lives) or
HTTP (the front rewrites; the link carries bytes).

    links = PeerLinks(cfg, ca, cert_dir, local_lookup=hub.local_lookup)
    await links.start()
    stream = await links.open_stream("eu", PeerHeader(...))   # X side
"""
from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path
from typing import Any, Callable

from edge.certs import CertAuthority, _write_private, _write_public
from edge.config import EdgeConfig
from edge.peer.header import PeerHeader
from edge.tunnel.errors import MessageError, SessionClosedError, TunnelError
from edge.tunnel.session import Session, SessionConfig, Stream
from edge.tunnel.session_protocol import SessionProtocol
from edge.tunnel.stream_header import read_header
from plumbing.kvlog import kv
from plumbing.listen import listen_socket

log = logging.getLogger("edge.peer")

HEADER_TIMEOUT = 10.0  # s: a peer must send its stream header by then


class PeerUnavailable(Exception):
    """No link to that PoP (no address configured, or connecting failed)."""


class _Splice:
    """Receiver on one stream that writes into another, with backpressure:
    when the destination's buffer fills (pause_writing on *its* receiver),
    the source stops reading, so the peer's window stops the sender. No
    buffer of our own."""

    __slots__ = ("dst",)

    def __init__(self, dst: Stream) -> None:
        self.dst = dst

    def connection_made(self, stream: Any) -> None:
        pass

    def data_received(self, data: bytes) -> None:
        if not self.dst.is_closing():
            self.dst.write(data)

    def eof_received(self) -> None:
        self.dst.close()  # half-close passes on as FIN

    def connection_lost(self, exc: BaseException | None) -> None:
        if exc is not None:
            self.dst.abort()  # a reset passes on as a reset
        else:
            self.dst.close()

    def pause_writing(self) -> None:
        # our stream (src of the other splice) is full: stop reading the other end
        self.dst.pause_reading()

    def resume_writing(self) -> None:
        self.dst.resume_reading()


def splice(a: Stream, b: Stream, first_to_b: bytes = b"") -> None:
    """Relay a <-> b both ways until both ends are done."""
    a.set_protocol(_Splice(b))
    b.set_protocol(_Splice(a))
    if first_to_b:
        b.write(first_to_b)  # after set_protocol: a full buffer must pause `a`


class _Link:
    """One peer session and the PoP at its other end (None until an
    accepted link has shown its certificate)."""

    __slots__ = ("pop", "session")

    def __init__(self, pop: str | None) -> None:
        self.pop = pop
        self.session: Session = None  # type: ignore[assignment]  # PeerLinks._link sets it


def peer_pop(cert: dict[str, Any] | None, zone: str) -> str | None:
    """The PoP id in a verified peer certificate (<pop>.peer.<zone>), else None."""
    suffix = f".peer.{zone}"
    for typ, name in (cert or {}).get("subjectAltName", ()):
        if typ == "DNS" and name.endswith(suffix) and "." not in name[: -len(suffix)]:
            return name[: -len(suffix)]
    return None


class PeerLinks:
    def __init__(self, cfg: EdgeConfig, ca: CertAuthority, cert_dir: str | Path,
                 local_lookup: Callable[[str, str], Any], session_config: SessionConfig | None = None) -> None:
        self.cfg = cfg
        self.pop = cfg.pop
        self.local_lookup = local_lookup
        self.session_config = session_config or SessionConfig()
        cert, key = self._ensure_cert(ca, Path(cert_dir))
        self.server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        for ctx in (self.server_ctx, self.client_ctx):
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
            ctx.load_cert_chain(cert, key)
            # The lab CA itself, not its file: in the lab ca.pem also carries pebble's
            # root for clients (docs/acme.md), and peer links trust only the lab CA.
            ctx.load_verify_locations(cadata=ca.cert_pem.decode())
            ctx.verify_mode = ssl.CERT_REQUIRED
        self.client_ctx.check_hostname = True
        self.sessions: dict[str, Session] = {}
        self._connecting: dict[str, asyncio.Future[Session]] = {}
        self._servers: list[asyncio.base_events.Server] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self.bound: list[tuple[str, int]] = []
        self.streams_served = 0

    def _ensure_cert(self, ca: CertAuthority, cert_dir: Path) -> tuple[Path, Path]:
        # Its own files (not CertStore's): this one also carries clientAuth.
        cert_dir.mkdir(parents=True, exist_ok=True)
        name = self.cfg.peer_name
        cert, key = cert_dir / f"peer-{name}.pem", cert_dir / f"peer-{name}.key"
        issued = ca.issue([name], client_auth=True)   # fresh each start: cheap, never stale
        _write_private(key, issued.key_pem)
        _write_public(cert, issued.cert_pem)
        return cert, key

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for host, port in self.cfg.peer_listen:
            srv = await loop.create_server(self._accept, sock=listen_socket(host, port), ssl=self.server_ctx,
                                           ssl_handshake_timeout=self.cfg.peer.connect_timeout)
            self._servers.append(srv)
            self.bound.append(srv.sockets[0].getsockname()[:2])
        if self.bound:
            log.info(kv("peer_listening", pop=self.pop, listen=",".join(f"{h}:{p}" for h, p in self.bound)))

    async def close(self) -> None:
        for srv in self._servers:
            srv.close()
        for s in list(self.sessions.values()):
            s.close()
        for t in list(self._tasks):
            t.cancel()
        self._servers.clear()

    def _spawn(self, coro: Any) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------ sessions
    def _link(self, pop: str | None) -> _Link:
        """A new link and its session: to `pop` (this edge connects), or
        accepted (pop None until `_accepted` reads the peer's certificate)."""
        link = _Link(pop)
        link.session = Session(client=pop is not None, config=self.session_config, name=f"peer-{pop or '?'}",
                               on_stream=lambda st: self._on_stream(link, st),
                               on_lost=lambda s, exc: self._lost(link, exc))
        return link

    def _accept(self) -> SessionProtocol:
        link = self._link(None)
        return SessionProtocol(link.session, on_made=lambda transport: self._accepted(link, transport))

    def _accepted(self, link: _Link, transport: asyncio.BaseTransport) -> None:
        who = peer_pop(transport.get_extra_info("peercert"), self.cfg.zone)
        if who is None or who == self.pop:
            log.warning(kv("peer_refused", reason="certificate is not <pop>.peer.<zone>"))
            transport.abort()  # type: ignore[attr-defined]
            return
        link.pop = who
        link.session.name = f"peer-{who}"
        log.info(kv("peer_accepted", peer=who))
        # the link serves both ways: reuse it for our streams to them
        self.sessions.setdefault(who, link.session)
        self._spawn(self._keepalive(who, link.session))

    def _lost(self, link: _Link, exc: BaseException | None) -> None:
        pop = link.pop
        if pop is not None and self.sessions.get(pop) is link.session:
            del self.sessions[pop]
            log.warning(kv("peer_link_lost", peer=pop, error=repr(str(exc)) if exc else None))

    async def session_for(self, pop: str) -> Session:
        s = self.sessions.get(pop)
        if s is not None and not s.is_closed and s.remote_go_away is None:
            return s
        fut = self._connecting.get(pop)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._connecting[pop] = fut
            self._spawn(self._connect(pop, fut))
        return await asyncio.shield(fut)

    async def _connect(self, pop: str, fut: asyncio.Future[Session]) -> None:
        try:
            addr = self.cfg.peer_address(pop)
            if addr is None:
                raise PeerUnavailable(f"no address for PoP {pop} ([peers.{pop}] address)")
            loop = asyncio.get_running_loop()
            t = self.cfg.peer.connect_timeout
            _, s = await asyncio.wait_for(loop.create_connection(
                lambda: self._link(pop).session, addr[0], addr[1], ssl=self.client_ctx,
                server_hostname=f"{pop}.peer.{self.cfg.zone}", ssl_handshake_timeout=t), t)
            self.sessions[pop] = s  # type: ignore[assignment]
            log.info(kv("peer_connected", peer=pop, address=f"{addr[0]}:{addr[1]}"))
            self._spawn(self._keepalive(pop, s))  # type: ignore[arg-type]
            fut.set_result(s)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - every failure is "peer unavailable" to the caller
            log.warning(kv("peer_connect_failed", peer=pop, error=type(exc).__name__, detail=repr(str(exc))))
            fut.set_exception(exc if isinstance(exc, PeerUnavailable) else PeerUnavailable(f"{pop}: {exc!r}"))
            fut.exception()
        finally:
            self._connecting.pop(pop, None)

    async def _keepalive(self, pop: str, s: Session) -> None:
        """Ping an idle link: a peer that died without a FIN (SIGKILL of its
        host, a cut link) is found within ping_interval + ping_timeout."""
        p = self.cfg.peer
        while not s.is_closed:
            await asyncio.sleep(p.ping_interval)
            try:
                await s.ping(p.ping_timeout)
            except (asyncio.TimeoutError, TunnelError):
                if not s.is_closed:
                    log.warning(kv("peer_ping_timeout", peer=pop))
                    s.abort()
                return

    async def open_stream(self, pop: str, header: PeerHeader) -> Stream:
        """X side: a stream to PoP `pop` carrying `header`; write at once."""
        s = await self.session_for(pop)
        try:
            st = s.open_stream()
        except SessionClosedError as exc:
            raise PeerUnavailable(f"{pop}: link closed") from exc
        st.write(header.encode())
        return st

    # ------------------------------------------------------------ Y side
    def _on_stream(self, link: _Link, stream: Stream) -> None:
        self._spawn(self._serve_guarded(link, stream))

    async def _serve_guarded(self, link: _Link, stream: Stream) -> None:
        try:
            await self._serve(link, stream)
        except Exception:  # noqa: BLE001 - one stream's fault must not go unnoticed or touch others
            log.exception(kv("peer_stream_failed", peer=link.pop or "?"))
            stream.abort()

    async def _serve(self, link: _Link, stream: Stream) -> None:
        try:
            obj, rest = await read_header(stream, HEADER_TIMEOUT)
            if obj is None:
                stream.abort()
                return
            header = PeerHeader.from_dict(obj)
        except (MessageError, asyncio.TimeoutError, TunnelError) as exc:
            log.warning(kv("bad_peer_header", peer=link.pop or "?", error=type(exc).__name__))
            stream.abort()
            return
        endpoint = self.local_lookup(header.kind, header.endpoint)
        if endpoint is None:
            # The agent left this PoP (or never was here): reset; X answers 502.
            log.info(kv("peer_stream_no_binding", peer=link.pop or "?", kind=header.kind,
                        endpoint=header.endpoint))
            stream.abort()
            return
        try:
            agent_stream = await endpoint.open_stream(header.client_addr, header.client_port, sni=header.sni,
                                                      tls_terminated=header.tls_terminated)
        except (SessionClosedError, TunnelError):
            stream.abort()
            return
        self.streams_served += 1
        splice(stream, agent_stream, rest)
