"""The edge's registry of agent sessions and the endpoints they bind.

Owns: authtokens (checked in constant time), bind/unbind of endpoints
(unique hostnames for http/tls, TCP ports allocated from a range), the
lookup the edge front uses to route a connection, and the edge side of an
agent's tunnel session (`agent_protocol_factory`: auth, binds, heartbeats,
proxy streams). Must not touch: listeners, TLS contexts, HTTP (edge/front/).

Every bind goes through a `Registry` (edge/registry/): a `MemoryRegistry`
on a single node, etcd across PoPs. The registry decides (a name is unique
across all PoPs, TCP ports are allocated globally); the hub's own tables
then hold the endpoints bound *at this PoP* (their agent sessions are
here). With peer links, `lookup` also answers for endpoints bound at other
PoPs, with a `RemoteEndpoint` whose stream crosses the peer link
(edge/peer/).

Usage by the front:

    hub = Hub(HubConfig(domain="app.lab.test"), Hub.load_authtokens(path))
    factory = agent_protocol_factory(hub)
    await loop.connect_accepted_socket(factory, sock, ssl=ctx)   # SNI connect.<zone>
    ...
    endpoint = hub.lookup("http", "demo.app.lab.test")   # or ("tcp", 20001): an edge.endpoint.Endpoint
    if endpoint is None: answer 404 / close
    stream = await endpoint.open_stream(client_addr="198.19.5.10", client_port=51234, sni=...)
    stream.set_protocol(relay)        # Stream is shaped like an asyncio.Transport
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Awaitable, Callable, Iterable, Mapping

from edge.endpoint import Endpoint
from edge.modules import OPTION_OWNER, check_bind_option
from edge.registry import (Lease, LeaseLost, MemoryRegistry, NameTaken, PortsExhausted, Registry, RegistryError,
                           RegistryUnavailable)
from edge.registry.model import Binding, BindingEvent
from edge.tunnel import messages as M
from edge.tunnel.control import (NEED_DATA, AuthRequest, BindRequest, ControlChannel, ControlLimits, Event,
                                 ProtocolError, Reply, State)
from edge.tunnel.errors import ControlError, SessionClosedError
from edge.tunnel.session import Session, SessionConfig, Stream
from edge.tunnel.session_protocol import SessionProtocol
from plumbing.kvlog import kv

log = logging.getLogger("edge.hub")

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_DOMAIN = re.compile(r"^(?=.{3,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
MAX_AUTHTOKENS = 10_000
MAX_AUTHTOKEN_LENGTH = 512


@dataclass(frozen=True, slots=True)
class HubConfig:
    """What the hub needs from the edge configuration."""

    domain: str  # endpoints are NAME.<domain>, e.g. demo.app.lab.test
    tcp_host: str | None = None  # host in tcp:// URLs; default: domain
    tcp_port_range: tuple[int, int] = (20000, 20099)  # inclusive
    auth_timeout: float = 10.0  # seconds from connect to a valid auth message
    heartbeat_timeout_min: float = 1.0  # bounds on what an agent may ask for
    heartbeat_timeout_max: float = 120.0
    max_bindings_per_session: int = 64
    session: SessionConfig = field(default_factory=SessionConfig)
    pop: str = "local"  # this PoP's id, as written in the registry
    lease_ttl: float = 10.0  # registry lease of each agent session, seconds
    ingress: tuple[Mapping[str, Any], ...] = ()  # auth_ok's ingress list (docs/protocol.md 3.6)
    https_port: int = 443  # the edge's TLS listener: in endpoint URLs when it is not 443
    # The modules of this edge's chain: a bind option whose module is not in it is refused
    # (accepted, it would do nothing). None: not checked (a hub without a chain, in tests).
    modules: frozenset[str] | None = None
    # Custom domains (`gslb agent http --domain shop.example.com`, docs/acme-dns.md): awaited
    # with the hostname before it is bound, raises (edge.acme.domains.DomainError) when it does
    # not point at the edge. None: custom domains are refused.
    domain_check: Callable[[str], Awaitable[None]] | None = None

    def endpoint_url(self, kind: str, name: str) -> str:
        """The public URL of an endpoint (bind_ok `url`, docs/protocol.md 3.4): https://NAME,
        tls://NAME:PORT, tcp://TCP_HOST:PORT; the TLS listener's port when it is not 443."""
        if kind == "tcp":
            return f"tcp://{self.tcp_host or self.domain}:{name}"
        if kind == "tls":
            return f"tls://{name}:{self.https_port}"
        return f"https://{name}" if self.https_port == 443 else f"https://{name}:{self.https_port}"

    def __post_init__(self) -> None:
        lo, hi = self.tcp_port_range
        if not (1 <= lo <= hi <= 65535):
            raise ValueError(f"tcp_port_range {lo}-{hi} is not a valid port range")


