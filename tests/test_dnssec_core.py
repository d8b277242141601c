"""The signing core against the RFC examples: key tags, DS, canonical form, RRSIGs."""
import base64
import os
import stat
import struct

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from dns.dnssec.denial import next_name
from dns.dnssec.keys import (KeyError_, generate_key, key_from_private_bytes, key_tag, load_key,
                             save_key)
from dns.dnssec.records import (DNSKEY, NSEC, NXNAME, RRSIG, canonical_rrset, label_count,
                                parse_type_bitmap, rrset_rdatas, rrsig_fields, type_bitmap)
from dns.dnssec.signer import Signer
from dns.wire import A, MX, NS, RR, Name, name_from_text, rdata_a

# RFC 6605 6.1 (ECDSA P-256 SHA-256, algorithm 13)
P256_PRIVATE = "GU6SnQ/Ou+xC5RumuIUIuJZteXT2z0O/ok1s38Et6mQ="
P256_DNSKEY = ("257 3 13 GojIhhXUN/u4v54ZQqGSnyhWJwaubCvTmeexv7bR6edb"
               "krSqQpF64cYbcB7wNcP+e+MAnLr+Wi9xMWyQLc8NAA==")
P256_DS = "55648 13 2 B4C8C1FE2E7477127B27115656AD6256F424625BF5C1E2770CE6D6E37DF61D17"
P256_RRSIG = ("qx6wLYqmh+l9oCKTN6qIc+bw6ya+KJ8oMz0YP107epXA"
              "yGmt+3SNruPFKG7tZoLBLlUzGGus7ZwmwWep666VCw==")

# RFC 8080 6.1 (Ed25519, algorithm 15): two keys, one MX RRset, deterministic signatures.
ED25519_EXAMPLES = [
    ("ODIyNjAzODQ2MjgwODAxMjI2NDUxOTAyMDQxNDIyNjI=",
     "257 3 15 l02Woi0iS8Aa25FQkUd9RMzZHJpBoRQwAQEX1SxZJA4=",
     "3613 15 2 3AA5AB37EFCE57F737FC1627013FEE07BDF241BD10F3B1964AB55C78E79A304B",
     "oL9krJun7xfBOIWcGHi7mag5/hdZrKWw15jPGrHpjQeRAvTdszaPD+QLs3fx8A4M3e23mRZ9VrbpMngwcrqNAg=="),
    ("DSSF3o0s0f+ElWzj9E/Osxw8hLpk55chkmx0LYN5WiY=",
     "257 3 15 zPnZ/QwEe7S8C5SPz2OfS5RR40ATk2/rYnE9xHIEijs=",
     "35217 15 2 401781B934E392DE492EC77AE2E15D70F6575A1C0BC59C5275C04EBE80C6614C",
     "zXQ0bkYgQTEFyfLyi9QoiY6D8ZdYo4wyUhVioYZXFdT410QPRITQSqJSnzQoSm5poJ7gD7AQR0O7KuI5k2pcBg=="),
]


def _n(text):
    return name_from_text(text)


def test_rfc6605_p256_dnskey_key_tag_and_ds():
    k = key_from_private_bytes(13, base64.b64decode(P256_PRIVATE))
    assert k.dnskey_text() == P256_DNSKEY
    assert k.key_tag == 55648
    assert k.ds_text(_n("example.net.")) == P256_DS


def test_rfc6605_p256_signature_verifies_over_our_canonical_form():
    # ECDSA signatures are randomized: the RFC's own signature must verify over the
    # bytes we build, and a signature of ours must verify with the RFC's public key.
    k = key_from_private_bytes(13, base64.b64decode(P256_PRIVATE))
    owner, signer = _n("www.example.net."), _n("example.net.")
    rr = RR(owner, A, 3600, rdata_a("192.0.2.1"))
    fields = rrsig_fields(A, 13, label_count(owner), 3600, 1284026679, 1281607479, 55648, signer)
    data = fields + canonical_rrset(owner, A, 1, 3600, rrset_rdatas([rr]))
    pub = k.private.public_key()
    sig = base64.b64decode(P256_RRSIG)
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    pub.verify(der, data, ec.ECDSA(hashes.SHA256()))
    ours = k.sign(data)
    assert len(ours) == 64
    pub.verify(encode_dss_signature(int.from_bytes(ours[:32], "big"), int.from_bytes(ours[32:], "big")),
               data, ec.ECDSA(hashes.SHA256()))


@pytest.mark.parametrize("private,dnskey,ds,signature", ED25519_EXAMPLES)
def test_rfc8080_ed25519_examples_match_exactly(private, dnskey, ds, signature):
    k = key_from_private_bytes(15, base64.b64decode(private))
    origin = _n("example.com.")
    assert k.dnskey_text() == dnskey
    assert k.ds_text(origin) == ds
    rr = RR(origin, MX, 3600, (struct.pack("!H", 10), Name(_n("mail.example.com."))))
    fields = rrsig_fields(MX, 15, 2, 3600, 1440021600, 1438207200, k.key_tag, origin)
    data = fields + canonical_rrset(origin, MX, 1, 3600, rrset_rdatas([rr]))
    assert base64.b64encode(k.sign(data)).decode() == signature


def test_key_tag_folds_the_carry():
    # RFC 4034 appendix B: the sum is taken over 16-bit words and the carry added once.
    assert key_tag(b"\xff\xff\xff\xff") == 0xFFFF
    assert key_tag(b"\x00\x01") == 1


