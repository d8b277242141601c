"""What the geo package knows about a client: `Location` and `Located`.

Owns the data types only. Filling them from an mmdb record is `geo.mmdb`'s job;
turning them into ordered PoPs is `geo.routing`'s.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Location:
    """A place, as far as the database knows it. Every field may be missing.

    Codes are the GeoIP2 ones: `country` is ISO 3166-1 alpha-2 (upper case),
    `continent` one of AF AN AS EU NA OC SA. `lat`/`lon` are degrees (both set
    or both None; also readable as `latitude`/`longitude`); `accuracy_km` is
    GeoIP2's accuracy_radius when given. `source` says where the coordinates
    came from: "city" (the database's own point), "country-centroid" (the
    database gave only a country; see geo.centroids) or "none".
    Hashable, so routing can cache rankings per location.
    """

    country: str | None = None
    continent: str | None = None
    city: str | None = None
    lat: float | None = None
    lon: float | None = None
    accuracy_km: int | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if (self.lat is None) != (self.lon is None):
            raise ValueError("lat and lon go together")
        if not self.source:  # not given: derive it (frozen, hence object.__setattr__)
            object.__setattr__(self, "source", "city" if self.lat is not None else "none")

    @property
    def latitude(self) -> float | None:
        return self.lat

    @property
    def longitude(self) -> float | None:
        return self.lon

    @property
    def has_coordinates(self) -> bool:
        return self.lat is not None and self.lon is not None

    def describe(self) -> str:
        """A short human form for logs: ``Tokyo,JP,AS (35.68,139.65)``."""
        parts = ",".join(p for p in (self.city, self.country, self.continent) if p) or "unknown"
        if self.has_coordinates:
            parts += f" ({self.lat:.2f},{self.lon:.2f})"
        return parts


@dataclass(frozen=True, slots=True)
class Located:
    """The answer to "where is this address?".

    `prefix_len` is that of the database network the address fell in: every
    address in it gets the same record (or the same absence of one), so it is
    what an authoritative server may return as the ECS SCOPE PREFIX-LENGTH
    (RFC 7871 7.2.1). When the database has no record, `location` is None and
    the network is the empty region around the address, still a valid scope.
    The network object is built only on demand (`network`): constructing an
    `ipaddress` network costs more than the database lookup itself.
    """

    address: IPAddress
    prefix_len: int
    location: Location | None

    @property
    def network(self) -> IPNetwork:
        return ipaddress.ip_network((self.address, self.prefix_len), strict=False)

    # The place's fields, readable directly (None when not located), so a
    # `Located` serves where a flat "location with its network" is expected.
    @property
    def found(self) -> bool:
        return self.location is not None

    @property
    def country(self) -> str | None:
        return self.location.country if self.location else None

    @property
    def continent(self) -> str | None:
        return self.location.continent if self.location else None

    @property
    def city(self) -> str | None:
        return self.location.city if self.location else None

    @property
    def latitude(self) -> float | None:
        return self.location.lat if self.location else None

    @property
    def longitude(self) -> float | None:
        return self.location.lon if self.location else None

    @property
    def source(self) -> str:
        """One of "city", "country-centroid", "none" (see `Location.source`)."""
        if self.location is None or not self.location.has_coordinates:
            return "none"
        return self.location.source