@dataclass(frozen=True, eq=False)
class LocalEndpoint(Endpoint):
    """An endpoint bound by an agent session at this PoP."""

    binding_id: str
    kind: str  # http | tls | tcp
    hostname: str | None  # http/tls: demo.app.lab.test
    port: int | None  # tcp: the allocated port
    url: str
    options: Mapping[str, Any]  # validated, read-only (docs/protocol.md 3.2)
    connection: "AgentConnection" = field(repr=False)
    registry_name: str | None = None  # its name in the registry, when there is one

    @property
    def pop(self) -> str:
        return self.connection.hub.config.pop

    async def open_stream(self, client_addr: str, client_port: int, *, sni: str | None = None,
                          tls_terminated: bool = False) -> Stream:
        """Open a proxy stream to the agent and write its header; no round
        trip (the header goes out with the stream's first frame). Raises
        SessionClosedError if the agent is gone."""
        header = M.ProxyHeader(
            binding_id=self.binding_id,
            kind=self.kind,
            endpoint=self.hostname if self.hostname else f"tcp:{self.port}",
            client_addr=client_addr,
            client_port=client_port,
            sni=sni,
            proxy_protocol=self.proxy_protocol,
            tls_terminated=tls_terminated,
        )
        stream = self.connection.session.open_stream()
        stream.extra["binding"] = self
        stream.extra["peername"] = (client_addr, client_port)
        stream.write(header.encode())
        return stream


