"""The edge's registry of agent sessions and the endpoints they bind.

Owns: authtokens (checked in constant time), bind/unbind of endpoints
(unique hostnames for http/tls, TCP ports allocated from a range), the
lookup the edge front uses to route a connection, and the edge side of an
agent's tunnel session (`agent_protocol_factory`: auth, binds, heartbeats,
proxy streams). Must not touch: listeners, TLS contexts, HTTP (edge/front/).

The hub's own tables hold the endpoints bound *at this PoP* (their agent
sessions are here). With a `registry` (edge/registry/, in memory or etcd),
every bind also goes through it first, so a name is unique across all PoPs
and TCP ports are allocated globally; `lookup` then answers for endpoints
bound at other PoPs too, with a `RemoteBinding` whose stream crosses the
peer link (edge/peer/). Without a registry (unit tests, tools) the hub is
the single-node registry it always was.

Usage by the front:

    hub = Hub(HubConfig(domain="app.lab.test"), Hub.load_authtokens(path))
    factory = agent_protocol_factory(hub)
    await loop.connect_accepted_socket(factory, sock, ssl=ctx)   # SNI connect.<zone>
    ...
    binding = hub.lookup("http", "demo.app.lab.test")   # or ("tcp", 20001)
    if binding is None: answer 404 / close
    stream = binding.open_stream(client_addr="198.19.5.10", client_port=51234, sni=...)
    stream.set_protocol(relay)        # Stream is shaped like an asyncio.Transport
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import ipaddress
import logging
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping

from edge.registry import LeaseLost, NameTaken, PortsExhausted, RegistryError, RegistryUnavailable
from edge.registry.model import BindingEvent
from edge.tunnel import messages as M
from edge.tunnel.errors import ControlError, MessageError, SessionClosedError
from edge.tunnel.session import Session, SessionConfig, Stream

log = logging.getLogger("edge.hub")

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
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

    def __post_init__(self) -> None:
        lo, hi = self.tcp_port_range
        if not (1 <= lo <= hi <= 65535):
            raise ValueError(f"tcp_port_range {lo}-{hi} is not a valid port range")


class _EndpointOptions:
    """What the front reads from a binding's options, local or remote alike."""

    __slots__ = ()
    options: Mapping[str, Any]

    @property
    def proxy_protocol(self) -> bool:
        return bool(self.options.get("proxy_protocol", False))

    @property
    def terminate_at(self) -> str | None:
        return self.options.get("terminate_at")


@dataclass(frozen=True, eq=False)
class Binding(_EndpointOptions):
    """One endpoint bound by an agent session."""

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


    def open_stream(
        self,
        client_addr: str,
        client_port: int,
        *,
        sni: str | None = None,
        tls_terminated: bool = False,
    ) -> Stream:
        """Open a proxy stream to the agent and write its header; returns at
        once (no round trip). Raises SessionClosedError if the agent is gone.
        The caller writes the PROXY v2 header next if `proxy_protocol`."""
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
        stream = self.connection.open_stream()
        stream.extra["binding"] = self
        stream.extra["peername"] = (client_addr, client_port)
        stream.write(header.encode())
        return stream


