"""The DNS server's configuration: its schema, defaults and validation.

Owns: the keys of `gslb dns --config FILE` (docs/configuration.md, "DNS
server"), loaded into frozen dataclasses by `load_dns_config`. Reading the
file, finding lines, the error format (``file:line: key: what is wrong``),
unknown keys and relative paths are the shared TOML layer's (`plumbing.toml`).
It hands plain, frozen data down; it must not open sockets, read databases
or start anything.
"""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from plumbing.toml import MISSING, ConfigError, Table, TomlDoc

from plumbing.addr import split_host_port

__all__ = [
    "ConfigError",
    "SOA", "NameServer", "Zone", "Pop", "GslbName", "Policy", "Routing", "HealthSettings",
    "StaticRecord", "ServerSettings", "CookieSettings", "ChaosSettings", "DnsConfig", "load_dns_config", "parse_listen",
    "DnssecKey", "DnssecSettings", "DNSSEC_ROLES", "RrlSettings", "AcmeSettings",
    "RECORD_TYPES", "FALLBACKS", "HEALTH_CHECKS",
]


RECORD_TYPES = ("A", "AAAA", "CNAME", "TXT", "MX", "CAA")
FALLBACKS = ("nearest", "all", "none")
_POP_ID = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


@dataclass(frozen=True)
class SOA:
    mname: str
    rname: str
    serial: int
    refresh: int
    retry: int
    expire: int
    minimum: int
    ttl: int


@dataclass(frozen=True)
class NameServer:
    name: str
    ipv4: tuple[str, ...]
    ipv6: tuple[str, ...]


@dataclass(frozen=True)
class Zone:
    name: str  # absolute, lowercase, trailing dot: "lab.test."
    soa: SOA
    ns: tuple[NameServer, ...]
    ns_ttl: int


@dataclass(frozen=True)
class Pop:
    id: str
    city: str
    latitude: float
    longitude: float
    ipv4: tuple[str, ...]
    ipv6: tuple[str, ...]


@dataclass(frozen=True)
class GslbName:
    name: str  # absolute owner; may start with "*." ("*.app.lab.test.")
    pin: str | None = None


@dataclass(frozen=True)
class Policy:
    addresses_per_answer: int = 2
    ttl: int = 30
    fallback: str = "nearest"


@dataclass(frozen=True)
class Routing:
    default_order: tuple[str, ...]
    country: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    continent: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))


HEALTH_CHECKS = ("http", "tcp", "http+tcp")


@dataclass(frozen=True)
class HealthSettings:
    """Health checking of PoP addresses (dns/health.py); every key in docs/configuration.md."""
    enabled: bool = False
    interval: float = 1.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3
    timeout_fall: int = 0            # failed checks, timeouts included, before down; 0: 2 x fall
    port: int = 80                   # HTTP port of the edge's health endpoint
    path: str = "/healthz"
    check: str = "http+tcp"          # http | tcp | http+tcp
    tcp_port: int = 443              # TCP connect probe
    changing_ttl: int = 5            # TTL while a PoP's health is changing
    allow_remote: bool = False       # probe non-loopback addresses from the root netns
    control_socket: str | None = None  # None: /run/gslb-dns/<first listen>.sock
    drained: tuple[str, ...] = ()


@dataclass(frozen=True)
class StaticRecord:
    name: str
    type: str
    value: str
    ttl: int


@dataclass(frozen=True)
class ServerSettings:
    listen: tuple[tuple[str, int], ...] = (("127.0.0.1", 53), ("::1", 53))
    workers: int = 1
    geoip_db: str | None = None
    udp_payload_max: int = 1232
    tcp_idle_timeout: float = 10.0
    tcp_max_connections: int = 512
    nsid: bytes | None = None        # RFC 5001 payload; None: no NSID in answers
    metrics_listen: tuple[str, int] | None = None   # /metrics (docs/metrics.md); None: off
    user: str | None = None          # USER[:GROUP] to become after binding (plumbing.privileges)


