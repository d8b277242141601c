"""The registry on etcd 3.4, spoken through its JSON gRPC gateway with aiohttp.

Why the gateway and not a gRPC client (aetcd): aiohttp is already a
dependency of the edge, the gateway is on by default in etcd 3.4, and it
keeps grpcio and protobuf (large native wheels) out of the edge. aetcd also
talks to one member only (docs/registry.md); here every call can go to any member.

Failover: `GatewayClient` holds the list of members and remembers which one
answered last. A connection error, a timeout or a 5xx moves the call to the
next member, until the call's deadline; a 4xx is our bug and is raised at
once. Losing one member of three is therefore invisible to callers.

Unknown outcomes: a write that got no answer (timeout, connection dropped
after sending, 503 "request timed out") may still be committed later (docs/registry.md:
seen with etcd 3.4.23 when quorum came back). Every write here is safe to send
again, which is what failover does, and what a caller may do after
`RegistryUnavailable(outcome_unknown=True)`:
- bind / allocate_port are transactions "create if absent, else read it";
  when the key exists and carries *our* lease, the earlier attempt won and
  the call returns it;
- unbind / release_port compare our lease before deleting;
- a lease grant that is lost leaves an orphan lease that expires by itself;
- revoke and keepalive are idempotent.

Losing quorum: writes (and keepalives) fail with
`RegistryUnavailable("etcd has no quorum: ...")` after `write_timeout`;
`lookup` keeps answering from the local view (cache.py); the watch stays
on a surviving member or resumes from the last revision it saw. Leases do not
expire while there is no leader (a new leader renews them), so existing
sessions keep their bindings.

Owns: HTTP to etcd, the keepalive and watch tasks. Must not touch: the hub's
sessions, listeners.
"""
from __future__ import annotations

import asyncio
import logging
import math
import random
import secrets
import weakref
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping, Sequence
from urllib.parse import urlsplit

import aiohttp

from edge.registry import gateway as gw
from edge.registry import keys
from edge.registry.base import CachedRegistry, Lease, check_lease
from edge.registry.cache import BindingCache
from edge.registry.errors import (
    EtcdRequestError,
    GatewayProtocolError,
    InvalidKey,
    LeaseLost,
    NameTaken,
    PortNotHeld,
    PortsExhausted,
    RegistryError,
    RegistryUnavailable,
)
from edge.registry.memory import port_candidates
from edge.registry.model import (
    Binding,
    check_id,
    decode_binding_value,
    encode_binding_value,
    encode_meta,
    encode_port_value,
)
from plumbing import kvlog

log = logging.getLogger("edge.registry")

MAX_ANSWER_BYTES = 32 * 1024 * 1024
MAX_ATTEMPTS = 64  # per call, on top of the deadline
MAX_ENDPOINTS = 16


@dataclass(frozen=True, slots=True)
class EtcdConfig:
    endpoints: tuple[str, ...]  # client URLs of the members, e.g. http://10.77.0.21:2379
    prefix: str = keys.DEFAULT_PREFIX
    request_timeout: float = 2.0  # one HTTP request to one member (s)
    write_timeout: float = 5.0  # a whole write, over all members and retries (s)
    read_timeout: float = 5.0  # a whole read (s)
    start_timeout: float = 10.0  # first snapshot of the bindings (s)
    watch_retry_max: float = 2.0  # cap of the watch's reconnect backoff (s)

    def __post_init__(self) -> None:
        if not self.endpoints or len(self.endpoints) > MAX_ENDPOINTS:
            raise InvalidKey(f"etcd endpoints: need 1-{MAX_ENDPOINTS} URLs")
        for url in self.endpoints:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
                raise InvalidKey(f"etcd endpoint must look like http://host:2379 (got {url!r})")
        keys.check_prefix(self.prefix)
        for name in ("request_timeout", "write_timeout", "read_timeout", "start_timeout", "watch_retry_max"):
            value = getattr(self, name)
            if not 0 < value <= 300:
                raise InvalidKey(f"{name} must be in (0, 300] seconds (got {value!r})")


