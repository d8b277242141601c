import os
from pathlib import Path

import pytest

from geo.centroids import CENTROIDS, country_centroid
from geo.distance import great_circle_km
from geo.location import Location
from geo.routing import PopSite, Router

ISO3166_TAB = Path("/usr/share/zoneinfo/iso3166.tab")  # tzdata's list of ISO 3166-1 codes


def iso_codes() -> set[str]:
    if not ISO3166_TAB.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{ISO3166_TAB} is missing: install the tzdata package")
        pytest.skip(f"{ISO3166_TAB} not present")
    return {ln.split("\t")[0] for ln in ISO3166_TAB.read_text().splitlines()
            if ln and not ln.startswith("#")}


def test_every_iso_3166_country_has_a_centroid():
    codes = iso_codes()
    assert len(codes) >= 249
    assert codes - set(CENTROIDS) == set()
    assert set(CENTROIDS) - codes <= {"XK"}  # Kosovo: user-assigned, used by MaxMind


def test_centroids_are_valid_coordinates():
    for code, (lat, lon) in CENTROIDS.items():
        assert -90 <= lat <= 90 and -180 <= lon <= 180, code


@pytest.mark.parametrize("code,city,lat,lon,km", [
    ("JP", "Tokyo", 35.68, 139.69, 300),
    ("DE", "Frankfurt", 50.11, 8.68, 200),
    ("SG", "Singapore", 1.29, 103.85, 30),
    ("ZA", "Johannesburg", -26.20, 28.05, 700),
    ("NZ", "Wellington", -41.29, 174.78, 300),
    ("SS", "Juba", 4.85, 31.58, 300),
])
def test_centroids_lie_near_the_country_they_name(code, city, lat, lon, km):
    assert great_circle_km(lat, lon, *country_centroid(code)) < km


def test_country_only_client_is_ranked_by_distance_from_its_centroid():
    pops = [PopSite("ap", 1.2897, 103.8501), PopSite("eu", 50.1109, 8.6821),
            PopSite("in", 19.0760, 72.8777), PopSite("us", 39.9612, -82.9988)]
    lat, lon = country_centroid("TH")
    r = Router(pops, default_order=["us", "eu", "in", "ap"]).rank(
        Location("TH", "AS", lat=lat, lon=lon, source="country-centroid"))
    assert r.pops == ("ap", "in", "eu", "us") and r.reason == "distance"


def test_unknown_code_has_no_centroid():
    assert country_centroid("ZZ") is None