def _fingerprint(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Hub:
    """This PoP's agent sessions and their endpoints, bound through a
    `Registry` (see module docstring)."""

    def __init__(self, config: HubConfig, authtokens: Iterable[str] = (), *, registry: Registry | None = None,
                 peers: Any = None) -> None:
        self.config = config
        self.peers = peers  # edge.peer.links.PeerLinks, or None: no cross-PoP routes
        self._remote: dict[tuple[str, str], RemoteEndpoint] = {}
        self._unsubscribe: Callable[[], None] | None = None
        self._tokens = [_fingerprint(t) for t in authtokens]
        self._by_host: dict[str, LocalEndpoint] = {}
        self._by_port: dict[int, LocalEndpoint] = {}
        self._by_id: dict[str, LocalEndpoint] = {}
        self._listeners: list[Callable[[str, LocalEndpoint], None]] = []
        self.connections: set[AgentConnection] = set()
        self.registry_errors = 0   # failed registry binds/unbinds (/metrics)
        # --workers N: this process's index; the registry's binding records name it (meta.worker),
        # so every worker knows which one holds each endpoint's session (docs/workers.md).
        self.worker: int | None = None
        # A binding's options as the registry holds them for the other PoPs (the edge's module
        # chain seals what must not be stored in the clear, such as an oidc client secret).
        self.registry_options: Callable[[Mapping[str, Any]], dict[str, Any]] = dict
        # A single node's registry is a MemoryRegistry; `attach` swaps in a
        # shared one (etcd) before the first bind.
        self.registry: Registry = MemoryRegistry()
        self.attach(registry if registry is not None else self.registry, peers)

    def attach(self, registry: Registry, peers: Any = None) -> None:
        """Use a started registry (and peer links) from now on; only before
        the first bind (the names bound so far live in the old registry)."""
        if self._by_id:
            raise RuntimeError("attach a registry before the first bind")
        if self._unsubscribe is not None:
            self._unsubscribe()
        self.registry = registry
        self.peers = peers
        # Routes to other PoPs are cached; any change of the name drops it.
        self._unsubscribe = registry.subscribe(self._on_registry_event)

    # --------------------------------------------------------------- tokens

    @staticmethod
    def load_authtokens(path: str | Path) -> list[str]:
        """One token a line; blank lines and lines starting with # ignored."""
        p = Path(path)
        tokens = []
        with p.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                tok = line.strip()
                if not tok or tok.startswith("#"):
                    continue
                if len(tok) > MAX_AUTHTOKEN_LENGTH or any(c.isspace() for c in tok):
                    raise ValueError(f"{p}:{lineno}: authtoken: longer than {MAX_AUTHTOKEN_LENGTH} or contains spaces")
                tokens.append(tok)
                if len(tokens) > MAX_AUTHTOKENS:
                    raise ValueError(f"{p}:{lineno}: more than {MAX_AUTHTOKENS} authtokens")
        return tokens

    def check_authtoken(self, token: str) -> bool:
        """Constant time in the token and in which entry matches: every entry
        is compared (digests, so lengths do not leak)."""
        fp = _fingerprint(token)
        ok = False
        for known in self._tokens:
            ok |= hmac.compare_digest(fp, known)
        return ok

    # -------------------------------------------------------------- binding

    def hostname_for(self, name: str) -> str:
        return f"{name}.{self.config.domain}"

    def _normalize_host(self, key: str) -> str:
        h = key.strip().lower().rstrip(".")
        return h if "." in h else self.hostname_for(h)

    def add_listener(self, fn: Callable[[str, LocalEndpoint], None]) -> None:
        """fn("bind" | "unbind", binding) after every change (e.g. the front
        opening and closing TCP listeners)."""
        self._listeners.append(fn)

    def _notify(self, what: str, b: LocalEndpoint) -> None:
        for fn in self._listeners:
            try:
                fn(what, b)
            except Exception:
                log.exception(kv("hub_listener_failed", change=what, binding=b.binding_id))

    async def bind(self, conn: "AgentConnection", kind: str, name: str, options: Mapping[str, Any]) -> "LocalEndpoint":
        """Bind an endpoint for `conn`, through the registry (docs/registry.md
        "How the hub uses it"): the registry decides, then this PoP's tables
        follow. (The per-session limit is the control channel's rule.)
        Raises ControlError with code bad_request, name_in_use, port_range_exhausted, registry_unavailable (retryable) or
        internal; on error nothing changes."""
        opts = _validate_options(kind, options, self.config.modules)
        name = name.lower()
        host: str | None = None
        replaced: str | None = None  # the session of this PoP whose name this bind takes over
        if kind in ("http", "tls"):
            if "." in name:
                host = await self._custom_domain(name)
            elif not _LABEL.match(name):
                raise ControlError(M.ERR_BAD_REQUEST, f"name {name!r} is not a DNS label (a-z, 0-9, '-', 1-63 characters)")
            else:
                host = self.hostname_for(name)
            existing = self._by_host.get(host)
            if existing is not None and existing.connection is not conn:
                if not existing.connection.takes_over(conn):
                    raise ControlError(M.ERR_NAME_IN_USE, f"{host} is already online (bound by another agent session at this PoP)")
                # The same agent reconnected before the edge noticed the old
                # session died: the new session wins, the old one goes.
                old = existing.connection
                replaced = old.session_id
                log.info(kv("session_takeover", hostname=host, old_session=old.session_id))
                old.close()
                self.unbind_connection(old)
        elif name:
            raise ControlError(M.ERR_BAD_REQUEST, "tcp endpoints have no name; the edge allocates a port")
        try:
            rname = await self._bind_registry(conn, kind, host, opts, replaced)
        except NameTaken as exc:
            where = f"at PoP {exc.pop}" if exc.pop != self.config.pop else "at this PoP"
            raise ControlError(M.ERR_NAME_IN_USE, f"{exc.name} is already online (bound by another agent session {where})") from None
        except PortsExhausted as exc:
            raise ControlError(M.ERR_PORT_RANGE_EXHAUSTED, f"port range exhausted: {exc}") from None
        except (RegistryUnavailable, LeaseLost) as exc:
            log.warning(kv("bind_registry_unavailable", session=conn.session_id, kind=kind, error=str(exc)))
            self.registry_errors += 1
            raise ControlError(M.ERR_REGISTRY_UNAVAILABLE,
                               "the endpoint registry is unavailable (no etcd quorum?): new binds fail until it is back; "
                               "retry later") from None
        except RegistryError as exc:
            log.warning(kv("bind_registry_error", session=conn.session_id, error=str(exc)))
            self.registry_errors += 1
            raise ControlError(M.ERR_INTERNAL, f"registry error: {type(exc).__name__}") from None
        if conn.is_closed:
            # the session died while the registry answered: its lease goes with it
            raise ControlError(M.ERR_INTERNAL, "session closed")
        return self._add_local(conn, kind, host, opts, rname)

    async def _custom_domain(self, name: str) -> str:
        """A custom domain's hostname once the check says it points at the edge; else bad_request
        with the check's message (what to add to the domain's DNS)."""
        name = name.rstrip(".")
        if not _DOMAIN.match(name):
            raise ControlError(M.ERR_BAD_REQUEST, f"domain {name!r} is not a hostname (labels of a-z, 0-9, '-')")
        if name == self.config.domain or name.endswith("." + self.config.domain):
            raise ControlError(M.ERR_BAD_REQUEST, f"{name} is under the edge's endpoint domain: bind its "
                               f"name with --name instead")
        check = self.config.domain_check
        if check is None:
            raise ControlError(M.ERR_BAD_REQUEST, "this edge does not serve custom domains")
        try:
            await check(name)
        except Exception as exc:  # noqa: BLE001 - DomainError, or a resolver failure: the agent is told
            log.info(kv("custom_domain_refused", domain=name, reason=str(exc)))
            raise ControlError(M.ERR_BAD_REQUEST, str(exc)) from None
        return name

    async def _bind_registry(self, conn: "AgentConnection", kind: str, host: str | None, opts: Mapping[str, Any],
                             replaced: str | None) -> str:
        """Claim the name (or a TCP port) in the registry; returns its registry name."""
        reg = self.registry
        lease = await conn.ensure_lease()
        meta = {"kind": kind, "options": self.registry_options(opts), "takeover": conn.takeover_key or ""}
        if self.worker is not None:
            meta["worker"] = self.worker
        pop, sid = self.config.pop, conn.session_id
        if host is None:
            lo, hi = self.config.tcp_port_range
            port = await reg.allocate_port(sid, lease, lo, hi)
            try:
                await reg.bind("tcp", str(port), pop, sid, lease, meta)
            except BaseException:
                await reg.release_port(port, sid, lease)
                raise
            return str(port)
        try:
            await reg.bind("http", host, pop, sid, lease, meta)
        except NameTaken:
            held = reg.lookup("http", host)
            key = conn.takeover_key
            if held is None or not key or not hmac.compare_digest(str(held.meta.get("takeover", "")), key):
                raise
            # The same agent (agent_id and authtoken) reconnected, maybe at
            # another PoP, before its old session's lease ended.
            if held.session != replaced:  # a takeover at this PoP is logged above
                log.info(kv("session_takeover", hostname=host, old_pop=held.pop, old_session=held.session))
            await reg.take_over(held, pop, sid, lease, meta)
        return host

    def _add_local(self, conn: "AgentConnection", kind: str, host: str | None, opts: Mapping[str, Any],
                   rname: str) -> "LocalEndpoint":
        """The registry agreed: enter the endpoint in this PoP's tables."""
        bid = secrets.token_hex(8)
        if host is not None:
            b = LocalEndpoint(bid, kind, host, None, self.config.endpoint_url(kind, host), MappingProxyType(dict(opts)), conn, rname)
            self._by_host[host] = b
        else:
            port = int(rname)
            if port in self._by_port:
                raise ControlError(M.ERR_PORT_RANGE_EXHAUSTED, f"port {port} is bound at this PoP already")
            b = LocalEndpoint(bid, kind, None, port, self.config.endpoint_url(kind, str(port)), MappingProxyType(dict(opts)), conn,
                              rname)
            self._by_port[port] = b
        self._by_id[bid] = b
        conn.bindings[bid] = b
        log.info(kv("bind", session=conn.session_id, kind=kind, url=b.url, binding=bid))
        self._notify("bind", b)
        return b

    async def unbind(self, conn: "AgentConnection", binding_id: str) -> "LocalEndpoint":
        """Unbind one of `conn`'s endpoints, here and in the registry. Raises
        ControlError unknown_binding when `conn` holds no such binding."""
        b = self._by_id.get(binding_id)
        if b is None or b.connection is not conn:
            raise ControlError(M.ERR_UNKNOWN_BINDING, f"no binding {binding_id!r} on this session")
        self._drop(binding_id)
        if conn.lease is not None:
            try:
                await self.registry.unbind("tcp" if b.kind == "tcp" else "http", b.registry_name, conn.session_id,
                                           conn.lease)
            except RegistryError as exc:
                # the name stays held by this session's lease until it ends
                log.warning(kv("unbind_registry_failed", session=conn.session_id, url=b.url, error=str(exc)))
                self.registry_errors += 1
        return b

    def _drop(self, binding_id: str) -> "LocalEndpoint":
        """Forget a binding at this PoP (the registry follows by unbind or lease end)."""
        b = self._by_id.pop(binding_id)
        b.connection.binding_gone(binding_id)
        if b.hostname is not None and self._by_host.get(b.hostname) is b:
            del self._by_host[b.hostname]
        if b.port is not None and self._by_port.get(b.port) is b:
            del self._by_port[b.port]
        log.info(kv("unbind", session=b.connection.session_id, url=b.url, binding=binding_id))
        self._notify("unbind", b)
        return b

    def unbind_connection(self, conn: "AgentConnection") -> None:
        """The session ended (or lost its names): drop its bindings here; its
        lease's end removes them from the registry."""
        for bid in list(conn.bindings):
            self._drop(bid)

    def lookup(self, kind: str, key: str | int) -> LocalEndpoint | None:
        """The binding serving a connection: kind "http"/"tls" with the SNI or
        Host name (or a bare label), kind "tcp" with the port. None if no
        agent is online for it (or it is bound with another kind)."""
        b = self.local_lookup(kind, key)
        if b is not None:
            return b
        if self.peers is None:
            return None  # a single node: every endpoint it serves is local
        return self._lookup_remote(kind, key)

    def local_lookup(self, kind: str, key: str | int) -> "LocalEndpoint | None":
        """Only endpoints whose agent session is at this PoP (the peer link's
        Y side serves those)."""
        if kind == "tcp":
            try:
                b = self._by_port.get(int(key))
            except (TypeError, ValueError):
                return None
        else:
            b = self._by_host.get(self._normalize_host(str(key)))
        if b is None or b.kind != kind or b.connection.is_closed:
            return None
        return b

    def owner_worker(self, kind: str, key: str | int) -> int | None:
        """--workers: the worker of this PoP whose session holds the endpoint (kind "http" covers
        http and tls names, "tcp" a port), None when it is not bound at this PoP."""
        try:
            rkind, rname = self._registry_key(kind, key if kind == "tcp" else self._normalize_host(str(key)))
        except (TypeError, ValueError):
            return None
        rb = self.registry.lookup(rkind, rname)
        if rb is None or rb.pop != self.config.pop:
            return None
        w = rb.meta.get("worker")
        return w if isinstance(w, int) else None

    # ------------------------------------------------------- global registry

    @staticmethod
    def _registry_key(kind: str, key: str | int) -> tuple[str, str]:
        # http and tls share one name space (docs/protocol.md 3.3): both live
        # under the registry's "http" kind; meta.kind says which it is.
        if kind == "tcp":
            return "tcp", str(int(key))
        return "http", str(key)

    def _lookup_remote(self, kind: str, key: str | int) -> "RemoteEndpoint | None":
        try:
            rkind, rname = self._registry_key(kind, key if kind == "tcp" else self._normalize_host(str(key)))
        except (TypeError, ValueError):
            return None
        cached = self._remote.get((rkind, rname))
        if cached is None:
            rb = self.registry.lookup(rkind, rname)
            if rb is None or rb.pop == self.config.pop:
                return None  # not bound, or bound here by a session that is gone
            cached = RemoteEndpoint.from_registry(rb, self)
            if cached is None:
                return None
            self._remote[(rkind, rname)] = cached
        return cached if cached.kind == kind else None

    def _on_registry_event(self, ev: BindingEvent) -> None:
        self._remote.pop((ev.kind, ev.name), None)
        if ev.type != "put" or ev.binding is None:
            return
        # Taken over by another session (the agent reconnected elsewhere while
        # this PoP still held an old, half-dead session): stop serving it here.
        local = (self._by_port.get(int(ev.name)) if ev.kind == "tcp" and ev.name.isdigit()
                 else self._by_host.get(ev.name))
        if local is not None and local.registry_name == ev.name and (
                ev.binding.pop != self.config.pop or ev.binding.session != local.connection.session_id):
            log.info(kv("binding_moved", url=local.url, to_pop=ev.binding.pop, to_session=ev.binding.session))
            self._drop(local.binding_id)

    def bindings(self) -> list[LocalEndpoint]:
        return list(self._by_id.values())

    def stats(self) -> dict[str, int]:
        """Counts for the edge's metrics endpoint."""
        return {
            "sessions": len(self.connections),
            "bindings": len(self._by_id),
            "streams": sum(len(c.session.streams) for c in self.connections),
        }

    async def aclose(self) -> None:
        """close(), and end this PoP's sessions' leases (their names go now, not after a TTL)."""
        self.close()
        for conn in list(self.connections):
            if conn.lease is not None:
                try:
                    await conn.lease.close()
                except RegistryError:
                    pass
        if self._unsubscribe is not None:
            self._unsubscribe()

    def close(self) -> None:
        """Edge shutdown: go-away (normal) to every agent session and close
        it; agents reconnect elsewhere with backoff."""
        for conn in list(self.connections):
            conn.close()


def _validate_options(kind: str, options: Mapping[str, Any],
                      modules: frozenset[str] | None = None) -> dict[str, Any]:
    """docs/protocol.md 3.2: known keys only, right types. The tunnel's own
    options here; every other key belongs to a module (edge/modules/), which
    checks and normalizes it, and which must be in this edge's chain
    (`modules`, when given)."""
    if not isinstance(options, Mapping):
        raise ControlError(M.ERR_BAD_REQUEST, "options must be an object")
    out: dict[str, Any] = {}
    for key, value in options.items():
        if key == "proxy_protocol":
            if not isinstance(value, bool):
                raise ControlError(M.ERR_BAD_REQUEST, "option 'proxy_protocol' must be true or false")
            if value and kind == "http":
                raise ControlError(M.ERR_BAD_REQUEST, "http endpoints carry the client address in headers, not PROXY protocol")
        elif key == "terminate_at" and kind == "tls":
            if value not in M.TERMINATE_AT:
                raise ControlError(M.ERR_BAD_REQUEST, "option 'terminate_at' must be 'edge' or 'agent'")
        else:
            try:
                value = check_bind_option(kind, key, value)
            except KeyError:
                raise ControlError(M.ERR_BAD_REQUEST, f"option {key!r} is not valid for {kind} endpoints") from None
            except ValueError as exc:
                raise ControlError(M.ERR_BAD_REQUEST, str(exc)) from None
            owner = OPTION_OWNER[key]
            if modules is not None and owner not in modules:
                raise ControlError(M.ERR_BAD_REQUEST, f"option {key!r} needs module {owner}, which this edge does "
                                   f"not run ([edge.modules] order)")
        out[key] = value
    if kind == "tls":
        out.setdefault("terminate_at", "agent")
    return out


class AgentConnection(SessionProtocol):
    """Edge side of one agent's tunnel session: the asyncio shell around a
    `Session` (the yamux framing) and a `ControlChannel` (the rules of the
    control stream, docs/protocol.md 3). The first stream the agent opens is
    the control stream; the edge opens proxy streams (docs/protocol.md 4).
    Dies on auth timeout, heartbeat timeout, protocol error; its bindings
    die with it."""

    def __init__(self, hub: Hub, on_closed: Callable[[], None] | None = None) -> None:
        cfg = hub.config
        super().__init__(Session(client=False, config=cfg.session, name="agent", on_stream=self._on_stream,
                                 on_lost=self._on_lost), on_made=self._on_made)
        self.hub = hub
        self._on_closed = on_closed
        self.session_id = secrets.token_hex(8)
        self.peer = "?"
        self.token_fp: bytes | None = None
        self._limits = ControlLimits(cfg.auth_timeout, cfg.heartbeat_timeout_min, cfg.heartbeat_timeout_max,
                                     cfg.max_bindings_per_session)
        # made again when the transport is up (after TLS): auth_timeout runs from there
        self.control = ControlChannel(self._limits, now=asyncio.get_running_loop().time())
        self.bindings: dict[str, LocalEndpoint] = {}
        self._control: Stream | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.lease: Lease | None = None  # registry lease, opened at the first bind
        self._lease_lock = asyncio.Lock()

    # the session's face, for the hub and the shell
    @property
    def is_closed(self) -> bool:
        return self.session.is_closed

    @property
    def agent_id(self) -> str | None:
        return self.control.agent_id

    def close(self) -> None:
        """Go-away (normal), then close."""
        self.session.close()

    def abort(self) -> None:
        self.session.abort()

    @property
    def takeover_key(self) -> str | None:
        """Who may take this session's names over (docs/protocol.md 3.3): a
        digest of agent_id and the authtoken's digest, so the registry holds
        neither."""
        if self.agent_id is None or self.token_fp is None:
            return None
        return hashlib.sha256(self.agent_id.encode() + b"\0" + self.token_fp).hexdigest()

    def takes_over(self, other: "AgentConnection") -> bool:
        """Same agent process and same authtoken, reconnected."""
        return (
            self.agent_id is not None
            and other is not self
            and self.agent_id == other.agent_id
            and self.token_fp is not None
            and other.token_fp is not None
            and hmac.compare_digest(self.token_fp, other.token_fp)
        )

    def binding_gone(self, binding_id: str) -> None:
        """The hub dropped one of this session's bindings."""
        self.bindings.pop(binding_id, None)
        self.control.binding_gone(binding_id)

    async def ensure_lease(self) -> Lease:
        async with self._lease_lock:
            if self.lease is None or not self.lease.alive:
                self.lease = await self.hub.registry.open_session(self.hub.config.pop, self.session_id,
                                                                  ttl=self.hub.config.lease_ttl)
                self._tasks.append(asyncio.get_running_loop().create_task(self._watch_lease(self.lease)))
            return self.lease

    async def _watch_lease(self, lease: Lease) -> None:
        reason = await lease.wait_lost()
        if reason == "expired" and not self.is_closed:
            # Its names are gone from the registry: the agent must bind again.
            log.warning(kv("session_lease_expired", session=self.session_id))
            self.close()

    # ------------------------------------------------------- session events
    def _on_made(self, transport: asyncio.BaseTransport) -> None:
        self.hub.connections.add(self)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.session.name = self.session_id
        self.control = ControlChannel(self._limits, now=asyncio.get_running_loop().time())
        log.info(kv("agent_connected", session=self.session_id, peer=self.peer))
        self._tasks.append(asyncio.get_running_loop().create_task(self._watchdog()))

    def _on_lost(self, session: Session, exc: BaseException | None) -> None:
        self.hub.unbind_connection(self)
        self.hub.connections.discard(self)
        for t in self._tasks:
            t.cancel()
        if self.lease is not None and self.lease.alive:
            # revoke now: its names free at once on every PoP, not after a TTL
            task = asyncio.get_running_loop().create_task(_close_lease(self.lease, self.session_id))
            _BACKGROUND.add(task)
            task.add_done_callback(_BACKGROUND.discard)
        log.info(kv("agent_disconnected", session=self.session_id, peer=self.peer, error=str(exc) if exc else ""))
        if self._on_closed is not None:
            self._on_closed()

    def _on_stream(self, stream: Stream) -> None:
        if self._control is not None:
            # agents never open proxy streams (docs/protocol.md 2)
            stream.abort()
            return
        self._control = stream
        self._tasks.append(asyncio.get_running_loop().create_task(self._control_loop(stream)))

    async def _watchdog(self) -> None:
        """Close the session when the control channel's deadline passes (docs/protocol.md 3.5)."""
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            why = self.control.expired(now, self.session.last_received)
            if why == "auth_timeout":
                log.warning(kv("auth_timeout", session=self.session_id, peer=self.peer))
                self.abort()
                return
            if why == "agent_timeout":
                log.warning(kv("agent_timeout", session=self.session_id, peer=self.peer,
                               idle=f"{now - self.session.last_received:.1f}"))
                self.abort()
                return
            left = self.control.deadline(self.session.last_received) - now
            await asyncio.sleep(min(left, 1.0) + 0.01)

    # ------------------------------------------------------- control stream
    async def _control_loop(self, stream: Stream) -> None:
        ch = self.control
        try:
            while True:
                data = await stream.read()
                if not data:
                    break
                ch.receive_data(data)
                while (ev := ch.next_event()) is not NEED_DATA:
                    if isinstance(ev, ProtocolError):
                        log.warning(kv("control_protocol_error", session=self.session_id, error=ev.reason))
                        self.close()
                        return
                    stream.write(M.encode_message(await self._serve(ev)))  # type: ignore[arg-type]
                    if ch.state is State.CLOSING:
                        self.close()
                        return
        except SessionClosedError:
            return
        except Exception:
            log.exception(kv("control_failed", session=self.session_id))
        self.close()

    async def _serve(self, ev: Event) -> M.Message:
        """Do what the control channel asks; requests are served one at a
        time (a registry round trip must not let a later request overtake)."""
        ch = self.control
        if isinstance(ev, Reply):
            if ev.refused:
                log.info(kv("control_refused", session=self.session_id, type=ev.message.type,
                            code=ev.message.code))  # type: ignore[union-attr]
            return ev.message
        if isinstance(ev, AuthRequest):
            if not self.hub.check_authtoken(ev.message.authtoken):
                log.warning(kv("auth_failed", session=self.session_id, peer=self.peer))
                return ch.auth_refused()
            self.token_fp = _fingerprint(ev.message.authtoken)
            ok = ch.auth_accepted(self.session_id, self.hub.config.ingress)
            log.info(kv("agent_authenticated", session=self.session_id, peer=self.peer,
                        agent_version=ev.message.agent_version, heartbeat_timeout=f"{ch.heartbeat_timeout:.1f}"))
            return ok
        msg = ev.message  # type: ignore[union-attr]
        try:
            if isinstance(ev, BindRequest):
                b = await self.hub.bind(self, msg.kind, msg.name, msg.options)
                return ch.bind_done(b.binding_id, b.url, b.hostname, b.port)
            await self.hub.unbind(self, msg.binding_id)
            return ch.unbind_done()
        except ControlError as exc:
            log.info(kv("control_refused", session=self.session_id, type=msg.type, code=exc.code))
            return ch.request_failed(exc.code, exc.message)


_BACKGROUND: set[asyncio.Task[None]] = set()


async def _close_lease(lease: Lease, session_id: str) -> None:
    try:
        await lease.close()
    except RegistryError as exc:
        # unreachable registry: the lease expires by itself after its TTL
        log.warning(kv("lease_revoke_failed", session=session_id, error=str(exc)))


class RemoteEndpoint(Endpoint):
    """An endpoint bound at another PoP: same face as `LocalEndpoint` for the
    front, but its stream crosses the peer link to that PoP."""

    __slots__ = ("kind", "hostname", "port", "options", "pop", "session", "registry_name", "binding_id", "url", "_hub")

    def __init__(self, hub: Hub, kind: str, name: str, pop: str, session: str, options: Mapping[str, Any]) -> None:
        self._hub = hub
        self.kind = kind
        self.registry_name = name
        self.hostname = name if kind != "tcp" else None
        self.port = int(name) if kind == "tcp" else None
        self.options = MappingProxyType(dict(options))
        self.pop = pop
        self.session = session
        self.binding_id = f"{pop}/{session}"
        self.url = hub.config.endpoint_url(kind, name)

    @classmethod
    def from_registry(cls, rb: Binding, hub: Hub) -> "RemoteEndpoint | None":
        meta = rb.meta
        kind = meta.get("kind", "tcp" if rb.kind == "tcp" else "http")
        opts = meta.get("options", {})
        if kind not in M.KINDS or not isinstance(opts, Mapping):
            return None
        return cls(hub, kind, rb.name, rb.pop, rb.session, opts)

    async def open_stream(self, client_addr: str, client_port: int, *, sni: str | None = None,
                          tls_terminated: bool = False) -> Stream:
        """The stream to the agent, through the peer link (PeerUnavailable when there is none)."""
        from edge.peer.header import PeerHeader

        header = PeerHeader(kind=self.kind, endpoint=self.registry_name, session=self.session,
                            client_addr=client_addr, client_port=client_port, sni=sni,
                            tls_terminated=tls_terminated)
        return await self._hub.peers.open_stream(self.pop, header)


def agent_protocol_factory(hub: Hub) -> Callable[..., asyncio.Protocol]:
    """Protocol factory for agents' TLS connections (SNI connect.<zone>):
    `loop.connect_accepted_socket(agent_protocol_factory(hub), sock, ssl=ctx)`.
    `factory(on_closed=fn)`: fn() once the session is gone (the edge's
    connection count)."""

    def factory(on_closed: Callable[[], None] | None = None) -> asyncio.Protocol:
        return AgentConnection(hub, on_closed)

    return factory
