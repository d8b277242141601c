"""The edge node: listeners, ClientHello peek, dispatch by SNI, health.

Owns: sockets on the PoP's addresses (:443 with SNI dispatch, :80 redirects,
the TCP endpoint range, the health endpoint), connection limits and
handshake timeouts, the HTTP calls modules ask for (`perform`, module
effects: edge/modules/README.md), and the choice of front for each
connection:

    SNI == connect.<zone> | <pop>.connect.<zone>  -> TLS with the edge's
        certificate, handed to the hub's agent protocol (tunnel sessions)
    a bound TLS endpoint, terminate_at = agent     -> raw relay, no TLS here:
        the ClientHello is still in the socket (peeked, not read)
    a bound TLS endpoint, terminate_at = edge      -> TLS here, plaintext relayed
    a name last bound as a TLS endpoint, now offline -> closed
    <name>.<https_domain>                          -> TLS here, HTTP/1.1 front
                                                      (404 ERR_GSLB_3200 when offline)
    anything else, no SNI, not TLS                 -> closed, one log line
    ALPN offers "acme-tls/1" (with [edge.acme])    -> the TLS-ALPN-01 answer (RFC 8737), then closed

With [edge.acme] (`acme=`, an edge.acme.AcmeManager) a terminated name gets its
ACME certificate: from memory, else (bound names) from the deployment's store
or a new order, waiting at most handshake_wait, else the lab CA's as before
(docs/acme.md). The :80 listener answers HTTP-01 from the registry.

Must not touch: the tunnel's framing or the sessions' registry (`edge.hub`):
it calls `hub.lookup(kind, key)` (an `edge.endpoint.Endpoint` or None),
`hub.add_listener(fn)` and `await endpoint.open_stream(client_addr,
client_port, sni=..., tls_terminated=...)`.
"""
from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import socket
import ssl
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from edge.abuse import AbuseTracker, Conn as AbuseConn
from edge.acme.solvers import ACME_TLS_ALPN
from edge.certs import CertStore
from edge.config import EdgeConfig
from edge.endpoint import Endpoint, open_stream_within
from edge.front.http_front import HttpFront
from edge.front.proxy_v2 import encode as proxy_v2_encode
from edge.front.redirect import RedirectFront
from edge.front.relay import RawRelay
from edge.front.tls_hello import ClientHello, ClientHelloError, parse_client_hello
from edge.memtrim import HeapTrimmer
from edge.metrics import EdgeCounters
from edge.modules import Chain, EffectResult, HttpCall, Outcome, Subject, Verdict, build_chain
from edge.modules import base as modbase
from plumbing.kvlog import kv
from plumbing.listen import listen_socket

if TYPE_CHECKING:
    from edge.hub import Hub

log = logging.getLogger("gslb.edge")

_MAX_TLS_NAMES = 10000     # remembered TLS endpoint names (offline ones close)
_ACCEPT_BATCH = 64          # accepts per readiness event: fairness between listeners
_PEEK_RETRY = (0.005, 0.01, 0.02, 0.05, 0.1)   # s, while a ClientHello trickles in
MAX_EFFECT_BODY = 64 * 1024  # bytes of a module effect's response the module gets
_ACCEPT_RETRY_DELAY = 0.1   # s without accepting on a listener after accept() failed (EMFILE ...)
_ACCEPT_LOG_EVERY = 5.0     # s between two accept_error log lines


@dataclass
class Stats:
    accepted: int = 0
    refused_limit: int = 0
    bad_hello: int = 0
    open: int = 0
    accept_errors: int = 0
    requests: int = 0       # HTTP request heads through the HTTPS front (for rates: `gslb lab top`)
    handed_over: int = 0    # --workers: connections passed to the worker owning their endpoint
    handed_in: int = 0      # --workers: connections another worker passed to this one
    handover_failed: int = 0


