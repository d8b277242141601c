"""The lab mmdb builder: a validated `GeoTable` -> a GeoIP2-City mmdb file.

Owns writing the database (through `mmdb-writer`) and checking what was
written. The output is read back with `maxminddb` before it replaces the
target, so a failed build leaves any existing database untouched.

Layout choices, each so that any GeoIP2 reader (libmaxminddb, geoip2, this
package) finds what it expects:

- an IPv6 tree (``ip_version`` 6) with IPv4 under ::/96, where readers look
  for IPv4 addresses in an IPv6 database, and aliased again under the
  IPv4-mapped range ::ffff:0:0/96 (RFC 4291 2.5.5.2), as MaxMind's own
  databases are, for readers that do not unmap such addresses themselves;
- records in the GeoIP2 City layout: ``continent.code``, ``country.iso_code``
  (repeated as ``registered_country``), ``city.names.en``,
  ``location.latitude/longitude/accuracy_radius``; ``database_type`` is
  "GeoIP2-City" and ``languages`` is ["en"];
- networks inserted least specific first, so a more specific network nested
  in a wider one carves its hole instead of being overwritten by it.

``build_epoch`` honours SOURCE_DATE_EPOCH (reproducible-builds.org), so the
same table can give byte-identical databases.
"""
from __future__ import annotations

import ipaddress
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from mmdb_writer import MMDBWriter
from netaddr import IPSet

from geo.errors import GeoError
from geo.location import IPNetwork
from geo.mmdb import GeoDatabase
from geo.routing import CONTINENTS
from geo.table import GeoTable, TableEntry

DATABASE_TYPE = "GeoIP2-City"
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


class BuildError(GeoError):
    """Writing or verifying the database failed; the target was not replaced."""


@dataclass(frozen=True, slots=True)
class BuildResult:
    path: str
    entries: int
    networks: int
    size_bytes: int
    build_epoch: int


def record_for(entry: TableEntry) -> dict[str, Any]:
    """The GeoIP2 City record for one table entry."""
    country = {"iso_code": entry.country}
    rec: dict[str, Any] = {
        "continent": {"code": entry.continent, "names": {"en": CONTINENTS[entry.continent]}},
        "country": country,
        "registered_country": dict(country),
    }
    if entry.city:
        rec["city"] = {"names": {"en": entry.city}}
    if entry.lat is not None and entry.lon is not None:
        loc: dict[str, Any] = {"latitude": entry.lat, "longitude": entry.lon}
        if entry.accuracy_radius is not None:
            loc["accuracy_radius"] = entry.accuracy_radius
        rec["location"] = loc
    return rec


class _Writer(MMDBWriter):
    def __init__(self, build_epoch: int, **kw: Any) -> None:
        super().__init__(**kw)
        self._epoch = build_epoch

    def _build_meta(self) -> dict[str, Any]:
        meta = super()._build_meta()
        meta["build_epoch"] = self._epoch
        return meta


def _tree_networks(net: IPNetwork) -> list[ipaddress.IPv6Network]:
    """Where `net` lives in an IPv6 tree: ::/96 (and ::ffff:0:0/96) for IPv4."""
    if net.version == 6:
        return [net]  # type: ignore[list-item]
    v4 = int(net.network_address)
    return [ipaddress.IPv6Network((v4, 96 + net.prefixlen)),
            ipaddress.IPv6Network((int(_MAPPED.network_address) | v4, 96 + net.prefixlen))]


def _expected(table: GeoTable, address: ipaddress.IPv4Address | ipaddress.IPv6Address
              ) -> tuple[IPNetwork, TableEntry]:
    """The table network (and entry) a lookup of `address` must land in: the
    most specific one containing it."""
    return max(((n, e) for n, e in table.networks()
                if n.version == address.version and address in n),
               key=lambda p: p[0].prefixlen)


def build_mmdb(table: GeoTable, out: str | os.PathLike[str], *,
               build_epoch: int | None = None, description: str | None = None) -> BuildResult:
    """Write `table` as a GeoIP2-City mmdb at `out`, atomically, and verify it.

    The file is written next to `out` under a temporary name, read back and
    checked entry by entry, fsynced, then renamed over `out` (rename is
    atomic on POSIX), so a DNS server re-opening `out` sees the old database
    or the new one, never half of one.
    """
    out_path = os.fspath(out)
    if build_epoch is None:
        env = os.environ.get("SOURCE_DATE_EPOCH")
        try:
            build_epoch = int(env) if env else int(time.time())
        except ValueError:
            raise BuildError(f"SOURCE_DATE_EPOCH={env!r} is not an integer") from None
        if build_epoch < 1:
            raise BuildError(f"SOURCE_DATE_EPOCH={env!r}: must be at least 1 (mmdb-writer "
                             "writes build_epoch 0 as a zero-length uint64 that libmaxminddb refuses)")
    if not 1 <= build_epoch < 2**64:
        raise BuildError(f"build_epoch {build_epoch} is outside 1 .. 2**64-1")
    desc = description or f"gslb-edge lab database built from {os.path.basename(table.path)}"
    writer = _Writer(build_epoch, ip_version=6, ipv4_compatible=False,
                     database_type=DATABASE_TYPE, languages=["en"], description={"en": desc},
                     float_type="f64", int_type="auto")

    placed: list[tuple[ipaddress.IPv6Network, TableEntry]] = []
    for net, entry in table.networks():
        placed.extend((tree_net, entry) for tree_net in _tree_networks(net))
    placed.sort(key=lambda p: p[0].prefixlen)  # least specific first (stable)
    records = {id(e): record_for(e) for e in table.entries}
    for tree_net, entry in placed:
        writer.insert_network(IPSet([str(tree_net)]), records[id(entry)])

    directory = os.path.dirname(os.path.abspath(out_path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".mmdb", dir=directory)
    os.close(fd)
    try:
        try:
            writer.to_db_file(tmp)
        except Exception as exc:  # mmdb-writer raises bare Exception for some limits
            raise BuildError(f"{out_path}: writing the database failed: {exc}") from exc
        _verify(tmp, table)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out_path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return BuildResult(out_path, len(table.entries), len(table.networks()),
                       os.path.getsize(out_path), build_epoch)


def _verify(path: str, table: GeoTable) -> None:
    """Read the written file back: every network's first and last address must
    give its entry's place, at the network's prefix length or longer."""
    try:
        db = GeoDatabase(path)
    except GeoError as exc:
        raise BuildError(f"the written database does not open: {exc}") from None
    with db:
        for net, _ in table.networks():
            for address in (net.network_address, net.broadcast_address):
                want_net, entry = _expected(table, address)
                located = db.lookup(address)
                loc = located.location
                ok = (loc is not None and loc.country == entry.country
                      and loc.continent == entry.continent and loc.city == entry.city
                      and (loc.source != "city" if entry.lat is None
                           else (loc.lat, loc.lon) == (entry.lat, entry.lon))
                      and located.prefix_len >= want_net.prefixlen)
                if not ok:
                    raise BuildError(f"verification failed: {address} (in {want_net}, "
                                     f"{table.path}:{entry.line}) reads back as {loc} "
                                     f"in {located.network}")
