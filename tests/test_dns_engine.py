"""dns.engine + dns.zone: whole answers, as bytes, without sockets.

Responses are decoded with dnslib (an independent decoder) to check our writer.
"""
from __future__ import annotations

import dataclasses
import struct
from collections import Counter

import dnslib
import pytest

from dns.engine import Engine
from dns.explain import explain
from dns.health import HealthStates, targets_from_config
from dns.policy import HealthView
from dns.wire import (A, AAAA, ANY, AXFR, CNAME, MX, NS, SOA, TXT, CAA, ecs_option, make_query)

JP = {f"198.18.5.{i}" for i in range(1, 5)}
EU = {f"198.18.3.{i}" for i in range(1, 5)}
US = {f"198.18.7.{i}" for i in range(1, 5)}


@pytest.fixture
def engine(example_config, lab_mmdb):
    e = Engine.from_config(example_config, lab_mmdb)
    yield e
    e.close()


@pytest.fixture
def nogeo(example_config):
    return Engine(example_config)


class Reply:
    def __init__(self, data: bytes) -> None:
        self.raw = data
        self.msg = dnslib.DNSRecord.parse(data)
        self.rcode = self.msg.header.rcode
        opts = [rr for rr in self.msg.ar if rr.rtype == 41]
        self.opt = opts[0] if opts else None
        self.ecs = None
        if self.opt is not None:
            for o in self.opt.rdata:
                if o.code == 8:
                    self.ecs = o.data

    @property
    def ips(self) -> list[str]:
        return [str(rr.rdata) for rr in self.msg.rr if rr.rtype in (A, AAAA)]

    @property
    def aa(self) -> bool:
        return bool(self.msg.header.aa)

    @property
    def ecs_scope(self) -> int:
        assert self.ecs is not None
        return self.ecs[3]

    def section(self, name: str) -> list:
        return {"an": self.msg.rr, "ns": self.msg.auth, "ar": [r for r in self.msg.ar if r.rtype != 41]}[name]


def ask(engine, name, qtype=A, *, source="127.0.0.1", tcp=False, **kw) -> Reply:
    data = engine.respond(make_query(name, qtype, **kw), source, tcp)
    assert data is not None
    return Reply(data)


# -- the acceptance case ---------------------------------------------------------------

def test_tokyo_ecs_client_gets_two_jp_addresses_ttl_30_aa_scope_24(engine):
    r = ask(engine, "demo.app.lab.test", options=ecs_option("198.19.5.0/24"))
    assert r.rcode == 0 and r.aa
    assert len(r.ips) == 2 and set(r.ips) <= JP
    assert {rr.ttl for rr in r.msg.rr} == {30}
    assert r.ecs == bytes([0, 1, 24, 24, 198, 19, 5])  # FAMILY, SOURCE, ADDRESS copied; SCOPE 24


def test_rotation_hands_out_every_jp_address_over_successive_queries(engine):
    q = make_query("demo.app.lab.test", A, options=ecs_option("198.19.5.0/24"))
    seen = Counter()
    for i in range(8):
        qq = struct.pack("!H", i) + q[2:]
        r = Reply(engine.respond(qq, "127.0.0.1"))
        assert r.msg.header.id == i  # the cached reply carries this query's ID
        seen.update(r.ips)
    assert set(seen) == JP and set(seen.values()) == {4}


def test_question_case_is_echoed(engine):
    r = ask(engine, "DeMo.ApP.lab.TEST", options=ecs_option("198.19.5.0/24"))
    assert str(r.msg.q.qname) == "DeMo.ApP.lab.TEST."
    assert str(r.msg.rr[0].rname) == "DeMo.ApP.lab.TEST."


def test_located_by_source_address_without_ecs_and_cached_per_source(engine):
    q = make_query("demo.app.lab.test", A)
    eu = Reply(engine.respond(q, "198.19.3.7"))
    jp = Reply(engine.respond(q, "198.19.5.7"))
    assert set(eu.ips) <= EU and set(jp.ips) <= JP
    assert eu.ecs is None and jp.ecs is None  # RFC 7871 7.2.1: no ECS in, no ECS out
    assert set(Reply(engine.respond(q, "198.19.3.7")).ips) <= EU