@dataclass(frozen=True)
class CookieSettings:
    """DNS cookies (RFC 7873, server cookies RFC 9018); every key in docs/configuration.md."""
    enabled: bool = True
    secret: bytes | None = field(default=None, repr=False)   # signs; None: random per start
    secrets_accepted: tuple[bytes, ...] = field(default=(), repr=False)  # also accepted (rollover)
    require: bool = False            # BADCOOKIE over UDP without a valid server cookie


@dataclass(frozen=True)
class ChaosSettings:
    """TXT CH answers (dns/chaos.py); None: REFUSED like any other CHAOS name."""
    version: str | None = None       # version.bind, version.server
    hostname: str | None = None      # hostname.bind
    id: str | None = None            # id.server


@dataclass(frozen=True)
class RrlSettings:
    """Response rate limiting (dns/rrl.py); every key in docs/configuration.md, `[rrl]`."""
    enabled: bool = False
    responses_per_second: int = 20          # per netblock and name, for the whole server
    errors_per_second: int | None = None    # None: responses_per_second; 0: not limited
    nxdomains_per_second: int | None = None  # None: responses_per_second; 0: not limited
    window: int = 15                         # seconds
    slip: int = 2                            # 0: drop all limited replies; 1: slip all
    ipv4_prefix_length: int = 24
    ipv6_prefix_length: int = 56
    table_size: int = 20_000                 # buckets per worker process
    exempt: tuple[str, ...] = ()             # CIDRs never limited


@dataclass(frozen=True)
class AcmeSettings:
    """DNS-01 TXT records from the registry (dns/acme.py); every key in docs/configuration.md, `[acme]`."""
    enabled: bool = False
    endpoints: tuple[str, ...] = ()          # etcd client URLs, e.g. http://10.77.0.21:2379
    prefix: str = "/gslb/"                   # the registry prefix (the edge's [registry].prefix)
    ttl: int = 10                            # TTL of the TXT answers
    poll_interval: float = 1.0               # seconds between two reads of the registry
    request_timeout: float = 2.0             # one HTTP request to one member


DNSSEC_ROLES = ("csk", "ksk", "zsk")


@dataclass(frozen=True)
class DnssecKey:
    """One `[[dnssec.keys]]` entry: a key file and its role (dns/dnssec/keys.py)."""
    file: str
    role: str = "csk"                # csk | ksk | zsk
    active: bool = True              # false: published in DNSKEY only (pre-publish, post-roll)
    line: int | None = None          # where it is configured, for errors about the file


@dataclass(frozen=True)
class DnssecSettings:
    """Online signing (docs/dnssec.md); off while `keys` is empty."""
    keys: tuple[DnssecKey, ...] = ()
    dnskey_ttl: int = 3600
    signature_validity: int = 7 * 86400
    signature_refresh: int = 86400
    signature_jitter: int = 12 * 3600
    inception_offset: int = 3600


@dataclass(frozen=True)
class DnsConfig:
    path: str
    server: ServerSettings
    zone: Zone
    pops: tuple[Pop, ...]
    gslb: tuple[GslbName, ...]
    policy: Policy
    routing: Routing
    records: tuple[StaticRecord, ...]
    health: HealthSettings = HealthSettings()
    cookies: CookieSettings = CookieSettings()
    chaos: ChaosSettings = ChaosSettings()
    dnssec: DnssecSettings = DnssecSettings()
    rrl: RrlSettings = RrlSettings()
    acme: AcmeSettings = AcmeSettings()

    def pop(self, pop_id: str) -> Pop:
        for p in self.pops:
            if p.id == pop_id:
                return p
        raise KeyError(pop_id)


def _user(sv: Any) -> str | None:
    """[server].user: resolved now, so a user this host lacks is a config error with its line."""
    from plumbing.privileges import PrivilegeError, resolve_user
    spec = sv.str("user", None)
    if spec is None:
        return None
    try:
        resolve_user(spec)
    except PrivilegeError as exc:
        raise sv.error("user", str(exc).replace("--user ", "")) from None
    return spec


