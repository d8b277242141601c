"""The edge's registry of agent sessions and the endpoints they bind.

Owns: authtokens (checked in constant time), bind/unbind of endpoints
(unique hostnames for http/tls, TCP ports allocated from a range), the
lookup the edge front uses to route a connection, and the edge side of an
agent's tunnel session (`agent_protocol_factory`: auth, binds, heartbeats,
proxy streams). Must not touch: listeners, TLS contexts, HTTP (edge/front/).

This registry is in memory (one edge node). The etcd registry of a later
issue implements the same interface: `bind`, `unbind`, `unbind_session`,
`lookup`, `bindings`, `add_listener`, `stats`, `close`.

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
import ipaddress
import logging
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping

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

    def __post_init__(self) -> None:
        lo, hi = self.tcp_port_range
        if not (1 <= lo <= hi <= 65535):
            raise ValueError(f"tcp_port_range {lo}-{hi} is not a valid port range")


@dataclass(frozen=True, eq=False)
class Binding:
    """One endpoint bound by an agent session."""

    binding_id: str
    kind: str  # http | tls | tcp
    hostname: str | None  # http/tls: demo.app.lab.test
    port: int | None  # tcp: the allocated port
    url: str
    options: Mapping[str, Any]  # validated, read-only (docs/protocol.md 3.2)
    connection: "AgentConnection" = field(repr=False)

    @property
    def proxy_protocol(self) -> bool:
        return bool(self.options.get("proxy_protocol", False))

    @property
    def terminate_at(self) -> str | None:
        return self.options.get("terminate_at")

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

    def __init__(self, config: HubConfig, authtokens: Iterable[str] = ()) -> None:
        self.config = config
        self._tokens = [_fingerprint(t) for t in authtokens]
        self._by_host: dict[str, Binding] = {}
        self._by_port: dict[int, Binding] = {}
        self._by_id: dict[str, Binding] = {}
        self._listeners: list[Callable[[str, Binding], None]] = []
        self.connections: set[AgentConnection] = set()

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

    def bind(self, conn: "AgentConnection", kind: str, name: str, options: Mapping[str, Any]) -> Binding:
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
            b = Binding(bid, kind, host, None, url, MappingProxyType(opts), conn)
            self._by_host[host] = b
        else:
            if name:
                raise ControlError(M.ERR_BAD_REQUEST, "tcp endpoints have no name; the edge allocates a port")
            port = self._free_port()
            host = self.config.tcp_host or self.config.domain
            b = Binding(bid, kind, None, port, f"tcp://{host}:{port}", MappingProxyType(opts), conn)
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

    def bindings(self) -> list[Binding]:
        return list(self._by_id.values())

    def stats(self) -> dict[str, int]:
        """Counts for the edge's metrics endpoint."""
        return {
            "sessions": len(self.connections),
            "bindings": len(self._by_id),
            "streams": sum(len(c.streams) for c in self.connections),
        }

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
            return M.AuthOk(msg.id, self.session_id)
        if not self.authenticated:
            return M.Error(msg.id, M.ERR_NOT_AUTHENTICATED, "the first message must be auth")
        try:
            if isinstance(msg, M.Heartbeat):
                return M.HeartbeatOk(msg.id)
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


def agent_protocol_factory(hub: Hub) -> Callable[[], asyncio.Protocol]:
    """Protocol factory for agents' TLS connections (SNI connect.<zone>):
    `loop.connect_accepted_socket(agent_protocol_factory(hub), sock, ssl=ctx)`."""

    def factory() -> asyncio.Protocol:
        return AgentConnection(hub)

    return factory
