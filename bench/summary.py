"""The headline figures: ours / peer ratios, the table printed, the Markdown report.

Owns: the list of summary figures (names, units, peers, targets in docs/bench.md),
the ratio arithmetic, and rendering. Pure functions over plain data.

Every figure is a pair measured in the same run, on the same machine, with the
same client and payload; the ratio is the headline because absolute numbers
on a shared machine move from run to run. An unavailable figure keeps its row
with null values and a note saying why, never a made-up number.
"""
from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Figure", "FIGURES", "FAILOVER", "failover_row", "figure_row", "unavailable_row", "ratio", "median", "render_table",
           "render_markdown", "target_met"]


@dataclass(frozen=True)
class Figure:
    key: str
    unit: str
    peer_name: str
    target: float | None       # minimum ours/peer ratio the issue asks for
    what: str
    higher_is_better: bool = True
    absolute_min: float | None = None   # a floor on "ours" as well (tunnel: 500 MB/s)
    absolute_max: float | None = None   # a ceiling on "ours" (CPU per request: the us budgets)


FIGURES: tuple[Figure, ...] = (
    Figure("dns_plain_qps", "qps", "gdnsd", 0.5, "DNS A/AAAA for edge names, no EDNS"),
    Figure("dns_ecs_qps", "qps", "gdnsd", 0.5, "DNS with EDNS Client Subnet, many client subnets"),
    Figure("dns_nxdomain_qps", "qps", "gdnsd", 0.5, "DNS NXDOMAIN names"),
    # CPU per answered query (server utime+stime over the dnsperf runs / answered queries): with
    # dnsperf on the same 2 cores both servers are client-bound, so qps alone says little.
    Figure("dns_plain_cpu_us", "us/query", "gdnsd", 2.0, "DNS server CPU per answered query, plain mix",
           higher_is_better=False),
    Figure("dns_ecs_cpu_us", "us/query", "gdnsd", 2.0, "DNS server CPU per answered query, ECS mix",
           higher_is_better=False),
    Figure("dns_nxdomain_cpu_us", "us/query", "gdnsd", 2.0, "DNS server CPU per answered query, NXDOMAIN mix",
           higher_is_better=False),
    Figure("dns_workers2_qps", "qps", "gslb dns (1 process)", 1.0,
           "`gslb dns --workers 2` vs one process, qps summed over the three mixes"),
    Figure("dns_workers2_cpu_us", "us/query", "gslb dns (1 process)", None,
           "`gslb dns --workers 2` vs one process, CPU per answered query over the three mixes",
           higher_is_better=False),
    # Edge targets: issue 18 ("Edge speed: close the gap to nginx, and use every core").
    # "ours" in the 2-worker rows is `gslb edge --workers 2` once the edge has the flag, else its one process.
    Figure("edge_https_rps", "req/s", "nginx (2 workers)", 0.7, "HTTPS via edge+tunnel+agent, 100 B, keep-alive"),
    Figure("edge_https_64k_rps", "req/s", "nginx (2 workers)", 0.6, "HTTPS via edge+tunnel+agent, 64 KiB"),
    Figure("edge_https_rps_1w", "req/s", "nginx (1 worker)", 0.8, "HTTPS 100 B, one edge worker vs a 1-worker nginx"),
    Figure("edge_https_close_rps", "req/s", "nginx (2 workers)", 0.6,
           "HTTPS 100 B, new connection per request (handshakes/s)"),
    Figure("edge_p50_added_ms", "ms", "nginx (1 worker)", None,
           "p50 latency added over the bare upstream, sequential requests (target < 0.25 ms)",
           higher_is_better=False),
    Figure("edge_cpu_us_per_request", "us/req", "nginx proxy (1 worker)", None,
           "edge CPU (utime+stime, every edge process) per request, 100 B keep-alive, 1 edge worker; "
           "peer: the nginx proxy's master+workers", higher_is_better=False, absolute_max=30.0),
    Figure("agent_cpu_us_per_request", "us/req", "none", None,
           "agent CPU per request, 100 B keep-alive (nginx has no agent: no peer)", higher_is_better=False,
           absolute_max=20.0),
    Figure("edge_workers2_vs_1", "req/s", "ours, 1 edge worker", 1.0,
           "HTTPS 100 B, `gslb edge --workers 2` vs `--workers 1` (same machine, same agent kind)"),
    Figure("edge_workers2_cpu_us", "us/req", "ours, 1 edge worker", 1.1,
           "edge CPU per request (all worker processes summed), 2 workers vs 1: stays flat",
           higher_is_better=False),
    Figure("edge_abuse_cpu_us", "us/req", "the same edge, abuse layer off", 1.10,
           "edge CPU time per request (100 B, keep-alive) with the abuse layer accounting every request "
           "vs with it off (target: within 10 %)", higher_is_better=False),
    Figure("tunnel_bulk_mbps", "MB/s", "nginx stream relay pair + TLS hop", 1.2,
           "one stream, bulk download through edge -> agent", absolute_min=500.0),
    # Failover in the lab (bench.failover): times, no peer (gdnsd and nginx have no counterpart).
    Figure("dns_withdrawal_s", "s", "none", None, "SIGKILLed PoP out of the DNS answer (dig @dns1 +subnet)",
           higher_is_better=False),
    Figure("dns_return_s", "s", "none", None, "restarted PoP back in the DNS answer, after its edge is ready",
           higher_is_better=False),
    Figure("agent_failover_s", "s", "none", None, "agent's PoP SIGKILLed: agent's new `forwarding` line",
           higher_is_better=False),
    Figure("agent_served_s", "s", "none", None, "agent's PoP SIGKILLed: curl from another region 200 again",
           higher_is_better=False),
    Figure("lab_up_s", "s", "none", None, "`gslb lab up` to ready (wall clock)", higher_is_better=False),
    Figure("lab_down_s", "s", "none", None, "`gslb lab down` (wall clock)", higher_is_better=False),
)
FAILOVER = ("dns_withdrawal_s", "dns_return_s", "agent_failover_s", "agent_served_s", "lab_up_s", "lab_down_s")
NO_PEER_NOTE = "no peer for this figure (a lab time, not a comparison)"
FIGURE_BY_KEY = {f.key: f for f in FIGURES}
REQUIRED = ("dns_plain_qps", "dns_ecs_qps", "dns_nxdomain_qps", "dns_plain_cpu_us", "dns_ecs_cpu_us",
            "dns_nxdomain_cpu_us", "dns_workers2_qps", "edge_https_rps", "edge_https_64k_rps",
            "edge_https_rps_1w", "edge_https_close_rps", "edge_p50_added_ms", "edge_cpu_us_per_request",
            "agent_cpu_us_per_request", "edge_workers2_vs_1", "tunnel_bulk_mbps")
