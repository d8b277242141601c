"""dns.policy: N addresses of the nearest usable PoP, rotated, filled, pinned, with fallbacks; HealthView, the TTL rule."""
from __future__ import annotations

from collections import Counter

import pytest

from dns.policy import HealthView, PopAddresses, answer_ttl, select

POPS = {
    "jp": PopAddresses("jp", ("10.0.5.1", "10.0.5.2", "10.0.5.3", "10.0.5.4"), ("fd::5:1", "fd::5:2")),
    "ap": PopAddresses("ap", ("10.0.1.1", "10.0.1.2", "10.0.1.3"), ()),
    "eu": PopAddresses("eu", ("10.0.3.1", "10.0.3.2"), ("fd::3:1",)),
}
RANK = ("jp", "ap", "eu")


def test_default_health_view_says_everything_is_up():
    assert HealthView().is_up("jp", "10.0.5.1")


def test_n_addresses_of_the_nearest_pop():
    sel = select(RANK, POPS, family=4, count=2)
    assert sel.addresses == ("10.0.5.1", "10.0.5.2")
    assert sel.pops_used == ("jp",) and sel.fallback == "" and sel.location_dependent


def test_rotation_hands_out_every_address_equally():
    sel = select(RANK, POPS, family=4, count=2)
    assert len(sel.variants) == 4
    seen = Counter(a for v in sel.variants for a in v)
    assert set(seen) == set(POPS["jp"].ipv4) and set(seen.values()) == {2}
    assert all(len(set(v)) == 2 for v in sel.variants)


def test_fill_from_next_pop_when_nearest_has_fewer_usable():
    health = HealthView(down=frozenset(("jp", a) for a in ("10.0.5.1", "10.0.5.2", "10.0.5.3")))
    sel = select(RANK, POPS, family=4, count=2, health=health)
    assert sel.pops_used == ("jp", "ap")
    assert all(v[0] == "10.0.5.4" and v[1].startswith("10.0.1.") for v in sel.variants)
    assert {v[1] for v in sel.variants} == set(POPS["ap"].ipv4)


def test_down_pop_is_skipped():
    sel = select(RANK, POPS, family=4, count=2, health=HealthView(drained=frozenset({"jp"})))
    assert sel.pops_used == ("ap",)


def test_aaaa_skips_pops_without_ipv6():
    sel = select(("ap", "eu", "jp"), POPS, family=6, count=2)
    assert sel.pops_used == ("eu", "jp")
    assert sel.variants[0][0] == "fd::3:1"


def test_pin_comes_first_and_does_not_depend_on_location():
    sel = select(RANK, POPS, family=4, count=2, pin="eu")
    assert sel.pops_used == ("eu",) and not sel.location_dependent
    assert sel.order[0] == "eu"


def test_pin_down_falls_back_along_the_ranking_and_depends_on_location():
    sel = select(RANK, POPS, family=4, count=2, pin="eu", health=HealthView(drained=frozenset({"eu"})))
    assert sel.pops_used == ("jp",) and sel.location_dependent


ALL_DOWN = HealthView(drained=frozenset(POPS))


def test_all_down_fallback_nearest_ignores_health():
    sel = select(RANK, POPS, family=4, count=2, health=ALL_DOWN, fallback="nearest")
    assert sel.fallback == "nearest" and sel.addresses == ("10.0.5.1", "10.0.5.2")


def test_all_down_fallback_all_answers_every_address_in_ranking_order():
    sel = select(RANK, POPS, family=4, count=2, health=ALL_DOWN, fallback="all")
    assert sel.addresses == POPS["jp"].ipv4 + POPS["ap"].ipv4 + POPS["eu"].ipv4


def test_all_down_fallback_none_answers_nothing():
    sel = select(RANK, POPS, family=4, count=2, health=ALL_DOWN, fallback="none")
    assert sel.variants == () and sel.fallback == "none"


def test_no_pop_with_the_family_is_nodata_not_fallback():
    sel = select(("ap",), {"ap": POPS["ap"]}, family=6, count=2)
    assert sel.variants == () and sel.fallback == ""


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        select(RANK, POPS, family=5, count=2)
    with pytest.raises(ValueError):
        select(RANK, POPS, family=4, count=0)


def test_merge_is_down_if_either_view_says_so_and_its_version_moves_with_either():
    checker = HealthView(3, down=frozenset({("jp", "10.0.5.1")}), changing=frozenset({"jp"}))
    operator = HealthView(1, drained=frozenset({"eu"}))
    both = checker.merge(operator)
    assert not both.is_up("jp", "10.0.5.1") and both.is_up("jp", "10.0.5.2")
    assert not both.is_up("eu", "10.0.3.1") and both.changing == {"jp"}
    assert both.version == 4
    assert checker.merge(HealthView(2, drained=frozenset({"eu"}))).version != both.version
    assert HealthView().merge(HealthView()) == HealthView()


# -- the TTL rule ----------------------------------------------------------------------------

def test_ttl_is_lowered_when_an_answering_pop_is_changing():
    assert answer_ttl(30, 5, ("jp", "ap", "eu"), ("jp",), {"jp"}) == 5
    assert answer_ttl(30, 5, ("jp", "ap", "eu"), ("jp",), {"eu"}) == 30
    assert answer_ttl(30, 5, ("jp", "ap", "eu"), ("jp",), ()) == 30


def test_ttl_is_lowered_when_a_skipped_better_pop_is_changing():
    # jp is down and changing: the ap answer is short-lived so clients return to jp soon
    assert answer_ttl(30, 5, ("jp", "ap", "eu"), ("ap",), {"jp"}) == 5


def test_lowered_ttl_never_raises_the_configured_one():
    assert answer_ttl(3, 5, ("jp",), ("jp",), {"jp"}) == 3


def test_a_fallback_answer_gets_the_lowered_ttl():
    assert answer_ttl(30, 5, ("jp", "eu"), ("jp",), (), fallback=True) == 5
