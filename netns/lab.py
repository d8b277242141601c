"""The lab's life cycle: up, down, status, for one prefix.

Owns the state directory of a lab (`/run/gslb-lab/<prefix>/` by default):
generated configs, the lab mmdb, process logs and `state.json` (hosts,
addresses, processes by pid). Builds hosts with `netns.topology`, writes
configs with `netns.render`, starts processes with `netns.procs`, and starts
the other components only through their command line (`gslb dns`,
`gslb geo build-mmdb`, `gslb edge ca init`, `gslb edge`). It never imports
dns/, geo/ or edge/.

Every step that changes the machine is undone by `down()`, which finds what
to remove by the lab's prefix, so it also cleans up after a crash or a
SIGKILL halfway through `up()`.
"""
from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from pyroute2 import netns as pnetns

from netns import acme as lab_acme
from netns import procs, render, topology
from netns.errors import BuildError, LabError, NotRootError, ToolMissingError
from netns.guard import require_socket_in
from netns.plan import Host, LabPlan, check_prefix
from netns.procs import Proc
from plumbing.addr import join_host_port
from plumbing.kvlog import kv

log = logging.getLogger("gslb.lab")

DEFAULT_PREFIX = "gslb"
STATE_BASE = Path("/run/gslb-lab")
READY_TIMEOUT = 20.0      # seconds from starting processes to ready (answers, registry health, edges)
HEALTH_PORT = 80          # the edge's :80 answers GET /healthz by address (and 308s the rest)
HTTPS_PORT = 443          # the edge's one TLS listener (SNI dispatch)
TCP_PORTS = "20000-20099" # TCP endpoints' ports on every PoP
DNS_METRICS_PORT = 9153   # `gslb dns` /metrics ([server] metrics_listen) when the plan has a metrics host
EDGE_METRICS_PORT = 9180  # the edges' health listener (/healthz, /metrics) then
PROMETHEUS_PORT = 9090    # the metrics host's Prometheus (UI and HTTP API)
SAML_IDP_PORT = 8443      # the idp host's SAML IdP (netns/saml_idp.py): https://idp.<zone>:8443
SCRAPE_INTERVAL = 1.0     # seconds between two scrapes of every daemon
IDP_PORT = 443            # the idp host's OpenID Connect provider (https://idp.<zone>)
IDP_DIR = Path(__file__).resolve().parent / "idp"   # its npm project (make install: npm ci)
# The edges route between PoPs over the registry (etcd) and peer links, so a
# bare agent binds at ONE PoP, its nearest: `gslb lab exec agent` leaves
# GSLB_SERVER unset and the agent resolves connect.<zone>, as a user's agent
# does. True hands it every PoP's <pop>.connect.<zone> instead (one session
# per PoP; the layout before cross-PoP routing, kept for comparisons).
AGENT_BINDS_EVERY_POP = False
# The name servers and the edges bind :53/:443 as root and then run as this user (`--user`):
# Debian's unprivileged `nobody:nogroup`, which exists on every Debian host (the lab never
# creates users). What they read after the drop is made theirs first (_hand_over).
SERVICE_USER = "nobody:nogroup"

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class LabPaths:
    prefix: str
    dir: Path

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    @property
    def logs(self) -> Path:
        return self.dir / "logs"

    @property
    def dns_config(self) -> Path:
        return self.dir / "dns.toml"

    @property
    def geo_table(self) -> Path:
        return self.dir / "geo-table.toml"

    @property
    def mmdb(self) -> Path:
        return self.dir / "lab.mmdb"

    @property
    def unbound_dir(self) -> Path:
        return self.dir / "unbound"

    @property
    def unbound_conf(self) -> Path:
        return self.unbound_dir / "unbound.conf"

    @property
    def ca_dir(self) -> Path:
        return self.dir / "ca"

    @property
    def ca_cert(self) -> Path:
        return self.ca_dir / "ca.pem"

    @property
    def cert_dir(self) -> Path:
        return self.dir / "certs"

    @property
    def authtoken_file(self) -> Path:
        return self.dir / "authtoken"

    @property
    def edge_config(self) -> Path:
        return self.dir / "edge.toml"

    @property
    def agent_config(self) -> Path:
        return self.dir / "agent.toml"

    def dns_control(self, host: str) -> Path:
        return self.dir / f"{host}.dns.ctl"

    @property
    def prometheus_config(self) -> Path:
        return self.dir / "prometheus.yml"

    @property
    def prometheus_data(self) -> Path:
        """Prometheus's TSDB: inside the state dir, so `down` removes it."""
        return self.dir / "prometheus"

    @property
    def acme_dir(self) -> Path:
        """The lab's pebble: its config, TLS certificate and key, the edges' deployment key."""
        return self.dir / "acme"

    @property
    def dnssec_key(self) -> Path:
        """The zone's signing key (CSK), shared by both name servers: same DNSKEY everywhere."""
        return self.dir / "dnssec-csk.pem"

    @property
    def keygen_log(self) -> Path:
        return self.logs / "dnssec-keygen.log"

    @property
    def session_key(self) -> Path:
        """The identity modules' session key (0600), one for every edge: a session holds at every PoP."""
        return self.dir / "session.key"

    @property
    def idp_dir(self) -> Path:
        """The idp host's provider: idp.json, its certificate, client_secret, users.json (netns/idp/prepare.py)."""
        return self.dir / "idp"


def resolve_prefix(prefix: str | None) -> str:
    return check_prefix(prefix or os.environ.get("GSLB_LAB_PREFIX") or DEFAULT_PREFIX)


def lab_paths(prefix: str, state_dir: str | None = None) -> LabPaths:
    """State dir: --state-dir, else $GSLB_LAB_STATE_DIR, else /run/gslb-lab/<prefix>."""
    d = state_dir or os.environ.get("GSLB_LAB_STATE_DIR")
    return LabPaths(prefix=prefix, dir=Path(d).resolve() if d else STATE_BASE / prefix)