P50_ADDED_MAX_MS = 0.25   # issue 18: edge_p50_added_ms < 0.25 ms (strictly)


def median(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def ratio(ours: float | None, peer: float | None) -> float | None:
    if ours is None or peer is None or peer == 0:
        return None
    return ours / peer


def target_met(row: Mapping) -> bool | None:
    f = FIGURE_BY_KEY.get(row["figure"])
    if f is None:
        return None
    if f.absolute_max is not None and f.target is None:
        # An absolute budget (CPU us per request): judged on ours alone, a peer is only shown beside it.
        return None if row.get("ours") is None else row["ours"] <= f.absolute_max
    if f.key == "edge_p50_added_ms":
        return None if row.get("ours") is None else row["ours"] < P50_ADDED_MAX_MS
    if row.get("ratio") is None:
        return None
    if f.target is None and f.absolute_min is None:
        return None  # reported for information; docs/bench.md sets no target for it
    ok = True
    if f.target is not None:
        ok = row["ratio"] >= f.target if f.higher_is_better else row["ratio"] <= f.target
    if f.absolute_min is not None and row.get("ours") is not None:
        ok = ok and row["ours"] >= f.absolute_min
    if f.absolute_max is not None and row.get("ours") is not None:
        ok = ok and row["ours"] <= f.absolute_max
    return ok


def figure_row(key: str, ours: float | None, peer: float | None, note: str | None = None,
               peer_name: str | None = None) -> dict:
    f = FIGURE_BY_KEY[key]
    row = {
        "figure": key,
        "ours": None if ours is None else round(ours, 4),
        "peer": None if peer is None else round(peer, 4),
        "peer_name": peer_name or f.peer_name,
        "ratio": None if ratio(ours, peer) is None else round(ratio(ours, peer), 4),  # type: ignore[arg-type]
        "unit": f.unit,
        "target": _target_text(f),
    }
    if note:
        row["note"] = note
    row["target_met"] = target_met(row)
    return row


def failover_row(key: str, values: Iterable[float | None]) -> dict:
    """A failover figure: ours = the median of the runs, with min, max and n; peer and ratio null."""
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return unavailable_row(key, f"{NO_PEER_NOTE}; not measured (no successful run)")
    row = figure_row(key, median(vals), None)
    row.update(min=round(vals[0], 4), max=round(vals[-1], 4), n=len(vals))
    row["note"] = (f"{NO_PEER_NOTE}; median of {len(vals)}" + (f", min {vals[0]:.2f} max {vals[-1]:.2f}"
                                                               if len(vals) > 1 else ""))
    return row


def unavailable_row(key: str, note: str) -> dict:
    f = FIGURE_BY_KEY[key]
    return {"figure": key, "ours": None, "peer": None, "peer_name": f.peer_name, "ratio": None,
            "unit": f.unit, "target": _target_text(f), "note": note, "target_met": None}


def _target_text(f: Figure) -> str | None:
    parts = []
    if f.key == "edge_p50_added_ms":
        return f"ours < {P50_ADDED_MAX_MS:g} ms"
    if f.target is not None:
        parts.append(f"{'>=' if f.higher_is_better else '<='} {f.target:g}x")
    if f.absolute_min is not None:
        parts.append(f">= {f.absolute_min:g} {f.unit}")
    if f.absolute_max is not None:
        parts.append(f"ours <= {f.absolute_max:g} {f.unit}")
    return " and ".join(parts) or None


def complete_summary(rows: Sequence[dict], missing_note: str = "not measured in this run") -> list[dict]:
    """Rows in FIGURES order; every required figure present (null + note when missing)."""
    by = {r["figure"]: r for r in rows}
    out = []
    for f in FIGURES:
        if f.key in by:
            out.append(by[f.key])
        elif f.key in REQUIRED:
            out.append(unavailable_row(f.key, missing_note))
    return out


def _fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return "-"
    if unit == "ms" or abs(v) < 10:
        return f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}"
    return f"{v:,.0f}"


