"""dns.engine with [dnssec]: what a DO query gets, as bytes, without sockets.

Replies are decoded with dnslib (an independent decoder); the validators
themselves (delv, kdig, drill, ldns-verify-zone, unbound) judge the signatures
in tests/integration/test_dnssec_validators.py and the lab test.
"""
from __future__ import annotations

import ipaddress
import os
import shutil
import struct

import dnslib
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from dns.dnssec.keys import generate_key, load_key, save_key
from dns.dnssec.records import DNSKEY, NSEC, NXNAME, RRSIG, canonical_rrset, parse_type_bitmap
from dns.engine import Engine
from dns.wire import A, AAAA, ANY, CD, CNAME, MX, NS, SOA, TXT, ecs_option, make_query, name_from_text
from dns.config import ConfigError, load_dns_config

T0 = 1_800_000_000.0
JP = {f"198.18.5.{i}" for i in range(1, 5)}


def write_signed_config(d, lab_mmdb, keys=(("csk", True),), extra="", algorithm=13):
    from tests.conftest import EXAMPLES
    shutil.copy(os.path.join(EXAMPLES, "dns.toml"), os.path.join(d, "dns.toml"))
    shutil.copy(lab_mmdb, os.path.join(d, "lab.mmdb"))
    text = open(os.path.join(d, "dns.toml")).read() + "\n[dnssec]\n" + extra
    paths = []
    for i, (role, active) in enumerate(keys):
        path = os.path.join(d, f"k{i}.pem")
        if not os.path.exists(path):
            save_key(generate_key(algorithm, role), path)
        paths.append(path)
        text += f'\n[[dnssec.keys]]\nfile = "k{i}.pem"\nrole = "{role}"\nactive = {str(active).lower()}\n'
    with open(os.path.join(d, "dns.toml"), "w") as fh:
        fh.write(text)
    return os.path.join(d, "dns.toml"), paths


@pytest.fixture
def clock():
    return [T0]


@pytest.fixture
def signed(tmp_path, lab_mmdb, clock):
    path, keys = write_signed_config(str(tmp_path), lab_mmdb)
    e = Engine.from_config(load_dns_config(path), clock=lambda: clock[0])
    e.key = load_key(keys[0])
    yield e
    e.close()


def ask(e, name, qtype=A, *, do=True, source="198.19.5.10", **kw):
    q = make_query(name, qtype, edns=True, do=do, **kw)
    return dnslib.DNSRecord.parse(e.respond(q, source))


def rrsigs(section, covered=None):
    out = []
    for rr in section:
        if rr.rtype == RRSIG and (covered is None or rr.rdata.covered == covered):
            out.append(rr)
    return out


def verify_a_rrset(key, owner, ttl, ips, sig_rr):
    """Check one RRSIG over an A RRset with the public key (the canonical form rebuilt by hand)."""
    s = sig_rr.rdata
    fields = struct.pack("!HBBIIIH", A, s.algorithm, s.labels, s.orig_ttl, s.sig_exp, s.sig_inc,
                         s.key_tag) + name_from_text("lab.test.")
    data = fields + canonical_rrset(name_from_text(owner), A, 1, ttl,
                                    [ipaddress.IPv4Address(i).packed for i in ips])
    sig = s.sig
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    key.private.public_key().verify(der, data, ec.ECDSA(hashes.SHA256()))


def test_gslb_answer_with_do_is_signed_and_the_signature_verifies(signed):
    r = ask(signed, "demo.app.lab.test", A, options=ecs_option("198.19.5.0/24"))
    a = [rr for rr in r.rr if rr.rtype == A]
    assert {str(x.rdata) for x in a} <= JP and len(a) == 2
    (sig,) = rrsigs(r.rr, A)
    assert sig.ttl == a[0].ttl == sig.rdata.orig_ttl == 30  # RFC 4035 2.2: TTL of the RRset
    assert sig.rdata.labels == 4 and str(sig.rdata.name) == "lab.test."
    assert sig.rdata.key_tag == signed.key.key_tag and sig.rdata.algorithm == 13
    assert sig.rdata.sig_inc < T0 < sig.rdata.sig_exp
    verify_a_rrset(signed.key, "demo.app.lab.test.", 30, [str(x.rdata) for x in a], sig)
    # ECS still scoped to the geo network that decided the answer.
    opt = [rr for rr in r.ar if rr.rtype == 41][0]
    ecs = [o for o in opt.rdata if o.code == 8][0].data
    assert ecs[3] == 24


def test_without_do_no_dnssec_records_and_ad_never_set(signed):
    for name, qtype in (("demo.app.lab.test", A), ("nx.lab.test", A), ("lab.test", SOA)):
        r = ask(signed, name, qtype, do=False)
        assert not rrsigs(r.rr) and not rrsigs(r.auth)
        assert all(rr.rtype != NSEC for rr in r.auth)
        assert r.header.ad == 0
    assert ask(signed, "nx.lab.test", A, do=False).header.rcode == 3  # NXDOMAIN kept without DO
    assert ask(signed, "demo.app.lab.test").header.ad == 0


