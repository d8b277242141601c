"""geo: where a client is, and which PoPs serve it.

Owns: GeoIP2 mmdb lookups (`geo.mmdb`), great-circle distances
(`geo.distance`), region maps that rank PoPs for a location (`geo.routing`),
the one per-query call combining them (`geo.locate`), and the lab database
builder (`geo.table` + `geo.build`, `gslb geo build-mmdb`).

Must not touch: DNS wire formats, health, answer sizes or TTLs (`dns/`, the
gdnsd split between "map" and "resolve"), sockets, or the configuration file
itself (`dns.config` reads it; `Router.from_dns_config` takes the loaded
result and reads only its PoPs and routing).

Imports go one way: `dns` and `edge` may import `geo`; `geo` imports neither.
"""
from __future__ import annotations

import os

from geo.centroids import CENTROIDS, country_centroid
from geo.distance import great_circle_km
from geo.errors import GeoDatabaseError, GeoDBError, GeoError, GeoTableError, RoutingError
from geo.locate import Locator, Placement
from geo.location import Located, Location
from geo.mmdb import DatabaseInfo, GeoDatabase, GeoDB, parse_address
from geo.routing import CONTINENTS, PopSite, Ranking, Router, rank_pops


def build_mmdb(table_path: str | os.PathLike[str], out_path: str | os.PathLike[str]) -> int:
    """Build the lab mmdb from a geo table file; returns the number of networks written.

    Raises `GeoTableError` (bad table) or `geo.build.BuildError`; either way
    `out_path` is left as it was. `geo.build.build_mmdb` is the full form
    (takes a parsed table, returns a `BuildResult`). Imported lazily: the
    writer's dependencies are not needed to serve DNS.
    """
    from geo.build import build_mmdb as _build
    from geo.table import load_table

    return _build(load_table(table_path), out_path).networks


__all__ = [
    "CENTROIDS",
    "CONTINENTS",
    "GeoDB",
    "GeoDBError",
    "build_mmdb",
    "country_centroid",
    "rank_pops",
    "DatabaseInfo",
    "GeoDatabase",
    "GeoDatabaseError",
    "GeoError",
    "GeoTableError",
    "Located",
    "Location",
    "Locator",
    "Placement",
    "PopSite",
    "Ranking",
    "RoutingError",
    "Router",
    "great_circle_km",
    "parse_address",
]
