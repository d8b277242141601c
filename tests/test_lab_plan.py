"""The lab plan loader: the example plan is valid; bad plans name file, line and key."""
from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from netns.errors import PlanError
from netns.plan import check_prefix, default_plan_path, load_plan

EXAMPLE = default_plan_path()


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "lab.toml"
    p.write_text(text)
    return p


def mutate(tmp_path: Path, old: str, new: str, count: int = 1) -> Path:
    text = EXAMPLE.read_text()
    assert old in text, old
    return write(tmp_path, text.replace(old, new, count))


def line_of(path: Path, needle: str) -> int:
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError(needle)


def test_example_plan_has_every_host_the_issue_asks_for():
    plan = load_plan(EXAMPLE)
    names = {h.name for h in plan.hosts}
    assert {"bridge", "dns1", "dns2", "resolver", "agent"} <= names
    # a 3-member etcd, one member per region (docs/lab.md)
    regs = plan.by_role("registry")
    assert [(h.name, h.region) for h in regs] == [("registry-eu", "eu"), ("registry-us", "us"),
                                                  ("registry-ap", "ap")]
    assert {f"pop-{p}" for p in ("ap", "au", "eu", "in", "jp", "sa", "us", "us-cal-1")} <= names
    assert {f"client-{p.id}" for p in plan.pops} <= names
    assert {"client-jnb", "client-lon", "client-yyz"} <= names
    assert plan.hosts[0].role == "bridge"


def test_example_plan_uses_only_the_lab_ranges_and_no_address_twice():
    plan = load_plan(EXAMPLE)
    seen = set()
    for h in plan.hosts:
        for a in h.ipv4:
            assert ipaddress.ip_address(a) in ipaddress.ip_network("198.18.0.0/15")
        for a in h.ipv6:
            assert ipaddress.ip_address(a) in ipaddress.ip_network("fd7a:5e1b:c00::/48")
        for a in h.ipv4 + h.ipv6:
            assert a not in seen
            seen.add(a)


def test_pop_numbering_follows_the_address_plan():
    plan = load_plan(EXAMPLE)
    for n, pid in enumerate(("ap", "au", "eu", "in", "jp", "sa", "us", "us-cal-1"), 1):
        pop = plan.host(f"pop-{pid}")
        assert pop.ipv4 == tuple(f"198.18.{n}.{i}" for i in range(1, 5))
        assert pop.ipv6 == tuple(f"fd7a:5e1b:c00::{n}:{i}" for i in range(1, 5))


def test_client_in_a_pop_region_inherits_the_pops_place():
    plan = load_plan(EXAMPLE)
    jp = plan.host("client-jp")
    assert jp.place.city == "Tokyo" and jp.place.country == "JP" and jp.place.lat == pytest.approx(35.6762)
    assert "198.19.5.0/24" in jp.networks


def test_address_outside_the_lab_range_is_refused_with_file_line_key(tmp_path):
    p = mutate(tmp_path, 'ipv4 = ["198.18.0.11"]', 'ipv4 = ["192.0.2.11"]')
    with pytest.raises(PlanError) as err:
        load_plan(p)
    assert str(err.value).startswith(f"{p}:{line_of(p, '192.0.2.11')}: host[1].ipv4: 192.0.2.11 is outside")


def test_address_used_twice_is_refused(tmp_path):
    p = mutate(tmp_path, 'ipv4 = ["198.18.0.12"]', 'ipv4 = ["198.18.0.11"]')
    with pytest.raises(PlanError, match=r"host\[2\]\.ipv4: 198\.18\.0\.11 is already used by host dns1"):
        load_plan(p)


def test_pop_needs_exactly_four_addresses_per_family(tmp_path):
    p = mutate(tmp_path, '"198.18.5.4"]', ']')
    with pytest.raises(PlanError, match=r"pop\[4\]\.ipv4: expected 4 addresses, got 3"):
        load_plan(p)


