"""Control messages and proxy-stream headers (docs/protocol.md, sections 3-4).

Both are JSON objects framed the same way on a yamux stream:

    Length (32 bits, big-endian, 1..65536) | UTF-8 JSON object of Length bytes

Owns: that framing (sans-IO `MessageReader`), the typed messages and their
validation. Must not touch: sockets, the hub, the agent.
"""
from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass, field
from typing import Any, Union

from edge.tunnel.errors import MessageError

MAX_MESSAGE_SIZE = 64 * 1024
_LEN = struct.Struct(">I")

KINDS = ("http", "tls", "tcp")
TERMINATE_AT = ("edge", "agent")
PROTOCOL_VERSION = 1

# error codes carried by Error messages (docs/protocol.md, 3.4)
ERR_AUTH_FAILED = "auth_failed"
ERR_NAME_IN_USE = "name_in_use"
ERR_PORT_RANGE_EXHAUSTED = "port_range_exhausted"
ERR_BAD_REQUEST = "bad_request"
ERR_NOT_AUTHENTICATED = "not_authenticated"
ERR_UNKNOWN_BINDING = "unknown_binding"
ERR_TOO_MANY_BINDINGS = "too_many_bindings"
ERR_INTERNAL = "internal_error"
ERR_REGISTRY_UNAVAILABLE = "registry_unavailable"


def encode(obj: dict[str, Any]) -> bytes:
    """Frame one JSON object: 4-byte length, then compact UTF-8 JSON."""
    body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    if len(body) > MAX_MESSAGE_SIZE:
        raise ValueError(f"message of {len(body)} bytes exceeds {MAX_MESSAGE_SIZE}")
    return _LEN.pack(len(body)) + body


