"""The one MemoryRegistry of an edge with workers, served by the supervisor over Unix sockets.

With `[registry] kind = "memory"` and N worker processes, a name must still be unique across the
whole node: the supervisor holds the only `MemoryRegistry` and each worker reaches it through an
`IpcRegistry` (the `Registry` interface, watch included) over its own stream socket pair. The
binding record's meta names the worker that holds the session (`meta["worker"]`), so every worker
knows the owner of every name (edge/workers/README: the ownership table).

Wire format, both directions: frames of a 4-byte big-endian length and a JSON object, at most
MAX_FRAME bytes. Worker -> supervisor: {"id": N, "op": NAME, "args": {...}}. Supervisor ->
worker: {"id": N, "ok": RESULT} or {"id": N, "err": [TYPE, ARGS...]} for a request, and
{"ev": [TYPE, KIND, NAME, BINDING|null, REVISION]} for every change of the view (sent before the
reply of the request that caused it, so a worker's view holds its own bind when bind returns).
A new connection first gets one "ev" per binding already held (its snapshot).

Bounds: a frame over MAX_FRAME, not JSON, or an unknown op is a protocol error: the supervisor
logs it and drops that worker's connection (its leases end, as when the worker dies); leases are
per connection, so a worker can never act under another worker's lease. When the connection
ends a worker's leases are lost ("expired": its sessions close, their agents reconnect).
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
import struct
from types import MappingProxyType
from typing import Any, Callable, Mapping

from edge.registry import keys
from edge.registry.base import CachedRegistry, Lease, check_lease
from edge.registry.cache import BindingCache
from edge.registry.errors import (InvalidKey, LeaseLost, NameTaken, PortNotHeld, PortsExhausted, RegistryError,
                                  RegistryUnavailable)
from edge.registry.memory import MemoryRegistry
from edge.registry.model import Binding, BindingEvent
from plumbing.kvlog import kv

log = logging.getLogger("gslb.edge.workers")

MAX_FRAME = 1 << 20          # bytes of one JSON frame (a kv value is at most 16 KiB, a snapshot goes per binding)
REQUEST_TIMEOUT = 10.0       # s: the supervisor answers from memory; longer means it is gone
_LEN = struct.Struct("!I")


class FrameError(ValueError):
    """A frame that is not ours: too long, not JSON, not an object."""


def encode_frame(obj: Mapping[str, Any]) -> bytes:
    body = json.dumps(obj, separators=(",", ":")).encode()
    if len(body) > MAX_FRAME:
        raise FrameError(f"frame of {len(body)} bytes is over {MAX_FRAME}")
    return _LEN.pack(len(body)) + body


class FrameDecoder:
    """Sans-IO: feed bytes, get whole frames (dicts); FrameError on anything else."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buf += data
        out: list[dict[str, Any]] = []
        while len(self._buf) >= 4:
            (n,) = _LEN.unpack_from(self._buf)
            if n > MAX_FRAME:
                raise FrameError(f"frame length {n} is over {MAX_FRAME}")
            if len(self._buf) < 4 + n:
                break
            body = bytes(self._buf[4:4 + n])
            del self._buf[:4 + n]
            try:
                obj = json.loads(body)
            except (UnicodeDecodeError, ValueError):
                raise FrameError("frame is not JSON") from None
            if not isinstance(obj, dict):
                raise FrameError("frame is not a JSON object")
            out.append(obj)
        return out


def binding_to_wire(b: Binding | None) -> list[Any] | None:
    if b is None:
        return None
    return [b.kind, b.name, b.pop, b.session, dict(b.meta), b.revision, b.lease]


def binding_from_wire(v: Any) -> Binding:
    if not isinstance(v, list) or len(v) != 7:
        raise FrameError("a binding is [kind, name, pop, session, meta, revision, lease]")
    kind, name, pop, session, meta, revision, lease = v
    if not all(isinstance(x, str) for x in (kind, name, pop, session)) or not isinstance(meta, dict) \
            or not isinstance(revision, int) or not isinstance(lease, int):
        raise FrameError("a binding field has the wrong type")
    return Binding(kind, name, pop, session, MappingProxyType(meta), revision, lease)


def error_to_wire(exc: BaseException) -> list[Any]:
    if isinstance(exc, NameTaken):
        return ["NameTaken", exc.kind, exc.name, exc.pop, exc.session]
    if isinstance(exc, PortsExhausted):
        return ["PortsExhausted", exc.lo, exc.hi]
    if isinstance(exc, PortNotHeld):
        return ["PortNotHeld", exc.port, str(exc).split(": ", 1)[-1]]
    for cls in (InvalidKey, LeaseLost, RegistryUnavailable):
        if isinstance(exc, cls):
            return [cls.__name__, str(exc)]
    return ["RegistryError", str(exc)]