def test_ecs_source_zero_uses_resolver_address_and_scope_zero(engine):
    r = ask(engine, "demo.app.lab.test", source="198.19.5.53", options=ecs_option("0.0.0.0/0"))
    assert set(r.ips) <= JP and r.ecs_scope == 0 and r.ecs == bytes([0, 1, 0, 0])


def test_ecs_ipv6_subnet(engine):
    r = ask(engine, "demo.app.lab.test", AAAA, options=ecs_option("fd7a:5e1b:c00:300::/56"))
    assert all(ip.startswith("fd7a:5e1b:c00::3:") for ip in r.ips) and len(r.ips) == 2
    assert r.ecs_scope == 56


def test_ecs_ipv4_mapped_ipv6_is_treated_as_ipv4(engine):
    r = ask(engine, "demo.app.lab.test", options=ecs_option("::ffff:198.19.5.0/120"))
    assert set(r.ips) <= JP
    assert r.ecs[:2] == b"\x00\x02" and r.ecs[2] == 120 and r.ecs_scope == 96 + 24


def test_unlocatable_client_gets_default_order(engine):
    r = ask(engine, "demo.app.lab.test", options=ecs_option("192.0.2.0/24"))
    assert set(r.ips) <= US  # default_order starts with us


def test_without_geo_database_default_order_and_scope_zero(nogeo):
    r = ask(nogeo, "demo.app.lab.test", options=ecs_option("198.19.5.0/24"))
    assert set(r.ips) <= US and r.ecs_scope == 0


def test_country_override(engine):
    r = ask(engine, "demo.app.lab.test", options=ecs_option("198.19.30.0/24"))  # CN -> jp first
    assert set(r.ips) <= JP and r.ecs_scope == 24


# -- negative answers --------------------------------------------------------------------

def test_nxdomain_has_soa_with_negative_ttl_and_ecs_scope_zero(engine):
    r = ask(engine, "nope.lab.test", options=ecs_option("198.19.5.0/24"))
    assert r.rcode == 3 and r.aa and r.msg.rr == []
    soa = r.section("ns")
    assert len(soa) == 1 and soa[0].rtype == SOA and soa[0].ttl == 30  # min(3600, minimum 30)
    assert r.ecs_scope == 0 and r.ecs[4:] == bytes([198, 19, 5])


def test_nodata_for_other_types_of_a_gslb_name(engine):
    r = ask(engine, "demo.app.lab.test", TXT, options=ecs_option("198.19.5.0/24"))
    assert r.rcode == 0 and r.aa and r.msg.rr == [] and r.section("ns")[0].rtype == SOA
    assert r.ecs_scope == 0


def test_empty_non_terminal_is_nodata_not_nxdomain(engine):
    r = ask(engine, "app.lab.test", options=ecs_option("198.19.5.0/24"))
    assert r.rcode == 0 and r.msg.rr == [] and r.section("ns")[0].rtype == SOA
    assert r.ecs_scope == 0


def test_wildcard_matches_several_labels(engine):
    r = ask(engine, "a.b.tcp.lab.test", AAAA, options=ecs_option("198.19.5.0/24"))
    assert len(r.ips) == 2 and all(ip.startswith("fd7a:5e1b:c00::5:") for ip in r.ips)


def test_outside_the_zone_is_refused_without_aa_and_ecs_echoed(engine):
    r = ask(engine, "example.com", options=ecs_option("198.19.5.0/24"))
    assert r.rcode == 5 and not r.aa and r.msg.rr == []
    assert r.ecs_scope == 0
    # a name that merely ends with the same bytes is not in the zone
    assert ask(engine, "xlab.test").rcode == 5


