"""DNS part of the bench: `gslb dns` versus gdnsd 3.x (geoip plugin), dnsperf as the client.

Owns: building the mmdb and both servers' configurations from our DNS config,
starting both servers on the bench namespace's loopback, checking that they
hand each client the same PoP (else the comparison is void), and running the
three query mixes (see `bench.queries`) with ``dnsperf -c 4 -T 2``.

What is reported per mix and server: qps (median of the runs), average
latency and lost queries (dnsperf's own statistics, from the same runs), and
p50/p99 latency from one extra run with ``dnsperf -v`` (per-query latencies;
printing every query costs dnsperf CPU, so that run is kept apart from the
qps runs and its qps is not used).
"""
from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass

from bench import queries as Q
from bench.gdnsd import country_continents_from_mmdb, gdnsd_files
from bench.parse import dnsperf_verbose_latencies, parse_dnsperf, percentile
from bench.procs import Procs, run_bounded, wait_dns
from bench.summary import figure_row, median
from dns.config import DnsConfig, load_dns_config

OURS_PORT = 5300
GDNSD_PORT = 5301
HOST = "127.0.0.1"
MIXES = ("plain", "ecs", "nxdomain")


@dataclass
class DnsSetup:
    cfg: DnsConfig
    ours_config: str
    mmdb: str
    gdnsd_dir: str
    notes: list[str]
    files: dict[str, tuple[str, bool]]   # mix -> (path, binary)
    sample_subnets: list[str]


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML here")


def rewrite_server_section(text: str, overrides: dict, drop: tuple[str, ...] = ()) -> str:
    """Our DNS config with its [server] table replaced: same keys, `overrides` applied, `drop` removed.

    Everything outside [server] is kept byte for byte, so the zone, PoPs,
    names and policy the bench serves are the ones in the user's file.
    """
    data = tomllib.loads(text)
    server = dict(data.get("server", {}))
    for k in drop:
        server.pop(k, None)
    server.update(overrides)
    body = "[server]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in server.items())
    lines = text.splitlines(keepends=True)
    header = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    out, i, replaced = [], 0, False
    while i < len(lines):
        m = header.match(lines[i])
        if m and m.group(1) == "server" and not lines[i].lstrip().startswith("[["):
            out.append(body)
            replaced = True
            i += 1
            while i < len(lines) and not header.match(lines[i]):
                i += 1
            out.append("\n")
            continue
        out.append(lines[i])
        i += 1
    if not replaced:
        # Top-level keys must come before any table: put [server] at the end.
        out.append("\n" + body)
    return "".join(out)


