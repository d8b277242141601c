"""ACME core without a CA: schedule, challenge choice, TLS-ALPN-01 certificates,
sealing, the store and its lock on the memory registry, [edge.acme] config."""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random

import pytest
from cryptography import x509

from edge.acme import schedule
from edge.acme.crypto import CryptoError, Sealer, create_key_file, load_key_file
from edge.acme.solvers import (ACME_IDENTIFIER_OID, ChallengeError, Http01Solver, Solver, TlsAlpn01Solver, choose,
                               tls_alpn_certificate)
from edge.acme.store import AcmeStore, StoredCert, StoreError
from edge.certs import CertAuthority
from edge.config import ConfigError, parse
from edge.registry import InvalidKey, MemoryRegistry

DAY = 86400.0


# -- schedule -----------------------------------------------------------------------------

def test_renew_at_two_thirds_of_the_lifetime_without_jitter():
    assert schedule.renew_at(1000.0, 1000.0 + 90 * DAY, 2 / 3) == pytest.approx(1000.0 + 60 * DAY)


def test_renew_jitter_is_bounded_and_only_earlier():
    rng = random.Random(7)
    base = schedule.renew_at(0.0, 90 * DAY, 2 / 3)
    for _ in range(500):
        at = schedule.renew_at(0.0, 90 * DAY, 2 / 3, rng)
        assert base - schedule.MAX_JITTER_S <= at <= base
    short = [schedule.renew_at(0.0, 60.0, 2 / 3, rng) for _ in range(200)]
    assert all(40.0 - 60.0 * schedule.MAX_JITTER <= s <= 40.0 for s in short)


def test_renew_fraction_outside_zero_one_is_refused():
    with pytest.raises(ValueError):
        schedule.renew_at(0, 10, 1.0)


def test_retry_delay_doubles_to_the_cap_with_jitter_in_half_to_full():
    assert [schedule.retry_delay(n, 30, 3600) for n in (0, 1, 2, 3, 8, 40)] == [0, 30, 60, 120, 3600, 3600]
    rng = random.Random(1)
    for n in range(1, 12):
        full = min(3600, 30 * 2 ** (n - 1))
        d = schedule.retry_delay(n, 30, 3600, rng)
        assert full / 2 <= d <= full


@pytest.mark.parametrize("held, now, lock, step", [
    (None, 10, None, schedule.Step.ORDER),
    (None, 10, True, schedule.Step.ORDER),
    (None, 10, False, schedule.Step.WAIT),
    (schedule.Held(0, 90, 60), 10, None, schedule.Step.SERVE),
    (schedule.Held(0, 90, 60), 10, False, schedule.Step.SERVE),
    (schedule.Held(0, 90, 60), 70, True, schedule.Step.RENEW),
    (schedule.Held(0, 90, 60), 70, False, schedule.Step.SERVE_AND_WAIT),
    (schedule.Held(0, 90, 60), 95, True, schedule.Step.ORDER),      # expired: nothing to serve meanwhile
    (schedule.Held(0, 90, 60), 95, False, schedule.Step.WAIT),
    (schedule.Held(20, 90, 60), 10, True, schedule.Step.ORDER),     # not valid yet
])
def test_decide_serves_orders_renews_or_waits(held, now, lock, step):
    assert schedule.decide(held, now, lock) is step


# -- challenge choice -----------------------------------------------------------------------

SOLVERS = {"http-01": object(), "tls-alpn-01": object()}


def test_choose_prefers_http01_then_tls_alpn():
    assert choose("demo.app.lab.test", ["tls-alpn-01", "dns-01", "http-01"], SOLVERS) == "http-01"
    assert choose("demo.app.lab.test", ["tls-alpn-01", "dns-01"], SOLVERS) == "tls-alpn-01"
    assert choose("demo.app.lab.test", ["http-01"], {"dns-01": 1, "http-01": 1}) == "http-01"


