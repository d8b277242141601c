"""The header that opens every stream on a peer link (docs/protocol.md 7.3).

Pure: bytes in, typed header out. Framed like the control messages
(4-byte length, JSON object, at most 64 KiB), so `MessageReader` reads it.
Must not touch: sockets, sessions.
"""
from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass
from typing import Any

from edge.tunnel.errors import MessageError
from edge.tunnel.messages import KINDS, encode

PEER_HEADER_VERSION = 1
MAX_ENDPOINT = 253


@dataclass(frozen=True, slots=True)
class PeerHeader:
    """X -> Y: "carry this client connection to your agent for (kind, endpoint)".

    `endpoint` is the registry name: the hostname for http/tls, the port in
    decimal for tcp. `session` is the agent session X's registry view named
    (Y serves its current local binding for the name even if the session
    changed: the agent reconnected at Y meanwhile)."""

    kind: str
    endpoint: str
    session: str
    client_addr: str
    client_port: int
    sni: str | None = None
    tls_terminated: bool = False
    v: int = PEER_HEADER_VERSION

    def encode(self) -> bytes:
        return encode({k: v for k, v in asdict(self).items() if v is not None})

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> "PeerHeader":
        def get(key: str, typ: type, default: Any = ...) -> Any:
            v = obj.get(key, default)
            if v is ... or not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
                raise MessageError(f"peer header: {key} missing or not {typ.__name__}")
            return v

        if get("v", int) != PEER_HEADER_VERSION:
            raise MessageError(f"peer header version {obj.get('v')} not supported")
        kind = get("kind", str)
        if kind not in KINDS:
            raise MessageError(f"peer header: kind {kind!r} unknown")
        endpoint = get("endpoint", str)
        if not endpoint or len(endpoint) > MAX_ENDPOINT:
            raise MessageError("peer header: endpoint empty or too long")
        if kind == "tcp" and not (endpoint.isdigit() and 1 <= int(endpoint) <= 65535):
            raise MessageError("peer header: a tcp endpoint is a port")
        addr = get("client_addr", str)
        try:
            addr = str(ipaddress.ip_address(addr))
        except ValueError:
            raise MessageError("peer header: client_addr is not an IP address") from None
        port = get("client_port", int)
        if not 0 <= port <= 65535:
            raise MessageError("peer header: client_port out of range")
        sni = obj.get("sni")
        if sni is not None and (not isinstance(sni, str) or len(sni) > MAX_ENDPOINT):
            raise MessageError("peer header: sni must be a string")
        return cls(kind=kind, endpoint=endpoint, session=get("session", str, ""), client_addr=addr,
                   client_port=port, sni=sni, tls_terminated=get("tls_terminated", bool, False))
