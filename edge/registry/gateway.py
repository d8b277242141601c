"""etcd 3.4's JSON gRPC gateway, without I/O: request bodies and answer parsing.

The gateway (`POST http://member:2379/v3/...`, on by default in 3.4) speaks the
gRPC API as JSON with proto3's JSON mapping, which shapes every parser here
(verified against etcd 3.4.23; docs/registry.md):

- `bytes` fields (key, value, range_end) are standard base64;
- int64 fields (revision, lease ID, TTL) are JSON strings;
- fields at their default value are omitted: a PUT watch event has no
  "type" (PUT is enum 0), a failed txn has no "succeeded", a keepalive for a
  lease that no longer exists has no "TTL", a range with no match has no
  "kvs";
- a watch is one long response carrying one JSON object per line, each
  wrapped as {"result": {...}} (or {"error": {...}}).

Owns: these encodings. Must not touch: sockets, clocks (etcd.py does I/O).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from edge.registry.errors import EtcdRequestError, GatewayProtocolError
from edge.registry.keys import b64, unb64

MAX_LINE_BYTES = 64 * 1024 * 1024  # one watch message (a burst of many events)
# gRPC status codes the registry tells apart (grpc/codes).
GRPC_NOT_FOUND = 5
GRPC_UNAVAILABLE = 14


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: Literal["put", "delete"]
    kv: KeyValue


@dataclass(frozen=True, slots=True)
class WatchMessage:
    revision: int  # header revision
    created: bool = False
    canceled: bool = False
    cancel_reason: str = ""
    compact_revision: int = 0
    events: tuple[WatchEvent, ...] = ()


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int
    responses: tuple[dict[str, Any], ...]

    def range_kvs(self, index: int) -> tuple[KeyValue, ...]:
        """The kvs of responses[index], which must be a response_range."""
        try:
            resp = self.responses[index]["response_range"]
        except (IndexError, KeyError, TypeError):
            raise GatewayProtocolError(f"txn response {index} is not a range") from None
        return tuple(parse_kv(kv) for kv in _list(resp, "kvs"))


# -- requests ---------------------------------------------------------------

def range_request(key: bytes, range_end: bytes | None = None, *, keys_only: bool = False,
                  serializable: bool = False, limit: int = 0) -> dict[str, Any]:
    body: dict[str, Any] = {"key": b64(key)}
    if range_end is not None:
        body["range_end"] = b64(range_end)
    if keys_only:
        body["keys_only"] = True
    if serializable:
        body["serializable"] = True
    if limit:
        body["limit"] = str(limit)
    return body


def compare_absent(key: bytes) -> dict[str, Any]:
    """True when the key does not exist: its create_revision is 0."""
    return {"target": "CREATE", "result": "EQUAL", "key": b64(key), "create_revision": "0"}


def compare_lease(key: bytes, lease: int) -> dict[str, Any]:
    """True when the key exists and is attached to `lease` (etcd >= 3.3). A
    binding's lease is its session's, so this is the owner check."""
    return {"target": "LEASE", "result": "EQUAL", "key": b64(key), "lease": str(lease)}


def op_put(key: bytes, value: bytes, lease: int = 0) -> dict[str, Any]:
    put: dict[str, Any] = {"key": b64(key), "value": b64(value)}
    if lease:
        put["lease"] = str(lease)
    return {"request_put": put}


def op_delete(key: bytes) -> dict[str, Any]:
    return {"request_delete_range": {"key": b64(key)}}


def op_range(key: bytes) -> dict[str, Any]:
    return {"request_range": {"key": b64(key)}}


def txn_request(compare: list[dict[str, Any]], success: list[dict[str, Any]],
                failure: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"compare": compare, "success": success}
    if failure:
        body["failure"] = failure
    return body


def watch_create(key: bytes, range_end: bytes, start_revision: int) -> dict[str, Any]:
    body: dict[str, Any] = {"key": b64(key), "range_end": b64(range_end)}
    if start_revision:
        body["start_revision"] = str(start_revision)
    return {"create_request": body}


def lease_grant(ttl: int) -> dict[str, Any]:
    return {"TTL": str(ttl)}


def lease_id(lease: int) -> dict[str, Any]:
    return {"ID": str(lease)}


# -- answers ----------------------------------------------------------------

def loads(data: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        raise GatewayProtocolError(f"answer is not JSON: {data[:80]!r}") from None
    if not isinstance(obj, dict):
        raise GatewayProtocolError("answer is not a JSON object")
    return obj


def parse_error(status: int, data: bytes) -> EtcdRequestError:
    """The gateway's error body: {"error": msg, "code": grpc_code, "message": msg}."""
    try:
        obj = loads(data)
        code = _int(obj, "code")
        message = str(obj.get("message") or obj.get("error") or "")
    except GatewayProtocolError:
        code, message = 0, data[:200].decode("utf-8", "replace")
    return EtcdRequestError(status, code, message)


