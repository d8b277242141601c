"""The registry interface the hub programs against, and its session lease.

Two implementations: `MemoryRegistry` (one edge node, no etcd) and
`EtcdRegistry` (every PoP shares one etcd cluster). Both give the same
guarantees to a caller:

- `bind` is atomic create-if-absent across every PoP; `NameTaken` names the
  holder. Binding again from the session that holds the name returns the
  existing binding (so a retry after an unknown outcome is safe).
- Bindings and ports belong to a session's `Lease`: closing the lease (or,
  with etcd, the edge dying and its keepalives stopping for one TTL) removes
  all of them.
- `lookup` never waits on the network: it reads a local view kept current by
  a watch; `subscribe` tells who cached a route that it changed.

Opaque keys (`<prefix>acme/<key>`, the ACME certificate store): `kv_get`,
`kv_put`, `kv_create` (create if absent, optionally under a lease: the lock
of edge/acme/store.py), `kv_delete`, `kv_list`. They are read from the
registry itself, not from the local view: rare reads, always current.
"""
from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from typing import Any, Callable, Mapping

from edge.registry.cache import BindingCache
from edge.registry.errors import InvalidKey, LeaseLost
from edge.registry.model import Binding, BindingEvent


class Lease(ABC):
    """A session's claim on the registry. Everything bound under it dies with it."""

    def __init__(self, lease_id: int, pop: str, session_id: str, ttl: float) -> None:
        self.id = lease_id
        self.pop = pop
        self.session_id = session_id
        self.ttl = ttl
        self._lost = asyncio.Event()
        self.lost_reason = ""

    @property
    def alive(self) -> bool:
        return not self._lost.is_set()

    async def wait_lost(self) -> str:
        """Wait until the lease is gone (closed or expired); returns why."""
        await self._lost.wait()
        return self.lost_reason

    def _mark_lost(self, reason: str) -> None:
        if not self._lost.is_set():
            self.lost_reason = reason
            self._lost.set()

    @abstractmethod
    async def close(self) -> None:
        """Revoke the lease: its bindings and ports are removed at once."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} id={self.id:x} pop={self.pop} session={self.session_id} alive={self.alive}>"


class Registry(ABC):
    async def start(self) -> None:
        """Load the view and start following changes (idempotent)."""

    async def close(self) -> None:
        """Stop background work. Leases still open are not revoked: they expire."""

    async def __aenter__(self) -> "Registry":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @abstractmethod
    async def open_session(self, pop: str, session_id: str, ttl: float = 10.0) -> Lease: ...

    @abstractmethod
    async def bind(self, kind: str, name: str, pop: str, session_id: str, lease: Lease,
                   meta: Mapping[str, Any] | None = None) -> Binding:
        """Bind (kind, name) to this session. Raises NameTaken, PortNotHeld (tcp
        without the port allocated to this lease), LeaseLost, InvalidKey,
        RegistryUnavailable."""

    @abstractmethod
    async def take_over(self, held: Binding, pop: str, session_id: str, lease: Lease,
                        meta: Mapping[str, Any] | None = None) -> Binding:
        """Replace `held` (exactly that version: its revision) with a binding
        of this session: the same agent reconnected (maybe at another PoP)
        before its old session's lease ended. NameTaken when the key changed
        meanwhile (someone else won)."""

    @abstractmethod
    async def unbind(self, kind: str, name: str, session_id: str, lease: Lease) -> bool:
        """Remove the binding if this lease holds it (a tcp binding frees its
        port too). False when it held nothing: unbind twice is harmless."""

    @abstractmethod
    def lookup(self, kind: str, name: str | int) -> Binding | None: ...

    @abstractmethod
    def bindings(self) -> list[Binding]: ...

    @abstractmethod
    def subscribe(self, callback: Callable[[BindingEvent], None]) -> Callable[[], None]:
        """Call `callback(event)` on every change of the view; returns the
        unsubscribe function. Callbacks run on the event loop and must not block."""

    @abstractmethod
    async def allocate_port(self, session_id: str, lease: Lease, lo: int, hi: int,
                            preferred: int | None = None) -> int:
        """A TCP port in [lo, hi] held by this lease, the same on every PoP.
        `preferred` is tried first (a hint: if it is taken, another port is
        returned). Each call returns a port no one holds, this lease included
        (a session may hold several). Raises PortsExhausted."""

    @abstractmethod
    async def release_port(self, port: int, session_id: str, lease: Lease) -> bool:
        """Free a port this lease holds and has not bound. False if not held."""

    # -- opaque keys under <prefix>acme/ (edge/acme/store.py) -------------------
    @abstractmethod
    async def kv_get(self, key: str) -> bytes | None:
        """The value of opaque key `key`, None when absent."""

    @abstractmethod
    async def kv_put(self, key: str, value: bytes, lease: Lease | None = None) -> None:
        """Write `key` (replacing any value); under `lease` it dies with the lease."""

    @abstractmethod
    async def kv_create(self, key: str, value: bytes, lease: Lease | None = None) -> bytes | None:
        """Create `key` if absent: None when this call created it, else the
        value that is there (atomic across PoPs: a lock is a kv_create under a lease)."""

    @abstractmethod
    async def kv_delete(self, key: str) -> bool:
        """Remove `key`; False when it was not there."""

    @abstractmethod
    async def kv_list(self, prefix: str) -> dict[str, bytes]:
        """Every opaque key starting with `prefix` (relative, e.g. "certs/"), at most keys.MAX_OPAQUE_LIST."""


class CachedRegistry(Registry):
    """A registry whose reads come from a local `BindingCache` (both
    implementations: memory fills it on every write, etcd from its watch)."""

    _cache: BindingCache

    def lookup(self, kind: str, name: str | int) -> Binding | None:
        return self._cache.lookup(kind, name)

    def bindings(self) -> list[Binding]:
        return self._cache.bindings()

    def subscribe(self, callback: Callable[[BindingEvent], None]) -> Callable[[], None]:
        return self._cache.subscribe(callback)


def check_lease(lease: Lease, session_id: str) -> None:
    """Refuse, before any I/O, a write under another session's or a dead lease."""
    if lease.session_id != session_id:
        raise InvalidKey(f"lease belongs to session {lease.session_id}, not {session_id}")
    if not lease.alive:
        raise LeaseLost(f"lease of session {session_id} is gone: {lease.lost_reason}")