def test_chaos_class_and_axfr_are_refused_with_ecs_echoed(engine):
    ch = ask(engine, "version.bind", TXT, qclass=3, options=ecs_option("198.19.5.0/24"))
    assert ch.rcode == 5 and not ch.aa and ch.ecs == bytes([0, 1, 24, 0, 198, 19, 5])
    assert ask(engine, "lab.test", AXFR).rcode == 5


# -- static data ---------------------------------------------------------------------------

def test_cname_is_followed_inside_the_zone(engine):
    r = ask(engine, "www.lab.test", options=ecs_option("198.19.3.0/24"))
    assert r.msg.rr[0].rtype == CNAME and str(r.msg.rr[0].rdata) == "demo.app.lab.test."
    assert r.msg.rr[0].ttl == 300
    assert set(r.ips) <= EU and len(r.ips) == 2
    assert r.ecs_scope == 24  # the final answer depended on location


def test_cname_query_returns_the_cname_only(engine):
    r = ask(engine, "www.lab.test", CNAME)
    assert [rr.rtype for rr in r.msg.rr] == [CNAME]


def test_ns_with_glue(engine):
    r = ask(engine, "lab.test", NS)
    assert sorted(str(rr.rdata) for rr in r.msg.rr) == ["ns1.lab.test.", "ns2.lab.test."]
    glue = {(str(rr.rname), str(rr.rdata)) for rr in r.section("ar")}
    assert glue == {("ns1.lab.test.", "127.0.0.1"), ("ns1.lab.test.", "::1"), ("ns2.lab.test.", "127.0.0.2")}


def test_soa_and_ns_addresses(engine):
    r = ask(engine, "lab.test", SOA)
    assert r.msg.rr[0].rtype == SOA and r.msg.rr[0].ttl == 3600
    assert str(r.msg.rr[0].rdata).startswith("ns1.lab.test. hostmaster.lab.test. 2026112801")
    assert ask(engine, "ns2.lab.test").ips == ["127.0.0.2"]


def test_static_mx_txt_caa(engine):
    assert str(ask(engine, "lab.test", MX).msg.rr[0].rdata) == "10 mail.lab.test."
    assert str(ask(engine, "lab.test", TXT).msg.rr[0].rdata) == '"gslb-edge lab zone"'
    caa = ask(engine, "lab.test", CAA)
    assert caa.msg.rr[0].rtype == CAA
    assert b"\x00\x05issuelab-ca.lab.test" in caa.raw  # flags 0, tag length 5 (RFC 8659 4.1)


def test_any_is_answered_minimally(engine):
    r = ask(engine, "lab.test", ANY)
    assert len({rr.rtype for rr in r.msg.rr}) == 1  # RFC 8482 4.1: one RRset
    g = ask(engine, "demo.app.lab.test", ANY, options=ecs_option("198.19.5.0/24"))
    assert set(g.ips) <= JP and len(g.ips) == 2


# -- pinned names --------------------------------------------------------------------------

def test_pinned_name_ignores_location_and_has_scope_zero(engine):
    r = ask(engine, "status.lab.test", options=ecs_option("198.19.5.0/24"))
    assert set(r.ips) <= EU and r.ecs_scope == 0
    r = ask(engine, "jp.connect.lab.test", options=ecs_option("198.19.3.0/24"))
    assert set(r.ips) <= JP


def test_pinned_pop_down_falls_back_along_the_ranking(example_config, lab_mmdb):
    e = Engine.from_config(example_config, lab_mmdb, health=HealthView(drained=frozenset({"eu"})))
    r = ask(e, "status.lab.test", options=ecs_option("198.19.5.0/24"))
    assert set(r.ips) <= JP and r.ecs_scope == 24


# -- health ----------------------------------------------------------------------------------

def test_health_change_invalidates_the_cache(engine):
    q = make_query("demo.app.lab.test", A, options=ecs_option("198.19.5.0/24"))
    assert set(Reply(engine.respond(q, "127.0.0.1")).ips) <= JP
    engine.set_health(HealthView(drained=frozenset({"jp"})))
    ips = Reply(engine.respond(q, "127.0.0.1")).ips
    assert ips and not set(ips) & JP