def test_cd_is_copied_and_ad_is_not(signed):
    q = bytearray(make_query("demo.app.lab.test", A, edns=True, do=True))
    q[3] |= CD | 0x20  # CD and AD set in the query
    r = dnslib.DNSRecord.parse(signed.respond(bytes(q), "198.19.5.10"))
    assert r.header.cd == 1 and r.header.ad == 0


def test_dnskey_at_apex_signed_by_the_key(signed):
    r = ask(signed, "lab.test", DNSKEY)
    keys = [rr for rr in r.rr if rr.rtype == DNSKEY]
    assert len(keys) == 1 and keys[0].rdata.flags == 257 and keys[0].rdata.protocol == 3
    assert keys[0].rdata.key == signed.key.public_key
    (sig,) = rrsigs(r.rr, DNSKEY)
    assert sig.rdata.key_tag == signed.key.key_tag
    # An unsigned query for DNSKEY still gets the keys (they are zone data), without RRSIG.
    r = ask(signed, "lab.test", DNSKEY, do=False)
    assert [rr.rtype for rr in r.rr] == [DNSKEY]


def nsec_of(r):
    (nsec,) = [rr for rr in r.auth if rr.rtype == NSEC]
    return nsec, parse_type_bitmap(_bitmap_bytes(nsec))


def _bitmap_bytes(nsec_rr):
    # dnslib decodes the bit map into type names; rebuild the wire to check it ourselves.
    buf = dnslib.DNSBuffer()
    nsec_rr.rdata.pack(buf)
    raw = bytes(buf.data)
    pos = 0
    while raw[pos]:
        pos += raw[pos] + 1
    return raw[pos + 1:]


def test_nxdomain_is_a_compact_answer_noerror_nsec_with_nxname(signed):
    r = ask(signed, "nx.lab.test", A)
    assert r.header.rcode == 0 and r.header.aa == 1 and not r.rr
    nsec, types = nsec_of(r)
    assert str(nsec.rname) == "nx.lab.test."
    assert str(nsec.rdata.label) == "\\000.nx.lab.test."
    assert types == {RRSIG, NSEC, NXNAME}
    assert nsec.ttl == 30  # min(SOA TTL, SOA MINIMUM)
    assert {s.rdata.covered for s in rrsigs(r.auth)} == {SOA, NSEC}
    assert any(rr.rtype == SOA for rr in r.auth)


def test_nodata_nsec_lists_the_types_present_but_not_the_one_asked(signed):
    r = ask(signed, "mail.lab.test", MX)
    _, types = nsec_of(r)
    assert types == {A, AAAA, RRSIG, NSEC}
    r = ask(signed, "lab.test", AAAA)   # the apex: the DNSKEY is listed too
    _, types = nsec_of(r)
    assert {SOA, NS, TXT, MX, DNSKEY, RRSIG, NSEC} <= types and AAAA not in types


def test_empty_non_terminal_and_wildcard_nodata(signed):
    _, types = nsec_of(ask(signed, "app.lab.test", A))
    assert types == {RRSIG, NSEC}
    nsec, types = nsec_of(ask(signed, "demo.app.lab.test", TXT))  # under *.app: a GSLB name
    assert str(nsec.rname) == "demo.app.lab.test." and types == {A, AAAA, RRSIG, NSEC}


def test_wildcard_answer_is_signed_as_the_query_name(signed):
    r = ask(signed, "x.y.app.lab.test", A)
    (sig,) = rrsigs(r.rr, A)
    # Labels = the query name's: signed online as itself, no wildcard proof needed.
    assert sig.rdata.labels == 5 and str(sig.rname) == "x.y.app.lab.test."


def test_cname_chain_each_rrset_signed_and_denial_for_the_target(tmp_path, lab_mmdb, clock):
    path, _ = write_signed_config(str(tmp_path), lab_mmdb)
    with open(path, "a") as fh:
        fh.write('\n[[record]]\nname = "dangling"\ntype = "CNAME"\nvalue = "gone.lab.test."\n')
    e = Engine(load_dns_config(path), clock=lambda: clock[0])
    r = ask(e, "www.lab.test", A)
    assert [rr.rtype for rr in r.rr] == [CNAME, RRSIG, A, A, RRSIG]
    r = ask(e, "dangling.lab.test", A)
    assert r.header.rcode == 0 and [rr.rtype for rr in r.rr] == [CNAME, RRSIG]
    nsec, types = nsec_of(r)
    assert str(nsec.rname) == "gone.lab.test." and NXNAME in types


def test_refused_outside_the_zone_is_not_signed(signed):
    r = ask(signed, "example.com", A)
    assert r.header.rcode == 5 and not r.auth and not rrsigs(r.rr)


def test_one_signature_for_every_rotation_and_fast_path_replies_are_cached(signed):
    seen, sets, sigs = set(), set(), set()
    for _ in range(4):
        r = ask(signed, "demo.app.lab.test", A, options=ecs_option("198.19.5.0/24"))
        got = frozenset(str(rr.rdata) for rr in r.rr if rr.rtype == A)
        seen |= got
        sets.add(got)
        sigs |= {rr.rdata.sig for rr in rrsigs(r.rr, A)}
    assert seen == JP
    made = signed.signer.stats["signatures"]
    misses = signed.stats["misses"]
    for _ in range(8):
        ask(signed, "demo.app.lab.test", A, options=ecs_option("198.19.5.0/24"))
    assert signed.stats["misses"] == misses and signed.signer.stats["signatures"] == made
    # One signature per distinct address set, whatever the order on the wire.
    assert len(sigs) == len(sets)


