"""DNS part of the bench: `gslb dns` versus gdnsd 3.x (geoip plugin), dnsperf as the client.

Owns: building the mmdb and both servers' configurations from our DNS config,
starting both servers on the bench namespace's loopback, checking that they
hand each client the same PoP (else the comparison is void), and running the
three query mixes (see `bench.queries`) with ``dnsperf -c 4 -T 2``.

What is reported per mix and server: qps (median of the runs), average
latency and lost queries (dnsperf's own statistics, from the same runs), the
server's CPU time per answered query, and p50/p99 latency from one extra run
with ``dnsperf -v`` (per-query latencies; printing every query costs dnsperf
CPU, so that run is kept apart from the qps runs and its qps is not used).

CPU per query: utime+stime (proc(5) ``/proc/PID/stat``) of the server's
process and every descendant (a worker is a process; gdnsd's threads are in its
one process) read just before and just after each dnsperf run, divided by the
queries dnsperf saw answered in that run. On a 2-core machine with dnsperf on
the same cores both servers are client-bound, so qps says little about the
servers; CPU per query is what a server costs, and noise hardly moves it.

Ours runs twice: with its default (one process) and with ``--workers 2``
(SO_REUSEPORT), so the report shows what a second worker changes.
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
from bench.procs import Procs, run_bounded, tree_pids, wait_dns
from bench.summary import figure_row, median
from dns.config import DnsConfig, load_dns_config

OURS_PORT = 5300
GDNSD_PORT = 5301
OURS2_PORT = 5302   # the same `gslb dns` with --workers 2
HOST = "127.0.0.1"
MIXES = ("plain", "ecs", "nxdomain")
WORKERS2 = 2


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
    """(ours, ours with --workers 2, gdnsd); ours and ours2 are None without `gslb dns`."""
    ours = ours2 = None
    if with_ours:
        ctx.log("dns: starting gslb dns, and a second one with --workers 2")
        ours_argv = [sys.executable, "-m", "gslb.cli", "dns", "--config", setup.ours_config]
        ours = procs.start("gslb-dns", ours_argv, cwd=ctx.repo)
        # Its own control socket: the default one is derived from the config path, as the first's.
        ours2_argv = ours_argv + ["--workers", str(WORKERS2), "--listen", f"{HOST}:{OURS2_PORT}",
                                  "--control", os.path.join(ctx.tmp, "dns-workers2.ctl")]
        ours2 = procs.start(f"gslb-dns-w{WORKERS2}", ours2_argv, cwd=ctx.repo)
    ctx.log("dns: starting gdnsd")
    peer = procs.start("gdnsd", ["gdnsd", "-c", setup.gdnsd_dir, "start"])
    if ours is not None:
        wait_dns(HOST, OURS_PORT, setup.cfg.zone.name, ours)
        wait_dns(HOST, OURS2_PORT, setup.cfg.zone.name, ours2)
    wait_dns(HOST, GDNSD_PORT, setup.cfg.zone.name, peer)
    return ours, ours2, peer


# ---------------------------------------------------------------- CPU per query

def stat_cpu_ticks(stat: str) -> int:
    """utime + stime, in clock ticks, from the text of /proc/PID/stat (proc(5): fields 14 and 15).

    The command name (field 2) is in parentheses and may hold spaces or ')': split after the last ')'."""
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of `pid` and its descendants so far: a worker is a process of its
    own; threads are counted in their process's line. A process gone meanwhile counts nothing."""
    ticks = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/stat") as fh:
                ticks += stat_cpu_ticks(fh.read())
        except (OSError, IndexError, ValueError):
            continue
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_us_per_query(cpu_before: float, cpu_after: float, answered: int) -> float | None:
    """Server CPU microseconds per answered query over one run; None when nothing was answered."""
    if answered <= 0:
        return None
    return (cpu_after - cpu_before) / answered * 1e6


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

