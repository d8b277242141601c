"""The ACME manager's decisions across two PoPs sharing one (memory) registry:
one order per name, the other PoP reuses it, backoff after failures, renewal
and swap, custom domains refused. The CA is a stand-in that issues from a local
CertAuthority (the real flow against pebble: tests/integration/test_acme_pebble.py)."""
from __future__ import annotations

import asyncio
import datetime as _dt
import os
import random
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge.acme.client import AcmeError, Issued
from edge.acme.crypto import Sealer
from edge.acme.manager import AcmeManager, AcmeSettings
from edge.acme.store import AcmeStore
from edge.certs import CertAuthority
from edge.registry import MemoryRegistry

NAME = "demo.app.lab.test"
DAY = 86400.0


class LocalIssuer:
    """Stands in for an ACME CA: issues 90-day certificates from a CertAuthority's key, dated
    by the test's clock; counts orders, can fail or be held."""

    def __init__(self, ca: CertAuthority, clock) -> None:
        self.ca = ca
        self.clock = clock
        self.orders: list[tuple[str, ...]] = []
        self.fail: str | None = None
        self.gate: asyncio.Event | None = None

    async def order(self, names, solvers):
        self.orders.append(tuple(names))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise AcmeError(self.fail)
        key = ec.generate_private_key(ec.SECP256R1())
        start = _dt.datetime.fromtimestamp(self.clock.now, _dt.timezone.utc)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
                .issuer_name(self.ca.cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(start + _dt.timedelta(days=90))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
                .sign(self.ca._key, hashes.SHA256()))
        return Issued(tuple(names), cert.public_bytes(serialization.Encoding.PEM),
                      key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()), 0.01)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return CertAuthority.create(tmp_path_factory.mktemp("ca"))


def pops(ca, tmp_path, n=2, **settings):
    registry = MemoryRegistry()
    key = os.urandom(32)
    clock = Clock()
    issuer = LocalIssuer(ca, clock)
    s = AcmeSettings(**{"directory_url": "https://ca.invalid/dir", "handshake_wait": 5.0, "retry_base": 30,
                        "retry_max": 600, **settings})
    managers = [AcmeManager(s, AcmeStore(registry, Sealer(key), pop, tmp_path / pop), https_domain="app.lab.test",
                            solvers={}, client=issuer, clock=clock, rng=random.Random(i))
                for i, pop in enumerate(("eu", "us", "jp")[:n])]
    return managers, issuer, clock


def serial(manager, name=NAME):
    return manager.served()[name].serial


def test_first_handshake_orders_and_the_other_pop_reuses_the_stored_certificate(ca, tmp_path):
    async def run():
        (eu, us), issuer, _ = pops(ca, tmp_path)
        assert await eu.context(NAME, ("http/1.1",)) is not None
        assert await us.context(NAME, ("http/1.1",)) is not None
        assert issuer.orders == [(NAME,)]
        assert serial(eu) == serial(us)
        assert eu.stats()["orders_ok"] == 1 and us.stats()["orders_ok"] == 0
        assert us.context_nowait(NAME, ()) is not None          # another ALPN: same certificate
    asyncio.run(run())


def test_concurrent_first_handshakes_at_two_pops_order_once(ca, tmp_path):
    async def run():
        (eu, us), issuer, _ = pops(ca, tmp_path)
        issuer.gate = asyncio.Event()
        a = asyncio.ensure_future(eu.context(NAME))
        b = asyncio.ensure_future(us.context(NAME))
        c = asyncio.ensure_future(eu.context(NAME))   # a second handshake at eu joins its order
        for _ in range(100):
            await asyncio.sleep(0.01)
            if issuer.orders and us.stats()["lock_busy"]:
                break
        issuer.gate.set()
        got = await asyncio.gather(a, b, c)
        assert all(ctx is not None for ctx in got)
        assert len(issuer.orders) == 1 and serial(eu) == serial(us)
        assert eu.stats()["lock_busy"] + us.stats()["lock_busy"] == 1
    asyncio.run(run())


def test_handshake_waits_at_most_handshake_wait_then_falls_back(ca, tmp_path):
    async def run():
        (eu,), issuer, _ = pops(ca, tmp_path, n=1, handshake_wait=0.05)
        issuer.gate = asyncio.Event()
        assert await eu.context(NAME) is None
        assert eu.stats()["fallback_handshakes"] == 1 and eu.stats()["orders_running"] == 1
        issuer.gate.set()
        await eu.ensure(NAME)
        assert eu.context_nowait(NAME) is not None           # the order went on in the background
    asyncio.run(run())