@dataclass
class LabState:
    """What state.json holds. Written after every step of `up`, so `down` after a crash knows it."""

    prefix: str
    dir: str
    plan: str
    status: str                                  # "building" | "up"
    hosts: list[dict] = field(default_factory=list)
    processes: list[Proc] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    config: str | None = None
    mmdb: str | None = None
    ca: str | None = None                        # the lab CA certificate clients trust (--cacert)
    authtoken_file: str | None = None            # the agent host's authtoken (0600)
    edge_config: str | None = None
    agent_config: str | None = None
    agent_servers: list[str] = field(default_factory=list)   # GSLB_SERVER in the agent host; [] = DNS

    def to_json(self) -> dict:
        return {"prefix": self.prefix, "dir": self.dir, "plan": self.plan, "status": self.status,
                "hosts": self.hosts, "processes": [p.to_json() for p in self.processes],
                "timings": self.timings, "config": self.config, "mmdb": self.mmdb, "ca": self.ca,
                "authtoken_file": self.authtoken_file, "edge_config": self.edge_config,
                "agent_config": self.agent_config, "agent_servers": self.agent_servers}

    @classmethod
    def from_json(cls, d: dict) -> "LabState":
        return cls(prefix=d["prefix"], dir=d["dir"], plan=d["plan"], status=d["status"],
                   hosts=d.get("hosts", []), processes=[Proc.from_json(p) for p in d.get("processes", [])],
                   timings=d.get("timings", {}), config=d.get("config"), mmdb=d.get("mmdb"),
                   ca=d.get("ca"), authtoken_file=d.get("authtoken_file"), edge_config=d.get("edge_config"),
                   agent_config=d.get("agent_config"), agent_servers=list(d.get("agent_servers", [])))


def read_state(paths: LabPaths) -> LabState | None:
    try:
        return LabState.from_json(json.loads(paths.state_file.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        log.warning(kv("state_unreadable", file=paths.state_file, error=exc))
        return None


def _write_state(paths: LabPaths, state: LabState) -> None:
    tmp = paths.state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(state.to_json(), indent=1))
    os.replace(tmp, paths.state_file)


@contextmanager
def _lock(paths: LabPaths, timeout: float = 60.0) -> Iterator[None]:
    """Serialise up/down of one prefix: flock on `.<prefix>.lock` beside the state dir.

    The holder removes the lock file when no lab of the prefix is left (no file
    stays behind), so a waiter that wins the flock checks that the file it
    locked is still the one at that path, and starts over if not.
    """
    lock_path = paths.dir.parent / f".{paths.prefix}.lock"
    owner = os.getpid()
    deadline = time.monotonic() + timeout
    while True:
        # (again on every round: a holder may have removed an empty /run/gslb-lab)
        paths.dir.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() > deadline:
                raise LabError(f"another `gslb lab` command is working on lab {paths.prefix!r} "
                               f"(lock {lock_path}); wait for it and retry") from None
            time.sleep(0.1)
            continue
        try:
            same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)   # we locked a file its holder has just removed: start over
    try:
        yield
    finally:
        if os.getpid() != owner:
            pass  # a forked helper unwinding: the lock and its file are the parent's
        elif not paths.dir.exists():
            try:
                os.unlink(lock_path)
            except OSError:
                pass
            if paths.dir.parent == STATE_BASE:
                try:
                    STATE_BASE.rmdir()   # only when empty: other labs may live there
                except OSError:
                    pass
        os.close(fd)


def check_environment(need_tools: bool = True, extra_tools: tuple[str, ...] = ()) -> None:
    if os.geteuid() != 0:
        raise NotRootError("the lab creates network namespaces and needs root: run `sudo gslb lab ...` "
                           "(or `sudo make lab`)")
    if need_tools:
        missing = [t for t in ("ip", "unbound", *extra_tools) if shutil.which(t) is None
                   and not os.path.exists(f"/usr/sbin/{t}")]
        if missing:
            raise ToolMissingError(f"missing system tools: {', '.join(missing)}; install them "
                                   "(`make install` does, or apt-get install iproute2 unbound etcd-server)")


def gslb_argv() -> list[str]:
    """The `gslb` command line, as this interpreter runs it (works installed or from the tree)."""
    return [sys.executable, "-m", "gslb.cli"]


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def dns_command(paths: LabPaths, host: Host) -> list[str]:
    listen = [join_host_port(a, 53) for a in (*host.ipv4, *host.ipv6)]
    # An explicit control socket in the state dir: the default one lives under
    # /run/gslb-dns/, a directory `down` would otherwise leave behind.
    argv = [*gslb_argv(), "dns", "--config", str(paths.dns_config), "--control", str(paths.dns_control(host.name)),
            "--user", SERVICE_USER]
    for item in listen:
        argv += ["--listen", item]
    return argv


def pop_command(paths: LabPaths, host: Host) -> list[str]:
    """What runs in a PoP host: the edge of PoP `region`, on every address of the host
    (the generated edge.toml lists them under [pops.<id>])."""
    return [*gslb_argv(), "edge", "--config", str(paths.edge_config), "--pop", host.region or host.name,
            "--user", SERVICE_USER]


def agent_servers(plan: LabPlan) -> list[str]:
    """GSLB_SERVER of the agent host: every PoP's own ingress name, or [] (connect.<zone> via DNS)."""
    if not AGENT_BINDS_EVERY_POP:
        return []
    return [f"{p.id}.connect.{plan.zone}:{HTTPS_PORT}" for p in plan.pops]


def exec_env(state: LabState, host: str) -> dict[str, str]:
    """Variables `gslb lab exec HOST` adds: in the agent host, what a bare `gslb agent` needs."""
    role = next((h["role"] for h in state.hosts if h["name"] == host), None)
    if role != "agent" or not state.agent_config:
        return {}
    env = {"GSLB_AGENT_CONFIG": state.agent_config}
    if state.agent_servers:
        env["GSLB_SERVER"] = ",".join(state.agent_servers)
    return env


def registry_command(paths: LabPaths, plan: LabPlan, host: Host) -> list[str]:
    """etcd on a registry host: one member per registry host of the plan (flags: docs/lab.md)."""
    etcd = shutil.which("etcd") or "/usr/bin/etcd"
    members = plan.by_role("registry")
    cluster = ",".join(f"{m.name}=http://{m.ipv4[0]}:2380" for m in members)
    a4, a6 = host.ipv4[0], host.ipv6[0]
    return [etcd, "--name", host.name, "--data-dir", str(paths.dir / "etcd" / host.name),
            "--listen-peer-urls", f"http://{a4}:2380", "--initial-advertise-peer-urls", f"http://{a4}:2380",
            # 127.0.0.1 is the host's own loopback (each namespace has one).
            "--listen-client-urls", f"http://{a4}:2379,http://[{a6}]:2379,http://127.0.0.1:2379",
            "--advertise-client-urls", f"http://{a4}:2379,http://[{a6}]:2379",
            "--initial-cluster", cluster, "--initial-cluster-state", "new",
            "--initial-cluster-token", f"{paths.prefix}-lab",
            "--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn"]


ETCD_TERM_WAIT = 1.0   # s: TERM, then KILL; one member of three can take 7 s on TERM (etcd 3.4.23)