def test_fill_from_next_pop_when_nearest_has_one_usable(example_config, lab_mmdb):
    down = frozenset({"198.18.5.1", "198.18.5.2", "198.18.5.3"})
    e = Engine.from_config(example_config, lab_mmdb, health=HealthView(down=frozenset(("jp", a) for a in down)))
    r = ask(e, "demo.app.lab.test", options=ecs_option("198.19.5.0/24"))
    assert r.ips[0] == "198.18.5.4" and r.ips[1].startswith("198.18.1.")  # jp, then ap (Singapore)


def test_everything_down_answers_the_configured_fallback(example_config, lab_mmdb):
    down = HealthView(drained=frozenset(p.id for p in example_config.pops))
    e = Engine.from_config(example_config, lab_mmdb, health=down)
    r = ask(e, "demo.app.lab.test", options=ecs_option("198.19.5.0/24"))
    assert len(r.ips) == 2 and set(r.ips) <= JP  # fallback "nearest"
    cfg = dataclasses.replace(example_config, policy=dataclasses.replace(example_config.policy, fallback="none"))
    r = ask(Engine.from_config(cfg, lab_mmdb, health=down), "demo.app.lab.test")
    assert r.rcode == 0 and r.ips == [] and r.section("ns")[0].rtype == SOA


# -- EDNS, sizes ------------------------------------------------------------------------------

def test_opt_echoed_only_when_query_had_one(engine):
    assert ask(engine, "lab.test", SOA).opt is None
    r = ask(engine, "lab.test", SOA, edns=True, payload=4096, do=True)
    assert r.opt is not None and r.opt.rclass == 1232  # our cap
    assert r.opt.ttl & 0x8000  # RFC 3225 3: DO copied


def test_badvers_for_edns_version_one(engine):
    r = ask(engine, "lab.test", SOA, edns=True, version=1)
    assert r.msg.header.rcode == 0 and (r.opt.ttl >> 24) == 1  # extended RCODE 16 = BADVERS
    assert (r.opt.ttl >> 16) & 0xFF == 0 and r.msg.rr == []


def test_malformed_ecs_is_formerr_with_opt_and_no_ecs(engine):
    bad = struct.pack("!HHHBB", 8, 7, 1, 24, 0) + b"\xc6\x13\x05\x00"  # address too long
    r = ask(engine, "demo.app.lab.test", options=bad)
    assert r.rcode == 1 and r.opt is not None and r.ecs is None


def test_notimp_and_formerr_keep_the_id(engine):
    q = bytearray(make_query("lab.test", qid=4242))
    q[2] |= 5 << 3  # UPDATE
    r = Reply(engine.respond(bytes(q), "127.0.0.1"))
    assert r.rcode == 4 and r.msg.header.id == 4242
    q = bytearray(make_query("lab.test", qid=4343))
    q[5] = 2  # QDCOUNT 2
    out = engine.respond(bytes(q), "127.0.0.1")
    assert out[:2] == struct.pack("!H", 4343) and out[3] & 0xF == 1


def test_garbage_is_dropped(engine):
    assert engine.respond(b"\x00\x01", "127.0.0.1") is None
    assert engine.stats["internal_errors"] == 0


def _all_fallback(cfg):
    return dataclasses.replace(cfg, policy=dataclasses.replace(cfg.policy, fallback="all"))


def test_too_big_for_udp_is_truncated_and_full_over_tcp(example_config, lab_mmdb):
    down = HealthView(drained=frozenset(p.id for p in example_config.pops))
    e = Engine.from_config(_all_fallback(example_config), lab_mmdb, health=down)
    udp = ask(e, "demo.app.lab.test", AAAA)  # 32 AAAA records do not fit 512 octets
    assert udp.msg.header.tc and udp.msg.rr == [] and len(udp.raw) <= 512
    tcp = ask(e, "demo.app.lab.test", AAAA, tcp=True)
    assert not tcp.msg.header.tc and len(tcp.ips) == 32
    big = ask(e, "demo.app.lab.test", AAAA, edns=True, payload=4096)
    assert not big.msg.header.tc and len(big.ips) == 32 and len(big.raw) <= 1232


