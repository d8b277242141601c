"""DNS-01 TXT records from the registry (dns/acme.py, ZoneData.set_acme): bytes in, bytes out.

Replies are decoded with dnslib (an independent decoder). The registry poll is
driven against a small HTTP server on loopback that answers /v3/kv/range the
way etcd 3.4's gateway does (the real etcd is in
tests/integration/test_dns_acme_etcd.py).
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import shutil
import struct

import dnslib
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from dns import acme
from dns.config import ConfigError, load_dns_config
from dns.dnssec.records import NSEC, RRSIG, canonical_rrset
from dns.engine import Engine
from dns.wire import A, ANY, CNAME, TXT, character_strings, make_query, name_from_text

T0 = 1_800_000_000.0


def digest(text: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()


V1, V2 = digest("token1.thumb"), digest("token2.thumb")


def kv(key: str, value: object) -> dict:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return {"key": base64.b64encode(key.encode()).decode(), "value": base64.b64encode(raw).decode(),
            "create_revision": "5", "mod_revision": "5", "version": "1"}


def write_config(d, lab_mmdb, extra=""):
    from tests.conftest import EXAMPLES
    shutil.copy(os.path.join(EXAMPLES, "dns.toml"), os.path.join(d, "dns.toml"))
    shutil.copy(lab_mmdb, os.path.join(d, "lab.mmdb"))
    path = os.path.join(d, "dns.toml")
    with open(path, "a") as fh:
        fh.write("\n" + extra)
    return path


@pytest.fixture
def engine(tmp_path, lab_mmdb):
    path = write_config(str(tmp_path), lab_mmdb, '[acme]\nenabled = true\nendpoints = ["http://127.0.0.1:2379"]\nttl = 7\n')
    e = Engine.from_config(load_dns_config(path))
    yield e
    e.close()


def ask(e, name, qtype=TXT, *, do=False, edns=True):
    return dnslib.DNSRecord.parse(e.respond(make_query(name, qtype, edns=edns, do=do), "198.19.5.10"))


def txt_set(entries: dict[str, list[str]]) -> dict[bytes, tuple[str, ...]]:
    return {name_from_text(n + "."): tuple(sorted(v)) for n, v in entries.items()}


# -- parsing the registry ------------------------------------------------------------

def test_parse_range_serves_valid_entries_and_skips_the_rest():
    p = "/gslb/acme/dns01/"
    obj = {"header": {"revision": "9"}, "kvs": [
        kv(p + "_acme-challenge.demo.app.lab.test", {"values": [V1, V2], "expires": T0 + 60}),
        kv(p + "_ACME-Challenge.Shop.lab.test", {"values": [V1]}),            # no expiry: served
        kv(p + "_acme-challenge.old.lab.test", {"values": [V1], "expires": T0 - 1}),  # expired
        kv(p + "www.lab.test", {"values": [V1]}),                             # not a challenge name
        kv(p + "_acme-challenge.x.lab.test", {"values": ["not base64url digest"]}),
        kv(p + "_acme-challenge.y.lab.test", b"{not json"),
        kv(p + "_acme-challenge.z.lab.test", {"values": []}),
        kv(p + "_acme-challenge.t.lab.test.", {"values": [V1]}),              # trailing dot
        kv("/gslb/bind/http/demo", {"values": [V1]}),                         # outside the space
    ]}
    got = acme.parse_range(obj, "/gslb/", T0)
    assert got.names == {name_from_text("_acme-challenge.demo.app.lab.test."): tuple(sorted([V1, V2])),
                         name_from_text("_acme-challenge.shop.lab.test."): (V1,)}
    assert got.skipped == 7


def test_parse_range_without_kvs_is_empty_and_garbage_is_an_error():
    assert acme.parse_range({"header": {"revision": "3"}}, "/gslb/", T0).names == {}
    with pytest.raises(acme.AcmeError):
        acme.parse_range([], "/gslb/", T0)
    with pytest.raises(acme.AcmeError):
        acme.parse_range({"kvs": [{"key": "%%%"}]}, "/gslb/", T0)


def test_range_body_covers_exactly_the_dns01_prefix():
    body = acme.range_body("/p/")
    assert base64.b64decode(body["key"]) == b"/p/acme/dns01/"
    assert base64.b64decode(body["range_end"]) == b"/p/acme/dns010"   # '/' + 1 == '0'
    assert acme.range_end(b"a\xff\xff") == b"b" and acme.range_end(b"\xff") == b"\x00"


# -- answers ---------------------------------------------------------------------------

def test_txt_answer_noerror_aa_ttl_and_several_values(engine):
    engine.set_acme(txt_set({"_acme-challenge.demo.app.lab.test": [V1, V2]}))
    r = ask(engine, "_acme-challenge.demo.app.lab.test")
    assert r.header.rcode == 0 and r.header.aa == 1
    assert sorted(str(rr.rdata).strip('"') for rr in r.rr) == sorted([V1, V2])
    assert {rr.ttl for rr in r.rr} == {7} and {rr.rtype for rr in r.rr} == {TXT}
    # The rdata is one <character-string> of the 43-octet digest (RFC 8555 8.4).
    wire = engine.respond(make_query("_acme-challenge.demo.app.lab.test", TXT), "198.19.5.10")
    assert bytes([43]) + V1.encode() in wire


def test_names_are_case_insensitive_and_the_owner_is_echoed_as_asked(engine):
    engine.set_acme(txt_set({"_acme-challenge.demo.app.lab.test": [V1]}))
    r = ask(engine, "_ACME-CHALLENGE.Demo.App.LAB.test")
    assert [str(rr.rdata).strip('"') for rr in r.rr] == [V1]
    assert str(r.rr[0].rname) == "_ACME-CHALLENGE.Demo.App.LAB.test."


def test_other_types_at_the_challenge_name_are_nodata_with_the_soa(engine):
    engine.set_acme(txt_set({"_acme-challenge.demo.app.lab.test": [V1]}))
    for qtype in (A, CNAME, 28):
        r = ask(engine, "_acme-challenge.demo.app.lab.test", qtype)
        assert r.header.rcode == 0 and r.header.aa == 1 and not r.rr
        assert [rr.rtype for rr in r.auth] == [6]
    assert [rr.rtype for rr in ask(engine, "_acme-challenge.demo.app.lab.test", ANY).rr] == [TXT]


def test_the_endpoint_name_keeps_its_wildcard_answer_while_a_challenge_exists(engine):
    before = ask(engine, "demo.app.lab.test", A)
    engine.set_acme(txt_set({"_acme-challenge.demo.app.lab.test": [V1]}))
    after = ask(engine, "demo.app.lab.test", A)
    assert before.header.rcode == after.header.rcode == 0
    assert {str(rr.rdata) for rr in after.rr} and {rr.rtype for rr in after.rr} == {A}
    assert len(after.rr) == len(before.rr)
    # Another endpoint under the same wildcard is untouched; a sibling name does not exist.
    assert ask(engine, "other.app.lab.test", A).rr
    assert ask(engine, "_acme-challenge.other.app.lab.test", TXT).header.rcode == 0


def test_a_delete_takes_the_txt_away_and_the_wildcard_answers_again(engine):
    engine.set_acme(txt_set({"_acme-challenge.shop.lab.test": [V1]}))
    assert ask(engine, "_acme-challenge.shop.lab.test").rr
    engine.set_acme({})
    r = ask(engine, "_acme-challenge.shop.lab.test")
    assert r.header.rcode == 3 and not r.rr   # NXDOMAIN again (no wildcard covers lab.test)
    assert ask(engine, "shop.lab.test", A).header.rcode == 3


def test_owners_outside_the_zone_or_at_a_cname_are_not_served(engine):
    refused = engine.set_acme(txt_set({"_acme-challenge.shop.example.test": [V1],
                                       "_acme-challenge.lab.test": [V2]}))
    assert refused == [name_from_text("_acme-challenge.shop.example.test.")]
    assert ask(engine, "_acme-challenge.shop.example.test").header.rcode == 5  # REFUSED
    assert [str(rr.rdata).strip('"') for rr in ask(engine, "_acme-challenge.lab.test").rr] == [V2]


def test_static_records_and_apex_unchanged(engine):
    engine.set_acme(txt_set({"_acme-challenge.lab.test": [V1]}))
    apex = ask(engine, "lab.test")
    assert [str(rr.rdata).strip('"') for rr in apex.rr] == ["gslb-edge lab zone"]
    assert ask(engine, "www.lab.test", A).rr[0].rtype == CNAME


def test_reply_cache_is_dropped_on_change(engine):
    engine.set_acme(txt_set({"_acme-challenge.demo.app.lab.test": [V1]}))
    assert len(ask(engine, "_acme-challenge.demo.app.lab.test").rr) == 1
    assert len(ask(engine, "_acme-challenge.demo.app.lab.test").rr) == 1   # from the cache
    engine.set_acme(txt_set({"_acme-challenge.demo.app.lab.test": [V1, V2]}))
    assert len(ask(engine, "_acme-challenge.demo.app.lab.test").rr) == 2


# -- DNSSEC ----------------------------------------------------------------------------

@pytest.fixture
def signed(tmp_path, lab_mmdb):
    from tests.test_dnssec_engine import write_signed_config
    path, keys = write_signed_config(
        str(tmp_path), lab_mmdb,
        extra='\n[acme]\nenabled = true\nendpoints = ["http://127.0.0.1:2379"]\nttl = 7\n')
    from dns.dnssec.keys import load_key
    e = Engine.from_config(load_dns_config(path), clock=lambda: T0)
    e.key = load_key(keys[0])
    yield e
    e.close()


def test_signed_txt_rrset_verifies_with_the_zone_key(signed):
    signed.set_acme(txt_set({"_acme-challenge.demo.app.lab.test": [V1, V2]}))
    r = ask(signed, "_acme-challenge.demo.app.lab.test", do=True)
    txt = [rr for rr in r.rr if rr.rtype == TXT]
    (sig,) = [rr for rr in r.rr if rr.rtype == RRSIG]
    assert len(txt) == 2 and sig.rdata.covered == TXT and sig.ttl == 7 and sig.rdata.orig_ttl == 7
    s = sig.rdata
    owner = name_from_text("_acme-challenge.demo.app.lab.test.")
    fields = struct.pack("!HBBIIIH", TXT, s.algorithm, s.labels, s.orig_ttl, s.sig_exp, s.sig_inc,
                         s.key_tag) + name_from_text("lab.test.")
    data = fields + canonical_rrset(owner, TXT, 1, 7, [character_strings(V1), character_strings(V2)])
    der = encode_dss_signature(int.from_bytes(s.sig[:32], "big"), int.from_bytes(s.sig[32:], "big"))
    signed.key.private.public_key().verify(der, data, ec.ECDSA(hashes.SHA256()))


def nsec_types(reply):
    (nsec,) = [rr for rr in reply.auth if rr.rtype == NSEC]
    return set(str(nsec.rdata).split()[1:])


def test_signed_nodata_at_the_challenge_name_proves_txt_and_not_a(signed):
    signed.set_acme(txt_set({"_acme-challenge.demo.app.lab.test": [V1]}))
    r = ask(signed, "_acme-challenge.demo.app.lab.test", A, do=True)
    assert r.header.rcode == 0 and not r.rr
    assert nsec_types(r) == {"TXT", "RRSIG", "NSEC"}
    assert {rr.rdata.covered for rr in r.auth if rr.rtype == RRSIG} == {6, NSEC}
    # After the delete the wildcard `*.app.lab.test` covers the name again: a signed NODATA
    # for TXT with the wildcard's types; outside a wildcard the compact denial says NXNAME.
    signed.set_acme({})
    types = nsec_types(ask(signed, "_acme-challenge.demo.app.lab.test", TXT, do=True))
    assert types == {"A", "AAAA", "RRSIG", "NSEC"}
    signed.set_acme(txt_set({"_acme-challenge.shop.lab.test": [V1]}))
    assert nsec_types(ask(signed, "_acme-challenge.shop.lab.test", A, do=True)) == {"TXT", "RRSIG", "NSEC"}
    signed.set_acme({})
    types = nsec_types(ask(signed, "_acme-challenge.shop.lab.test", TXT, do=True))
    assert types == {"RRSIG", "NSEC", "TYPE128"}   # 128: NXNAME


# -- config ------------------------------------------------------------------------------

def test_config_defaults_and_errors(tmp_path, lab_mmdb):
    cfg = load_dns_config(write_config(str(tmp_path), lab_mmdb))
    assert cfg.acme.enabled is False and cfg.acme.ttl == 10 and cfg.acme.poll_interval == 1.0
    assert cfg.acme.prefix == "/gslb/"
    for extra, key in (("[acme]\nenabled = true\n", "acme.endpoints"),
                       ('[acme]\nendpoints = ["ftp://x"]\n', "acme.endpoints"),
                       ('[acme]\nttl = 0\n', "acme.ttl"),
                       ('[acme]\nprefix = "gslb"\n', "acme.prefix"),
                       ('[acme]\nbogus = 1\n', "bogus")):
        d = tmp_path / f"c{abs(hash(extra))}"
        d.mkdir()
        with pytest.raises(ConfigError) as err:
            load_dns_config(write_config(str(d), lab_mmdb, extra))
        assert key in str(err.value)


# -- the poll against a fake gateway -------------------------------------------------------

class FakeGateway:
    """Answers POST /v3/kv/range like etcd's gateway, from `self.kvs`; `self.status` != 200 fails."""

    def __init__(self):
        self.kvs: list[dict] = []
        self.status = 200
        self.bodies: list[dict] = []

    async def handle(self, request):
        from aiohttp import web
        self.bodies.append(await request.json())
        if self.status != 200:
            return web.Response(status=self.status, text='{"error":"etcdserver: no leader","code":14}')
        obj = {"header": {"revision": "7"}}
        if self.kvs:
            obj["kvs"] = self.kvs
        return web.json_response(obj)

    async def start(self):
        from aiohttp import web
        app = web.Application()
        app.router.add_post("/v3/kv/range", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        return self


def test_poll_follows_changes_fails_over_and_keeps_the_last_set(monkeypatch):
    from dns.config import AcmeSettings
    lines = io.StringIO()
    import plumbing.kvlog as kvlog
    real = kvlog.log
    monkeypatch.setattr(acme, "log", lambda *a, **k: real(*a, stream=lines, **k))

    async def main():
        import aiohttp
        good, bad = await FakeGateway().start(), await FakeGateway().start()
        bad.status = 503
        seen = []
        settings = AcmeSettings(enabled=True, endpoints=(bad.url, good.url), poll_interval=0.1)
        src = acme.AcmeTxtSource(settings, seen.append, clock=lambda: T0)
        async with aiohttp.ClientSession() as session:
            src._session = session
            good.kvs = [kv("/gslb/acme/dns01/_acme-challenge.demo.app.lab.test", {"values": [V1]})]
            await src.poll_once()
            assert src.member == 1 and len(bad.bodies) == 1       # failed over to the second
            assert [s.names for s in seen] == [txt_set({"_acme-challenge.demo.app.lab.test": [V1]})]
            await src.poll_once()
            assert len(seen) == 1 and len(bad.bodies) == 1        # no change, asked the good one first
            good.kvs = []
            await src.poll_once()
            assert seen[-1].names == {}
            good.kvs = [kv("/gslb/acme/dns01/_acme-challenge.x.lab.test", {"values": [V2]})]
            await src.poll_once()
            good.status = 503
            for _ in range(3):
                await src.poll_once()
            assert seen[-1].names == txt_set({"_acme-challenge.x.lab.test": [V2]})   # kept
            assert src.stats()["poll_errors"] == 3 and src.failing
            good.status = 200
            await src.poll_once()
            assert not src.failing
        await good.runner.cleanup()
        await bad.runner.cleanup()
        return src
    src = asyncio.run(main())
    out = lines.getvalue()
    assert out.count("acme_registry_unavailable") == 1 and out.count("acme_registry_back") == 1
    assert src.stats()["changes"] == 3 and src.stats()["names"] == 1