def _term_wait(p: Proc) -> float:
    """Seconds between TERM and KILL when stopping p. etcd is crash-safe (its WAL
    is fsynced), so a KILL after ~1 s loses nothing and keeps `down` quick."""
    return ETCD_TERM_WAIT if p.name == "etcd" else 2.0


def metrics_command(paths: LabPaths, host: Host) -> list[str]:
    """Prometheus on the metrics host, scraping what prometheus.yml lists (docs/metrics.md)."""
    prometheus = shutil.which("prometheus") or "/usr/bin/prometheus"
    return [prometheus, f"--config.file={paths.prometheus_config}", f"--storage.tsdb.path={paths.prometheus_data}",
            f"--web.listen-address={join_host_port(host.ipv4[0], PROMETHEUS_PORT)}",
            "--storage.tsdb.retention.time=1d", "--log.level=warn"]


def oidc_provider_command(paths: LabPaths) -> list[str]:
    """The idp host's OpenID Connect provider (netns/idp/server.mjs, npm oidc-provider on Debian's Node)."""
    node = shutil.which("node") or "/usr/bin/node"
    return [node, str(IDP_DIR / "server.mjs"), str(paths.idp_dir / "idp.json")]


def _prepare_idp(plan: LabPlan, paths: LabPaths) -> None:
    """Certificate (lab CA), keys, clients and users of the idp host (netns/idp/prepare.py)."""
    for h in plan.by_role("idp"):
        _run_tools([([sys.executable, "-m", "netns.idp.prepare", "--dir", str(paths.idp_dir),
                      "--ca-dir", str(paths.ca_dir), "--zone", plan.zone,
                      *[x for a in (*h.ipv4, *h.ipv6) for x in ("--listen", a)]],
                     "netns.idp.prepare", paths.logs / "idp-prepare.log")])


def _start_oidc_provider(paths: LabPaths, host: Host, env: dict[str, str]) -> Proc:
    """The OpenID Connect provider of the idp host (its own process; other providers of the same host
    get functions of their own)."""
    # node resolves `oidc-provider` from server.mjs's own folder (netns/idp/node_modules)
    return procs.spawn(topology.ns_name(paths.prefix, host.name), host.name, "oidc-provider",
                       oidc_provider_command(paths), paths.logs / f"{host.name}.oidc-provider.log", env)


def _wait_idp_ready(plan: LabPlan, paths: LabPaths, state: LabState) -> None:
    """Until the idp host's provider serves its discovery document over TLS (the lab CA), from a
    socket inside the idp host; bounded by READY_TIMEOUT."""
    hosts = plan.by_role("idp")
    if not hosts:
        return
    h = hosts[0]
    ns = topology.ns_name(paths.prefix, h.name)
    ctx = ssl.create_default_context(cafile=str(paths.ca_cert))
    name = f"idp.{plan.zone}"
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        for p in state.processes:
            if p.host == h.name and not procs.alive(p):
                raise LabError(f"{p.host}: {p.name} (pid {p.pid}) exited during start-up; its log says:\n"
                               + (procs.tail(p.log) or "(empty)"))
        for addr in (h.ipv4[0], h.ipv6[0]):
            if not _https_ok(ns, ctx, addr, IDP_PORT, name, "/.well-known/openid-configuration"):
                break
        else:
            return
        if time.monotonic() > deadline:
            raise LabError(f"not ready within {READY_TIMEOUT:.0f} s: {h.name} (https://{name}/.well-known/"
                           f"openid-configuration)" + _log_hint(state, h.name))
        time.sleep(0.1)


def _https_ok(ns: str, ctx: ssl.SSLContext, addr: str, port: int, name: str, path: str) -> bool:
    """GET path over TLS (certificate checked for `name`) from a socket created inside namespace `ns`."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = pnetns.create_socket(ns, family, socket.SOCK_STREAM, flags=0)
    try:
        require_socket_in(s, ns)
        s.settimeout(1.0)
        s.connect((addr, port))
        with ctx.wrap_socket(s, server_hostname=name) as t:
            t.sendall(f"GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
            return t.recv(64).startswith(b"HTTP/1.1 200")
    except (OSError, ValueError):
        return False
    finally:
        s.close()


def resolver_command(paths: LabPaths) -> list[str]:
    unbound = shutil.which("unbound") or "/usr/sbin/unbound"
    return [unbound, "-d", "-c", str(paths.unbound_conf)]


# ---------------------------------------------------------------- status


def host_entries(state: LabState) -> list[dict]:
    """The `hosts` list of `status --json` (the contract with tests and tools)."""
    out = []
    for h in state.hosts:
        ps = [{"pid": p.pid, "cmd": " ".join(p.cmd), "name": p.name, "alive": procs.alive(p), "log": p.log}
              for p in state.processes if p.host == h["name"]]
        out.append({**h, "netns_present": topology.namespace_inode(h["netns"]) is not None, "processes": ps})
    return out


def status(prefix: str, state_dir: str | None = None) -> dict:
    paths = lab_paths(prefix, state_dir)
    state = read_state(paths)
    namespaces = topology.lab_namespaces(prefix)
    if state is None:
        return {"prefix": prefix, "running": False, "status": "down" if not namespaces else "leftovers",
                "leftover_namespaces": namespaces, "hosts": [],
                "state": {"dir": str(paths.dir), "config": None, "mmdb": None, "ca": None,
                          "authtoken_file": None, "registry": []}}
    hosts = host_entries(state)
    dead = [f"{h['name']}:{p['name']}" for h in hosts for p in h["processes"] if not p["alive"]]
    missing = [h["name"] for h in hosts if not h["netns_present"]]
    healthy = state.status == "up" and not dead and not missing
    return {
        "prefix": prefix, "running": healthy,
        "status": "up" if healthy else ("building" if state.status == "building" else "degraded"),
        "dead_processes": dead, "missing_namespaces": missing, "plan": state.plan,
        "hosts": hosts, "timings": state.timings,
        "state": {"dir": state.dir, "config": state.config, "mmdb": state.mmdb, "ca": state.ca,
                  "authtoken_file": state.authtoken_file, "edge_config": state.edge_config,
                  "agent_config": state.agent_config, "agent_servers": state.agent_servers,
                  "registry": [f"http://{h['ipv4'][0]}:2379" for h in state.hosts if h["role"] == "registry"]},
    }


# ---------------------------------------------------------------- down


@dataclass(frozen=True)
class DownReport:
    killed: int
    namespaces: int
    etc_dirs: int
    state_dir_removed: bool
    seconds: float

    @property
    def anything(self) -> bool:
        return bool(self.killed or self.namespaces or self.etc_dirs or self.state_dir_removed)


def _teardown(paths: LabPaths, progress: Progress = _quiet) -> DownReport:
    t0 = time.monotonic()
    state = read_state(paths)
    targets: dict[int, int] = {}
    waits: dict[int, float] = {}
    if state is not None:
        for p in state.processes:
            targets[p.pid] = p.starttime
            waits[p.pid] = _term_wait(p)
    # Leftovers not in the state file (a SIGKILL between spawn and state write,
    # or `gslb lab exec` shells): whatever runs inside this prefix's namespaces
    # is this lab's. A process left inside keeps its namespace alive.
    for ns, pids in topology.processes_in(paths.prefix).items():
        for pid in pids:
            targets.setdefault(pid, -1)
    killed = procs.stop(sorted(targets.items()), term_waits=waits) if targets else []
    if killed:
        progress(f"stopped {len(killed)} processes")
    namespaces = topology.remove_namespaces(paths.prefix)
    etc = topology.remove_etc_netns(paths.prefix)
    removed_dir = False
    if paths.dir.exists():
        shutil.rmtree(paths.dir)
        removed_dir = True
    return DownReport(killed=len(killed), namespaces=len(namespaces), etc_dirs=len(etc),
                      state_dir_removed=removed_dir, seconds=time.monotonic() - t0)


def down(prefix: str, state_dir: str | None = None, progress: Progress = _quiet) -> DownReport:
    """Remove everything of lab `prefix`. Idempotent."""
    check_environment(need_tools=False)
    paths = lab_paths(prefix, state_dir)
    with _lock(paths):
        report = _teardown(paths, progress)
    log.info(kv("down", prefix=prefix, killed=report.killed, namespaces=report.namespaces,
                seconds=f"{report.seconds:.2f}"))
    return report


# ---------------------------------------------------------------- kill / restart (failover drills)


@dataclass(frozen=True)
class Killed:
    host: str
    name: str
    pid: int
    time: float          # wall clock (epoch) right after the signal was sent


@dataclass(frozen=True)
class Restarted:
    host: str
    name: str
    pid: int
    seconds: float       # from spawn to ready (edge /healthz, etcd /health, DNS answer)


def _host_processes(state: LabState, host: str) -> list[int]:
    """Indexes in state.processes of `host`'s processes; LabError when it has none."""
    names = [h["name"] for h in state.hosts]
    if host not in names:
        raise LabError(f"no lab host {host!r}; hosts: {', '.join(names)}")
    idx = [i for i, p in enumerate(state.processes) if p.host == host]
    if not idx:
        with_procs = sorted({p.host for p in state.processes})
        raise LabError(f"{host}: the lab runs no process there (hosts with processes: {', '.join(with_procs)})")
    return idx