def test_canonical_form_lowercases_owner_and_rdata_names_and_sorts():
    upper = [RR(_n("WWW.Example.NET."), NS, 60, (Name(_n("NS2.Example.net.")),)),
             RR(_n("www.example.net."), NS, 60, (Name(_n("ns1.example.net.")),))]
    lower = [RR(_n("www.example.net."), NS, 60, (Name(_n("ns1.example.net.")),)),
             RR(_n("www.example.net."), NS, 60, (Name(_n("ns2.example.net.")),))]
    a = canonical_rrset(upper[0].name, NS, 1, 60, rrset_rdatas(upper))
    b = canonical_rrset(lower[0].name, NS, 1, 60, rrset_rdatas(list(reversed(lower))))
    assert a == b and b"NS" not in a and a.index(b"ns1") < a.index(b"ns2")


def test_label_count_skips_root_and_leading_wildcard():
    assert label_count(_n("www.example.net.")) == 3
    assert label_count(_n("*.example.net.")) == 2
    assert label_count(b"\0") == 0


def test_type_bitmap_round_trip_and_rfc4034_example():
    # RFC 4034 4.3: A MX RRSIG NSEC TYPE1234
    bm = type_bitmap({A, MX, RRSIG, NSEC, 1234})
    assert bm.hex() == "0006400100000003041b000000000000000000000000000000000000000000000000000020"
    assert parse_type_bitmap(bm) == {A, MX, RRSIG, NSEC, 1234}
    assert parse_type_bitmap(type_bitmap({RRSIG, NSEC, NXNAME})) == {RRSIG, NSEC, NXNAME}


def test_next_name_is_zero_label_child_and_stays_within_255_octets():
    assert next_name(_n("Nx.Example.")) == b"\x01\x00" + _n("nx.example.")
    long = b"\x3f" + b"a" * 63 + b"\x3f" + b"b" * 63 + b"\x3f" + b"c" * 63 + b"\x3d" + b"d" * 61 + b"\0"
    assert len(long) == 255
    nxt = next_name(long)
    assert len(nxt) <= 255 and nxt > long


def test_signature_cache_one_rrsig_for_every_rotation_and_new_period_resigns():
    k = generate_key(15)
    origin = _n("lab.test.")
    s = Signer([k], origin, validity=7 * 86400, refresh=86400, jitter=3600)
    s.start(1_800_000_000)
    a1 = [RR(_n("x.lab.test."), A, 30, rdata_a("198.18.0.1")), RR(_n("x.lab.test."), A, 30, rdata_a("198.18.0.2"))]
    sig1 = s.rrsigs(a1)
    sig2 = s.rrsigs(list(reversed(a1)))
    assert sig1 == sig2 and s.stats["signatures"] == 1
    inception, expiration = struct.unpack_from("!II", sig1[0].rdata[0], 8)[::-1]
    assert inception < 1_800_000_000 < expiration
    assert 7 * 86400 <= expiration - s.period_start <= 7 * 86400 + 3600
    s.start(1_800_000_000 + 10)   # same period: cached
    assert s.rrsigs(a1) is sig1
    s.start(s.refresh_at)
    assert s.rrsigs(a1) != sig1 and s.stats["signatures"] == 2


def test_dnskey_rrset_is_signed_by_the_ksk_and_data_by_the_zsk():
    ksk, zsk = generate_key(13).with_role("ksk"), generate_key(13).with_role("zsk")
    origin = _n("lab.test.")
    s = Signer([ksk, zsk], origin)
    s.start(1_800_000_000)
    keyset = [RR(origin, DNSKEY, 3600, rd) for rd in s.dnskey_rdatas()]
    tag = lambda rr: struct.unpack_from("!H", rr.rdata[0], 16)[0]  # noqa: E731
    assert [tag(r) for r in s.rrsigs(keyset)] == [ksk.key_tag]
    assert [tag(r) for r in s.rrsigs([RR(origin, A, 30, rdata_a("198.18.0.1"))])] == [zsk.key_tag]


def test_signer_refuses_configurations_that_cannot_work():
    with pytest.raises(ValueError, match="DNSKEY"):
        Signer([generate_key(13).with_role("zsk")], _n("lab.test."))
    with pytest.raises(ValueError, match="zone's data"):
        Signer([generate_key(13).with_role("ksk")], _n("lab.test."))
    with pytest.raises(ValueError, match="validity"):
        Signer([generate_key(13)], _n("lab.test."), validity=3600, refresh=3600)
    # A published key of another algorithm that signs nothing breaks RFC 4035 2.2.
    with pytest.raises(ValueError, match="algorithm 15"):
        Signer([generate_key(13), generate_key(15).with_role("csk", active=False)], _n("lab.test."))
    # A pre-published key of the same algorithm is fine (ZSK rollover step 1).
    Signer([generate_key(13).with_role("ksk"), generate_key(13).with_role("zsk"),
            generate_key(13).with_role("zsk", active=False)], _n("lab.test."))


def test_key_file_is_0600_round_trips_and_is_refused_when_readable(tmp_path):
    k = generate_key(13)
    path = str(tmp_path / "k.pem")
    save_key(k, path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = load_key(path)
    assert again.dnskey_rdata() == k.dnskey_rdata() and again.algorithm == 13
    with pytest.raises(FileExistsError):
        save_key(k, path)
    os.chmod(path, 0o644)
    with pytest.raises(KeyError_, match="chmod 600"):
        load_key(path)
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    os.chmod(bad, 0o600)
    with pytest.raises(KeyError_, match="PKCS#8"):
        load_key(str(bad))