def test_choose_refuses_what_cannot_be_solved():
    with pytest.raises(ChallengeError, match="no offered challenge can be solved"):
        choose("demo.app.lab.test", ["dns-01"], SOLVERS)


def test_wildcard_needs_a_dns01_solver_and_gets_it():
    with pytest.raises(ChallengeError, match="wildcard name needs a DNS-01 solver"):
        choose("*.example.com", ["dns-01"], SOLVERS)
    assert choose("*.example.com", ["dns-01"], {**SOLVERS, "dns-01": object()}) == "dns-01"
    with pytest.raises(ChallengeError, match="offered no dns-01"):
        choose("*.example.com", ["http-01"], {**SOLVERS, "dns-01": object()})


def test_tls_alpn_certificate_carries_the_critical_acme_identifier():
    key_auth = "tok-en_1.thumbprint_x"
    cert_pem, key_pem = tls_alpn_certificate("demo.app.lab.test", key_auth)
    cert = x509.load_pem_x509_certificate(cert_pem)
    ext = cert.extensions.get_extension_for_oid(ACME_IDENTIFIER_OID)
    assert ext.critical
    # RFC 8737 3: extnValue = DER OCTET STRING (04, length 32) of SHA-256(key authorization)
    assert ext.value.value == b"\x04\x20" + hashlib.sha256(key_auth.encode()).digest()
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["demo.app.lab.test"]
    assert b"PRIVATE KEY" in key_pem


def test_solvers_satisfy_the_protocol():
    store = AcmeStore(MemoryRegistry(), Sealer(os.urandom(32)), "eu", "/tmp")
    assert isinstance(Http01Solver(store), Solver) and isinstance(TlsAlpn01Solver(store), Solver)


# -- sealing -----------------------------------------------------------------------------------

def test_seal_round_trip_and_context_binding():
    s = Sealer(os.urandom(32))
    sealed = s.seal(b"-----BEGIN PRIVATE KEY-----x", "certs/a")
    assert b"PRIVATE" not in sealed
    assert s.open(sealed, "certs/a") == b"-----BEGIN PRIVATE KEY-----x"
    with pytest.raises(CryptoError, match="does not open"):
        s.open(sealed, "certs/b")       # moved to another name
    with pytest.raises(CryptoError, match="does not open"):
        Sealer(os.urandom(32)).open(sealed, "certs/a")
    with pytest.raises(CryptoError):
        s.open(b"garbage", "certs/a")


def test_key_file_is_made_0600_and_a_readable_one_is_refused(tmp_path):
    p = tmp_path / "k"
    create_key_file(p)
    assert (p.stat().st_mode & 0o777) == 0o600
    assert len(load_key_file(p)) == 32
    with pytest.raises(FileExistsError):
        create_key_file(p)
    p.chmod(0o644)
    with pytest.raises(CryptoError, match="chmod 600"):
        load_key_file(p)
    bad = tmp_path / "bad"
    bad.write_text("short\n")
    bad.chmod(0o600)
    with pytest.raises(CryptoError, match="32-byte key"):
        load_key_file(bad)
    with pytest.raises(CryptoError, match="no deployment key"):
        load_key_file(tmp_path / "missing")


# -- registry opaque keys -----------------------------------------------------------------------

def test_memory_registry_opaque_keys_create_lease_and_validation():
    async def run():
        r = MemoryRegistry()
        assert await r.kv_get("certs/a") is None
        assert await r.kv_create("certs/a", b"1") is None
        assert await r.kv_create("certs/a", b"2") == b"1"
        await r.kv_put("certs/a", b"3")
        assert await r.kv_get("certs/a") == b"3"
        lease = await r.open_session("eu", "s1", 10)
        assert await r.kv_create("locks/a", b"held", lease) is None
        assert await r.kv_list("locks/") == {"locks/a": b"held"}
        await lease.close()
        assert await r.kv_get("locks/a") is None
        assert await r.kv_delete("certs/a") is True and await r.kv_delete("certs/a") is False
        for bad in ("", "../x", "a/../b", "a//b", "a/b/c/d/e", "sp ace", "x" * 600):
            with pytest.raises(InvalidKey):
                await r.kv_get(bad)
        with pytest.raises(InvalidKey):
            await r.kv_put("big", b"x" * (300 * 1024))
    asyncio.run(run())


