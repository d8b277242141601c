"""`gslb geo`: look addresses up in a GeoIP2 database, and build the lab's database.

Owns the command line of the geo package only; all the work is in
`geo.mmdb`, `geo.routing`, `geo.locate` and `geo.build`.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from typing import Any

EPILOG = """\
examples:
  gslb geo build-mmdb examples/geo-table.toml --out examples/lab.mmdb
  gslb geo lookup 198.19.5.10 --db examples/lab.mmdb
  gslb geo lookup 198.19.5.0/24 fd7a:5e1b:c00:800::1 --db examples/lab.mmdb --json
  gslb geo lookup 198.19.21.7 --config examples/dns.toml    # + PoP ranking, distances
  gslb geo info --db examples/lab.mmdb

exit status: 0 ok, 1 database error, 2 usage error (bad address, bad option) or a bad
  configuration file (--config, the table of build-mmdb)
"""

LOOKUP_EPILOG = """\
ADDRESS is an IPv4/IPv6 address, or a subnet as a resolver sends it in EDNS
Client Subnet (RFC 7871): its first address is looked up. With --config, the
PoP ranking of the [[pop]] and [routing] tables is shown too, and --db
defaults to the config's server.geoip_db.

examples:
  gslb geo lookup 198.19.5.10 --db examples/lab.mmdb
  gslb geo lookup 198.19.30.1 198.19.21.0/24 --config examples/dns.toml
  gslb geo lookup 8.8.8.8 --db GeoLite2-City.mmdb --json
"""

BUILD_EPILOG = """\
Builds a GeoIP2-City-schema mmdb (database_type "GeoIP2-City") from a TOML
table of networks and places (format: docs/geo.md). The table is validated
completely first; the database is written under a temporary name, read back
and checked, then renamed over OUT, so a failure leaves OUT as it was.
SOURCE_DATE_EPOCH, when set, fixes build_epoch (reproducible builds).

examples:
  gslb geo build-mmdb examples/geo-table.toml --out examples/lab.mmdb
  SOURCE_DATE_EPOCH=1764288000 gslb geo build-mmdb table.toml --out lab.mmdb
