"""`gslb dns explain`: what the server would answer a client, and why (sans-IO).

Runs the engine's own zone, placement and policy on one question, with the
engine's health view, and describes each step: where the client was placed,
the PoP ranking, the policy's choice, the TTL (and why it was lowered), and
each ranked PoP's health; and whether response rate limiting (`[rrl]`) limits
the client's netblock, from the running server's report. Reads no clock and
opens no socket.
"""
from __future__ import annotations

import ipaddress
from typing import Any

from dns.policy import HealthView
from dns.wire import TYPE_NAMES, ecs_option, name_from_text, name_to_text, parse_client_subnet
from dns.zone import describe_rr

RCODE_NAMES = {0: "NOERROR", 3: "NXDOMAIN", 5: "REFUSED"}


def explain(engine: Any, qname: str, qtype: int, client: str, ecs: str | None = None) -> dict[str, Any]:
    """The answer `engine` gives `client` (optionally with an ECS subnet) for `qname`/`qtype`."""
    subnet = None
    if ecs is not None:
        def bad(reason: str) -> ValueError:
            return ValueError(f"--ecs {ecs}: {reason}")
        subnet = parse_client_subnet(ecs_option(ecs), bad)
    wire_name = name_from_text(qname if qname.endswith(".") else qname + ".")
    placed: list[Any] = []

    def place() -> Any:
        if not placed:
            placed.append(engine.placement(client, subnet))
        return placed[0]

    ans = engine.zone.resolve(wire_name, qtype, place, engine.view)
    p = place()
    loc = p.location
    ranking = p.ranking
    scope = engine.ecs_scope(subnet, p) if (subnet and ans.location_dependent) else 0
    out: dict[str, Any] = {
        "qname": name_to_text(wire_name),
        "qtype": TYPE_NAMES.get(qtype, str(qtype)),
        "client": client,
        "ecs": ecs,
        "located_by": "ecs" if subnet is not None and subnet.source_prefix > 0 else "source address",
        "location": None if loc is None else {
            "country": loc.country, "continent": loc.continent, "city": loc.city,
            "latitude": loc.lat, "longitude": loc.lon},
        "network": None if p.network is None else str(p.network),
        "geo_database": None if engine.locator is None else engine.locator.db.path,
        "ranking": list(ranking.pops),
        "ranking_reason": ranking.reason + (f":{ranking.matched}" if ranking.matched else ""),
        "distances_km": list(ranking.distances_km) if ranking.distances_km else None,
        "rcode": RCODE_NAMES.get(ans.rcode, str(ans.rcode)),
        "authoritative": ans.authoritative,
        "location_dependent": ans.location_dependent,
        "ecs_scope": scope if subnet is not None else None,
        "answer": [describe_rr(rr) for rr in ans.answer_variants[0]],
        "rotations": len(ans.answer_variants),
        "authority": [describe_rr(rr) for rr in ans.authority],
        "policy": [{"order": list(s.order), "pops_used": list(s.pops_used),
                    "addresses": list(s.addresses), "fallback": s.fallback or None,
                    "reason": s.reason} for s in ans.selections],
    }
    ttls = {rr.ttl for rr in ans.answer_variants[0]}
    out["ttl"] = min(ttls) if ttls else None
    out["health"] = health_of(engine.zone.pops, engine.view, ranking.pops)
    lowered = bool(out["ttl"] is not None and ans.selections and out["ttl"] < engine.cfg.policy.ttl)
    out["ttl_lowered"] = lowered
    out["ttl_reason"] = None if not lowered else (
        "fallback answer" if any(s.fallback for s in ans.selections)
        else "the health of a PoP it depends on is changing")
    return out


def health_of(pop_addresses: Any, view: HealthView, pops: Any) -> list[dict[str, Any]]:
    """Per PoP of `pops`, in that order: which addresses `view` treats as up.

    `pop_addresses` maps a PoP id to its `dns.policy.PopAddresses`; unknown
    PoPs are left out.
    """
    rows = []
    for pop in pops:
        p = pop_addresses.get(pop)
        if p is None:
            continue
        addrs = p.ipv4 + p.ipv6
        down = [a for a in addrs if not view.is_up(pop, a)]
        state = ("drained" if pop in view.drained else "down" if len(down) == len(addrs)
                 else "partial" if down else "up")
        rows.append({"pop": pop, "state": state, "down": down, "addresses": len(addrs),
                     "changing": pop in view.changing})
    return rows


def rrl_status(settings: Any, client: str, reports: dict[str, list] | None,
               workers: int = 1) -> dict[str, Any]:
    """What `[rrl]` (`dns.config.RrlSettings`) does to `client`'s netblock.

    `reports`: the running server's limited buckets per worker pid (control op
    "rrl"), None when the server was not asked. `limited` lists the client's
    netblock's buckets that are limited now, each with the worker that limits it.
    """
    out: dict[str, Any] = {"enabled": bool(settings.enabled)}
    if not settings.enabled:
        return out
    addr = ipaddress.ip_address(client.partition("%")[0])
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    prefix = settings.ipv4_prefix_length if addr.version == 4 else settings.ipv6_prefix_length
    netblock = str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))
    if reports:
        workers = len(reports)
    out.update(netblock=netblock, responses_per_second=settings.responses_per_second,
               workers=workers, per_worker_rate=round(settings.responses_per_second / max(1, workers), 3),
               window=settings.window, slip=settings.slip, from_server=reports is not None,
               limited=None if reports is None else [
                   {**row, "worker": pid} for pid, rows in sorted(reports.items())
                   for row in rows if row.get("netblock") == netblock])
    return out