def header_revision(obj: dict[str, Any]) -> int:
    header = obj.get("header")
    if not isinstance(header, dict):
        raise GatewayProtocolError("answer has no header")
    return _int(header, "revision")


def parse_kv(obj: Any) -> KeyValue:
    if not isinstance(obj, dict):
        raise GatewayProtocolError("kv is not an object")
    return KeyValue(
        key=_bytes(obj, "key"),
        value=_bytes(obj, "value"),
        create_revision=_int(obj, "create_revision"),
        mod_revision=_int(obj, "mod_revision"),
        version=_int(obj, "version"),
        lease=_int(obj, "lease"),
    )


def parse_range(obj: dict[str, Any]) -> tuple[tuple[KeyValue, ...], int, bool]:
    """(kvs, revision, more) of a /v3/kv/range answer."""
    kvs = tuple(parse_kv(kv) for kv in _list(obj, "kvs"))
    return kvs, header_revision(obj), bool(obj.get("more", False))


def parse_txn(obj: dict[str, Any]) -> TxnResult:
    responses = _list(obj, "responses")
    if not all(isinstance(r, dict) for r in responses):
        raise GatewayProtocolError("txn responses are not objects")
    return TxnResult(bool(obj.get("succeeded", False)), header_revision(obj), tuple(responses))


def parse_lease_grant(obj: dict[str, Any]) -> tuple[int, int]:
    if obj.get("error"):
        raise GatewayProtocolError(f"lease grant refused: {obj['error']}")
    lease, ttl = _int(obj, "ID"), _int(obj, "TTL")
    if lease == 0 or ttl <= 0:
        raise GatewayProtocolError("lease grant answer has no ID or TTL")
    return lease, ttl


def parse_keepalive(obj: dict[str, Any]) -> int:
    """Remaining TTL after a keepalive; 0 means the lease no longer exists
    (the gateway omits "TTL" then, proto3 default)."""
    result = obj.get("result")
    if isinstance(obj.get("error"), dict):
        raise GatewayProtocolError(f"keepalive error: {obj['error'].get('message', '')}")
    if not isinstance(result, dict):
        raise GatewayProtocolError("keepalive answer has no result")
    return _int(result, "TTL")


def parse_watch_line(line: bytes) -> WatchMessage:
    obj = loads(line)
    if "error" in obj and "result" not in obj:
        err = obj["error"]
        message = err.get("message", "") if isinstance(err, dict) else str(err)
        raise GatewayProtocolError(f"watch stream error: {message}")
    result = obj.get("result")
    if not isinstance(result, dict):
        raise GatewayProtocolError("watch message has no result")
    events = []
    for ev in _list(result, "events"):
        if not isinstance(ev, dict):
            raise GatewayProtocolError("watch event is not an object")
        # PUT is enum value 0, so proto3 JSON leaves "type" out (proto3 JSON mapping).
        kind = ev.get("type", "PUT")
        if kind not in ("PUT", "DELETE"):
            raise GatewayProtocolError(f"unknown watch event type {kind!r}")
        events.append(WatchEvent("put" if kind == "PUT" else "delete", parse_kv(ev.get("kv"))))
    return WatchMessage(
        revision=header_revision(result),
        created=bool(result.get("created", False)),
        canceled=bool(result.get("canceled", False)),
        cancel_reason=str(result.get("cancel_reason", "")),
        compact_revision=_int(result, "compact_revision"),
        events=tuple(events),
    )


class LineSplitter:
    """Splits a watch stream into lines, refusing a line longer than the bound
    (a runaway stream must not eat the edge's memory)."""

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_line

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        lines = []
        while True:
            i = self._buf.find(b"\n")
            if i < 0:
                break
            line = bytes(self._buf[:i]).strip()
            del self._buf[: i + 1]
            if line:
                lines.append(line)
        if len(self._buf) > self._max:
            raise GatewayProtocolError(f"watch message longer than {self._max} bytes")
        return lines


def _int(obj: dict[str, Any], name: str) -> int:
    value = obj.get(name, 0)
    if isinstance(value, bool):
        raise GatewayProtocolError(f"{name} is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value, 10)
        except ValueError:
            pass
    raise GatewayProtocolError(f"{name} is not an integer: {value!r:.40}")


def _bytes(obj: dict[str, Any], name: str) -> bytes:
    value = obj.get(name, "")
    if not isinstance(value, str):
        raise GatewayProtocolError(f"{name} is not base64 text")
    try:
        return unb64(value)
    except (ValueError, UnicodeEncodeError):
        raise GatewayProtocolError(f"{name} is not base64: {value!r:.40}") from None


def _list(obj: dict[str, Any], name: str) -> list[Any]:
    value = obj.get(name, [])
    if not isinstance(value, list):
        raise GatewayProtocolError(f"{name} is not a list")
    return value
