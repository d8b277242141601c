"""On-demand certificates, renewal and the handshake wait: the ACME manager.

    manager.context_nowait(name, alpn)       # in memory: the event loop's fast path
    await manager.context(name, alpn)        # the first handshake for a bound name:
                                             # store -> lock -> order, waits handshake_wait
    await manager.start() / close()          # the renewal loop

One certificate per name for the whole deployment: the first handshake at
any PoP for a bound name without a certificate looks in the store
(store.py); when nothing usable is there it takes the name's order lock and
orders (client.py), at most `max_concurrent_orders` at once per PoP. A PoP
that does not get the lock polls the store for the other PoP's result. The
handshake waits at most `handshake_wait` seconds; then it gets the fallback
certificate (the edge's own CA, edge/certs.py) and the order goes on in the
background. A failed order is retried with backoff (schedule.retry_delay),
not at every handshake.

Renewal: every `check_interval` each certificate this PoP serves is looked
up in the store; a newer one (renewed by another PoP) is swapped in; one
that is due (schedule.renew_at, 2/3 of its lifetime by default) is renewed
by whichever PoP gets the lock. A swap replaces the SSLContext new
handshakes use; connections already open keep theirs. If renewal fails
the old certificate is served until it expires.

Names not under the edge's https_domain (custom domains) are ordered only
after `check_domain(name)` (edge/acme/domains.py: does it point at the
edge?) returns; it raises with a message otherwise. Wildcards need a dns-01
solver (solvers.choose). Logs: acme_order_start, acme_order_done,
acme_order_failed, acme_renewed; never a key.
"""
from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping

from edge.acme import schedule
from edge.acme.client import AcmeClient, AcmeError, new_account_key
from edge.acme.solvers import ACME_TLS_ALPN, Http01Solver, Solver, TlsAlpn01Solver, tls_alpn_certificate
from edge.acme.store import AcmeStore, OrderLock, StoredCert, StoreError
from edge.certs import server_context
from edge.registry import RegistryError
from plumbing.kvlog import kv

log = logging.getLogger("gslb.edge.acme")

STORE_POLL = 0.5      # s: while another PoP orders, how often to look at the store


class DomainRefused(Exception):
    """check_domain refused a name (the message says why)."""


@dataclass(frozen=True)
class AcmeSettings:
    directory_url: str
    ca_bundle: str | None = None
    email: str | None = None
    renew_at: float = 2 / 3
    handshake_wait: float = 5.0
    max_concurrent_orders: int = 4
    retry_base: float = 30.0
    retry_max: float = 3600.0
    order_timeout: float = 120.0
    net_timeout: float = 30.0
    check_interval: float = 60.0


@dataclass
class _Entry:
    cert: StoredCert
    due: float
    cert_path: str
    key_path: str
    contexts: dict[tuple[str, ...], ssl.SSLContext] = field(default_factory=dict)


@dataclass
class _Failure:
    count: int = 0
    next_try: float = 0.0
    error: str = ""


@dataclass
class Stats:
    orders_ok: int = 0
    orders_failed: int = 0
    renewals: int = 0
    swaps: int = 0               # a newer certificate from the store (another PoP renewed)
    on_demand_waits: int = 0     # handshakes that waited for an order or the store
    fallback_handshakes: int = 0
    lock_busy: int = 0           # another PoP held the order lock
    refused: int = 0             # check_domain or a wildcard without dns-01

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def default_check_domain(https_domain: str) -> Callable[[str], Awaitable[None]]:
    """Accept names under the edge's https_domain, refuse everything else."""
    suffix = "." + https_domain

    async def check(name: str) -> None:
        if not name.endswith(suffix):
            raise DomainRefused(f"{name}: not under {https_domain}, and no custom-domain check is configured")
    return check