def parse_listen(value: str) -> tuple[str, int]:
    """'127.0.0.1:53', '[::1]:5300' or ':53' (all IPv4) -> (host, port)."""
    host, port = split_host_port(value)
    if not value.strip().startswith("["):
        host = host or "0.0.0.0"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address") from None
    return host, port


def _metrics_listen(sv: Any) -> tuple[str, int] | None:
    """[server] metrics_listen = "ADDR:PORT": where /metrics is served (docs/metrics.md); absent: off."""
    v = sv.str("metrics_listen", None)
    if v is None:
        return None
    try:
        return parse_listen(v)
    except ValueError as exc:
        raise sv.error("metrics_listen", f"{v!r} is not a valid ADDR:PORT: {exc}") from None


def _ipv4(s: str) -> str:
    return str(ipaddress.IPv4Address(s))


def _ipv6(s: str) -> str:
    return str(ipaddress.IPv6Address(s))


def _absolute(name: str, zone: str, t: Table, key: str) -> str:
    """Names in the config are relative to the zone, '@' is the apex, a trailing dot is absolute."""
    n = name.strip().lower()
    if n == "@":
        out = zone
    elif n.endswith("."):
        out = n
    else:
        out = f"{n}.{zone}"
    labels = out[:-1].split(".") if out != "." else []
    for i, label in enumerate(labels):
        if label == "*" and i == 0:
            continue
        if not _LABEL.match(label):
            raise t.error(key, f"{name!r} is not a valid domain name (label {label!r})")
    if len(out) > 254:
        raise t.error(key, f"{name!r} is longer than 253 characters")
    return out


def _in_zone(name: str, zone: str) -> bool:
    return name == zone or name.endswith("." + zone)