def prepare(ctx, dns_config: str, geo_table: str) -> DnsSetup:
    tmp = ctx.tmp
    mmdb = os.path.join(tmp, "lab.mmdb")
    ctx.log(f"dns: building the mmdb from {os.path.relpath(geo_table, ctx.repo)}")
    r = run_bounded([sys.executable, "-m", "gslb.cli", "geo", "build-mmdb", geo_table, "--out", mmdb],
                    timeout=60, cwd=ctx.repo)
    if r.returncode != 0:
        raise RuntimeError(f"gslb geo build-mmdb failed:\n{r.stdout}{r.stderr}")

    with open(dns_config, encoding="utf-8") as fh:
        text = fh.read()
    over = {"listen": [f"{HOST}:{OURS_PORT}"], "geoip_db": mmdb}
    drop = () if ctx.dns_workers_from_config else ("workers",)
    ours_text = rewrite_server_section(text, over, drop=drop)
    ours_config = os.path.join(tmp, "dns.toml")
    with open(ours_config, "w", encoding="utf-8") as fh:
        fh.write(ours_text)
    cfg = load_dns_config(ours_config)  # the same validation `gslb dns` applies

    gdir = os.path.join(tmp, "gdnsd")
    os.makedirs(os.path.join(gdir, "zones"), exist_ok=True)
    files = gdnsd_files(cfg, mmdb_path=mmdb, listen=[f"{HOST}:{GDNSD_PORT}"],
                        country_continent=country_continents_from_mmdb(mmdb),
                        run_dir=os.path.join(gdir, "run"), state_dir=os.path.join(gdir, "state"))
    with open(os.path.join(gdir, "config"), "w") as fh:
        fh.write(files.config)
    with open(os.path.join(gdir, "zones", files.zone_name), "w") as fh:
        fh.write(files.zone)

    # Query files.
    located = _mmdb_networks(mmdb)
    subnets = Q.client_subnets(located)
    names = Q.edge_names(cfg)
    qdir = os.path.join(tmp, "queries")
    os.makedirs(qdir, exist_ok=True)
    out: dict[str, tuple[str, bool]] = {}
    p = os.path.join(qdir, "plain.txt")
    with open(p, "w") as fh:
        fh.write(Q.text_file(Q.plain_queries(names)))
    out["plain"] = (p, False)
    p = os.path.join(qdir, "ecs.bin")
    with open(p, "wb") as fh:
        fh.write(Q.binary_file(Q.ecs_queries(names, subnets)))
    out["ecs"] = (p, True)
    p = os.path.join(qdir, "nxdomain.txt")
    with open(p, "w") as fh:
        fh.write(Q.text_file(Q.nxdomain_queries(cfg.zone.name)))
    out["nxdomain"] = (p, False)
    ctx.log(f"dns: {len(names)} edge names, {len(subnets)} client subnets, "
            f"{len(located)} located networks in the mmdb")
    # A sample for the answer check: the first subnet of every located network, some others, unlocated ones.
    sample = []
    seen_nets = set()
    for s in subnets:
        key = ipaddress.ip_network(s).supernet(new_prefix=min(24 if ":" not in s else 56,
                                                              ipaddress.ip_network(s).prefixlen))
        if key not in seen_nets:
            seen_nets.add(key)
            sample.append(s)
    sample += subnets[1::17][:12]
    return DnsSetup(cfg, ours_config, mmdb, gdir, list(files.notes), out, list(dict.fromkeys(sample)))


def _mmdb_networks(path: str) -> list[str]:
    import maxminddb

    nets = []
    with maxminddb.open_database(path) as reader:
        for net, _rec in reader:
            nets.append(str(net))
    return nets


def ours_available(repo: str) -> str | None:
    """None when `gslb dns` exists, else why not."""
    if not os.path.exists(os.path.join(repo, "dns", "cli.py")):
        return "not available: gslb dns not built (no dns/cli.py)"
    return None


def start_servers(ctx, setup: DnsSetup, procs: Procs, with_ours: bool):
    ours = None
    if with_ours:
        ctx.log("dns: starting gslb dns")
        ours_argv = [sys.executable, "-m", "gslb.cli", "dns", "--config", setup.ours_config]
        ours = procs.start("gslb-dns", ours_argv, cwd=ctx.repo)
    ctx.log("dns: starting gdnsd")
    peer = procs.start("gdnsd", ["gdnsd", "-c", setup.gdnsd_dir, "start"])
    if ours is not None:
        wait_dns(HOST, OURS_PORT, setup.cfg.zone.name, ours)
    wait_dns(HOST, GDNSD_PORT, setup.cfg.zone.name, peer)
    return ours, peer


# ---------------------------------------------------------------- answer check

def _dig(port: int, name: str, qtype: str, subnet: str | None) -> tuple[str, list[str]]:
    argv = ["dig", f"@{HOST}", "-p", str(port), name, qtype, "+norecurse", "+time=2", "+tries=2",
            "+noall", "+answer", "+comments"]
    if subnet:
        argv.append(f"+subnet={subnet}")
    r = run_bounded(argv, timeout=10)
    m = re.search(r"status: ([A-Z]+)", r.stdout)
    status = m.group(1) if m else "NO-ANSWER"
    addrs = []
    for line in r.stdout.splitlines():
        if line.startswith(";") or not line.strip():
            continue
        parts = line.split()
        if len(parts) >= 5 and parts[3] in ("A", "AAAA"):
            addrs.append(parts[4])
    return status, addrs


