"""`gslb dns`: serve the zone; `pops`, `explain`, `drain`, `undrain`, `health`.

Owns the command line of the DNS component only: reading arguments, loading
the configuration (dns.config), and handing over to `dns.server`. A bad
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
  gslb dns --config /etc/gslb/dns.toml --user gslb:gslb    # bind :53 as root, then run as gslb
  gslb dns pops --config examples/dns.toml --json
  gslb dns explain demo.app.lab.test --type A --client 127.0.0.1 --ecs 198.19.5.0/24 \\
      --config examples/dns.toml
  gslb dns drain eu --config examples/dns.toml      # eu out of answers, no restart
  gslb dns undrain eu --control /run/gslb-dns/127.0.0.1-5300.sock
  gslb dns health --config examples/dns.toml --json
  gslb dns keygen --out keys/lab.test.pem --zone lab.test   # DNSSEC key (docs/dnssec.md)
  gslb dns ds --config examples/dns.toml                     # its DS for the parent zone

  dig @127.0.0.1 -p 5300 demo.app.lab.test A +subnet=198.19.5.0/24   # a Tokyo client

signals: SIGHUP reloads the configuration and the geo database (a bad reload
logs reload_failed and keeps serving the old data); SIGTERM/SIGINT stop.

privileges: with --user (or [server].user) the process that owns the workers binds every
listening socket and the control socket as root, then drops to that user (setgroups, setgid,
setuid; setuid(0) must fail afterwards) before any worker starts, so workers, respawned ones
and SIGHUP reloads run unprivileged: the configuration, the geo database and the DNSSEC keys
must be readable by that user (docs/deploy.md). A user that does not exist: exit 2.

health ([health] in docs/configuration.md): with enabled = true one checker
(in the process owning the workers) probes every PoP address and publishes
its view to every worker. The control socket (--control, [health].control_socket,
default /run/gslb-dns/<first listen>.sock, mode 0600) takes drain, undrain, health.

metrics: [server] metrics_listen = "127.0.0.1:9153" serves Prometheus GET /metrics
(with workers: their sum, from the process owning them; docs/metrics.md), e.g.
  curl -s http://127.0.0.1:9153/metrics | grep gslb_dns_queries_total
"""

EXPLAIN_EPILOG = """\
examples:
  gslb dns explain demo.app.lab.test --type A --client 198.19.5.10 --config examples/dns.toml
  gslb dns explain demo.app.lab.test --type AAAA --client 127.0.0.1 --ecs 198.19.3.0/24 --config examples/dns.toml
  gslb dns explain connect.lab.test --client 198.19.5.10 --down jp --config examples/dns.toml --json
  gslb dns explain demo.app.lab.test --ecs 198.19.5.0/24 --config examples/dns.toml \\
      --server-control /run/gslb-dns/127.0.0.1-5300.sock     # with the running server's health
  gslb dns explain demo.app.lab.test --client 198.19.1.10 --config dns.toml \
      --server-control /run/gslb-dns/127.0.0.1-5300.sock     # and whether [rrl] limits 198.19.1.0/24 now
"""

CONTROL_EPILOG = """\
examples:
  gslb dns drain eu --config examples/dns.toml
  gslb dns drain eu --config examples/dns.toml --listen 127.0.0.1:5301   # the server started with that --listen
  gslb dns undrain eu --control /run/gslb-dns/127.0.0.1-5300.sock
  gslb dns health --config examples/dns.toml
  gslb dns health --control /tmp/dns.sock --json

The socket: --control PATH, else [health].control_socket of --config, else the
default for the first listen address (--listen, else [server].listen).
A drain returns once every worker answers without the PoP ("workers agree").
Exit status: 0 done, 1 the server refused or cannot be reached, 2 bad usage.
"""


