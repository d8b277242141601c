import pytest
from hypothesis import given
from hypothesis import strategies as st

from geo.errors import RoutingError
from geo.location import Location
from geo.routing import PopSite, Router, rank_pops

POPS = [
    PopSite("ap", 1.2897, 103.8501),
    PopSite("au", -33.8688, 151.2093),
    PopSite("eu", 50.1109, 8.6821),
    PopSite("in", 19.0760, 72.8777),
    PopSite("jp", 35.6762, 139.6503),
    PopSite("sa", -23.5505, -46.6333),
    PopSite("us", 39.9612, -82.9988),
    PopSite("us-cal-1", 37.3382, -121.8863),
]
DEFAULT = ["us", "eu", "jp", "ap", "in", "us-cal-1", "sa", "au"]
ALL = {p.id for p in POPS}


def router(**kw):
    kw.setdefault("default_order", DEFAULT)
    kw.setdefault("by_country", {"CN": ["jp", "ap"]})
    kw.setdefault("by_continent", {"AN": ["au", "sa"]})
    return Router(POPS, **kw)


def test_client_with_coordinates_gets_nearest_pop_first():
    r = router().rank(Location(country="JP", continent="AS", city="Tokyo", lat=35.68, lon=139.69))
    assert r.pops[:3] == ("jp", "ap", "in")
    assert r.reason == "distance" and r.matched == ""
    assert r.distances_km is not None and list(r.distances_km) == sorted(r.distances_km)


def test_london_goes_to_frankfurt_and_toronto_to_ohio():
    rt = router()
    assert rt.rank(Location("GB", "EU", lat=51.5072, lon=-0.1276)).nearest == "eu"
    assert rt.rank(Location("CA", "NA", lat=43.6532, lon=-79.3832)).nearest == "us"
    assert rt.rank(Location("US", "NA", lat=37.77, lon=-122.42)).nearest == "us-cal-1"


def test_country_map_wins_over_distance_and_the_rest_follow_by_distance():
    # A Chinese client in Urumqi is nearer Mumbai than Tokyo; the map says jp, ap.
    r = router().rank(Location("CN", "AS", lat=43.8, lon=87.6))
    assert r.pops[:2] == ("jp", "ap")
    assert r.reason == "country" and r.matched == "CN"
    assert r.pops[2] == "in"  # nearest of the remaining PoPs
    assert set(r.pops) == ALL and len(r.pops) == len(ALL)


def test_country_map_without_coordinates_fills_the_rest_in_default_order():
    r = router().rank(Location("CN", "AS"))
    assert r.pops == ("jp", "ap", "us", "eu", "in", "us-cal-1", "sa", "au")
    assert r.distances_km is None


def test_continent_map_applies_when_no_country_entry_matches():
    r = router().rank(Location(None, "AN", lat=-77.85, lon=166.67))  # McMurdo
    assert r.pops[:2] == ("au", "sa")
    assert r.reason == "continent" and r.matched == "AN"


def test_country_map_wins_over_continent_map():
    rt = router(by_continent={"AS": ["in"]})
    assert rt.rank(Location("CN", "AS")).pops[:2] == ("jp", "ap")
    assert rt.rank(Location("TH", "AS")).pops[0] == "in"


def test_unlocated_client_gets_default_order():
    rt = router()
    assert rt.rank(None).pops == tuple(DEFAULT)
    assert rt.rank(None).reason == "default"
    # Known continent but no map and no coordinates: nothing to go on either.
    assert rt.rank(Location(None, "EU")).pops == tuple(DEFAULT)


def test_partial_default_order_is_completed_in_configuration_order():
    rt = Router(POPS, default_order=["jp", "eu"])
    assert rt.default_order == ("jp", "eu", "ap", "au", "in", "sa", "us", "us-cal-1")
    assert Router(POPS).default_order == tuple(p.id for p in POPS)


def test_equal_distances_keep_configuration_order():
    rt = Router([PopSite("b", 0, 10), PopSite("a", 0, -10), PopSite("c", 0, 50)])
    assert rt.rank(Location(lat=0.0, lon=0.0)).pops == ("b", "a", "c")


def test_equal_rankings_are_equal_values_usable_as_cache_keys():
    rt = router()
    a = rt.rank(Location("JP", "AS", "Tokyo", 35.68, 139.69))
    b = rt.rank(Location("JP", "AS", "Tokyo", 35.68, 139.69))
    assert a == b and hash(a) == hash(b)
    assert rt.cache_info().hits >= 1


