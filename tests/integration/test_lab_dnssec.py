"""The lab's zone is signed and its resolver validates it: clients get AD=1.

unbound in the lab has the zone's DS as its only trust anchor (from
`gslb dns keygen` at `gslb lab up`); ns1 and ns2 sign with the same key.
AD=1 is set by the resolver only when the answer validated (RFC 4035 3.2.3);
the name servers themselves never set it.
"""
from __future__ import annotations

import os
import re
import signal
import time

import pytest
from _helpers import dig_flags as flags
from _helpers import dig_status as status

pytestmark = pytest.mark.lab

ZONE = "lab.test"


def dig(lab, host: str, *args: str) -> str:
    r = lab.run(host, "dig", "+time=2", "+tries=2", "+dnssec", *args)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def client(lab) -> str:
    return lab.role("client")[0]["name"]


@pytest.mark.parametrize("qname,qtype,want_status", [
    (f"demo.app.{ZONE}", "A", "NOERROR"),            # a GSLB answer, ECS-scoped
    (f"demo.app.{ZONE}", "AAAA", "NOERROR"),
    (f"connect.{ZONE}", "A", "NOERROR"),
    (f"{ZONE}", "SOA", "NOERROR"),
    (f"nothere-{ZONE.replace('.', '-')}.{ZONE}", "A", "NOERROR"),  # compact answer for NXDOMAIN
    (f"demo.app.{ZONE}", "TXT", "NOERROR"),          # NODATA under the wildcard
    (f"app.{ZONE}", "A", "NOERROR"),                 # empty non-terminal
])
def test_resolver_validates_and_sets_ad(lab, client, qname, qtype, want_status):
    out = dig(lab, client, qname, qtype)
    assert status(out) == want_status and "ad" in flags(out), out


def test_gslb_answer_through_the_resolver_is_signed_and_regional(lab, client):
    out = dig(lab, client, f"demo.app.{ZONE}", "A")
    assert re.search(r"\sRRSIG\s+A 13 4 ", out), out
    assert re.search(r"\sIN\s+A\s+198\.18\.", out), out


def test_name_servers_sign_alike_and_never_set_ad(lab, client):
    keys = set()
    for ns in lab.role("dns"):
        out = dig(lab, client, f"@{ns['ipv4'][0]}", ZONE, "DNSKEY", "+norec")
        assert "aa" in flags(out) and "ad" not in flags(out), out
        keys |= {line.split()[-1] for line in out.splitlines() if "\tDNSKEY\t" in line}
    assert len(keys) == 1, keys  # one shared key: both publish the same DNSKEY



def _dnskeys(out: str) -> frozenset[str]:
    """The DNSKEY records of a dig answer (flags, protocol, algorithm, key), without TTLs."""
    return frozenset(" ".join(line.split("\t")[-1].split()) for line in out.splitlines()
                     if "\tDNSKEY\t" in line)


def _reloads(path: str) -> tuple[int, int]:
    """(reloaded, reload_failed) lines in a name server's log so far."""
    with open(path, errors="replace") as fh:
        text = fh.read()
    return text.count("event=reloaded "), text.count("event=reload_failed ")


def _reload_name_servers(lab, config: str, text: str) -> None:
    """Write the lab's dns.toml, SIGHUP both name servers (our lab's, by pid), wait until
    each has logged one more `event=reloaded` (a step may leave the DNSKEY RRset as it was,
    so the answers cannot tell that the reload happened)."""
    procs = [p for ns in lab.role("dns") for p in ns["processes"]]
    assert len(procs) == 2 and all(lab.prefix in p["cmd"] or config in p["cmd"] for p in procs), procs
    before = {p["pid"]: _reloads(p["log"]) for p in procs}
    with open(config, "w") as fh:
        fh.write(text)
    for p in procs:
        os.kill(p["pid"], signal.SIGHUP)
    deadline = time.monotonic() + 20
    pending = {p["pid"]: p["log"] for p in procs}
    while pending and time.monotonic() < deadline:
        for pid, log in list(pending.items()):
            ok, failed = _reloads(log)
            assert failed == before[pid][1], f"{log}: reload_failed"
            if ok > before[pid][0]:
                del pending[pid]
        time.sleep(0.05)
    assert not pending, f"no event=reloaded within 20 s in {sorted(pending.values())}"


def test_zsk_rollover_through_the_caching_resolver_keeps_ad(lab, client, gslb_run):
    """Pre-publish a ZSK, switch to it, go back to the CSK alone: the resolver, which
    caches the DNSKEY RRset of the step before, validates every step (AD=1).
    The lab's CSK keeps its DNSKEY (flags 257) as a KSK, so the trust anchor holds."""
    config = lab.status["state"]["config"]
    original = open(config).read()
    state_dir = os.path.dirname(config)
    zsk = os.path.join(state_dir, "test-zsk.pem")
    if os.path.exists(zsk):
        os.unlink(zsk)
    gslb_run("lab", "status", "--prefix", lab.prefix)  # the lab is ours: the prefix says so
    r = gslb_run("dns", "keygen", "--out", zsk, "--role", "zsk")
    assert r.returncode == 0, r.stderr
    # The name servers run as the lab's service user and read keys again on SIGHUP: the new key
    # (0600) must be that user's, as the lab made its CSK (netns/lab.py _hand_over, docs/deploy.md).
    csk = os.stat(os.path.join(state_dir, "dnssec-csk.pem"))
    os.chown(zsk, csk.st_uid, csk.st_gid)
    csk_line = 'role = "csk"'
    assert original.count(csk_line) == 1
    steps = [
        original + f'\n[[dnssec.keys]]\nfile = "{zsk}"\nrole = "zsk"\nactive = false\n',
        original.replace(csk_line, 'role = "ksk"') + f'\n[[dnssec.keys]]\nfile = "{zsk}"\nrole = "zsk"\n',
        original,
    ]
    try:
        for i, text in enumerate(steps):
            _reload_name_servers(lab, config, text)
            if i == 0:
                # Pre-publish means waiting: the new key signs only once every cache
                # holds the DNSKEY RRset that has it (RFC 6781 4.1.1.1). The lab's
                # resolver caps TTLs at 30 s: poll it until it serves the new set.
                ns = lab.role("dns")[0]
                published = _dnskeys(dig(lab, client, f"@{ns['ipv4'][0]}", ZONE, "DNSKEY", "+norec"))
                deadline = time.monotonic() + 45
                while _dnskeys(dig(lab, client, ZONE, "DNSKEY")) != published:
                    assert time.monotonic() < deadline, "the resolver kept the old DNSKEY RRset past 45 s"
                    time.sleep(0.5)
            for qname, qtype in ((f"demo.app.{ZONE}", "A"), (f"step{i}-nothere.{ZONE}", "A"),
                                 (f"rollover-{i}.app.{ZONE}", "AAAA")):
                out = dig(lab, client, qname, qtype)
                assert status(out) == "NOERROR" and "ad" in flags(out), (i, out)
    finally:
        if open(config).read() != original:
            _reload_name_servers(lab, config, original)
        os.unlink(zsk)
