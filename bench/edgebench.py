"""Edge HTTPS and tunnel bulk parts of the bench: `gslb edge` + `gslb agent` versus nginx.

Owns: the HTTP upstream (nginx, 1 worker, 100 B and 64 KiB bodies) both
sides share, the peers (nginx as a TLS-terminating reverse proxy with 2 and
with 1 worker; two nginx `stream` relays with a TLS hop between them), the
bulk baselines (a plain TCP copy, one TLS connection alone), and the runs
(wrk; bench.bulk). Our side is started through its command line only
(`bench.ours_edge`), never by importing edge internals.

Client to server, every variant on the bench namespace's loopback:
  ours:  wrk --TLS--> gslb edge :443 --yamux/TLS--> gslb agent --> nginx upstream
  peer:  wrk --TLS--> nginx proxy (N workers) ---------------------> nginx upstream
  bulk ours: bulk fetch --TCP--> edge TCP endpoint --tunnel--> agent --> bulk source
  bulk peer: bulk fetch --TCP--> nginx stream A --TLS--> nginx stream B --> bulk source
"""
from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time

from bench import ours_edge
from bench.nginx import stream_relay_conf, tls_proxy_conf, upstream_conf, write_bodies
from bench.parse import merge_wrk, parse_wrk
from bench.procs import Procs, cpu_delta, cpu_snapshot, machine_busy_seconds, peak_rss_kib, run_bounded, run_bounded_all, \
    tree_cpu_seconds, wait_tcp
from bench.summary import OTHER_WORK, cpu_per_unit, figure_row, median, scaling_model, shared_cores_rps, unavailable_row

CLIENT = "wrk (client)"   # the load generator's own CPU, next to the servers'
OTHER = OTHER_WORK          # the machine's busy CPU that none of the measured processes spent


def _with_other(cpu_s: dict, busy_s: float) -> dict:
    """Add OTHER: what the whole machine was busy minus the processes measured (never negative)."""
    return {**cpu_s, OTHER: max(0.0, busy_s - sum(cpu_s.values()))}

UPSTREAM_PORT = 8080
NGINX2_PORT = 8443
NGINX1_PORT = 8444
BULK_PLAIN_PORT = 9000
BULK_TLS_PORT = 9100
RELAY_A_PORT = 9001
RELAY_B_PORT = 9002
HTTPS_NAME = "demo.app.lab.test"
# The 2-worker edge's second endpoint: one agent session lives in one worker (docs/workers.md), so
# the 2-worker runs use two agents, each with its own name, loaded at once (half the connections each).
HTTPS_NAME2 = "demo2.app.lab.test"
BULK_NAME = "bulk.tcp.lab.test"


def _nginx(procs: Procs, ctx, name: str, conf_text: str):
    prefix = os.path.join(ctx.tmp, name)
    os.makedirs(os.path.join(prefix, "tmp"), exist_ok=True)
    conf = os.path.join(prefix, "nginx.conf")
    with open(conf, "w") as fh:
        fh.write(conf_text)
    return procs.start(name, ["nginx", "-p", prefix, "-c", conf, "-e", os.path.join(prefix, "error.log")])


def make_certs(ctx) -> dict:
    """The lab CA (EC P-256, as the edge uses) and one certificate for the peers' names."""
    from edge.certs import CertAuthority  # the project's lab CA: the same kind of key on both sides

    ca_dir = os.path.join(ctx.tmp, "ca")
    ca = CertAuthority.create(ca_dir)
    leaf = ca.issue([HTTPS_NAME, BULK_NAME])
    cert = os.path.join(ctx.tmp, "peer-cert.pem")
    key = os.path.join(ctx.tmp, "peer-key.pem")
    with open(cert, "wb") as fh:
        fh.write(leaf.cert_pem)
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(leaf.key_pem)
    return {"ca_dir": ca_dir, "ca_cert": str(ca.cert_path), "cert": cert, "key": key}


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _at(server: str | list[str], path: str) -> str | list[str]:
    return [u + path for u in server] if isinstance(server, list) else server + path


def _first(server: str | list[str]) -> str:
    return server[0] if isinstance(server, list) else server