def addr_to_pop(cfg: DnsConfig) -> dict[str, str]:
    out = {}
    for p in cfg.pops:
        for a in p.ipv4 + p.ipv6:
            out[str(ipaddress.ip_address(a))] = p.id
    return out


def compare_answers(ours: dict, peer: dict, pop_of: dict[str, str]) -> list[str]:
    """Mismatches between two {(name,type,subnet): (status, addrs)} maps: same rcode, same PoP set."""
    problems = []
    for key in ours:
        (s1, a1), (s2, a2) = ours[key], peer.get(key, ("MISSING", []))
        p1 = sorted({pop_of.get(str(ipaddress.ip_address(a)), "?") for a in a1})
        p2 = sorted({pop_of.get(str(ipaddress.ip_address(a)), "?") for a in a2})
        if s1 != s2 or p1 != p2:
            problems.append(f"{key[0]} {key[1]} subnet={key[2] or '-'}: ours {s1} {','.join(p1) or '-'}, "
                            f"gdnsd {s2} {','.join(p2) or '-'}")
    return problems


def check_answers(ctx, setup: DnsSetup) -> dict:
    cfg = setup.cfg
    names = Q.edge_names(cfg, endpoints=1)
    cases = [(names[0], t, s) for s in [None] + setup.sample_subnets for t in ("A", "AAAA")]
    cases += [(n, "A", s) for n in names[1:] for s in setup.sample_subnets[:3]]
    cases += [(f"nx-check.{cfg.zone.name}", "A", None), (f"nx.nowhere.{cfg.zone.name}", "AAAA", "198.19.5.0/24")]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=8) as pool:  # dig processes; bounded by +time/+tries
        ours = dict(zip(cases, pool.map(lambda c: _dig(OURS_PORT, *c), cases)))
        peer = dict(zip(cases, pool.map(lambda c: _dig(GDNSD_PORT, *c), cases)))
    problems = compare_answers(ours, peer, addr_to_pop(cfg))
    counts_ours = sorted({len(v[1]) for k, v in ours.items() if v[0] == "NOERROR"})
    counts_peer = sorted({len(v[1]) for k, v in peer.items() if v[0] == "NOERROR"})
    ctx.log(f"dns: answer check: {len(cases)} queries, {len(problems)} disagree; addresses per answer "
            f"ours {counts_ours}, gdnsd {counts_peer}")
    for p in problems[:10]:
        ctx.log(f"dns:   differs: {p}")
    return {"queries": len(cases), "disagree": len(problems), "examples": problems[:20],
            "addresses_per_answer": {"ours": counts_ours, "gdnsd": counts_peer}}


# ---------------------------------------------------------------- load