def load_dns_config(path: str) -> DnsConfig:
    """Read and validate a DNS configuration; raises ConfigError."""
    doc = TomlDoc(path)
    root = doc.root()

    # [zone]
    zt = root.table("zone", required=True)
    zname = zt.str("name").strip().lower().rstrip(".") + "."
    if zname == ".":
        raise zt.error("name", "the zone cannot be the root")
    _absolute(zname, zname, zt, "name")
    st = zt.table("soa")
    soa = SOA(
        mname=_absolute(st.str("mname", f"ns1.{zname}"), zname, st, "mname"),
        rname=_absolute(st.str("rname", f"hostmaster.{zname}"), zname, st, "rname"),
        serial=st.int("serial", 1, min=0, max=2**32 - 1),
        refresh=st.int("refresh", 3600, min=0, max=2**31 - 1),
        retry=st.int("retry", 600, min=0, max=2**31 - 1),
        expire=st.int("expire", 1209600, min=0, max=2**31 - 1),
        minimum=st.int("minimum", 30, min=0, max=86400),
        ttl=st.int("ttl", 3600, min=0, max=2**31 - 1),
    )
    st.reject_unknown()
    servers = []
    for nt in zt.array("ns", required=True):
        name = _absolute(nt.str("name"), zname, nt, "name")
        v4 = nt.str_list("ipv4", (), item=_ipv4, what="IPv4 address")
        v6 = nt.str_list("ipv6", (), item=_ipv6, what="IPv6 address")
        if _in_zone(name, zname) and not (v4 or v6):
            raise nt.error("ipv4", f"name server {name} is inside the zone and needs glue (ipv4 or ipv6)")
        nt.reject_unknown()
        servers.append(NameServer(name, v4, v6))
    if not servers:
        raise zt.error("ns", "at least one [[zone.ns]] is required")
    ns_ttl = zt.int("ns_ttl", 3600, min=0, max=2**31 - 1)
    zt.reject_unknown(["soa", "ns"])
    zone = Zone(zname, soa, tuple(servers), ns_ttl)

    # [[pop]]
    pops: list[Pop] = []
    for pt in root.array("pop", required=True):
        pid = pt.str("id")
        if not _POP_ID.match(pid):
            raise pt.error("id", f"{pid!r}: PoP ids are lowercase letters, digits and '-' (e.g. us-cal-1)")
        if any(p.id == pid for p in pops):
            raise pt.error("id", f"duplicate PoP id {pid!r}")
        pop = Pop(
            id=pid,
            city=pt.str("city", pid),
            latitude=pt.float("lat", min=-90, max=90),
            longitude=pt.float("lon", min=-180, max=180),
            ipv4=pt.str_list("ipv4", (), item=_ipv4, what="IPv4 address"),
            ipv6=pt.str_list("ipv6", (), item=_ipv6, what="IPv6 address"),
        )
        if not pop.ipv4 and not pop.ipv6:
            raise pt.error("ipv4", f"PoP {pid} has no addresses")
        pt.reject_unknown()
        pops.append(pop)
    if not pops:
        raise root.error("pop", "at least one [[pop]] is required")
    pop_ids = [p.id for p in pops]

    def pop_list(t: Table, key: str, default: Any = MISSING) -> tuple[str, ...]:
        ids = t.str_list(key, default)
        for i in ids:
            if i not in pop_ids:
                raise t.error(key, f"unknown PoP {i!r} (known: {', '.join(pop_ids)})")
        if len(set(ids)) != len(ids):
            raise t.error(key, "a PoP is listed twice")
        return tuple(ids)

    # [[gslb]]
    names: list[GslbName] = []
    for gt in root.array("gslb", required=True):
        owner = _absolute(gt.str("name"), zname, gt, "name")
        if not _in_zone(owner, zname) or owner == zname:
            raise gt.error("name", f"{owner} is not below the zone {zname}")
        if "*" in owner[1:]:
            raise gt.error("name", "a wildcard is only allowed as the first label ('*.app')")
        pin = gt.str("pin", None)
        if pin is not None and pin not in pop_ids:
            raise gt.error("pin", f"unknown PoP {pin!r} (known: {', '.join(pop_ids)})")
        per_pop = gt.bool("per_pop", False)
        gt.reject_unknown()
        names.append(GslbName(owner, pin))
        if per_pop:
            base = owner[2:] if owner.startswith("*.") else owner
            names.extend(GslbName(f"{p}.{base}", p) for p in pop_ids)
    seen_names: set[str] = set()
    for g in names:
        if g.name in seen_names:
            raise root.error("gslb", f"GSLB name {g.name} is defined twice")
        seen_names.add(g.name)

    # [policy]
    pt = root.table("policy")
    policy = Policy(
        addresses_per_answer=pt.int("addresses_per_answer", 2, min=1, max=16),
        ttl=pt.int("ttl", 30, min=0, max=86400),
        fallback=pt.str("fallback", "nearest"),
    )
    if policy.fallback not in FALLBACKS:
        raise pt.error("fallback", f"{policy.fallback!r}: one of {', '.join(FALLBACKS)}")
    pt.reject_unknown()

    # [routing]
    rt = root.table("routing")
    default_order = pop_list(rt, "default_order", tuple(pop_ids))
    default_order = default_order + tuple(p for p in pop_ids if p not in default_order)
    country = {}
    ct = rt.table("country")
    for code in list(ct.data):
        if not re.match(r"^[A-Z]{2}$", code):
            raise ct.error(code, "country codes are ISO 3166 alpha-2 in capitals, e.g. JP")
        country[code] = pop_list(ct, code)
    continent = {}
    cn = rt.table("continent")
    for code in list(cn.data):
        if code not in ("AF", "AN", "AS", "EU", "NA", "OC", "SA"):
            raise cn.error(code, "continent codes are AF AN AS EU NA OC SA")
        continent[code] = pop_list(cn, code)
    rt.reject_unknown(["country", "continent"])
    routing = Routing(default_order, MappingProxyType(country), MappingProxyType(continent))

    # [health]
    ht = root.table("health")
    health = HealthSettings(
        enabled=ht.bool("enabled", False),
        interval=ht.float("interval", 1.0, min=0.05, max=3600),
        timeout=ht.float("timeout", 1.0, min=0.05, max=60),
        rise=ht.int("rise", 2, min=1, max=100),
        fall=ht.int("fall", 3, min=1, max=100),
        timeout_fall=ht.int("timeout_fall", 0, min=0, max=200),
        port=ht.int("port", 80, min=1, max=65535),
        path=ht.str("path", "/healthz"),
        check=ht.str("check", "http+tcp"),
        tcp_port=ht.int("tcp_port", 443, min=1, max=65535),
        changing_ttl=ht.int("changing_ttl", 5, min=0, max=86400),
        allow_remote=ht.bool("allow_remote", False),
        control_socket=ht.path("control_socket", None),
        drained=pop_list(ht, "drained", ()),
    )
    if health.timeout_fall and health.timeout_fall < health.fall:
        raise ht.error("timeout_fall", f"{health.timeout_fall} is below fall ({health.fall}): "
                       "timeouts alone must not withdraw an address sooner than refusals")
    if health.check not in HEALTH_CHECKS:
        raise ht.error("check", f"{health.check!r}: one of {', '.join(HEALTH_CHECKS)}")
    if not health.path.startswith("/") or any(c in health.path for c in " \r\n"):
        raise ht.error("path", f"{health.path!r}: an HTTP path starting with '/', without spaces")
    ht.reject_unknown()

    # [[record]]
    records: list[StaticRecord] = []
    for rt_ in root.array("record"):
        owner = _absolute(rt_.str("name"), zname, rt_, "name")
        if not _in_zone(owner, zname):
            raise rt_.error("name", f"{owner} is outside the zone {zname}")
        rtype = rt_.str("type").upper()
        if rtype not in RECORD_TYPES:
            raise rt_.error("type", f"{rtype!r}: supported types are {', '.join(RECORD_TYPES)}")
        value = rt_.str("value")
        _check_rdata(rt_, rtype, value)
        ttl = rt_.int("ttl", 300, min=0, max=2**31 - 1)
        rt_.reject_unknown()
        if owner in seen_names:
            raise rt_.error("name", f"{owner} is a GSLB name; it cannot also have static records")
        # RFC 1034 3.6.2: a CNAME cannot share its owner name with any other data.
        if any(r.name == owner and "CNAME" in (r.type, rtype) for r in records):
            raise rt_.error("name", f"{owner}: a CNAME cannot share its name with other data (RFC 1034 3.6.2)")
        if rtype == "CNAME":
            value = _absolute(value, zname, rt_, "value")
        records.append(StaticRecord(owner, rtype, value, ttl))

    # [server]
    sv = root.table("server")
    listen = sv.str_list("listen", ("127.0.0.1:53", "[::1]:53"), item=parse_listen, what="ADDR:PORT")
    server = ServerSettings(
        listen=tuple(listen),
        workers=sv.int("workers", 1, min=1, max=64),
        geoip_db=sv.path("geoip_db", None),
        udp_payload_max=sv.int("udp_payload_max", 1232, min=512, max=65535),
        tcp_idle_timeout=sv.float("tcp_idle_timeout", 10.0, min=0.1, max=3600),
        tcp_max_connections=sv.int("tcp_max_connections", 512, min=1, max=65536),
        nsid=_nsid(sv),
        metrics_listen=_metrics_listen(sv),
        user=_user(sv),
    )
    sv.reject_unknown()

    cookies = _cookies(root.table("cookies"))
    chaos = _chaos(root.table("chaos"))
    dnssec = _load_dnssec(root)
    rrl = _rrl(root.table("rrl"))
    acme = _acme(root.table("acme"))

    root.reject_unknown(["zone", "pop", "gslb", "policy", "routing", "health", "record", "server",
                         "cookies", "chaos", "dnssec", "rrl", "acme"])
    return DnsConfig(
        path=os.path.abspath(path), server=server, zone=zone, pops=tuple(pops), gslb=tuple(names),
        policy=policy, routing=routing, records=tuple(records), health=health,
        cookies=cookies, chaos=chaos, dnssec=dnssec, rrl=rrl, acme=acme,
    )


