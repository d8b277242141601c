"""Reading GeoIP2 mmdb files (City or Country schema): address -> `Located`.

Owns opening a database, checking it is a schema we understand, and turning a
record into a `Location`. It does not rank PoPs (`geo.routing`) and knows
nothing of DNS: the caller decides which address to look up (the ECS subnet's
address or the query's source address).

Reads go through `maxminddb` directly rather than `geoip2`'s model classes:
the models build a dozen objects per lookup, and this sits on the DNS query
path. The record layout read here is the GeoIP2 one, which geoip2 documents
and which `geo.build` writes.
"""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import Any

import maxminddb

from geo.centroids import country_centroid
from geo.errors import GeoDatabaseError
from geo.location import IPAddress, Located, Location
from plumbing.addr import normalise_ip

# database_type values of MaxMind's and compatible producers' City and
# Country databases (GeoIP2-City, GeoLite2-Country, GeoIP2-City-Europe,
# DBIP-City-Lite, ...): anything with "City" or "Country" in its name.
# Schemas such as GeoLite2-ASN carry no place and are refused at open.
_SCHEMA_WORDS = ("City", "Country")



@dataclass(frozen=True, slots=True)
class DatabaseInfo:
    """Metadata of an open database, for logs and `gslb geo info`."""

    path: str
    database_type: str
    ip_version: int
    build_epoch: int
    node_count: int
    languages: tuple[str, ...]


def parse_address(text: str) -> IPAddress:
    """Parse an IPv4/IPv6 address; IPv4-mapped IPv6 (::ffff:a.b.c.d) becomes IPv4.

    A dual-stack socket reports IPv4 peers as mapped addresses (RFC 4291
    2.5.5.2); unmapping them makes the located network an IPv4 one, so its
    prefix length is a valid ECS scope for family 1.
    """
    try:
        return normalise_ip(text)
    except ValueError:
        raise ValueError(f"not an IP address: {text!r}") from None


def unmap(addr: IPAddress) -> IPAddress:
    """IPv4-mapped IPv6 becomes IPv4; anything else stays as it is."""
    return normalise_ip(addr)


def location_from_record(record: Any) -> Location | None:
    """Build a `Location` from a GeoIP2 City or Country record; None if it names no place.

    Fields that are missing or malformed are left None rather than failing:
    commercial databases omit city, subdivision and coordinates for many
    networks, and one odd record must not take the DNS server down.
    """
    if not isinstance(record, dict):
        return None
    country = _code(record.get("country"), "iso_code")
    if country is None:
        # An anycast or satellite network has no country but may still be
        # registered somewhere; a place is better than none.
        country = _code(record.get("registered_country"), "iso_code")
    continent = _code(record.get("continent"), "code")
    city = None
    city_rec = record.get("city")
    if isinstance(city_rec, dict):
        names = city_rec.get("names")
        if isinstance(names, dict) and isinstance(names.get("en"), str):
            city = names["en"]
    lat = lon = None
    accuracy = None
    source = "city"
    loc = record.get("location")
    if isinstance(loc, dict):
        la, lo = loc.get("latitude"), loc.get("longitude")
        if _is_num(la) and _is_num(lo) and -90 <= la <= 90 and -180 <= lo <= 180:
            lat, lon = float(la), float(lo)
        acc = loc.get("accuracy_radius")
        if isinstance(acc, int) and not isinstance(acc, bool):
            accuracy = acc
    if lat is None and country is not None:
        # Country databases (and some City records) give no point: the
        # country's centroid still lets distance rank the PoPs.
        centre = country_centroid(country)
        if centre is not None:
            lat, lon = centre
            source = "country-centroid"
            accuracy = None
    if country is None and continent is None and lat is None:
        return None
    return Location(country=country, continent=continent, city=city, lat=lat, lon=lon,
                    accuracy_km=accuracy, source=source if lat is not None else "none")


def _code(section: Any, key: str) -> str | None:
    if isinstance(section, dict):
        value = section.get(key)
        if isinstance(value, str) and value:
            return value.upper()
    return None


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_MISS = object()