def test_edns_payload_below_512_counts_as_512(example_config, lab_mmdb):
    e = Engine(example_config)
    assert e.limit(type("E", (), {"udp_payload": 100})(), False) == 512
    assert e.limit(type("E", (), {"udp_payload": 9000})(), False) == 1232
    assert e.limit(None, False) == 512 and e.limit(None, True) == 65535


def test_explain_reports_location_ranking_addresses_ttl_and_scope(engine):
    out = explain(engine, "demo.app.lab.test", A, "127.0.0.1", "198.19.5.0/24")
    assert out["location"]["city"] == "Tokyo" and out["ranking"][0] == "jp"
    assert out["ttl"] == 30 and out["ecs_scope"] == 24 and out["rcode"] == "NOERROR"
    assert len(out["answer"]) == 2 and all("198.18.5." in a for a in out["answer"])


def test_rotation_is_shared_by_queries_that_differ_only_in_a_cookie(engine):
    seen = Counter()
    for i in range(8):
        cookie = struct.pack("!HH", 10, 8) + bytes([i]) * 8  # every query its own client cookie
        seen.update(ask(engine, "demo.app.lab.test", options=ecs_option("198.19.5.0/24") + cookie).ips)
    assert set(seen) == JP and set(seen.values()) == {4}


@pytest.mark.parametrize("subnet,pop", [
    ("210.130.0.0/24", "jp"), ("80.150.1.0/24", "eu"), ("200.147.1.0/24", "sa"),
    ("64.233.160.0/24", "us-cal-1"), ("128.101.101.0/24", "us"), ("2a02:8070::/48", "eu"),
])
def test_real_geolite2_city_places_public_subnets_at_their_nearest_pop(example_config, geolite2_city, subnet, pop):
    e = Engine.from_config(example_config, geolite2_city)
    try:
        out = explain(e, "demo.app.lab.test", A, "127.0.0.1", subnet)
        assert out["ranking"][0] == pop and out["policy"][0]["pops_used"] == [pop]
        assert out["ecs_scope"] > 0
    finally:
        e.close()


def test_replies_of_one_shape_still_echo_each_querys_own_subnet(engine):
    a = ask(engine, "demo.app.lab.test", options=ecs_option("192.0.2.0/24"))
    b = ask(engine, "demo.app.lab.test", options=ecs_option("203.0.113.0/24"))
    c = ask(engine, "demo.app.lab.test", options=ecs_option("198.51.100.0/24"), do=True)
    assert a.ecs[4:] == bytes([192, 0, 2]) and b.ecs[4:] == bytes([203, 0, 113])
    assert c.ecs[4:] == bytes([198, 51, 100]) and c.opt.ttl & 0x8000
    assert set(a.ips) <= US and set(b.ips) <= US  # scopes differ: each is its own empty network


def test_drained_pops_stay_out_of_answers_with_and_without_a_checker(example_config, lab_mmdb):
    cfg = dataclasses.replace(example_config, health=dataclasses.replace(example_config.health, drained=("jp",)))
    e = Engine.from_config(cfg, lab_mmdb)
    r = ask(e, "demo.app.lab.test", options=ecs_option("198.19.5.0/24"))
    assert r.ips and not set(r.ips) & JP
    # The checker's view carries the configuration's drains (and one down address).
    states = HealthStates(targets_from_config(cfg), fall=1, config_drained=frozenset(cfg.health.drained))
    states.record("ap", "198.18.1.1", False, 1.0, "refused")
    e.set_health(states.snapshot(1.0))
    r = ask(e, "demo.app.lab.test", options=ecs_option("198.19.5.0/24"))
    assert r.ips and not set(r.ips) & JP and "198.18.1.1" not in r.ips
    e.set_health(None)  # the checker gone: the configuration's drains alone, 198.18.1.1 back
    assert e.view == HealthView(drained=frozenset({"jp"}))