_HEX = re.compile(r"^[0-9a-fA-F]*$")


def _nsid(t: Table) -> bytes | None:
    """[server] nsid: text, or hexadecimal after "0x" (as Knot writes it); 1-128 octets."""
    value = t.str("nsid", None)
    if value is None:
        return None
    if value[:2].lower() == "0x":
        digits = value[2:]
        if not digits or len(digits) % 2 or not _HEX.match(digits):
            raise t.error("nsid", f"{value!r}: after 0x, an even number of hexadecimal digits")
        raw = bytes.fromhex(digits)
    else:
        try:
            raw = value.encode("ascii")
        except UnicodeEncodeError:
            raise t.error("nsid", f"{value!r}: ASCII text, or hexadecimal after 0x") from None
    if len(raw) > 128:
        raise t.error("nsid", f"{len(raw)} octets; at most 128")
    return raw


def _secret(t: Table, key: str, value: Any) -> bytes:
    # The value is a secret: the message never repeats it.
    if not isinstance(value, str) or len(value) != 32 or not _HEX.match(value):
        raise t.error(key, "a cookie secret is 32 hexadecimal digits (16 bytes, e.g. from "
                           "`openssl rand -hex 16`)")
    return bytes.fromhex(value)


def _cookies(t: Table) -> CookieSettings:
    enabled = t.bool("enabled", True)
    secret = t.value("secret", None)
    secret = None if secret is None else _secret(t, "secret", secret)
    accepted = t.value("secrets_accepted", [])
    if not isinstance(accepted, list):
        raise t.error("secrets_accepted", "expected a list of secrets (32 hexadecimal digits each)")
    if len(accepted) > 8:
        raise t.error("secrets_accepted", f"{len(accepted)} secrets; at most 8")
    extra = tuple(_secret(t, "secrets_accepted", v) for v in accepted)
    if extra and secret is None:
        raise t.error("secrets_accepted", "needs `secret` (the one that signs) as well")
    require = t.bool("require", False)
    if require and not enabled:
        raise t.error("require", "needs cookies enabled (enabled = true)")
    t.reject_unknown()
    extra = tuple(s for i, s in enumerate(extra) if s != secret and s not in extra[:i])
    return CookieSettings(enabled=enabled, secret=secret, secrets_accepted=extra, require=require)