class GatewayClient:
    """POST JSON to one member of the cluster, failing over to the next."""

    def __init__(self, endpoints: Sequence[str], request_timeout: float, session: aiohttp.ClientSession) -> None:
        self.endpoints = [u.rstrip("/") for u in endpoints]
        self.request_timeout = request_timeout
        self._session = session
        self.current = 0  # the member that answered last: asked first

    async def call(self, path: str, body: dict[str, Any], timeout: float, *, write: bool) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        n = len(self.endpoints)
        start = self.current
        maybe_sent = False  # a write left and no answer came back
        no_quorum = False  # some member was up but could not serve
        last = "no attempt"
        delay = 0.05
        for attempt in range(MAX_ATTEMPTS):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            index = (start + attempt) % n
            url = self.endpoints[index] + path
            try:
                async with self._session.post(
                    url, json=body, timeout=aiohttp.ClientTimeout(total=min(self.request_timeout, remaining))
                ) as resp:
                    data = await _read_bounded(resp)
                    if resp.status == 200:
                        if index != self.current:
                            log.info(kvlog.kv("etcd_member_switched", endpoint=self.endpoints[index]))
                        self.current = index
                        return gw.loads(data)
                    err = gw.parse_error(resp.status, data)
                    if resp.status < 500:
                        raise err
                    # 503 "no leader" / "request timed out": this member is up
                    # but the cluster cannot commit; maybe another member can.
                    no_quorum = True
                    maybe_sent = True
                    last = f"{self.endpoints[index]}: {err.etcd_message or resp.status}"
            except aiohttp.ClientConnectorError as exc:
                last = f"{self.endpoints[index]}: {exc.os_error or exc}"  # never sent
            except asyncio.TimeoutError:
                no_quorum = True
                maybe_sent = True
                last = f"{self.endpoints[index]}: no answer in {min(self.request_timeout, remaining):.1f}s"
            except aiohttp.ClientError as exc:  # dropped mid-request (member killed)
                maybe_sent = True
                last = f"{self.endpoints[index]}: {type(exc).__name__}: {exc}"
            log.debug(kvlog.kv("etcd_attempt_failed", path=path, detail=last))
            if attempt % n == n - 1:  # every member tried once: breathe
                await asyncio.sleep(max(0.0, min(delay, deadline - loop.time())))
                delay = min(delay * 2, 0.5)
        what = "etcd has no quorum" if no_quorum else "no etcd member reachable"
        raise RegistryUnavailable(f"{what}: {path} failed for {timeout:.1f}s; last: {last}",
                                  outcome_unknown=write and maybe_sent)

    async def open_watch(self, body: dict[str, Any]) -> tuple[aiohttp.ClientResponse, str]:
        """Open a watch stream on the first member that accepts it, starting
        with the one that answered last. The caller closes the response."""
        errors = []
        for i in range(len(self.endpoints)):
            index = (self.current + i) % len(self.endpoints)
            url = self.endpoints[index] + "/v3/watch"
            try:
                resp = await self._session.post(url, json=body, timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=self.request_timeout, sock_read=None))
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                errors.append(f"{self.endpoints[index]}: {exc!r}")
                continue
            if resp.status != 200:
                errors.append(f"{self.endpoints[index]}: HTTP {resp.status}")
                resp.close()
                continue
            return resp, self.endpoints[index]
        raise RegistryUnavailable("no etcd member accepted a watch: " + "; ".join(errors))