def render_table(rows: Sequence[Mapping]) -> str:
    head = ("figure", "ours", "peer", "ratio", "unit", "peer is", "target", "met")
    lines = [head]
    for r in rows:
        met = {True: "yes", False: "NO", None: "-"}[r.get("target_met")]
        lines.append((r["figure"], _fmt(r["ours"], r["unit"]), _fmt(r["peer"], r["unit"]),
                      "-" if r["ratio"] is None else f"{r['ratio']:.2f}x", r["unit"], r["peer_name"],
                      r.get("target") or "-", met))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    out = []
    for i, line in enumerate(lines):
        cells = [str(c).rjust(w) if 1 <= j <= 3 else str(c).ljust(w) for j, (c, w) in enumerate(zip(line, widths))]
        out.append("  ".join(cells).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    notes = [f"  {r['figure']}: {r['note']}" for r in rows if r.get("note")]
    if notes:
        out.append("")
        out.append("notes:")
        out += notes
    return "\n".join(out)


def render_markdown(result: Mapping) -> str:
    rows = result["summary"]
    md = [f"# gslb-edge bench, {result['started']}", ""]
    meta = result.get("meta", {})
    if meta:
        md.append(", ".join(f"{k}: {v}" for k, v in meta.items()))
        md.append("")
    md.append("| figure | ours | peer | ratio | unit | peer is | target | met |")
    md.append("|---|---:|---:|---:|---|---|---|---|")
    for r in rows:
        met = {True: "yes", False: "**no**", None: "-"}[r.get("target_met")]
        md.append(f"| {r['figure']} | {_fmt(r['ours'], r['unit'])} | {_fmt(r['peer'], r['unit'])} | "
                  f"{'-' if r['ratio'] is None else format(r['ratio'], '.2f') + 'x'} | {r['unit']} | "
                  f"{r['peer_name']} | {r.get('target') or '-'} | {met} |")
    notes = [r for r in rows if r.get("note")]
    if notes:
        md.append("")
        for r in notes:
            md.append(f"- `{r['figure']}`: {r['note']}")
    for section in result.get("sections", []):
        md.append("")
        md.append(f"## {section['title']}")
        md.append("")
        md += section["lines"]
    md.append("")
    return "\n".join(md)


OTHER_WORK = "other work"   # the machine's busy CPU spent by none of the measured processes


def cpu_per_unit(cpu_s: Mapping[str, float], units: float, seconds: float, scale: float = 1e6) -> dict:
    """CPU of each process over a timed run -> per unit of work and share of one core.

    cpu_s: {process: CPU seconds over the run}; units: requests (or MB) served in it; seconds: the run's
    wall time; scale: 1e6 gives microseconds per unit. Returns {"per_unit": {p: ...}, "share": {p: fraction
    of one core}, "bottleneck": the process with the highest share (None without data)}. Shares of one
    core, not of the machine: a process at 1.0 is saturated unless it has more than one thread or worker.
    """
    per = {k: (v / units * scale if units else None) for k, v in cpu_s.items()}
    share = {k: (v / seconds if seconds > 0 else None) for k, v in cpu_s.items()}
    known = {k: v for k, v in share.items() if v is not None and k != OTHER_WORK}   # OTHER_WORK: not a process
    return {"per_unit": per, "share": share, "bottleneck": max(known, key=known.__getitem__) if known else None}


def scaling_model(us_per_request: Mapping[str, float], cores: Mapping[str, float]) -> dict:
    """Predicted req/s when each process gets its own cores: every process serves at most
    cores[p] * 1e6 / us_per_request[p] requests per second, and the slowest one bounds the whole path.

    Assumes CPU per request stays flat as the load spreads over cores (no lock, no shared queue) and
    that the client is not the limit. Returns {"rps": bound, "limit": process, "per_process": {p: rps}}.
    A process with no cores given gets one.
    """
    per = {p: cores.get(p, 1.0) * 1e6 / us for p, us in us_per_request.items() if us}
    if not per:
        return {"rps": None, "limit": None, "per_process": {}}
    limit = min(per, key=per.__getitem__)
    return {"rps": per[limit], "limit": limit, "per_process": per}


def shared_cores_rps(us_per_request: Mapping[str, float], cores: float) -> float | None:
    """Predicted req/s when all the processes share `cores` cores (this machine: client and servers on
    2 vCPUs): the cores' microseconds divided by the whole path's CPU per request."""
    total = sum(v for v in us_per_request.values() if v)
    return cores * 1e6 / total if total else None