def _cidr(value: str) -> str:
    return str(ipaddress.ip_network(value, strict=True))


def _rrl(t: Table) -> RrlSettings:
    """[rrl]: the limits of dns/rrl.py (BIND's `rate-limit` ranges where it has them)."""
    rrl = RrlSettings(
        enabled=t.bool("enabled", False),
        responses_per_second=t.int("responses_per_second", 20, min=1, max=1_000_000),
        errors_per_second=t.int("errors_per_second", None, min=0, max=1_000_000),
        nxdomains_per_second=t.int("nxdomains_per_second", None, min=0, max=1_000_000),
        window=t.int("window", 15, min=1, max=3600),
        slip=t.int("slip", 2, min=0, max=10),
        ipv4_prefix_length=t.int("ipv4_prefix_length", 24, min=8, max=32),
        ipv6_prefix_length=t.int("ipv6_prefix_length", 56, min=16, max=128),
        table_size=t.int("table_size", 20_000, min=100, max=10_000_000),
        exempt=t.str_list("exempt", (), item=_cidr, what="CIDR (address/length, host bits zero)"),
    )
    if len(rrl.exempt) > 1000:
        raise t.error("exempt", f"{len(rrl.exempt)} networks; at most 1000")
    t.reject_unknown()
    return rrl


_ENDPOINT = re.compile(r"^https?://[A-Za-z0-9.:\[\]-]+(:[0-9]{1,5})?/?$")
_PREFIX = re.compile(r"^/([A-Za-z0-9_.-]+/)*$")


def _endpoint(value: str) -> str:
    if not _ENDPOINT.match(value):
        raise ValueError("not an http://host:port URL")
    return value.rstrip("/")


