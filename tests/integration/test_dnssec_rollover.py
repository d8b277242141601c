"""Key rollovers (docs/dnssec.md, RFC 7583) on a running server, judged by delv at every step.

The server is reloaded with SIGHUP between steps, as an operator would. At
each step delv must fully validate a GSLB answer, the DNSKEY RRset and a
compact denial with the trust anchor a resolver would hold then. Between
steps, what a resolver may still have cached must keep validating: each
step's signatures are made by keys the previous step's DNSKEY RRset already
published (pre-publish), or by both keys (double signature).
"""
from __future__ import annotations

import os
import shutil
import signal
import time

import pytest

from tests._tools import need_tools
from tests.integration.test_dnssec_validators import anchors, delv, signed_config
from tests.integration.test_dns_dig import Server, udp_query
from dns.wire import make_query

pytestmark = pytest.mark.integration


def dnskey_tags_and_signers(port: int) -> tuple[set[int], set[int], set[int]]:
    """(DNSKEY key tags, key tags signing the DNSKEY RRset, key tags signing an A answer)."""
    import dnslib

    from dns.dnssec.keys import key_tag
    got = []
    for name, qtype in (("lab.test", 48), ("demo.app.lab.test", 1)):
        raw = udp_query(port, make_query(name, qtype, edns=True, do=True), timeout=2.0)
        assert raw is not None
        got.append(dnslib.DNSRecord.parse(raw))
    keys = set()
    for rr in got[0].rr:
        if rr.rtype == 48:
            buf = dnslib.DNSBuffer()
            rr.rdata.pack(buf)
            keys.add(key_tag(bytes(buf.data)))
    key_sigs = {rr.rdata.key_tag for rr in got[0].rr if rr.rtype == 46}
    a_sigs = {rr.rdata.key_tag for rr in got[1].rr if rr.rtype == 46}
    return keys, key_sigs, a_sigs


def reload_with(srv: Server, d: str, keys) -> tuple[set[int], set[int], set[int]]:
    before = dnskey_tags_and_signers(srv.port)
    signed_config(d, keys)
    srv.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        now = dnskey_tags_and_signers(srv.port)
        # Two queries per reading: a reading that straddles the swap mixes both
        # configurations, so only a new reading seen twice in a row counts.
        if now != before and dnskey_tags_and_signers(srv.port) == now:
            return now
        time.sleep(0.05)
    raise AssertionError(f"the server did not take the new keys within 15 s: {srv.logs()}")


def all_validate(port: int, anchor: str) -> None:
    for q, want in ((("demo.app.lab.test", "A"), "; fully validated"),
                    (("lab.test", "DNSKEY"), "; fully validated"),
                    (("nothere.lab.test", "A"), "; negative response, fully validated")):
        out = delv(port, anchor, *q)
        assert want in out, out


@pytest.fixture
def roll_dir(tmp_path, lab_mmdb):
    shutil.copy(lab_mmdb, tmp_path / "lab.mmdb")
    return str(tmp_path)


@need_tools("delv")
def test_zsk_rollover_by_pre_publication(roll_dir):
    d = roll_dir
    config = signed_config(d, [("ksk.pem", "ksk", True), ("zsk1.pem", "zsk", True)])
    anchor = anchors(config, d)  # the KSK's DS: unchanged through a ZSK roll
    srv = Server(config, log_dir=d)
    try:
        keys0, ksig0, asig0 = dnskey_tags_and_signers(srv.port)
        all_validate(srv.port, anchor)
        # 1. publish the new ZSK, not signing yet; wait DNSKEY TTL (RFC 7583 3.2).
        keys1, ksig1, asig1 = reload_with(srv, d, [("ksk.pem", "ksk", True), ("zsk1.pem", "zsk", True),
                                                   ("zsk2.pem", "zsk", False)])
        all_validate(srv.port, anchor)
        assert len(keys1) == 3 and asig1 == asig0 and ksig1 == ksig0
        # 2. the new ZSK signs, the old one stays published for cached signatures.
        keys2, ksig2, asig2 = reload_with(srv, d, [("ksk.pem", "ksk", True), ("zsk1.pem", "zsk", False),
                                                   ("zsk2.pem", "zsk", True)])
        all_validate(srv.port, anchor)
        new_zsk = keys1 - keys0
        assert asig2 == new_zsk and keys2 == keys1
        assert asig2 <= keys1  # a resolver holding step 1's DNSKEY RRset validates step 2's answers
        # 3. remove the old ZSK once step 1's signatures expired from caches (max zone TTL).
        keys3, ksig3, asig3 = reload_with(srv, d, [("ksk.pem", "ksk", True), ("zsk2.pem", "zsk", True)])
        all_validate(srv.port, anchor)
        assert keys3 == keys0 - asig0 | new_zsk and asig3 == new_zsk and ksig3 == ksig0
    finally:
        assert srv.stop() == 0


@need_tools("delv")
def test_csk_rollover_by_double_signature(roll_dir):
    d = roll_dir
    config = signed_config(d, [("csk1.pem", "csk", True)])
    old_anchor = anchors(config, d, "old.conf")
    srv = Server(config, log_dir=d)
    try:
        all_validate(srv.port, old_anchor)
        # 1. the new CSK signs everything next to the old one: both anchors validate.
        keys1, ksig1, asig1 = reload_with(srv, d, [("csk1.pem", "csk", True), ("csk2.pem", "csk", True)])
        assert len(keys1) == 2 and ksig1 == keys1 and asig1 == keys1
        os.rename(os.path.join(d, "dns.toml"), os.path.join(d, "both.toml"))
        signed_config(d, [("csk2.pem", "csk", True)])
        new_anchor = anchors(os.path.join(d, "dns.toml"), d, "new.conf")
        os.replace(os.path.join(d, "both.toml"), os.path.join(d, "dns.toml"))
        all_validate(srv.port, old_anchor)
        all_validate(srv.port, new_anchor)   # 2. the parent's DS changes to the new key here
        # 3. the old CSK goes, once the old DS expired from caches: the new anchor alone.
        keys3, ksig3, asig3 = reload_with(srv, d, [("csk2.pem", "csk", True)])
        all_validate(srv.port, new_anchor)
        assert len(keys3) == 1 and keys3 < keys1
        out = delv(srv.port, old_anchor, "demo.app.lab.test", "A")
        assert "fully validated" not in out, out
    finally:
        assert srv.stop() == 0
