import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geo.distance import EARTH_RADIUS_KM, check_coordinates, great_circle_km

lats = st.floats(min_value=-90, max_value=90, allow_nan=False)
lons = st.floats(min_value=-180, max_value=180, allow_nan=False)


def test_known_city_pairs_match_published_great_circle_distances():
    # Published great-circle distances (spherical), rounded: within 0.5 %.
    frankfurt, tokyo = (50.1109, 8.6821), (35.6762, 139.6503)
    london, new_york = (51.5072, -0.1276), (40.7128, -74.0060)
    assert great_circle_km(*frankfurt, *tokyo) == pytest.approx(9330, rel=0.005)
    assert great_circle_km(*london, *new_york) == pytest.approx(5570, rel=0.005)


def test_antipodes_are_half_the_circumference_without_domain_error():
    assert great_circle_km(0, 0, 0, 180) == pytest.approx(math.pi * EARTH_RADIUS_KM)
    assert great_circle_km(90, 0, -90, 0) == pytest.approx(math.pi * EARTH_RADIUS_KM)


def test_dateline_neighbours_are_close():
    assert great_circle_km(0, 179.5, 0, -179.5) == pytest.approx(111.2, rel=0.01)


@given(lats, lons, lats, lons)
def test_distance_is_symmetric_and_bounded(la1, lo1, la2, lo2):
    d = great_circle_km(la1, lo1, la2, lo2)
    assert 0 <= d <= math.pi * EARTH_RADIUS_KM + 1e-6
    assert d == pytest.approx(great_circle_km(la2, lo2, la1, lo1), abs=1e-6)


@given(lats, lons, lats, lons, lats, lons)
def test_triangle_inequality(a1, o1, a2, o2, a3, o3):
    assert great_circle_km(a1, o1, a3, o3) <= (
        great_circle_km(a1, o1, a2, o2) + great_circle_km(a2, o2, a3, o3) + 1e-6)


@pytest.mark.parametrize("lat,lon", [(91, 0), (-90.5, 0), (0, 180.1), (math.nan, 0), (0, math.inf), ("1", 2)])
def test_check_coordinates_rejects_out_of_range_and_non_numbers(lat, lon):
    with pytest.raises(ValueError):
        check_coordinates(lat, lon)


def test_check_coordinates_accepts_the_edges():
    check_coordinates(90, -180)
    check_coordinates(-90.0, 180.0)
