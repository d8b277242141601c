"""`gslb dns`: serve the zone; `gslb dns pops`; `gslb dns explain`.

Owns the command line of the DNS component only: reading arguments, loading
the configuration (gslb.config), and handing over to `dns.server`. A bad
configuration prints its `file:line: key: problem` and exits 2 before any
socket is opened.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
from typing import Any

EPILOG = """\
examples:
  gslb dns --config examples/dns.toml
  gslb dns --config examples/dns.toml --listen 127.0.0.1:5300 --listen [::1]:5300
  gslb dns --config examples/dns.toml --workers 2 --geoip-db GeoLite2-City.mmdb
  gslb dns --config examples/dns.toml --log-decisions     # one line per answer computed
  gslb dns pops --config examples/dns.toml --json
  gslb dns explain demo.app.lab.test --type A --client 127.0.0.1 --ecs 198.19.5.0/24 \\
      --config examples/dns.toml

  dig @127.0.0.1 -p 5300 demo.app.lab.test A +subnet=198.19.5.0/24   # a Tokyo client

signals: SIGHUP reloads the configuration and the geo database (a bad reload
logs reload_failed and keeps serving the old data); SIGTERM/SIGINT stop.
"""

EXPLAIN_EPILOG = """\
examples:
  gslb dns explain demo.app.lab.test --type A --client 198.19.5.10 --config examples/dns.toml
  gslb dns explain demo.app.lab.test --type AAAA --client 127.0.0.1 --ecs 198.19.3.0/24 --config examples/dns.toml
  gslb dns explain connect.lab.test --client 198.19.5.10 --down jp --config examples/dns.toml --json