def _state_up(paths: LabPaths) -> LabState:
    state = read_state(paths)
    if state is None or state.status != "up":
        raise LabError(f"lab {paths.prefix!r} is not up (`gslb lab up --prefix {paths.prefix}`)")
    return state


def kill(prefix: str, hosts: list[str], sig: int = signal.SIGKILL, state_dir: str | None = None) -> list[Killed]:
    """Signal the recorded processes of `hosts` (default SIGKILL): a PoP or a registry member
    dies as on a real machine. They stay recorded, so `status` shows them dead,
    `restart` brings them back and `down` still knows them."""
    check_environment(need_tools=False)
    paths = lab_paths(prefix, state_dir)
    with _lock(paths):
        state = _state_up(paths)
        out = []
        for host in hosts:
            for i in _host_processes(state, host):
                p = state.processes[i]
                if procs.alive(p):   # checks pid + start time: never a recycled pid
                    os.kill(p.pid, sig)
                    out.append(Killed(host=host, name=p.name, pid=p.pid, time=time.time()))
    log.info(kv("kill", prefix=prefix, signal=int(sig),
                processes=",".join(f"{k.host}:{k.name}:{k.pid}" for k in out) or "-"))
    return out


def restart(prefix: str, hosts: list[str], state_dir: str | None = None, timeout: float = READY_TIMEOUT,
            progress: Progress = _quiet) -> list[Restarted]:
    """Start the recorded processes of `hosts` again (stopping them first when alive), with the
    same command line and log, and wait until each is ready. state.json is updated as each
    starts, so `status --json` and `down` see the new pids."""
    check_environment(need_tools=False)
    paths = lab_paths(prefix, state_dir)
    with _lock(paths):
        state = _state_up(paths)
        todo = [(host, i) for host in hosts for i in _host_processes(state, host)]
        env = _child_env()
        started: list[tuple[Proc, float]] = []
        for host, i in todo:
            old = state.processes[i]
            if procs.alive(old):
                procs.stop([(old.pid, old.starttime)], term_wait=_term_wait(old))
            ns = topology.ns_name(prefix, host)
            if topology.namespace_inode(ns) is None:
                raise LabError(f"{host}: namespace {ns} is gone; `gslb lab up --force` rebuilds the lab")
            new = procs.spawn(ns, host, old.name, list(old.cmd), Path(old.log), env)
            state.processes[i] = new
            _write_state(paths, state)
            started.append((new, time.monotonic()))
            progress(f"{host}: {new.name} started (pid {new.pid})")
        done = _wait_restarted(paths, state, started, timeout)
    log.info(kv("restart", prefix=prefix,
                processes=",".join(f"{r.host}:{r.name}:{r.pid}:{r.seconds:.2f}s" for r in done)))
    return done


