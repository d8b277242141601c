"""The edge node's configuration: TOML (tomllib) -> frozen dataclasses.

Owns: the schema of `gslb edge --config FILE --pop ID`, its defaults and its
validation. Errors name the file, the line and the key:
"edge.toml:12: edge.https_port: expected an integer 1..65535, got 'x'".
Must not touch: sockets or certificates; it only describes them.

Layout (see examples/edge.toml for every key, its default and unit):

    zone = "lab.test"
    [edge]            defaults for every PoP
    [edge.timeouts]   seconds
    [edge.limits]     counts and bytes
    [edge.modules]    order = [...]; [edge.modules.<name>] options
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
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plumbing.addr import split_host_port

__all__ = ["ConfigError", "EdgeConfig", "Timeouts", "Limits", "RegistryConfig", "PeerConfig", "PeerAddress",
           "load", "parse"]


class ConfigError(ValueError):
    """A configuration that cannot be used; the message is "file:line: key: what is wrong"."""


@dataclass(frozen=True)
class Timeouts:
    handshake: float = 10.0     # ClientHello peek + TLS handshake, seconds
    idle: float = 300.0         # client connection with no bytes either way, seconds
    stream_open: float = 10.0   # waiting for the tunnel to open a stream, seconds
    header: float = 20.0        # one HTTP request head, from its first byte (slowloris), seconds


@dataclass(frozen=True)
class Limits:
    max_connections: int = 10000        # client connections at once, all listeners
    max_header_bytes: int = 16384       # HTTP request head
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
    module_order: tuple[str, ...] = ()
    module_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    peer: PeerConfig = field(default_factory=PeerConfig)
    peers: tuple[PeerAddress, ...] = ()

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
_NAME = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*$")

_EDGE_KEYS = {
    "https_domain", "listen", "https_port", "http_port", "tcp_ports", "health_listen", "ca_dir",
    "cert_dir", "authtokens_file", "timeouts", "limits", "modules",
}


class _Src:
    """Finds the line of a key in the TOML text, for error messages."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()

    def line_of(self, dotted: str) -> int:
        parts = dotted.split(".")
        leaf = parts[-1]
        table = ".".join(parts[:-1])
        current = ""
        key_re = re.compile(r'^\s*"?' + re.escape(leaf) + r'"?\s*=')
        best = 0
        for i, line in enumerate(self.lines, 1):
            m = re.match(r"^\s*\[+\s*([^\]]+?)\s*\]+", line)
            if m:
                current = m.group(1).replace('"', "")
                if current == dotted and not best:
                    best = i
                continue
            if key_re.match(line) and (current == table or (not best and current == "")):
                if current == table:
                    return i
        if not best:
            for i, line in enumerate(self.lines, 1):
                m = re.match(r"^\s*\[+\s*([^\]]+?)\s*\]+", line)
                if m and m.group(1).replace('"', "").startswith(dotted + "."):
                    return i
        return best or 1

    def error(self, dotted: str, what: str) -> ConfigError:
        return ConfigError(f"{self.path}:{self.line_of(dotted)}: {dotted}: {what}")


