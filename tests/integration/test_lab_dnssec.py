"""The lab's zone is signed and its resolver validates it: clients get AD=1.

unbound in the lab has the zone's DS as its only trust anchor (from
`gslb dns keygen` at `gslb lab up`); ns1 and ns2 sign with the same key.
AD=1 is set by the resolver only when the answer validated (RFC 4035 3.2.3);
the name servers themselves never set it.
"""
from __future__ import annotations

import re

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