@pytest.mark.parametrize("kwargs,key,fragment", [
    ({"by_country": {"CN": ["jp", "xx"]}}, "routing.country.CN", "unknown PoP 'xx'"),
    ({"by_country": {"CHN": ["jp"]}}, "routing.country.CHN", "alpha-2"),
    ({"by_country": {"CN": []}}, "routing.country.CN", "at least one"),
    ({"by_country": {"CN": "jp"}}, "routing.country.CN", "list of PoP ids"),
    ({"by_country": {"CN": ["jp", "jp"]}}, "routing.country.CN", "listed twice"),
    ({"by_country": {"cn": ["jp"], "CN": ["ap"]}}, "routing.country.CN", "given twice"),
    ({"by_continent": {"XX": ["jp"]}}, "routing.continent.XX", "continent code"),
    ({"default_order": ["us", "mars"]}, "routing.default_order", "unknown PoP 'mars'"),
])
def test_bad_routing_raises_error_naming_the_key(kwargs, key, fragment):
    with pytest.raises(RoutingError) as ei:
        router(**kwargs)
    assert ei.value.key == key
    assert fragment in str(ei.value)


@pytest.mark.parametrize("pops,key", [
    ([], "pop"),
    ([PopSite("eu", 0, 0), PopSite("eu", 1, 1)], "pop[1].id"),
    ([PopSite("EU", 0, 0)], "pop[0].id"),
    ([PopSite("e u", 0, 0)], "pop[0].id"),
    ([PopSite("eu", 95, 0)], "pop[0] (eu)"),
])
def test_bad_pops_raise_error_naming_the_pop(pops, key):
    with pytest.raises(RoutingError) as ei:
        Router(pops)
    assert ei.value.key == key


def test_lower_case_country_keys_are_accepted_as_upper_case():
    assert router(by_country={"cn": ["ap"]}).rank(Location("CN", "AS")).nearest == "ap"


def test_from_dns_config_reads_pops_and_routing_of_the_loaded_configuration():
    from pathlib import Path

    from dns.config import load_dns_config
    cfg = load_dns_config(str(Path(__file__).resolve().parent.parent / "examples" / "dns.toml"))
    rt = Router.from_dns_config(cfg)
    assert [p.id for p in rt.pops] == [p.id for p in cfg.pops]
    assert rt.rank(Location("CN", "AS")).pops[:2] == ("jp", "ap")
    assert rt.rank(None).pops == tuple(cfg.routing.default_order)


def test_from_dns_config_still_validates():
    from types import SimpleNamespace as NS
    cfg = NS(pops=[NS(id="eu", latitude=50.1, longitude=8.7)],
             routing=NS(default_order=("eu",), country={"DE": ("us",)}, continent={}))
    with pytest.raises(RoutingError) as ei:
        Router.from_dns_config(cfg)
    assert ei.value.key == "routing.country.DE"


locations = st.builds(
    Location,
    country=st.sampled_from([None, "CN", "JP", "US", "BR", "ZA", "AQ"]),
    continent=st.sampled_from([None, "AS", "AN", "EU", "NA", "SA", "AF", "OC"]),
    lat=st.floats(-90, 90),
    lon=st.floats(-180, 180),
) | st.none()


@given(locations)
def test_every_ranking_is_a_permutation_of_all_pops(loc):
    r = router(by_continent={"AN": ["au", "sa"], "EU": ["eu"]}).rank(loc)
    assert sorted(r.pops) == sorted(ALL)
    if loc is not None and loc.country == "CN":
        assert r.pops[:2] == ("jp", "ap")


def test_why_explains_the_ranking_for_a_person():
    rt = router()
    assert rt.rank(Location("JP", "AS", "Tokyo", 35.68, 139.69)).why == \
        "nearest by distance from Tokyo,JP,AS (35.68,139.69)"
    assert rt.rank(Location("CN", "AS")).why == "country CN override, then default order"
    assert rt.rank(Location("CN", "AS", lat=39.9, lon=116.4)).why == \
        "country CN override, then by distance"
    assert rt.rank(Location(None, "AN")).why == "continent AN override, then default order"
    assert rt.rank(None).why == "not located: default order"
    centroid = Location("TH", "AS", lat=15.87, lon=100.99, source="country-centroid")
    assert "(country centroid)" in rt.rank(centroid).why


def test_rankings_compare_on_pop_order_only():
    from geo.routing import Ranking
    rt = router()
    by_country = rt.rank(Location("CN", "AS"))
    same_order = Ranking(by_country.pops, "default", why="something else")
    assert by_country == same_order and hash(by_country) == hash(same_order)
    assert rt.rank(Location("JP", "AS", lat=35.7, lon=139.7)) != by_country


def test_rank_pops_is_the_one_call_form_of_router_rank():
    loc = Location("CN", "AS")
    r = rank_pops(loc, POPS, country_overrides={"CN": ["jp", "ap"]},
                  continent_overrides={"AN": ["au", "sa"]}, default_order=DEFAULT)
    assert r.pops == router().rank(loc).pops and r.reason == "country"
    assert rank_pops(None, POPS).pops == tuple(p.id for p in POPS)
    with pytest.raises(RoutingError):
        rank_pops(loc, POPS, country_overrides={"CN": ["nowhere"]})


def test_pop_site_reads_both_coordinate_spellings():
    p = PopSite("jp", 35.6762, 139.6503)
    assert (p.latitude, p.longitude) == (p.lat, p.lon) == (35.6762, 139.6503)
