"""The geo table: a TOML list of networks and the places they are in.

This is the input of `gslb geo build-mmdb` (see docs/geo.md for every key).
This module owns parsing and validating it into a frozen `GeoTable`; writing
the database is `geo.build`'s job. Validation is complete before anything is
written, and every error names the file, the line and the key.

    [[network]]
    network = ["198.19.5.0/24", "fd7a:5e1b:c00:500::/56"]
    city = "Tokyo"                # optional
    country = "JP"                # ISO 3166-1 alpha-2, required
    continent = "AS"              # AF AN AS EU NA OC SA, required
    lat = 35.6762                 # optional; lat and lon go together
    lon = 139.6503
    accuracy_radius = 20          # optional, km (GeoIP2 location.accuracy_radius)
"""
from __future__ import annotations

import ipaddress
import math
import os
import re
from dataclasses import dataclass

from geo.errors import GeoTableError
from plumbing.toml import Table, TomlDoc
from geo.location import IPNetwork
from geo.routing import CONTINENTS

_COUNTRY_RE = re.compile(r"^[A-Z]{2}$")
_KEYS = {"network", "city", "country", "continent", "lat", "lon", "accuracy_radius"}
# IPv6 ranges the built database reserves for IPv4 (see geo.build).
_V4_IN_V6 = (ipaddress.IPv6Network("::/96"), ipaddress.IPv6Network("::ffff:0:0/96"))


@dataclass(frozen=True, slots=True)
class TableEntry:
    """One ``[[network]]`` table: its networks and the place they are in."""

    networks: tuple[IPNetwork, ...]
    country: str
    continent: str
    city: str | None = None
    lat: float | None = None
    lon: float | None = None
    accuracy_radius: int | None = None
    line: int = 0  # of its [[network]] header, for messages


@dataclass(frozen=True, slots=True)
class GeoTable:
    path: str
    entries: tuple[TableEntry, ...]

    def networks(self) -> list[tuple[IPNetwork, TableEntry]]:
        return [(net, e) for e in self.entries for net in e.networks]


def load_table(path: str | os.PathLike[str]) -> GeoTable:
    """Read and validate a geo table file; raise `GeoTableError` on any problem."""
    return _parse(TomlDoc(path, error=GeoTableError))


def parse_table(text: str, path: str = "<geo table>") -> GeoTable:
    """Parse geo table text (see the module docstring); raise `GeoTableError`."""
    return _parse(TomlDoc(path, text, error=GeoTableError))


def _parse(doc: TomlDoc) -> GeoTable:
    root = doc.root()
    root.reject_unknown(("network",))
    raw = root.value("network", None)
    if not isinstance(raw, list) or not raw or not all(isinstance(t, dict) for t in raw):
        raise root.error("network", "the table needs at least one [[network]] table")
    path = doc.path

    entries: list[TableEntry] = []
    first_seen: dict[IPNetwork, tuple[int, int]] = {}  # network -> (entry index, line)
    for i, t in enumerate(root.array("network")):
        def fail(key: str, message: str, _t: Table = t) -> GeoTableError:
            return _t.error(key or None, message)  # type: ignore[return-value]

        t.reject_unknown(_KEYS)
        tbl = t.data

        nets_raw = tbl.get("network")
        if nets_raw is None:
            raise fail("", "missing key 'network' (a CIDR string or a list of them)")
        if isinstance(nets_raw, str):
            nets_raw = [nets_raw]
        if not isinstance(nets_raw, list) or not nets_raw:
            raise fail("network", "must be a CIDR string or a non-empty list of them")
        nets: list[IPNetwork] = []
        for text_net in nets_raw:
            if not isinstance(text_net, str):
                raise fail("network", f"{text_net!r} is not a string")
            try:
                net = ipaddress.ip_network(text_net.strip(), strict=True)
            except ValueError as exc:
                hint = ""
                try:
                    hint = f"; did you mean {ipaddress.ip_network(text_net.strip(), strict=False)}?"
                except ValueError:
                    pass
                raise fail("network", f"{text_net!r}: {exc}{hint}") from None
            if net.version == 6 and any(net.overlaps(r) for r in _V4_IN_V6):
                raise fail("network", f"{net} overlaps {' or '.join(map(str, _V4_IN_V6))}, where "
                           "the database keeps IPv4; write IPv4 networks in IPv4 form")
            if net in first_seen:
                other, other_line = first_seen[net]
                where = f" (line {other_line})" if other_line else ""
                raise fail("network", f"{net} is already given in network[{other}]{where}")
            first_seen[net] = (i, t.line("network") or 0)
            nets.append(net)

        country = tbl.get("country")
        if not isinstance(country, str) or not _COUNTRY_RE.match(country):
            raise fail("country", f"must be an ISO 3166-1 alpha-2 code in capitals, like \"JP\"; "
                       f"got {country!r}")
        continent = tbl.get("continent")
        if not isinstance(continent, str) or continent not in CONTINENTS:
            raise fail("continent", f"must be one of {' '.join(CONTINENTS)}; got {continent!r}")
        city = tbl.get("city")
        if city is not None and (not isinstance(city, str) or not city.strip()):
            raise fail("city", f"must be a non-empty string; got {city!r}")

        lat, lon = tbl.get("lat"), tbl.get("lon")
        if (lat is None) != (lon is None):
            missing = "lon" if lon is None else "lat"
            raise fail("lat" if lat is not None else "lon", f"given without '{missing}'")
        if lat is not None:
            for key, value, limit in (("lat", lat, 90), ("lon", lon, 180)):
                if isinstance(value, bool) or not isinstance(value, (int, float)) \
                        or not math.isfinite(value) or not -limit <= value <= limit:
                    raise fail(key, f"must be a number in [-{limit}, {limit}] (degrees); got {value!r}")
        acc = tbl.get("accuracy_radius")
        if acc is not None:
            # GeoIP2 stores it as uint16 kilometres.
            if isinstance(acc, bool) or not isinstance(acc, int) or not 1 <= acc <= 65535:
                raise fail("accuracy_radius", f"must be an integer number of km in [1, 65535]; got {acc!r}")
            if lat is None:
                raise fail("accuracy_radius", "given without 'lat' and 'lon'")

        entries.append(TableEntry(
            networks=tuple(nets), country=country, continent=continent,
            city=city.strip() if city else None,
            lat=float(lat) if lat is not None else None,
            lon=float(lon) if lon is not None else None,
            accuracy_radius=acc, line=t.line() or 0))
    return GeoTable(path, tuple(entries))
