"""Great-circle distances between points given in degrees.

Owns only arithmetic: no configuration, no database. The haversine form is
used (not the spherical law of cosines) because it stays accurate for small
distances, where acos() of a value near 1 loses most of its digits.
"""
from __future__ import annotations

import math

# Mean Earth radius (IUGG, R1 = (2a + b) / 3), in kilometres. A sphere is
# within 0.5 % of the ellipsoid everywhere, far finer than GeoIP accuracy
# radii (tens to thousands of km), so an ellipsoidal formula buys nothing here.
EARTH_RADIUS_KM = 6371.0088


def check_coordinates(lat: float, lon: float) -> None:
    """Raise ValueError unless lat is in [-90, 90] and lon in [-180, 180] (finite)."""
    if not (isinstance(lat, (int, float)) and math.isfinite(lat) and -90.0 <= lat <= 90.0):
        raise ValueError(f"latitude must be a number in [-90, 90], got {lat!r}")
    if not (isinstance(lon, (int, float)) and math.isfinite(lon) and -180.0 <= lon <= 180.0):
        raise ValueError(f"longitude must be a number in [-180, 180], got {lon!r}")


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Distance in km along the Earth's surface between two (lat, lon) points in degrees."""
    phi1 = math.radians(lat1)
    phi2 = math.radians(lat2)
    dphi = phi2 - phi1
    dlmb = math.radians(lon2 - lon1)
    h = math.sin(dphi / 2.0) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlmb / 2.0) ** 2
    # Rounding can push h a hair above 1 for antipodal points; asin() would raise.
    return 2.0 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(1.0, h)))