"""


def _listen(value: str) -> tuple[str, int]:
    from gslb.config import parse_listen
    try:
        return parse_listen(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r}: {exc}") from None


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if not 1 <= n <= 64:
        raise argparse.ArgumentTypeError("workers must be 1-64")
    return n


def _subnet(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=True))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r}: {exc}") from None


def _address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r}: {exc}") from None


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "dns", help="the geo-aware authoritative DNS server",
        description="Serve the zone of a gslb-edge configuration: A/AAAA for GSLB names answered "
                    "with addresses of the PoPs nearest to the client (EDNS Client Subnet or "
                    "source address), static records as configured.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="FILE", help="DNS configuration (TOML), e.g. examples/dns.toml")
    p.add_argument("--listen", metavar="ADDR:PORT", action="append", type=_listen,
                   help="address to serve on, UDP and TCP (repeatable; [::1]:5300 for IPv6); "
                        "default: [server].listen")
    p.add_argument("--geoip-db", metavar="PATH", help="GeoIP2 City or Country mmdb (default: [server].geoip_db)")
    p.add_argument("--workers", metavar="N", type=_positive,
                   help="worker processes sharing the ports with SO_REUSEPORT (default: [server].workers)")
    p.add_argument("--log-decisions", action="store_true",
                   help="log each answer computed (client, name, location, PoPs, scope); "
                        "repeats served from the reply cache are not logged")
    p.set_defaults(func=_serve)
    sub = p.add_subparsers(dest="dns_command", metavar="SUBCOMMAND")

    pp = sub.add_parser("pops", help="print the PoP catalogue",
                        description="Print the PoP catalogue of a configuration.",
                        epilog="examples:\n  gslb dns pops --config examples/dns.toml\n"
                               "  gslb dns pops --config examples/dns.toml --json\n",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    pp.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS)
    pp.add_argument("--json", action="store_true", help="JSON: a list of {id, city, lat, lon, ipv4, ipv6}")
    pp.set_defaults(func=_pops)

    pe = sub.add_parser("explain", help="what the server answers a client, and why",
                        description="Show the location found for a client, the ranked PoPs and "
                                    "why, the addresses chosen, the TTL and the ECS scope.",
                        epilog=EXPLAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    pe.add_argument("name", metavar="NAME")
    pe.add_argument("--type", default="A", help="query type (default A)")
    pe.add_argument("--client", type=_address, default="127.0.0.1",
                    help="the query's source address (the resolver's, when --ecs is given)")
    pe.add_argument("--ecs", type=_subnet, metavar="SUBNET", help="EDNS Client Subnet, e.g. 198.19.5.0/24")
    pe.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS)
    pe.add_argument("--geoip-db", metavar="PATH", default=argparse.SUPPRESS)
    pe.add_argument("--down", metavar="ADDR|POP", action="append", default=[],
                    help="treat this address or PoP as down (repeatable)")
    pe.add_argument("--json", action="store_true")
    pe.set_defaults(func=_explain)


def _load(args: argparse.Namespace) -> Any:
    from gslb.config import ConfigError, load_dns_config
    if not getattr(args, "config", None):
        print("gslb dns: --config FILE is required", file=sys.stderr)
        return None
    try:
        return load_dns_config(args.config)
    except ConfigError as exc:
        print(f"gslb dns: {exc}", file=sys.stderr)
        return None


def _engine(cfg: Any, geoip_db: str | None, **kw: Any) -> Any:
    from dns.engine import Engine
    return Engine.from_config(cfg, geoip_db, **kw)


def _serve(args: argparse.Namespace) -> int:
    import signal

    from dns.log import log
    from dns.server import DnsServer, run_single, run_workers
    # A SIGHUP before the server's handler is installed must not kill it (its
    # default action): ignore it until then.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    cfg = _load(args)
    if cfg is None:
        return 2
    geoip = os.path.abspath(args.geoip_db) if args.geoip_db else None
    try:
        engine = _engine(cfg, geoip, log_decisions=args.log_decisions)
    except Exception as exc:  # GeoDatabaseError, RoutingError: say what, start nothing
        print(f"gslb dns: {exc}", file=sys.stderr)
        return 2
    listen = tuple(args.listen) if args.listen else cfg.server.listen
    workers = args.workers or cfg.server.workers
    config_path = args.config

    def reload() -> Any:
        from gslb.config import load_dns_config
        new = load_dns_config(config_path)
        return _engine(new, geoip, log_decisions=args.log_decisions)

    def factory(eng: Any = None) -> DnsServer:
        eng = eng or _engine(cfg, geoip, log_decisions=args.log_decisions)
        return DnsServer(eng, listen, reload=reload, reuse_port=workers > 1,
                         tcp_idle_timeout=cfg.server.tcp_idle_timeout,
                         tcp_max_connections=cfg.server.tcp_max_connections)

    log("starting", config=cfg.path, zone=cfg.zone.name, workers=workers,
        geoip_db=geoip or cfg.server.geoip_db or "none")
    if workers == 1:
        return run_single(lambda: factory(engine))  # the engine validated above
    # Each worker opens its own database after the fork; the parent's was only a check.
    engine.close()
    return run_workers(workers, factory)


def _pops(args: argparse.Namespace) -> int:
    cfg = _load(args)
    if cfg is None:
        return 2
    rows = [{"id": p.id, "city": p.city, "lat": p.latitude, "lon": p.longitude,
             "ipv4": list(p.ipv4), "ipv6": list(p.ipv6)} for p in cfg.pops]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(f"{r['id']:<10} {r['city']:<22} {r['lat']:>9.4f} {r['lon']:>10.4f}  "
              f"{len(r['ipv4'])} IPv4  {len(r['ipv6'])} IPv6")
    return 0


def _explain(args: argparse.Namespace) -> int:
    from dns import policy
    from dns.wire import TYPE_CODES
    cfg = _load(args)
    if cfg is None:
        return 2
    qtype = TYPE_CODES.get(args.type.upper())
    if qtype is None:
        print(f"gslb dns explain: unknown type {args.type!r} (one of {', '.join(TYPE_CODES)})",
              file=sys.stderr)
        return 2
    pop_ids = {p.id for p in cfg.pops}
    health = policy.StaticHealth(down=frozenset(d for d in args.down if d not in pop_ids),
                                 down_pops=frozenset(d for d in args.down if d in pop_ids))
    geoip = getattr(args, "geoip_db", None)
    try:
        engine = _engine(cfg, os.path.abspath(geoip) if geoip else None, health=health)
    except Exception as exc:  # GeoDatabaseError and the like: say what
        print(f"gslb dns explain: {exc}", file=sys.stderr)
        return 2
    try:
        out = engine.explain(args.name, qtype, args.client, args.ecs)
    except ValueError as exc:  # a name that is not a domain name
        print(f"gslb dns explain: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.close()
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    loc = out["location"]
    where = "not located" if loc is None else ", ".join(
        str(v) for v in (loc["city"], loc["country"], loc["continent"]) if v)
    if loc and loc["latitude"] is not None:
        where += f" ({loc['latitude']:.2f}, {loc['longitude']:.2f})"
    print(f"query:     {out['qname']} {out['qtype']} from {out['client']}"
          + (f" ecs {out['ecs']}" if out["ecs"] else ""))
    print(f"located:   {where} by {out['located_by']}; network {out['network']}; "
          f"database {out['geo_database'] or 'none'}")
    print(f"ranking:   {' > '.join(out['ranking'])}  ({out['ranking_reason']})")
    for s in out["policy"]:
        print(f"policy:    {s['reason']}; PoPs used {', '.join(s['pops_used']) or 'none'}"
              + (f"; fallback {s['fallback']}" if s["fallback"] else ""))
    print(f"answer:    {out['rcode']}{' AA' if out['authoritative'] else ''}, TTL {out['ttl']}, "
          f"{out['rotations']} rotation(s)")
    for rr in out["answer"] or ["(empty)"]:
        print(f"           {rr}")
    for rr in out["authority"]:
        print(f"authority: {rr}")
    scope = out["ecs_scope"]
    print(f"ecs scope: {scope if scope is not None else '(no ECS in the query)'}"
          + ("" if out["location_dependent"] else "  (answer does not depend on location)"))
    return 0