"""


def add_parser(subparsers: Any) -> None:
    geo = subparsers.add_parser(
        "geo", help="GeoIP lookups, PoP rankings, and the lab mmdb builder",
        description="Where is a client, and which PoPs serve it?",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    geo.set_defaults(func=lambda args: (geo.print_help(), 2)[1])
    sub = geo.add_subparsers(dest="geo_command", metavar="SUBCOMMAND")

    lookup = sub.add_parser(
        "lookup", help="locate addresses or ECS subnets (and rank PoPs with --config)",
        description="Locate addresses in a GeoIP2 City or Country mmdb.",
        epilog=LOOKUP_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    lookup.add_argument("addresses", nargs="+", metavar="ADDRESS")
    lookup.add_argument("--db", help="GeoIP2 City or Country mmdb file")
    lookup.add_argument("--config", help="gslb dns configuration: rank its PoPs too")
    lookup.add_argument("--json", action="store_true", help="one JSON object per line")
    lookup.set_defaults(func=cmd_lookup)

    build = sub.add_parser(
        "build-mmdb", help="build a GeoIP2-City mmdb from a TOML geo table",
        description="Build the lab's GeoIP2 database from a TOML table.",
        epilog=BUILD_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    build.add_argument("table", metavar="TABLE", help="TOML geo table (see docs/geo.md)")
    build.add_argument("--out", required=True, metavar="OUT", help="mmdb file to write")
    build.set_defaults(func=cmd_build)

    info = sub.add_parser(
        "info", help="show a database's metadata",
        description="Show a GeoIP2 database's metadata.",
        epilog="examples:\n  gslb geo info --db examples/lab.mmdb\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    info.add_argument("--db", required=True, help="mmdb file")
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=cmd_info)


def _err(message: str) -> None:
    print(f"gslb geo: error: {message}", file=sys.stderr)


def _router_and_db(args: argparse.Namespace) -> tuple[Any, str | None]:
    """(router or None, database path or None), from --config and --db.

    The configuration is read by the DNS server's loader (`dns.config`), so a bad
    file gets the same file:line: key error here as from `gslb dns`.
    """
    from geo.routing import Router

    if not args.config:
        return None, args.db
    from dns.config import load_dns_config

    cfg = load_dns_config(args.config)
    return Router.from_dns_config(cfg), args.db or cfg.server.geoip_db


def cmd_lookup(args: argparse.Namespace) -> int:
    from geo.errors import GeoError
    from plumbing.toml import EXIT_CONFIG, ConfigError
    from geo.locate import Locator
    from geo.mmdb import GeoDatabase, unmap
    from geo.routing import PopSite, Router

    targets = []
    for text in args.addresses:
        try:
            if "/" in text:
                net = ipaddress.ip_network(text, strict=False)
                targets.append((text, unmap(net.network_address)))
            else:
                targets.append((text, unmap(ipaddress.ip_address(text))))
        except ValueError:
            _err(f"{text!r} is not an IP address or subnet")
            return 2
    try:
        router, db_path = _router_and_db(args)
        if db_path is None:
            _err("no database: give --db FILE (or --config with server.geoip_db)")
            return 2
        db = GeoDatabase(db_path)
    except ConfigError as exc:  # a bad --config: 2, as for every bad configuration file
        _err(str(exc))
        return EXIT_CONFIG
    except (GeoError, ValueError, OSError) as exc:
        _err(str(exc))
        return 1
    with db:
        locator = Locator(db, router or Router([PopSite("none", 0.0, 0.0)]))
        for text, addr in targets:
            placed = locator.locate(addr)
            loc = placed.location
            if args.json:
                out: dict[str, Any] = {
                    "query": text, "address": str(addr), "network": str(placed.network),
                    "prefix_len": placed.scope_prefix,
                    "found": loc is not None, "source": placed.located.source,
                    "location": None if loc is None else {
                        "country": loc.country, "continent": loc.continent, "city": loc.city,
                        "latitude": loc.lat, "longitude": loc.lon, "accuracy_km": loc.accuracy_km},
                }
                if router is not None:
                    out["ranking"] = {"reason": placed.ranking.reason,
                                      "matched": placed.ranking.matched or None,
                                      "why": placed.ranking.why,
                                      "pops": list(placed.ranking.pops),
                                      "distances_km": (list(placed.ranking.distances_km)
                                                       if placed.ranking.distances_km else None)}
                print(json.dumps(out, sort_keys=True))
            else:
                desc = loc.describe() if loc else "unknown"
                line = (f"{text}  network={placed.network}  location=\"{desc}\""
                        f"  source={placed.located.source}")
                if router is not None:
                    r = placed.ranking
                    line += f"  {r.describe()}  why=\"{r.why}\""
                    if r.distances_km:
                        line += "  km=" + ",".join(f"{d:.0f}" for d in r.distances_km)
                print(line)
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from geo.build import build_mmdb
    from geo.errors import GeoError
    from geo.table import load_table
    from plumbing.toml import EXIT_CONFIG, ConfigError

    try:
        table = load_table(args.table)
        result = build_mmdb(table, args.out)
    except ConfigError as exc:  # GeoTableError: a bad table is a bad configuration file
        _err(str(exc))
        return EXIT_CONFIG
    except GeoError as exc:
        _err(str(exc))
        return 1
    except OSError as exc:
        _err(f"{args.out}: {exc.strerror or exc}")
        return 1
    print(f"event=mmdb_built out={result.path} entries={result.entries} "
          f"networks={result.networks} bytes={result.size_bytes} "
          f"database_type=GeoIP2-City build_epoch={result.build_epoch}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from geo.errors import GeoError
    from geo.mmdb import GeoDatabase

    try:
        db = GeoDatabase(args.db)
    except GeoError as exc:
        _err(str(exc))
        return 1
    with db:
        i = db.info
        if args.json:
            print(json.dumps({"path": i.path, "database_type": i.database_type,
                              "ip_version": i.ip_version, "build_epoch": i.build_epoch,
                              "node_count": i.node_count, "languages": list(i.languages)},
                             sort_keys=True))
        else:
            print(f"path={i.path} database_type={i.database_type} ip_version={i.ip_version} "
                  f"build_epoch={i.build_epoch} node_count={i.node_count} "
                  f"languages={','.join(i.languages)}")
    return 0