# -- the store -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lab_ca(tmp_path_factory):
    return CertAuthority.create(tmp_path_factory.mktemp("ca"))


def stored(ca, name="demo.app.lab.test", pop="eu"):
    issued = ca.issue([name])
    return StoredCert.from_chain((name,), issued.cert_pem, issued.key_pem, 1.0, pop)


def test_store_keeps_the_key_sealed_and_reads_it_back(lab_ca, tmp_path):
    async def run():
        r = MemoryRegistry()
        key = os.urandom(32)
        a = AcmeStore(r, Sealer(key), "eu", tmp_path / "a")
        b = AcmeStore(r, Sealer(key), "us", tmp_path / "b")
        cert = stored(lab_ca)
        await a.put("demo.app.lab.test", cert)
        raw = await r.kv_get("certs/demo.app.lab.test")
        assert b"PRIVATE KEY" not in raw and json.loads(raw)["serial"] == cert.serial
        got = await b.get("demo.app.lab.test")
        assert got == cert and "key_pem" not in repr(got)
        cert_path, key_path = b.write_cache("demo.app.lab.test", got)
        assert (key_path.stat().st_mode & 0o777) == 0o600 and key_path.read_bytes() == cert.key_pem
        other = AcmeStore(r, Sealer(os.urandom(32)), "jp", tmp_path / "c")
        with pytest.raises(StoreError, match="does not open"):
            await other.get("demo.app.lab.test")
    asyncio.run(run())


def test_order_lock_is_exclusive_until_released(tmp_path):
    async def run():
        r = MemoryRegistry()
        key = os.urandom(32)
        eu, us = (AcmeStore(r, Sealer(key), pop, tmp_path / pop) for pop in ("eu", "us"))
        lock = await eu.lock("demo.app.lab.test")
        assert lock is not None and await us.lock("demo.app.lab.test") is None
        assert await us.lock_holder("demo.app.lab.test") == "eu"
        assert await us.lock("other.app.lab.test") is not None   # per name
        await lock.release()
        assert await us.lock_holder("demo.app.lab.test") is None
        assert await us.lock("demo.app.lab.test") is not None
    asyncio.run(run())


def test_account_key_is_made_once_per_deployment(tmp_path):
    async def run():
        r = MemoryRegistry()
        key = os.urandom(32)
        eu, us = (AcmeStore(r, Sealer(key), pop, tmp_path / pop) for pop in ("eu", "us"))
        made = []

        def make():
            made.append(1)
            return b"PEM-%d" % len(made)
        assert await eu.account_key(make) == b"PEM-1"
        assert await us.account_key(make) == b"PEM-1" and made == [1]
        assert b"PEM" not in await r.kv_get("account")
    asyncio.run(run())


# -- [edge.acme] -------------------------------------------------------------------------------

BASE = """zone = "lab.test"
[edge]
ca_dir = "/tmp/ca"
[pops.eu]
listen = ["127.0.0.1"]
"""


def test_acme_config_is_off_by_default_with_documented_defaults():
    a = parse(BASE, "eu", "edge.toml").acme
    assert not a.enabled and a.renew_at == pytest.approx(2 / 3) and a.handshake_wait == 5.0
    assert a.max_concurrent_orders == 4 and a.challenges == ("http-01", "tls-alpn-01")