class _HelloPeek:
    """Waits until the socket holds a complete ClientHello, without reading it.

    MSG_PEEK leaves the bytes in the kernel: a passthrough relay later reads
    them as if nothing had happened. readiness is level-triggered, so while
    the hello is incomplete the reader is removed and re-armed after a short
    delay instead of spinning; the handshake timeout bounds the whole wait.
    """

    def __init__(self, server: "EdgeServer", sock: socket.socket, peer: tuple[Any, ...],
                 abuse: AbuseConn | None = None, adopted: bool = False) -> None:
        self.server = server
        self.sock = sock
        self.peer = peer
        self.abuse = abuse
        self.adopted = adopted   # handed over by another worker: served here, never passed on again
        self.loop = server.loop
        self.tries = 0
        self.done = False
        self.timer = self.loop.call_later(server.cfg.timeouts.handshake, self._timeout)
        self.loop.add_reader(sock.fileno(), self._readable)

    def _finish(self) -> None:
        self.done = True
        self.timer.cancel()
        try:
            self.loop.remove_reader(self.sock.fileno())
        except (ValueError, OSError):
            pass

    def _close(self, event: str, **fields: Any) -> None:
        self._finish()
        self.server.stats.bad_hello += 1
        log.info(kv(event, client=self.peer[0], port=self.peer[1], **fields))
        # a broken ClientHello is malformed; none within the handshake timeout: a connection
        # held without a request (a client that closes at once, a TCP probe, is neither)
        self.server.abuse_closed(self.abuse, error={"bad_client_hello": "malformed", "hello_timeout": "idle"}.get(event))
        self.server.release(self.sock)

    def _timeout(self) -> None:
        if not self.done:
            self._close("hello_timeout")

    def _rearm(self) -> None:
        if not self.done:
            self.loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        if self.done:
            return
        limit = self.server.cfg.limits.max_client_hello
        try:
            data = self.sock.recv(limit, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._close("hello_error", error=errno.errorcode.get(exc.errno or 0, str(exc)))
            return
        if not data:
            self._close("hello_eof")
            return
        try:
            hello = parse_client_hello(data, limit)
        except ClientHelloError as exc:
            self._close("bad_client_hello", code=exc.code, detail=str(exc))
            return
        if hello is None:
            self.loop.remove_reader(self.sock.fileno())
            delay = _PEEK_RETRY[min(self.tries, len(_PEEK_RETRY) - 1)]
            self.tries += 1
            self.loop.call_later(delay, self._rearm)
            return
        self._finish()
        self.server.dispatch(self.sock, self.peer, hello, self.abuse, adopted=self.adopted)


class EdgeServer:
    def __init__(
        self,
        cfg: EdgeConfig,
        hub: "Hub",
        certs: CertStore,
        *,
        agent_protocol_factory: Callable[..., asyncio.Protocol] | None = None,  # (on_closed=fn)
        chain: Chain | None = None,
        acme: Any = None,
        worker: Any = None,
    ) -> None:
        self.cfg = cfg
        # --workers N: this process's edge.workers.WorkerSlot (sockets bound by the supervisor),
        # None: the only process (docs/workers.md).
        self.worker = worker
        self._handover: Any = None
        self._tcp_serving: set[int] = set()
        self.acme = acme    # edge.acme.AcmeManager or None (docs/acme.md)
        if acme is not None:
            acme.wanted = lambda name: name.startswith("*.") or self._acme_may_order(name)
        self.hub = hub
        self.certs = certs
        self.agent_protocol_factory = agent_protocol_factory
        self.chain = chain if chain is not None else build_chain(cfg.module_order, cfg.module_options)
        hub.registry_options = lambda opts: self.chain.registry_options(opts, time.time())
        self.https_port = cfg.https_port
        self.max_header_bytes = cfg.limits.max_header_bytes
        self.stream_open_timeout = cfg.timeouts.stream_open
        self.idle_timeout = cfg.timeouts.idle
        self.header_timeout = cfg.timeouts.header
        self.via = f"{cfg.pop}.{cfg.zone}"  # received-by in Via (RFC 9110 7.6.3)
        self.stats = Stats()
        self.metrics = EdgeCounters()   # /metrics on the health listener (edge/metrics.py)
        self.worker_stats: Any = None   # worker 0 of --workers: asks the others (edge.metrics.EdgeWorkerStats)
        # The automatic abuse layer (edge/abuse/README.md): per-source accounting, blocks at accept.
        self.abuse: AbuseTracker | None = AbuseTracker(cfg.abuse, _abuse_log) if cfg.abuse.enabled else None
        self._abuse_timer: asyncio.TimerHandle | None = None
        self.max_header_count = cfg.limits.max_header_count
        self.min_header_rate = cfg.limits.min_header_rate
        self.min_body_rate = cfg.limits.min_body_rate
        self.rate_grace = cfg.timeouts.rate_grace
        # Connection churn leaves freed TLS buffers in glibc's heap holes: give
        # them back every few hundred closed connections (edge/memtrim.py).
        self.trimmer = HeapTrimmer()
        self.started = time.monotonic()
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._listeners: list[socket.socket] = []
        self._servers: list[asyncio.base_events.Server] = []
        self._health_runner: Any = None
        self.bound: dict[str, list[tuple[str, int]]] = {}  # role -> addresses actually bound
        # Names last bound as TLS endpoints: when their agent is gone, a client
        # is closed (TLS endpoints close) instead of getting the HTTPS 404 page
        # over a certificate the endpoint's owner never asked the edge to hold.
        self._tls_names: OrderedDict[str, None] = OrderedDict()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._effects: Any = None  # aiohttp ClientSession for module effects, made on first use
        self._effect_ssl: dict[str, Any] = {}  # ca_file -> SSLContext for module effects
        self._accept_logged = -_ACCEPT_LOG_EVERY
        hub.add_listener(self._on_binding_change)

    # -- routing helpers (FrontContext) ------------------------------------------
    def endpoint_label(self, host: str) -> str | None:
        """'demo' for 'demo.<https_domain>', else None."""
        suffix = "." + self.cfg.https_domain
        if host.endswith(suffix):
            label = host[: -len(suffix)]
            if label and "." not in label:
                return label
        return None

    def lookup(self, kind: str, key: str | int) -> Endpoint | None:
        """The hub's endpoint (by host name or TCP port), None when offline."""
        return self.hub.lookup(kind, key)

    def _on_binding_change(self, what: str, endpoint: Endpoint) -> None:
        host = endpoint.hostname
        if not host or what != "bind":
            return
        if self.acme is not None and (endpoint.kind == "http" or getattr(endpoint, "terminate_at", "") == "edge"):
            # A new endpoint's certificate is ordered at once, not at its first handshake.
            self.acme.ensure(host)
        self._remember_name(host, endpoint.kind)

    def _remember_name(self, host: str, kind: str) -> None:
        """`host` was last bound as a `kind` endpoint ("tls": when offline, its clients are closed)."""
        if kind == "tls":
            self._tls_names[host] = None
            self._tls_names.move_to_end(host)
            while len(self._tls_names) > _MAX_TLS_NAMES:
                self._tls_names.popitem(last=False)
        else:
            self._tls_names.pop(host, None)

    def _on_registry_event(self, ev: Any) -> None:
        """--workers: a bind in any worker of this PoP (the shared ownership table, edge/workers/ipc.py)
        teaches every worker whether the name is a TLS endpoint, as one process would know it."""
        if ev.type == "put":
            self._learn_binding(ev.binding)

    def _learn_binding(self, b: Any) -> None:
        if b is None or b.kind != "http" or b.pop != self.cfg.pop:
            return
        self._remember_name(b.name, "tls" if b.meta.get("kind") == "tls" else "http")

    def is_https_name(self, host: str) -> bool:
        if self.endpoint_label(host) is not None:
            return True
        # A custom domain (docs/acme-dns.md): an HTTPS name while an http endpoint is bound to it
        # (with --workers, maybe in another worker).
        return "." in host and (self.lookup("http", host) is not None
                                or (self.worker is not None and self.hub.owner_worker("http", host) is not None))

    # -- lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        cfg = self.cfg
        _raise_open_files(cfg.limits.max_connections)
        if self.worker is not None:
            try:
                await self._start_worker()
            except BaseException:
                await self.close()
                raise
            return
        try:
            for addr in cfg.listen:
                sock = listen_socket(addr, cfg.https_port)
                self._listeners.append(sock)
                self.bound.setdefault("https", []).append(sock.getsockname()[:2])
                self.loop.add_reader(sock.fileno(), self._on_acceptable, sock)
            if cfg.http_port:
                for addr in cfg.listen:
                    srv = await self.loop.create_server(
                        lambda: RedirectFront(self.is_https_name, cfg.https_port, cfg.timeouts.handshake,
                                              self.health,
                                              self.acme.http01_answer if self.acme is not None else None),
                        sock=listen_socket(addr, cfg.http_port))
                    self._servers.append(srv)
                    self.bound.setdefault("http", []).append(srv.sockets[0].getsockname()[:2])
            if cfg.tcp_ports:
                lo, hi = cfg.tcp_ports
                for port in range(lo, hi + 1):
                    for addr in cfg.listen:
                        srv = await self.loop.create_server(
                            lambda port=port: self._tcp_front(port), sock=listen_socket(addr, port))
                        self._servers.append(srv)
                self.bound["tcp"] = [(a, p) for a in cfg.listen for p in (lo, hi)]
            if cfg.health_listen:
                await self._start_health(*cfg.health_listen)
        except BaseException:
            await self.close()
            raise
        if self.abuse is not None:
            self._abuse_tick()
        log.info(kv("edge_started", pop=cfg.pop, listen=",".join(cfg.listen), https_port=cfg.https_port,
                    http_port=cfg.http_port, tcp_ports=f"{cfg.tcp_ports[0]}-{cfg.tcp_ports[1]}" if cfg.tcp_ports else None,
                    health=f"{cfg.health_listen[0]}:{cfg.health_listen[1]}" if cfg.health_listen else None))

    async def _start_worker(self) -> None:
        """start() of one of N workers: the supervisor's sockets (edge/workers/, docs/workers.md)."""
        from edge.workers import handover

        cfg, w = self.cfg, self.worker
        for sock in w.https:
            self._listeners.append(sock)
            self.bound.setdefault("https", []).append(sock.getsockname()[:2])
            self.loop.add_reader(sock.fileno(), self._on_acceptable, sock)
        for sock in w.http:
            srv = await self.loop.create_server(
                lambda: RedirectFront(self.is_https_name, cfg.https_port, cfg.timeouts.handshake, self.health,
                                      self.acme.http01_answer if self.acme is not None else None), sock=sock)
            self._servers.append(srv)
            self.bound.setdefault("http", []).append(sock.getsockname()[:2])
        registry = self.hub.registry
        registry.subscribe(self._on_registry_event)
        for b in registry.bindings():   # held before this worker started (a respawn)
            self._learn_binding(b)
        if w.tcp:
            # The owner of a TCP endpoint accepts on its port (an accepted plain TCP connection has no
            # ClientHello to route by); worker 0 serves the ports nobody owns (and closes them).
            self.hub.registry.subscribe(lambda ev: self._tcp_reconcile(int(ev.name)) if ev.kind == "tcp" else None)
            for port in w.tcp:
                self._tcp_reconcile(port)
            lo, hi = cfg.tcp_ports
            self.bound["tcp"] = [(a, p) for a in cfg.listen for p in (lo, hi)]
        from edge import metrics as edge_metrics
        from plumbing.workerstats import serve_snapshots
        if w.stats_serve is not None:
            serve_snapshots(w.stats_serve, lambda: edge_metrics.local_snapshot(self))
        if w.stats_ask:
            self.worker_stats = edge_metrics.EdgeWorkerStats(self, w.stats_ask)
        if w.health is not None:
            await self._start_health(*cfg.health_listen, sock=w.health)
        self._handover = handover.Receiver(self.loop, w.handover_in, self.adopt)
        if self.abuse is not None:
            self._abuse_tick()
        log.info(kv("edge_started", pop=cfg.pop, worker=w.index, workers=w.count, pid=os.getpid(),
                    listen=",".join(cfg.listen), https_port=cfg.https_port))

    def _tcp_reconcile(self, port: int) -> None:
        """Accept on TCP endpoint port `port` iff this worker owns it (or nobody does and this is worker 0)."""
        socks = self.worker.tcp.get(port)
        if not socks:
            return
        owner = self.hub.owner_worker("tcp", port)
        want = owner == self.worker.index or (owner is None and self.worker.index == 0)
        if want and port not in self._tcp_serving:
            self._tcp_serving.add(port)
            for sock in socks:
                self.loop.add_reader(sock.fileno(), self._on_tcp_acceptable, sock, port)
        elif not want and port in self._tcp_serving:
            self._tcp_serving.discard(port)
            for sock in socks:
                try:
                    self.loop.remove_reader(sock.fileno())
                except (ValueError, OSError):
                    pass

    def _on_tcp_acceptable(self, lsock: socket.socket, port: int) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, _peer = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return   # another worker took it (ownership moves while a connection waits)
            except OSError as exc:
                self._accept_failed(lsock, exc)
                return
            sock.setblocking(False)
            self._spawn(self._accept_tcp(sock, port))

    async def _accept_tcp(self, sock: socket.socket, port: int) -> None:
        try:
            await self.loop.connect_accepted_socket(lambda: self._tcp_front(port), sock)
        except OSError as exc:
            log.info(kv("accept_failed", error=type(exc).__name__))
            sock.close()

    def adopt(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        """A connection another worker accepted and handed over: peeked and dispatched here again
        (its ClientHello is still unread). The accepting worker's abuse layer admitted it already."""
        self.stats.handed_in += 1
        if self.stats.open >= self.cfg.limits.max_connections:
            self.stats.refused_limit += 1
            sock.close()
            return
        self.stats.open += 1
        _HelloPeek(self, sock, peer, None, adopted=True)

    def _hand_over(self, sock: socket.socket, peer: tuple[str, int], owner: int, sni: str,
                   abuse: AbuseConn | None) -> None:
        from edge.workers import handover

        w = self.worker
        why = handover.send(w.handover_out[owner], sock, w.index, peer) if 0 <= owner < w.count else "no such worker"
        if why is None:
            self.stats.handed_over += 1
        else:
            self.stats.handover_failed += 1
            log.warning(kv("handover_failed", client=peer[0], sni=sni, worker=owner, error=why))
        self.abuse_closed(abuse)
        self.release(sock)

    def _abuse_tick(self) -> None:
        """Lift expired blocks once a second, so each gets its abuse_unblock line on time."""
        assert self.abuse is not None
        self.abuse.expire(self.loop.time())
        self._abuse_timer = self.loop.call_later(1.0, self._abuse_tick)

    def abuse_closed(self, conn: AbuseConn | None, *, error: str | None = None, nbytes: int = 0) -> None:
        """A connection the abuse layer admitted ends (once: the tracker ignores repeats)."""
        if conn is not None and self.abuse is not None:
            now = self.loop.time()
            if error is not None:
                self.abuse.error(conn, error, now)
            self.abuse.closed(conn, now, nbytes=nbytes)

    def _closer(self, conn: AbuseConn | None) -> Callable[..., None]:
        """on_closed for a protocol that holds an admitted connection."""
        if conn is None:
            return self._closed

        def closed(*_: Any) -> None:
            self.abuse_closed(conn)
            self.release(None)
        return closed

    async def close(self) -> None:
        if self._abuse_timer is not None:
            self._abuse_timer.cancel()
            self._abuse_timer = None
        for sock in self._listeners:
            try:
                self.loop.remove_reader(sock.fileno())
            except (ValueError, OSError):
                pass
            sock.close()
        self._listeners.clear()
        if self._handover is not None:
            self._handover.close()
            self._handover = None
        for port in list(self._tcp_serving):
            for sock in self.worker.tcp.get(port, ()):
                try:
                    self.loop.remove_reader(sock.fileno())
                except (ValueError, OSError):
                    pass
        self._tcp_serving.clear()
        for srv in self._servers:
            srv.close()
        self._servers.clear()
        if self._health_runner is not None:
            await self._health_runner.cleanup()
            self._health_runner = None
        if self._effects is not None:
            await self._effects.close()
            self._effects = None

    # -- :443 -------------------------------------------------------------------------
    def _on_acceptable(self, lsock: socket.socket) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, peer = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # EMFILE and friends: the listener stays readable (level-triggered),
                # so retrying at once spins the loop and floods the log. Stop
                # accepting on it for a moment, as asyncio's own accept loop and
                # nginx do, and log at most once every few seconds.
                self._accept_failed(lsock, exc)
                return
            self.stats.accepted += 1
            if self.stats.open >= self.cfg.limits.max_connections:
                self.stats.refused_limit += 1
                sock.close()
                continue
            conn = None
            if self.abuse is not None:
                conn = self.abuse.admit(peer[0], self.loop.time())
                if conn is None:  # a blocked source: closed before any TLS, counted in abuse stats
                    sock.close()
                    continue
            self.stats.open += 1
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _HelloPeek(self, sock, peer, conn)

    def _accept_failed(self, lsock: socket.socket, exc: OSError) -> None:
        self.stats.accept_errors += 1
        now = time.monotonic()
        if now - self._accept_logged >= _ACCEPT_LOG_EVERY:
            log.warning(kv("accept_error", error=errno.errorcode.get(exc.errno or 0, str(exc)),
                           errors=self.stats.accept_errors, open=self.stats.open,
                           pause_s=_ACCEPT_RETRY_DELAY))
            self._accept_logged = now
        try:
            self.loop.remove_reader(lsock.fileno())
        except (ValueError, OSError):
            return
        self.loop.call_later(_ACCEPT_RETRY_DELAY, self._resume_accept, lsock)

    def _resume_accept(self, lsock: socket.socket) -> None:
        if lsock in self._listeners and lsock.fileno() >= 0:
            self.loop.add_reader(lsock.fileno(), self._on_acceptable, lsock)

    def release(self, sock: socket.socket | None) -> None:
        """A connection ends (closed before any protocol took it, or its protocol is done)."""
        self.stats.open -= 1
        self.trimmer.closed()
        if sock is not None:
            sock.close()

    def _agent_worker(self) -> int:
        """--workers: the worker for a new agent session: the one holding the fewest agent sessions
        at this PoP (counted from the shared ownership table: sessions with a binding), this one on
        a tie. Sessions that have bound nothing yet are not seen: agents that connect at the same
        instant may share a worker."""
        w = self.worker
        sessions: list[set[str]] = [set() for _ in range(w.count)]
        for b in self.hub.registry.bindings():
            k = b.meta.get("worker")
            if b.pop == self.cfg.pop and isinstance(k, int) and 0 <= k < w.count:
                sessions[k].add(b.session)
        return min(range(w.count), key=lambda k: (len(sessions[k]), k != w.index))

    def dispatch(self, sock: socket.socket, peer: tuple[Any, ...], hello: ClientHello,
                 abuse: AbuseConn | None = None, *, adopted: bool = False) -> None:
        sni = hello.sni
        peer2 = (str(peer[0]), int(peer[1]))
        if sni is None:
            log.info(kv("no_sni", client=peer2[0]))
            self.abuse_closed(abuse, error="malformed")
            self.release(sock)
            return
        if self.worker is not None and not adopted:
            # --workers: the endpoint's agent session lives in another worker: pass the socket
            # on, still encrypted (edge/workers/handover.py). An agent goes to the worker that
            # holds the fewest agent sessions, so sessions (and the endpoints' work) spread
            # over the workers whatever the kernel's hash of the agents' ports.
            if sni in self.cfg.ingress_names:
                owner = self._agent_worker()
            else:
                owner = self.hub.owner_worker("http", sni)
            if owner is not None and owner != self.worker.index:
                self._hand_over(sock, peer2, owner, sni, abuse)
                return
        if self.acme is not None and ACME_TLS_ALPN in hello.alpn:
            # RFC 8737 3: a validation offers only acme-tls/1; no client of an endpoint does.
            self._spawn(self._answer_tls_alpn(sock, peer2, sni, abuse))
            return
        if sni in self.cfg.ingress_names:
            if self.agent_protocol_factory is None:
                log.info(kv("agent_ingress_disabled", client=peer2[0], sni=sni))
                self.abuse_closed(abuse)
                self.release(sock)
                return
            agent_factory = self.agent_protocol_factory
            self.metrics.connection("agent")
            closer = self._closer(abuse)
            self._spawn(self._accept_tls(sock, peer2, sni, lambda: agent_factory(on_closed=closer),
                                         names=self.cfg.ingress_names, alpn=(), abuse=abuse))
            return
        tls_endpoint = self.lookup("tls", sni)
        if tls_endpoint is not None:
            self.metrics.connection("tls")
            admitted, subject = self._admit_conn(tls_endpoint, "tls", sni, peer2)
            if not admitted:
                self.abuse_closed(abuse)
                self.release(sock)
                return
            if tls_endpoint.terminate_at == "edge":
                factory = lambda: self._relay(tls_endpoint, "tls", sni, tls_terminated=True,  # noqa: E731
                                              subject=subject, abuse=abuse)
                self._spawn(self._accept_tls(sock, peer2, sni, factory, names=(sni,), alpn=(), abuse=abuse))
            else:
                factory = lambda: self._relay(tls_endpoint, "tls", sni, subject=subject, abuse=abuse)  # noqa: E731
                self._spawn(self._accept_plain(sock, factory, abuse))
            return
        if sni in self._tls_names and self.lookup("http", sni) is None:
            log.info(kv("tls_endpoint_offline", client=peer2[0], sni=sni))
            self.abuse_closed(abuse)
            self.release(sock)
            return
        if self.is_https_name(sni):
            self.metrics.connection("https")
            self._spawn(self._accept_tls(sock, peer2, sni,
                                         lambda: HttpFront(self, sni, on_closed=self._closed, abuse=abuse),
                                         names=(sni,),
                                         alpn=("http/1.1",), abuse=abuse))
            return
        log.info(kv("unknown_sni", client=peer2[0], sni=sni))
        self.abuse_closed(abuse, error="malformed")
        self.release(sock)

    def _spawn(self, coro: Any) -> None:
        # The loop keeps only weak references to tasks: hold them until done.
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _closed(self, *_: Any) -> None:
        """A protocol's connection ended: the open-connection count drops
        (the protocols call it, as on_closed, from their connection_lost)."""
        self.release(None)

    async def _accept_plain(self, sock: socket.socket, factory: Callable[[], asyncio.Protocol],
                            abuse: AbuseConn | None = None) -> None:
        try:
            await self.loop.connect_accepted_socket(factory, sock)
        except OSError as exc:
            log.info(kv("accept_failed", error=type(exc).__name__))
            self.abuse_closed(abuse)
            self.release(sock)

    async def _accept_tls(self, sock: socket.socket, peer: tuple[str, int], sni: str,
                          factory: Callable[[], asyncio.Protocol], names: tuple[str, ...],
                          alpn: tuple[str, ...], abuse: AbuseConn | None = None) -> None:
        ctx = None
        if self.acme is not None and names == (sni,):
            try:
                ctx = self.acme.context_nowait(sni, alpn)
                if ctx is None:
                    ctx = await self.acme.context(sni, alpn, may_order=self._acme_may_order(sni))
            except Exception as exc:  # noqa: BLE001 - the lab CA's certificate instead
                log.warning(kv("acme_context_failed", sni=sni, error=type(exc).__name__, detail=exc))
                ctx = None
        try:
            if ctx is None:
                ctx = self.certs.cached(names, alpn)
            if ctx is None:
                # Issuing a certificate signs with the CA key: keep it off the event loop.
                ctx = await self.loop.run_in_executor(None, self.certs.context, names, alpn)
        except Exception as exc:  # noqa: BLE001 - a name we cannot serve: close, log
            log.warning(kv("cert_failed", sni=sni, error=type(exc).__name__, detail=exc))
            self.abuse_closed(abuse)
            self.release(sock)
            return
        try:
            transport, _ = await self.loop.connect_accepted_socket(
                factory, sock, ssl=ctx, ssl_handshake_timeout=self.cfg.timeouts.handshake)
        except (OSError, asyncio.TimeoutError, ConnectionError) as exc:
            log.info(kv("tls_handshake_failed", client=peer[0], sni=sni, error=type(exc).__name__))
            # uvloop/asyncio closed the transport (and so the socket) already
            self.abuse_closed(abuse, error="handshake_failed")
            self.release(None)
            return
        except Exception as exc:  # noqa: BLE001 - ssl.SSLError and the like
            log.info(kv("tls_handshake_failed", client=peer[0], sni=sni, error=type(exc).__name__))
            self.abuse_closed(abuse, error="handshake_failed")
            self.release(None)
            return
        if abuse is not None and self.abuse is not None and not self.abuse.handshake(abuse, True, self.loop.time()):
            transport.abort()  # this handshake blocked its source (handshake flood): the protocol closes

    def _acme_may_order(self, sni: str) -> bool:
        """Only a bound name is worth an order (SNI is client input: no order per random name)."""
        return self.lookup("http", sni) is not None or self.lookup("tls", sni) is not None

    async def _answer_tls_alpn(self, sock: socket.socket, peer: tuple[str, int], sni: str,
                               abuse: AbuseConn | None = None) -> None:
        try:
            key_auth = await self.acme.tls_alpn_answer(sni)
            ctx = self.acme.tls_alpn_context(sni, key_auth) if key_auth is not None else None
        except Exception as exc:  # noqa: BLE001 - registry down: the CA tries again
            log.warning(kv("acme_tls_alpn_failed", client=peer[0], sni=sni, error=type(exc).__name__, detail=exc))
            ctx = None
        if ctx is None:
            log.info(kv("acme_tls_alpn_unknown", client=peer[0], sni=sni))
            self.abuse_closed(abuse)
            self.release(sock)
            return
        try:
            await self.loop.connect_accepted_socket(
                lambda: _CloseAfterHandshake(self._closer(abuse)), sock, ssl=ctx,
                ssl_handshake_timeout=self.cfg.timeouts.handshake)
        except Exception as exc:  # noqa: BLE001 - OSError, ssl.SSLError, timeout: the transport is closed
            log.info(kv("tls_handshake_failed", client=peer[0], sni=sni, error=type(exc).__name__, alpn=ACME_TLS_ALPN))
            self.abuse_closed(abuse, error="handshake_failed")
            self.release(None)

    # -- module effects -------------------------------------------------------------------
    async def perform(self, effect: HttpCall) -> EffectResult:
        """Do an HTTP call a module asked for (Verdict.PERFORM) and hand back
        what came of it; the body is read up to MAX_EFFECT_BODY bytes. A
        failure is a result too (`error`): the module decides what it means."""
        from aiohttp import ClientError, ClientSession, ClientTimeout

        if self._effects is None:
            # aiohttp off the data path (docs/configuration.md): one client session, made on first use
            self._effects = ClientSession()
        extra: dict[str, Any] = {}
        if effect.ca_file and effect.url.startswith("https://"):
            ssl_ctx = self._effect_ssl.get(effect.ca_file)
            if ssl_ctx is None:
                try:
                    ssl_ctx = ssl.create_default_context(cafile=effect.ca_file)
                except (OSError, ssl.SSLError) as exc:
                    return EffectResult(error=f"ca_file_{type(exc).__name__}")
                if len(self._effect_ssl) < 16:  # a few CA bundles, from the edge's own configuration
                    self._effect_ssl[effect.ca_file] = ssl_ctx
            extra["ssl"] = ssl_ctx
        try:
            async with self._effects.request(effect.method, effect.url, headers=list(effect.headers),
                                             data=effect.body or None, allow_redirects=False, **extra,
                                             timeout=ClientTimeout(total=effect.timeout)) as resp:
                body = await resp.content.read(MAX_EFFECT_BODY + 1)
                if len(body) > MAX_EFFECT_BODY:
                    return EffectResult(error="body_too_large")
                return EffectResult(resp.status, tuple(resp.headers.items()), body)
        except asyncio.TimeoutError:
            return EffectResult(error="timeout")
        except (ClientError, OSError) as exc:
            return EffectResult(error=type(exc).__name__)

    # -- module chain for TLS/TCP ---------------------------------------------------------
    def _admit_conn(self, target: Endpoint, kind: str, endpoint: str,
                    peer: tuple[str, int]) -> tuple[bool, Subject | None]:
        """(allowed, the subject the chain decided on: None without modules)."""
        if not self.chain.modules:
            return True, None
        subject = Subject(client_ip=modbase.client_ip(peer[0]), client_port=peer[1], kind=kind, endpoint=endpoint,
                          options=target.options, now=self.loop.time(), wall=time.time())
        decision = self.chain.decide(subject)
        self.metrics.decided(decision)
        if decision.verdict is Verdict.PERFORM:
            # Effects run for HTTP requests only (edge/modules/README.md): a
            # connection is decided at once, before its first byte is read.
            log.info(kv("connection_refused", client=peer[0], kind=kind, endpoint=endpoint,
                        module=decision.module, reason="a module effect needs an HTTP request"))
            return False, None
        if decision.verdict is Verdict.ANSWER:
            log.info(kv("connection_refused", client=peer[0], kind=kind, endpoint=endpoint,
                        module=decision.module, reason=decision.reason))
            return False, None
        return True, subject

    def _relay(self, endpoint: Endpoint | None, kind: str, sni: str | None,
               resolve: Callable[[tuple[str, int]], tuple[Endpoint, Subject | None] | None] | None = None,
               tls_terminated: bool = False, subject: Subject | None = None,
               abuse: AbuseConn | None = None) -> RawRelay:
        """A raw relay to `endpoint` (or to what `resolve(peer)` finds when it
        opens; None: close); the chain observes `subject`'s outcome at the end."""
        state: dict[str, Any] = {"endpoint": endpoint, "subject": subject, "abuse": abuse}

        async def opener(relay: RawRelay) -> Any:
            ep = state["endpoint"]
            if ep is None and resolve is not None:
                found = resolve(relay.peer)
                if found is not None:
                    ep, state["subject"], state["abuse"] = found
                    state["endpoint"] = ep
            if ep is None:
                return None
            ip = str(modbase.client_ip(relay.peer[0]))
            return await open_stream_within(ep, (ip, relay.peer[1]), sni, tls_terminated, self.stream_open_timeout)

        def first(relay: RawRelay) -> bytes:
            ep = state["endpoint"]
            if ep is None or not ep.proxy_protocol:
                return b""
            client = relay.client
            local = client.get_extra_info("sockname") if client else None
            # PROXY v2 (spec 2.2): the client, and the edge address it reached.
            return proxy_v2_encode(relay.peer, (str(local[0]), int(local[1])) if local else None,
                                   authority=sni)

        def closed(relay: RawRelay, exc: BaseException | None) -> None:
            self.abuse_closed(state["abuse"], nbytes=relay.bytes_up + relay.bytes_down)
            self.release(None)
            self.metrics.transferred(kind, relay.bytes_up, relay.bytes_down)
            subj = state["subject"]
            if subj is not None and self.chain.observes:
                self.chain.observe(subj, Outcome(0, relay.bytes_up, relay.bytes_down, self.loop.time() - subj.now,
                                                 type(exc).__name__ if exc else ""))

        return RawRelay(opener, first, on_closed=closed, idle_timeout=self.idle_timeout)

    # -- TCP endpoints ----------------------------------------------------------------------
    def _tcp_front(self, port: int) -> asyncio.Protocol:
        self.stats.accepted += 1
        if self.stats.open >= self.cfg.limits.max_connections:
            self.stats.refused_limit += 1
            return _Refuse()
        self.stats.open += 1
        self.metrics.connection("tcp")

        def resolve(peer: tuple[str, int]) -> tuple[Endpoint, Subject | None, AbuseConn | None] | None:
            conn = None
            if self.abuse is not None:
                # asyncio accepted this one: the abuse layer decides before a stream opens
                conn = self.abuse.admit(peer[0], self.loop.time())
                if conn is None:
                    return None
            endpoint = self.lookup("tcp", port)
            if endpoint is None:
                log.info(kv("tcp_endpoint_offline", client=peer[0], port=port))
                self.abuse_closed(conn)
                return None
            admitted, subject = self._admit_conn(endpoint, "tcp", str(port), peer)
            if not admitted:
                self.abuse_closed(conn)
                return None
            return endpoint, subject, conn

        return self._relay(None, "tcp", None, resolve)

    # -- health ----------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        sessions = len(self.hub.connections)
        bindings = len(self.hub.bindings())
        extra: dict[str, Any] = {}
        peers = self.hub.peers
        if peers is not None:
            # A shared registry (etcd) and peer links. Informational: a registry
            # outage must not take the PoP out of the DNS (running sessions and
            # cached routes still work), so "status" stays "ok".
            extra = {"registry_endpoints": len(self.hub.registry.bindings()),
                     "peer_links": sorted(peers.sessions)}
        return {
            "status": "ok",
            "pop": self.cfg.pop,
            "sessions": sessions,
            "bindings": bindings,
            "connections": self.stats.open,
            "accepted": self.stats.accepted,
            "requests": self.stats.requests,
            "refused_limit": self.stats.refused_limit,
            "accept_errors": self.stats.accept_errors,
            "bad_client_hello": self.stats.bad_hello,
            "abuse": self.abuse.stats() if self.abuse is not None else None,  # edge/abuse/README.md
            "heap_trims": self.trimmer.trims,
            **({"acme": self.acme.stats()} if self.acme is not None else {}),
            "uptime_s": round(time.monotonic() - self.started, 1),
            "pid": os.getpid(),
            **({"worker": self.worker.index, "workers": self.worker.count, "handed_over": self.stats.handed_over,
                "handed_in": self.stats.handed_in, "handover_failed": self.stats.handover_failed}
               if self.worker is not None else {}),
            **extra,
        }

    async def health_all(self) -> dict[str, Any]:
        """health(); with --workers (worker 0) its counts are the sums over the workers that
        answered, each worker's own in "per_worker" (docs/workers.md)."""
        h = self.health()
        if self.worker_stats is None:
            return h
        from edge.metrics import health_totals
        total, each = await self.worker_stats.collect()
        return health_totals(h, total, each, self.worker_stats.count)

    async def _start_health(self, host: str, port: int, sock: socket.socket | None = None) -> None:
        # aiohttp here, not on the data path (docs/configuration.md: admin/health endpoints).
        from aiohttp import web

        from edge import metrics as edge_metrics

        async def healthz(request: web.Request) -> web.Response:
            return web.Response(text=json.dumps(await self.health_all()) + "\n", content_type="application/json")

        app = web.Application()
        app.router.add_get("/healthz", healthz)
        edge_metrics.add_route(app, self)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        sock = sock if sock is not None else listen_socket(host, port)
        site = web.SockSite(runner, sock)
        await site.start()
        self._health_runner = runner
        self.bound["health"] = [(host, sock.getsockname()[1])]


def _abuse_log(event: str, fields: dict[str, Any]) -> None:
    # abuse_block / abuse_unblock: at warning, so they show without -v (one line each)
    log.warning(kv(event, **fields))


class _CloseAfterHandshake(asyncio.Protocol):
    """The TLS-ALPN-01 answer is the handshake itself (RFC 8737 3): close after it."""

    def __init__(self, on_closed: Callable[..., None]) -> None:
        self.on_closed = on_closed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.on_closed()


class _Refuse(asyncio.Protocol):
    """Over the connection limit: drop at once (RST), before any byte is read."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()  # type: ignore[attr-defined]


def _raise_open_files(max_connections: int) -> None:
    """Raise the soft open-file limit to the hard one (what Go programs do at start): each client
    connection holds a descriptor, and a soft limit of 1024 would cap the edge far below
    `max_connections`. Warn when even the hard limit is below it."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, max_connections + 1024)
    if want > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < max_connections + 64:
        log.warning(kv("open_files_limit", soft=soft, max_connections=max_connections,
                       hint="raise ulimit -n: connections beyond it fail with EMFILE"))
