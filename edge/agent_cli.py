"""`gslb agent`: publish local services through the edge.

Owns: the command line of the agent (flags, environment, exit statuses).
The work is in edge/agent/. Exit status: 0 stopped by a signal, 1 final
error (bad authtoken, name already online, port range exhausted), 2 bad
usage or configuration.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import signal
import sys
from pathlib import Path
from typing import Any

EPILOG = """\
examples:
  gslb agent http 8080 --name demo
      https://demo.<domain> -> http://localhost:8080
  gslb agent http 8080 --domain shop.example.com       # a custom domain: CNAME it to the edge first
      https://shop.example.com -> http://localhost:8080
  gslb agent tls 8443 --name secure                    # passthrough: the edge never sees the key
  gslb agent tls 8443 --name secure --terminate-at edge
  gslb agent tcp 22 --proxy-protocol                   # the edge allocates a port
  gslb agent http 8080 --name demo --basic-auth alice:correct-horse   # hashed here, 401 for others
  gslb agent http 8080 --name demo --saml-idp https://idp.lab.test:8443/metadata \\
      --saml-group staff                               # SAML 2.0 login first (docs/saml.md)
  gslb agent start --config agent.toml                 # several endpoints, one session
  gslb agent http 8080 --name demo --metrics 127.0.0.1:9101   # Prometheus /metrics
  gslb agent http 8080 --name demo --oidc https://idp.example.test --oidc-client-id demo \\
      --oidc-client-secret-file demo.secret --oidc-allow-domain example.test   # login first (docs/identity.md)
  gslb agent http 8080 --name demo --server 127.0.0.1:4443 --zone lab.test \\
      --ca lab-ca.pem --authtoken-file token
  gslb agent http 8080 --name demo --server eu.connect.lab.test --server us.connect.lab.test
  gslb agent http 8080 --name demo --inspect 127.0.0.1:4041   # inspector UI + API elsewhere
  gslb agent http 8080 --name demo --inspect false            # no inspector, no capture
  curl -s http://127.0.0.1:4040/api/requests/http             # captured requests (ngrok's API shape)

environment:
  GSLB_ZONE              zone; the edge is found at connect.<zone>:443 (--zone)
  GSLB_SERVER            HOST[:PORT][,HOST[:PORT]...] of the edge(s), skipping DNS (--server)
  GSLB_CA                CA file that verifies the edge certificate (--ca)
  GSLB_AUTHTOKEN         the authtoken itself (--authtoken)
  GSLB_AUTHTOKEN_FILE    a file holding the authtoken (--authtoken-file)
  GSLB_AGENT_CONFIG      an agent.toml whose settings (not its endpoints) are the
                         defaults of http/tls/tcp; else /etc/gslb/agent.toml if present
Flags win over the environment, which wins over the defaults file.
The authtoken, --basic-auth passwords (the agent sends only hashes) and the --oidc client secret are
never printed or logged.

