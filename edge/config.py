"""The edge node's configuration: TOML (tomllib) -> frozen dataclasses.

Owns: the schema of `gslb edge --config FILE --pop ID`, its defaults and its
validation. Reading, line numbers, the error type (``ConfigError``:
"edge.toml:12: edge.https_port: expected an integer 1..65535, got 'x'"),
unknown keys and relative paths (against the file's directory) are the shared
TOML layer's (`plumbing.toml`). Must not touch: sockets or certificates; it only
describes them.

Layout (see examples/edge.toml for every key, its default and unit):

    zone = "lab.test"
    [edge]            defaults for every PoP
    [edge.timeouts]   seconds
    [edge.limits]     counts and bytes
    [edge.modules]    order = [...]; [edge.modules.<name>] options
    [edge.abuse]      the automatic abuse layer (edge/abuse/README.md): limits, blocks, exempt CIDRs
    [edge.acme]       ACME certificates (docs/acme.md); off by default
    [pops.<id>]       listen = [addresses]; health_listen; any [edge] key overrides
    [registry]        kind = "memory" | "etcd"; endpoints; prefix; lease_ttl; timeouts
    [peer]            listen = ["ADDR:PORT"]; timeouts of the links between PoPs
    [peers.<id>]      address = "ADDR:PORT" (peer link); ingress = ["ADDR:PORT"] (agents)

[registry], [peer] and [peers] are optional: without them the edge is one
node with an in-memory registry and no peer links (the format before them).
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.abuse.config import AbuseConfig
from plumbing.toml import ConfigError, Table, TomlDoc
from plumbing.addr import split_host_port

__all__ = ["AcmeConfig", "ConfigError", "EdgeConfig", "Timeouts", "Limits", "RegistryConfig", "PeerConfig",
           "PeerAddress", "load", "parse"]


@dataclass(frozen=True)
class Timeouts:
    handshake: float = 10.0     # ClientHello peek + TLS handshake, seconds
    idle: float = 300.0         # client connection with no bytes either way, seconds
    stream_open: float = 10.0   # waiting for the tunnel to open a stream, seconds
    header: float = 20.0        # one HTTP request head, from its first byte (slowloris), seconds
    rate_grace: float = 3.0     # a head's or body's minimum rate is judged after this long, seconds


@dataclass(frozen=True)
class Limits:
    max_connections: int = 10000        # client connections at once, all listeners
    max_header_bytes: int = 16384       # HTTP request head
    max_header_count: int = 100         # header fields in one HTTP request head
    min_header_rate: float = 64.0       # bytes/s a request head must average after rate_grace (0: off)
    min_body_rate: float = 64.0         # bytes/s a request body must average after rate_grace (0: off)
    max_client_hello: int = 16384       # bytes peeked for the ClientHello
    max_cached_certs: int = 1024        # SSLContexts held in memory


@dataclass(frozen=True)
class RegistryConfig:
    """[registry]: where endpoint bindings live (docs/registry.md)."""
    kind: str = "memory"                 # "memory" (one node) | "etcd" (every PoP shares it)
    endpoints: tuple[str, ...] = ()      # etcd client URLs, http://ADDR:PORT
    prefix: str = "/gslb/"
    lease_ttl: float = 10.0              # s: a dead edge's bindings vanish after this
    request_timeout: float = 2.0         # s: one request to one member
    write_timeout: float = 5.0           # s: a whole write across members (then "registry unavailable")
    start_timeout: float = 10.0          # s: first snapshot at start


ACME_CHALLENGES = ("http-01", "tls-alpn-01", "dns-01")


@dataclass(frozen=True)
class AcmeConfig:
    """[edge.acme]: certificates from an ACME CA (docs/acme.md). Off: the lab CA as before."""
    enabled: bool = False
    directory_url: str = ""              # the CA's directory, https://...
    ca_bundle: str | None = None         # CA file for the ACME server's TLS (None: system trust)
    email: str | None = None             # account contact
    account_key_file: str | None = None  # None: one account key for the deployment, sealed in the registry
    deployment_key_file: str = ""        # 32-byte key sealing private keys in the registry (0600)
    challenges: tuple[str, ...] = ("http-01", "tls-alpn-01")
    renew_at: float = 2 / 3              # fraction of the lifetime after which a certificate is renewed
    handshake_wait: float = 5.0          # s a first handshake waits for its certificate, then the fallback
    max_concurrent_orders: int = 4       # orders at once, per PoP
    retry_base: float = 30.0             # s: backoff after the first failed order, doubling
    retry_max: float = 3600.0            # s: backoff cap (and the wait after rateLimited)
    order_timeout: float = 120.0         # s: one whole order
    net_timeout: float = 30.0            # s: one request to the CA
    check_interval: float = 60.0         # s: renewal pass over the served certificates
    dns01_nameservers: tuple[str, ...] = ()  # dns-01: every authoritative server of the zone ("IP[:PORT]")
    wildcards: tuple[str, ...] = ()      # "*.NAME" certificates kept at all times (need dns-01)


@dataclass(frozen=True)
class PeerAddress:
    """[peers.<pop>]: how to reach another PoP's edge."""
    pop: str
    address: tuple[str, int] | None      # its peer listener (mutual TLS, yamux)
    ingress: tuple[tuple[str, int], ...] = ()   # its agent ingress (:443) addresses, told to agents