async def _read_bounded(resp: aiohttp.ClientResponse) -> bytes:
    if resp.content_length is not None and resp.content_length > MAX_ANSWER_BYTES:
        raise GatewayProtocolError(f"answer of {resp.content_length} bytes is too large")
    chunks = []
    size = 0
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise GatewayProtocolError(f"answer larger than {MAX_ANSWER_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class EtcdLease(Lease):
    """An etcd lease with a keepalive every ttl/3: two keepalives may be lost
    before the lease is at risk."""

    def __init__(self, registry: "EtcdRegistry", lease_id: int, pop: str, session_id: str, ttl: float) -> None:
        super().__init__(lease_id, pop, session_id, ttl)
        self._registry = registry
        self._task = asyncio.create_task(self._keepalive(), name=f"etcd-keepalive-{lease_id:x}")

    async def _keepalive(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.ttl / 3
        next_at = loop.time() + interval
        failing = False
        while self.alive:  # ends on close(), expiry, or registry close (cancel)
            # A fixed rhythm, even when a call was slow or failed.
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at = loop.time() + interval
            try:
                obj = await self._registry._gw.call("/v3/lease/keepalive", gw.lease_id(self.id),
                                                    timeout=interval, write=False)
                remaining = gw.parse_keepalive(obj)
            except RegistryError as exc:
                # No quorum: keep trying. etcd does not expire leases without a
                # leader, and a new leader renews them, so this is not fatal.
                # Logged once per outage, not once per try.
                if not failing:
                    log.warning(kvlog.kv("keepalive_failed", lease=f"{self.id:x}", session=self.session_id,
                                         error=str(exc)))
                failing = True
                continue
            if failing:
                log.info(kvlog.kv("keepalive_recovered", lease=f"{self.id:x}", session=self.session_id, ttl=remaining))
                failing = False
            if remaining <= 0:
                log.warning(kvlog.kv("lease_expired", lease=f"{self.id:x}", pop=self.pop, session=self.session_id))
                self._mark_lost("expired")
                return

    async def close(self) -> None:
        if not self.alive:
            return
        self._mark_lost("closed")
        self._task.cancel()
        try:
            await self._registry._gw.call("/v3/lease/revoke", gw.lease_id(self.id),
                                          timeout=self._registry.config.write_timeout, write=True)
            log.info(kvlog.kv("lease_revoked", lease=f"{self.id:x}", pop=self.pop, session=self.session_id))
        except EtcdRequestError as exc:
            if exc.code != gw.GRPC_NOT_FOUND:  # already expired: nothing to do
                raise
        except RegistryUnavailable as exc:
            # The keepalives stopped: etcd drops the lease within one TTL.
            log.warning(kvlog.kv("lease_revoke_failed", lease=f"{self.id:x}", session=self.session_id,
                                 error=str(exc), expires_in=f"{self.ttl:.0f}s"))

    def _cancel(self) -> None:
        self._mark_lost("registry closed")
        self._task.cancel()


class _Relist(Exception):
    """The watch cannot resume (compacted, canceled): read a new snapshot."""


class EtcdRegistry(CachedRegistry):
    def __init__(self, config: EtcdConfig, *, rng: random.Random | None = None) -> None:
        self.config = config
        self._prefix = config.prefix
        self._bind_prefix = keys.bind_prefix(config.prefix).encode()
        self._ports_prefix = keys.ports_prefix(config.prefix).encode()
        self._cache = BindingCache(config.prefix)
        self._rng = rng or random.Random()
        self._session: aiohttp.ClientSession | None = None
        self._gw: GatewayClient = None  # type: ignore[assignment]  # set by start()
        self._follow_task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._progress = asyncio.Event()
        self._leases: "weakref.WeakSet[EtcdLease]" = weakref.WeakSet()
        self.watch_member = ""  # the member the watch stream is on (for logs and tests)

    # -- lifecycle -----------------------------------------------------------
    async def start(self) -> None:
        if self._follow_task is not None:
            return
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
        self._gw = GatewayClient(self.config.endpoints, self.config.request_timeout, self._session)
        self._follow_task = asyncio.create_task(self._follow(), name="etcd-registry-watch")
        try:
            await asyncio.wait_for(self._ready.wait(), self.config.start_timeout)
        except asyncio.TimeoutError:
            await self.close()
            raise RegistryUnavailable(
                f"etcd has no quorum or is unreachable: no snapshot of {self._prefix} "
                f"in {self.config.start_timeout:.1f}s from {', '.join(self.config.endpoints)}") from None

    async def close(self) -> None:
        tasks = []
        for lease in list(self._leases):
            lease._cancel()
            tasks.append(lease._task)
        # Cancelled keepalives end at their next await; wait so none outlives
        # the HTTP session they use.
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._follow_task is not None:
            self._follow_task.cancel()
            try:
                await self._follow_task
            except asyncio.CancelledError:
                pass
            self._follow_task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- sessions ------------------------------------------------------------
    async def open_session(self, pop: str, session_id: str, ttl: float = 10.0) -> Lease:
        check_id("pop", pop)
        check_id("session", session_id)
        if not 1 <= ttl <= 3600:
            raise InvalidKey(f"lease ttl must be 1-3600 s (got {ttl!r})")
        obj = await self._write("/v3/lease/grant", gw.lease_grant(math.ceil(ttl)))
        lease_id, granted = gw.parse_lease_grant(obj)
        lease = EtcdLease(self, lease_id, pop, session_id, float(granted))
        self._leases.add(lease)
        log.info(kvlog.kv("lease_granted", lease=f"{lease_id:x}", pop=pop, session=session_id, ttl=granted))
        return lease

    # -- bindings ------------------------------------------------------------
    async def bind(self, kind: str, name: str, pop: str, session_id: str, lease: Lease,
                   meta: Mapping[str, Any] | None = None) -> Binding:
        key = keys.bind_key(self._prefix, kind, name).encode()
        value = encode_binding_value(pop, session_id, meta)
        check_lease(lease, session_id)
        compare = [gw.compare_absent(key)]
        failure = [gw.op_range(key)]
        if kind == "tcp":
            # The port must be ours, checked in the same transaction.
            pkey = keys.port_key(self._prefix, int(name)).encode()
            compare.append(gw.compare_lease(pkey, lease.id))
        res = await self._txn(gw.txn_request(compare, [gw.op_put(key, value, lease.id)], failure), lease)
        if res.succeeded:
            log.info(kvlog.kv("bound", kind=kind, name=name, pop=pop, session=session_id, revision=res.revision))
            return Binding(kind, name, pop, session_id, MappingProxyType(encode_meta(meta)), res.revision, lease.id)
        held = res.range_kvs(0)
        if not held:
            raise PortNotHeld(int(name), "not allocated to this session")
        kv = held[0]
        try:
            existing = decode_binding_value(kind, name, kv.value, kv.mod_revision, kv.lease)
        except InvalidKey:
            raise NameTaken(kind, name, "?", "?") from None
        if kv.lease == lease.id:
            # Ours already: bound before, or an earlier attempt whose outcome
            # was unknown (timeout) was committed after all.
            log.info(kvlog.kv("bind_already_held", kind=kind, name=name, session=session_id, revision=kv.mod_revision))
            return existing
        raise NameTaken(kind, name, existing.pop, existing.session)

    async def take_over(self, held: Binding, pop: str, session_id: str, lease: Lease,
                        meta: Mapping[str, Any] | None = None) -> Binding:
        kind, name = held.kind, held.name
        key = keys.bind_key(self._prefix, kind, name).encode()
        value = encode_binding_value(pop, session_id, meta)
        check_lease(lease, session_id)
        # The key must still be exactly the version we decided to replace
        # (mod_revision): a third session binding meanwhile wins, not us.
        compare = [{"target": "MOD", "result": "EQUAL", "key": gw.b64(key), "mod_revision": str(held.revision)}]
        res = await self._txn(gw.txn_request(compare, [gw.op_put(key, value, lease.id)], [gw.op_range(key)]), lease)
        if res.succeeded:
            log.info(kvlog.kv("taken_over", kind=kind, name=name, pop=pop, session=session_id,
                              from_session=held.session, revision=res.revision))
            return Binding(kind, name, pop, session_id, MappingProxyType(encode_meta(meta)), res.revision, lease.id)
        now = res.range_kvs(0)
        if now and now[0].lease == lease.id:
            # our own earlier attempt (outcome unknown) was committed
            return decode_binding_value(kind, name, now[0].value, now[0].mod_revision, now[0].lease)
        if now:
            try:
                b = decode_binding_value(kind, name, now[0].value, now[0].mod_revision, now[0].lease)
                raise NameTaken(kind, name, b.pop, b.session)
            except InvalidKey:
                pass
        raise NameTaken(kind, name, "?", "?")

    async def unbind(self, kind: str, name: str, session_id: str, lease: Lease) -> bool:
        key = keys.bind_key(self._prefix, kind, name).encode()
        if lease.session_id != session_id:
            return False
        success = [gw.op_delete(key)]
        if kind == "tcp":
            success.append(gw.op_delete(keys.port_key(self._prefix, int(name)).encode()))
        res = await self._txn(gw.txn_request([gw.compare_lease(key, lease.id)], success), None)
        if res.succeeded:
            log.info(kvlog.kv("unbound", kind=kind, name=name, session=session_id, revision=res.revision))
        return res.succeeded

    @property
    def revision(self) -> int:
        """The etcd revision the local view has reached."""
        return self._cache.revision

    async def wait_revision(self, revision: int, timeout: float) -> bool:
        """Wait until the local view has caught up with `revision`, the
        revision of a bind or unbind (to read one's own write). Port
        operations are not in the view: do not wait on their revisions.
        False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._cache.revision < revision:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            event = self._progress
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except asyncio.TimeoutError:
                return False
        return True

    # -- ports ---------------------------------------------------------------
    async def allocate_port(self, session_id: str, lease: Lease, lo: int, hi: int,
                            preferred: int | None = None) -> int:
        check_lease(lease, session_id)
        candidates = port_candidates(lo, hi, preferred, self._rng)
        value = encode_port_value(lease.pop, session_id, secrets.token_hex(8))
        # One read of what is taken saves a transaction per taken port. It may
        # be stale by the time we write; the transaction is what decides.
        obj = await self._read("/v3/kv/range", gw.range_request(
            self._ports_prefix, keys.range_end(self._ports_prefix)))
        kvs, _, _ = gw.parse_range(obj)
        taken: dict[int, int] = {}
        for kv in kvs:
            port = keys.parse_port_key(self._prefix, kv.key.decode("utf-8", "replace"))
            if port is not None:
                taken[port] = kv.lease
        for port in candidates:  # bounded: at most hi - lo + 1
            if port in taken:  # by anyone, this lease included (another endpoint of it)
                continue
            pkey = keys.port_key(self._prefix, port).encode()
            res = await self._txn(gw.txn_request(
                [gw.compare_absent(pkey)], [gw.op_put(pkey, value, lease.id)], [gw.op_range(pkey)]), lease)
            # Failed compare but the value is this call's: a retry (failover)
            # of a write whose first attempt had been committed.
            if res.succeeded or any(kv.value == value for kv in res.range_kvs(0)):
                log.info(kvlog.kv("port_allocated", port=port, pop=lease.pop, session=session_id))
                return port
            log.debug(kvlog.kv("port_race_lost", port=port, session=session_id))
        raise PortsExhausted(lo, hi)

    async def release_port(self, port: int, session_id: str, lease: Lease) -> bool:
        pkey = keys.port_key(self._prefix, port).encode()
        bkey = keys.bind_key(self._prefix, "tcp", str(port)).encode()
        if lease.session_id != session_id:
            return False
        res = await self._txn(gw.txn_request(
            [gw.compare_lease(pkey, lease.id), gw.compare_absent(bkey)], [gw.op_delete(pkey)],
            [gw.op_range(pkey)]), None)
        if res.succeeded:
            return True
        if any(kv.lease == lease.id for kv in res.range_kvs(0)):
            raise PortNotHeld(port, "still bound: unbind it instead")
        return False

    # -- opaque keys (<prefix>acme/...) ----------------------------------------
    def _opaque(self, key: str) -> bytes:
        return keys.opaque_key(self._prefix, key).encode()

    async def kv_get(self, key: str) -> bytes | None:
        kvs, _, _ = gw.parse_range(await self._read("/v3/kv/range", gw.range_request(self._opaque(key))))
        return kvs[0].value if kvs else None

    async def kv_put(self, key: str, value: bytes, lease: Lease | None = None) -> None:
        k = self._opaque(key)
        keys.check_opaque_value(value)
        if lease is not None:
            check_lease(lease, lease.session_id)
        # A txn with no compare: the same lease handling (LeaseLost) as every other write.
        await self._txn(gw.txn_request([], [gw.op_put(k, value, lease.id if lease else 0)]), lease)

    async def kv_create(self, key: str, value: bytes, lease: Lease | None = None) -> bytes | None:
        k = self._opaque(key)
        keys.check_opaque_value(value)
        if lease is not None:
            check_lease(lease, lease.session_id)
        res = await self._txn(gw.txn_request([gw.compare_absent(k)], [gw.op_put(k, value, lease.id if lease else 0)],
                                             [gw.op_range(k)]), lease)
        if res.succeeded:
            return None
        held = res.range_kvs(0)
        if held and lease is not None and held[0].lease == lease.id:
            return None  # an earlier attempt of this call (outcome unknown, then failover) created it
        return held[0].value if held else b""

    async def kv_delete(self, key: str) -> bool:
        res = await self._txn(gw.txn_request([], [gw.op_delete(self._opaque(key))]), None)
        deleted = res.responses[0].get("response_delete_range", {}) if res.responses else {}
        return gw._int(deleted, "deleted") > 0 if isinstance(deleted, dict) else False

    async def kv_list(self, prefix: str) -> dict[str, bytes]:
        keys.check_opaque_list_prefix(prefix)
        head = keys.opaque_prefix(self._prefix)
        start = (head + prefix).encode()
        obj = await self._read("/v3/kv/range", gw.range_request(start, keys.range_end(start),
                                                                limit=keys.MAX_OPAQUE_LIST))
        kvs, _, _ = gw.parse_range(obj)
        return {kv.key.decode("utf-8", "replace")[len(head):]: kv.value for kv in kvs}

    # -- plumbing ------------------------------------------------------------
    async def _write(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self._require_started()
        return await self._gw.call(path, body, self.config.write_timeout, write=True)

    async def _read(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self._require_started()
        return await self._gw.call(path, body, self.config.read_timeout, write=False)

    async def _txn(self, body: dict[str, Any], lease: Lease | None) -> gw.TxnResult:
        try:
            return gw.parse_txn(await self._write("/v3/kv/txn", body))
        except EtcdRequestError as exc:
            # A put naming a lease etcd no longer has: the session is gone.
            if lease is not None and exc.code == gw.GRPC_NOT_FOUND and "lease" in exc.etcd_message:
                lease._mark_lost("expired")
                raise LeaseLost(f"lease {lease.id:x} of session {lease.session_id} expired") from None
            raise

    def _require_started(self) -> None:
        if self._session is None:
            raise RegistryError("EtcdRegistry is not started (await registry.start())")

    async def _follow(self) -> None:
        """Snapshot, then watch from snapshot+1; on a broken stream resume from
        the last revision seen (on any member), re-list only when etcd cannot
        resume (compaction). Runs until close() cancels it."""
        need_list = True
        delay = 0.1
        while True:  # bounded by close(); each pass waits at least `delay`
            try:
                if need_list:
                    obj = await self._read("/v3/kv/range", gw.range_request(
                        self._bind_prefix, keys.range_end(self._bind_prefix)))
                    kvs, revision, _ = gw.parse_range(obj)
                    self._cache.replace(kvs, revision)
                    self._note_progress()
                    need_list = False
                    self._ready.set()
                    log.info(kvlog.kv("bindings_listed", count=len(self._cache), revision=revision))
                if await self._watch_once(self._cache.revision + 1):
                    delay = 0.1  # the stream was up: reconnect quickly
            except _Relist as exc:
                log.warning(kvlog.kv("watch_relist", reason=str(exc)))
                need_list = True
            except (RegistryError, aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                log.warning(kvlog.kv("watch_failed", member=self.watch_member or "-",
                                     revision=self._cache.revision, error=str(exc) or type(exc).__name__))
            self.watch_member = ""
            await asyncio.sleep(delay * (0.5 + self._rng.random()))
            delay = min(delay * 2, self.config.watch_retry_max)

    async def _watch_once(self, start_revision: int) -> bool:
        """Follow one watch stream until it ends; True if it was established."""
        resp, member = await self._gw.open_watch(
            gw.watch_create(self._bind_prefix, keys.range_end(self._bind_prefix), start_revision))
        created = False
        try:
            splitter = gw.LineSplitter()
            async for chunk in resp.content.iter_any():
                for line in splitter.feed(chunk):
                    msg = gw.parse_watch_line(line)
                    if msg.compact_revision:
                        raise _Relist(f"revision {start_revision} compacted (compact_revision={msg.compact_revision})")
                    if msg.canceled:
                        raise _Relist(f"watch canceled: {msg.cancel_reason}")
                    if msg.created and not created:
                        created = True
                        self.watch_member = member
                        log.info(kvlog.kv("watch_started", member=member, from_revision=start_revision))
                    if msg.events:
                        self._cache.apply(msg.events)
                        self._note_progress()
        finally:
            resp.close()
        log.warning(kvlog.kv("watch_ended", member=member, revision=self._cache.revision))
        return created

    def _note_progress(self) -> None:
        event, self._progress = self._progress, asyncio.Event()
        event.set()
