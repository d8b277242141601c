"""In-memory registry for a single edge node: no etcd, same interface.

What a single edge node runs (the hub binds through it when `[registry]
kind = "memory"`, the default); two hubs sharing one play two PoPs in tests.
Atomicity is free (one event loop, no await between check and write). A
lease never expires on its own here: the only holder is this process, and if
it dies its bindings die with it. `Lease.close()` removes what it held.
TCP ports are allocated lowest first (no other PoP allocates at the same
time, so there is nothing to spread out), unless an `rng` asks for the
random start `EtcdRegistry` uses.
"""
from __future__ import annotations

import itertools
import logging
import random
from types import MappingProxyType
from typing import Any, Mapping

from edge.registry import keys
from edge.registry.base import CachedRegistry, Lease, check_lease
from edge.registry.cache import BindingCache
from edge.registry.errors import InvalidKey, NameTaken, PortNotHeld, PortsExhausted
from edge.registry.model import Binding, check_id, encode_meta
from plumbing import kvlog

log = logging.getLogger("edge.registry")


class MemoryLease(Lease):
    def __init__(self, registry: "MemoryRegistry", lease_id: int, pop: str, session_id: str, ttl: float) -> None:
        super().__init__(lease_id, pop, session_id, ttl)
        self._registry = registry

    async def close(self) -> None:
        if self.alive:
            self._mark_lost("closed")
            self._registry._drop_lease(self)


