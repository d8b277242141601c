"""What the registry stores and hands out: bindings, port holders, events.

Owns the JSON values under the keys (see keys.py) and their bounds. Pure.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Mapping

from edge.registry.errors import InvalidKey

MAX_META_BYTES = 4096  # a binding's meta, JSON-encoded
MAX_VALUE_BYTES = 16384  # any value we accept from etcd; larger is not ours
MAX_ID_LENGTH = 128  # pop and session ids



@dataclass(frozen=True, slots=True)
class Binding:
    """Endpoint (kind, name) is served by session `session` at PoP `pop`.

    `revision` is etcd's mod_revision of the key (in memory: a counter); it
    orders the versions of one binding. `lease` is the id of the lease that
    keeps it alive (0 when unknown).
    """

    kind: str
    name: str
    pop: str
    session: str
    meta: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    revision: int = 0
    lease: int = 0


@dataclass(frozen=True, slots=True)
class BindingEvent:
    """A change seen by `Registry.subscribe` callbacks.

    type "put": `binding` is the new value. type "delete": `binding` is the
    value the cache held before (None if it held none). Either way, whoever
    cached a route for (kind, name) must drop it.
    """

    type: Literal["put", "delete"]
    kind: str
    name: str
    binding: Binding | None
    revision: int


def check_id(what: str, value: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH or not value.isprintable():
        raise InvalidKey(f"{what} must be 1-{MAX_ID_LENGTH} printable characters (got {value!r:.80})")
    return value


def encode_meta(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """A plain-JSON copy of meta, bounded; raises InvalidKey otherwise."""
    if meta is None:
        return {}
    if not isinstance(meta, Mapping):
        raise InvalidKey("meta must be a mapping")
    try:
        text = json.dumps(dict(meta), separators=(",", ":"), sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise InvalidKey(f"meta must be JSON: {exc}") from None
    if len(text.encode()) > MAX_META_BYTES:
        raise InvalidKey(f"meta is larger than {MAX_META_BYTES} bytes of JSON")
    return json.loads(text)


def encode_binding_value(pop: str, session: str, meta: Mapping[str, Any] | None) -> bytes:
    body = {"pop": check_id("pop", pop), "session": check_id("session", session), "meta": encode_meta(meta)}
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def decode_binding_value(kind: str, name: str, value: bytes, revision: int, lease: int) -> Binding:
    """Parse a value written by encode_binding_value; InvalidKey otherwise."""
    obj = _decode_object(value)
    pop, session, meta = obj.get("pop"), obj.get("session"), obj.get("meta", {})
    if not isinstance(pop, str) or not isinstance(session, str) or not isinstance(meta, dict):
        raise InvalidKey("binding value needs string pop and session and an object meta")
    return Binding(kind, name, pop, session, MappingProxyType(meta), revision, lease)


def encode_port_value(pop: str, session: str, attempt: str) -> bytes:
    """`attempt` is unique per allocate_port call: it tells "my earlier try of
    this very call was committed" from "this lease took it in another call"."""
    body = {"pop": check_id("pop", pop), "session": check_id("session", session), "attempt": attempt}
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def _decode_object(value: bytes) -> dict[str, Any]:
    if len(value) > MAX_VALUE_BYTES:
        raise InvalidKey(f"value larger than {MAX_VALUE_BYTES} bytes")
    try:
        obj = json.loads(value)
    except (UnicodeDecodeError, ValueError):
        raise InvalidKey("value is not JSON") from None
    if not isinstance(obj, dict):
        raise InvalidKey("value is not a JSON object")
    return obj