@dataclass(frozen=True)
class PeerConfig:
    """[peer]: this edge's side of the links between PoPs."""
    listen: tuple[tuple[str, int], ...] = ()   # default: [peers.<this pop>].address
    connect_timeout: float = 5.0         # s: TCP + TLS to a peer
    ping_interval: float = 5.0           # s: yamux ping on an idle link
    ping_timeout: float = 5.0            # s: no answer -> the link is dead, reopened on demand


@dataclass(frozen=True)
class EdgeConfig:
    source: str
    zone: str
    pop: str
    https_domain: str                    # HTTPS/TLS endpoints are <name>.<https_domain>
    listen: tuple[str, ...]
    https_port: int
    http_port: int | None                # None: no :80 redirect listener
    tcp_ports: tuple[int, int] | None    # inclusive range, None: no TCP endpoints
    health_listen: tuple[str, int] | None
    ca_dir: str
    cert_dir: str
    authtokens_file: str | None
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: Limits = field(default_factory=Limits)
    abuse: AbuseConfig = field(default_factory=AbuseConfig)
    module_order: tuple[str, ...] = ()
    module_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    peer: PeerConfig = field(default_factory=PeerConfig)
    peers: tuple[PeerAddress, ...] = ()
    user: str | None = None              # USER[:GROUP] to become after binding (plumbing.privileges)
    # Custom domains (docs/acme-dns.md): checked against these before a bind.
    custom_domains: bool = True
    resolvers: tuple[str, ...] = ()      # recursive resolvers; () = /etc/resolv.conf
    edge_addresses: tuple[str, ...] = ()  # every [pops.*] listen address (what a domain's A/AAAA may be)
    acme: AcmeConfig = field(default_factory=AcmeConfig)
    workers: int | None = None           # processes (docs/workers.md); None: one per CPU the edge may run on

    @property
    def peer_name(self) -> str:
        """The name in this edge's peer certificate: <pop>.peer.<zone>."""
        return f"{self.pop}.peer.{self.zone}"

    @property
    def peer_listen(self) -> tuple[tuple[str, int], ...]:
        if self.peer.listen:
            return self.peer.listen
        own = next((p for p in self.peers if p.pop == self.pop), None)
        return (own.address,) if own is not None and own.address is not None else ()

    def peer_address(self, pop: str) -> tuple[str, int] | None:
        p = next((p for p in self.peers if p.pop == pop), None)
        return p.address if p is not None else None

    @property
    def ingress_names(self) -> tuple[str, ...]:
        """The agent ingress names: connect.<zone> and <pop>.connect.<zone>."""
        return (f"connect.{self.zone}", f"{self.pop}.connect.{self.zone}")


_MAX_TCP_PORTS = 1024
_MAX_WORKERS = 64
_NAME = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*$")

_EDGE_KEYS = {
    "https_domain", "listen", "https_port", "http_port", "tcp_ports", "health_listen", "ca_dir",
    "cert_dir", "authtokens_file", "timeouts", "limits", "modules", "abuse", "user", "custom_domains", "resolvers",
    "acme", "workers",
}


