"""Signed `gslb dns` judged by real validators: delv, kdig, drill, ldns-verify-zone.

Each validator gets the zone's own trust anchor (from `gslb dns ds`) and no
network beyond the server on loopback. "fully validated" from delv and
"Chase successful" from drill are what a resolver's AD=1 rests on.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests._tools import need_tools
from tests.integration.test_dns_dig import EXAMPLES, REPO, Server

pytestmark = pytest.mark.integration


def gslb(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "gslb.cli", *args], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    if check:
        assert out.returncode == 0, out.stderr
    return out


def signed_config(d: str, keys: list[tuple[str, str, bool]]) -> str:
    """examples/dns.toml plus [[dnssec.keys]] (file, role, active); keys made when missing."""
    text = open(os.path.join(EXAMPLES, "dns.toml")).read()
    text += '\n[[record]]\nname = "dangling"\ntype = "CNAME"\nvalue = "gone.lab.test."\n'
    for file, role, active in keys:
        path = os.path.join(d, file)
        if not os.path.exists(path):
            gslb("dns", "keygen", "--out", path, "--role", role, "--zone", "lab.test")
        text += f'\n[[dnssec.keys]]\nfile = "{file}"\nrole = "{role}"\nactive = {str(active).lower()}\n'
    path = os.path.join(d, "dns.toml")
    with open(path, "w") as fh:
        fh.write(text)
    return path


def anchors(config: str, d: str, name: str = "anchors.conf") -> str:
    path = os.path.join(d, name)
    with open(path, "w") as fh:
        fh.write(gslb("dns", "ds", "--config", config, "--format", "delv").stdout)
    return path


def delv(port: int, anchor: str, *q: str) -> str:
    out = subprocess.run(["delv", "@127.0.0.1", "-p", str(port), "-a", anchor, "+root=lab.test",
                          *q], capture_output=True, text=True, timeout=30)
    return out.stdout + out.stderr


@pytest.fixture(scope="module")
def zone_dir(tmp_path_factory, lab_mmdb):
    d = tmp_path_factory.mktemp("dnssec")
    shutil.copy(lab_mmdb, d / "lab.mmdb")
    return str(d)


@pytest.fixture(scope="module")
def signed_server(zone_dir):
    config = signed_config(zone_dir, [("csk.pem", "csk", True)])
    srv = Server(config, log_dir=zone_dir)
    srv.anchor = anchors(config, zone_dir)
    yield srv
    assert srv.stop() == 0


QUERIES = [
    ("demo.app.lab.test", "A", "positive"),        # GSLB answer, by source address
    ("demo.app.lab.test", "AAAA", "positive"),
    ("connect.lab.test", "A", "positive"),
    ("lab.test", "DNSKEY", "positive"),
    ("lab.test", "SOA", "positive"),
    ("lab.test", "NS", "positive"),
    ("lab.test", "MX", "positive"),
    ("www.lab.test", "A", "positive"),             # CNAME to a GSLB name
    ("nothere.lab.test", "A", "negative"),         # NXDOMAIN as a compact answer
    ("mail.lab.test", "TXT", "negative"),          # NODATA
    ("app.lab.test", "A", "negative"),             # empty non-terminal
    ("x.demo.app.lab.test", "TXT", "negative"),    # NODATA under the wildcard
    ("dangling.lab.test", "A", "cname-negative"),  # CNAME to a name that does not exist
]


@need_tools("delv")
@pytest.mark.parametrize("name,qtype,kind", QUERIES)
def test_delv_fully_validates(signed_server, name, qtype, kind):
    out = delv(signed_server.port, signed_server.anchor, name, qtype)
    if kind == "positive":
        assert "; fully validated" in out, out
    elif kind == "negative":
        assert "; negative response, fully validated" in out, out
    else:  # the CNAME validated, then the denial for its target
        assert "; fully validated" in out and "ncache nxrrset" in out, out
    assert "unsigned" not in out and "insecure" not in out, out


@need_tools("delv")
def test_delv_with_another_zones_key_does_not_validate(signed_server, zone_dir, tmp_path):
    other = signed_config(str(tmp_path), [("other.pem", "csk", True)])
    out = delv(signed_server.port, anchors(other, str(tmp_path)), "demo.app.lab.test", "A")
    assert "fully validated" not in out and ("no valid" in out or "broken trust chain" in out
                                             or "resolution failed" in out), out


@need_tools("kdig")
def test_kdig_dnssec_shows_rrsig_and_compact_denial(signed_server):
    def kdig(*q):
        out = subprocess.run(["kdig", "@127.0.0.1", "-p", str(signed_server.port), "+time=2",
                              "+retry=0", *q], capture_output=True, text=True, timeout=20)
        return out.stdout
    out = kdig("+dnssec", "demo.app.lab.test", "A")
    assert "RRSIG\tA 13 4 30" in out and "flags: qr aa" in out.lower() and " ad" not in out.split("Flags:")[1].split(";")[0]
    out = kdig("+dnssec", "nothere.lab.test", "A")
    assert "status: NOERROR" in out and "NSEC\t\\000.nothere.lab.test. RRSIG NSEC TYPE128" in out, out
    out = kdig("nothere.lab.test", "A")   # no DO: a plain NXDOMAIN, no DNSSEC records
    assert "status: NXDOMAIN" in out and "RRSIG" not in out and "NSEC" not in out, out


@need_tools("drill")
def test_drill_chases_to_the_trust_anchor(signed_server, zone_dir):
    ds = os.path.join(zone_dir, "anchor.ds")
    with open(ds, "w") as fh:
        fh.write(gslb("dns", "ds", "--config", signed_server.config).stdout)
    for name, qtype in (("demo.app.lab.test", "A"), ("lab.test", "SOA")):
        out = subprocess.run(["drill", "-p", str(signed_server.port), "-S", "-k", ds, "@127.0.0.1",
                              name, qtype], capture_output=True, text=True, timeout=30)
        assert "Chase successful" in out.stdout + out.stderr, out.stdout + out.stderr


@need_tools("ldns-verify-zone")
def test_ldns_verify_zone_accepts_the_dump_and_rejects_a_tampered_one(signed_server, zone_dir):
    ds = os.path.join(zone_dir, "anchor.ds")
    with open(ds, "w") as fh:
        fh.write(gslb("dns", "ds", "--config", signed_server.config).stdout)
    dump = gslb("dns", "dump", "--config", signed_server.config,
                "--geoip-db", os.path.join(zone_dir, "lab.mmdb")).stdout
    zf = os.path.join(zone_dir, "signed.zone")
    with open(zf, "w") as fh:
        fh.write(dump)
    out = subprocess.run(["ldns-verify-zone", "-k", ds, zf], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "Zone is verified and complete" in out.stdout + out.stderr, \
        out.stdout + out.stderr
    # Flip one address of the mail A record: its signature no longer matches.
    bad = dump.replace("\\# 4 c6120019", "\\# 4 c612001a")
    assert bad != dump
    with open(zf, "w") as fh:
        fh.write(bad)
    out = subprocess.run(["ldns-verify-zone", "-k", ds, zf], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0, out.stdout + out.stderr