def _wait_restarted(paths: LabPaths, state: LabState, started: list[tuple[Proc, float]],
                    timeout: float) -> list[Restarted]:
    """Poll each restarted process's own readiness probe, from inside a client host; bounded.
    A restarted edge is ready once the name servers answer with its addresses again."""
    client = next(h for h in state.hosts if h["role"] == "client")
    client_ns = client["netns"]
    zone = _zone_of(state)
    by_host = {h["name"]: h for h in state.hosts}
    pending = list(started)
    done: list[Restarted] = []
    deadline = time.monotonic() + timeout
    while pending:
        if time.monotonic() > deadline:
            what = ", ".join(f"{p.host}:{p.name}" for p, _ in pending)
            raise LabError(f"restarted but not ready within {timeout:.0f} s: {what}"
                           + _log_hint(state, pending[0][0].host))
        for p, t0 in list(pending):
            if not procs.alive(p):
                raise LabError(f"{p.host}: {p.name} (pid {p.pid}) exited after the restart; its log says:\n"
                               + (procs.tail(p.log) or "(empty)"))
            addr = by_host[p.host]["ipv4"][0]
            if p.name == "edge":
                # Ready = answered again: its /healthz, and every name server's view has it up.
                mine = {*by_host[p.host]["ipv4"], *by_host[p.host].get("ipv6", [])}
                ok = _http_ok(client_ns, addr, HEALTH_PORT, "/healthz") and not any(
                    mine.intersection(_health_not_up(paths.dns_control(h["name"])))
                    for h in state.hosts if h["role"] == "dns")
            elif p.name == "etcd":
                ok = _http_ok(client_ns, addr, 2379, "/health")
            elif p.name == "dns":
                ok = _dns_ok(client_ns, addr, f"{zone}.", "SOA")
            elif p.name == "prometheus":
                ok = _http_ok(client_ns, addr, PROMETHEUS_PORT, "/-/ready")
            elif p.name == "saml-idp":
                ok = _saml_idp_ok(client_ns, addr, f"idp.{zone}", state.ca or "")
            elif p.name == "pebble":
                # A new run has a new root: bundle it again for the clients.
                try:
                    _bundle_pebble_root(paths, state, p.host, timeout=0.5)
                    ok = True
                except LabError:
                    ok = False
            elif p.name == "oidc-provider":
                ok = _https_ok(client_ns, ssl.create_default_context(cafile=str(paths.ca_cert)), addr, IDP_PORT,
                               f"idp.{zone}", "/.well-known/openid-configuration")
            else:   # unbound: an answer through it
                ok = _dns_ok(client_ns, addr, f"demo.app.{zone}.", "A")
            if ok:
                pending.remove((p, t0))
                done.append(Restarted(host=p.host, name=p.name, pid=p.pid, seconds=time.monotonic() - t0))
        if pending:
            time.sleep(0.05)
    return done


def _zone_of(state: LabState) -> str:
    from netns.plan import load_plan
    try:
        return load_plan(state.plan).zone
    except (LabError, OSError):
        return "lab.test"