def error_from_wire(v: Any) -> RegistryError:
    try:
        if not isinstance(v, list):
            raise TypeError
        name, *args = v
        if name == "NameTaken":
            return NameTaken(*(str(a) for a in args[:4]))
        if name == "PortsExhausted":
            return PortsExhausted(int(args[0]), int(args[1]))
        if name == "PortNotHeld":
            return PortNotHeld(int(args[0]), str(args[1]))
        cls = {"InvalidKey": InvalidKey, "LeaseLost": LeaseLost, "RegistryUnavailable": RegistryUnavailable}.get(name)
        return (cls or RegistryError)(str(args[0]))
    except (TypeError, ValueError, IndexError):
        return RegistryError(f"bad error from the supervisor: {v!r:.100}")


def _b64(b: bytes | None) -> str | None:
    return None if b is None else base64.b64encode(b).decode()


def _unb64(s: Any) -> bytes | None:
    return None if s is None else base64.b64decode(str(s))


# -- the supervisor's side ---------------------------------------------------------------


class _Peer(asyncio.Protocol):
    """One worker's registry connection, in the supervisor."""

    def __init__(self, service: "RegistryService", label: str) -> None:
        self.service = service
        self.label = label
        self.transport: asyncio.Transport | None = None
        self.decoder = FrameDecoder()
        self.leases: dict[int, Lease] = {}
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.service.peers.add(self)
        for b in self.service.registry.bindings():   # the snapshot: one put per binding held
            self.send({"ev": ["put", b.kind, b.name, binding_to_wire(b), b.revision]})

    def send(self, obj: Mapping[str, Any]) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(encode_frame(obj))

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.decoder.feed(data)
        except FrameError as exc:
            self._bad(str(exc))
            return
        for f in frames:
            rid, op, args = f.get("id"), f.get("op"), f.get("args")
            if not isinstance(rid, int) or not isinstance(op, str) or not isinstance(args, dict) \
                    or op not in _OPS:
                self._bad(f"not a request: {str(f)[:100]}")
                return
            self.service.loop.create_task(self._answer(rid, op, args))

    async def _answer(self, rid: int, op: str, args: dict[str, Any]) -> None:
        try:
            result = await _OPS[op](self, **args)
        except RegistryError as exc:
            self.send({"id": rid, "err": error_to_wire(exc)})
            return
        except (TypeError, ValueError, KeyError) as exc:   # wrong arguments: a worker's bug, answered
            self.send({"id": rid, "err": ["InvalidKey", f"{op}: {exc}"]})
            return
        self.send({"id": rid, "ok": result})

    def _bad(self, why: str) -> None:
        log.error(kv("registry_ipc_bad_frame", worker=self.label, error=why))
        if self.transport is not None:
            self.transport.close()

    def lease(self, lid: Any) -> Lease:
        lease = self.leases.get(lid) if isinstance(lid, int) else None
        if lease is None:
            raise LeaseLost(f"no lease {lid!r} on this worker's connection")
        return lease

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        self.service.peers.discard(self)
        self.service.loop.create_task(self.service.drop_leases(self))


async def _op_open_session(p: _Peer, pop: str, session_id: str, ttl: float) -> int:
    lease = await p.service.registry.open_session(pop, session_id, ttl)
    p.leases[lease.id] = lease
    return lease.id


async def _op_bind(p: _Peer, kind: str, name: str, pop: str, session_id: str, lease: int,
                   meta: dict[str, Any] | None) -> list[Any] | None:
    return binding_to_wire(await p.service.registry.bind(kind, name, pop, session_id, p.lease(lease), meta))


async def _op_take_over(p: _Peer, held: list[Any], pop: str, session_id: str, lease: int,
                        meta: dict[str, Any] | None) -> list[Any] | None:
    return binding_to_wire(await p.service.registry.take_over(binding_from_wire(held), pop, session_id,
                                                              p.lease(lease), meta))


async def _op_unbind(p: _Peer, kind: str, name: str, session_id: str, lease: int) -> bool:
    return await p.service.registry.unbind(kind, name, session_id, p.lease(lease))


async def _op_allocate_port(p: _Peer, session_id: str, lease: int, lo: int, hi: int, preferred: int | None) -> int:
    return await p.service.registry.allocate_port(session_id, p.lease(lease), lo, hi, preferred)