def _port(src: _Src, key: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 65535:
        raise src.error(key, f"expected an integer 1..65535, got {v!r}")
    return v


def _num(src: _Src, key: str, v: Any, lo: float, hi: float) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise src.error(key, f"expected a number {lo}..{hi}, got {v!r}")
    return float(v)


def _int(src: _Src, key: str, v: Any, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise src.error(key, f"expected an integer {lo}..{hi}, got {v!r}")
    return v


def _str(src: _Src, key: str, v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise src.error(key, f"expected a non-empty string, got {v!r}")
    return v


def _dns(src: _Src, key: str, v: Any) -> str:
    s = _str(src, key, v).lower().rstrip(".")
    if len(s) > 253 or not _NAME.match(s):
        raise src.error(key, f"{v!r} is not a DNS name")
    return s


def _addr(src: _Src, key: str, v: Any) -> str:
    s = _str(src, key, v)
    try:
        return str(ipaddress.ip_address(s))
    except ValueError:
        raise src.error(key, f"{s!r} is not an IP address") from None


def _hostport(src: _Src, key: str, v: Any) -> tuple[str, int]:
    s = _str(src, key, v)
    try:
        host, port = split_host_port(s)
    except ValueError:
        raise src.error(key, f"expected ADDRESS:PORT (IPv6 as [ADDR]:PORT), got {s!r}") from None
    return _addr(src, key, host), _port(src, key, port)


def _table(src: _Src, key: str, v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise src.error(key, "expected a table")
    return v


def parse(text: str, pop: str, path: str = "<config>") -> EdgeConfig:
    src = _Src(path, text)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise ConfigError(f"{path}:{m.group(1) if m else 1}: not valid TOML: {exc}") from None
    unknown = set(doc) - {"zone", "edge", "pops", "registry", "peer", "peers"}
    if unknown:
        k = sorted(unknown)[0]
        raise src.error(k, "unknown key (known: zone, edge, pops, registry, peer, peers)")
    zone = _dns(src, "zone", doc.get("zone")) if "zone" in doc else None
    if zone is None:
        raise ConfigError(f"{path}:1: zone: missing (the edge's DNS zone, e.g. \"lab.test\")")
    edge = _table(src, "edge", doc.get("edge", {}))
    pops = _table(src, "pops", doc.get("pops", {}))
    if pop not in pops:
        known = ", ".join(sorted(pops)) or "none"
        raise ConfigError(f"{path}:{src.line_of('pops')}: pops.{pop}: no such PoP (configured: {known})")
    pop_table = _table(src, f"pops.{pop}", pops[pop])
    for scope, table in (("edge", edge), (f"pops.{pop}", pop_table)):
        bad = set(table) - _EDGE_KEYS
        if bad:
            raise src.error(f"{scope}.{sorted(bad)[0]}", f"unknown key (known: {', '.join(sorted(_EDGE_KEYS))})")

    def get(key: str, default: Any) -> tuple[str, Any]:
        if key in pop_table:
            return f"pops.{pop}.{key}", pop_table[key]
        if key in edge:
            return f"edge.{key}", edge[key]
        return f"edge.{key}", default

    k, v = get("https_domain", f"app.{zone}")
    https_domain = _dns(src, k, v)
    k, v = get("listen", None)
    if v is None:
        raise ConfigError(f"{path}:{src.line_of(f'pops.{pop}')}: pops.{pop}.listen: missing (addresses of this PoP)")
    if not isinstance(v, list) or not v or len(v) > 64:
        raise src.error(k, "expected a list of 1..64 IP addresses")
    listen = tuple(_addr(src, k, a) for a in v)
    if len(set(listen)) != len(listen):
        raise src.error(k, "an address is listed twice")
    k, v = get("https_port", 443)
    https_port = _port(src, k, v)
    k, v = get("http_port", 80)
    http_port = None if v == 0 else _port(src, k, v)
    k, v = get("tcp_ports", None)
    tcp_ports = None
    if v is not None and v != "":
        m = re.match(r"^(\d+)-(\d+)$", str(v))
        if not m:
            raise src.error(k, f"expected \"FIRST-LAST\", got {v!r}")
        lo, hi = _port(src, k, int(m.group(1))), _port(src, k, int(m.group(2)))
        if hi < lo or hi - lo + 1 > _MAX_TCP_PORTS:
            raise src.error(k, f"range must be ascending and hold at most {_MAX_TCP_PORTS} ports")
        tcp_ports = (lo, hi)
    ports_used = {https_port} | ({http_port} if http_port else set())
    if tcp_ports and any(tcp_ports[0] <= p <= tcp_ports[1] for p in ports_used):
        raise src.error(k, "overlaps https_port or http_port")
    k, v = get("health_listen", None)
    health = _hostport(src, k, v) if v else None
    k, v = get("ca_dir", None)
    if v is None:
        raise src.error("edge.ca_dir", "missing (directory of the lab CA: ca.pem, ca.key)")
    ca_dir = _str(src, k, v)
    k, v = get("cert_dir", str(Path(ca_dir) / "issued"))
    cert_dir = _str(src, k, v)
    k, v = get("authtokens_file", None)
    authtokens_file = _str(src, k, v) if v is not None else None

    k, tv = get("timeouts", {})
    tv = _table(src, k, tv)
    bad = set(tv) - {"handshake", "idle", "stream_open", "header"}
    if bad:
        raise src.error(f"{k}.{sorted(bad)[0]}", "unknown key (known: handshake, header, idle, stream_open)")
    timeouts = Timeouts(
        handshake=_num(src, f"{k}.handshake", tv.get("handshake", 10.0), 0.1, 300),
        idle=_num(src, f"{k}.idle", tv.get("idle", 300.0), 1, 86400),
        stream_open=_num(src, f"{k}.stream_open", tv.get("stream_open", 10.0), 0.1, 300),
        header=_num(src, f"{k}.header", tv.get("header", 20.0), 0.1, 3600),
    )
    k, lv = get("limits", {})
    lv = _table(src, k, lv)
    known = {"max_connections", "max_header_bytes", "max_client_hello", "max_cached_certs"}
    bad = set(lv) - known
    if bad:
        raise src.error(f"{k}.{sorted(bad)[0]}", f"unknown key (known: {', '.join(sorted(known))})")
    limits = Limits(
        max_connections=_int(src, f"{k}.max_connections", lv.get("max_connections", 10000), 1, 1_000_000),
        max_header_bytes=_int(src, f"{k}.max_header_bytes", lv.get("max_header_bytes", 16384), 1024, 1 << 20),
        max_client_hello=_int(src, f"{k}.max_client_hello", lv.get("max_client_hello", 16384), 512, 65536),
        max_cached_certs=_int(src, f"{k}.max_cached_certs", lv.get("max_cached_certs", 1024), 1, 100_000),
    )
    k, mv = get("modules", {})
    mv = _table(src, k, mv)
    order = mv.get("order", [])
    if not isinstance(order, list) or not all(isinstance(x, str) for x in order):
        raise src.error(f"{k}.order", "expected a list of module names")
    options = {name: _table(src, f"{k}.{name}", val) for name, val in mv.items() if name != "order"}
    for name in options:
        if name not in order:
            raise src.error(f"{k}.{name}", f"options given but the module is not in {k}.order")
    cfg = EdgeConfig(
        source=path, zone=zone, pop=pop, https_domain=https_domain, listen=listen,
        https_port=https_port, http_port=http_port, tcp_ports=tcp_ports, health_listen=health,
        ca_dir=ca_dir, cert_dir=cert_dir, authtokens_file=authtokens_file, timeouts=timeouts,
        limits=limits, module_order=tuple(order), module_options=options,
        registry=_registry(src, doc.get("registry", {})),
        peer=_peer(src, doc.get("peer", {})),
        peers=_peers(src, doc.get("peers", {})),
    )
    # Module options are checked now, so a typo fails at start, not at the first request.
    from edge.modules import ModuleConfigError, build_chain

    try:
        build_chain(cfg.module_order, cfg.module_options)
    except ModuleConfigError as exc:
        raise src.error(f"{k}.order", str(exc)) from None
    return cfg


def _registry(src: _Src, v: Any) -> RegistryConfig:
    t = _table(src, "registry", v)
    known = {"kind", "endpoints", "prefix", "lease_ttl", "request_timeout", "write_timeout", "start_timeout"}
    bad = set(t) - known
    if bad:
        raise src.error(f"registry.{sorted(bad)[0]}", f"unknown key (known: {', '.join(sorted(known))})")
    kind = t.get("kind", "memory")
    if kind not in ("memory", "etcd"):
        raise src.error("registry.kind", f"expected \"memory\" or \"etcd\", got {kind!r}")
    eps = t.get("endpoints", [])
    if not isinstance(eps, list) or len(eps) > 16 or not all(isinstance(e, str) and
                                                             re.match(r"^https?://[^/\s]+$", e) for e in eps):
        raise src.error("registry.endpoints", "expected a list of at most 16 URLs like \"http://10.77.0.21:2379\"")
    if kind == "etcd" and not eps:
        raise src.error("registry.endpoints", "kind = \"etcd\" needs the members' client URLs")
    prefix = t.get("prefix", "/gslb/")
    if not isinstance(prefix, str) or not re.match(r"^/([A-Za-z0-9_.-]+/)+$", prefix):
        raise src.error("registry.prefix", f"expected \"/a/b/\" form, got {prefix!r}")
    return RegistryConfig(
        kind=kind, endpoints=tuple(eps), prefix=prefix,
        lease_ttl=_num(src, "registry.lease_ttl", t.get("lease_ttl", 10.0), 2, 3600),
        request_timeout=_num(src, "registry.request_timeout", t.get("request_timeout", 2.0), 0.1, 60),
        write_timeout=_num(src, "registry.write_timeout", t.get("write_timeout", 5.0), 0.1, 120),
        start_timeout=_num(src, "registry.start_timeout", t.get("start_timeout", 10.0), 0.1, 300),
    )


def _peer(src: _Src, v: Any) -> PeerConfig:
    t = _table(src, "peer", v)
    known = {"listen", "connect_timeout", "ping_interval", "ping_timeout"}
    bad = set(t) - known
    if bad:
        raise src.error(f"peer.{sorted(bad)[0]}", f"unknown key (known: {', '.join(sorted(known))})")
    listen = t.get("listen", [])
    if not isinstance(listen, list) or len(listen) > 16:
        raise src.error("peer.listen", "expected a list of at most 16 \"ADDR:PORT\"")
    return PeerConfig(
        listen=tuple(_hostport(src, "peer.listen", a) for a in listen),
        connect_timeout=_num(src, "peer.connect_timeout", t.get("connect_timeout", 5.0), 0.1, 120),
        ping_interval=_num(src, "peer.ping_interval", t.get("ping_interval", 5.0), 0.1, 600),
        ping_timeout=_num(src, "peer.ping_timeout", t.get("ping_timeout", 5.0), 0.1, 600),
    )


def _peers(src: _Src, v: Any) -> tuple[PeerAddress, ...]:
    t = _table(src, "peers", v)
    out = []
    for pop, entry in t.items():
        e = _table(src, f"peers.{pop}", entry)
        bad = set(e) - {"address", "ingress"}
        if bad:
            raise src.error(f"peers.{pop}.{sorted(bad)[0]}", "unknown key (known: address, ingress)")
        addr = _hostport(src, f"peers.{pop}.address", e["address"]) if "address" in e else None
        ingress = e.get("ingress", [])
        if not isinstance(ingress, list) or len(ingress) > 16:
            raise src.error(f"peers.{pop}.ingress", "expected a list of at most 16 \"ADDR:PORT\"")
        out.append(PeerAddress(pop, addr, tuple(_hostport(src, f"peers.{pop}.ingress", a) for a in ingress)))
    return tuple(out)


def load(path: str | Path, pop: str) -> EdgeConfig:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror}") from None
    return parse(text, pop, str(p))