class AcmeManager:
    def __init__(self, settings: AcmeSettings, store: AcmeStore, *, https_domain: str,
                 solvers: Mapping[str, Solver], check_domain: Callable[[str], Awaitable[None]] | None = None,
                 client: AcmeClient | None = None, clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None) -> None:
        self.settings = settings
        self.store = store
        self.https_domain = https_domain
        self.solvers = dict(solvers)
        self.check_domain = check_domain or default_check_domain(https_domain)
        self._client = client
        self._client_lock = asyncio.Lock()
        # Is `name` still bound (worth renewing)? The server sets it (EdgeServer); default: yes.
        self.wanted: Callable[[str], bool] = lambda name: True
        self.clock = clock
        self.rng = rng or random.Random()
        self.counts = Stats()
        self._served: dict[str, _Entry] = {}
        self._failures: dict[str, _Failure] = {}
        self._dues: dict[str, float] = {}
        self._alpn_contexts: dict[tuple[str, str], ssl.SSLContext] = {}
        self._store_failing = False
        self._inflight: dict[str, asyncio.Task[StoredCert | None]] = {}
        self._sem = asyncio.Semaphore(settings.max_concurrent_orders)
        self._loop_task: asyncio.Task[None] | None = None

    # -- what the server calls ---------------------------------------------------------
    def context_nowait(self, name: str, alpn: tuple[str, ...] = ()) -> ssl.SSLContext | None:
        """The context for `name` if this PoP holds a usable certificate: no I/O, for the event loop.
        A wildcard certificate held for the parent (`*.example.com`, ordered with
        `ensure("*.example.com")`) serves its one-label children (RFC 6125 6.4.3)."""
        entry = self._usable(name)
        if entry is None and "." in name:
            entry = self._usable("*." + name.split(".", 1)[1])
        if entry is None:
            return None
        ctx = entry.contexts.get(alpn)
        if ctx is None:
            ctx = server_context(entry.cert_path, entry.key_path, alpn)   # type: ignore[arg-type]
            entry.contexts[alpn] = ctx
        return ctx

    async def context(self, name: str, alpn: tuple[str, ...] = (), *, may_order: bool = True) -> ssl.SSLContext | None:
        """The context for `name`, getting the certificate first (store, or an order
        when `may_order`) and waiting at most handshake_wait; None: use the fallback."""
        ctx = self.context_nowait(name, alpn)
        if ctx is not None:
            return ctx
        if not may_order:
            self.counts.fallback_handshakes += 1
            return None
        self.counts.on_demand_waits += 1
        task = self.ensure(name)
        try:
            await asyncio.wait_for(asyncio.shield(task), self.settings.handshake_wait)
        except asyncio.TimeoutError:
            pass
        except Exception:  # noqa: BLE001 - logged by the task; the handshake falls back
            pass
        ctx = self.context_nowait(name, alpn)
        if ctx is None:
            self.counts.fallback_handshakes += 1
        return ctx

    def _usable(self, name: str) -> _Entry | None:
        entry = self._served.get(name)
        if entry is None or not entry.cert.not_before <= self.clock() < entry.cert.not_after:
            return None
        return entry

    def ensure(self, name: str) -> "asyncio.Task[StoredCert | None]":
        """The one task getting `name` a certificate (joined if already running)."""
        task = self._inflight.get(name)
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(self._obtain(name), name=f"acme-{name}")
            self._inflight[name] = task
            task.add_done_callback(lambda t, n=name: self._task_done(n, t))
        return task

    def _task_done(self, name: str, task: asyncio.Task[Any]) -> None:
        if self._inflight.get(name) is task:
            del self._inflight[name]
        if not task.cancelled():
            exc = task.exception()   # the expected failures are logged (and absorbed) in _obtain
            if exc is not None:
                log.error(kv("acme_task_failed", name=name, error=type(exc).__name__, detail=exc))

    def served(self) -> dict[str, StoredCert]:
        return {n: e.cert for n, e in self._served.items()}

    def stats(self) -> dict[str, int]:
        """Counters and gauges for /metrics (gslb_edge_acme_stat, docs/metrics.md)."""
        return {**self.counts.as_dict(), "certificates": len(self._served), "orders_running": len(self._inflight)}

    # -- challenge answers (the :80 listener and the acme-tls/1 handshake) ---------------
    async def http01_answer(self, token: str) -> str | None:
        solver = self.solvers.get("http-01")
        return await solver.answer(token) if isinstance(solver, Http01Solver) else None

    async def tls_alpn_answer(self, name: str) -> str | None:
        solver = self.solvers.get("tls-alpn-01")
        return await solver.answer(name) if isinstance(solver, TlsAlpn01Solver) else None

    def tls_alpn_context(self, name: str, key_authorization: str) -> ssl.SSLContext:
        """The SSLContext answering a TLS-ALPN-01 validation for `name` (RFC 8737 3):
        ALPN acme-tls/1 only, the acmeIdentifier certificate. Made once per key
        authorization (a validation may come from several of the CA's vantage points)."""
        key = (name, key_authorization)
        ctx = self._alpn_contexts.get(key)
        if ctx is None:
            cert_pem, key_pem = tls_alpn_certificate(name, key_authorization)
            cert_path, key_path = self.store.write_challenge_files(name, cert_pem, key_pem)
            try:
                ctx = server_context(cert_path, key_path, (ACME_TLS_ALPN,))
            finally:
                for p in (cert_path, key_path):
                    p.unlink(missing_ok=True)
            if len(self._alpn_contexts) >= 64:
                self._alpn_contexts.pop(next(iter(self._alpn_contexts)))
            self._alpn_contexts[key] = ctx
        return ctx

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(self._renewal_loop(), name="acme-renewal")

    async def close(self) -> None:
        tasks = [t for t in (self._loop_task, *self._inflight.values()) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loop_task = None

    async def _renewal_loop(self) -> None:
        while True:  # ends on close() (cancel); one pass per check_interval
            await asyncio.sleep(self.settings.check_interval * self.rng.uniform(0.9, 1.0))
            await self.check_all()

    async def check_all(self) -> None:
        """One renewal pass over what this PoP serves (the loop's body; tests call it).
        A name `wanted(name)` says is no longer bound is not renewed (no order for
        an endpoint that is gone); it is dropped from memory once expired."""
        now = self.clock()
        for name, entry in list(self._served.items()):
            if not self.wanted(name):
                if entry.cert.not_after <= now:
                    del self._served[name]
                continue
            if name not in self._inflight:
                self.ensure(name)
        await asyncio.gather(*list(self._inflight.values()), return_exceptions=True)

    # -- the state machine of one name ---------------------------------------------------
    def _due(self, cert: StoredCert) -> float:
        """When `cert` is due: its renew_at with jitter, drawn once per serial."""
        due = self._dues.get(cert.serial)
        if due is None:
            if len(self._dues) > 4 * max(16, len(self._served)):
                self._dues.clear()
            due = self._dues[cert.serial] = schedule.renew_at(cert.not_before, cert.not_after,
                                                              self.settings.renew_at, self.rng)
        return due

    def _held(self, cert: StoredCert | None) -> schedule.Held | None:
        if cert is None:
            return None
        return schedule.Held(cert.not_before, cert.not_after, self._due(cert))

    async def _obtain(self, name: str) -> StoredCert | None:
        try:
            stored = await self.store.get(name)
        except (RegistryError, StoreError) as exc:
            self._store_failed(name, exc)
            stored = None
        else:
            self._store_ok()
        now = self.clock()
        if stored is not None and stored.not_before <= now < stored.not_after:
            self._install(name, stored)
        step = schedule.decide(self._held(stored), now, None)
        if step is schedule.Step.SERVE:
            return stored
        failure = self._failures.get(name)
        if failure is not None and now < failure.next_try:
            return stored   # backing off after a failure: no order before next_try
        try:
            lock = await self.store.lock(name)
        except RegistryError as exc:
            log.warning(kv("acme_lock_failed", name=name, error=exc))
            return stored
        if lock is None:
            self.counts.lock_busy += 1
            return await self._wait_other(name, stored)
        try:
            return await self._order(name, stored, lock)
        finally:
            await lock.release()

    def _store_failed(self, name: str, exc: Exception) -> None:
        # Once per outage, not once per name and pass (a registry outage would flood the log).
        if not self._store_failing:
            log.warning(kv("acme_store_failed", name=name, error=exc))
        self._store_failing = True

    def _store_ok(self) -> None:
        if self._store_failing:
            log.warning(kv("acme_store_recovered"))
        self._store_failing = False

    async def _wait_other(self, name: str, old: StoredCert | None) -> StoredCert | None:
        """Another PoP orders `name`: poll the store until its result is there, the
        lock is gone, or the order timeout passes. Bounded."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.order_timeout
        while loop.time() < deadline:
            await asyncio.sleep(STORE_POLL)
            try:
                cur = await self.store.get(name)
                if cur is not None and (old is None or cur.serial != old.serial):
                    self._install(name, cur)
                    return cur
                if await self.store.lock_holder(name) is None:
                    return old   # it gave up (its failure is its log's); retried on the next pass
            except (RegistryError, StoreError) as exc:
                self._store_failed(name, exc)
        return old

    async def _order(self, name: str, old: StoredCert | None, lock: OrderLock) -> StoredCert | None:
        # Read again under the lock: another PoP may have finished just before we got it.
        try:
            cur = await self.store.get(name)
        except (RegistryError, StoreError):
            cur = old
        if cur is not None and (old is None or cur.serial != old.serial) and \
                schedule.decide(self._held(cur), self.clock(), True) is schedule.Step.SERVE:
            self._install(name, cur)
            return cur
        renewal = old is not None and old.not_after > self.clock()
        if not name.endswith("." + self.https_domain):
            try:
                await self.check_domain(name)
            except Exception as exc:  # noqa: BLE001 - the check says why in its message
                self.counts.refused += 1
                return self._failed(name, old, f"custom domain refused: {exc}", renewal)
        log.info(kv("acme_order_start", name=name, renewal=renewal))
        async with self._sem:
            try:
                client = await self._get_client()
                issued = await client.order((name,), self.solvers)
                cert = StoredCert.from_chain(issued.names, issued.chain_pem, issued.key_pem, self.clock(),
                                             self.store.pop)
                await self.store.put(name, cert)
            except (AcmeError, RegistryError, StoreError, ValueError) as exc:
                return self._failed(name, old, str(exc), renewal,
                                    rate_limited=isinstance(exc, AcmeError) and exc.rate_limited)
        self._failures.pop(name, None)
        self.counts.orders_ok += 1
        self._install(name, cert)
        log.warning(kv("acme_order_done", pop=self.store.pop, name=name, names=",".join(cert.names), serial=cert.serial,
                       seconds=f"{issued.seconds:.2f}", not_after=int(cert.not_after)))
        if renewal:
            self.counts.renewals += 1
            log.warning(kv("acme_renewed", name=name, serial=cert.serial, old_serial=old.serial))  # type: ignore[union-attr]
        return cert

    def _failed(self, name: str, old: StoredCert | None, error: str, renewal: bool, *,
                rate_limited: bool = False) -> StoredCert | None:
        f = self._failures.setdefault(name, _Failure())
        f.count += 1
        delay = self.settings.retry_max if rate_limited else schedule.retry_delay(
            f.count, self.settings.retry_base, self.settings.retry_max, self.rng)
        f.next_try = self.clock() + delay
        f.error = error
        self.counts.orders_failed += 1
        log.warning(kv("acme_order_failed", pop=self.store.pop, name=name, renewal=renewal, error=error, failures=f.count,
                       next_try_s=f"{delay:.0f}", kept_serial=old.serial if old is not None else None))
        return old

    async def _get_client(self) -> AcmeClient:
        async with self._client_lock:
            if self._client is None:
                account_key = await self.store.account_key(new_account_key)
                s = self.settings
                self._client = AcmeClient(s.directory_url, account_key, email=s.email, ca_bundle=s.ca_bundle,
                                          net_timeout=s.net_timeout, order_timeout=s.order_timeout)
            return self._client

    def _install(self, name: str, cert: StoredCert) -> None:
        entry = self._served.get(name)
        if entry is not None and entry.cert.serial == cert.serial:
            return
        cert_path, key_path = self.store.write_cache(name, cert)
        self._served[name] = _Entry(cert, self._due(cert), str(cert_path), str(key_path))
        if entry is not None:
            self.counts.swaps += 1
            log.info(kv("acme_swapped", name=name, serial=cert.serial, old_serial=entry.cert.serial))
        self.store.drop_cache(name, cert.serial)
