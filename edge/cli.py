"""`gslb edge`: run an edge node, or manage the lab CA it issues certificates from."""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from typing import Any

EPILOG = """\
examples:
  gslb edge ca init --dir /tmp/gslb-edge/ca      # create the lab CA (prints where ca.pem is)
  gslb edge --config examples/edge.toml --pop local
  gslb agent http 9080 --name demo --server 127.0.0.1:8443 --zone lab.test \\
       --ca /tmp/gslb-edge/ca/ca.pem --authtoken-file /tmp/gslb-edge/authtokens
  curl --cacert /tmp/gslb-edge/ca/ca.pem --resolve demo.app.lab.test:8443:127.0.0.1 \\
       https://demo.app.lab.test:8443/
  curl -s http://127.0.0.1:8081/healthz          # {"pop": "local", "sessions": 0, ...}
  curl -s http://127.0.0.1:8081/metrics          # Prometheus text, same listener (docs/metrics.md)
  gslb edge --config /etc/gslb/edge.toml --pop eu --user gslb:gslb   # bind :443 as root, run as gslb
  gslb edge --config examples/edge.toml --pop local --workers 2   # 2 processes, SO_REUSEPORT (docs/workers.md)
  gslb edge acme keygen --out /etc/gslb/acme.key  # the deployment key for [edge.acme] (docs/acme.md)

The :443 listener reads each ClientHello's SNI without consuming it, then:
  connect.<zone>, <pop>.connect.<zone>  agents' tunnel sessions (TLS with the edge's certificate)
  <name>.<https_domain>                 HTTPS endpoints (TLS here, HTTP/1.1 to the agent)
  a TLS endpoint's name                 passthrough, or TLS here when the agent binds terminate_at=edge
An HTTPS endpoint with no agent online answers 404 with error code ERR_GSLB_3200;
a TLS or TCP endpoint with no agent closes the connection. :80 answers 308 to https://.
"""


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "edge",
        help="run an edge node (one PoP): TLS/HTTPS/TCP front, agents' tunnel sessions",
        description="Run the edge node of one PoP, or create the lab CA.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE", help="edge configuration (TOML), e.g. examples/edge.toml")
    p.add_argument("--pop", metavar="ID", help="which [pops.<id>] of the configuration this node is")
    p.add_argument("-v", "--verbose", action="store_true", help="log every connection decision (key=value lines)")
    p.add_argument("--no-uvloop", action="store_true", help="use the stdlib event loop instead of uvloop")
    p.add_argument("--workers", metavar="N", type=int,
                   help="worker processes sharing the listeners with SO_REUSEPORT; a connection for an "
                        "endpoint whose agent session is in another worker is handed to it still encrypted "
                        "(docs/workers.md). Default: the config's workers key, else one per CPU the edge may "
                        "run on; 1: a single process, no supervisor. [registry] kind = \"etcd\" runs 1")
    p.add_argument("--user", metavar="USER[:GROUP]",
                   help="after binding every listener (:443, :80, TCP ports, health, peer) and reading the "
                        "CA and authtokens as root, become this user for good (its primary group unless "
                        "GROUP is given); cert_dir must be writable by it (default: the config's user "
                        "key; none: keep running as started). Under systemd prefer User= "
                        "with CAP_NET_BIND_SERVICE (deploy/README.md)")
    p.set_defaults(func=_run)
    sub = p.add_subparsers(dest="edge_command", metavar="COMMAND")
    ca = sub.add_parser(
        "ca", help="the lab certificate authority",
        description="The lab CA that signs the edge's per-name certificates.",
        epilog="examples:\n  gslb edge ca init --dir /tmp/gslb-edge/ca\n  gslb edge ca show --dir /tmp/gslb-edge/ca\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ca_sub = ca.add_subparsers(dest="ca_command", metavar="ACTION", required=True)
    init = ca_sub.add_parser("init", help="create a CA (ca.pem 0644, ca.key 0600); refuses to overwrite one")
    init.add_argument("--dir", required=True, help="directory for ca.pem and ca.key")
    init.add_argument("--if-missing", action="store_true", help="succeed without change when a CA is already there")
    init.set_defaults(func=_ca_init)
    show = ca_sub.add_parser("show", help="print the CA certificate's path, subject and expiry")
    show.add_argument("--dir", required=True)
    show.set_defaults(func=_ca_show)
    acme = sub.add_parser(
        "acme", help="ACME certificates ([edge.acme], docs/acme.md)",
        description="Keys for the edge's ACME certificates (docs/acme.md).",
        epilog="examples:\n  gslb edge acme keygen --out /etc/gslb/acme-deployment.key   # 0600; the same file on every PoP\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    acme_sub = acme.add_subparsers(dest="acme_command", metavar="ACTION", required=True)
    keygen = acme_sub.add_parser(
        "keygen", help="create a deployment key (32 random bytes, hex, 0600); refuses to overwrite",
        description="Create the key that seals the deployment's ACME private keys in the registry "
                    "([edge.acme] deployment_key_file, docs/acme.md). Copy the same file to every PoP.",
        epilog="examples:\n  gslb edge acme keygen --out /etc/gslb/acme-deployment.key\n"
               "  scp /etc/gslb/acme-deployment.key pop-eu:/etc/gslb/   # then chmod 600 there too\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    keygen.add_argument("--out", required=True, help="file for [edge.acme] deployment_key_file")
    keygen.set_defaults(func=_acme_keygen)


def _acme_keygen(args: argparse.Namespace) -> int:
    from edge.acme.crypto import create_key_file

    try:
        create_key_file(args.out)
    except FileExistsError:
        print(f"gslb edge acme keygen: {args.out}: exists; refusing to overwrite a deployment key", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"gslb edge acme keygen: {args.out}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"deployment key: {args.out} (0600; give every PoP the same file)")
    return 0


def _ca_init(args: argparse.Namespace) -> int:
    from edge.certs import CertAuthority, CertError

    try:
        if args.if_missing:
            ca = CertAuthority.load_or_create(args.dir)
        else:
            ca = CertAuthority.create(args.dir)
    except CertError as exc:
        print(f"gslb edge ca init: {exc}", file=sys.stderr)
        return 1
    print(f"CA certificate: {ca.cert_path}")
    print(f"trust it with:  curl --cacert {ca.cert_path} ...")
    return 0


def _ca_show(args: argparse.Namespace) -> int:
    from edge.certs import CertAuthority, CertError

    try:
        ca = CertAuthority.load(args.dir)
    except CertError as exc:
        print(f"gslb edge ca show: {exc}", file=sys.stderr)
        return 1
    print(f"certificate: {ca.cert_path}")
    print(f"subject:     {ca.cert.subject.rfc4514_string()}")
    print(f"not after:   {ca.cert.not_valid_after_utc.isoformat()}")
    return 0


def _domain_check(cfg: Any) -> Any:
    """edge.acme.domains' check for custom domains (docs/acme-dns.md), None when they are off."""
    if not cfg.custom_domains:
        return None
    from edge.acme import domains
    checker = domains.DomainChecker(cfg.resolvers or domains.read_resolv_conf(),
                                    (cfg.https_domain, cfg.zone), cfg.edge_addresses,
                                    example_target=f"<name>.{cfg.https_domain}")
    domains.configure(checker)
    return domains.check_domain


def _make_hub(cfg: Any, tokens: list[str] | None = None) -> tuple[Any, Any]:
    """The hub (registry of agent sessions) and the protocol factory for agents' connections;
    `tokens`: the authtokens read already (a worker, after the drop), None: read them now."""
    from edge import hub as hubmod

    if tokens is not None:
        pass
    elif cfg.authtokens_file:
        tokens = hubmod.Hub.load_authtokens(cfg.authtokens_file)
    else:
        tokens = []
        from plumbing.kvlog import kv
        logging.getLogger("gslb.edge").warning(kv("no_authtokens", detail="no authtokens_file: agents cannot log in"))
    ingress = tuple(
        {"pop": p.pop, "name": f"{p.pop}.connect.{cfg.zone}", "addresses": [f"{h}:{port}" for h, port in p.ingress]}
        for p in cfg.peers if p.pop != cfg.pop)
    # TCP endpoints are reached as tcp://0.tcp.<zone>:PORT: `*.tcp.<zone>` is a
    # GSLB name, so the client enters at its nearest PoP (ngrok: 0.tcp.ngrok.io).
    hub_cfg = hubmod.HubConfig(domain=cfg.https_domain, pop=cfg.pop, lease_ttl=cfg.registry.lease_ttl,
                               ingress=ingress, tcp_host=f"0.tcp.{cfg.zone}", https_port=cfg.https_port,
                               modules=frozenset(cfg.module_order), domain_check=_domain_check(cfg),
                               **({"tcp_port_range": cfg.tcp_ports} if cfg.tcp_ports else {}))
    hub = hubmod.Hub(hub_cfg, tokens)
    return hub, hubmod.agent_protocol_factory(hub)


def _run(args: argparse.Namespace) -> int:
    if args.edge_command:
        return 2
    if not args.config or not args.pop:
        print("gslb edge: --config FILE and --pop ID are required (see gslb edge --help)", file=sys.stderr)
        return 2
    from edge.certs import CertAuthority, CertError, CertStore
    from edge.config import ConfigError, load
    from plumbing.toml import EXIT_CONFIG

    from plumbing.kvlog import configure
    from plumbing.privileges import PrivilegeError, resolve_user
    configure(logging.INFO if args.verbose else logging.WARNING)
    import os
    if args.workers is not None and not 1 <= args.workers <= 64:
        print(f"gslb edge: --workers {args.workers}: expected 1..64", file=sys.stderr)
        return 2
    try:
        ident = resolve_user(args.user) if args.user else None
    except PrivilegeError as exc:
        print(f"gslb edge: {exc}", file=sys.stderr)
        return 2
    try:
        cfg = load(args.config, args.pop)
        if ident is None and cfg.user:
            ident = resolve_user(cfg.user)   # checked by the loader already
        if ident is not None and os.geteuid() != 0 and os.geteuid() != ident.uid:
            print(f"gslb edge: --user {ident}: only root can switch users (running as uid {os.geteuid()})",
                  file=sys.stderr)
            return 2
        ca = CertAuthority.load(cfg.ca_dir)
        certs = CertStore(ca, cfg.cert_dir, max_cached=cfg.limits.max_cached_certs)
        hub, agent_factory = _make_hub(cfg)
        tokens = None   # read once here, as root: a worker runs after the drop
        if cfg.authtokens_file:
            from edge.hub import Hub
            tokens = Hub.load_authtokens(cfg.authtokens_file)
        workers = _workers(args, cfg)
        acme_secrets = None
        if cfg.acme.enabled:
            from edge.acme import read_secrets
            from edge.acme.crypto import CryptoError

            try:
                acme_secrets = read_secrets(cfg)
            except CryptoError as exc:
                print(f"gslb edge: [edge.acme]: {exc}", file=sys.stderr)
                return 1
    except ConfigError as exc:  # a bad configuration file: 2, as in every command (plumbing.toml)
        print(f"gslb edge: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (CertError, ValueError) as exc:
        print(f"gslb edge: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"gslb edge: {exc.filename}: cannot read: {exc.strerror}", file=sys.stderr)
        return 1
    if not args.no_uvloop:
        try:
            import uvloop
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            pass
    if isinstance(workers, str):
        print(f"gslb edge: {workers}", file=sys.stderr)
        return 2
    if workers > 1:
        return _run_workers(cfg, certs, tokens, ident, acme_secrets, workers, uvloop=not args.no_uvloop)
    try:
        return asyncio.run(_serve(cfg, certs, hub, agent_factory, ident, acme_secrets))
    except OSError as exc:
        print(f"gslb edge: {exc.strerror or exc}", file=sys.stderr)
        return 1


def _workers(args: argparse.Namespace, cfg: Any) -> int | str:
    """How many workers (docs/workers.md), or why the asked-for number cannot run."""
    import os

    asked = args.workers if args.workers is not None else cfg.workers
    if cfg.registry.kind == "etcd":
        # Peer links are one per process and node: with etcd a node runs one worker (docs/workers.md).
        if asked is not None and asked > 1:
            return (f"--workers {asked}: [registry] kind = \"etcd\" runs one worker per node "
                    "(peer links are per process; docs/workers.md)")
        return 1
    if asked is not None:
        return int(asked)
    return max(1, min(64, len(os.sched_getaffinity(0))))


def _run_workers(cfg: Any, certs: Any, tokens: list[str] | None, ident: Any, acme_secrets: Any, n: int,
                 uvloop: bool) -> int:
    """Bind every listener here (as root), drop --user, fork `n` workers and supervise them."""
    from edge.workers import supervisor

    try:
        slots = supervisor.bind_slots(cfg, n)
    except OSError as exc:
        print(f"gslb edge: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if ident is not None:
        problem = _drop(cfg, ident)
        if problem is not None:
            print(f"gslb edge: {problem}", file=sys.stderr)
            return 2

    def serve(slot: Any) -> int:
        hub, agent_factory = _make_hub(cfg, tokens or [])
        hub.worker = slot.index
        if uvloop:
            try:
                import uvloop as uv
                asyncio.set_event_loop_policy(uv.EventLoopPolicy())
            except ImportError:
                pass
        try:
            return asyncio.run(_serve(cfg, certs, hub, agent_factory, None, acme_secrets, worker=slot))
        except OSError as exc:
            print(f"gslb edge: worker {slot.index}: {exc.strerror or exc}", file=sys.stderr)
            return 1

    return supervisor.run(slots, serve)


async def _attach_registry(cfg: Any, certs: Any, hub: Any) -> tuple[Any, Any]:
    """[registry] kind = "etcd": every bind goes through etcd, and endpoints
    bound at other PoPs are reached over peer links. kind = "memory" (the
    default): the hub keeps its own MemoryRegistry (one node, no peers)."""
    if cfg.registry.kind != "etcd":
        return None, None
    from edge.peer.links import PeerLinks
    from edge.registry import EtcdConfig, EtcdRegistry

    r = cfg.registry
    registry = EtcdRegistry(EtcdConfig(endpoints=r.endpoints, prefix=r.prefix, request_timeout=r.request_timeout,
                                       write_timeout=r.write_timeout, start_timeout=r.start_timeout))
    await registry.start()
    peers = PeerLinks(cfg, certs.ca, cfg.cert_dir, local_lookup=hub.local_lookup)
    await peers.start()
    hub.attach(registry, peers)
    return registry, peers


def _drop(cfg: Any, ident: Any) -> str | None:
    """Become `ident` (plumbing.privileges) once every listener is bound; the reason when that
    fails or the user cannot write the certificates the edge issues (cert_dir)."""
    import os

    from plumbing.privileges import PrivilegeError, drop_privileges, preload
    # What the modules load lazily, where they are configured: pysaml2 (half a second) only
    # for an edge with SAML identity providers.
    lazy = ("saml2",) if cfg.module_options.get("saml", {}).get("idp_metadata_files") else ()
    preload(("edge", "geo", "plumbing", "aiohttp", "cryptography.hazmat.primitives", "cryptography.x509",
             "prometheus_client", *lazy),
            exclude=("edge.agent", "edge.agent_cli", "geo.build", "geo.cli"))
    # What the edge wrote as root before the drop (the ACME store's disk cache, cert_dir/acme/:
    # made when [edge.acme] started) goes to the service user, which keeps writing there.
    acme_cache = os.path.join(cfg.cert_dir, "acme")
    if os.geteuid() == 0 and os.path.isdir(acme_cache):
        for root, dirs, files in os.walk(acme_cache):
            for name in (root, *(os.path.join(root, f) for f in dirs + files)):
                os.lchown(name, ident.uid, ident.gid)
    try:
        drop_privileges(ident, component="edge")
    except PrivilegeError as exc:
        return str(exc)
    if not os.access(cfg.cert_dir, os.W_OK | os.X_OK):
        return (f"running as {ident}: cert_dir {cfg.cert_dir} is not writable by that user "
                f"(chown {ident} {cfg.cert_dir}: the edge writes the certificates it issues there)")
    return None


async def _serve(cfg: Any, certs: Any, hub: Any, agent_factory: Any, ident: Any = None,
                 acme_secrets: Any = None, worker: Any = None) -> int:
    from edge.registry import RegistryError
    from edge.server import EdgeServer

    try:
        if worker is not None:
            # One of N workers: the supervisor's registry (edge/workers/ipc.py), no peer links.
            from edge.workers.ipc import IpcRegistry

            registry, peers = IpcRegistry(worker.registry), None
            await registry.start()
            hub.attach(registry, None)
        else:
            registry, peers = await _attach_registry(cfg, certs, hub)
    except RegistryError as exc:
        print(f"gslb edge: registry: {exc}", file=sys.stderr)
        return 1
    acme = None
    if cfg.acme.enabled:
        from edge.acme import build_manager
        from edge.acme.crypto import CryptoError

        extra: dict[str, Any] = {}
        if "dns-01" in cfg.acme.challenges:
            from edge.acme.dns01 import Dns01Solver
            extra["dns-01"] = Dns01Solver(hub.registry, cfg.acme.dns01_nameservers)
        try:
            # Custom domains get certificates only once they point at the edge (the same check as at bind).
            acme = build_manager(cfg, hub.registry, secrets=acme_secrets, extra_solvers=extra,
                                 check_domain=_domain_check(cfg))
        except (CryptoError, ValueError) as exc:
            print(f"gslb edge: [edge.acme]: {exc}", file=sys.stderr)
            return 1
        except OSError as exc:
            print(f"gslb edge: [edge.acme]: {exc.filename}: {exc.strerror}", file=sys.stderr)
            return 1
        await acme.start()
        for name in cfg.acme.wildcards:   # kept at all times; the lock lets one PoP order each
            acme.ensure(name)
    server = EdgeServer(cfg, hub, certs, agent_protocol_factory=agent_factory, acme=acme, worker=worker)
    await server.start()
    if ident is not None:
        problem = _drop(cfg, ident)
        if problem is not None:
            print(f"gslb edge: {problem}", file=sys.stderr)
            await server.close()
            if peers is not None:
                await peers.close()
            if registry is not None:
                await registry.close()
            return 2
    print(
        f"gslb edge: pop={cfg.pop} https={','.join(f'{a}:{p}' for a, p in server.bound.get('https', []))}"
        + (f" http_port={cfg.http_port}" if cfg.http_port else "")
        + (f" tcp_ports={cfg.tcp_ports[0]}-{cfg.tcp_ports[1]}" if cfg.tcp_ports else "")
        + (f" health=http://{cfg.health_listen[0]}:{cfg.health_listen[1]}/healthz" if cfg.health_listen else "")
        + (f" registry=etcd peer={','.join(f'{a}:{p}' for a, p in peers.bound) or '-'}" if peers is not None else "")
        + (f" worker={worker.index}/{worker.count} pid={os.getpid()}" if worker is not None else ""),
        file=sys.stderr, flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.close()
    if acme is not None:
        await acme.close()
    await hub.aclose()
    if peers is not None:
        await peers.close()
    if registry is not None:
        await registry.close()
    return 0