async def _op_release_port(p: _Peer, port: int, session_id: str, lease: int) -> bool:
    return await p.service.registry.release_port(port, session_id, p.lease(lease))


async def _op_lease_close(p: _Peer, lease: int) -> bool:
    held = p.leases.pop(lease, None)
    if held is not None:
        await held.close()
    return held is not None


async def _op_kv_get(p: _Peer, key: str) -> str | None:
    return _b64(await p.service.registry.kv_get(key))


async def _op_kv_put(p: _Peer, key: str, value: str, lease: int | None) -> None:
    await p.service.registry.kv_put(key, _unb64(value) or b"", p.lease(lease) if lease is not None else None)


async def _op_kv_create(p: _Peer, key: str, value: str, lease: int | None) -> str | None:
    return _b64(await p.service.registry.kv_create(key, _unb64(value) or b"",
                                                   p.lease(lease) if lease is not None else None))


async def _op_kv_delete(p: _Peer, key: str) -> bool:
    return await p.service.registry.kv_delete(key)


async def _op_kv_list(p: _Peer, prefix: str) -> dict[str, str | None]:
    return {k: _b64(v) for k, v in (await p.service.registry.kv_list(prefix)).items()}


_OPS: dict[str, Callable[..., Any]] = {
    "open_session": _op_open_session, "bind": _op_bind, "take_over": _op_take_over, "unbind": _op_unbind,
    "allocate_port": _op_allocate_port, "release_port": _op_release_port, "lease_close": _op_lease_close,
    "kv_get": _op_kv_get, "kv_put": _op_kv_put, "kv_create": _op_kv_create, "kv_delete": _op_kv_delete,
    "kv_list": _op_kv_list,
}


class RegistryService:
    """The supervisor's MemoryRegistry, served to every worker's connection."""

    def __init__(self, registry: MemoryRegistry | None = None) -> None:
        self.registry = registry if registry is not None else MemoryRegistry()
        self.peers: set[_Peer] = set()
        self.loop = asyncio.get_running_loop()
        self.registry.subscribe(self._broadcast)

    def _broadcast(self, ev: BindingEvent) -> None:
        frame = {"ev": [ev.type, ev.kind, ev.name, binding_to_wire(ev.binding), ev.revision]}
        for p in list(self.peers):
            p.send(frame)

    async def serve(self, sock: socket.socket, label: str) -> asyncio.Transport:
        """Serve one worker's end of a socket pair."""
        transport, _ = await self.loop.connect_accepted_socket(lambda: _Peer(self, label), sock)
        return transport  # type: ignore[return-value]

    async def drop_leases(self, peer: _Peer) -> None:
        """A worker is gone: its sessions are gone, and their names with them."""
        for lease in list(peer.leases.values()):
            await lease.close()
        if peer.leases:
            log.warning(kv("worker_sessions_dropped", worker=peer.label, sessions=len(peer.leases)))
        peer.leases.clear()


# -- a worker's side ----------------------------------------------------------------------


class IpcLease(Lease):
    def __init__(self, registry: "IpcRegistry", lease_id: int, pop: str, session_id: str, ttl: float) -> None:
        super().__init__(lease_id, pop, session_id, ttl)
        self._registry = registry

    async def close(self) -> None:
        if self.alive:
            self._mark_lost("closed")
            self._registry._leases.pop(self.id, None)
            try:
                await self._registry._call("lease_close", lease=self.id)
            except RegistryUnavailable:
                pass