def _fingerprint(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Hub:
    """In-memory registry of bindings (see module docstring)."""

    def __init__(self, config: HubConfig, authtokens: Iterable[str] = (), *, registry: Any = None,
                 peers: Any = None) -> None:
        self.config = config
        self.registry = registry  # edge.registry.Registry, or None: this hub alone
        self.peers = peers  # edge.peer.links.PeerLinks, or None: no cross-PoP routes
        self._remote: dict[tuple[str, str], RemoteBinding] = {}
        self._unsubscribe: Callable[[], None] | None = None
        self._tokens = [_fingerprint(t) for t in authtokens]
        self._by_host: dict[str, Binding] = {}
        self._by_port: dict[int, Binding] = {}
        self._by_id: dict[str, Binding] = {}
        self._listeners: list[Callable[[str, Binding], None]] = []
        self.connections: set[AgentConnection] = set()
        if registry is not None:
            self.attach(registry, peers)

    def attach(self, registry: Any, peers: Any = None) -> None:
        """Use a started registry (and peer links) from now on."""
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

    def set_authtokens(self, tokens: Iterable[str]) -> None:
        self._tokens = [_fingerprint(t) for t in tokens]

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

    def add_listener(self, fn: Callable[[str, Binding], None]) -> None:
        """fn("bind" | "unbind", binding) after every change (e.g. the front
        opening and closing TCP listeners)."""
        self._listeners.append(fn)

    def _notify(self, what: str, b: Binding) -> None:
        for fn in self._listeners:
            try:
                fn(what, b)
            except Exception:
                log.exception("event=hub_listener_failed change=%s binding=%s", what, b.binding_id)

    def bind(self, conn: "AgentConnection", kind: str, name: str, options: Mapping[str, Any], *,
             port: int | None = None, registry_name: str | None = None) -> Binding:
        """Bind an endpoint for `conn`. Raises ControlError with code
        name_in_use, port_range_exhausted, too_many_bindings or bad_request;
        on error nothing changes."""
        opts = _validate_options(kind, options)
        if len(conn.bindings) >= self.config.max_bindings_per_session:
            raise ControlError(M.ERR_TOO_MANY_BINDINGS, f"at most {self.config.max_bindings_per_session} endpoints per session")
        bid = secrets.token_hex(8)
        if kind in ("http", "tls"):
            name = name.lower()
            if not _LABEL.match(name):
                raise ControlError(M.ERR_BAD_REQUEST, f"name {name!r} is not a DNS label (a-z, 0-9, '-', 1-63 characters)")
            host = self.hostname_for(name)
            existing = self._by_host.get(host)
            if existing is not None:
                if existing.connection.takes_over(conn):
                    # the same agent reconnected before the edge noticed the
                    # old session died: the new session wins
                    log.info("event=session_takeover hostname=%s old_session=%s", host, existing.connection.session_id)
                    existing.connection.close()
                    self.unbind_connection(existing.connection)
                else:
                    raise ControlError(M.ERR_NAME_IN_USE, f"{host} is already online (bound by another agent session)")
            url = f"https://{host}" if kind == "http" else f"tls://{host}:443"
            b = Binding(bid, kind, host, None, url, MappingProxyType(opts), conn, registry_name)
            self._by_host[host] = b
        else:
            if name:
                raise ControlError(M.ERR_BAD_REQUEST, "tcp endpoints have no name; the edge allocates a port")
            if port is None:
                port = self._free_port()
            elif port in self._by_port:
                raise ControlError(M.ERR_PORT_RANGE_EXHAUSTED, f"port {port} is bound at this PoP already")
            host = self.config.tcp_host or self.config.domain
            b = Binding(bid, kind, None, port, f"tcp://{host}:{port}", MappingProxyType(opts), conn, registry_name)
            self._by_port[port] = b
        self._by_id[bid] = b
        conn.bindings[bid] = b
        log.info("event=bind session=%s kind=%s url=%s binding=%s", conn.session_id, kind, b.url, bid)
        self._notify("bind", b)
        return b

    def _free_port(self) -> int:
        lo, hi = self.config.tcp_port_range
        for port in range(lo, hi + 1):
            if port not in self._by_port:
                return port
        raise ControlError(M.ERR_PORT_RANGE_EXHAUSTED, f"every TCP port in {lo}-{hi} is bound")

    def unbind(self, binding_id: str, conn: "AgentConnection | None" = None) -> Binding:
        b = self._by_id.get(binding_id)
        if b is None or (conn is not None and b.connection is not conn):
            raise ControlError(M.ERR_UNKNOWN_BINDING, f"no binding {binding_id!r} on this session")
        del self._by_id[binding_id]
        b.connection.bindings.pop(binding_id, None)
        if b.hostname is not None and self._by_host.get(b.hostname) is b:
            del self._by_host[b.hostname]
        if b.port is not None and self._by_port.get(b.port) is b:
            del self._by_port[b.port]
        log.info("event=unbind session=%s url=%s binding=%s", b.connection.session_id, b.url, binding_id)
        self._notify("unbind", b)
        return b

    def unbind_connection(self, conn: "AgentConnection") -> None:
        for bid in list(conn.bindings):
            self.unbind(bid)

    def lookup(self, kind: str, key: str | int) -> Binding | None:
        """The binding serving a connection: kind "http"/"tls" with the SNI or
        Host name (or a bare label), kind "tcp" with the port. None if no
        agent is online for it (or it is bound with another kind)."""
        b = self.local_lookup(kind, key)
        if b is not None:
            return b
        if self.registry is None or self.peers is None:
            return None
        return self._lookup_remote(kind, key)

    def local_lookup(self, kind: str, key: str | int) -> "Binding | None":
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

    # ------------------------------------------------------- global registry

    @staticmethod
    def _registry_key(kind: str, key: str | int) -> tuple[str, str]:
        # http and tls share one name space (docs/protocol.md 3.3): both live
        # under the registry's "http" kind; meta.kind says which it is.
        if kind == "tcp":
            return "tcp", str(int(key))
        return "http", str(key)

    def _lookup_remote(self, kind: str, key: str | int) -> "RemoteBinding | None":
        try:
            rkind, rname = self._registry_key(kind, key if kind == "tcp" else self._normalize_host(str(key)))
        except (TypeError, ValueError):
            return None
        cached = self._remote.get((rkind, rname))
        if cached is None:
            rb = self.registry.lookup(rkind, rname)
            if rb is None or rb.pop == self.config.pop:
                return None  # not bound, or bound here by a session that is gone
            cached = RemoteBinding.from_registry(rb, self)
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
            log.info("event=binding_moved url=%s to_pop=%s to_session=%s", local.url, ev.binding.pop,
                     ev.binding.session)
            self.unbind(local.binding_id)

    async def bind_global(self, conn: "AgentConnection", msg: M.Bind) -> M.Message:
        """A bind through the registry (docs/registry.md "How the hub uses it"):
        the registry decides, then the local tables follow. Errors are control
        errors for the agent; RegistryUnavailable is retryable."""
        kind = msg.kind
        try:
            opts = _validate_options(kind, msg.options)
            if len(conn.bindings) >= self.config.max_bindings_per_session:
                raise ControlError(M.ERR_TOO_MANY_BINDINGS,
                                   f"at most {self.config.max_bindings_per_session} endpoints per session")
            name = msg.name.lower()
            if kind in ("http", "tls"):
                if not _LABEL.match(name):
                    raise ControlError(M.ERR_BAD_REQUEST, f"name {name!r} is not a DNS label (a-z, 0-9, '-', 1-63 characters)")
                host = self.hostname_for(name)
                existing = self._by_host.get(host)
                if existing is not None and existing.connection is not conn and not existing.connection.takes_over(conn):
                    raise ControlError(M.ERR_NAME_IN_USE, f"{host} is already online (bound by another agent session at this PoP)")
            elif name:
                raise ControlError(M.ERR_BAD_REQUEST, "tcp endpoints have no name; the edge allocates a port")
            lease = await conn.ensure_lease()
            meta = {"kind": kind, "options": dict(opts), "takeover": conn.takeover_key or ""}
            reg = self.registry
            pop, sid = self.config.pop, conn.session_id
            if kind == "tcp":
                lo, hi = self.config.tcp_port_range
                port = await reg.allocate_port(sid, lease, lo, hi)
                try:
                    await reg.bind("tcp", str(port), pop, sid, lease, meta)
                except BaseException:
                    await reg.release_port(port, sid, lease)
                    raise
                rname = str(port)
            else:
                rname = host
                try:
                    await reg.bind("http", host, pop, sid, lease, meta)
                except NameTaken:
                    held = reg.lookup("http", host)
                    key = conn.takeover_key
                    if held is None or not key or not hmac.compare_digest(str(held.meta.get("takeover", "")), key):
                        raise
                    # The same agent (agent_id and authtoken) reconnected, maybe
                    # at another PoP, before its old session's lease ended.
                    log.info("event=session_takeover hostname=%s old_pop=%s old_session=%s", host, held.pop,
                             held.session)
                    await reg.take_over(held, pop, sid, lease, meta)
        except ControlError as exc:
            return M.Error(msg.id, exc.code, exc.message)
        except NameTaken as exc:
            where = f"at PoP {exc.pop}" if exc.pop != self.config.pop else "at this PoP"
            return M.Error(msg.id, M.ERR_NAME_IN_USE, f"{exc.name} is already online (bound by another agent session {where})")
        except PortsExhausted as exc:
            return M.Error(msg.id, M.ERR_PORT_RANGE_EXHAUSTED, f"port range exhausted: {exc}")
        except (RegistryUnavailable, LeaseLost) as exc:
            log.warning("event=bind_registry_unavailable session=%s kind=%s error=%r", conn.session_id, kind, str(exc))
            return M.Error(msg.id, M.ERR_REGISTRY_UNAVAILABLE,
                           "the endpoint registry is unavailable (no etcd quorum?): new binds fail until it is back; "
                           "retry later")
        except RegistryError as exc:
            log.warning("event=bind_registry_error session=%s error=%r", conn.session_id, str(exc))
            return M.Error(msg.id, M.ERR_INTERNAL, f"registry error: {type(exc).__name__}")
        if conn.is_closed:
            # the session died while the registry answered: its lease goes with it
            return M.Error(msg.id, M.ERR_INTERNAL, "session closed")
        # Local tables: the same code as a single node, now that the registry agreed.
        try:
            b = self.bind(conn, kind, name, opts, port=int(rname) if kind == "tcp" else None, registry_name=rname)
        except ControlError as exc:
            return M.Error(msg.id, exc.code, exc.message)
        return M.BindOk(msg.id, b.binding_id, b.url, b.hostname, b.port)

    async def unbind_global(self, conn: "AgentConnection", msg: M.Unbind) -> M.Message:
        try:
            b = self.unbind(msg.binding_id, conn)
        except ControlError as exc:
            return M.Error(msg.id, exc.code, exc.message)
        if conn.lease is not None and b.registry_name is not None:
            try:
                await self.registry.unbind("tcp" if b.kind == "tcp" else "http", b.registry_name,
                                           conn.session_id, conn.lease)
            except RegistryError as exc:
                # the name stays held by this session's lease until it ends
                log.warning("event=unbind_registry_failed session=%s url=%s error=%r", conn.session_id, b.url, str(exc))
        return M.UnbindOk(msg.id)

    def bindings(self) -> list[Binding]:
        return list(self._by_id.values())

    def stats(self) -> dict[str, int]:
        """Counts for the edge's metrics endpoint."""
        return {
            "sessions": len(self.connections),
            "bindings": len(self._by_id),
            "streams": sum(len(c.streams) for c in self.connections),
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


def _validate_options(kind: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """docs/protocol.md 3.2: known keys only, right types."""
    if not isinstance(options, Mapping):
        raise ControlError(M.ERR_BAD_REQUEST, "options must be an object")
    allowed = {"proxy_protocol", "allow_cidrs", "deny_cidrs"}
    if kind == "tls":
        allowed.add("terminate_at")
    out: dict[str, Any] = {}
    for key, value in options.items():
        if key not in allowed:
            raise ControlError(M.ERR_BAD_REQUEST, f"option {key!r} is not valid for {kind} endpoints")
        if key == "proxy_protocol":
            if not isinstance(value, bool):
                raise ControlError(M.ERR_BAD_REQUEST, "option 'proxy_protocol' must be true or false")
            if value and kind == "http":
                raise ControlError(M.ERR_BAD_REQUEST, "http endpoints carry the client address in headers, not PROXY protocol")
        elif key == "terminate_at":
            if value not in M.TERMINATE_AT:
                raise ControlError(M.ERR_BAD_REQUEST, "option 'terminate_at' must be 'edge' or 'agent'")
        else:
            if not isinstance(value, list) or len(value) > 256:
                raise ControlError(M.ERR_BAD_REQUEST, f"option {key!r} must be a list of at most 256 CIDRs")
            try:
                value = [str(ipaddress.ip_network(v, strict=False)) for v in value]
            except (TypeError, ValueError) as exc:
                raise ControlError(M.ERR_BAD_REQUEST, f"option {key!r}: {exc}") from None
        out[key] = value
    if kind == "tls":
        out.setdefault("terminate_at", "agent")
    return out


class AgentConnection(Session):
    """Edge side of one agent's tunnel session: the first stream the agent
    opens is the control stream (docs/protocol.md 3); the edge opens proxy
    streams (docs/protocol.md 4). Dies on auth timeout, heartbeat timeout,
    protocol error; its bindings die with it."""

    def __init__(self, hub: Hub) -> None:
        super().__init__(client=False, config=hub.config.session, name="agent")
        self.hub = hub
        self.on_stream = self._on_stream
        self.session_id = secrets.token_hex(8)
        self.agent_id: str | None = None
        self.token_fp: bytes | None = None
        self.authenticated = False
        self.heartbeat_timeout = hub.config.heartbeat_timeout_max  # set by auth
        self.bindings: dict[str, Binding] = {}
        self._control: Stream | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.lease: Any = None  # registry lease, opened at the first bind
        self._lease_lock = asyncio.Lock()

    @property
    def takeover_key(self) -> str | None:
        """Who may take this session's names over (docs/protocol.md 3.3): a
        digest of agent_id and the authtoken's digest, so the registry holds
        neither."""
        if self.agent_id is None or self.token_fp is None:
            return None
        return hashlib.sha256(self.agent_id.encode() + b"\0" + self.token_fp).hexdigest()

    async def ensure_lease(self) -> Any:
        async with self._lease_lock:
            if self.lease is None or not self.lease.alive:
                self.lease = await self.hub.registry.open_session(self.hub.config.pop, self.session_id,
                                                                  ttl=self.hub.config.lease_ttl)
                self._tasks.append(self._loop.create_task(self._watch_lease(self.lease)))
            return self.lease

    async def _watch_lease(self, lease: Any) -> None:
        reason = await lease.wait_lost()
        if reason == "expired" and not self.is_closed:
            # Its names are gone from the registry: the agent must bind again.
            log.warning("event=session_lease_expired session=%s", self.session_id)
            self.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.hub.connections.add(self)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.name = self.session_id
        log.info("event=agent_connected session=%s peer=%s", self.session_id, self.peer)
        self._tasks.append(self._loop.create_task(self._watchdog()))

    def connection_lost(self, exc: BaseException | None) -> None:
        self.hub.unbind_connection(self)
        self.hub.connections.discard(self)
        for t in self._tasks:
            t.cancel()
        if self.lease is not None and self.lease.alive:
            # revoke now: its names free at once on every PoP, not after a TTL
            lease = self.lease
            task = self._loop.create_task(_close_lease(lease, self.session_id))
            _BACKGROUND.add(task)
            task.add_done_callback(_BACKGROUND.discard)
        log.info("event=agent_disconnected session=%s peer=%s error=%r", self.session_id, self.peer, str(exc) if exc else "")
        super().connection_lost(exc)

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

    def _on_stream(self, stream: Stream) -> None:
        if self._control is not None:
            # agents never open proxy streams (docs/protocol.md 2)
            stream.abort()
            return
        self._control = stream
        self._tasks.append(self._loop.create_task(self._control_loop(stream)))

    async def _watchdog(self) -> None:
        """Before auth: auth_timeout from connect, whatever arrives (pings do
        not keep an unauthenticated session alive). After: no frame at all
        for heartbeat_timeout -> the session is dead (docs/protocol.md 3.5)."""
        deadline = self._loop.time() + self.hub.config.auth_timeout
        while True:
            now = self._loop.time()
            if not self.authenticated:
                left = deadline - now
                if left <= 0:
                    log.warning("event=auth_timeout session=%s peer=%s", self.session_id, self.peer)
                    self.abort()
                    return
            else:
                idle = now - self.last_received
                left = self.heartbeat_timeout - idle
                if left <= 0:
                    log.warning("event=agent_timeout session=%s peer=%s idle=%.1f", self.session_id, self.peer, idle)
                    self.abort()
                    return
            await asyncio.sleep(min(left, 1.0) + 0.01)

    async def _control_loop(self, stream: Stream) -> None:
        reader = M.MessageReader()
        try:
            while True:
                data = await stream.read()
                if not data:
                    break
                for obj in reader.feed(data):
                    reply = self._handle(obj)
                    if inspect.isawaitable(reply):
                        reply = await reply  # a registry round trip; requests stay in order
                    stream.write(M.encode_message(reply))
                    if isinstance(reply, M.Error) and reply.code == M.ERR_AUTH_FAILED:
                        self.close()
                        return
        except MessageError as exc:
            log.warning("event=control_protocol_error session=%s error=%r", self.session_id, str(exc))
        except SessionClosedError:
            return
        except Exception:
            log.exception("event=control_failed session=%s", self.session_id)
        self.close()

    def _handle(self, obj: dict[str, Any]) -> M.Message:
        mid = obj.get("id") if isinstance(obj.get("id"), int) and not isinstance(obj.get("id"), bool) else 0
        try:
            msg = M.parse_message(obj)
        except MessageError as exc:
            return M.Error(mid, M.ERR_BAD_REQUEST, str(exc))
        if isinstance(msg, M.Auth):
            if self.authenticated:
                return M.Error(msg.id, M.ERR_BAD_REQUEST, "already authenticated")
            if not self.hub.check_authtoken(msg.authtoken):
                log.warning("event=auth_failed session=%s peer=%s", self.session_id, self.peer)
                return M.Error(msg.id, M.ERR_AUTH_FAILED, "the authtoken is not valid on this edge")
            self.authenticated = True
            self.token_fp = _fingerprint(msg.authtoken)
            self.agent_id = msg.agent_id or None
            cfg = self.hub.config
            self.heartbeat_timeout = min(max(msg.heartbeat_timeout, cfg.heartbeat_timeout_min), cfg.heartbeat_timeout_max)
            log.info(
                "event=agent_authenticated session=%s peer=%s agent_version=%s heartbeat_timeout=%.1f",
                self.session_id, self.peer, msg.agent_version, self.heartbeat_timeout,
            )
            return M.AuthOk(msg.id, self.session_id, ingress=[dict(e) for e in cfg.ingress] or None)
        if not self.authenticated:
            return M.Error(msg.id, M.ERR_NOT_AUTHENTICATED, "the first message must be auth")
        try:
            if isinstance(msg, M.Heartbeat):
                return M.HeartbeatOk(msg.id)
            if isinstance(msg, M.Bind) and self.hub.registry is not None:
                return self.hub.bind_global(self, msg)  # type: ignore[return-value]
            if isinstance(msg, M.Unbind) and self.hub.registry is not None:
                return self.hub.unbind_global(self, msg)  # type: ignore[return-value]
            if isinstance(msg, M.Bind):
                b = self.hub.bind(self, msg.kind, msg.name, msg.options)
                return M.BindOk(msg.id, b.binding_id, b.url, b.hostname, b.port)
            if isinstance(msg, M.Unbind):
                self.hub.unbind(msg.binding_id, self)
                return M.UnbindOk(msg.id)
        except ControlError as exc:
            log.info("event=control_refused session=%s type=%s code=%s", self.session_id, msg.type, exc.code)
            return M.Error(msg.id, exc.code, exc.message)
        return M.Error(msg.id, M.ERR_BAD_REQUEST, f"{msg.type} is not a request the edge serves")


_BACKGROUND: set[asyncio.Task[None]] = set()


async def _close_lease(lease: Any, session_id: str) -> None:
    try:
        await lease.close()
    except RegistryError as exc:
        # unreachable registry: the lease expires by itself after its TTL
        log.warning("event=lease_revoke_failed session=%s error=%r", session_id, str(exc))


class RemoteBinding(_EndpointOptions):
    """An endpoint bound at another PoP: same face as `Binding` for the front,
    but its stream crosses the peer link to that PoP (an awaitable open)."""

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
        tcp_host = hub.config.tcp_host or hub.config.domain
        self.url = f"tcp://{tcp_host}:{name}" if kind == "tcp" else f"https://{name}"

    @classmethod
    def from_registry(cls, rb: Any, hub: Hub) -> "RemoteBinding | None":
        meta = rb.meta
        kind = meta.get("kind", "tcp" if rb.kind == "tcp" else "http")
        opts = meta.get("options", {})
        if kind not in M.KINDS or not isinstance(opts, Mapping):
            return None
        return cls(hub, kind, rb.name, rb.pop, rb.session, opts)


    def open_stream(self, client_addr: str, client_port: int, *, sni: str | None = None,
                    tls_terminated: bool = False) -> Any:
        """An awaitable of the stream to the agent, through the peer link."""
        from edge.peer.header import PeerHeader

        header = PeerHeader(kind=self.kind, endpoint=self.registry_name, session=self.session,
                            client_addr=client_addr, client_port=client_port, sni=sni,
                            tls_terminated=tls_terminated)
        return self._hub.peers.open_stream(self.pop, header)


def agent_protocol_factory(hub: Hub) -> Callable[[], asyncio.Protocol]:
    """Protocol factory for agents' TLS connections (SNI connect.<zone>):
    `loop.connect_accepted_socket(agent_protocol_factory(hub), sock, ssl=ctx)`."""

    def factory() -> asyncio.Protocol:
        return AgentConnection(hub)

    return factory