def _dns_ok(ns: str, addr: str, qname: str, qtype: str) -> bool:
    """One query from a UDP socket inside namespace `ns`; True on a NOERROR answer with records."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = pnetns.create_socket(ns, family, socket.SOCK_DGRAM, flags=0)
    try:
        require_socket_in(s, ns)
        s.settimeout(0.5)
        qid, wire = _dns_query(qname, qtype)
        s.sendto(wire, (addr, 53))
        data, _ = s.recvfrom(4096)
        return bool(_answers(data, qid))
    except OSError:
        return False
    finally:
        s.close()


# ---------------------------------------------------------------- up


@dataclass(frozen=True)
class UpResult:
    already_running: bool
    status: dict
    cleaned: DownReport | None = None


def _leftovers(paths: LabPaths) -> bool:
    etc = topology.ETC_NETNS_DIR
    return bool(topology.lab_namespaces(paths.prefix)) or paths.dir.exists() or (
        etc.is_dir() and any(d.name.startswith(paths.prefix + "-") for d in etc.iterdir()))


def up(plan: LabPlan, prefix: str, state_dir: str | None = None, force: bool = False,
       progress: Progress = _quiet) -> UpResult:
    check_environment(extra_tools=(("etcd",) if plan.by_role("registry") else ())
                      + (("prometheus",) if plan.by_role("metrics") else ())
                      + (("xmlsec1",) if plan.by_role("idp") else ())  # the edges' saml module (docs/saml.md)
                      + (("pebble",) if plan.by_role("acme") else ())
                      + (("node",) if plan.by_role("idp") else ()))
    if plan.by_role("idp") and not (IDP_DIR / "node_modules" / "oidc-provider").is_dir():
        raise ToolMissingError(f"{IDP_DIR}/node_modules is missing: `make install` runs npm ci there")
    paths = lab_paths(prefix, state_dir)
    with _lock(paths):
        current = status(prefix, state_dir)
        if current["running"] and not force:
            return UpResult(already_running=True, status=current)
        if current.get("status") == "degraded" and not force:
            what = ", ".join(current["dead_processes"] + current["missing_namespaces"])
            hosts = " ".join(sorted({d.split(":")[0] for d in current["dead_processes"]}))
            raise LabError(f"lab {prefix!r} is up but not healthy (gone: {what}); "
                           + (f"`gslb lab restart {hosts}` starts them again, " if hosts else "")
                           + "`gslb lab up --force` restarts the lab, `gslb lab down` removes it; "
                           "`gslb lab logs HOST` shows why")
        cleaned = None
        if _leftovers(paths):
            progress("removing the previous lab" if current["status"] in ("up", "degraded") else
                     "removing leftovers of an earlier lab (crashed or killed)")
            cleaned = _teardown(paths, progress)
        owner = os.getpid()
        try:
            _build_and_start(plan, paths, progress)
        except BaseException as exc:
            if os.getpid() != owner:
                # A forked helper (pyroute2 forks without exec) unwinding through
                # our stack: cleaning up is the parent's job, never the child's.
                raise
            progress("failed; removing what was built")
            try:
                _teardown(paths)
            except Exception as cleanup_exc:  # report both: the cause first
                log.error(kv("cleanup_failed", error=cleanup_exc))
            if isinstance(exc, LabError):
                raise BuildError(f"lab up failed (everything it built has been removed): {exc}") from exc
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            raise BuildError("lab up failed (everything it built has been removed): "
                             f"{type(exc).__name__}: {exc}") from exc
        return UpResult(already_running=False, status=status(prefix, state_dir), cleaned=cleaned)


def _build_and_start(plan: LabPlan, paths: LabPaths, progress: Progress) -> None:
    t0 = time.monotonic()
    prefix = paths.prefix
    paths.dir.mkdir(parents=True, exist_ok=False)
    paths.logs.mkdir()
    paths.unbound_dir.mkdir()
    state = LabState(prefix=prefix, dir=str(paths.dir), plan=plan.path, status="building",
                     config=str(paths.dns_config), mmdb=str(paths.mmdb))
    state.hosts = [{"name": h.name, "role": h.role, "region": h.region, "netns": topology.ns_name(prefix, h.name),
                    "ipv4": list(h.ipv4), "ipv6": list(h.ipv6),
                    "city": h.place.city if h.place else None,
                    "lat": h.place.lat if h.place else None, "lon": h.place.lon if h.place else None}
                   for h in plan.hosts]
    _write_state(paths, state)

    progress(f"building {len(plan.hosts)} hosts")
    times = topology.build(plan, prefix)
    nameservers = render.resolv_nameservers(plan)
    # Every host but the bridge resolves through the lab resolver, so `dig NAME`
    # and getaddrinfo() inside `gslb lab exec HOST` work as on a real host.
    for h in plan.hosts:
        if h.role != "bridge":
            topology.write_resolv_conf(prefix, h.name, nameservers)
    t_build = time.monotonic()

    progress("writing configs, the lab mmdb, the lab CA and the agent's authtoken")
    paths.geo_table.write_text(render.geo_table(plan))
    paths.dns_config.write_text(render.dns_toml(plan, str(paths.mmdb), HEALTH_PORT, HTTPS_PORT,
                                                dnssec_key=str(paths.dnssec_key), metrics_port=DNS_METRICS_PORT))
    if plan.by_role("metrics"):
        paths.prometheus_config.write_text(render.prometheus_yml(plan, DNS_METRICS_PORT, EDGE_METRICS_PORT,
                                                                         SCRAPE_INTERVAL))
    _write_secret(paths.authtoken_file, secrets.token_urlsafe(32) + "\n")
    acme_host = lab_acme.acme_host(plan)
    # The format of edge/modules/session.py's key files: base64 of 32 random bytes.
    _write_secret(paths.session_key, base64.b64encode(secrets.token_bytes(32)).decode("ascii") + "\n")
    paths.edge_config.write_text(render.edge_toml(
        plan, str(paths.ca_dir), str(paths.cert_dir), str(paths.authtoken_file), TCP_PORTS, HTTPS_PORT, HEALTH_PORT,
        health_port=EDGE_METRICS_PORT if plan.by_role("metrics") else None,
        saml=_saml_edge_options(plan, paths),
        acme=lab_acme.edge_table(acme_host, str(paths.ca_dir / "lab-ca.pem"), str(paths.acme_dir / "deployment.key"),
                                 nameservers=tuple(h.ipv4[0] for h in plan.by_role("dns")),
                                 wildcards=(f"*.{LAB_WILDCARD_LABEL}.app.{plan.zone}",))
        if acme_host is not None else None,
        session_key_file=str(paths.session_key), idp_ca_file=str(paths.ca_cert)))
    paths.agent_config.write_text(render.agent_toml(plan, str(paths.ca_cert), str(paths.authtoken_file)))
    # Both are Python start-ups of about a second on a busy machine: side by side.
    _run_tools([
        ([*gslb_argv(), "geo", "build-mmdb", str(paths.geo_table), "--out", str(paths.mmdb)],
         "gslb geo build-mmdb", paths.logs / "build-mmdb.log"),
        ([*gslb_argv(), "edge", "ca", "init", "--dir", str(paths.ca_dir), "--if-missing"],
         "gslb edge ca init", paths.logs / "ca-init.log"),
        # The zone is signed (docs/dnssec.md); its DS is the resolver's trust anchor.
        ([*gslb_argv(), "dns", "keygen", "--out", str(paths.dnssec_key), "--zone", plan.zone],
         "gslb dns keygen", paths.keygen_log),
    ])
    (paths.unbound_dir / f"{render.CUSTOMER_ZONE}.zone").write_text(render.customer_zone_file(plan))
    _prepare_saml_idp(plan, paths)
    paths.unbound_conf.write_text(render.unbound_conf(plan, str(paths.unbound_dir),
                                                      trust_anchor=_ds_from_keygen(paths.keygen_log)))
    if acme_host is not None:
        lab_acme.write_files(paths.acme_dir, paths.ca_dir, acme_host)
    _prepare_idp(plan, paths)
    state.ca, state.authtoken_file = str(paths.ca_cert), str(paths.authtoken_file)
    state.edge_config, state.agent_config = str(paths.edge_config), str(paths.agent_config)
    state.agent_servers = agent_servers(plan)
    _write_state(paths, state)
    t_config = time.monotonic()

    _hand_over(paths)
    progress("starting name servers, resolver, registry and the PoPs' edges")
    env = _child_env()
    for h in plan.hosts:
        ns = topology.ns_name(prefix, h.name)
        if h.role == "dns":
            p = procs.spawn(ns, h.name, "dns", dns_command(paths, h), paths.logs / f"{h.name}.dns.log", env)
        elif h.role == "pop":
            p = procs.spawn(ns, h.name, "edge", pop_command(paths, h), paths.logs / f"{h.name}.edge.log", env)
        elif h.role == "resolver":
            p = procs.spawn(ns, h.name, "unbound", resolver_command(paths), paths.logs / f"{h.name}.unbound.log",
                            env)
        elif h.role == "registry":
            p = procs.spawn(ns, h.name, "etcd", registry_command(paths, plan, h),
                            paths.logs / f"{h.name}.etcd.log", env)
        elif h.role == "metrics":
            p = procs.spawn(ns, h.name, "prometheus", metrics_command(paths, h),
                            paths.logs / f"{h.name}.prometheus.log", env)
        elif h.role == "acme":
            p = procs.spawn(ns, h.name, "pebble", lab_acme.command(paths.acme_dir, plan),
                            paths.logs / f"{h.name}.pebble.log", lab_acme.env(env))
        elif h.role == "idp":
            p = _start_oidc_provider(paths, h, env)
        else:
            continue
        state.processes.append(p)
        _write_state(paths, state)
    _start_saml_idp(plan, paths, state, env)
    t_start = time.monotonic()

    progress("waiting for the first answer through the resolver")
    _wait_ready(plan, paths, state, progress)
    _wait_saml_idp_ready(plan, paths, state)
    _wait_idp_ready(plan, paths, state)
    if acme_host is not None:
        progress("fetching pebble's root into the clients' CA bundle")
        _bundle_pebble_root(paths, state, acme_host.name)
    t_ready = time.monotonic()
    state.status = "up"
    state.timings = {"build": round(t_build - t0, 3), "configs": round(t_config - t_build, 3),
                     "start": round(t_start - t_config, 3), "ready": round(t_ready - t_start, 3),
                     "up_to_first_answer": round(t_ready - t0, 3),
                     "namespaces": round(times.namespaces, 3), "links": round(times.links, 3),
                     "addresses": round(times.addresses, 3)}
    _write_state(paths, state)
    log.info(kv("up", prefix=prefix, hosts=len(plan.hosts), seconds=f"{t_ready - t0:.2f}"))


# -- the idp host's SAML IdP (docs/saml.md) -------------------------------------------------
def _saml_dir(paths: LabPaths) -> Path:
    return paths.dir / "saml-idp"


def _saml_base_url(plan: LabPlan) -> str:
    return f"https://idp.{plan.zone}:{SAML_IDP_PORT}"


def _saml_edge_options(plan: LabPlan, paths: LabPaths) -> dict | None:
    """[edge.modules.saml] of every edge: trust the lab IdP, one session key for all PoPs."""
    if not plan.by_role("idp"):
        return None
    d = _saml_dir(paths)
    return {"idp_metadata_files": [str(d / "metadata.xml")], "session_key_file": str(d / "saml-session.key")}


def _saml_argv(plan: LabPlan, paths: LabPaths) -> list[str]:
    return [sys.executable, "-m", "netns.saml_idp", "--dir", str(_saml_dir(paths)),
            "--base-url", _saml_base_url(plan), "--sp-domain", f"app.{plan.zone}"]


def _prepare_saml_idp(plan: LabPlan, paths: LabPaths) -> None:
    """The SAML IdP's signing key, metadata, lab-CA TLS certificate and the edges' session key
    (a separate process, like `gslb edge ca init`); before the edges start: they read the metadata."""
    if plan.by_role("idp"):
        _run_tools([([*_saml_argv(plan, paths), "--prepare", str(paths.ca_dir)], "netns.saml_idp --prepare",
                     paths.logs / "saml-idp-prepare.log")])


def _start_saml_idp(plan: LabPlan, paths: LabPaths, state: LabState, env: dict[str, str]) -> None:
    """The SAML IdP on the idp host (its own process, next to the OpenID Connect provider there);
    `lab down` stops it with every other process of the state."""
    for h in plan.by_role("idp"):
        d = _saml_dir(paths)
        argv = _saml_argv(plan, paths) + ["--port", str(SAML_IDP_PORT), "--cert", str(d / "tls.crt"),
                                          "--key", str(d / "tls.key"), "--ca", str(paths.ca_cert)]
        for a in (*h.ipv4, *h.ipv6):
            argv += ["--listen", a]
        p = procs.spawn(topology.ns_name(paths.prefix, h.name), h.name, "saml-idp", argv,
                        paths.logs / f"{h.name}.saml-idp.log", env)
        state.processes.append(p)
        _write_state(paths, state)


def _wait_saml_idp_ready(plan: LabPlan, paths: LabPaths, state: LabState) -> None:
    """Until the SAML IdP serves its metadata over TLS (lab CA, name idp.<zone>) to a socket made
    inside the idp host; bounded by READY_TIMEOUT."""
    hosts = plan.by_role("idp")
    if not hosts:
        return
    ns, addr = topology.ns_name(paths.prefix, hosts[0].name), hosts[0].ipv4[0]
    deadline = time.monotonic() + READY_TIMEOUT
    while not _saml_idp_ok(ns, addr, f"idp.{plan.zone}", str(paths.ca_cert)):
        if time.monotonic() >= deadline:
            raise LabError(f"the SAML IdP on {hosts[0].name} did not serve /metadata within {READY_TIMEOUT:.0f} s"
                           f"{_log_hint(state, hosts[0].name)}")
        time.sleep(0.2)


def _saml_idp_ok(ns: str, addr: str, name: str, ca: str) -> bool:
    """GET /metadata of the SAML IdP over TLS (certificate checked for `name`) from a socket made in `ns`."""
    import ssl

    s = pnetns.create_socket(ns, socket.AF_INET, socket.SOCK_STREAM, flags=0)
    try:
        require_socket_in(s, ns)
        s.settimeout(1.0)
        s.connect((addr, SAML_IDP_PORT))
        with ssl.create_default_context(cafile=ca).wrap_socket(s, server_hostname=name) as t:
            t.sendall(f"GET /metadata HTTP/1.1\r\nHost: {name}:{SAML_IDP_PORT}\r\nConnection: close\r\n\r\n"
                      .encode())
            return t.recv(64).startswith(b"HTTP/1.1 200")
    except (OSError, ssl.SSLError):
        return False
    finally:
        s.close()
# The lab's edges keep one wildcard certificate through dns-01 (docs/acme.md): *.wild.app.<zone>,
# names no endpoint takes (endpoints are one label under app.<zone>), so the per-name
# certificates the tests look at stay what they are.
LAB_WILDCARD_LABEL = "wild"


def _bundle_pebble_root(paths: LabPaths, state: LabState, host: str, timeout: float = lab_acme.ROOT_TIMEOUT) -> None:
    """ca/ca.pem := the lab CA + pebble's root of this run (docs/acme.md), fetched from a client host."""
    from netns.plan import Host

    h = next(x for x in state.hosts if x["name"] == host)
    client = next(x for x in state.hosts if x["role"] == "client")
    proc = next(p for p in state.processes if p.host == host and p.name == "pebble")
    subject = lab_acme.fetch_root_and_bundle(
        client["netns"], Host(name=h["name"], role="acme", region=None, ipv4=tuple(h["ipv4"]), ipv6=tuple(h["ipv6"])),
        paths.ca_dir, lambda: procs.alive(proc), timeout)
    log.info(kv("pebble_root_bundled", root=subject, bundle=paths.ca_cert))