def test_unknown_pop_in_routing_is_refused(tmp_path):
    p = mutate(tmp_path, 'CN = ["jp", "ap"]', 'CN = ["jp", "mars"]')
    with pytest.raises(PlanError, match=r"routing\.country\.CN: unknown PoP id\(s\) mars"):
        load_plan(p)


def test_client_address_outside_its_networks_is_refused(tmp_path):
    p = mutate(tmp_path, 'ipv4 = "198.19.5.10"', 'ipv4 = "198.19.9.10"')
    with pytest.raises(PlanError, match=r"client\[4\]\.network: the client's address 198\.19\.9\.10 is in none"):
        load_plan(p)


def test_ttl_above_thirty_is_refused(tmp_path):
    p = mutate(tmp_path, "resolver_cache_max_ttl = 30", "resolver_cache_max_ttl = 60")
    with pytest.raises(PlanError) as err:
        load_plan(p)
    assert f":{line_of(p, 'resolver_cache_max_ttl = 60')}: lab.resolver_cache_max_ttl: 60: must be 1..30" in str(err.value)


def test_missing_required_key_is_named(tmp_path):
    p = mutate(tmp_path, 'name = "resolver"\nrole = "resolver"', 'name = "resolver"')
    with pytest.raises(PlanError, match=r"host\[3\]\.role: missing \(required\)"):
        load_plan(p)


def test_invalid_toml_gives_the_line(tmp_path):
    p = write(tmp_path, "[lab]\nzone = \n")
    with pytest.raises(PlanError, match=r"lab\.toml:2: not valid TOML"):
        load_plan(p)


def test_unreadable_plan_says_so(tmp_path):
    with pytest.raises(PlanError, match="missing.toml: cannot read: "):
        load_plan(tmp_path / "missing.toml")


@pytest.mark.parametrize("prefix", ["gslb", "gslbt", "a1"])
def test_valid_prefixes(prefix):
    assert check_prefix(prefix) == prefix


@pytest.mark.parametrize("prefix", ["", "Gslb", "gs-lb", "1lab", "x" * 13, "a b"])
def test_invalid_prefixes_are_refused(prefix):
    with pytest.raises(PlanError, match="lab prefix"):
        check_prefix(prefix)


def test_an_infrastructure_hosts_region_must_be_a_pop_id(tmp_path):
    path = mutate(tmp_path, 'region = "us"\nipv4 = ["198.18.0.22"]', 'region = "mars"\nipv4 = ["198.18.0.22"]')
    with pytest.raises(PlanError) as e:
        load_plan(path)
    line = line_of(path, 'region = "mars"')
    assert f":{line}:" in str(e.value), (line, str(e.value))
    assert "'mars' is not a PoP id" in str(e.value)


def test_an_even_number_of_registry_members_is_refused(tmp_path):
    text = EXAMPLE.read_text()
    start = text.index('[[host]]\nname = "registry-ap"')
    end = text.index("[[host]]", start + 1)
    path = write(tmp_path, text[:start] + text[end:])
    with pytest.raises(PlanError) as e:
        load_plan(path)
    assert "odd number of registry hosts" in str(e.value) and "found 2" in str(e.value)


@pytest.mark.parametrize("old, new, key", [
    ("resolver_cache_max_ttl = 30", "resolver_cache_max_ttl = 30\ntll = 5", "lab.tll"),
    ('name = "dns1"', 'name = "dns1"\nrole_ = "dns"', "host[1].role_"),
    ('id = "eu"', 'id = "eu"\ncty = "Frankfurt"', "pop[2].cty"),
    ("[routing]", "[routing]\ndefault_oder = []", "routing.default_oder"),
    ('name = "*.app"', 'name = "*.app"\nttl = 5', "gslb[0].ttl"),
])
def test_unknown_key_inside_a_plan_table_is_an_error_at_its_line(tmp_path, old, new, key):
    path = mutate(tmp_path, old, new)
    bad = new.split("\n")[1]
    with pytest.raises(PlanError) as e:
        load_plan(path)
    assert str(e.value).startswith(f"{path}:{line_of(path, bad)}: {key}: unknown key (known: "), str(e.value)