class IpcRegistry(CachedRegistry):
    """A worker's registry: the supervisor's MemoryRegistry, over `sock`."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._cache = BindingCache()
        self._decoder = FrameDecoder()
        self._transport: asyncio.Transport | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._leases: dict[int, IpcLease] = {}
        self._next = 0
        self.gone = False

    async def start(self) -> None:
        if self._transport is not None:
            return
        loop = asyncio.get_running_loop()
        registry = self

        class _Proto(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                registry._received(data)

            def connection_lost(self, exc: BaseException | None) -> None:
                registry._lost("supervisor connection closed")

        self._transport, _ = await loop.connect_accepted_socket(_Proto, self._sock)  # type: ignore[assignment]

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _received(self, data: bytes) -> None:
        try:
            frames = self._decoder.feed(data)
            for f in frames:
                self._frame(f)
        except FrameError as exc:
            log.error(kv("registry_ipc_bad_frame", side="worker", error=str(exc)))
            if self._transport is not None:
                self._transport.close()

    def _frame(self, f: dict[str, Any]) -> None:
        if "ev" in f:
            ev = f["ev"]
            if not isinstance(ev, list) or len(ev) != 5 or ev[0] not in ("put", "delete"):
                raise FrameError("bad event")
            typ, kind, name, b, revision = ev
            if typ == "put":
                self._cache.emit(self._cache.put(binding_from_wire(b)))
            else:
                self._cache.emit(self._cache.delete(str(kind), str(name), int(revision)))
            return
        fut = self._pending.pop(f.get("id"), None)  # type: ignore[arg-type]
        if fut is None or fut.done():
            return
        if "err" in f:
            fut.set_exception(error_from_wire(f["err"]))
        else:
            fut.set_result(f.get("ok"))

    def _lost(self, why: str) -> None:
        self.gone = True
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(RegistryUnavailable(why))
        self._pending.clear()
        for lease in list(self._leases.values()):
            lease._mark_lost("expired")   # the names are gone with the supervisor's view
        self._leases.clear()

    async def _call(self, op: str, **args: Any) -> Any:
        if self._transport is None or self.gone or self._transport.is_closing():
            raise RegistryUnavailable("the supervisor's registry is not reachable")
        self._next += 1
        rid = self._next
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        self._transport.write(encode_frame({"id": rid, "op": op, "args": args}))
        try:
            return await asyncio.wait_for(fut, REQUEST_TIMEOUT)
        except asyncio.TimeoutError:
            raise RegistryUnavailable(f"{op}: no answer from the supervisor in {REQUEST_TIMEOUT} s",
                                      outcome_unknown=True) from None
        finally:
            self._pending.pop(rid, None)

    def _lease_id(self, lease: Lease) -> int:
        if not isinstance(lease, IpcLease) or lease._registry is not self:
            raise InvalidKey("not a lease of this registry")
        return lease.id

    async def open_session(self, pop: str, session_id: str, ttl: float = 10.0) -> Lease:
        lid = await self._call("open_session", pop=pop, session_id=session_id, ttl=ttl)
        lease = IpcLease(self, int(lid), pop, session_id, ttl)
        self._leases[lease.id] = lease
        return lease

    async def bind(self, kind: str, name: str, pop: str, session_id: str, lease: Lease,
                   meta: Mapping[str, Any] | None = None) -> Binding:
        check_lease(lease, session_id)
        keys.check_name(kind, name)
        return binding_from_wire(await self._call("bind", kind=kind, name=name, pop=pop, session_id=session_id,
                                                  lease=self._lease_id(lease), meta=dict(meta or {})))

    async def take_over(self, held: Binding, pop: str, session_id: str, lease: Lease,
                        meta: Mapping[str, Any] | None = None) -> Binding:
        check_lease(lease, session_id)
        return binding_from_wire(await self._call("take_over", held=binding_to_wire(held), pop=pop,
                                                  session_id=session_id, lease=self._lease_id(lease),
                                                  meta=dict(meta or {})))

    async def unbind(self, kind: str, name: str, session_id: str, lease: Lease) -> bool:
        return bool(await self._call("unbind", kind=kind, name=name, session_id=session_id,
                                     lease=self._lease_id(lease)))

    async def allocate_port(self, session_id: str, lease: Lease, lo: int, hi: int,
                            preferred: int | None = None) -> int:
        check_lease(lease, session_id)
        return int(await self._call("allocate_port", session_id=session_id, lease=self._lease_id(lease),
                                    lo=lo, hi=hi, preferred=preferred))

    async def release_port(self, port: int, session_id: str, lease: Lease) -> bool:
        return bool(await self._call("release_port", port=port, session_id=session_id, lease=self._lease_id(lease)))

    async def kv_get(self, key: str) -> bytes | None:
        return _unb64(await self._call("kv_get", key=key))

    async def kv_put(self, key: str, value: bytes, lease: Lease | None = None) -> None:
        await self._call("kv_put", key=key, value=_b64(value),
                         lease=self._lease_id(lease) if lease is not None else None)

    async def kv_create(self, key: str, value: bytes, lease: Lease | None = None) -> bytes | None:
        return _unb64(await self._call("kv_create", key=key, value=_b64(value),
                                       lease=self._lease_id(lease) if lease is not None else None))

    async def kv_delete(self, key: str) -> bool:
        return bool(await self._call("kv_delete", key=key))

    async def kv_list(self, prefix: str) -> dict[str, bytes]:
        got = await self._call("kv_list", prefix=prefix)
        return {str(k): _unb64(v) or b"" for k, v in dict(got).items()}