class GeoDatabase:
    """An open GeoIP2 City or Country database (also exported as `geo.GeoDB`).

    `lookup()` is safe to call from several threads (the readers are). Open
    one per worker process; call `close()` (or use `with`) when done. To
    reload, open the new file and swap references: a failed open raises
    `GeoDatabaseError` and leaves the old database serving.
    """

    def __init__(self, path: str | os.PathLike[str], *, mode: int = maxminddb.MODE_AUTO,
                 memo_size: int = 65536) -> None:
        self.path = os.fspath(path)
        self._memo: dict[int, dict[int, dict[int, Location | None]]] = {4: {}, 6: {}}
        self._memo_lens: dict[int, tuple[tuple[int, dict[int, Location | None]], ...]] = {4: (), 6: ()}
        self._memo_count = 0
        self._memo_size = memo_size
        try:
            self._reader = maxminddb.open_database(self.path, mode)
        except FileNotFoundError:
            raise GeoDatabaseError(f"{self.path}: no such file") from None
        except (maxminddb.InvalidDatabaseError, ValueError, OSError) as exc:
            raise GeoDatabaseError(f"{self.path}: not a valid MaxMind DB file ({exc})") from None
        meta = self._reader.metadata()
        self.info = DatabaseInfo(
            path=self.path,
            database_type=str(meta.database_type),
            ip_version=int(meta.ip_version),
            build_epoch=int(meta.build_epoch),
            node_count=int(meta.node_count),
            languages=tuple(meta.languages),
        )
        if not any(word in self.info.database_type for word in _SCHEMA_WORDS):
            self._reader.close()
            raise GeoDatabaseError(
                f"{self.path}: database_type {self.info.database_type!r} is not a GeoIP2 "
                "City or Country database (it would locate nothing)")

    def __enter__(self) -> GeoDatabase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._reader.close()

    def lookup(self, address: IPAddress | str) -> Located:
        """Locate one address. Never raises for a well-formed address.

        An IPv6 address looked up in an IPv4-only database is simply not
        located, with prefix length 0: the answer is the same for every IPv6
        client, so scope 0 is exact.
        """
        addr = parse_address(address) if isinstance(address, str) else unmap(address)
        if addr.version == 6 and self.info.ip_version == 4:
            return Located(addr, 0, None)
        # Memo by matched network (dns/README.md, the fast path): the reader
        # decodes the whole record into dicts on every call (all languages of
        # every name: ~10 us on GeoLite2-City), yet every address of a
        # database network gets the same record. The tree's leaves are
        # disjoint networks, so at most one memoised network contains the
        # address, whatever order the prefix lengths are tried in.
        version = addr.version
        n = int(addr)
        bits = 32 if version == 4 else 128
        for plen, table in self._memo_lens[version]:
            location = table.get(n >> (bits - plen), _MISS)
            if location is not _MISS:
                return Located(addr, plen, location)  # type: ignore[arg-type]
        record, prefix_len = self._reader.get_with_prefix_len(addr)
        location = location_from_record(record)
        self._remember(version, prefix_len, n >> (bits - prefix_len), location)
        return Located(addr, prefix_len, location)

    def _remember(self, version: int, plen: int, key: int, location: Location | None) -> None:
        if self._memo_size <= 0:
            return  # memo disabled
        if self._memo_count >= self._memo_size:
            self._memo = {4: {}, 6: {}}  # bounded; a refill costs one decode per network
            self._memo_lens = {4: (), 6: ()}
            self._memo_count = 0
        tables = self._memo[version]
        table = tables.get(plen)
        if table is None:
            table = tables[plen] = {}
        table[key] = location
        self._memo_count += 1
        if len(table) == 1 or self._memo_count % 1024 == 0:
            # Try the prefix lengths holding most networks first (GeoLite2:
            # /24 and /22 for IPv4). Readers iterate a tuple that is replaced,
            # never mutated: no "dict changed size during iteration" in threads.
            self._memo_lens[version] = tuple(sorted(tables.items(), key=lambda kv: -len(kv[1])))

    def memo_size(self) -> int:
        """How many networks are memoised now (for tests and stats)."""
        return self._memo_count

    locate = lookup  # what geo.locate and the CLI call it

    def metadata(self) -> DatabaseInfo:
        return self.info


GeoDB = GeoDatabase