def _ds_from_keygen(log_path: Path) -> str:
    """The "<zone>. IN DS ..." line `gslb dns keygen --zone` printed (public data)."""
    for line in log_path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 7 and parts[1:3] == ["IN", "DS"]:
            return f"{parts[0]} DS {' '.join(parts[3:])}"
    raise LabError(f"gslb dns keygen printed no DS record (see {log_path})")


def _hand_over(paths: LabPaths) -> None:
    """Give SERVICE_USER what the name servers and edges read or write after they drop root:
    the zone's signing key (read again on SIGHUP; stays 0600, owned by that user) and the
    directory the edges issue certificates into. The CA key and the authtokens stay root's:
    the edges read them before the drop. Control sockets are bound before it, as root."""
    from plumbing.privileges import PrivilegeError, resolve_user
    try:
        ident = resolve_user(SERVICE_USER)
    except PrivilegeError as exc:
        raise LabError(f"the lab runs its name servers and edges as {SERVICE_USER}: {exc}") from None
    paths.cert_dir.mkdir(mode=0o755, exist_ok=True)
    for path in (paths.dnssec_key, paths.cert_dir):
        os.chown(path, ident.uid, ident.gid)
    # Readable whatever root's umask was when they were written (they hold no secret).
    os.chmod(paths.dir, 0o755)
    for path in (paths.dns_config, paths.mmdb, paths.edge_config):
        os.chmod(path, 0o644)