def _dnsperf(port: int, path: str, binary: bool, seconds: float, verbose_to: str | None = None) -> dict:
    argv = ["dnsperf", "-s", HOST, "-p", str(port), "-d", path, "-c", "4", "-T", "2", "-l", f"{seconds:g}"]
    if binary:
        argv.append("-B")
    timeout = seconds + 30  # dnsperf waits up to its 5 s query timeout after the limit
    if verbose_to:
        argv.append("-v")
        with open(verbose_to, "w") as fh:
            r = subprocess.run(argv, stdout=fh, stderr=subprocess.PIPE, text=True, timeout=timeout)
        with open(verbose_to) as fh:
            text = fh.read()
        lat = dnsperf_verbose_latencies(text.splitlines())
        os.unlink(verbose_to)
        stats = parse_dnsperf(text)
        stats["latency_p50_ms"] = _ms(percentile(lat, 50))
        stats["latency_p99_ms"] = _ms(percentile(lat, 99))
        stats["latency_samples"] = len(lat)
        return stats
    r = run_bounded(argv, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"dnsperf failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    return parse_dnsperf(r.stdout)


def _ms(v: float | None) -> float | None:
    return None if v is None else v * 1e3


def run(ctx, procs: Procs, dns_config: str, geo_table: str) -> tuple[list[dict], dict]:
    """Returns (summary rows, details)."""
    setup = prepare(ctx, dns_config, geo_table)
    missing = ours_available(ctx.repo)
    if missing:
        ctx.log(f"dns: {missing}; measuring gdnsd alone")
    ours, peer = start_servers(ctx, setup, procs, with_ours=missing is None)
    details: dict = {"notes": setup.notes, "mixes": {}}
    if ours is not None:
        details["ours_argv"] = " ".join(ours.argv[1:])
        check = check_answers(ctx, setup)
        details["answer_check"] = check
        void = check["disagree"] > 0
    else:
        check, void = None, False
    servers = [("ours", OURS_PORT, ours), ("gdnsd", GDNSD_PORT, peer)]
    servers = [s for s in servers if s[2] is not None]

    rounds, seconds = (1, 3.0) if ctx.quick else (3, 10.0)
    vseconds = 1.0 if ctx.quick else 3.0
    results = {m: {"ours": [], "gdnsd": []} for m in MIXES}
    for rnd in range(rounds):
        for mix in MIXES:
            path, binary = setup.files[mix]
            order = list(servers)
            if rnd % 2:
                order.reverse()  # alternate who goes first, against drift
            for who, port, _p in order:
                for _w, _port, p in servers:
                    if not p.alive():
                        raise RuntimeError(f"{p.name} died during the DNS bench:\n{p.log_tail()}")
                st = _dnsperf(port, path, binary, seconds)
                results[mix][who].append(st)
                ctx.log(f"dns: round {rnd + 1}/{rounds} {mix:8s} {who:5s} {st['qps']:>10,.0f} qps  "
                        f"avg {st['latency_avg_ms']:.3f} ms  lost {st['lost']}")
    latency = {m: {} for m in MIXES}
    for mix in MIXES:
        path, binary = setup.files[mix]
        for who, port, _p in servers:
            st = _dnsperf(port, path, binary, vseconds, verbose_to=os.path.join(ctx.tmp, f"v-{mix}-{who}.txt"))
            latency[mix][who] = st
            ctx.log(f"dns: latency run {mix:8s} {who:5s} p50 {st['latency_p50_ms'] or 0:.3f} ms  "
                    f"p99 {st['latency_p99_ms'] or 0:.3f} ms")

    if getattr(ctx, "profile", False) and ours is not None:
        from bench.profile import Sampler
        sampler = Sampler(ctx.tmp)
        pseconds = 2.0 if ctx.quick else 5.0
        for mix in MIXES:
            path, binary = setup.files[mix]
            ctx.log(f"dns: profiling gslb dns under the {mix} mix ({pseconds:g} s, not scored)")
            sampler.start(f"gslb dns, {mix} mix", ours.pid, pseconds)
            _dnsperf(OURS_PORT, path, binary, pseconds)
            ctx.profiles.update(sampler.finish())

    rows = []
    for mix in MIXES:
        agg = {}
        for who, _port, _p in servers:
            runs = results[mix][who]
            agg[who] = {
                "qps_median": median(r["qps"] for r in runs),
                "qps_runs": [round(r["qps"], 1) for r in runs],
                "latency_avg_ms": median(r["latency_avg_ms"] for r in runs),
                "lost": sum(r["lost"] for r in runs),
                "sent": sum(r["sent"] for r in runs),
                "rcodes": runs[-1]["rcodes"],
                "latency_p50_ms": latency[mix][who]["latency_p50_ms"],
                "latency_p99_ms": latency[mix][who]["latency_p99_ms"],
            }
        details["mixes"][mix] = agg
        note = missing
        if ours is None:
            rows.append(figure_row(f"dns_{mix}_qps", None, agg["gdnsd"]["qps_median"], note=missing))
            continue
        if void:
            note = (f"comparison void: {check['disagree']} of {check['queries']} sampled answers name a "
                    f"different PoP or rcode (see details)")
        row = figure_row(f"dns_{mix}_qps", agg["ours"]["qps_median"], agg["gdnsd"]["qps_median"], note=note)
        if void:
            row["ratio"] = None
            row["target_met"] = None
        rows.append(row)
    return rows, details
