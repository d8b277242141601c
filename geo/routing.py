"""Region maps: a client `Location` -> every PoP, best first (a `Ranking`).

This is gdnsd's "map" half: where the client is decides the *order* of PoPs.
What to answer for that order (health, how many addresses, TTL, failover) is
`dns/`'s business, and it must not be decided here.

Order of precedence, first match wins:

1. ``routing.country``   ISO 3166-1 alpha-2 code -> listed PoPs;
2. ``routing.continent`` GeoIP2 continent code   -> listed PoPs;
3. distance: every PoP by great-circle distance from the client's coordinates;
4. ``routing.default_order`` for clients that cannot be placed at all.

A ranking always contains *every* PoP exactly once: a map's list is a prefix,
and the PoPs it does not name follow, nearest first when the client has
coordinates, else in default order. That gives the answer policy somewhere to
fail over to when all the listed PoPs are down, instead of an empty answer.
Ties in distance keep the configuration's PoP order, so rankings are
deterministic.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from geo.distance import check_coordinates, great_circle_km
from geo.errors import RoutingError
from geo.location import Location

# GeoIP2 continent codes (the set MaxMind uses; there is no ISO list).
CONTINENTS: Mapping[str, str] = {
    "AF": "Africa",
    "AN": "Antarctica",
    "AS": "Asia",
    "EU": "Europe",
    "NA": "North America",
    "OC": "Oceania",
    "SA": "South America",
}

_COUNTRY_RE = re.compile(r"^[A-Z]{2}$")
# A PoP id becomes a DNS label (`<pop>.connect.<zone>`): RFC 1035 2.3.1 LDH
# syntax, lower case, at most 63 octets.
_POP_ID_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")

REASON_COUNTRY = "country"
REASON_CONTINENT = "continent"
REASON_DISTANCE = "distance"
REASON_DEFAULT = "default"


@dataclass(frozen=True, slots=True)
class PopSite:
    """Where a PoP is: its id (a DNS label) and its coordinates in degrees."""

    id: str
    latitude: float
    longitude: float

    @property
    def lat(self) -> float:
        return self.latitude

    @property
    def lon(self) -> float:
        return self.longitude


@dataclass(frozen=True, slots=True)
class Ranking:
    """Every PoP id, best first, and why this order was chosen.

    `reason` is one of "country", "continent", "distance", "default";
    `matched` is the map key that matched ("CN", "AN") or "" otherwise.
    `distances_km` is aligned with `pops` when the client had coordinates,
    else None. `why` is the same for a person: "country JP override",
    "nearest by distance from Tokyo, JP (35.68,139.65)". Rankings compare
    and hash on `pops` alone, so `pops` (or the ranking) can be part of an
    answer-cache key: two clients with the same order share answers.
    """

    pops: tuple[str, ...]
    reason: str = field(compare=False)
    matched: str = field(default="", compare=False)
    distances_km: tuple[float, ...] | None = field(default=None, compare=False)
    why: str = field(default="", compare=False)

    @property
    def nearest(self) -> str:
        return self.pops[0]

    def describe(self) -> str:
        """For logs: ``reason=country:CN order=jp,ap,...``."""
        why = f"{self.reason}:{self.matched}" if self.matched else self.reason
        return f"reason={why} order={','.join(self.pops)}"


class Router:
    """Ranks PoPs for a location. Immutable after construction; thread-safe.

    Construction validates everything and raises `RoutingError` naming the
    offending key; a router that exists is consistent. Rankings are cached
    per `Location` (bounded LRU), since a database has far fewer distinct
    locations than addresses.
    """

    def __init__(
        self,
        pops: Sequence[PopSite],
        *,
        default_order: Sequence[str] = (),
        by_country: Mapping[str, Sequence[str]] | None = None,
        by_continent: Mapping[str, Sequence[str]] | None = None,
        cache_size: int = 8192,
    ) -> None:
        if not pops:
            raise RoutingError("pop", "at least one PoP is needed")
        seen: dict[str, PopSite] = {}
        for i, pop in enumerate(pops):
            key = f"pop[{i}]"
            if not isinstance(pop.id, str) or not _POP_ID_RE.match(pop.id):
                raise RoutingError(f"{key}.id", f"{pop.id!r} is not a valid PoP id "
                                   "(lower-case letters, digits and '-', a DNS label)")
            if pop.id in seen:
                raise RoutingError(f"{key}.id", f"duplicate PoP id {pop.id!r}")
            try:
                check_coordinates(pop.lat, pop.lon)
            except ValueError as exc:
                raise RoutingError(f"{key} ({pop.id})", str(exc)) from None
            seen[pop.id] = pop
        self.pops: tuple[PopSite, ...] = tuple(pops)
        self._index = {p.id: i for i, p in enumerate(self.pops)}

        listed = self._check_list("routing.default_order", default_order, allow_empty=True)
        # PoPs the default order leaves out follow in configuration order.
        self.default_order: tuple[str, ...] = listed + tuple(
            p.id for p in self.pops if p.id not in listed)

        self.by_country: dict[str, tuple[str, ...]] = {}
        for code, ids in (by_country or {}).items():
            norm = str(code).upper()
            if not _COUNTRY_RE.match(norm):
                raise RoutingError(f"routing.country.{code}",
                                   "not an ISO 3166-1 alpha-2 country code (two letters)")
            if norm in self.by_country:
                raise RoutingError(f"routing.country.{code}", f"{norm} is given twice")
            self.by_country[norm] = self._check_list(f"routing.country.{code}", ids)

        self.by_continent: dict[str, tuple[str, ...]] = {}
        for code, ids in (by_continent or {}).items():
            norm = str(code).upper()
            if norm not in CONTINENTS:
                raise RoutingError(f"routing.continent.{code}",
                                   f"not a continent code (one of {' '.join(CONTINENTS)})")
            if norm in self.by_continent:
                raise RoutingError(f"routing.continent.{code}", f"{norm} is given twice")
            self.by_continent[norm] = self._check_list(f"routing.continent.{code}", ids)

        self._rank_cached = functools.lru_cache(maxsize=cache_size)(self._rank)
        self._unlocated = Ranking(self.default_order, REASON_DEFAULT,
                                  why="not located: default order")

    def _check_list(self, key: str, ids: Any, *, allow_empty: bool = False) -> tuple[str, ...]:
        if isinstance(ids, str) or not isinstance(ids, Sequence):
            raise RoutingError(key, f"must be a list of PoP ids, got {ids!r}")
        if not ids and not allow_empty:
            raise RoutingError(key, "must name at least one PoP")
        out: list[str] = []
        for pop_id in ids:
            if pop_id not in self._index:
                raise RoutingError(key, f"unknown PoP {pop_id!r} (known: {', '.join(self._index)})")
            if pop_id in out:
                raise RoutingError(key, f"PoP {pop_id!r} is listed twice")
            out.append(pop_id)
        return tuple(out)

    def rank(self, location: Location | None) -> Ranking:
        """Every PoP, best first, for a client at `location` (None: not located)."""
        if location is None:
            return self._unlocated
        return self._rank_cached(location)

    def cache_info(self) -> functools._CacheInfo:
        return self._rank_cached.cache_info()

    def _rank(self, location: Location) -> Ranking:
        dist: dict[str, float] | None = None
        if location.has_coordinates:
            assert location.lat is not None and location.lon is not None
            dist = {p.id: great_circle_km(location.lat, location.lon, p.latitude, p.longitude)
                    for p in self.pops}

        place = location.describe()
        if location.source == "country-centroid":
            place += " (country centroid)"
        reason, matched, head = REASON_DISTANCE, "", ()
        if location.country is not None and location.country in self.by_country:
            reason, matched, head = REASON_COUNTRY, location.country, self.by_country[location.country]
            why = f"country {matched} override"
        elif location.continent is not None and location.continent in self.by_continent:
            reason, matched = REASON_CONTINENT, location.continent
            head = self.by_continent[location.continent]
            why = f"continent {matched} override"
        elif dist is None:
            return Ranking(self.default_order, REASON_DEFAULT,
                           why=f"no coordinates for {place}: default order")
        else:
            why = f"nearest by distance from {place}"

        rest = [p for p in (self.default_order if dist is None else (p.id for p in self.pops))
                if p not in head]
        if dist is not None:
            # sorted() is stable: equal distances keep configuration order.
            rest.sort(key=dist.__getitem__)
            if head:
                why += ", then by distance"
        elif head:
            why += ", then default order"
        order = tuple(head) + tuple(rest)
        distances = tuple(round(dist[p], 1) for p in order) if dist is not None else None
        return Ranking(order, reason, matched, distances, why)

    @classmethod
    def from_dns_config(cls, cfg: Any) -> Router:
        """Build from the configuration `dns.config.load_dns_config` returns.

        Reads only ``cfg.pops`` (``id``, ``latitude``, ``longitude``) and
        ``cfg.routing`` (``default_order``, ``country``, ``continent``); the
        loader has already checked them against the file, with line numbers.
        Duck-typed, so `geo` does not import the configuration loader.
        """
        return cls(
            [PopSite(p.id, p.latitude, p.longitude) for p in cfg.pops],
            default_order=tuple(cfg.routing.default_order),
            by_country=dict(cfg.routing.country),
            by_continent=dict(cfg.routing.continent),
        )


def _freeze_map(m: Mapping[str, Sequence[str]] | None) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple((str(k), tuple(v) if not isinstance(v, str) else (v,)) for k, v in (m or {}).items())


@functools.lru_cache(maxsize=32)
def _router_for(pops: tuple[PopSite, ...], country: tuple, continent: tuple,
                default: tuple[str, ...]) -> Router:
    return Router(pops, default_order=default, by_country={k: list(v) for k, v in country},
                  by_continent={k: list(v) for k, v in continent})


def rank_pops(location: Location | None, pops: Sequence[PopSite], *,
              country_overrides: Mapping[str, Sequence[str]] | None = None,
              continent_overrides: Mapping[str, Sequence[str]] | None = None,
              default_order: Sequence[str] = ()) -> Ranking:
    """Every PoP, best first, for `location`: a one-call form of `Router.rank`.

    The Router for a given set of arguments is built (and validated, raising
    `RoutingError`) once and kept, so calling this per query costs a cache
    lookup plus the ranking; code that holds its configuration should build
    a `Router` itself.
    """
    router = _router_for(tuple(pops), _freeze_map(country_overrides),
                         _freeze_map(continent_overrides), tuple(default_order))
    return router.rank(location)