exit status: 0 stopped, 1 final error (bad authtoken, name already online,
port range exhausted, a custom domain that does not point at the edge), 2 bad usage or configuration.
"""


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection")
    g.add_argument(
        "--server", metavar="HOST[:PORT]", action="append",
        help="edge address (default: connect.<zone>:443 via the system resolver); "
        "repeat to hold one session with each edge (bind at every PoP)",
    )
    g.add_argument("--zone", help="zone of the edge network, e.g. lab.test (env GSLB_ZONE)")
    g.add_argument("--ca", metavar="FILE", help="CA certificate(s) that verify the edge (env GSLB_CA; default: system CAs)")
    g.add_argument("--authtoken", help="authtoken (prefer --authtoken-file: arguments are visible in ps)")
    g.add_argument("--authtoken-file", metavar="FILE", help="file holding the authtoken (env GSLB_AUTHTOKEN_FILE)")
    g.add_argument("--heartbeat-interval", type=float, metavar="SECONDS", help="heartbeat interval (default 10)")
    g.add_argument("--heartbeat-timeout", type=float, metavar="SECONDS", help="no frame for this long -> reconnect (default 15)")
    # stdlib asyncio by default: the agent's hot path is encrypting bulk into its
    # TLS session, and there uvloop 0.23 cost 2.5x the CPU (1 GiB: agent 2.6-3.0 s
    # CPU with uvloop, 1.05-1.24 s with asyncio; make bench tunnel_bulk 423 ->
    # 812 MB/s) while small HTTPS requests stayed within noise (0.42x vs 0.40x nginx).
    g.add_argument("--loop", choices=("uvloop", "asyncio"), default="asyncio",
                   help="event loop (default asyncio: faster than uvloop for the agent's TLS writes)")
    g.add_argument("--metrics", metavar="ADDR:PORT",
                   help="serve Prometheus /metrics there, e.g. 127.0.0.1:9101 (default off; docs/metrics.md)")
    g.add_argument(
        "--inspect", metavar="ADDR:PORT|false",
        help="traffic inspector (web UI + API) of the HTTP endpoints; default 127.0.0.1:4040 "
        "(the next of 10 ports if busy); false: off, nothing captured (docs/inspector.md)",
    )
    g.add_argument("-v", "--verbose", action="count", default=0, help="log more (-v info, -vv debug); logs go to stderr")


def _endpoint_flags(p: argparse.ArgumentParser, *, proxy_protocol: bool) -> None:
    p.add_argument("port", type=int, metavar="PORT", help="local port on 127.0.0.1")
    p.add_argument("--host", default="127.0.0.1", help="local address of the service (default 127.0.0.1)")
    if proxy_protocol:
        p.add_argument("--proxy-protocol", action="store_true", help="the edge sends a PROXY protocol v2 header first")
    from edge.modules import BIND_OPTIONS

    for key, opt in BIND_OPTIONS.items():  # the modules' own bind options (edge/modules/*/README.md)
        if opt.flag:
            p.add_argument(opt.flag, action="append", default=[], metavar=opt.metavar, help=opt.help,
                           dest=f"bind_{key}")
        for i, (flag, _sub, _rep, metavar, text) in enumerate(opt.table_flags):
            p.add_argument(flag, action="append", default=[], metavar=metavar, help=text, dest=f"bind_{key}__{i}")


def _table_flags(args: argparse.Namespace) -> dict[str, Any]:
    """Table options from their flags (BindOption.table_flags): {option: {key: value}}."""
    from edge.agent.config import bad_value
    from edge.modules import BIND_OPTIONS

    out: dict[str, Any] = {}
    for key, opt in BIND_OPTIONS.items():
        table: dict[str, Any] = {}
        for i, (flag, sub, repeatable, _m, _h) in enumerate(opt.table_flags):
            values = getattr(args, f"bind_{key}__{i}", None) or []
            if not values:
                continue
            if not repeatable and len(values) > 1:
                raise bad_value(key, f"{flag}: give it once")
            table[sub] = list(values) if repeatable else values[0]
        if table:
            out[key] = table
    return out


def add_parser(subparsers: Any) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    agent = subparsers.add_parser(
        "agent",
        help="publish a local service through the edge (like ngrok)",
        description="Connect to the nearest edge over TLS, bind endpoints, carry their traffic to local services.",
        epilog=EPILOG,
        formatter_class=fmt,
    )
    sub = agent.add_subparsers(dest="agent_command", metavar="KIND")
    agent.set_defaults(func=lambda args: (agent.print_help(), 2)[1])

    http = sub.add_parser("http", help="HTTPS endpoint NAME.<domain> -> http://localhost:PORT", epilog=EPILOG, formatter_class=fmt)
    _endpoint_flags(http, proxy_protocol=False)
    _name_flags(http)
    _common(http)
    http.set_defaults(func=_run, kind="http")

    tls = sub.add_parser("tls", help="TLS endpoint NAME.<domain>:443 -> localhost:PORT", epilog=EPILOG, formatter_class=fmt)
    _endpoint_flags(tls, proxy_protocol=True)
    _name_flags(tls)
    tls.add_argument(
        "--terminate-at", choices=("edge", "agent"), default="agent",
        help="agent (default): TLS passes through the edge untouched; edge: the edge terminates it",
    )
    _common(tls)
    tls.set_defaults(func=_run, kind="tls")

    tcp = sub.add_parser("tcp", help="TCP endpoint on a port the edge allocates -> localhost:PORT", epilog=EPILOG, formatter_class=fmt)
    _endpoint_flags(tcp, proxy_protocol=True)
    _common(tcp)
    tcp.set_defaults(func=_run, kind="tcp")

    start = sub.add_parser("start", help="every endpoint of a config file, on one session", epilog=EPILOG, formatter_class=fmt)
    start.add_argument("--config", required=True, metavar="FILE", help="agent.toml (schema: edge/agent/config.py)")
    _common(start)
    start.set_defaults(func=_run, kind=None)


def _name_flags(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--name", help="endpoint name: a DNS label (NAME.<domain>)")
    which.add_argument("--domain", metavar="HOSTNAME",
                       help="a domain you own instead of NAME.<domain>, e.g. shop.example.com; its DNS must "
                            "point at the edge (CNAME to NAME.<domain>), else the edge refuses it")


def build_config(args: argparse.Namespace, env: dict[str, str] | None = None):  # -> AgentConfig
    """Flags > environment > config file. Raises ConfigError."""
    from edge.agent.config import (
        DEFAULTS_PATH,
        AgentConfig,
        EndpointConfig,
        bad_value,
        check_timers,
        load_agent_config,
        module_options,
        read_authtoken,
        split_host_port,
        validate_endpoint,
    )
    import dataclasses

    from edge.modules import BIND_OPTIONS

    env = dict(os.environ) if env is None else env
    servers = server_list(args, env)
    server = servers[0] if servers else None
    zone = args.zone or env.get("GSLB_ZONE") or None
    ca = args.ca or env.get("GSLB_CA") or None
    if args.kind is None:
        cfg = load_agent_config(
            args.config,
            {"server": server, "zone": zone, "ca": ca, "authtoken": args.authtoken, "authtoken_file": args.authtoken_file},
            env,
        )
    else:
        defaults = env.get("GSLB_AGENT_CONFIG") or (str(DEFAULTS_PATH) if DEFAULTS_PATH.is_file() else None)
        ep = validate_endpoint(
            EndpointConfig(
                kind=args.kind,
                port=args.port,
                name=(getattr(args, "name", "") or "").lower(),
                domain=(getattr(args, "domain", "") or "").lower().rstrip("."),
                host=args.host,
                terminate_at=getattr(args, "terminate_at", None),
                proxy_protocol=getattr(args, "proxy_protocol", False),
                module_options=module_options(
                    {**{key: getattr(args, f"bind_{key}") for key, opt in BIND_OPTIONS.items()
                        if opt.flag and getattr(args, f"bind_{key}")}, **_table_flags(args)}),
            )
        )
        if server:
            split_host_port(server)
        if defaults:
            cfg = load_agent_config(
                defaults,
                {"server": server, "zone": zone, "ca": ca, "authtoken": args.authtoken, "authtoken_file": args.authtoken_file},
                env,
                endpoints=(ep,),
            )
        else:
            cfg = AgentConfig(
                endpoints=(ep,),
                authtoken=read_authtoken(args.authtoken, args.authtoken_file, env),
                server=server,
                zone=zone,
                ca=Path(ca) if ca else None,
            )
    changes: dict[str, Any] = {}
    if args.heartbeat_interval is not None:
        changes["heartbeat_interval"] = args.heartbeat_interval
    if args.heartbeat_timeout is not None:
        changes["heartbeat_timeout"] = args.heartbeat_timeout
    if getattr(args, "metrics", None):
        from edge.agent.config import parse_metrics
        changes["metrics"] = parse_metrics(args.metrics)
    if getattr(args, "inspect", None) is not None:
        from edge.agent.config import read_inspect

        changes["inspect"] = read_inspect(args.inspect)
    cfg = dataclasses.replace(cfg, **changes)
    check_timers(cfg.heartbeat_interval, cfg.heartbeat_timeout, cfg.connect_timeout)
    if cfg.ca is not None and not cfg.ca.is_file():
        raise bad_value("ca", f"{cfg.ca} is not a readable file")
    if not cfg.server and not cfg.zone:
        raise bad_value("server", "give --server HOST[:PORT] or a zone (--zone, GSLB_ZONE)")
    return cfg


def server_list(args: argparse.Namespace, env: dict[str, str]) -> list[str]:
    """--server (repeatable), else GSLB_SERVER (comma-separated); [] -> DNS."""
    if args.server:
        return list(args.server)
    return [s.strip() for s in env.get("GSLB_SERVER", "").split(",") if s.strip()]


async def _start_inspector(cfg: Any) -> tuple[Any, Any]:
    """The inspector for the HTTP endpoints (docs/inspector.md), or (None, None)
    when off, when there is no HTTP endpoint, or when no port of the range is free
    (the agent still runs: the tunnels matter more than their inspection)."""
    if cfg.inspect is None or not any(ep.kind == "http" for ep in cfg.endpoints):
        return None, None
    from edge.agent.inspect.server import Inspector
    from plumbing.kvlog import kv

    host, port = cfg.inspect
    inspector = Inspector()
    try:
        runner = await inspector.start(host, port)
    except OSError as exc:
        logging.getLogger("edge.agent").warning(kv("inspector_not_started", address=f"{host}:{port}", error=str(exc)))
        print(f"gslb agent: warning: inspector not started on {host}:{port}: {exc.strerror or exc}",
              file=sys.stderr, flush=True)
        return None, None
    # stderr: stdout carries only the forwarding lines, which scripts read
    print(f"gslb agent: inspector {inspector.url}", file=sys.stderr, flush=True)
    return inspector, runner


def _run(args: argparse.Namespace) -> int:
    from edge.agent.client import Agent
    from edge.agent.config import ConfigError

    level = logging.WARNING if args.verbose == 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
    from plumbing.kvlog import configure
    configure(level)
    import dataclasses

    from edge.agent.config import split_host_port

    try:
        cfg = build_config(args)
        servers = server_list(args, dict(os.environ))
        for s in servers:
            split_host_port(s)
    except ConfigError as exc:
        print(f"gslb agent: error: {exc}", file=sys.stderr)
        return 2
    configs = [dataclasses.replace(cfg, server=s) for s in servers] or [cfg]

    async def main() -> int:
        printed: set[str] = set()

        def out(line: str) -> None:
            # with several edges, each line once (they name the same URLs)
            if len(configs) == 1 or line not in printed:
                printed.add(line)
                print(line, flush=True)

        # One agent_id for all its sessions: with a shared registry (etcd),
        # "bind at every PoP" then means the latest session takes the names
        # over (docs/protocol.md 3.3), instead of the others failing with
        # name_in_use; with independent edges, nothing changes.
        agent_id = secrets.token_hex(8)
        inspector, inspector_runner = await _start_inspector(cfg)
        try:
            agents = [Agent(c, out=out, agent_id=agent_id, inspector=inspector) for c in configs]
        except (OSError, ValueError) as exc:  # unreadable CA file
            print(f"gslb agent: error: ca: {exc}", file=sys.stderr)
            if inspector_runner is not None:
                await inspector_runner.cleanup()
            return 2
        loop = asyncio.get_running_loop()
        runner = None
        if cfg.metrics is not None:
            from edge.agent.metrics import start_listener
            try:
                runner = await start_listener(*cfg.metrics, agents)
            except OSError as exc:
                print(f"gslb agent: error: metrics: {exc}", file=sys.stderr)
                if inspector_runner is not None:
                    await inspector_runner.cleanup()
                return 2

        def stop_all() -> None:
            for a in agents:
                a.stop()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop_all)
        tasks = [loop.create_task(a.run()) for a in agents]
        status = 0
        pending = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if any(t.result() != 0 for t in done):
                status = 1  # a final error at one edge ends the agent
                stop_all()
        if runner is not None:
            await runner.cleanup()
        if inspector_runner is not None:
            await inspector_runner.cleanup()
        return status

    if args.loop == "uvloop":
        try:
            import uvloop

            return uvloop.run(main())
        except ImportError:
            pass
    return asyncio.run(main())