def _wrk(url: str | list[str], seconds: float, *, threads: int = 2, conns: int = 64, close: bool = False,
         trees: dict | None = None) -> dict:
    """One wrk run. `trees` ({process: pid or pids}): their CPU over the run (utime+stime from /proc,
    whole process trees: every edge worker, nginx master+workers) and wrk's own (its rusage) go to
    out["cpu_s"] and out["cpu"] (per request, share of a core, the bottleneck). Only for runs made one
    at a time: wrk's rusage is this process's children's.
    A list of URLs: one wrk per URL at once, the threads and connections split evenly among them
    (the 2-worker edge's two endpoints), their counts summed (`merge_wrk`)."""
    urls = url if isinstance(url, list) else [url]
    argvs = []
    for u in urls:
        argv = ["wrk", f"-t{max(1, threads // len(urls))}", f"-c{max(1, conns // len(urls))}", f"-d{seconds:g}s",
                "--latency", "--timeout", "5s"]
        if close:
            argv += ["-H", "Connection: close"]
        argvs.append(argv + [u])
    if trees is not None:
        c0, w0, t0, m0 = cpu_snapshot(trees), _children_cpu(), time.monotonic(), machine_busy_seconds()
    results = run_bounded_all(argvs, timeout=seconds + 30)
    if trees is not None:
        cpu_s = cpu_delta(c0, cpu_snapshot(trees))
        cpu_s[CLIENT] = max(0.0, _children_cpu() - w0)
        cpu_s = _with_other(cpu_s, machine_busy_seconds() - m0)
        wall = time.monotonic() - t0
    for r in results:
        if r.returncode != 0:
            raise RuntimeError(f"wrk failed ({r.returncode}): {r.stderr.strip()[-400:]}")
    out = merge_wrk([parse_wrk(r.stdout) for r in results])
    if trees is not None:
        # Per request over wrk's count; shares over wrk's own duration (the timed part of the wall time).
        out["cpu_s"] = {k: round(v, 4) for k, v in cpu_s.items()}
        out["cpu"] = cpu_per_unit(cpu_s, out["requests"], out.get("duration_s") or wall)
    errs = sum(out["socket_errors"].values())
    if not out["requests"] or out["non_2xx"] > 0.01 * out["requests"] or errs > 0.01 * out["requests"]:
        # A run where more than 1 % failed measures failure, not service: no figure from it.
        out["invalid"] = (f"{out['non_2xx']} non-2xx of {out['requests']} responses, "
                          f"socket errors {out['socket_errors']}")
    return out