class MessageReader:
    """Sans-IO reader of length-prefixed JSON objects.

    `feed(data)` returns the complete objects so far; a partial one waits for
    more bytes. Bytes after `max_messages` objects are kept in `rest` (a proxy
    stream's payload after its header)."""

    def __init__(self, max_messages: int | None = None) -> None:
        self._buf = bytearray()
        self._max = max_messages
        self._count = 0

    @property
    def done(self) -> bool:
        return self._max is not None and self._count >= self._max

    @property
    def rest(self) -> bytes:
        return bytes(self._buf)

    @property
    def pending(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buf += data
        out: list[dict[str, Any]] = []
        while not self.done and len(self._buf) >= 4:
            (n,) = _LEN.unpack_from(self._buf, 0)
            if n == 0 or n > MAX_MESSAGE_SIZE:
                raise MessageError(f"message length {n} outside 1..{MAX_MESSAGE_SIZE}")
            if len(self._buf) < 4 + n:
                break
            body = bytes(self._buf[4 : 4 + n])
            del self._buf[: 4 + n]
            try:
                obj = json.loads(body.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as exc:
                raise MessageError(f"message is not UTF-8 JSON: {exc}") from None
            except RecursionError:
                # 64 KiB of "[" nests deeper than the json module recurses: a
                # framing error like any other bad body, not an edge fault.
                raise MessageError("message is not a JSON object (nested too deep)") from None
            if not isinstance(obj, dict):
                raise MessageError("message is not a JSON object")
            self._count += 1
            out.append(obj)
        if len(self._buf) > 4 + MAX_MESSAGE_SIZE and not self.done:
            raise MessageError("message buffer overflow")
        return out


# ------------------------------------------------------------ typed messages


def _get(obj: dict[str, Any], key: str, typ: type | tuple[type, ...], *, optional: bool = False, default: Any = None) -> Any:
    if key not in obj or obj[key] is None:
        if optional:
            return default
        raise MessageError(f"{obj.get('type', 'message')}: missing {key!r}")
    value = obj[key]
    # bool is an int subclass: never accept it where a number is meant
    if isinstance(value, bool) and bool not in (typ if isinstance(typ, tuple) else (typ,)):
        raise MessageError(f"{obj.get('type', 'message')}: {key!r} has the wrong type")
    if not isinstance(value, typ):
        raise MessageError(f"{obj.get('type', 'message')}: {key!r} has the wrong type")
    return value


def _id(obj: dict[str, Any]) -> int:
    mid = _get(obj, "id", int)
    if not 0 <= mid <= 2**53:
        raise MessageError("message id out of range")
    return mid


@dataclass(frozen=True, slots=True)
class Auth:
    """agent -> edge, first message on the control stream."""

    id: int
    authtoken: str = field(repr=False)  # a secret: never in reprs or logs
    agent_version: str
    heartbeat_interval: float
    heartbeat_timeout: float
    agent_id: str = ""  # random per agent process: lets a reconnect take over its own names
    type: str = "auth"


@dataclass(frozen=True, slots=True)
class AuthOk:
    id: int
    session_id: str
    type: str = "auth_ok"
    # Other ingresses of the edge network, for when this PoP is gone and DNS
    # still names it (docs/protocol.md 3.6): [{"pop", "name", "addresses"}].
    ingress: list[dict[str, Any]] | None = None


@dataclass(frozen=True, slots=True)
class Bind:
    """agent -> edge: publish an endpoint. `name` is a DNS label (http, tls),
    a hostname with a dot (http, tls: a custom domain, docs/acme-dns.md) or
    empty (tcp). `options` see docs/protocol.md 3.2."""

    id: int
    kind: str
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    type: str = "bind"


@dataclass(frozen=True, slots=True)
class BindOk:
    id: int
    binding_id: str
    url: str
    hostname: str | None = None
    port: int | None = None
    type: str = "bind_ok"


@dataclass(frozen=True, slots=True)
class Unbind:
    id: int
    binding_id: str
    type: str = "unbind"


@dataclass(frozen=True, slots=True)
class UnbindOk:
    id: int
    type: str = "unbind_ok"


@dataclass(frozen=True, slots=True)
class Heartbeat:
    id: int
    type: str = "heartbeat"


@dataclass(frozen=True, slots=True)
class HeartbeatOk:
    id: int
    type: str = "heartbeat_ok"


@dataclass(frozen=True, slots=True)
class Error:
    id: int
    code: str
    message: str
    type: str = "error"


Message = Union[Auth, AuthOk, Bind, BindOk, Unbind, UnbindOk, Heartbeat, HeartbeatOk, Error]


def to_dict(msg: Message) -> dict[str, Any]:
    d = asdict(msg)
    return {k: v for k, v in d.items() if v is not None}


def encode_message(msg: Message) -> bytes:
    return encode(to_dict(msg))


def _seconds(obj: dict[str, Any], key: str, default: float) -> float:
    v = _get(obj, key, (int, float), optional=True, default=default)
    if not 0.1 <= float(v) <= 3600:
        raise MessageError(f"{obj.get('type')}: {key!r} must be between 0.1 and 3600 seconds")
    return float(v)


MAX_INGRESS = 64


def _ingress(v: Any) -> list[dict[str, Any]] | None:
    """auth_ok's ingress list, kept only where well-formed (an optional hint:
    a bad entry is dropped, never an error)."""
    if not isinstance(v, list):
        return None
    out = []
    for e in v[:MAX_INGRESS]:
        if not isinstance(e, dict) or not isinstance(e.get("name"), str) or len(e["name"]) > 253:
            continue
        addrs = [a for a in e.get("addresses", []) if isinstance(a, str) and len(a) <= 64][:16] \
            if isinstance(e.get("addresses"), list) else []
        out.append({"pop": str(e.get("pop", ""))[:64], "name": e["name"], "addresses": addrs})
    return out


def parse_message(obj: dict[str, Any]) -> Message:
    """Validate a decoded control message and return its typed form."""
    t = obj.get("type")
    mid = _id(obj)
    if t == "auth":
        return Auth(
            id=mid,
            authtoken=_get(obj, "authtoken", str),
            agent_version=_get(obj, "agent_version", str, optional=True, default="")[:64],
            heartbeat_interval=_seconds(obj, "heartbeat_interval", 10.0),
            heartbeat_timeout=_seconds(obj, "heartbeat_timeout", 15.0),
            agent_id=_get(obj, "agent_id", str, optional=True, default="")[:64],
        )
    if t == "auth_ok":
        return AuthOk(mid, _get(obj, "session_id", str), ingress=_ingress(obj.get("ingress")))
    if t == "bind":
        kind = _get(obj, "kind", str)
        if kind not in KINDS:
            raise MessageError(f"bind: kind {kind!r} is not one of {', '.join(KINDS)}")
        return Bind(mid, kind, _get(obj, "name", str, optional=True, default=""), _get(obj, "options", dict, optional=True, default={}))
    if t == "bind_ok":
        return BindOk(
            mid,
            _get(obj, "binding_id", str),
            _get(obj, "url", str),
            _get(obj, "hostname", str, optional=True),
            _get(obj, "port", int, optional=True),
        )
    if t == "unbind":
        return Unbind(mid, _get(obj, "binding_id", str))
    if t == "unbind_ok":
        return UnbindOk(mid)
    if t == "heartbeat":
        return Heartbeat(mid)
    if t == "heartbeat_ok":
        return HeartbeatOk(mid)
    if t == "error":
        return Error(mid, _get(obj, "code", str), _get(obj, "message", str, optional=True, default=""))
    raise MessageError(f"unknown message type {t!r}")


# ------------------------------------------------------------- proxy header


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """edge -> agent, first bytes of every proxy stream (docs/protocol.md 4)."""

    binding_id: str
    kind: str
    endpoint: str  # hostname for http/tls, "tcp:PORT" for tcp
    client_addr: str
    client_port: int
    sni: str | None = None
    proxy_protocol: bool = False  # the edge wrote a PROXY v2 header after this one
    tls_terminated: bool = False  # the edge terminated TLS (http, tls terminate_at=edge)
    v: int = PROTOCOL_VERSION

    def encode(self) -> bytes:
        return encode({k: v for k, v in asdict(self).items() if v is not None})

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> "ProxyHeader":
        v = _get(obj, "v", int)
        if v != PROTOCOL_VERSION:
            raise MessageError(f"proxy header version {v} not supported")
        kind = _get(obj, "kind", str)
        if kind not in KINDS:
            raise MessageError(f"proxy header: kind {kind!r} unknown")
        port = _get(obj, "client_port", int)
        if not 0 <= port <= 65535:
            raise MessageError("proxy header: client_port out of range")
        return cls(
            binding_id=_get(obj, "binding_id", str),
            kind=kind,
            endpoint=_get(obj, "endpoint", str),
            client_addr=_get(obj, "client_addr", str),
            client_port=port,
            sni=_get(obj, "sni", str, optional=True),
            proxy_protocol=_get(obj, "proxy_protocol", bool, optional=True, default=False),
            tls_terminated=_get(obj, "tls_terminated", bool, optional=True, default=False),
        )