def _dnsperf(port: int, path: str, binary: bool, seconds: float, verbose_to: str | None = None,
             cpu_of: int | None = None) -> dict:
    """One dnsperf run; with `cpu_of` (a server's pid) also its CPU per answered query in the run."""
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
    before = tree_cpu_seconds(cpu_of) if cpu_of is not None else 0.0
    r = run_bounded(argv, timeout=timeout)
    after = tree_cpu_seconds(cpu_of) if cpu_of is not None else 0.0
    if r.returncode != 0:
        raise RuntimeError(f"dnsperf failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    stats = parse_dnsperf(r.stdout)
    if cpu_of is not None:
        stats["cpu_s"] = round(after - before, 3)
        stats["cpu_us_per_query"] = cpu_us_per_query(before, after, stats["completed"])
    return stats


def _ms(v: float | None) -> float | None:
    return None if v is None else v * 1e3


WHO = {"ours": "gslb dns (1 process)", f"ours_w{WORKERS2}": f"gslb dns --workers {WORKERS2}", "gdnsd": "gdnsd"}


def run(ctx, procs: Procs, dns_config: str, geo_table: str) -> tuple[list[dict], dict]:
    """Returns (summary rows, details)."""
    setup = prepare(ctx, dns_config, geo_table)
    missing = ours_available(ctx.repo)
    if missing:
        ctx.log(f"dns: {missing}; measuring gdnsd alone")
    ours, ours2, peer = start_servers(ctx, setup, procs, with_ours=missing is None)
    w2 = f"ours_w{WORKERS2}"
    details: dict = {"notes": setup.notes, "mixes": {}}
    if ours is not None:
        details["ours_argv"] = " ".join(ours.argv[1:])
        details["ours_w2_argv"] = " ".join(ours2.argv[1:])
        check = check_answers(ctx, setup)
        details["answer_check"] = check
        void = check["disagree"] > 0
    else:
        check, void = None, False
    servers = [("ours", OURS_PORT, ours), (w2, OURS2_PORT, ours2), ("gdnsd", GDNSD_PORT, peer)]
    servers = [s for s in servers if s[2] is not None]

    rounds, seconds = (1, 3.0) if ctx.quick else (3, 10.0)
    vseconds = 1.0 if ctx.quick else 3.0
    results = {m: {who: [] for who, _port, _p in servers} for m in MIXES}
    for rnd in range(rounds):
        for mix in MIXES:
            path, binary = setup.files[mix]
            order = list(servers)
            if rnd % 2:
                order.reverse()  # alternate who goes first, against drift
            for who, port, proc in order:
                for _w, _port, p in servers:
                    if not p.alive():
                        raise RuntimeError(f"{p.name} died during the DNS bench:\n{p.log_tail()}")
                st = _dnsperf(port, path, binary, seconds, cpu_of=proc.pid)
                results[mix][who].append(st)
                ctx.log(f"dns: round {rnd + 1}/{rounds} {mix:8s} {who:8s} {st['qps']:>10,.0f} qps  "
                        f"avg {st['latency_avg_ms']:.3f} ms  lost {st['lost']}  "
                        f"cpu {_us(st['cpu_us_per_query'])} us/query")
    latency = {m: {} for m in MIXES}
    for mix in MIXES:
        path, binary = setup.files[mix]
        for who, port, _p in servers:
            st = _dnsperf(port, path, binary, vseconds, verbose_to=os.path.join(ctx.tmp, f"v-{mix}-{who}.txt"))
            latency[mix][who] = st
            ctx.log(f"dns: latency run {mix:8s} {who:8s} p50 {st['latency_p50_ms'] or 0:.3f} ms  "
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
            # The workers (py-spy --subprocesses follows them from the supervisor).
            ctx.log(f"dns: profiling gslb dns --workers {WORKERS2} under the {mix} mix ({pseconds:g} s, not scored)")
            sampler.start(f"gslb dns --workers {WORKERS2}, {mix} mix", ours2.pid, pseconds)
            _dnsperf(OURS2_PORT, path, binary, pseconds)
            ctx.profiles.update(sampler.finish())

    rows = []
    for mix in MIXES:
        agg = {who: aggregate(results[mix][who], latency[mix][who]) for who, _port, _p in servers}
        details["mixes"][mix] = agg
        if ours is None:
            rows.append(figure_row(f"dns_{mix}_qps", None, agg["gdnsd"]["qps_median"], note=missing))
            rows.append(figure_row(f"dns_{mix}_cpu_us", None, agg["gdnsd"]["cpu_us_per_query"], note=missing))
            continue
        note = None
        if void:
            note = (f"comparison void: {check['disagree']} of {check['queries']} sampled answers name a "
                    f"different PoP or rcode (see details)")
        for key, field in ((f"dns_{mix}_qps", "qps_median"), (f"dns_{mix}_cpu_us", "cpu_us_per_query")):
            row = figure_row(key, agg["ours"][field], agg["gdnsd"][field], note=note)
            if void:
                row["ratio"] = None
                row["target_met"] = None
            rows.append(row)
    if ours is not None:
        rows += workers_rows(details["mixes"], w2)
    return rows, details


def aggregate(runs: list[dict], latency: dict) -> dict:
    """One server's runs of one mix: medians, and CPU per query over all its runs together."""
    completed = sum(r["completed"] for r in runs)
    cpu = [r.get("cpu_s") for r in runs]
    return {
        "qps_median": median(r["qps"] for r in runs),
        "qps_runs": [round(r["qps"], 1) for r in runs],
        "latency_avg_ms": median(r["latency_avg_ms"] for r in runs),
        "lost": sum(r["lost"] for r in runs),
        "sent": sum(r["sent"] for r in runs),
        "completed": completed,
        "rcodes": runs[-1]["rcodes"],
        "cpu_s": None if None in cpu else round(sum(cpu), 3),
        # The runs' CPU over the runs' answered queries (not a median of ratios: a short run
        # with few ticks weighs what it served).
        "cpu_us_per_query": None if None in cpu else cpu_us_per_query(0.0, sum(cpu), completed),
        "cpu_us_runs": [None if r.get("cpu_us_per_query") is None else round(r["cpu_us_per_query"], 2)
                        for r in runs],
        "latency_p50_ms": latency["latency_p50_ms"],
        "latency_p99_ms": latency["latency_p99_ms"],
    }


def workers_rows(mixes: dict, w2: str) -> list[dict]:
    """`--workers 2` against the default single process: qps and CPU per query, over every mix
    (sums of answered queries and of CPU; qps: the mixes' medians summed), one row each."""
    def total(who: str, field: str) -> float | None:
        vals = [mixes[m][who][field] for m in MIXES if m in mixes and who in mixes[m]]
        return None if not vals or None in vals else sum(vals)
    cpu1, cpu2 = total("ours", "cpu_s"), total(w2, "cpu_s")
    n1, n2 = total("ours", "completed"), total(w2, "completed")
    us1 = None if cpu1 is None or not n1 else cpu_us_per_query(0.0, cpu1, int(n1))
    us2 = None if cpu2 is None or not n2 else cpu_us_per_query(0.0, cpu2, int(n2))
    return [figure_row("dns_workers2_qps", total(w2, "qps_median"), total("ours", "qps_median"),
                       note="sum over the three mixes of each server's median qps"),
            figure_row("dns_workers2_cpu_us", us2, us1,
                       note="CPU per answered query over the three mixes, every worker and the supervisor")]


def _us(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def section_lines(dns: dict) -> list[str]:
    """The report's DNS section: every mix and server, qps, CPU per query, latency."""
    lines = ["| mix | server | qps (median) | runs | CPU us/query | CPU us, runs | avg ms | p50 ms | p99 ms | lost/sent |",
             "|---|---|---:|---|---:|---|---:|---:|---:|---:|"]
    for mix, per in dns.get("mixes", {}).items():
        for who, a in per.items():
            lines.append(
                f"| {mix} | {WHO.get(who, who)} | {a['qps_median']:,.0f} | "
                f"{', '.join(f'{x:,.0f}' for x in a['qps_runs'])} | {_us(a.get('cpu_us_per_query'))} | "
                f"{', '.join(_us(x) for x in a.get('cpu_us_runs', []))} | "
                f"{a['latency_avg_ms']:.3f} | {_f3(a['latency_p50_ms'])} | {_f3(a['latency_p99_ms'])} | "
                f"{a['lost']}/{a['sent']} |")
    lines.append("")
    lines.append("qps and avg latency: dnsperf -c 4 -T 2 runs (median); CPU us/query: the server's utime+stime "
                 "(/proc/PID/stat, every worker process and the supervisor; gdnsd's threads are in its one "
                 "process) over its runs, divided by the queries dnsperf saw answered; p50/p99: a separate "
                 "`dnsperf -v` run per mix and server (per-query latencies, nearest rank).")
    chk = dns.get("answer_check")
    if chk:
        lines.append(f"Answer check: {chk['queries']} queries (dig, with and without +subnet) to both "
                     f"servers, {chk['disagree']} disagree on PoP or rcode; addresses per answer "
                     f"ours {chk['addresses_per_answer']['ours']}, gdnsd {chk['addresses_per_answer']['gdnsd']}.")
        for e in chk["examples"][:10]:
            lines.append(f"- {e}")
    for n in dns.get("notes", []):
        lines.append(f"- gdnsd mapping: {n}")
    return lines


def _f3(v) -> str:
    return "-" if v is None else f"{v:.3f}"