def _listen(value: str) -> tuple[str, int]:
    from dns.config import parse_listen
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
    p.add_argument("--control", metavar="PATH",
                   help="control socket for drain/undrain/health (default: [health].control_socket, "
                        "else /run/gslb-dns/<first listen address>.sock)")
    p.add_argument("--user", metavar="USER[:GROUP]",
                   help="after binding the ports and the control socket as root, become this user "
                        "(its primary group unless GROUP is given) for good (default: [server].user; "
                        "none: keep running as started). Under systemd prefer User= with "
                        "CAP_NET_BIND_SERVICE (deploy/README.md)")
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
                                    "why, their health (from --down, or from the running server with "
                                    "--server-control), the addresses chosen, the TTL and the ECS scope; with "
                                    "[rrl] on, the response rate limits and (--server-control) whether "
                                    "the client's netblock is being limited now.",
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
    pe.add_argument("--server-control", metavar="PATH",
                    help="take health and drains, and the RRL buckets limited now, from the running "
                         "server behind this control socket")
    pe.add_argument("--json", action="store_true")
    pe.set_defaults(func=_explain)

    for name, text in (("drain", "take a PoP out of answers, without a restart"),
                       ("undrain", "put a drained PoP back into answers")):
        pd = sub.add_parser(name, help=text, description=f"{text[0].upper()}{text[1:]} (every worker "
                            "of the running server; kept across SIGHUP unless the config changes it).",
                            epilog=CONTROL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
        pd.add_argument("pop", metavar="POP")
        _control_args(pd)
        pd.set_defaults(func=_drain, drain=name == "drain")
    ph = sub.add_parser("health", help="per-address health of the running server",
                        description="Print the running server's view: every PoP address, up or down, "
                                    "its current streak and last error; drains; workers' versions.",
                        epilog=CONTROL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _control_args(ph)
    ph.add_argument("--json", action="store_true", help="the server's reply as JSON")
    ph.set_defaults(func=_health)
    from dns.dnssec.cli import add_parsers as add_dnssec_parsers
    add_dnssec_parsers(sub)  # keygen, ds, dump (docs/dnssec.md)


def _control_args(p: Any) -> None:
    p.add_argument("--control", metavar="PATH", default=argparse.SUPPRESS, help="the server's control socket")
    p.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                   help="find the socket from this configuration")
    p.add_argument("--listen", metavar="ADDR:PORT", action="append", type=_listen, default=argparse.SUPPRESS,
                   help="the server's first --listen, when it was started with one")


def _load(args: argparse.Namespace) -> Any:
    from dns.config import ConfigError, load_dns_config
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
    from dns.server import DnsServer, early_hup, run_single, run_workers
    # A SIGHUP before the server's handler is installed must neither kill it (its
    # default action) nor be lost: latched until then (dns.server._EarlyHup).
    early_hup.install()
    cfg = _load(args)
    if cfg is None:
        return 2
    from plumbing.privileges import PrivilegeError, drop_privileges, preload, resolve_user
    user_spec = args.user or cfg.server.user
    try:
        ident = resolve_user(user_spec) if user_spec else None
    except PrivilegeError as exc:
        print(f"gslb dns: {exc}", file=sys.stderr)
        return 2
    if ident is not None and os.geteuid() != 0 and os.geteuid() != ident.uid:
        print(f"gslb dns: --user {ident}: only root can switch users (running as uid {os.geteuid()})",
              file=sys.stderr)
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
    from dns.control import default_path
    from dns.health import HealthError
    from dns.monitor import HealthMonitor, LocalPublisher, check_probe_targets, control_alive
    from dns.prober import named_netns
    try:
        check_probe_targets(cfg)
    except HealthError as exc:
        engine.close()
        print(f"gslb dns: {exc}", file=sys.stderr)
        return 2
    rrl = "off"
    if cfg.rrl.enabled:
        from dns.rrl import ResponseRateLimiter
        try:
            ResponseRateLimiter.from_settings(cfg.rrl, workers=workers)
        except ValueError as exc:
            engine.close()
            print(f"gslb dns: {cfg.path}: {exc}", file=sys.stderr)
            return 2
        rrl = (f"{cfg.rrl.responses_per_second}/s,window={cfg.rrl.window}s,slip={cfg.rrl.slip},"
               f"per-worker={cfg.rrl.responses_per_second / workers:g}/s")
    control_required = bool(args.control or cfg.health.control_socket)
    control = (os.path.abspath(args.control) if args.control else cfg.health.control_socket
               or default_path(listen, named_netns()))
    if control_required and os.path.lexists(control) and control_alive(control):
        engine.close()
        print(f"gslb dns: control socket {control} is in use by another running server "
              "(give each server its own: --control or [health].control_socket)", file=sys.stderr)
        return 2

    def reload_config() -> Any:
        from dns.config import load_dns_config
        new = load_dns_config(config_path)
        check_probe_targets(new)
        return new

    def reload() -> Any:
        return _engine(reload_config(), geoip, log_decisions=args.log_decisions)

    def factory(eng: Any = None) -> DnsServer:
        eng = eng or _engine(cfg, geoip, log_decisions=args.log_decisions)
        return DnsServer(eng, listen, reload=reload, reuse_port=workers > 1,
                         tcp_idle_timeout=cfg.server.tcp_idle_timeout,
                         tcp_max_connections=cfg.server.tcp_max_connections, workers=workers)

    # Everything that may need root is opened here, in the process that owns the workers,
    # before it forks any: the listening sockets (one set per worker slot) and the control socket.
    from dns.control import ControlError
    from dns.monitor import bind_control_socket
    from dns.server import bind_listeners, bind_worker_listeners, close_listeners
    try:
        slots = [bind_listeners(listen)] if workers == 1 else bind_worker_listeners(listen, workers)
    except OSError as exc:
        engine.close()
        log("listen_failed", level="error", error=str(exc))
        return 1
    try:
        control_sock = bind_control_socket(control, control_required,
                                           owner=(ident.uid, ident.gid) if ident else None)
    except (ControlError, OSError) as exc:
        engine.close()
        for slot in slots:
            close_listeners(slot)
        log("control_failed", level="error", error=str(exc))
        return 1
    if ident is not None:
        try:
            preload(("dns", "geo", "plumbing", "maxminddb", "cryptography.hazmat.primitives", "prometheus_client",
                     "aiohttp"),
                    exclude=("geo.build", "geo.cli"))
            drop_privileges(ident, component="dns")
            # What workers and reloads read, read once now as that user: a key or database it
            # cannot read is a start-up error, not a crash loop of workers or a failed reload.
            as_user = reload()
        except PrivilegeError as exc:
            print(f"gslb dns: {exc}", file=sys.stderr)
            return 2
        except Exception as exc:  # noqa: BLE001 - ConfigError, OSError, GeoDatabaseError ...
            print(f"gslb dns: running as {ident}: {exc} (the configuration, the geo database and "
                  "the DNSSEC keys must be readable by that user: docs/deploy.md)", file=sys.stderr)
            return 2
        engine.close()
        engine = as_user

    def monitor(publisher: Any) -> HealthMonitor:
        # No socket: another server's is live there (logged by bind_control_socket): run without one.
        m = HealthMonitor(cfg, publisher, control_path=control if control_sock is not None else None,
                          control_required=control_required)
        m.control_sock = control_sock
        return m

    cookies = ("off" if not cfg.cookies.enabled else
               ("required" if cfg.cookies.require else "on") + (
                   "" if cfg.cookies.secret else ",random-secret"))
    log("starting", config=cfg.path, zone=cfg.zone.name, workers=workers,
        geoip_db=geoip or cfg.server.geoip_db or "none", health="on" if cfg.health.enabled else "off",
        cookies=cookies, rrl=rrl)
    if workers == 1:
        def single() -> DnsServer:
            srv = factory(engine)  # the engine validated above
            srv.sockets = slots[0]
            srv.monitor = monitor(LocalPublisher(srv))
            srv.metrics_listen = cfg.server.metrics_listen
            return srv
        return run_single(single)
    # Each worker opens its own database after the fork; the parent's was only a check.
    engine.close()
    return run_workers(workers, factory, monitor_factory=monitor, reload_config=reload_config, slots=slots,
                       metrics_listen=cfg.server.metrics_listen)


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
    from dns.explain import explain
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
    for d in args.down:
        if d not in pop_ids:
            try:
                ipaddress.ip_address(d)
            except ValueError:
                print(f"gslb dns explain: --down {d!r} is neither a PoP ({', '.join(sorted(pop_ids))}) "
                      "nor an address", file=sys.stderr)
                return 2
    # --down: whole PoPs (shown as drained) and single addresses, over the server's view
    # (--server-control) or else over what the configuration drains.
    down_pops = frozenset(d for d in args.down if d in pop_ids)
    down_addrs = frozenset((p.id, a) for p in cfg.pops for a in (*p.ipv4, *p.ipv6) if a in args.down)
    extra = policy.HealthView(down=down_addrs, drained=down_pops)
    base = policy.HealthView(drained=frozenset(cfg.health.drained))
    if args.server_control:
        from dns.control import ControlError, request
        try:
            base = policy.HealthView.decode(request(args.server_control, {"op": "snapshot"})["snapshot"])
        except (ControlError, policy.HealthError, KeyError) as exc:
            print(f"gslb dns explain: --server-control: {exc}", file=sys.stderr)
            return 2
    health = base.merge(extra)
    geoip = getattr(args, "geoip_db", None)
    try:
        engine = _engine(cfg, os.path.abspath(geoip) if geoip else None, health=health)
    except Exception as exc:  # GeoDatabaseError and the like: say what
        print(f"gslb dns explain: {exc}", file=sys.stderr)
        return 2
    try:
        out = explain(engine, args.name, qtype, args.client, args.ecs)
    except ValueError as exc:  # a name that is not a domain name
        print(f"gslb dns explain: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.close()
    out["rrl"] = _explain_rrl(args, cfg)
    if out["rrl"] is None:
        return 2
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
    shown = [h for h in out["health"] if h["state"] != "up" or h["changing"]]
    print("health:    " + ("; ".join(
        f"{h['pop']} {h['state']}" + (f" ({len(h['down'])}/{h['addresses']} down: "
                                      f"{', '.join(h['down'][:4])}{'...' if len(h['down']) > 4 else ''})"
                                      if h["state"] == "partial" else "")
        + (", changing" if h["changing"] else "") for h in shown) or "every PoP up")
        + ("  [view from the running server]" if args.server_control else ""))
    for s in out["policy"]:
        print(f"policy:    {s['reason']}; PoPs used {', '.join(s['pops_used']) or 'none'}"
              + (f"; fallback {s['fallback']}" if s["fallback"] else ""))
    print(f"answer:    {out['rcode']}{' AA' if out['authoritative'] else ''}, TTL {out['ttl']}"
          + (f" (lowered: {out['ttl_reason']})" if out["ttl_lowered"] else "")
          + f", {out['rotations']} rotation(s)")
    for rr in out["answer"] or ["(empty)"]:
        print(f"           {rr}")
    for rr in out["authority"]:
        print(f"authority: {rr}")
    scope = out["ecs_scope"]
    print(f"ecs scope: {scope if scope is not None else '(no ECS in the query)'}"
          + ("" if out["location_dependent"] else "  (answer does not depend on location)"))
    print("rrl:       " + _rrl_text(out["rrl"]))
    return 0


def _explain_rrl(args: argparse.Namespace, cfg: Any) -> dict[str, Any] | None:
    """`explain`'s RRL part: the limits, and (--server-control) whether they bite now."""
    from dns.explain import rrl_status
    reports = None
    if cfg.rrl.enabled and args.server_control:
        from dns.control import ControlError, request
        try:
            reports = request(args.server_control, {"op": "rrl"})["workers"]
        except (ControlError, KeyError) as exc:
            print(f"gslb dns explain: --server-control: {exc}", file=sys.stderr)
            return None
    try:
        return rrl_status(cfg.rrl, args.client, reports, cfg.server.workers)
    except ValueError as exc:
        print(f"gslb dns explain: --client {args.client!r}: {exc}", file=sys.stderr)
        return None


def _rrl_text(r: dict[str, Any]) -> str:
    if not r["enabled"]:
        return "off"
    text = (f"on, {r['responses_per_second']}/s per netblock and name ({r['per_worker_rate']:g}/s in "
            f"each of {r['workers']} worker(s)), window {r['window']} s, slip {r['slip']}; "
            f"{r['netblock']} ")
    if r["limited"] is None:
        return text + "(give --server-control to see whether it is limited now)"
    if not r["limited"]:
        return text + "is not limited  [running server]"
    return text + "IS LIMITED: " + "; ".join(
        f"{b['class']} {b['qname']}{' ' + b['qtype'] if b.get('qtype') else ''} "
        f"({b['limited']} limited, worker {b['worker']})" for b in r["limited"]) + "  [running server]"


def _control_path(args: argparse.Namespace, what: str) -> str | None:
    if getattr(args, "control", None):
        return args.control
    if not getattr(args, "config", None):
        print(f"gslb dns {what}: give --control PATH or --config FILE", file=sys.stderr)
        return None
    cfg = _load(args)
    if cfg is None:
        return None
    if cfg.health.control_socket:
        return cfg.health.control_socket
    from dns.control import default_path
    from dns.prober import named_netns
    listen = tuple(getattr(args, "listen", None) or cfg.server.listen)
    return default_path(listen, named_netns())


def _drain(args: argparse.Namespace) -> int:
    from dns.control import ControlError, request
    what = "drain" if args.drain else "undrain"
    path = _control_path(args, what)
    if path is None:
        return 2
    try:
        r = request(path, {"op": what, "pop": args.pop})
    except ControlError as exc:
        print(f"gslb dns {what}: {exc}", file=sys.stderr)
        return 1
    state = "drained" if args.drain else "in answers"
    note = "" if r["changed"] else " (already)"
    agree = "every worker answers accordingly" if r["workers_agree"] else \
        f"NOT every worker acknowledged yet: {r['workers']}"
    print(f"{args.pop}: {state}{note}; drained now: {', '.join(r['drained']) or 'none'}; "
          f"view version {r['version']}; {agree}")
    return 0 if r["workers_agree"] else 1


def _health(args: argparse.Namespace) -> int:
    from dns.control import ControlError, request
    path = _control_path(args, "health")
    if path is None:
        return 2
    try:
        r = request(path, {"op": "health"})
    except ControlError as exc:
        print(f"gslb dns health: {exc}", file=sys.stderr)
        return 1
    if args.json:
        r.pop("ok", None)
        print(json.dumps(r, indent=2))
        return 0
    print(f"checks {'on' if r['enabled'] else 'off'} ({r['check']}, every {r['interval']:g} s, "
          f"rise {r['rise']}, fall {r['fall']}, {r['rounds']} rounds); view version {r['version']}; "
          f"drained: {', '.join(r['drained']) or 'none'}; changing: {', '.join(r['changing']) or 'none'}")
    print("workers: " + ", ".join(f"{pid}@v{v}" for pid, v in sorted(r["workers"].items())))
    print(f"{'POP':<10} {'ADDRESS':<28} {'STATE':<8} {'STREAK':<8} {'CHANGED':>9}  LAST ERROR")
    for a in r["addresses"]:
        streak = f"{a['successes']} ok" if a["successes"] else f"{a['failures']} fail" if a["failures"] else "-"
        ago = "never" if a["changed_ago"] is None else f"{a['changed_ago']:.1f}s ago"
        print(f"{a['pop']:<10} {a['address']:<28} {a['state']:<8} {streak:<8} {ago:>9}  "
              f"{a['last_error'] or ''}")
    return 0