def _acme(t: Table) -> AcmeSettings:
    """[acme]: where the DNS-01 TXT records come from (dns/acme.py)."""
    acme = AcmeSettings(
        enabled=t.bool("enabled", False),
        endpoints=tuple(t.str_list("endpoints", (), item=_endpoint, what="http://host:port URL")),
        prefix=t.str("prefix", "/gslb/"),
        ttl=t.int("ttl", 10, min=1, max=300),
        poll_interval=t.float("poll_interval", 1.0, min=0.1, max=60),
        request_timeout=t.float("request_timeout", 2.0, min=0.1, max=60),
    )
    if len(acme.prefix) > 128 or not _PREFIX.match(acme.prefix):
        raise t.error("prefix", f"{acme.prefix!r}: must look like /a/b/ (the edge's [registry].prefix)")
    if acme.enabled and not acme.endpoints:
        raise t.error("endpoints", "needs at least one etcd client URL when enabled")
    if len(acme.endpoints) > 16:
        raise t.error("endpoints", f"{len(acme.endpoints)} URLs; at most 16")
    t.reject_unknown()
    return acme


def _chaos(t: Table) -> ChaosSettings:
    values = {}
    for key in ("version", "hostname", "id"):
        v = t.str(key, None)
        if v is not None and (len(v.encode()) > 255 or not v.isprintable()):
            raise t.error(key, "printable text of at most 255 bytes")
        values[key] = v
    t.reject_unknown()
    return ChaosSettings(**values)


def _load_dnssec(root: Table) -> DnssecSettings:
    """[dnssec] and its [[dnssec.keys]] (docs/configuration.md, docs/dnssec.md)."""
    dt = root.table("dnssec")
    keys = []
    for kt in dt.array("keys"):
        role = kt.str("role", "csk").lower()
        if role not in DNSSEC_ROLES:
            raise kt.error("role", f"{role!r}: roles are {', '.join(DNSSEC_ROLES)}")
        keys.append(DnssecKey(file=kt.path("file", MISSING), role=role,
                              active=kt.bool("active", True),
                              line=kt.line("file")))
        kt.reject_unknown()
    files = [k.file for k in keys]
    if len(set(files)) != len(files):
        raise dt.error("keys", "the same key file is listed twice")
    d = DnssecSettings(
        keys=tuple(keys),
        dnskey_ttl=dt.int("dnskey_ttl", 3600, min=0, max=86400 * 7),
        signature_validity=dt.int("signature_validity", 7 * 86400, min=3 * 3600, max=365 * 86400),
        signature_refresh=dt.int("signature_refresh", 86400, min=3600, max=180 * 86400),
        signature_jitter=dt.int("signature_jitter", 12 * 3600, min=0, max=30 * 86400),
        inception_offset=dt.int("inception_offset", 3600, min=0, max=86400),
    )
    dt.reject_unknown(["keys"])
    if keys:
        if not any(k.active and k.role in ("csk", "ksk") for k in keys):
            raise dt.error("keys", "no active csk or ksk: nothing would sign the DNSKEY RRset")
        if not any(k.active and k.role in ("csk", "zsk") for k in keys):
            raise dt.error("keys", "no active csk or zsk: nothing would sign the zone's records")
        if d.signature_validity <= d.signature_refresh + d.signature_jitter:
            raise dt.error("signature_validity", "must be longer than signature_refresh + "
                           "signature_jitter, or signatures expire before they are replaced")
    return d


def _check_rdata(t: Table, rtype: str, value: str) -> None:
    try:
        if rtype == "A":
            ipaddress.IPv4Address(value)
        elif rtype == "AAAA":
            ipaddress.IPv6Address(value)
        elif rtype == "MX":
            pref, _, host = value.partition(" ")
            if not pref.isdigit() or int(pref) > 65535 or not host.strip():
                raise ValueError("expected 'PREFERENCE HOST', e.g. '10 mail.example.'")
        elif rtype == "CAA":
            parts = value.split(" ", 2)
            if len(parts) != 3 or not parts[0].isdigit() or int(parts[0]) > 255 or not parts[1].isalnum():
                raise ValueError("expected 'FLAGS TAG \"VALUE\"', e.g. '0 issue \"ca.example\"'")
        elif rtype == "TXT":
            if len(value.encode()) > 4000:
                raise ValueError("longer than 4000 bytes")
    except ValueError as exc:
        raise t.error("value", f"{value!r} is not valid {rtype} data: {exc}") from None
