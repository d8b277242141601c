"""The lab plan: which hosts exist, where they are, and every address they hold.

Owns the schema of the lab's TOML file (`examples/lab.toml`) and its loading
into frozen dataclasses. It does no I/O besides reading that one file, and it
knows nothing about namespaces or processes (`netns.topology`, `netns.lab`).

Errors name the file, the line and the key ("lab.toml:42: pop[3].ipv4: ..."),
like the project's other loader (`gslb/config.py`): tomllib gives no positions
for values, so the line is found by scanning the text for the table and key.
"""
from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netns.errors import PlanError

ROLES = ("dns", "pop", "client", "resolver", "agent", "registry", "bridge")
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


class _Ctx:
    """Maps (table, index, key) to a line of the source text for error messages."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()

    def line_of(self, table: str | None, index: int | None, key: str | None) -> int:
        start = 0
        if table is not None:
            header = re.compile(r"^\s*\[\[\s*%s\s*\]\]" % re.escape(table)) if index is not None \
                else re.compile(r"^\s*\[\s*%s\s*\]" % re.escape(table))
            seen = -1
            for i, line in enumerate(self.lines):
                if header.match(line):
                    seen += 1
                    if index is None or seen == index:
                        start = i
                        break
            else:
                return 1
        if key is not None:
            keyre = re.compile(r"^\s*%s\s*=" % re.escape(key))
            for i in range(start, len(self.lines)):
                if i > start and re.match(r"^\s*\[", self.lines[i]):
                    break
                if keyre.match(self.lines[i]):
                    return i + 1
        return start + 1

    def error(self, table: str | None, index: int | None, key: str | None, what: str) -> PlanError:
        line = self.line_of(table, index, key)
        where = table or ""
        if index is not None:
            where += f"[{index}]"
        if key:
            where = f"{where}.{key}" if where else key
        return PlanError(f"{self.path}:{line}: {where}: {what}")


def _get(ctx: _Ctx, d: dict, table: str | None, index: int | None, key: str, kind: type | tuple,
         default: Any = ..., ) -> Any:
    if key not in d:
        if default is ...:
            raise ctx.error(table, index, key, "missing (required)")
        return default
    value = d[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise ctx.error(table, index, key, f"expected {kinds[0].__name__}, got a boolean")
    if not isinstance(value, kinds):
        raise ctx.error(table, index, key, f"expected {kinds[0].__name__}, got {type(value).__name__}")
    return value


def _addrs(ctx: _Ctx, d: dict, table: str, index: int | None, key: str, version: int,
           net: ipaddress._BaseNetwork, count: int | None = None) -> tuple[str, ...]:
    raw = _get(ctx, d, table, index, key, (list, str), [])
    items = [raw] if isinstance(raw, str) else raw
    out = []
    for item in items:
        if not isinstance(item, str):
            raise ctx.error(table, index, key, f"expected address strings, got {item!r}")
        try:
            addr = ipaddress.ip_address(item)
        except ValueError:
            raise ctx.error(table, index, key, f"{item!r} is not an IP address") from None
        if addr.version != version:
            raise ctx.error(table, index, key, f"{item} is not an IPv{version} address")
        if addr not in net:
            raise ctx.error(table, index, key, f"{item} is outside the lab's {net}; "
                            "use only the lab's own ranges")
        out.append(str(addr))
    if count is not None and len(out) != count:
        raise ctx.error(table, index, key, f"expected {count} addresses, got {len(out)}")
    return tuple(out)


def _place(ctx: _Ctx, d: dict, table: str, index: int, inherit: Place | None) -> Place:
    base = inherit or Place(None, None, None, None, None)
    lat = _get(ctx, d, table, index, "lat", (float, int), base.lat)
    lon = _get(ctx, d, table, index, "lon", (float, int), base.lon)
    if lat is not None and not -90 <= lat <= 90:
        raise ctx.error(table, index, "lat", f"{lat} is not a latitude (-90..90)")
    if lon is not None and not -180 <= lon <= 180:
        raise ctx.error(table, index, "lon", f"{lon} is not a longitude (-180..180)")
    country = _get(ctx, d, table, index, "country", str, base.country)
    if country is not None and not re.fullmatch(r"[A-Z]{2}", country):
        raise ctx.error(table, index, "country", f"{country!r} is not an ISO 3166 alpha-2 code like 'JP'")
    continent = _get(ctx, d, table, index, "continent", str, base.continent)
    if continent is not None and continent not in ("AF", "AN", "AS", "EU", "NA", "OC", "SA"):
        raise ctx.error(table, index, "continent", f"{continent!r} is not one of AF AN AS EU NA OC SA")
    return Place(
        city=_get(ctx, d, table, index, "city", str, base.city),
        country=country, continent=continent,
        lat=None if lat is None else float(lat), lon=None if lon is None else float(lon),
    )


def _pop_list(ctx: _Ctx, raw: Any, table: str, index: int | None, key: str,
              pop_ids: set[str]) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise ctx.error(table, index, key, "expected a list of PoP ids")
    unknown = [x for x in raw if x not in pop_ids]
    if unknown:
        raise ctx.error(table, index, key, f"unknown PoP id(s) {', '.join(unknown)}; "
                        f"known: {', '.join(sorted(pop_ids))}")
    return tuple(raw)


def load_plan(path: str | Path) -> LabPlan:
    """Read and validate a lab plan. Raises PlanError with "file:line: key: what"."""
    path = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PlanError(f"{path}: cannot read the lab plan: {exc.strerror}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise PlanError(f"{path}:{m.group(1) if m else 1}: not valid TOML: {exc}") from None
    return parse_plan(doc, path, text)


def parse_plan(doc: dict, path: str, text: str) -> LabPlan:
    ctx = _Ctx(path, text)
    known_top = {"lab", "routing", "host", "pop", "client", "gslb", "record"}
    for key in doc:
        if key not in known_top:
            raise ctx.error(None, None, key, f"unknown table; expected one of {', '.join(sorted(known_top))}")
    lab = _get(ctx, doc, None, None, "lab", dict)
    zone = _get(ctx, lab, "lab", None, "zone", str).rstrip(".").lower()
    v4p = _get(ctx, lab, "lab", None, "ipv4_prefix", str)
    v6p = _get(ctx, lab, "lab", None, "ipv6_prefix", str)
    try:
        v4net = ipaddress.IPv4Network(v4p)
    except ValueError:
        raise ctx.error("lab", None, "ipv4_prefix", f"{v4p!r} is not an IPv4 network") from None
    try:
        v6net = ipaddress.IPv6Network(v6p)
    except ValueError:
        raise ctx.error("lab", None, "ipv6_prefix", f"{v6p!r} is not an IPv6 network") from None
    if not v4net.subnet_of(ALLOWED_V4):
        raise ctx.error("lab", None, "ipv4_prefix", f"{v4net} is outside {ALLOWED_V4} (RFC 2544), "
                        "the only IPv4 range the lab may use")
    if not v6net.subnet_of(ipaddress.IPv6Network("fc00::/7")) or v6net.prefixlen < 48:
        raise ctx.error("lab", None, "ipv6_prefix", f"{v6net} must be a ULA /48 (or longer) of the lab's own")
    if v6net.subnet_of(ipaddress.IPv6Network("fd00::/16")) and v6net.prefixlen <= 64 and \
            v6net.overlaps(ipaddress.IPv6Network("fd00::/64")):
        raise ctx.error("lab", None, "ipv6_prefix", "fd00::/64 is the machine's own network")
    ttl = _get(ctx, lab, "lab", None, "ttl", int, 30)
    cap = _get(ctx, lab, "lab", None, "resolver_cache_max_ttl", int, 30)
    if not 1 <= cap <= 30:
        raise ctx.error("lab", None, "resolver_cache_max_ttl", f"{cap}: must be 1..30 seconds")
    if not 1 <= ttl <= cap:
        raise ctx.error("lab", None, "ttl", f"{ttl}: must be 1..resolver_cache_max_ttl ({cap}) seconds")
    per_answer = _get(ctx, lab, "lab", None, "addresses_per_answer", int, 2)
    if not 1 <= per_answer <= 4:
        raise ctx.error("lab", None, "addresses_per_answer", f"{per_answer}: must be 1..4")

    names: set[str] = set()
    all_addrs: dict[str, str] = {}

    def claim(table: str, index: int, h: Host) -> None:
        if h.name in names:
            raise ctx.error(table, index, "name", f"host {h.name!r} is defined twice")
        names.add(h.name)
        for key, addrs in (("ipv4", h.ipv4), ("ipv6", h.ipv6)):
            for a in addrs:
                if a in all_addrs:
                    raise ctx.error(table, index, key, f"{a} is already used by host {all_addrs[a]}")
                all_addrs[a] = h.name

    def check_name(table: str, index: int, name: str) -> None:
        if not HOST_NAME_RE.match(name):
            raise ctx.error(table, index, "name", f"{name!r}: host names are lowercase letters, "
                            "digits and '-', starting with a letter, at most 32 characters")

    # Infrastructure hosts.
    infra: list[Host] = []
    raw_hosts = _get(ctx, doc, None, None, "host", list, [])
    for i, h in enumerate(raw_hosts):
        name = _get(ctx, h, "host", i, "name", str)
        check_name("host", i, name)
        role = _get(ctx, h, "host", i, "role", str)
        if role not in ROLES or role in ("pop", "client"):
            raise ctx.error("host", i, "role", f"{role!r}: infrastructure roles are "
                            "bridge, dns, resolver, agent, registry (PoPs and clients have tables of their own)")
        # Optional: the PoP region an infrastructure host stands in (a registry
        # member per region, so a region's loss is a member's loss). Checked
        # against the PoP ids once the PoPs are read.
        region = _get(ctx, h, "host", i, "region", str, None)
        host = Host(name=name, role=role, region=region,
                    ipv4=_addrs(ctx, h, "host", i, "ipv4", 4, v4net),
                    ipv6=_addrs(ctx, h, "host", i, "ipv6", 6, v6net))
        if not host.ipv4 or not host.ipv6:
            raise ctx.error("host", i, "ipv4" if not host.ipv4 else "ipv6",
                            "every host is dual stack: give at least one IPv4 and one IPv6 address")
        claim("host", i, host)
        infra.append(host)
    roles = [h.role for h in infra]
    for role, need in (("bridge", 1), ("resolver", 1)):
        if roles.count(role) != need:
            raise ctx.error("host", None, None, f"the lab needs exactly {need} host with role {role!r}, "
                            f"found {roles.count(role)}")
    if roles.count("dns") < 1:
        raise ctx.error("host", None, None, "the lab needs at least one host with role 'dns'")

    # PoPs.
    pops: list[Pop] = []
    pop_hosts: list[Host] = []
    for i, p in enumerate(_get(ctx, doc, None, None, "pop", list)):
        pid = _get(ctx, p, "pop", i, "id", str)
        if not re.fullmatch(r"[a-z][a-z0-9-]{0,15}", pid):
            raise ctx.error("pop", i, "id", f"{pid!r}: PoP ids are lowercase letters, digits and '-'")
        if any(x.id == pid for x in pops):
            raise ctx.error("pop", i, "id", f"PoP {pid!r} is defined twice")
        place = _place(ctx, p, "pop", i, None)
        if place.lat is None or place.lon is None or place.city is None:
            raise ctx.error("pop", i, "lat", "a PoP needs city, lat and lon")
        pop = Pop(id=pid, place=place,
                  ipv4=_addrs(ctx, p, "pop", i, "ipv4", 4, v4net, count=4),
                  ipv6=_addrs(ctx, p, "pop", i, "ipv6", 6, v6net, count=4))
        host = Host(name=f"pop-{pid}", role="pop", region=pid, ipv4=pop.ipv4, ipv6=pop.ipv6, place=place)
        check_name("pop", i, host.name)
        claim("pop", i, host)
        pops.append(pop)
        pop_hosts.append(host)
    if not pops:
        raise ctx.error(None, None, "pop", "the lab needs at least one PoP")
    pop_ids = {p.id for p in pops}
    for i, h in enumerate(infra):
        if h.region is not None and h.region not in pop_ids:
            idx = next(j for j, r in enumerate(raw_hosts) if r.get("name") == h.name)
            raise ctx.error("host", idx, "region", f"{h.region!r} is not a PoP id; "
                            f"known: {', '.join(sorted(pop_ids))}")
    registries = [h for h in infra if h.role == "registry"]
    if registries and len(registries) % 2 == 0:
        # etcd needs a majority: an even member count tolerates no more faults
        # than one member fewer, and 2 tolerate none.
        raise ctx.error("host", None, None, f"the lab's etcd needs an odd number of registry hosts "
                        f"(1, 3, 5), found {len(registries)}")

    # Clients.
    clients: list[Host] = []
    for i, c in enumerate(_get(ctx, doc, None, None, "client", list)):
        name = _get(ctx, c, "client", i, "name", str)
        check_name("client", i, name)
        region = _get(ctx, c, "client", i, "region", str)
        inherit = next((p.place for p in pops if p.id == region), None)
        place = _place(ctx, c, "client", i, inherit)
        if place.lat is None or place.lon is None or place.country is None or place.continent is None:
            raise ctx.error("client", i, "lat", "a client needs city, country, continent, lat and lon "
                            "(inherited from its PoP when region is a PoP id)")
        ipv4 = _addrs(ctx, c, "client", i, "ipv4", 4, v4net)
        ipv6 = _addrs(ctx, c, "client", i, "ipv6", 6, v6net)
        if len(ipv4) != 1 or len(ipv6) != 1:
            raise ctx.error("client", i, "ipv4", "a client has exactly one IPv4 and one IPv6 address")
        raw_nets = _get(ctx, c, "client", i, "network", list)
        nets = []
        for n in raw_nets:
            try:
                net = ipaddress.ip_network(n) if isinstance(n, str) else None
            except ValueError:
                net = None
            if net is None:
                raise ctx.error("client", i, "network", f"{n!r} is not a network in CIDR form")
            nets.append(net)
        for a in ipv4 + ipv6:
            if not any(ipaddress.ip_address(a) in n for n in nets):
                raise ctx.error("client", i, "network", f"the client's address {a} is in none of its networks; "
                                "the lab mmdb would not locate it")
        for n in nets:
            if not n.subnet_of(v4net if n.version == 4 else v6net):  # type: ignore[arg-type]
                raise ctx.error("client", i, "network", f"{n} is outside the lab's prefixes")
        host = Host(name=name, role="client", region=region, ipv4=ipv4, ipv6=ipv6, place=place,
                    networks=tuple(str(n) for n in nets))
        claim("client", i, host)
        clients.append(host)
    if not clients:
        raise ctx.error(None, None, "client", "the lab needs at least one client")

    routing = _get(ctx, doc, None, None, "routing", dict, {})
    default_order = _pop_list(ctx, routing.get("default_order", [p.id for p in pops]), "routing", None,
                              "default_order", pop_ids)
    overrides = {}
    for kind in ("country", "continent"):
        table = routing.get(kind, {})
        if not isinstance(table, dict):
            raise ctx.error("routing", None, kind, "expected a table of code -> [PoP ids]")
        overrides[kind] = {k: _pop_list(ctx, v, f"routing.{kind}", None, k, pop_ids) for k, v in table.items()}

    gslb = _get(ctx, doc, None, None, "gslb", list, [])
    records = _get(ctx, doc, None, None, "record", list, [])
    for table, items in (("gslb", gslb), ("record", records)):
        for i, item in enumerate(items):
            if not isinstance(item, dict) or "name" not in item:
                raise ctx.error(table, i, "name", "missing (required)")
    if not gslb:
        raise ctx.error(None, None, "gslb", "the lab needs at least one [[gslb]] name (e.g. '*.app')")

    bridge = [h for h in infra if h.role == "bridge"]
    others = [h for h in infra if h.role != "bridge"]
    return LabPlan(
        path=path, zone=zone, ipv4_prefix=str(v4net), ipv6_prefix=str(v6net), ttl=ttl,
        resolver_cache_max_ttl=cap, addresses_per_answer=per_answer, default_order=default_order,
        country_overrides=overrides["country"], continent_overrides=overrides["continent"],
        pops=tuple(pops), hosts=tuple(bridge + others + pop_hosts + clients),
        gslb=tuple(gslb), records=tuple(records),
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
