"""The lab plan: which hosts exist, where they are, and every address they hold.

Owns the schema of the lab's TOML file (`examples/lab.toml`) and its loading
into frozen dataclasses. It does no I/O besides reading that one file, and it
knows nothing about namespaces or processes (`netns.topology`, `netns.lab`).

Reading, line numbers, the error format ("lab.toml:42: pop[3].ipv4: ...") and
the rejection of unknown keys, in every table, are the shared TOML layer's
(`plumbing.toml`), as for every other configuration file.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plumbing.toml import Table, TomlDoc
from netns.errors import PlanError, PlanFileError

ROLES = ("dns", "pop", "client", "resolver", "agent", "registry", "bridge", "metrics", "idp")
# Namespace names are "<prefix>-<host>"; both parts stay short and shell-safe.
HOST_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,11}$")
# The only ranges the lab may use (RFC 2544 benchmarking and a ULA /48: nobody's network; the machine
# itself uses 192.0.2.0/24 and fd00::/64).
ALLOWED_V4 = ipaddress.ip_network("198.18.0.0/15")


@dataclass(frozen=True)
class Place:
    city: str | None
    country: str | None
    continent: str | None
    lat: float | None
    lon: float | None


@dataclass(frozen=True)
class Pop:
    id: str
    place: Place
    ipv4: tuple[str, ...]
    ipv6: tuple[str, ...]


@dataclass(frozen=True)
class Host:
    """One lab host: one network namespace, one veth to the bridge."""

    name: str
    role: str
    region: str | None
    ipv4: tuple[str, ...]
    ipv6: tuple[str, ...]
    place: Place | None = None
    # Client subnets the lab mmdb maps to `place` (clients only).
    networks: tuple[str, ...] = ()


@dataclass(frozen=True)
class LabPlan:
    path: str
    zone: str
    ipv4_prefix: str            # the one on-link segment, e.g. 198.18.0.0/15
    ipv6_prefix: str            # e.g. fd7a:5e1b:c00::/48
    ttl: int                    # GSLB answer TTL given to `gslb dns`
    resolver_cache_max_ttl: int
    addresses_per_answer: int
    default_order: tuple[str, ...]
    country_overrides: dict[str, tuple[str, ...]] = field(hash=False)
    continent_overrides: dict[str, tuple[str, ...]] = field(hash=False)
    pops: tuple[Pop, ...]
    hosts: tuple[Host, ...]     # every host, bridge first, in build order
    gslb: tuple[dict[str, Any], ...] = field(hash=False)
    records: tuple[dict[str, Any], ...] = field(hash=False)

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    def by_role(self, role: str) -> tuple[Host, ...]:
        return tuple(h for h in self.hosts if h.role == role)


# The keys of each table. [[gslb]] and [[record]] are copied into the lab's
# dns.toml, so theirs are the DNS configuration's (docs/configuration.md);
# their values are checked there, by `gslb dns` at start.
_KEYS = {
    "": ("lab", "routing", "host", "pop", "client", "gslb", "record"),
    "lab": ("zone", "ipv4_prefix", "ipv6_prefix", "ttl", "resolver_cache_max_ttl", "addresses_per_answer"),
    "routing": ("default_order", "country", "continent"),
    "host": ("name", "role", "region", "ipv4", "ipv6"),
    "pop": ("id", "city", "country", "continent", "lat", "lon", "ipv4", "ipv6"),
    "client": ("name", "region", "city", "country", "continent", "lat", "lon", "ipv4", "ipv6", "network"),
    "gslb": ("name", "pin", "per_pop"),
    "record": ("name", "type", "value", "ttl"),
}


def _get(t: Table, key: str, kind: type | tuple, default: Any = ...) -> Any:
    if key not in t:
        if default is ...:
            raise t.error(key, "missing (required)")
        return t.value(key, default)
    value = t.value(key)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise t.error(key, f"expected {kinds[0].__name__}, got a boolean")
    if not isinstance(value, kinds):
        raise t.error(key, f"expected {kinds[0].__name__}, got {type(value).__name__}")
    return value


def _addrs(t: Table, key: str, version: int, net: ipaddress._BaseNetwork,
           count: int | None = None) -> tuple[str, ...]:
    raw = _get(t, key, (list, str), [])
    items = [raw] if isinstance(raw, str) else raw
    out = []
    for item in items:
        if not isinstance(item, str):
            raise t.error(key, f"expected address strings, got {item!r}")
        try:
            addr = ipaddress.ip_address(item)
        except ValueError:
            raise t.error(key, f"{item!r} is not an IP address") from None
        if addr.version != version:
            raise t.error(key, f"{item} is not an IPv{version} address")
        if addr not in net:
            raise t.error(key, f"{item} is outside the lab's {net}; use only the lab's own ranges")
        out.append(str(addr))
    if count is not None and len(out) != count:
        raise t.error(key, f"expected {count} addresses, got {len(out)}")
    return tuple(out)


def _place(t: Table, inherit: Place | None) -> Place:
    base = inherit or Place(None, None, None, None, None)
    lat = _get(t, "lat", (float, int), base.lat)
    lon = _get(t, "lon", (float, int), base.lon)
    if lat is not None and not -90 <= lat <= 90:
        raise t.error("lat", f"{lat} is not a latitude (-90..90)")
    if lon is not None and not -180 <= lon <= 180:
        raise t.error("lon", f"{lon} is not a longitude (-180..180)")
    country = _get(t, "country", str, base.country)
    if country is not None and not re.fullmatch(r"[A-Z]{2}", country):
        raise t.error("country", f"{country!r} is not an ISO 3166 alpha-2 code like 'JP'")
    continent = _get(t, "continent", str, base.continent)
    if continent is not None and continent not in ("AF", "AN", "AS", "EU", "NA", "OC", "SA"):
        raise t.error("continent", f"{continent!r} is not one of AF AN AS EU NA OC SA")
    return Place(
        city=_get(t, "city", str, base.city),
        country=country, continent=continent,
        lat=None if lat is None else float(lat), lon=None if lon is None else float(lon),
    )


def _pop_list(t: Table, key: str, default: Any, pop_ids: set[str]) -> tuple[str, ...]:
    raw = t.value(key, default)
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise t.error(key, "expected a list of PoP ids")
    unknown = [x for x in raw if x not in pop_ids]
    if unknown:
        raise t.error(key, f"unknown PoP id(s) {', '.join(unknown)}; known: {', '.join(sorted(pop_ids))}")
    return tuple(raw)


def load_plan(path: str | Path) -> LabPlan:
    """Read and validate a lab plan. Raises PlanFileError with "file:line: key: what"."""
    return parse_plan(TomlDoc(path, error=PlanFileError))


def parse_plan(doc: TomlDoc) -> LabPlan:
    root = doc.root()
    root.reject_unknown(_KEYS[""])
    lab = root.table("lab", required=True)
    lab.reject_unknown(_KEYS["lab"])
    zone = _get(lab, "zone", str).rstrip(".").lower()
    v4p = _get(lab, "ipv4_prefix", str)
    v6p = _get(lab, "ipv6_prefix", str)
    try:
        v4net = ipaddress.IPv4Network(v4p)
    except ValueError:
        raise lab.error("ipv4_prefix", f"{v4p!r} is not an IPv4 network") from None
    try:
        v6net = ipaddress.IPv6Network(v6p)
    except ValueError:
        raise lab.error("ipv6_prefix", f"{v6p!r} is not an IPv6 network") from None
    if not v4net.subnet_of(ALLOWED_V4):
        raise lab.error("ipv4_prefix", f"{v4net} is outside {ALLOWED_V4} (RFC 2544), "
                        "the only IPv4 range the lab may use")
    if not v6net.subnet_of(ipaddress.IPv6Network("fc00::/7")) or v6net.prefixlen < 48:
        raise lab.error("ipv6_prefix", f"{v6net} must be a ULA /48 (or longer) of the lab's own")
    if v6net.subnet_of(ipaddress.IPv6Network("fd00::/16")) and v6net.prefixlen <= 64 and \
            v6net.overlaps(ipaddress.IPv6Network("fd00::/64")):
        raise lab.error("ipv6_prefix", "fd00::/64 is the machine's own network")
    ttl = _get(lab, "ttl", int, 30)
    cap = _get(lab, "resolver_cache_max_ttl", int, 30)
    if not 1 <= cap <= 30:
        raise lab.error("resolver_cache_max_ttl", f"{cap}: must be 1..30 seconds")
    if not 1 <= ttl <= cap:
        raise lab.error("ttl", f"{ttl}: must be 1..resolver_cache_max_ttl ({cap}) seconds")
    per_answer = _get(lab, "addresses_per_answer", int, 2)
    if not 1 <= per_answer <= 4:
        raise lab.error("addresses_per_answer", f"{per_answer}: must be 1..4")

    names: set[str] = set()
    all_addrs: dict[str, str] = {}

    def claim(t: Table, h: Host) -> None:
        if h.name in names:
            raise t.error("name", f"host {h.name!r} is defined twice")
        names.add(h.name)
        for key, addrs in (("ipv4", h.ipv4), ("ipv6", h.ipv6)):
            for a in addrs:
                if a in all_addrs:
                    raise t.error(key, f"{a} is already used by host {all_addrs[a]}")
                all_addrs[a] = h.name

    def check_name(t: Table, name: str) -> None:
        if not HOST_NAME_RE.match(name):
            raise t.error("name", f"{name!r}: host names are lowercase letters, "
                          "digits and '-', starting with a letter, at most 32 characters")

    def entries(key: str, required: bool) -> list[Table]:
        tables = root.array(key, required=required)
        for t in tables:
            t.reject_unknown(_KEYS[key])
        return tables

    # Infrastructure hosts.
    infra: list[Host] = []
    host_tables = entries("host", False)
    for t in host_tables:
        name = _get(t, "name", str)
        check_name(t, name)
        role = _get(t, "role", str)
        if role not in ROLES or role in ("pop", "client"):
            raise t.error("role", f"{role!r}: infrastructure roles are "
                          "bridge, dns, resolver, agent, registry, metrics, idp (PoPs and clients have tables of their own)")
        # Optional: the PoP region an infrastructure host stands in (a registry
        # member per region, so a region's loss is a member's loss). Checked
        # against the PoP ids once the PoPs are read.
        region = _get(t, "region", str, None)
        host = Host(name=name, role=role, region=region,
                    ipv4=_addrs(t, "ipv4", 4, v4net), ipv6=_addrs(t, "ipv6", 6, v6net))
        if not host.ipv4 or not host.ipv6:
            raise t.error("ipv4" if not host.ipv4 else "ipv6",
                          "every host is dual stack: give at least one IPv4 and one IPv6 address")
        claim(t, host)
        infra.append(host)
    hosts_t = Table(doc, {}, "host", None)   # errors about the [[host]] tables as a whole
    roles = [h.role for h in infra]
    for role, need in (("bridge", 1), ("resolver", 1)):
        if roles.count(role) != need:
            raise hosts_t.error(None, f"the lab needs exactly {need} host with role {role!r}, "
                                f"found {roles.count(role)}")
    if roles.count("dns") < 1:
        raise hosts_t.error(None, "the lab needs at least one host with role 'dns'")
    if roles.count("metrics") > 1:
        raise hosts_t.error(None, f"at most one host with role 'metrics' (Prometheus), found {roles.count('metrics')}")
    if roles.count("idp") > 1:
        raise hosts_t.error(None, f"at most one host with role 'idp' (identity providers), found {roles.count('idp')}")

    # PoPs.
    pops: list[Pop] = []
    pop_hosts: list[Host] = []
    for t in entries("pop", True):
        pid = _get(t, "id", str)
        if not re.fullmatch(r"[a-z][a-z0-9-]{0,15}", pid):
            raise t.error("id", f"{pid!r}: PoP ids are lowercase letters, digits and '-'")
        if any(x.id == pid for x in pops):
            raise t.error("id", f"PoP {pid!r} is defined twice")
        place = _place(t, None)
        if place.lat is None or place.lon is None or place.city is None:
            raise t.error("lat", "a PoP needs city, lat and lon")
        pop = Pop(id=pid, place=place,
                  ipv4=_addrs(t, "ipv4", 4, v4net, count=4), ipv6=_addrs(t, "ipv6", 6, v6net, count=4))
        host = Host(name=f"pop-{pid}", role="pop", region=pid, ipv4=pop.ipv4, ipv6=pop.ipv6, place=place)
        check_name(t, host.name)
        claim(t, host)
        pops.append(pop)
        pop_hosts.append(host)
    if not pops:
        raise root.error("pop", "the lab needs at least one PoP")
    pop_ids = {p.id for p in pops}
    for t, h in zip(host_tables, infra):
        if h.region is not None and h.region not in pop_ids:
            raise t.error("region", f"{h.region!r} is not a PoP id; known: {', '.join(sorted(pop_ids))}")
    registries = [h for h in infra if h.role == "registry"]
    if registries and len(registries) % 2 == 0:
        # etcd needs a majority: an even member count tolerates no more faults
        # than one member fewer, and 2 tolerate none.
        raise hosts_t.error(None, f"the lab's etcd needs an odd number of registry hosts "
                            f"(1, 3, 5), found {len(registries)}")

    # Clients.
    clients: list[Host] = []
    for t in entries("client", True):
        name = _get(t, "name", str)
        check_name(t, name)
        region = _get(t, "region", str)
        inherit = next((p.place for p in pops if p.id == region), None)
        place = _place(t, inherit)
        if place.lat is None or place.lon is None or place.country is None or place.continent is None:
            raise t.error("lat", "a client needs city, country, continent, lat and lon "
                          "(inherited from its PoP when region is a PoP id)")
        ipv4 = _addrs(t, "ipv4", 4, v4net)
        ipv6 = _addrs(t, "ipv6", 6, v6net)
        if len(ipv4) != 1 or len(ipv6) != 1:
            raise t.error("ipv4", "a client has exactly one IPv4 and one IPv6 address")
        nets = []
        for n in _get(t, "network", list):
            try:
                net = ipaddress.ip_network(n) if isinstance(n, str) else None
            except ValueError:
                net = None
            if net is None:
                raise t.error("network", f"{n!r} is not a network in CIDR form")
            nets.append(net)
        for a in ipv4 + ipv6:
            if not any(ipaddress.ip_address(a) in n for n in nets):
                raise t.error("network", f"the client's address {a} is in none of its networks; "
                              "the lab mmdb would not locate it")
        for n in nets:
            if not n.subnet_of(v4net if n.version == 4 else v6net):  # type: ignore[arg-type]
                raise t.error("network", f"{n} is outside the lab's prefixes")
        host = Host(name=name, role="client", region=region, ipv4=ipv4, ipv6=ipv6, place=place,
                    networks=tuple(str(n) for n in nets))
        claim(t, host)
        clients.append(host)
    if not clients:
        raise root.error("client", "the lab needs at least one client")

    routing = root.table("routing")
    routing.reject_unknown(_KEYS["routing"])
    default_order = _pop_list(routing, "default_order", [p.id for p in pops], pop_ids)
    overrides = {}
    for kind in ("country", "continent"):
        if not isinstance(routing.value(kind, {}), dict):
            raise routing.error(kind, "expected a table of code -> [PoP ids]")
        table = routing.table(kind)
        overrides[kind] = {k: _pop_list(table, k, None, pop_ids) for k in table.keys()}

    copied: dict[str, tuple[dict[str, Any], ...]] = {}
    for key in ("gslb", "record"):
        tables = entries(key, False)
        for t in tables:
            _get(t, "name", str)
        copied[key] = tuple(dict(t.data) for t in tables)
    if not copied["gslb"]:
        raise root.error("gslb", "the lab needs at least one [[gslb]] name (e.g. '*.app')")

    bridge = [h for h in infra if h.role == "bridge"]
    others = [h for h in infra if h.role != "bridge"]
    return LabPlan(
        path=doc.path, zone=zone, ipv4_prefix=str(v4net), ipv6_prefix=str(v6net), ttl=ttl,
        resolver_cache_max_ttl=cap, addresses_per_answer=per_answer, default_order=default_order,
        country_overrides=overrides["country"], continent_overrides=overrides["continent"],
        pops=tuple(pops), hosts=tuple(bridge + others + pop_hosts + clients),
        gslb=copied["gslb"], records=copied["record"],
    )


def check_prefix(prefix: str) -> str:
    """A lab prefix: short, so `<prefix>-<host>` stays a valid, readable namespace name."""
    if not PREFIX_RE.match(prefix):
        raise PlanError(f"lab prefix {prefix!r}: use 1-12 lowercase letters or digits, starting with a "
                        "letter (e.g. 'gslb', 'gslbt')")
    return prefix


def default_plan_path() -> Path:
    """examples/lab.toml next to the package (the source tree or an editable install)."""
    return Path(__file__).resolve().parent.parent / "examples" / "lab.toml"
