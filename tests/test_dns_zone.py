"""dns.zone lookups on a small hand-made zone: CNAME chains and loops, wildcards, ENTs."""
from __future__ import annotations

import dataclasses

import pytest

from dns.policy import HealthView
from dns.wire import A, AAAA, CNAME, MX, NOERROR, NXDOMAIN, REFUSED, SOA, TXT, name_from_text
from dns.zone import ZoneData, describe_rr
from dns.config import StaticRecord


class Place:
    """A fixed placement: what geo would say (ranking) and the scope."""

    def __init__(self, *pops):
        self.ranking = type("R", (), {"pops": pops})()
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return self


@pytest.fixture
def zone(example_config):
    extra = (
        StaticRecord("loop1.lab.test.", "CNAME", "loop2.lab.test.", 60),
        StaticRecord("loop2.lab.test.", "CNAME", "loop1.lab.test.", 60),
        StaticRecord("out.lab.test.", "CNAME", "www.example.com.", 60),
        StaticRecord("dangling.lab.test.", "CNAME", "missing.lab.test.", 60),
        StaticRecord("*.wild.lab.test.", "TXT", "wild", 60),
        StaticRecord("deep.a.b.lab.test.", "A", "192.0.2.1", 60),
    )
    cfg = dataclasses.replace(example_config, records=example_config.records + extra)
    return ZoneData(cfg)


def resolve(zone, name, qtype=A, place=None):
    return zone.resolve(name_from_text(name), qtype, place or Place("jp", "ap"), HealthView())


def test_static_answers_never_ask_for_a_placement(zone):
    place = Place("jp")
    ans = resolve(zone, "mail.lab.test", A, place)
    assert ans.rcode == NOERROR and place.calls == 0 and not ans.location_dependent


def test_gslb_answer_uses_the_placement(zone):
    place = Place("jp", "ap")
    ans = resolve(zone, "x.app.lab.test", A, place)
    assert place.calls == 1 and ans.location_dependent and len(ans.answer_variants) == 4
    assert all("198.18.5." in describe_rr(rr) for rr in ans.answer_variants[0])


def test_cname_loop_stops(zone):
    ans = resolve(zone, "loop1.lab.test")
    assert ans.rcode == NOERROR and 1 <= len(ans.answer_variants[0]) <= 8
    assert all(rr.rtype == CNAME for rr in ans.answer_variants[0])


def test_cname_out_of_zone_is_not_chased(zone):
    ans = resolve(zone, "out.lab.test")
    assert [rr.rtype for rr in ans.answer_variants[0]] == [CNAME] and ans.rcode == NOERROR


def test_cname_to_a_missing_name_is_nxdomain_with_the_cname(zone):
    ans = resolve(zone, "dangling.lab.test")
    assert ans.rcode == NXDOMAIN and [rr.rtype for rr in ans.answer_variants[0]] == [CNAME]
    assert ans.authority[0].rtype == SOA


def test_static_wildcard_synthesises_with_the_query_name(zone):
    ans = resolve(zone, "Foo.Bar.wild.lab.test", TXT)
    rr = ans.answer_variants[0][0]
    assert rr.rtype == TXT and rr.name == name_from_text("Foo.Bar.wild.lab.test")
    assert resolve(zone, "x.wild.lab.test", MX).answer_variants == ((),)  # NODATA


def test_empty_non_terminals_of_static_names(zone):
    for ent in ("a.b.lab.test", "b.lab.test"):
        ans = resolve(zone, ent)
        assert ans.rcode == NOERROR and ans.answer_variants == ((),) and ans.authority[0].rtype == SOA
    assert resolve(zone, "c.b.lab.test").rcode == NXDOMAIN


def test_out_of_zone_is_refused_without_aa(zone):
    ans = resolve(zone, "lab.test.example")
    assert ans.rcode == REFUSED and not ans.authoritative


def test_label_boundary_matters_for_zone_membership(zone):
    assert zone.contains(name_from_text("x.lab.test")) and zone.contains(name_from_text("lab.test"))
    assert not zone.contains(name_from_text("xlab.test"))
    # one 5-octet label "a\x03lab", then "test": its bytes end like the origin's, it is not inside
    assert not zone.contains(b"\x05a\x03lab\x04test\x00")


def test_aaaa_at_a_pinned_name(zone):
    ans = resolve(zone, "eu.connect.lab.test", AAAA, Place("jp"))
    assert all("fd7a:5e1b:c00::3:" in describe_rr(rr) for rr in ans.answer_variants[0])
    assert not ans.location_dependent
