"""gdnsd 3.x configuration generated from our DNS configuration (the bench's DNS peer).

Owns: turning a `DnsConfig` (plus the mmdb the bench built) into the files
gdnsd needs (``config`` and ``zones/<zone>``), so gdnsd serves the same zone,
the same PoPs and the same GeoIP2 database as `gslb dns`, and ranks PoPs the
way we do. Pure functions over strings: no processes, no sockets. It must not
touch `dns/` internals (only the frozen config from `dns.config`).

How our configuration maps onto gdnsd (gdnsd-plugin-geoip(8),
gdnsd-plugin-weighted(8), gdnsd.zonefile(5)):

- PoPs -> the geoip map's ``datacenters`` (in ``routing.default_order``, which
  is gdnsd's fallback order for clients it cannot place, as ours is) with
  ``auto_dc_coords`` = the PoPs' coordinates: "city auto mode", ranking by
  distance like `geo.Router`. ``auto_dc_limit`` = every PoP (our ranking
  always holds every PoP).
- ``routing.continent`` -> ``map => { XX => [...] }``; ``routing.country`` ->
  ``map => { <continent> => { CC => [...] } }``, with the continent of each
  country read from the mmdb itself (gdnsd's map is continent-first). Our
  override lists are completed with the remaining PoPs by distance; gdnsd's
  manual lists are fixed, so they are completed in default order. With every
  PoP up only the first PoP is answered, where both agree.
- ``policy.addresses_per_answer`` (N) -> each PoP's addresses become a
  ``weighted`` resource in grouped-single mode: groups of N addresses with
  equal weights, one group chosen per answer, all its addresses returned.
  That answers N addresses of the nearest PoP like us, but rotates among
  fixed groups ({1,2}, {3,4}) where we rotate among orders of all of them.
- GSLB names -> ``DYNA geoip!edge`` with TTL ``T/T`` (fixed TTL, gdnsd would
  otherwise lower it by health timing); a pinned name -> ``geoip!edge/<pop>``
  (gdnsd's per-datacenter form; it does not fall back along the ranking when
  that PoP is down, we do: no difference while every PoP is up).
- Health: no monitoring on either side in the bench (``service_types`` is
  the built-in ``up``).
- Static records, SOA and NS (with glue) as ordinary zone-file records; CAA
  in RFC 3597 generic form (gdnsd has no CAA parser).
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from dns.config import DnsConfig

__all__ = ["GdnsdFiles", "gdnsd_files", "country_continents_from_mmdb", "caa_generic"]

RESOURCE = "edge"
MAP = "pops"


@dataclass(frozen=True)
class GdnsdFiles:
    config: str          # text of <confdir>/config
    zone_name: str       # file name under <confdir>/zones/ ("lab.test")
    zone: str            # text of the zone file
    notes: tuple[str, ...]  # what could not be mapped exactly, for the report


def _q(s: str) -> str:
    """vscf string: quote anything that is not a plain token."""
    if s and all(c.isalnum() or c in "-_." for c in s):
        return s
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dclist(ids: Iterable[str]) -> str:
    return "[ " + ", ".join(_q(i) for i in ids) + " ]"


def _complete(first: Iterable[str], order: Iterable[str]) -> list[str]:
    out = list(first)
    out += [p for p in order if p not in out]
    return out


def _groups(addrs: tuple[str, ...], n: int) -> list[tuple[str, ...]]:
    """Consecutive groups of n addresses; a short last group borrows from the start."""
    if not addrs:
        return []
    if len(addrs) <= n:
        return [addrs]
    groups = []
    for i in range(0, len(addrs), n):
        g = addrs[i:i + n]
        if len(g) < n:
            g = g + tuple(a for a in addrs if a not in g)[: n - len(g)]
        groups.append(g)
    return groups


def _weighted_family(addrs: tuple[str, ...], n: int, indent: str) -> str:
    lines = []
    for gi, group in enumerate(_groups(addrs, n)):
        lines.append(f"{indent}g{gi} => {{")
        for ai, a in enumerate(group):
            lines.append(f"{indent}  a{ai} => [ {a}, 1 ]")
        lines.append(f"{indent}}}")
    return "\n".join(lines)


def caa_generic(value: str) -> str:
    """'0 issue "ca.example"' -> RFC 3597 '\\# LEN HEX' rdata (RFC 8659 4.1 wire layout)."""
    flags, tag, rest = value.split(" ", 2)
    v = rest.strip()
    if len(v) >= 2 and v[0] == v[-1] == '"':
        v = v[1:-1]
    tagb, vb = tag.encode(), v.encode()
    wire = bytes([int(flags), len(tagb)]) + tagb + vb
    return f"\\# {len(wire)} {wire.hex()}"


def _txt(value: str) -> str:
    b = value.encode()
    chunks = [b[i:i + 255] for i in range(0, len(b), 255)] or [b""]
    return " ".join('"' + c.decode(errors="replace").replace("\\", "\\\\").replace('"', '\\"') + '"'
                    for c in chunks)


def _rel(name: str, zone: str) -> str:
    """Absolute owner -> zone-file owner ('@' for the apex)."""
    if name == zone:
        return "@"
    if name.endswith("." + zone):
        return name[: -len(zone) - 1]
    return name


def country_continents_from_mmdb(path: str) -> dict[str, str]:
    """ISO country -> GeoIP2 continent code, as the database itself records them."""
    import maxminddb  # the C reader the project already depends on

    out: dict[str, str] = {}
    with maxminddb.open_database(path) as reader:
        for _net, rec in reader:
            if not isinstance(rec, dict):
                continue
            cc = (rec.get("country") or {}).get("iso_code")
            cont = (rec.get("continent") or {}).get("code")
            if cc and cont:
                out.setdefault(cc, cont)
    return out


def gdnsd_files(cfg: DnsConfig, *, mmdb_path: str, listen: Iterable[str],
                country_continent: Mapping[str, str], udp_threads: int | None = None,
                tcp_threads: int | None = None, run_dir: str | None = None,
                state_dir: str | None = None) -> GdnsdFiles:
    """The gdnsd config and zone file equivalent to `cfg` (see the module docstring)."""
    notes: list[str] = []
    zone = cfg.zone.name
    zone_file_name = zone.rstrip(".")
    order = list(cfg.routing.default_order)
    pop_ids = [p.id for p in cfg.pops]
    order = _complete(order, pop_ids)
    n = cfg.policy.addresses_per_answer
    ttl = cfg.policy.ttl

    # ---- map
    map_entries: dict[str, object] = {}
    for cont, ids in cfg.routing.continent.items():
        map_entries[cont] = _complete(ids, order)
    for cc, ids in cfg.routing.country.items():
        cont = country_continent.get(cc)
        if cont is None:
            notes.append(f"routing.country.{cc}: no network of that country in the mmdb, "
                         "so its continent is unknown; not mapped for gdnsd (it has no effect there either)")
            continue
        sub = map_entries.get(cont)
        if isinstance(sub, list):
            # A continent override and a country inside it: gdnsd nests them.
            map_entries[cont] = sub = {"default": sub}
        elif sub is None:
            map_entries[cont] = sub = {}
        sub[cc] = _complete(ids, order)  # type: ignore[index]
    if cfg.routing.country or cfg.routing.continent:
        notes.append("override lists are completed in default order for gdnsd, by distance for us "
                     "(only the first PoP is answered while all are up)")

    def render_map(m: Mapping[str, object], indent: str) -> list[str]:
        lines = []
        for k in sorted(m, key=lambda k: (k != "default", k)):
            v = m[k]
            if isinstance(v, list):
                lines.append(f"{indent}{_q(k)} => {_dclist(v)}")
            else:
                lines.append(f"{indent}{_q(k)} => {{")
                lines += render_map(v, indent + "  ")  # type: ignore[arg-type]
                lines.append(f"{indent}}}")
        return lines

    c: list[str] = []
    c.append("# generated by bench/gdnsd.py from " + cfg.path)
    c.append("options => {")
    c.append("  listen => [ " + ", ".join(_q(x) for x in listen) + " ]")
    if udp_threads:
        c.append(f"  udp_threads => {udp_threads}")
    if tcp_threads:
        c.append(f"  tcp_threads => {tcp_threads}")
    if run_dir:
        c.append(f"  run_dir => {_q(run_dir)}")
    if state_dir:
        c.append(f"  state_dir => {_q(state_dir)}")
    c.append("  edns_client_subnet => true")
    c.append(f"  max_edns_response => {cfg.server.udp_payload_max}")
    c.append("}")
    c.append("plugins => {")
    c.append("  weighted => {")
    for p in cfg.pops:
        c.append(f"    pop-{p.id} => {{")
        c.append("      multi => false")
        if p.ipv4:
            c.append("      addrs_v4 => {")
            c.append(_weighted_family(p.ipv4, n, "        "))
            c.append("      }")
        if p.ipv6:
            c.append("      addrs_v6 => {")
            c.append(_weighted_family(p.ipv6, n, "        "))
            c.append("      }")
        c.append("    }")
    c.append("  }")
    c.append("  geoip => {")
    c.append("    maps => {")
    c.append(f"      {MAP} => {{")
    c.append(f"        geoip2_db => {_q(mmdb_path)}")
    c.append(f"        datacenters => {_dclist(order)}")
    c.append("        auto_dc_coords => {")
    for p in cfg.pops:
        c.append(f"          {_q(p.id)} => [ {p.latitude!r}, {p.longitude!r} ]")
    c.append("        }")
    c.append(f"        auto_dc_limit => {len(pop_ids)}")
    if map_entries:
        c.append("        map => {")
        c += render_map(map_entries, "          ")
        c.append("        }")
    c.append("      }")
    c.append("    }")
    c.append("    resources => {")
    c.append(f"      {RESOURCE} => {{")
    c.append(f"        map => {MAP}")
    c.append("        dcmap => {")
    for p in cfg.pops:
        c.append(f"          {_q(p.id)} => %weighted!pop-{p.id}")
    c.append("        }")
    c.append("      }")
    c.append("    }")
    c.append("  }")
    c.append("}")
    config = "\n".join(c) + "\n"

    # ---- zone file
    soa = cfg.zone.soa
    z: list[str] = []
    z.append(f"; generated by bench/gdnsd.py from {cfg.path}")
    z.append(f"$TTL {soa.minimum}")
    z.append(f"@ {soa.ttl} SOA {soa.mname} {soa.rname} ( {soa.serial} {soa.refresh} {soa.retry} "
             f"{soa.expire} {soa.minimum} )")
    for ns in cfg.zone.ns:
        z.append(f"@ {cfg.zone.ns_ttl} NS {ns.name}")
    for ns in cfg.zone.ns:
        if ns.name == zone or ns.name.endswith("." + zone):
            owner = _rel(ns.name, zone)
            for a in ns.ipv4:
                z.append(f"{owner} {cfg.zone.ns_ttl} A {a}")
            for a in ns.ipv6:
                z.append(f"{owner} {cfg.zone.ns_ttl} AAAA {ipaddress.IPv6Address(a).compressed}")
    for g in cfg.gslb:
        target = f"geoip!{RESOURCE}/{g.pin}" if g.pin else f"geoip!{RESOURCE}"
        z.append(f"{_rel(g.name, zone)} {ttl}/{ttl} DYNA {target}")
    for r in cfg.records:
        owner = _rel(r.name, zone)
        if r.type == "TXT":
            z.append(f"{owner} {r.ttl} TXT {_txt(r.value)}")
        elif r.type == "CAA":
            z.append(f"{owner} {r.ttl} TYPE257 {caa_generic(r.value)}")
        else:
            z.append(f"{owner} {r.ttl} {r.type} {r.value}")
    if any(g.pin for g in cfg.gslb):
        notes.append("pinned names use gdnsd's per-datacenter form geoip!edge/<pop>, which does not "
                     "fall back along the ranking when that PoP is down (ours does); all PoPs are up here")
    notes.append(f"{n} addresses per answer: gdnsd weighted grouped-single (fixed groups of {n}), "
                 "ours rotates among all of a PoP's addresses")
    return GdnsdFiles(config=config, zone_name=zone_file_name, zone="\n".join(z) + "\n",
                      notes=tuple(notes))