def test_signing_period_end_drops_cached_replies_and_resigns(signed, clock):
    r1 = ask(signed, "lab.test", SOA)
    (s1,) = rrsigs(r1.rr, SOA)
    clock[0] = T0 + 100
    assert rrsigs(ask(signed, "lab.test", SOA).rr, SOA)[0].rdata.sig == s1.rdata.sig
    clock[0] = signed.signer.refresh_at
    (s2,) = rrsigs(ask(signed, "lab.test", SOA).rr, SOA)
    assert s2.rdata.sig_inc > s1.rdata.sig_inc and s2.rdata.sig_exp > s1.rdata.sig_exp
    assert s2.rdata.sig_exp - clock[0] >= 6 * 86400  # always at least validity - refresh left


def test_signed_answer_too_big_for_the_udp_limit_truncates(tmp_path, lab_mmdb, clock):
    path, _ = write_signed_config(str(tmp_path), lab_mmdb)
    with open(path, "a") as fh:
        fh.write('\n[[record]]\nname = "big"\ntype = "TXT"\nvalue = "' + "x" * 420 + '"\n')
    e = Engine(load_dns_config(path), clock=lambda: clock[0])
    # Unsigned it fits in 512; the RRSIG (about 100 more octets) does not: TC=1, empty sections.
    plain = e.respond(make_query("big.lab.test", TXT, edns=True, payload=512), "198.19.5.10")
    assert len(plain) <= 512 and not dnslib.DNSRecord.parse(plain).header.tc
    raw = e.respond(make_query("big.lab.test", TXT, edns=True, do=True, payload=512), "198.19.5.10")
    r = dnslib.DNSRecord.parse(raw)
    assert len(raw) <= 512 and r.header.tc == 1 and not r.rr and not r.auth
    assert [rr.rtype for rr in r.ar] == [41]  # the OPT stays, DO copied
    raw = e.respond(make_query("big.lab.test", TXT, edns=True, do=True, payload=512), "198.19.5.10", True)
    r = dnslib.DNSRecord.parse(raw)  # over TCP the whole signed answer
    assert r.header.tc == 0 and [rr.rtype for rr in r.rr] == [TXT, RRSIG]
    # NS with glue: the signed glue goes first when space runs out (RFC 2181 9).
    full = ask(e, "lab.test", NS, payload=1232)
    assert {rr.rtype for rr in full.ar} >= {A, RRSIG}


def test_fuzzed_do_queries_never_hit_the_bug_net(signed):
    import random
    rng = random.Random(19)
    seeds = [make_query(n, t, edns=True, do=True) for n, t in (
        ("demo.app.lab.test", A), ("nx.lab.test", A), ("lab.test", DNSKEY), ("www.lab.test", ANY),
        ("app.lab.test", AAAA))]
    for _ in range(3000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        out = signed.respond(bytes(data), "198.19.5.9")
        if out is not None:
            assert out[:2] == data[:2]
    assert signed.stats["internal_errors"] == 0


def test_ed25519_keys_sign_too(tmp_path, lab_mmdb, clock):
    path, keys = write_signed_config(str(tmp_path), lab_mmdb, algorithm=15)
    e = Engine(load_dns_config(path), clock=lambda: clock[0])
    (sig,) = rrsigs(ask(e, "demo.app.lab.test").rr, A)
    assert sig.rdata.algorithm == 15 and len(sig.rdata.sig) == 64


def test_config_errors_name_the_line(tmp_path, lab_mmdb):
    path, _ = write_signed_config(str(tmp_path), lab_mmdb, keys=(("zsk", True),))
    with pytest.raises(ConfigError, match="no active csk or ksk"):
        load_dns_config(path)
    path, _ = write_signed_config(str(tmp_path), lab_mmdb, keys=(("boss", True),))
    with pytest.raises(ConfigError, match=r"dns.toml:\d+: dnssec.keys\[0\].role"):
        load_dns_config(path)
    path, _ = write_signed_config(str(tmp_path), lab_mmdb, extra="signature_validity = 86400\n")
    with pytest.raises(ConfigError, match="signature_validity"):
        load_dns_config(path)
    path, keys = write_signed_config(str(tmp_path), lab_mmdb)
    os.chmod(keys[0], 0o644)
    with pytest.raises(ConfigError, match=r"dns.toml:\d+: dnssec.keys\[0\].file: .*chmod 600"):
        Engine(load_dns_config(path))


def test_signing_off_without_keys_changes_nothing(example_config):
    e = Engine(example_config)
    assert e.signer is None
    r = dnslib.DNSRecord.parse(e.respond(make_query("lab.test", DNSKEY, edns=True, do=True), "127.0.0.1"))
    assert not r.rr and not rrsigs(r.auth)