def test_acme_config_reads_every_key_and_resolves_paths():
    text = BASE.replace("[pops.eu]", """[edge.acme]
enabled = true
directory_url = "https://198.18.0.60:14000/dir"
ca_bundle = "ca.pem"
email = "ops@lab.test"
deployment_key_file = "acme.key"
challenges = ["tls-alpn-01"]
renew_at = 0.5
handshake_wait = 2
max_concurrent_orders = 2
retry_base = 1
retry_max = 60
order_timeout = 30
net_timeout = 5
check_interval = 1
[pops.eu]""")
    a = parse(text, "eu", "/etc/gslb/edge.toml").acme
    assert a.enabled and a.ca_bundle == "/etc/gslb/ca.pem" and a.deployment_key_file == "/etc/gslb/acme.key"
    assert a.challenges == ("tls-alpn-01",) and a.renew_at == 0.5 and a.check_interval == 1.0


def test_acme_config_dns01_with_its_name_servers_and_wildcards():
    text = BASE.replace("[pops.eu]", """[edge.acme]
challenges = ["http-01", "dns-01"]
dns01_nameservers = ["198.18.0.11", "[fd7a:5e1b:c00::12]:53"]
wildcards = ["*.wild.app.lab.test"]
[pops.eu]""")
    a = parse(text, "eu", "edge.toml").acme
    assert a.dns01_nameservers == ("198.18.0.11", "[fd7a:5e1b:c00::12]:53")
    assert a.wildcards == ("*.wild.app.lab.test",) and "dns-01" in a.challenges


@pytest.mark.parametrize("body, message", [
    ("enabled = true\ndeployment_key_file = \"k\"", "edge.toml:4: edge.acme.directory_url: missing"),
    ("enabled = true\ndirectory_url = \"https://x/dir\"", "edge.toml:4: edge.acme.deployment_key_file: missing"),
    ("directory_url = \"ftp://x\"", "edge.toml:5: edge.acme.directory_url: expected"),
    ("renew_at = 1", "edge.toml:5: edge.acme.renew_at: expected a number 0.01..0.99"),
    ("challenges = [\"http-02\"]", "edge.toml:5: edge.acme.challenges: expected a list"),
    ("retry_base = 100\nretry_max = 10", "edge.toml:6: edge.acme.retry_max: must be at least"),
    ("max_concurrent_orders = 0", "edge.toml:5: edge.acme.max_concurrent_orders"),
    ("email = \"nobody\"", "edge.toml:5: edge.acme.email"),
    ("colour = 1", "edge.acme.colour"),
    ("challenges = [\"dns-01\"]", "edge.toml:5: edge.acme.challenges: dns-01 needs dns01_nameservers"),
    ("dns01_nameservers = [\"ns1.lab.test\"]", "edge.toml:5: edge.acme.dns01_nameservers: 'ns1.lab.test'"),
    ("wildcards = [\"*.app.lab.test\"]", "edge.toml:5: edge.acme.wildcards: a wildcard certificate needs the dns-01"),
    ("challenges = [\"dns-01\"]\ndns01_nameservers = [\"198.18.0.11\"]\nwildcards = [\"app.lab.test\"]",
     "edge.toml:7: edge.acme.wildcards: expected a list"),
])
def test_bad_acme_config_names_file_line_and_key(body, message):
    text = BASE.replace("[pops.eu]", f"[edge.acme]\n{body}\n[pops.eu]")
    with pytest.raises(ConfigError) as exc:
        parse(text, "eu", "edge.toml")
    assert message in str(exc.value)


def test_edge_refuses_to_start_with_a_readable_deployment_key(tmp_path):
    import subprocess
    import sys

    CertAuthority.create(tmp_path / "ca")
    key = tmp_path / "acme.key"
    create_key_file(key)
    key.chmod(0o644)
    (tmp_path / "edge.toml").write_text(BASE.replace('"/tmp/ca"', '"ca"').replace("[pops.eu]", """[edge.acme]
enabled = true
directory_url = "https://127.0.0.1:9/dir"
deployment_key_file = "acme.key"
[pops.eu]"""))
    r = subprocess.run([sys.executable, "-m", "gslb.cli", "edge", "--config", str(tmp_path / "edge.toml"), "--pop",
                        "eu"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "[edge.acme]" in r.stderr and "chmod 600" in r.stderr, r.stderr