class MemoryRegistry(CachedRegistry):
    def __init__(self, *, rng: random.Random | None = None) -> None:
        self._cache = BindingCache()
        self._ports: dict[int, MemoryLease] = {}
        self._revision = itertools.count(1)
        self._lease_ids = itertools.count(1)
        self._rng = rng  # None: lowest port first
        self._kv: dict[str, tuple[bytes, MemoryLease | None]] = {}   # opaque keys (relative)

    async def open_session(self, pop: str, session_id: str, ttl: float = 10.0) -> Lease:
        check_id("pop", pop)
        check_id("session", session_id)
        if not 1 <= ttl <= 3600:  # same bounds as EtcdRegistry, though unused here
            raise InvalidKey(f"lease ttl must be 1-3600 s (got {ttl!r})")
        lease = MemoryLease(self, next(self._lease_ids), pop, session_id, ttl)
        log.info(kvlog.kv("session_opened", pop=pop, session=session_id, lease=f"{lease.id:x}"))
        return lease

    async def bind(self, kind: str, name: str, pop: str, session_id: str, lease: Lease,
                   meta: Mapping[str, Any] | None = None) -> Binding:
        keys.check_name(kind, name)
        check_id("pop", pop)
        check_lease(lease, session_id)
        clean_meta = encode_meta(meta)
        held = self._cache.lookup(kind, name)
        if held is not None:
            if held.lease == lease.id:
                return held
            raise NameTaken(kind, name, held.pop, held.session)
        if kind == "tcp" and self._ports.get(int(name)) is not lease:
            raise PortNotHeld(int(name), "not allocated to this session")
        b = Binding(kind, name, pop, session_id, MappingProxyType(clean_meta), next(self._revision), lease.id)
        self._cache.emit(self._cache.put(b))
        log.info(kvlog.kv("bound", kind=kind, name=name, pop=pop, session=session_id))
        return b

    async def take_over(self, held: Binding, pop: str, session_id: str, lease: Lease,
                        meta: Mapping[str, Any] | None = None) -> Binding:
        check_lease(lease, session_id)
        now = self._cache.lookup(held.kind, held.name)
        if now is not None and now.lease == lease.id:
            return now
        if now is None or now.revision != held.revision:
            raise NameTaken(held.kind, held.name, now.pop if now else "?", now.session if now else "?")
        b = Binding(held.kind, held.name, pop, session_id, MappingProxyType(encode_meta(meta)),
                    next(self._revision), lease.id)
        self._cache.emit(self._cache.put(b))
        log.info(kvlog.kv("taken_over", kind=held.kind, name=held.name, pop=pop, session=session_id,
                          from_session=held.session))
        return b

    async def unbind(self, kind: str, name: str, session_id: str, lease: Lease) -> bool:
        keys.check_name(kind, name)
        held = self._cache.lookup(kind, name)
        if held is None or held.lease != lease.id or lease.session_id != session_id:
            return False
        self._cache.emit(self._cache.delete(kind, name, next(self._revision)))
        if kind == "tcp":
            self._ports.pop(int(name), None)
        log.info(kvlog.kv("unbound", kind=kind, name=name, session=session_id))
        return True

    async def allocate_port(self, session_id: str, lease: Lease, lo: int, hi: int,
                            preferred: int | None = None) -> int:
        check_lease(lease, session_id)
        for port in port_candidates(lo, hi, preferred, self._rng):
            if port not in self._ports:
                self._ports[port] = lease  # type: ignore[assignment]
                return port
        raise PortsExhausted(lo, hi)

    async def release_port(self, port: int, session_id: str, lease: Lease) -> bool:
        keys.check_port(port)
        if self._ports.get(port) is not lease or lease.session_id != session_id:
            return False
        if self._cache.lookup("tcp", str(port)) is not None:
            raise PortNotHeld(port, "still bound: unbind it instead")
        del self._ports[port]
        return True

    # -- opaque keys -------------------------------------------------------------
    async def kv_get(self, key: str) -> bytes | None:
        held = self._kv.get(keys.check_opaque_key(key))
        return held[0] if held is not None else None

    async def kv_put(self, key: str, value: bytes, lease: Lease | None = None) -> None:
        keys.check_opaque_key(key)
        keys.check_opaque_value(value)
        if lease is not None:
            check_lease(lease, lease.session_id)
        self._kv[key] = (value, lease)  # type: ignore[assignment]

    async def kv_create(self, key: str, value: bytes, lease: Lease | None = None) -> bytes | None:
        keys.check_opaque_key(key)
        keys.check_opaque_value(value)
        if lease is not None:
            check_lease(lease, lease.session_id)
        held = self._kv.get(key)
        if held is not None:
            return held[0]
        self._kv[key] = (value, lease)  # type: ignore[assignment]
        return None

    async def kv_delete(self, key: str) -> bool:
        return self._kv.pop(keys.check_opaque_key(key), None) is not None

    async def kv_list(self, prefix: str) -> dict[str, bytes]:
        keys.check_opaque_list_prefix(prefix)
        found = sorted(k for k in self._kv if k.startswith(prefix))[:keys.MAX_OPAQUE_LIST]
        return {k: self._kv[k][0] for k in found}

    def _drop_lease(self, lease: MemoryLease) -> None:
        for k in [k for k, (_, holder) in self._kv.items() if holder is lease]:
            del self._kv[k]
        for b in [b for b in self._cache.bindings() if b.lease == lease.id]:
            self._cache.emit(self._cache.delete(b.kind, b.name, next(self._revision)))
        for port in [p for p, holder in self._ports.items() if holder is lease]:
            del self._ports[port]
        log.info(kvlog.kv("session_closed", pop=lease.pop, session=lease.session_id, lease=f"{lease.id:x}"))


def port_candidates(lo: int, hi: int, preferred: int | None, rng: random.Random | None) -> list[int]:
    """Ports to try, in order: `preferred`, then every port of [lo, hi] from a
    random start (from `lo` without an rng), wrapping. Starting at random
    spreads concurrent allocators (on other PoPs) over the range instead of
    all racing for `lo`."""
    keys.check_port(lo)
    keys.check_port(hi)
    if lo > hi:
        raise InvalidKey(f"port range {lo}-{hi} is empty")
    if preferred is not None and not lo <= keys.check_port(preferred) <= hi:
        raise InvalidKey(f"preferred port {preferred} is outside {lo}-{hi}")
    size = hi - lo + 1
    start = rng.randrange(size) if rng is not None else 0
    order = [lo + (start + i) % size for i in range(size)]
    if preferred is not None:
        order.remove(preferred)
        order.insert(0, preferred)
    return order