def _fetch(port: int, nbytes: int, *, tls: str | None = None, sni: str | None = None,
           trees: dict | None = None) -> dict:
    """One bulk transfer; `trees` as in `_wrk` (CPU per MB of each process, the client's included)."""
    argv = [sys.executable, "-m", "bench.bulk", "fetch", "--port", str(port), "--bytes", str(nbytes),
            "--timeout", "120"]
    if tls:
        argv += ["--tls", tls, "--sni", sni or BULK_NAME]
    if trees is not None:
        c0, w0, t0, m0 = cpu_snapshot(trees), _children_cpu(), time.monotonic(), machine_busy_seconds()
    r = run_bounded(argv, timeout=150, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if trees is not None:
        cpu_s = cpu_delta(c0, cpu_snapshot(trees))
        cpu_s["bulk fetch (client)"] = max(0.0, _children_cpu() - w0)
        cpu_s = _with_other(cpu_s, machine_busy_seconds() - m0)
        wall = time.monotonic() - t0
    try:
        out = json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise RuntimeError(f"bulk fetch from :{port} failed: {r.stderr.strip()[-400:]}") from None
    if not out.get("complete"):
        raise RuntimeError(f"bulk fetch from :{port} got {out['bytes']} of {nbytes} bytes: {r.stderr.strip()[-300:]}")
    if trees is not None:
        # Per MB (10^6 bytes) transferred; the client process's start-up is in its share, a few ms.
        out["cpu_s"] = {k: round(v, 4) for k, v in cpu_s.items()}
        out["cpu"] = cpu_per_unit(cpu_s, out["bytes"] / 1e6, out.get("seconds") or wall)
    return out


def run(ctx, procs: Procs, *, edge: bool, tunnel: bool) -> tuple[list[dict], dict]:
    rows: list[dict] = []
    details: dict = {}
    certs = make_certs(ctx)
    root = os.path.join(ctx.tmp, "www")
    write_bodies(root)
    # nginx workers run as nobody: let them reach the bodies (the temp dir is 0700 from mkdtemp).
    os.chmod(ctx.tmp, 0o711)
    os.chmod(root, 0o755)
    for f in os.listdir(root):
        os.chmod(os.path.join(root, f), 0o644)

    # `--workers 1` (when the edge has the option): the 1-worker figures and the bulk; the 2-worker
    # edge is a second one beside it (see _https).
    ours = ours_edge.OursEdge(ctx, procs, certs, workers=1)
    missing = ours.unavailable()
    if missing:
        ctx.log(f"edge: {missing}; measuring the peers alone")

    if edge:
        r, d = _https(ctx, procs, certs, root, ours if not missing else None, missing)
        rows += r
        details["edge"] = d
    if tunnel:
        r, d = _bulk(ctx, procs, certs, ours if not missing else None, missing)
        rows += r
        details["tunnel"] = d
    return rows, details


OURS2_PORT = 6443
OURS2_TCP = (20060, 20069)
VARIANTS = (("small", "/small", False), ("big", "/big", False), ("close", "/small", True))
VARIANT_LABEL = {"small": "100 B", "big": "64 KiB", "close": "100 B, Connection: close"}


def _https(ctx, procs: Procs, certs: dict, root: str, ours, missing: str | None) -> tuple[list[dict], dict]:
    seconds = 3.0 if ctx.quick else 10.0
    lat_seconds = 1.0 if ctx.quick else 5.0
    ctx.log("edge: starting the nginx upstream and the nginx TLS proxies (2 workers, 1 worker)")
    up = _nginx(procs, ctx, "nginx-upstream", upstream_conf(os.path.join(ctx.tmp, "nginx-upstream"),
                                                            UPSTREAM_PORT, root, workers=1))
    wait_tcp("127.0.0.1", UPSTREAM_PORT, up)
    servers: dict[str, str] = {}
    trees: dict[str, dict] = {}   # who -> {process label: pid}: whose CPU each run of `who` counts
    for name, port, workers in (("nginx2w", NGINX2_PORT, 2), ("nginx1w", NGINX1_PORT, 1)):
        p = _nginx(procs, ctx, f"nginx-proxy-{workers}w",
                   tls_proxy_conf(os.path.join(ctx.tmp, f"nginx-proxy-{workers}w"), port, UPSTREAM_PORT,
                                  certs["cert"], certs["key"], workers, HTTPS_NAME))
        wait_tcp("127.0.0.1", port, p)
        servers[name] = f"https://{HTTPS_NAME}:{port}"
        trees[name] = {"nginx proxy": p.pid, "upstream": up.pid}
    ours2 = None
    workers_note = None
    if ours is not None:
        ctx.log("edge: starting gslb edge (1 worker) and gslb agent (http -> the nginx upstream)")
        servers["ours"] = ours.start_http(UPSTREAM_PORT, HTTPS_NAME)
        trees["ours"] = {"edge": ours.edge.pid, "agent": ours.agents["http"].pid, "upstream": up.pid}
        ctx.log(f"edge: ours serves {servers['ours']}")
        if ours_edge.workers_supported(ctx.repo):
            ours2 = ours_edge.OursEdge(ctx, procs, certs, name="edge-2w", port=OURS2_PORT, tcp_ports=OURS2_TCP,
                                       workers=2)
            servers["ours2w"] = [ours2.start_http(UPSTREAM_PORT, HTTPS_NAME),
                                 ours2.start_http(UPSTREAM_PORT, HTTPS_NAME2, key="http2")]
            trees["ours2w"] = {"edge": ours2.edge.pid, "agent": [ours2.agents["http"].pid, ours2.agents["http2"].pid],
                               "upstream": up.pid}
            ctx.log(f"edge: ours with --workers 2 serves {servers['ours2w']}")
        else:
            workers_note = "gslb edge --help lists no --workers: the edge is one process (2-worker figures n/a)"
            ctx.log(f"edge: {workers_note}")

    rounds = 1 if ctx.quick else 3
    runs: dict = {v[0]: {} for v in VARIANTS}
    order = [k for k in ("ours", "ours2w", "nginx2w", "nginx1w") if k in servers]
    for rnd in range(rounds):
        for vi, (vname, path, close) in enumerate(VARIANTS):
            seq = order if (vi + rnd) % 2 == 0 else list(reversed(order))  # alternate who goes first
            for who in seq:
                if ours is not None:
                    ours.check_alive()
                if ours2 is not None:
                    ours2.check_alive()
                st = _wrk(_at(servers[who], path), seconds, close=close, trees=trees[who])
                runs[vname].setdefault(who, []).append(st)
                cpu = st["cpu"]["per_unit"]
                ctx.log(f"edge: round {rnd + 1}/{rounds} {vname:5s} {who:7s} {st['rps']:>9,.0f} req/s  "
                        f"p50 {st['latency_p50_ms']:.3f} ms  p99 {st['latency_p99_ms']:.3f} ms  CPU us/req "
                        + " ".join(f"{k.split()[0]} {v:.1f}" for k, v in cpu.items() if v is not None)
                        + (f"  INVALID: {st['invalid']}" if "invalid" in st else ""))
    results = {v: {who: aggregate_wrk(rs) for who, rs in per.items()} for v, per in runs.items()}

    # Added latency: sequential requests (one connection, one at a time), p50, versus the bare upstream.
    lat = {}
    # (one connection: the 2-worker edge's first endpoint)
    for who, url in [("upstream", f"http://127.0.0.1:{UPSTREAM_PORT}")] + [(k, _first(servers[k])) for k in order]:
        st = _wrk(url + "/small", lat_seconds, threads=1, conns=1)
        lat[who] = st
        ctx.log(f"edge: sequential {who:8s} p50 {st['latency_p50_ms']:.3f} ms  ({st['rps']:,.0f} req/s)")
    added = {k: lat[k]["latency_p50_ms"] - lat["upstream"]["latency_p50_ms"] for k in order
             if "invalid" not in lat[k] and "invalid" not in lat["upstream"]}

    abuse_row, abuse = _abuse_cost(ctx, procs, certs, seconds, missing if ours is None else None)

    rss = ours.peak_rss() if ours is not None else None
    rss2 = ours2.peak_rss() if ours2 is not None else None
    profiles: dict = {}
    if getattr(ctx, "profile", False) and ours is not None:
        from bench.profile import Sampler
        sampler = Sampler(ctx.tmp)
        for vname, path, close in VARIANTS:
            label = VARIANT_LABEL[vname]
            ctx.log(f"edge: profiling edge and agent, {label} ({seconds:g} s, not scored)")
            keys = {"edge": f"gslb edge, HTTPS {label}", "agent": f"gslb agent (http), HTTPS {label}"}
            sampler.start(keys["edge"], ours.edge.pid, seconds)
            sampler.start(keys["agent"], ours.agents["http"].pid, seconds)
            _wrk(servers["ours"] + path, seconds, close=close)
            got = sampler.finish()
            ctx.profiles.update(got)
            profiles[vname] = {proc: got.get(k) for proc, k in keys.items()}
    lines = _https_lines(results, lat, added, rss, seconds, rss2=rss2, workers_note=workers_note)
    lines += [""] + bottleneck_lines(results, profiles) + [""] + scaling_lines(results, os.cpu_count() or 1)
    d = {"title": "Edge HTTPS", "wrk": results, "sequential": lat, "added_p50_ms": added, "peak_rss_kib": rss,
         "peak_rss_kib_2w": rss2, "abuse_cpu": abuse, "lines": lines + [""] + abuse.get("lines", [])}

    def val(v, who):
        st = results[v].get(who)
        return None if st is None else st["rps"]

    def cpu(v, who, proc):
        st = results[v].get(who)
        return None if st is None else st["cpu_us_per_request"].get(proc)

    def note_for(v, *whos, extra=None):
        bad = [f"{w}: invalid run(s) left out ({results[v][w]['invalid'][:160]})" for w in whos
               if w in results[v] and "invalid" in results[v][w]]
        return "; ".join(([missing] if missing else []) + ([extra] if extra else []) + bad) or None

    # The 2-worker peer gets our 2-worker edge when there is one, else our one process (said in the note).
    multi = "ours2w" if ours2 is not None else "ours"
    multi_note = None if ours2 is not None else workers_note
    rows = [
        figure_row("edge_https_rps", val("small", multi), val("small", "nginx2w"),
                   note=note_for("small", multi, "nginx2w", extra=multi_note)),
        figure_row("edge_https_64k_rps", val("big", multi), val("big", "nginx2w"),
                   note=note_for("big", multi, "nginx2w", extra=multi_note)),
        figure_row("edge_https_rps_1w", val("small", "ours"), val("small", "nginx1w"),
                   note=note_for("small", "ours", "nginx1w")),
        figure_row("edge_https_close_rps", val("close", multi), val("close", "nginx2w"),
                   note=note_for("close", multi, "nginx2w", extra=multi_note)),
        figure_row("edge_p50_added_ms", added.get("ours"), added.get("nginx1w"), note=missing),
        figure_row("edge_cpu_us_per_request", cpu("small", "ours", "edge"), cpu("small", "nginx1w", "nginx proxy"),
                   note=note_for("small", "ours", "nginx1w", extra=_cpu_note(results, "edge", "nginx proxy"))),
        figure_row("agent_cpu_us_per_request", cpu("small", "ours", "agent"), None,
                   note=note_for("small", "ours", extra=_cpu_note(results, "agent", None))),
    ]
    if ours2 is not None:
        rows += [
            figure_row("edge_workers2_vs_1", val("small", "ours2w"), val("small", "ours"),
                       note=note_for("small", "ours2w", "ours")),
            figure_row("edge_workers2_cpu_us", cpu("small", "ours2w", "edge"), cpu("small", "ours", "edge"),
                       note=note_for("small", "ours2w", "ours")),
        ]
    else:
        rows += [unavailable_row("edge_workers2_vs_1", missing or workers_note),
                 unavailable_row("edge_workers2_cpu_us", missing or workers_note)]
    rows.append(abuse_row)
    return rows, d


def _cpu_note(results: dict, proc: str, peer_proc: str | None) -> str | None:
    """The same process's CPU per request in the other variants, for the row's note."""
    parts = []
    for v in ("big", "close"):
        ours = results[v].get("ours", {}).get("cpu_us_per_request", {}).get(proc)
        peer = results[v].get("nginx1w", {}).get("cpu_us_per_request", {}).get(peer_proc) if peer_proc else None
        if ours is not None:
            parts.append(f"{VARIANT_LABEL[v]}: {ours:.1f}" + (f" (nginx 1w {peer:.1f})" if peer is not None else "")
                         + " us")
    return ("other variants: " + "; ".join(parts)) if parts else None


# The abuse layer's cost: two more edges beside the first, each with its own agent to the same
# upstream. "on" accounts every connection and request (loopback not exempt, limits far above what
# wrk does, so nothing is blocked); "off" has the layer disabled. Same wrk runs, alternated.
ABUSE_ON = """
[edge.abuse]
exempt = []
connections_per_second = 1e7
connections_burst = 10000000
max_concurrent = 10000000
handshakes_per_second = 1e7
handshakes_burst = 10000000
requests_per_second = 1e7
requests_burst = 10000000
"""
ABUSE_OFF = """
[edge.abuse]
enabled = false
"""
ABUSE_PORTS = {"on": (7443, (20040, 20049)), "off": (7444, (20050, 20059))}   # free of the others above


def _cpu_seconds(pid: int) -> float:
    """CPU seconds of the edge: its whole process tree (every worker), see procs.tree_cpu_seconds."""
    return tree_cpu_seconds(pid)


def _abuse_cost(ctx, procs: Procs, certs: dict, seconds: float, missing: str | None) -> tuple[dict, dict]:
    """Edge CPU seconds per request with the abuse layer on and off (100 B, keep-alive): the
    `edge_abuse_cpu_us` row and its details. CPU time, not req/s: the machine may be shared."""
    if missing:
        return unavailable_row("edge_abuse_cpu_us", missing), {}
    edges: dict[str, ours_edge.OursEdge] = {}
    urls: dict[str, str] = {}
    rounds = 3 if ctx.quick else 5
    per: dict[str, list[float]] = {"on": [], "off": []}
    try:
        for key, extra in (("on", ABUSE_ON), ("off", ABUSE_OFF)):
            port, tcp = ABUSE_PORTS[key]
            e = ours_edge.OursEdge(ctx, procs, certs, name=f"edge-abuse-{key}", port=port, tcp_ports=tcp,
                                   extra=extra, workers=1)
            edges[key] = e
            urls[key] = e.start_http(UPSTREAM_PORT, HTTPS_NAME) + "/small"
        for key in urls:  # warm-up: TLS contexts, the stream, the upstream connection
            _wrk(urls[key], 1.0)
        for rnd in range(rounds):
            # Both at once, for the same seconds: whatever else the machine runs meanwhile
            # weighs on both sides alike (a pair, not two runs minutes apart).
            pids = {key: edges[key].edge.pid for key in edges}
            c0 = {key: _cpu_seconds(pid) for key, pid in pids.items()}
            out: dict[str, dict] = {}
            threads = [threading.Thread(target=lambda k=key: out.__setitem__(k, _wrk(urls[k], seconds, threads=1,
                                                                                      conns=32)))
                       for key in urls]
            for t in threads:
                t.start()
            for t in threads:
                t.join(seconds + 60)
            for key, pid in pids.items():
                st = out.get(key)
                if st is None or "invalid" in st:
                    raise RuntimeError(f"abuse {key}: no valid wrk run: {st and st.get('invalid')}")
                per[key].append((_cpu_seconds(pid) - c0[key]) / st["requests"] * 1e6)
                ctx.log(f"edge: abuse layer {key:3s} round {rnd + 1}/{rounds} {st['rps']:>9,.0f} req/s  "
                        f"edge CPU {per[key][-1]:.1f} us/request")
    except (RuntimeError, OSError) as exc:
        return unavailable_row("edge_abuse_cpu_us", f"not measured: {str(exc)[:300]}"), {}
    finally:
        for e in edges.values():
            for p in [*e.agents.values(), e.edge]:
                if p is not None:
                    procs.stop(p)
    on, off = median(per["on"]), median(per["off"])
    row = figure_row("edge_abuse_cpu_us", on, off)
    pairs = [round(a / b, 3) for a, b in zip(per["on"], per["off"])]
    row["note"] = f"ratio of each simultaneous pair: {pairs}"
    lines = [f"- edge CPU per request, abuse layer on / off (median of {rounds} simultaneous pairs): "
             f"{on:.1f} / {off:.1f} us (ratio {on / off:.3f}; target <= 1.10; pairs {pairs})"]
    return row, {"cpu_us_per_request": per, "on": on, "off": off, "lines": lines}


def aggregate_wrk(runs: list[dict]) -> dict:
    """Median over the valid runs of one variant and server; invalid runs are kept aside, never averaged in.
    CPU: per process, the median of the runs' us per request and share of a core; the bottleneck is the
    process with the highest median share."""
    valid = [r for r in runs if "invalid" not in r]
    out = {
        "rps": median(r["rps"] for r in valid),
        "latency_p50_ms": median(r["latency_p50_ms"] for r in valid),
        "latency_p99_ms": median(r["latency_p99_ms"] for r in valid),
        "rps_runs": [round(r["rps"], 1) for r in runs],
        "errors": sum(sum(r["socket_errors"].values()) + r["non_2xx"] for r in runs),
    }
    out.update(aggregate_cpu([r["cpu"] for r in valid if "cpu" in r]))
    if len(valid) < len(runs):
        out["invalid"] = "; ".join(r["invalid"] for r in runs if "invalid" in r)
    if not valid:
        out["all_invalid"] = True
    return out


def aggregate_cpu(cpus: list[dict], key: str = "cpu_us_per_request") -> dict:
    """[cpu_per_unit(...) of each run] -> {key: {proc: median per unit}, "cpu_share": {...}, "bottleneck"}."""
    procs_ = sorted({p for c in cpus for p in c["per_unit"]})
    per = {p: median(c["per_unit"].get(p) for c in cpus) for p in procs_}
    share = {p: median(c["share"].get(p) for c in cpus) for p in procs_}
    known = {p: v for p, v in share.items() if v is not None and p != OTHER}
    return {key: per, "cpu_share": share, "bottleneck": max(known, key=known.__getitem__) if known else None}


def _f3(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def _f1(v) -> str:
    return "-" if v is None else f"{v:,.1f}"


SERVER_LABEL = {"ours": "ours, 1 edge worker", "ours2w": "ours, 2 edge workers", "nginx1w": "nginx, 1 worker",
                "nginx2w": "nginx, 2 workers"}


def _https_lines(results, lat, added, rss, seconds, *, rss2=None, workers_note=None) -> list[str]:
    lines = [f"wrk -t2 -c64 -d{seconds:g}s --latency, median of the rounds; `close` adds "
             "`-H 'Connection: close'` (a TLS handshake and a new connection per request). "
             "TLS certificate: lab CA, EC P-256, both sides. CPU: us of CPU (utime+stime from /proc, "
             "the whole process tree: every edge worker, nginx master+workers) per request over the timed "
             "run; wrk's from its rusage. `bottleneck`: the process with the highest share of a core.", "",
             "| variant | server | req/s (median) | runs | p50 ms | p99 ms | errors | edge or proxy us/req | "
             "agent us/req | upstream us/req | wrk us/req | server side us/req | bottleneck (share of a core) | "
             "other work (cores) |",
             "|---|---|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---|---:|"]
    for v, per in results.items():
        for who, st in per.items():
            rps = "-" if st["rps"] is None else f"{st['rps']:,.0f}"
            cpu = st.get("cpu_us_per_request", {})
            front = cpu.get("edge", cpu.get("nginx proxy"))
            server = [x for k, x in cpu.items() if k not in (CLIENT, OTHER) and x is not None]
            other = st.get("cpu_share", {}).get(OTHER)
            bn = st.get("bottleneck")
            bn_text = "-" if bn is None else f"{bn} ({st['cpu_share'][bn]:.0%})"
            lines.append(f"| {v} | {SERVER_LABEL.get(who, who)} | {rps} | "
                         f"{', '.join(f'{x:,.0f}' for x in st['rps_runs'])} | "
                         f"{_f3(st['latency_p50_ms'])} | {_f3(st['latency_p99_ms'])} | {st['errors']} | "
                         f"{_f1(front)} | {_f1(cpu.get('agent'))} | {_f1(cpu.get('upstream'))} | "
                         f"{_f1(cpu.get(CLIENT))} | {_f1(sum(server) if server else None)} | {bn_text} | "
                         f"{'-' if other is None else f'{other:.2f}'} |")
    lines += ["", "Sequential requests (wrk -t1 -c1), p50: " + ", ".join(
        f"{k} {v['latency_p50_ms']:.3f} ms" for k, v in lat.items()) + "; added over the bare upstream: "
        + ", ".join(f"{k} {v:+.3f} ms" for k, v in added.items()) + "."]
    if rss:
        lines.append("Peak RSS (VmHWM) after the HTTPS runs, 1 edge worker: " + _rss_text(rss) + ".")
    if rss2:
        lines.append("Peak RSS (VmHWM) after the HTTPS runs, 2 edge workers: " + _rss_text(rss2) + ".")
    if workers_note:
        lines.append(f"Workers: {workers_note}.")
    return lines


def _rss_text(rss: dict) -> str:
    return ", ".join(f"{k} {v['max'] / 1024:.1f} MiB" + (f" (sum of {v['procs']} processes "
                                                         f"{v['sum'] / 1024:.1f} MiB)" if v["procs"] > 1 else "")
                     for k, v in rss.items())


SCALING_CORES = (1, 2, 4, 8, 16)


def scaling_lines(results: dict, machine_cores: int) -> list[str]:
    """The scaling model of docs/bench.md applied to this run's 100 B CPU figures: this machine (every
    process, wrk too, on `machine_cores` shared cores; a process with W workers uses at most W cores),
    checked against the measured req/s, and N dedicated edge cores (agent and upstream elsewhere, as at
    a customer's)."""
    small = results.get("small", {})
    lines = ["Scaling model (docs/bench.md), from the 100 B CPU per request above:", "",
             "| server | measured req/s | predicted here | limited by | edge-side us/req | "
             + " | ".join(f"edge cores: {n}" for n in SCALING_CORES) + " |",
             "|---|---:|---:|---|---:|" + "---:|" * len(SCALING_CORES)]
    for who, workers in (("ours", 1), ("ours2w", 2), ("nginx1w", 1), ("nginx2w", 2)):
        st = small.get(who)
        if not st or not st.get("cpu_us_per_request"):
            continue
        us = {k: v for k, v in st["cpu_us_per_request"].items() if v and k != OTHER}
        front = "edge" if "edge" in us else "nginx proxy"
        if front not in us:
            continue
        # The cores left: the machine's, less what other work took meanwhile (another bench, a build...).
        left = max(0.1, machine_cores - (st.get("cpu_share", {}).get(OTHER) or 0.0))
        here_shared = shared_cores_rps(us, left)
        here_cap = scaling_model({front: us[front]}, {front: min(workers, machine_cores)})
        here = min(x for x in (here_shared, here_cap["rps"]) if x is not None)
        limit = (f"all processes on the {left:.1f} cores left" if here == here_shared
                 else f"{front} ({workers} worker(s))")
        cells = []
        for n in SCALING_CORES:
            cores = {front: n}
            edge_side = {front: us[front]}
            if "agent" in us:   # one agent process per endpoint: it has one core of its own
                edge_side["agent"] = us["agent"]
                cores["agent"] = 1
            m = scaling_model(edge_side, cores)
            cells.append(f"{m['rps']:,.0f}" + (" (agent)" if m["limit"] == "agent" else ""))
        lines.append(f"| {SERVER_LABEL.get(who, who)} | {_f0(st['rps'])} | {here:,.0f} | {limit} | "
                     f"{us[front]:.1f} | " + " | ".join(cells) + " |")
    lines += ["", "Predicted here: min(cores left x 10^6 / sum of every process's us per request, wrk's included "
              "(cores left: the machine's less the other work's share during the runs); "
              "workers x 10^6 / the edge's or proxy's us). N edge cores: N x 10^6 / its us per request, "
              "bounded by one agent process on a core of its own (10^6 / agent us); the upstream and the "
              "client elsewhere."]
    return lines


def _f0(v) -> str:
    return "-" if v is None else f"{v:,.0f}"


def bottleneck_lines(results: dict, profiles: dict | None = None, n: int = 3) -> list[str]:
    """Per figure (variant) and server: the process with the highest CPU share; with --profile, the top
    self-time functions of our bottleneck process (the edge or the agent; others are not Python)."""
    lines = ["Bottleneck per figure (process with the highest share of a core, median of the runs):", ""]
    for v, per in results.items():
        parts = []
        for who, st in per.items():
            bn = st.get("bottleneck")
            if bn is None:
                continue
            text = f"{SERVER_LABEL.get(who, who)}: **{bn}** {st['cpu_share'][bn]:.0%}"
            got = ((profiles or {}).get(v) or {}) if who == "ours" else {}
            # Our bottleneck's profile; when that is not Python (wrk, the upstream), the edge's.
            name, prof = (bn, got.get(bn)) if got.get(bn) else ("edge", got.get("edge"))
            if prof and prof.get("self"):
                text += (f" (py-spy self{'' if name == bn else ' of the edge'}: "
                         + ", ".join(f"`{f}` {pct}%" for f, pct in prof["self"][:n]) + ")")
            parts.append(text)
        if parts:
            lines.append(f"- {VARIANT_LABEL.get(v, v)}: " + "; ".join(parts))
    return lines


def _bulk(ctx, procs: Procs, certs: dict, ours, missing: str | None) -> tuple[list[dict], dict]:
    nbytes = (256 if ctx.quick else 1024) * 1024 * 1024
    runs = 1 if ctx.quick else 3
    ctx.log(f"tunnel: bulk {nbytes >> 20} MiB, {runs} run(s) per path; starting sources and nginx stream relays")
    src = procs.start("bulk-source", [sys.executable, "-m", "bench.bulk", "serve", "--port", str(BULK_PLAIN_PORT),
                                      "--idle", "900"], cwd=ctx.repo)
    tsrc = procs.start("bulk-source-tls", [sys.executable, "-m", "bench.bulk", "serve", "--port",
                                           str(BULK_TLS_PORT), "--tls", certs["cert"], certs["key"], "--idle", "900"],
                       cwd=ctx.repo)
    wait_tcp("127.0.0.1", BULK_PLAIN_PORT, src)
    wait_tcp("127.0.0.1", BULK_TLS_PORT, tsrc)
    b = _nginx(procs, ctx, "nginx-relay-b", stream_relay_conf(
        os.path.join(ctx.tmp, "nginx-relay-b"), RELAY_B_PORT, BULK_PLAIN_PORT,
        listen_tls=(certs["cert"], certs["key"])))
    a = _nginx(procs, ctx, "nginx-relay-a", stream_relay_conf(
        os.path.join(ctx.tmp, "nginx-relay-a"), RELAY_A_PORT, RELAY_B_PORT, connect_tls=True))
    wait_tcp("127.0.0.1", RELAY_B_PORT, b)
    wait_tcp("127.0.0.1", RELAY_A_PORT, a)
    paths = {"nginx_relays": dict(port=RELAY_A_PORT, trees={"nginx relay A": a.pid, "nginx relay B": b.pid,
                                                            "source": src.pid}),
             "plain_tcp": dict(port=BULK_PLAIN_PORT, trees={"source": src.pid}),
             "tls_alone": dict(port=BULK_TLS_PORT, tls=certs["ca_cert"], sni=BULK_NAME, trees={"source": tsrc.pid})}
    if ours is not None:
        port = ours.start_tcp(BULK_PLAIN_PORT)
        ctx.log(f"tunnel: ours: edge TCP endpoint port {port} -> agent -> :{BULK_PLAIN_PORT}")
        paths = {"ours": dict(port=port, trees={"edge": ours.edge.pid, "agent": ours.agents["tcp"].pid,
                                                "source": src.pid}), **paths}
    res: dict = {k: [] for k in paths}
    for i in range(runs):
        for who in (list(paths) if i % 2 == 0 else list(reversed(paths))):
            if ours is not None:
                ours.check_alive()
            st = _fetch(**paths[who], nbytes=nbytes)
            res[who].append(st)
            ctx.log(f"tunnel: run {i + 1}/{runs} {who:12s} {st['mbps']:>8,.0f} MB/s  ({st['seconds']:.2f} s)  "
                    "CPU us/MB " + " ".join(f"{k.split()[0]} {v:.0f}" for k, v in st["cpu"]["per_unit"].items()))
    med = {k: median(x["mbps"] for x in v) for k, v in res.items()}
    cpu = {k: aggregate_cpu([x["cpu"] for x in v], key="cpu_us_per_mb") for k, v in res.items()}
    rss = ours.peak_rss() if ours is not None else None
    prof: dict = {}
    if getattr(ctx, "profile", False) and ours is not None:
        from bench.profile import Sampler
        sampler = Sampler(ctx.tmp)
        est = max(2.0, 2.0 * nbytes / 1e6 / max(med["ours"] or 1.0, 1.0))
        ctx.log(f"tunnel: profiling edge and agent during one more transfer (not scored)")
        sampler.start("gslb edge, bulk", ours.edge.pid, est)
        sampler.start("gslb agent (tcp), bulk", ours.agents["tcp"].pid, est)
        _fetch(port=paths["ours"]["port"], nbytes=nbytes)
        got = sampler.finish()
        ctx.profiles.update(got)
        prof = {"edge": got.get("gslb edge, bulk"), "agent": got.get("gslb agent (tcp), bulk")}
    if rss:
        ctx.log("tunnel: peak RSS (VmHWM) " + ", ".join(f"{k} {v['max'] / 1024:.1f} MiB" for k, v in rss.items()))
    lines = [f"{nbytes >> 20} MiB per transfer, one stream, payload from memory; MB = 10^6 bytes; median of {runs}. "
             "CPU: us of CPU per MB moved (utime+stime of each process tree over the transfer; the fetch "
             "client's from its rusage, its interpreter start included).",
             "", "| path | MB/s (median) | runs | CPU us/MB per process | bottleneck (share of a core) |",
             "|---|---:|---|---|---|"]
    labels = {"ours": "edge -> tunnel -> agent (ours)", "nginx_relays": "two nginx stream relays, TLS hop (peer)",
              "plain_tcp": "plain TCP copy (ceiling)", "tls_alone": "one Python TLS connection alone"}
    for k, v in res.items():
        runs_text = ", ".join(f"{x['mbps']:,.0f}" for x in v)
        c = cpu[k]
        per_text = ", ".join(f"{p} {_f1(u)}" for p, u in c["cpu_us_per_mb"].items())
        bn = c["bottleneck"]
        bn_text = "-" if bn is None else f"{bn} ({c['cpu_share'][bn]:.0%})"
        if k == "ours" and bn in prof and prof[bn] and prof[bn].get("self"):
            bn_text += "; py-spy self: " + ", ".join(f"`{f}` {pct}%" for f, pct in prof[bn]["self"][:3])
        lines.append(f"| {labels[k]} | {med[k]:,.0f} | {runs_text} | {per_text} | {bn_text} |")
    if rss:
        lines.append("")
        lines.append("Peak RSS (VmHWM) after bulk: " + _rss_text(rss) + ".")
    d = {"title": "Tunnel bulk", "bytes": nbytes, "runs": res, "median_mbps": med, "cpu": cpu, "peak_rss_kib": rss,
         "lines": lines}
    extra = []
    if "ours" in cpu:
        extra.append("CPU us/MB: " + ", ".join(
            f"{p} {u:,.0f}" for who in ("ours", "nginx_relays") for p, u in cpu[who]["cpu_us_per_mb"].items()
            if u is not None and p not in ("source", "bulk fetch (client)", OTHER)))
    if rss:
        extra.append("peak RSS " + ", ".join(f"{k} {v['max'] / 1024:.1f} MiB" for k, v in rss.items()))
    row = figure_row("tunnel_bulk_mbps", med.get("ours"), med["nginx_relays"],
                     note="; ".join(([missing] if missing else []) + extra) or None)
    return [row], d