def test_log_decisions_writes_one_line_per_computed_answer(example_config, lab_mmdb, capsys):
    e = Engine.from_config(example_config, lab_mmdb, log_decisions=True)
    q = make_query("demo.app.lab.test", A, options=ecs_option("198.19.5.0/24"))
    e.respond(q, "127.0.0.1")
    e.respond(q, "127.0.0.1")  # a cache hit: not logged
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "event=answer" in ln]
    assert len(lines) == 1
    assert "qname=demo.app.lab.test." in lines[0] and "ecs=198.19.5.0/24" in lines[0]
    assert "scope=24" in lines[0] and "pops=jp" in lines[0] and 'location="Tokyo,JP,AS' in lines[0]


def test_a_bug_costs_one_servfail_that_keeps_question_id_and_opt(engine, monkeypatch):
    def broken(*a, **kw):
        raise RuntimeError("a bug")
    monkeypatch.setattr(engine, "_slow", broken)
    r = ask(engine, "bug.app.lab.test", options=ecs_option("198.19.5.0/24"), qid=777)
    assert r.rcode == 2 and r.msg.header.id == 777 and r.msg.header.qr
    assert str(r.msg.q.qname) == "bug.app.lab.test." and r.opt is not None  # RFC 6891 7
    r = ask(engine, "bug.app.lab.test", edns=False)
    assert r.rcode == 2 and r.opt is None
    assert engine.stats["internal_errors"] == 2


def test_ecs_subnets_of_other_lengths_share_a_build_and_get_their_own_echo(engine, example_config, lab_mmdb):
    # /24, then /28, /32 and /25 in the same network: one reply shape, the echo (and the OPT's
    # RDLENGTH) swapped. Every reply is the one a fresh engine writes for that query alone
    # (at the same rotation step: the answer's turn counter is shared, one step a query).
    queries = [make_query("demo.app.lab.test", options=ecs_option(s), qid=i)
               for i, s in enumerate(("198.19.5.0/24", "198.19.5.16/28", "198.19.5.7/32", "198.19.5.128/25"))]
    for step, q in enumerate(queries):
        r = Reply(engine.respond(q, "127.0.0.1"))
        fresh = Engine.from_config(example_config, lab_mmdb)
        try:
            for _ in range(step):
                fresh.respond(q, "127.0.0.1")
            assert r.raw == fresh.respond(q, "127.0.0.1")
        finally:
            fresh.close()
        assert set(r.ips) <= JP and r.ecs[4:] == q[-len(r.ecs) + 4:]
    assert len(engine._built) == 1


def test_echo_swap_rebuilds_a_cut_reply_or_one_that_would_not_fit():
    from dns.engine import _swap_echo
    # A reply ending in an OPT whose options are extra (4 bytes) + an 8-byte ECS option.
    extra, echo8, echo11 = b"\x00\x0b\x00\x00", b"\x00\x08\x00\x04\x00\x01\x00\x00", b"E" * 11
    body = b"H" * 30 + (len(extra) + len(echo8)).to_bytes(2, "big") + extra + echo8
    swapped = _swap_echo(([body], len(echo8), True), echo11, extra, 512)
    assert swapped == [b"H" * 30 + (4 + 11).to_bytes(2, "big") + extra + echo11]
    assert _swap_echo(([body], len(echo8), False), echo11, extra, 512) is None     # glue dropped or TC
    assert _swap_echo(([body], len(echo8), True), echo11, extra, len(body) + 2 + 2) is None  # too big
    assert _swap_echo(([body], len(echo8), False), b"F" * 8, extra, 512) == [body[:-8] + b"F" * 8]