def _is_ip(s: str) -> bool:
    try:
        ipaddress.ip_address(s)
    except ValueError:
        return False
    return True


def _port(t: Table, key: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 65535:
        raise t.error(key, f"expected an integer 1..65535, got {v!r}")
    return v


def _num(t: Table, key: str, default: float, lo: float, hi: float) -> float:
    v = t.value(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise t.error(key, f"expected a number {lo}..{hi}, got {v!r}")
    return float(v)


def _int(t: Table, key: str, default: int, lo: int, hi: int) -> int:
    v = t.value(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise t.error(key, f"expected an integer {lo}..{hi}, got {v!r}")
    return v


def _str(t: Table, key: str, v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise t.error(key, f"expected a non-empty string, got {v!r}")
    return v


def _dns(t: Table, key: str, v: Any) -> str:
    s = _str(t, key, v).lower().rstrip(".")
    if len(s) > 253 or not _NAME.match(s):
        raise t.error(key, f"{v!r} is not a DNS name")
    return s


def _addr(t: Table, key: str, v: Any) -> str:
    s = _str(t, key, v)
    try:
        return str(ipaddress.ip_address(s))
    except ValueError:
        raise t.error(key, f"{s!r} is not an IP address") from None


def _hostport(t: Table, key: str, v: Any) -> tuple[str, int]:
    s = _str(t, key, v)
    try:
        host, port = split_host_port(s)
    except ValueError:
        raise t.error(key, f"expected ADDRESS:PORT (IPv6 as [ADDR]:PORT), got {s!r}") from None
    return _addr(t, key, host), _port(t, key, port)


def parse(text: str, pop: str, path: str = "<config>") -> EdgeConfig:
    """The edge configuration in `text`, for PoP `pop`; errors name `path`."""
    return _parse(TomlDoc(path, text), pop)


def load(path: str | Path, pop: str) -> EdgeConfig:
    return _parse(TomlDoc(path), pop)


def _parse(doc: TomlDoc, pop: str) -> EdgeConfig:
    root = doc.root()
    root.reject_unknown(("zone", "edge", "pops", "registry", "peer", "peers"))
    if "zone" not in root:
        raise root.error("zone", "missing (the edge's DNS zone, e.g. \"lab.test\")")
    zone = _dns(root, "zone", root.value("zone"))
    edge = root.table("edge")
    pops = root.table("pops")
    if pop not in pops:
        known = ", ".join(sorted(pops.keys())) or "none"
        raise pops.error(pop, f"no such PoP (configured: {known})")
    pop_table = pops.table(pop)
    for table in (edge, pop_table):
        table.reject_unknown(_EDGE_KEYS)

    def get(key: str, default: Any) -> tuple[Table, Any]:
        """A PoP's own value wins over the [edge] default (whole values, not merged)."""
        if key in pop_table:
            return pop_table, pop_table.value(key)
        return edge, edge.value(key, default)

    t, v = get("https_domain", f"app.{zone}")
    https_domain = _dns(t, "https_domain", v)
    t, v = get("listen", None)
    if v is None:
        raise pop_table.error("listen", "missing (addresses of this PoP)")
    if not isinstance(v, list) or not v or len(v) > 64:
        raise t.error("listen", "expected a list of 1..64 IP addresses")
    listen = tuple(_addr(t, "listen", a) for a in v)
    if len(set(listen)) != len(listen):
        raise t.error("listen", "an address is listed twice")
    t, v = get("https_port", 443)
    https_port = _port(t, "https_port", v)
    t, v = get("http_port", 80)
    http_port = None if v == 0 else _port(t, "http_port", v)
    t, v = get("tcp_ports", None)
    tcp_ports = None
    if v is not None and v != "":
        m = re.match(r"^(\d+)-(\d+)$", str(v))
        if not m:
            raise t.error("tcp_ports", f"expected \"FIRST-LAST\", got {v!r}")
        lo, hi = _port(t, "tcp_ports", int(m.group(1))), _port(t, "tcp_ports", int(m.group(2)))
        if hi < lo or hi - lo + 1 > _MAX_TCP_PORTS:
            raise t.error("tcp_ports", f"range must be ascending and hold at most {_MAX_TCP_PORTS} ports")
        tcp_ports = (lo, hi)
    ports_used = {https_port} | ({http_port} if http_port else set())
    if tcp_ports and any(tcp_ports[0] <= p <= tcp_ports[1] for p in ports_used):
        raise t.error("tcp_ports", "overlaps https_port or http_port")
    t, v = get("health_listen", None)
    health = _hostport(t, "health_listen", v) if v else None
    t, v = get("ca_dir", None)
    if v is None:
        raise edge.error("ca_dir", "missing (directory of the lab CA: ca.pem, ca.key)")
    ca_dir = doc.resolve_path(_str(t, "ca_dir", v))
    t, v = get("cert_dir", None)
    cert_dir = doc.resolve_path(_str(t, "cert_dir", v)) if v is not None else str(Path(ca_dir) / "issued")
    t, v = get("authtokens_file", None)
    authtokens_file = doc.resolve_path(_str(t, "authtokens_file", v)) if v is not None else None

    t, v = get("user", None)
    user = None
    if v is not None:
        from plumbing.privileges import PrivilegeError, resolve_user
        user = _str(t, "user", v)
        try:
            resolve_user(user)
        except PrivilegeError as exc:
            raise t.error("user", str(exc).replace("--user ", "")) from None
    t, v = get("workers", None)
    workers = None
    if v is not None:
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= _MAX_WORKERS:
            raise t.error("workers", f"expected an integer 1..{_MAX_WORKERS} (processes), got {v!r}")
        workers = v
    t, v = get("custom_domains", True)
    if not isinstance(v, bool):
        raise t.error("custom_domains", f"expected true or false, got {v!r}")
    custom_domains = v
    t, v = get("resolvers", [])
    if not isinstance(v, list) or len(v) > 3:
        raise t.error("resolvers", "expected a list of at most 3 resolver addresses")
    resolvers = tuple(_addr(t, "resolvers", a) for a in v)
    edge_addresses: list[str] = []
    for pid in pops.keys():
        lv = pops.table(pid).value("listen", edge.value("listen", []))
        if isinstance(lv, list):
            edge_addresses += [str(ipaddress.ip_address(a)) for a in lv if isinstance(a, str) and _is_ip(a)]

    t, _ = get("timeouts", {})
    tt = t.table("timeouts")
    tt.reject_unknown(("handshake", "idle", "stream_open", "header", "rate_grace"))
    timeouts = Timeouts(
        handshake=_num(tt, "handshake", 10.0, 0.1, 300),
        idle=_num(tt, "idle", 300.0, 1, 86400),
        stream_open=_num(tt, "stream_open", 10.0, 0.1, 300),
        header=_num(tt, "header", 20.0, 0.1, 3600),
        rate_grace=_num(tt, "rate_grace", 3.0, 0.1, 3600),
    )
    t, _ = get("limits", {})
    lt = t.table("limits")
    lt.reject_unknown(("max_connections", "max_header_bytes", "max_header_count", "min_header_rate",
                       "min_body_rate", "max_client_hello", "max_cached_certs"))
    limits = Limits(
        max_connections=_int(lt, "max_connections", 10000, 1, 1_000_000),
        max_header_bytes=_int(lt, "max_header_bytes", 16384, 1024, 1 << 20),
        max_header_count=_int(lt, "max_header_count", 100, 8, 10000),
        min_header_rate=_num(lt, "min_header_rate", 64.0, 0, 1e9),
        min_body_rate=_num(lt, "min_body_rate", 64.0, 0, 1e9),
        max_client_hello=_int(lt, "max_client_hello", 16384, 512, 65536),
        max_cached_certs=_int(lt, "max_cached_certs", 1024, 1, 100_000),
    )
    t, _ = get("abuse", {})
    abuse = _abuse(t.table("abuse"))
    t, _ = get("modules", {})
    mt = t.table("modules")
    from edge.modules import DEFAULT_ORDER

    order = mt.value("order", list(DEFAULT_ORDER))
    if not isinstance(order, list) or not all(isinstance(x, str) for x in order):
        raise mt.error("order", "expected a list of module names")
    options = {name: dict(mt.table(name).data) for name in mt.keys() if name != "order"}
    for name in options:
        if name not in order:
            raise mt.error(name, f"options given but the module is not in {mt.qualified('order')}")
    t, _ = get("acme", {})
    acme = _acme(doc, t.table("acme"))
    cfg = EdgeConfig(
        source=doc.path, zone=zone, pop=pop, https_domain=https_domain, listen=listen,
        https_port=https_port, http_port=http_port, tcp_ports=tcp_ports, health_listen=health,
        ca_dir=ca_dir, cert_dir=cert_dir, authtokens_file=authtokens_file, timeouts=timeouts,
        limits=limits, abuse=abuse, module_order=tuple(order), module_options=options,
        registry=_registry(root.table("registry")),
        peer=_peer(root.table("peer")),
        peers=_peers(root.table("peers")), user=user,
        custom_domains=custom_domains, resolvers=resolvers, edge_addresses=tuple(dict.fromkeys(edge_addresses)),
        acme=acme, workers=workers,
    )
    # Module options are checked now, so a typo fails at start, not at the first request.
    from edge.modules import ModuleConfigError, build_chain

    for name in cfg.module_order:
        try:
            build_chain((name,), cfg.module_options)
        except ModuleConfigError as exc:
            # "KEY: problem" about a key of the module's table: that key's line
            key, _, problem = str(exc).partition(": ")
            if key in options.get(name, {}):
                raise mt.table(name).error(key, problem) from None
            raise mt.error("order", str(exc)) from None
    return cfg


_ABUSE_KEYS = (
    "enabled", "exempt", "table_size", "max_blocks", "net_factor", "connections_per_second",
    "connections_burst", "max_concurrent", "handshakes_per_second", "handshakes_burst",
    "requests_per_second", "requests_burst", "window", "slow_headers", "idle_connections", "error_ratio",
    "error_min_events", "block_durations", "escalation_decay",
)


def _abuse(t: Table) -> AbuseConfig:
    """[edge.abuse] (edge/abuse/README.md); every key optional, the defaults are production ones."""
    t.reject_unknown(_ABUSE_KEYS)
    d = AbuseConfig()
    enabled = t.value("enabled", True)
    if not isinstance(enabled, bool):
        raise t.error("enabled", f"expected true or false, got {enabled!r}")
    exempt = t.value("exempt", list(d.exempt))
    if not isinstance(exempt, list) or len(exempt) > 1024:
        raise t.error("exempt", "expected a list of at most 1024 CIDRs, e.g. [\"10.77.0.0/24\", \"fd00::/8\"]")
    nets = []
    for c in exempt:
        if not isinstance(c, str):
            raise t.error("exempt", f"expected a CIDR string, got {c!r}")
        try:
            nets.append(str(ipaddress.ip_network(c, strict=True)))
        except ValueError as exc:
            raise t.error("exempt", f"{c!r} is not a network: {exc}") from None
    durations = t.value("block_durations", list(d.block_durations))
    if (not isinstance(durations, list) or not 1 <= len(durations) <= 8
            or any(isinstance(x, bool) or not isinstance(x, (int, float)) or not 1 <= x <= 86400
                   for x in durations)):
        raise t.error("block_durations", f"expected a list of 1..8 durations 1..86400 s, got {durations!r}")
    if list(durations) != sorted(durations):
        raise t.error("block_durations", f"expected ascending durations (they escalate), got {durations!r}")
    return AbuseConfig(
        enabled=enabled, exempt=tuple(nets),
        table_size=_int(t, "table_size", d.table_size, 16, 10_000_000),
        max_blocks=_int(t, "max_blocks", d.max_blocks, 16, 1_000_000),
        net_factor=_int(t, "net_factor", d.net_factor, 1, 256),
        connections_per_second=_num(t, "connections_per_second", d.connections_per_second, 0.01, 1e7),
        connections_burst=_int(t, "connections_burst", d.connections_burst, 1, 10_000_000),
        max_concurrent=_int(t, "max_concurrent", d.max_concurrent, 1, 10_000_000),
        handshakes_per_second=_num(t, "handshakes_per_second", d.handshakes_per_second, 0.01, 1e7),
        handshakes_burst=_int(t, "handshakes_burst", d.handshakes_burst, 1, 10_000_000),
        requests_per_second=_num(t, "requests_per_second", d.requests_per_second, 0.01, 1e7),
        requests_burst=_int(t, "requests_burst", d.requests_burst, 1, 10_000_000),
        window=_num(t, "window", d.window, 1, 3600),
        slow_headers=_int(t, "slow_headers", d.slow_headers, 1, 1_000_000),
        idle_connections=_int(t, "idle_connections", d.idle_connections, 1, 1_000_000),
        error_ratio=_num(t, "error_ratio", d.error_ratio, 0.01, 1),
        error_min_events=_int(t, "error_min_events", d.error_min_events, 1, 1_000_000),
        block_durations=tuple(float(x) for x in durations),
        escalation_decay=_num(t, "escalation_decay", d.escalation_decay, 0, 30 * 86400),
    )


def _acme(doc: TomlDoc, t: Table) -> AcmeConfig:
    t.reject_unknown(("enabled", "directory_url", "ca_bundle", "email", "account_key_file", "deployment_key_file",
                      "challenges", "renew_at", "handshake_wait", "max_concurrent_orders", "retry_base", "retry_max",
                      "order_timeout", "net_timeout", "check_interval", "dns01_nameservers", "wildcards"))
    enabled = t.value("enabled", False)
    if not isinstance(enabled, bool):
        raise t.error("enabled", f"expected true or false, got {enabled!r}")
    url = t.value("directory_url", "")
    if not isinstance(url, str) or (url and not re.match(r"^https?://[^/\s]+(/\S*)?$", url)):
        raise t.error("directory_url", f"expected the CA's directory URL, https://HOST[:PORT]/PATH, got {url!r}")
    if enabled and not url:
        raise t.error("directory_url", "missing (enabled = true needs the ACME CA's directory URL)")
    key_file = t.value("deployment_key_file", "")
    if not isinstance(key_file, str):
        raise t.error("deployment_key_file", f"expected a file name, got {key_file!r}")
    if enabled and not key_file:
        raise t.error("deployment_key_file", "missing (enabled = true needs the key that seals private keys; "
                      "make one with `gslb edge acme keygen --out FILE`)")

    def path(key: str) -> str | None:
        v = t.value(key, None)
        return None if v is None else doc.resolve_path(_str(t, key, v))

    email = t.value("email", None)
    if email is not None and (not isinstance(email, str) or not re.match(r"^[^@\s]+@[^@\s]+$", email)):
        raise t.error("email", f"expected an e-mail address, got {email!r}")
    challenges = t.value("challenges", ["http-01", "tls-alpn-01"])
    if not isinstance(challenges, list) or not challenges or not all(c in ACME_CHALLENGES for c in challenges) \
            or len(set(challenges)) != len(challenges):
        raise t.error("challenges", f"expected a list of distinct {', '.join(ACME_CHALLENGES)}, got {challenges!r}")
    servers = t.value("dns01_nameservers", [])
    if not isinstance(servers, list) or len(servers) > 16 or not all(isinstance(x, str) for x in servers):
        raise t.error("dns01_nameservers", "expected a list of at most 16 \"IP\" or \"IP:PORT\" strings")
    from edge.acme.dnsmsg import parse_server
    for x in servers:
        try:
            parse_server(x)
        except ValueError as exc:
            raise t.error("dns01_nameservers", f"{x!r}: {exc}") from None
    if "dns-01" in challenges and not servers:
        raise t.error("challenges", "dns-01 needs dns01_nameservers: every authoritative name server of the "
                      "zone, which the edge asks before it lets the CA validate")
    wildcards = t.value("wildcards", [])
    if not isinstance(wildcards, list) or len(wildcards) > 64 or not all(
            isinstance(w, str) and re.match(r"^\*\.([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$", w)
            for w in wildcards):
        raise t.error("wildcards", f"expected a list of at most 64 \"*.name.example\" (lower case), got {wildcards!r}")
    if wildcards and "dns-01" not in challenges:
        raise t.error("wildcards", "a wildcard certificate needs the dns-01 challenge (RFC 8555 7.1.3): add it "
                      "to challenges")
    renew_at = _num(t, "renew_at", 2 / 3, 0.01, 0.99)
    retry_base = _num(t, "retry_base", 30.0, 0.1, 86400)
    retry_max = _num(t, "retry_max", 3600.0, 0.1, 7 * 86400)
    if retry_max < retry_base:
        raise t.error("retry_max", f"must be at least retry_base ({retry_base:g})")
    return AcmeConfig(
        enabled=enabled, directory_url=url, ca_bundle=path("ca_bundle"), email=email,
        account_key_file=path("account_key_file"),
        deployment_key_file=doc.resolve_path(key_file) if key_file else "",
        challenges=tuple(challenges), renew_at=renew_at,
        handshake_wait=_num(t, "handshake_wait", 5.0, 0, 60),
        max_concurrent_orders=_int(t, "max_concurrent_orders", 4, 1, 64),
        retry_base=retry_base, retry_max=retry_max,
        order_timeout=_num(t, "order_timeout", 120.0, 1, 3600),
        net_timeout=_num(t, "net_timeout", 30.0, 0.5, 300),
        check_interval=_num(t, "check_interval", 60.0, 0.5, 86400),
        dns01_nameservers=tuple(servers), wildcards=tuple(wildcards),
    )


def _registry(t: Table) -> RegistryConfig:
    t.reject_unknown(("kind", "endpoints", "prefix", "lease_ttl", "request_timeout", "write_timeout",
                      "start_timeout"))
    kind = t.value("kind", "memory")
    if kind not in ("memory", "etcd"):
        raise t.error("kind", f"expected \"memory\" or \"etcd\", got {kind!r}")
    eps = t.value("endpoints", [])
    if not isinstance(eps, list) or len(eps) > 16 or not all(isinstance(e, str) and
                                                             re.match(r"^https?://[^/\s]+$", e) for e in eps):
        raise t.error("endpoints", "expected a list of at most 16 URLs like \"http://10.77.0.21:2379\"")
    if kind == "etcd" and not eps:
        raise t.error("endpoints", "kind = \"etcd\" needs the members' client URLs")
    prefix = t.value("prefix", "/gslb/")
    if not isinstance(prefix, str) or not re.match(r"^/([A-Za-z0-9_.-]+/)+$", prefix):
        raise t.error("prefix", f"expected \"/a/b/\" form, got {prefix!r}")
    return RegistryConfig(
        kind=kind, endpoints=tuple(eps), prefix=prefix,
        lease_ttl=_num(t, "lease_ttl", 10.0, 2, 3600),
        request_timeout=_num(t, "request_timeout", 2.0, 0.1, 60),
        write_timeout=_num(t, "write_timeout", 5.0, 0.1, 120),
        start_timeout=_num(t, "start_timeout", 10.0, 0.1, 300),
    )


def _peer(t: Table) -> PeerConfig:
    t.reject_unknown(("listen", "connect_timeout", "ping_interval", "ping_timeout"))
    listen = t.value("listen", [])
    if not isinstance(listen, list) or len(listen) > 16:
        raise t.error("listen", "expected a list of at most 16 \"ADDR:PORT\"")
    return PeerConfig(
        listen=tuple(_hostport(t, "listen", a) for a in listen),
        connect_timeout=_num(t, "connect_timeout", 5.0, 0.1, 120),
        ping_interval=_num(t, "ping_interval", 5.0, 0.1, 600),
        ping_timeout=_num(t, "ping_timeout", 5.0, 0.1, 600),
    )


def _peers(t: Table) -> tuple[PeerAddress, ...]:
    out = []
    for pop, e in t.tables():
        e.reject_unknown(("address", "ingress"))
        addr = _hostport(e, "address", e.value("address")) if "address" in e else None
        ingress = e.value("ingress", [])
        if not isinstance(ingress, list) or len(ingress) > 16:
            raise e.error("ingress", "expected a list of at most 16 \"ADDR:PORT\"")
        out.append(PeerAddress(pop, addr, tuple(_hostport(e, "ingress", a) for a in ingress)))
    return tuple(out)