def _write_secret(path: Path, text: str) -> None:
    """A secret file: created 0600 (never world-readable, not even for a moment)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _run_tools(tools: list[tuple[list[str], str, Path]], timeout: float = 60.0) -> None:
    """Run short tools side by side (root namespace, no network); fail with the first one's error."""
    env = _child_env()
    running = [(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env),
                what, log_path) for argv, what, log_path in tools]
    errors = []
    deadline = time.monotonic() + timeout
    for p, what, log_path in running:
        try:
            out, err = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            errors.append(f"{what} did not finish within {timeout:.0f} s")
            continue
        log_path.write_text(out + err)
        if p.returncode != 0:
            errors.append(f"{what} failed (exit {p.returncode}): {(err or out).strip()[-800:]}")
    if errors:
        raise LabError("; ".join(errors))


# ---------------------------------------------------------------- readiness


def _dns_query(qname: str, qtype: str) -> tuple[int, bytes]:
    from dnslib import DNSRecord  # the wire format library of the project (not our dns/ package)

    q = DNSRecord.question(qname, qtype)
    return q.header.id, q.pack()


def _answers(reply: bytes, qid: int) -> int | None:
    """Number of answer records of a NOERROR reply with id qid; None for anything else."""
    from dnslib import DNSRecord

    try:
        r = DNSRecord.parse(reply)
    except Exception:
        return None
    if r.header.id != qid or r.header.rcode != 0:
        return None
    return len(r.rr)


def _wait_ready(plan: LabPlan, paths: LabPaths, state: LabState, progress: Progress = _quiet) -> None:
    """Poll until the lab answers right, not merely answers. In order:

    1. both name servers answer SOA;
    2. every etcd member's /health and every edge's /healthz (on :80, bound only once all
       its listeners are) answer 200;
    3. every name server's health view (its control socket) has every PoP address up, with
       its last check a success: before that, answers skip PoPs whose edges were still
       starting when the checker first probed them, and a resolver would cache those;
    4. a client gets demo.app.<zone> A through the resolver (asked only now, so the
       resolver caches nothing from before step 3).

    Every network probe is sent from a socket created inside a lab host (never from root);
    the control sockets are unix sockets in the state dir. Bounded by READY_TIMEOUT; fails
    early, with the log's tail, when a process dies, and names what is not ready."""
    client = plan.by_role("client")[0]
    client_ns = topology.ns_name(paths.prefix, client.name)
    soa = [(a, f"{plan.zone}.", "SOA", h.name) for h in plan.by_role("dns") for a in h.ipv4[:1]]
    http = [(h.ipv4[0], 2379, "/health", h.name) for h in plan.by_role("registry")]
    # An edge answers /healthz on :80 only once all its listeners (:443 too) are bound.
    http += [(h.ipv4[0], HEALTH_PORT, "/healthz", h.name) for h in plan.by_role("pop")]
    http += [(h.ipv4[0], PROMETHEUS_PORT, "/-/ready", h.name) for h in plan.by_role("metrics")]
    views = [h.name for h in plan.by_role("dns")]
    resolver = plan.by_role("resolver")[0]
    first = [(resolver.ipv4[0], f"demo.app.{plan.zone}.", "A", resolver.name)]
    not_up: dict[str, list[str]] = {}
    deadline = time.monotonic() + READY_TIMEOUT
    attempts = 0
    while soa or http or views or first:
        attempts += 1
        if time.monotonic() > deadline:
            waiting = [p[3] for p in soa + http] + views + [p[3] for p in first]
            detail = "".join(f"\n  {h}: health view has not up: {', '.join(a[:8])}"
                             + (f" and {len(a) - 8} more" if len(a) > 8 else "")
                             for h, a in not_up.items() if h in views)
            raise LabError(f"not ready within {READY_TIMEOUT:.0f} s: {', '.join(waiting)}{detail}\n"
                           f"see `gslb lab logs --prefix {paths.prefix} {waiting[0]}`"
                           + _log_hint(state, waiting[0]))
        for p in state.processes:
            if not procs.alive(p):
                raise LabError(f"{p.host}: {p.name} (pid {p.pid}) exited during start-up; its log says:\n"
                               + (procs.tail(p.log) or "(empty)"))
        if soa or (not http and not views):
            pending = soa or first
            addr, qname, qtype, _host = pending[0]
            if _dns_ok(client_ns, addr, qname, qtype):
                pending.pop(0)
                if pending is soa and not soa:
                    progress(f"{len(plan.by_role('dns'))} name servers answer SOA")
            else:
                time.sleep(0.05)
        elif http:
            addr, port, path, _host = http[0]
            if _http_ok(client_ns, addr, port, path):
                http.pop(0)
                if not http:
                    progress(f"{len(plan.by_role('registry'))} etcd members and {len(plan.by_role('pop'))} "
                             "edges healthy")
            else:
                time.sleep(0.05)
        else:
            host = views[0]
            missing = _health_not_up(paths.dns_control(host))
            if missing:
                not_up[host] = missing
                time.sleep(0.1)
            else:
                not_up.pop(host, None)
                views.pop(0)
                if not views:
                    progress("every name server's health checks have every PoP address up")
    log.debug(kv("ready", attempts=attempts))


def _health_not_up(control: Path) -> list[str]:
    """Addresses a name server does not yet answer with (docs/configuration.md, `[health]`):
    down, drained, or up with a failure streak under way (their last check failed). Asked
    over its control socket: one JSON line `{"op": "health"}` -> one JSON line back. An
    unreachable socket or a malformed reply counts as every address not up yet."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2.0)
            s.connect(str(control))
            s.sendall(b'{"op": "health"}\n')
            buf = b""
            while not buf.endswith(b"\n") and len(buf) < (4 << 20):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        reply = json.loads(buf)
        if not reply.get("ok"):
            return [f"(control socket: {reply.get('error', 'not ok')})"]
        out = [a["address"] for a in reply["addresses"]
               if a["state"] != "up" or a["failures"] or not a["checks"]]
        workers = reply.get("workers") or {}
        if any(v != reply["version"] for v in workers.values()):
            out.append("(workers have not applied the newest view)")
        return out
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [f"(control socket {control}: {exc})"]


def _http_ok(ns: str, addr: str, port: int, path: str) -> bool:
    """GET path from a TCP socket created inside namespace `ns`; True on a 200 answer."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = pnetns.create_socket(ns, family, socket.SOCK_STREAM, flags=0)
    try:
        require_socket_in(s, ns)
        s.settimeout(0.5)
        s.connect((addr, port))
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n".encode())
        head = s.recv(64)
        return head.startswith(b"HTTP/1.1 200") or head.startswith(b"HTTP/1.0 200")
    except OSError:
        return False
    finally:
        s.close()


def _log_hint(state: LabState, host: str) -> str:
    for p in state.processes:
        if p.host == host:
            t = procs.tail(p.log, 10)
            if t:
                return f"\nlast lines of {p.log}:\n{t}"
    return ""
