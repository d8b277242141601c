import ipaddress
from pathlib import Path

import pytest

from geo.build import build_mmdb
from dns.config import load_dns_config
from geo.locate import Locator
from geo.mmdb import GeoDatabase
from geo.routing import Router
from geo.table import load_table

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def locator(tmp_path_factory):
    out = tmp_path_factory.mktemp("geo") / "lab.mmdb"
    build_mmdb(load_table(ROOT / "examples" / "geo-table.toml"), out)
    router = Router.from_dns_config(load_dns_config(str(ROOT / "examples" / "dns.toml")))
    with Locator(GeoDatabase(out), router) as loc:
        yield loc


RESOLVER = "198.19.22.53"  # a London resolver


def test_ecs_subnet_is_used_instead_of_the_resolver_address(locator):
    p = locator.locate_client(RESOLVER, ipaddress.ip_network("198.19.5.0/24"))
    assert p.pops[0] == "jp"
    assert p.scope_prefix == 24
    assert p.location.city == "Tokyo"


def test_without_ecs_the_source_address_is_located(locator):
    p = locator.locate_client(RESOLVER)
    assert p.pops[0] == "eu" and p.location.city == "London"


def test_ecs_source_zero_uses_resolver_address_and_scope_zero(locator):
    p = locator.locate_client(RESOLVER, "0.0.0.0/0")
    assert p.pops[0] == "eu"
    assert p.scope_prefix == 0
    p6 = locator.locate_client(RESOLVER, ipaddress.ip_network("::/0"))
    assert p6.pops[0] == "eu" and p6.scope_prefix == 0


def test_ecs_v6_subnet_with_v4_transport_is_located_by_the_subnet(locator):
    p = locator.locate_client("198.19.22.53", "fd7a:5e1b:c00:200::/56")
    assert p.pops[0] == "au" and p.scope_prefix == 56


def test_scope_can_be_longer_than_a_too_coarse_source_prefix(locator):
    # A /16 subnet spans networks the database tells apart: the scope returned
    # (RFC 7871 7.3.1) must be the finer network the zero-filled address is in.
    p = locator.locate_client(RESOLVER, "198.19.0.0/16")
    assert p.location is None
    assert p.scope_prefix == 24


def test_ecs_subnet_host_bits_are_ignored(locator):
    assert locator.locate_client(RESOLVER, "198.19.7.99/24").pops[0] == "us"


def test_unlocated_client_gets_default_order_and_a_scope_of_its_empty_network(locator):
    p = locator.locate_client("10.77.1.10")
    assert p.location is None
    assert p.ranking.reason == "default"
    assert p.pops == ("us", "eu", "jp", "ap", "in", "us-cal-1", "sa", "au")
    assert p.network.supernet_of(ipaddress.ip_network("10.77.1.10/32"))


def test_country_only_location_uses_the_country_map(locator):
    p = locator.locate_client(RESOLVER, "198.19.30.0/24")
    assert p.pops[:2] == ("jp", "ap") and p.ranking.matched == "CN"


def test_repeated_lookups_are_served_from_the_cache(locator):
    a = locator.locate("198.19.6.1")
    assert locator.locate("198.19.6.1") is a


def test_cache_is_bounded(tmp_path):
    out = tmp_path / "lab.mmdb"
    build_mmdb(load_table(ROOT / "examples" / "geo-table.toml"), out)
    from geo.routing import PopSite
    with Locator(GeoDatabase(out), Router([PopSite("x", 0, 0)]), cache_size=3) as loc:
        for i in range(10):
            loc.locate(f"198.19.1.{i}")
            assert len(loc._cache) <= 3


def test_log_fields_are_key_value(locator):
    line = locator.locate_client(RESOLVER, "198.19.5.0/24").log_fields()
    assert "network=198.19.5.0/24 scope=24" in line
    assert 'location="Tokyo,JP,AS (35.68,139.65)"' in line
    assert "reason=distance order=jp," in line