def test_failed_order_backs_off_instead_of_ordering_at_every_handshake(ca, tmp_path):
    async def run():
        (eu,), issuer, clock = pops(ca, tmp_path, n=1)
        issuer.fail = "directory https://ca.invalid/dir: cannot connect"
        assert await eu.context(NAME) is None
        assert await eu.context(NAME) is None
        assert len(issuer.orders) == 1 and eu.stats()["orders_failed"] == 1
        clock.now += 31       # past the first backoff (at most retry_base)
        issuer.fail = None
        assert await eu.context(NAME) is not None and len(issuer.orders) == 2
    asyncio.run(run())


def test_renewal_at_two_thirds_swaps_in_a_new_certificate_everywhere(ca, tmp_path):
    async def run():
        (eu, us), issuer, clock = pops(ca, tmp_path)
        await eu.context(NAME)
        await us.context(NAME)
        old = serial(eu)
        clock.now += 30 * DAY          # not due yet (90-day certificate)
        await eu.check_all()
        await us.check_all()
        assert len(issuer.orders) == 1 and serial(us) == old
        clock.now += 31 * DAY          # past 60 days: due
        await eu.check_all()
        await us.check_all()
        assert len(issuer.orders) == 2
        assert serial(eu) == serial(us) != old
        assert eu.stats()["renewals"] + us.stats()["renewals"] == 1
    asyncio.run(run())


def test_failed_renewal_keeps_serving_the_old_certificate(ca, tmp_path):
    async def run():
        (eu,), issuer, clock = pops(ca, tmp_path, n=1)
        await eu.context(NAME)
        old = serial(eu)
        clock.now += 61 * DAY
        issuer.fail = "directory https://ca.invalid/dir: cannot connect"
        await eu.check_all()
        assert serial(eu) == old and eu.context_nowait(NAME) is not None
        assert eu.stats()["orders_failed"] == 1
    asyncio.run(run())


def test_custom_domain_is_checked_before_an_order_and_refused(ca, tmp_path):
    async def run():
        (eu,), issuer, _ = pops(ca, tmp_path, n=1)
        assert await eu.context("shop.example.com") is None
        assert issuer.orders == [] and eu.stats()["refused"] == 1
        checked = []

        async def accept(name):
            checked.append(name)
        eu.check_domain = accept
        eu._failures.clear()
        assert await eu.context("shop.example.com") is not None
        assert checked == ["shop.example.com"] and issuer.orders == [("shop.example.com",)]
    asyncio.run(run())


def test_unbound_names_never_order(ca, tmp_path):
    async def run():
        (eu,), issuer, _ = pops(ca, tmp_path, n=1)
        assert await eu.context(NAME, may_order=False) is None
        assert issuer.orders == [] and eu.stats()["fallback_handshakes"] == 1
    asyncio.run(run())


def test_a_name_no_longer_bound_is_not_renewed(ca, tmp_path):
    async def run():
        (eu,), issuer, clock = pops(ca, tmp_path, n=1)
        await eu.context(NAME)
        eu.wanted = lambda name: False
        clock.now += 61 * DAY
        await eu.check_all()
        assert len(issuer.orders) == 1 and NAME in eu.served()
        clock.now += 30 * DAY        # expired: forgotten
        await eu.check_all()
        assert eu.served() == {} and len(issuer.orders) == 1
    asyncio.run(run())


def test_a_wildcard_certificate_serves_one_label_children(ca, tmp_path):
    async def run():
        (eu,), issuer, _ = pops(ca, tmp_path, n=1)
        eu.check_domain = lambda name: asyncio.sleep(0)
        await eu.ensure("*.shop.example.com")
        assert eu.context_nowait("a.shop.example.com") is not None
        assert eu.context_nowait("a.b.shop.example.com") is None
        assert eu.context_nowait("shop.example.com") is None
    asyncio.run(run())


def test_a_registry_outage_keeps_serving_and_is_logged_once(ca, tmp_path, caplog):
    from edge.registry import RegistryUnavailable

    async def run():
        (eu,), issuer, clock = pops(ca, tmp_path, n=1)
        await eu.context(NAME)
        await eu.context("other.app.lab.test")
        registry = eu.store.registry

        async def down(key):
            raise RegistryUnavailable("etcd has no quorum: test")
        registry.kv_get = down
        for _ in range(3):
            await eu.check_all()
        assert eu.context_nowait(NAME) is not None and eu.context_nowait("other.app.lab.test") is not None
        assert sum("acme_store_failed" in r.getMessage() for r in caplog.records) == 1
        del registry.kv_get
        await eu.check_all()
        assert sum("acme_store_recovered" in r.getMessage() for r in caplog.records) == 1
    asyncio.run(run())
