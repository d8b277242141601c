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
import sys
import threading
import time

from bench import ours_edge
from bench.nginx import stream_relay_conf, tls_proxy_conf, upstream_conf, write_bodies
from bench.parse import parse_wrk
from bench.procs import Procs, peak_rss_kib, run_bounded, wait_tcp
from bench.summary import figure_row, median, unavailable_row

UPSTREAM_PORT = 8080
NGINX2_PORT = 8443
NGINX1_PORT = 8444
BULK_PLAIN_PORT = 9000
BULK_TLS_PORT = 9100
RELAY_A_PORT = 9001
RELAY_B_PORT = 9002
HTTPS_NAME = "demo.app.lab.test"
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


def _wrk(url: str, seconds: float, *, threads: int = 2, conns: int = 64, close: bool = False) -> dict:
    argv = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds:g}s", "--latency", "--timeout", "5s"]
    if close:
        argv += ["-H", "Connection: close"]
    argv.append(url)
    r = run_bounded(argv, timeout=seconds + 30)
    if r.returncode != 0:
        raise RuntimeError(f"wrk failed ({r.returncode}): {r.stderr.strip()[-400:]}")
    out = parse_wrk(r.stdout)
    errs = sum(out["socket_errors"].values())
    if not out["requests"] or out["non_2xx"] > 0.01 * out["requests"] or errs > 0.01 * out["requests"]:
        # A run where more than 1 % failed measures failure, not service: no figure from it.
        out["invalid"] = (f"{out['non_2xx']} non-2xx of {out['requests']} responses, "
                          f"socket errors {out['socket_errors']}")
    return out


def _fetch(port: int, nbytes: int, *, tls: str | None = None, sni: str | None = None) -> dict:
    argv = [sys.executable, "-m", "bench.bulk", "fetch", "--port", str(port), "--bytes", str(nbytes),
            "--timeout", "120"]
    if tls:
        argv += ["--tls", tls, "--sni", sni or BULK_NAME]
    r = run_bounded(argv, timeout=150, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        out = json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise RuntimeError(f"bulk fetch from :{port} failed: {r.stderr.strip()[-400:]}") from None
    if not out.get("complete"):
        raise RuntimeError(f"bulk fetch from :{port} got {out['bytes']} of {nbytes} bytes: {r.stderr.strip()[-300:]}")
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

    ours = ours_edge.OursEdge(ctx, procs, certs)
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


def _https(ctx, procs: Procs, certs: dict, root: str, ours, missing: str | None) -> tuple[list[dict], dict]:
    seconds = 3.0 if ctx.quick else 10.0
    lat_seconds = 1.0 if ctx.quick else 5.0
    ctx.log("edge: starting the nginx upstream and the nginx TLS proxies (2 workers, 1 worker)")
    up = _nginx(procs, ctx, "nginx-upstream", upstream_conf(os.path.join(ctx.tmp, "nginx-upstream"),
                                                            UPSTREAM_PORT, root, workers=1))
    wait_tcp("127.0.0.1", UPSTREAM_PORT, up)
    servers = {}
    for name, port, workers in (("nginx2w", NGINX2_PORT, 2), ("nginx1w", NGINX1_PORT, 1)):
        p = _nginx(procs, ctx, f"nginx-proxy-{workers}w",
                   tls_proxy_conf(os.path.join(ctx.tmp, f"nginx-proxy-{workers}w"), port, UPSTREAM_PORT,
                                  certs["cert"], certs["key"], workers, HTTPS_NAME))
        wait_tcp("127.0.0.1", port, p)
        servers[name] = f"https://{HTTPS_NAME}:{port}"
    if ours is not None:
        ctx.log("edge: starting gslb edge and gslb agent (http -> the nginx upstream)")
        servers["ours"] = ours.start_http(UPSTREAM_PORT, HTTPS_NAME)
        ctx.log(f"edge: ours serves {servers['ours']}")

    variants = (("small", "/small", False), ("big", "/big", False), ("close", "/small", True))
    rounds = 1 if ctx.quick else 3
    runs: dict = {v[0]: {} for v in variants}
    order = [k for k in ("ours", "nginx2w", "nginx1w") if k in servers]
    for rnd in range(rounds):
        for vi, (vname, path, close) in enumerate(variants):
            seq = order if (vi + rnd) % 2 == 0 else list(reversed(order))  # alternate who goes first
            for who in seq:
                if ours is not None:
                    ours.check_alive()
                st = _wrk(servers[who] + path, seconds, close=close)
                runs[vname].setdefault(who, []).append(st)
                ctx.log(f"edge: round {rnd + 1}/{rounds} {vname:5s} {who:7s} {st['rps']:>9,.0f} req/s  "
                        f"p50 {st['latency_p50_ms']:.3f} ms  p99 {st['latency_p99_ms']:.3f} ms"
                        + (f"  INVALID: {st['invalid']}" if "invalid" in st else ""))
    results = {v: {who: aggregate_wrk(rs) for who, rs in per.items()} for v, per in runs.items()}

    # Added latency: sequential requests (one connection, one at a time), p50, versus the bare upstream.
    lat = {}
    for who, url in [("upstream", f"http://127.0.0.1:{UPSTREAM_PORT}")] + [(k, servers[k]) for k in order]:
        st = _wrk(url + "/small", lat_seconds, threads=1, conns=1)
        lat[who] = st
        ctx.log(f"edge: sequential {who:8s} p50 {st['latency_p50_ms']:.3f} ms  ({st['rps']:,.0f} req/s)")
    added = {k: lat[k]["latency_p50_ms"] - lat["upstream"]["latency_p50_ms"] for k in order
             if "invalid" not in lat[k] and "invalid" not in lat["upstream"]}

    abuse_row, abuse = _abuse_cost(ctx, procs, certs, seconds, missing if ours is None else None)

    rss = ours.peak_rss() if ours is not None else None
    if getattr(ctx, "profile", False) and ours is not None:
        from bench.profile import Sampler
        sampler = Sampler(ctx.tmp)
        for vname, path in (("100 B", "/small"), ("64 KiB", "/big")):
            ctx.log(f"edge: profiling edge and agent, {vname} keep-alive ({seconds:g} s, not scored)")
            sampler.start(f"gslb edge, HTTPS {vname}", ours.edge.pid, seconds)
            sampler.start(f"gslb agent (http), HTTPS {vname}", ours.agents["http"].pid, seconds)
            _wrk(servers["ours"] + path, seconds)
            ctx.profiles.update(sampler.finish())
    d = {"title": "Edge HTTPS", "wrk": results, "sequential": lat, "added_p50_ms": added, "peak_rss_kib": rss,
         "abuse_cpu": abuse, "lines": _https_lines(results, lat, added, rss, seconds) + abuse.get("lines", [])}

    def val(v, who):
        st = results[v].get(who)
        return None if st is None else st["rps"]

    def note_for(v, *whos):
        bad = [f"{w}: invalid run(s) left out ({results[v][w]['invalid'][:160]})" for w in whos
               if w in results[v] and "invalid" in results[v][w]]
        return "; ".join(([missing] if missing else []) + bad) or None

    rows = [
        figure_row("edge_https_rps", val("small", "ours"), val("small", "nginx2w"),
                   note=note_for("small", "ours", "nginx2w")),
        figure_row("edge_https_64k_rps", val("big", "ours"), val("big", "nginx2w"),
                   note=note_for("big", "ours", "nginx2w")),
        figure_row("edge_https_rps_1w", val("small", "ours"), val("small", "nginx1w"),
                   note=note_for("small", "ours", "nginx1w")),
        figure_row("edge_https_close_rps", val("close", "ours"), val("close", "nginx2w"),
                   note=note_for("close", "ours", "nginx2w")),
        figure_row("edge_p50_added_ms", added.get("ours"), added.get("nginx1w"), note=missing),
        abuse_row,
    ]
    return rows, d


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
    """utime + stime of a process (proc(5): fields 14 and 15, clock ticks)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
                                   extra=extra)
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
    """Median over the valid runs of one variant and server; invalid runs are kept aside, never averaged in."""
    valid = [r for r in runs if "invalid" not in r]
    out = {
        "rps": median(r["rps"] for r in valid),
        "latency_p50_ms": median(r["latency_p50_ms"] for r in valid),
        "latency_p99_ms": median(r["latency_p99_ms"] for r in valid),
        "rps_runs": [round(r["rps"], 1) for r in runs],
        "errors": sum(sum(r["socket_errors"].values()) + r["non_2xx"] for r in runs),
    }
    if len(valid) < len(runs):
        out["invalid"] = "; ".join(r["invalid"] for r in runs if "invalid" in r)
    if not valid:
        out["all_invalid"] = True
    return out


def _f3(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def _https_lines(results, lat, added, rss, seconds) -> list[str]:
    lines = [f"wrk -t2 -c64 -d{seconds:g}s --latency, median of the rounds; `close` adds "
             "`-H 'Connection: close'` (a TLS handshake and a new connection per request). "
             "TLS certificate: lab CA, EC P-256, both sides.", "",
             "| variant | server | req/s (median) | runs | p50 ms | p99 ms | errors |",
             "|---|---|---:|---|---:|---:|---|"]
    for v, per in results.items():
        for who, st in per.items():
            rps = "-" if st["rps"] is None else f"{st['rps']:,.0f}"
            lines.append(f"| {v} | {who} | {rps} | {', '.join(f'{x:,.0f}' for x in st['rps_runs'])} | "
                         f"{_f3(st['latency_p50_ms'])} | {_f3(st['latency_p99_ms'])} | {st['errors']} |")
    lines += ["", "Sequential requests (wrk -t1 -c1), p50: " + ", ".join(
        f"{k} {v['latency_p50_ms']:.3f} ms" for k, v in lat.items()) + "; added over the bare upstream: "
        + ", ".join(f"{k} {v:+.3f} ms" for k, v in added.items()) + "."]
    if rss:
        lines.append("Peak RSS (VmHWM) after the HTTPS runs: " + ", ".join(
            f"{k} {v['max'] / 1024:.1f} MiB" for k, v in rss.items()) + ".")
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
    paths = {"nginx_relays": dict(port=RELAY_A_PORT), "plain_tcp": dict(port=BULK_PLAIN_PORT),
             "tls_alone": dict(port=BULK_TLS_PORT, tls=certs["ca_cert"], sni=BULK_NAME)}
    if ours is not None:
        port = ours.start_tcp(BULK_PLAIN_PORT)
        ctx.log(f"tunnel: ours: edge TCP endpoint port {port} -> agent -> :{BULK_PLAIN_PORT}")
        paths = {"ours": dict(port=port), **paths}
    res: dict = {k: [] for k in paths}
    for i in range(runs):
        for who in (list(paths) if i % 2 == 0 else list(reversed(paths))):
            if ours is not None:
                ours.check_alive()
            st = _fetch(**paths[who], nbytes=nbytes)
            res[who].append(st)
            ctx.log(f"tunnel: run {i + 1}/{runs} {who:12s} {st['mbps']:>8,.0f} MB/s  ({st['seconds']:.2f} s)")
    med = {k: median(x["mbps"] for x in v) for k, v in res.items()}
    rss = ours.peak_rss() if ours is not None else None
    if getattr(ctx, "profile", False) and ours is not None:
        from bench.profile import Sampler
        sampler = Sampler(ctx.tmp)
        est = max(2.0, 2.0 * nbytes / 1e6 / max(med["ours"] or 1.0, 1.0))
        ctx.log(f"tunnel: profiling edge and agent during one more transfer (not scored)")
        sampler.start("gslb edge, bulk", ours.edge.pid, est)
        sampler.start("gslb agent (tcp), bulk", ours.agents["tcp"].pid, est)
        _fetch(**paths["ours"], nbytes=nbytes)
        ctx.profiles.update(sampler.finish())
    if rss:
        ctx.log("tunnel: peak RSS (VmHWM) " + ", ".join(f"{k} {v['max'] / 1024:.1f} MiB" for k, v in rss.items()))
    lines = [f"{nbytes >> 20} MiB per transfer, one stream, payload from memory; MB = 10^6 bytes; median of {runs}.",
             "", "| path | MB/s (median) | runs |", "|---|---:|---|"]
    labels = {"ours": "edge -> tunnel -> agent (ours)", "nginx_relays": "two nginx stream relays, TLS hop (peer)",
              "plain_tcp": "plain TCP copy (ceiling)", "tls_alone": "one Python TLS connection alone"}
    for k, v in res.items():
        runs_text = ", ".join(f"{x['mbps']:,.0f}" for x in v)
        lines.append(f"| {labels[k]} | {med[k]:,.0f} | {runs_text} |")
    if rss:
        lines.append("")
        lines.append("Peak RSS (VmHWM, max over each side's processes) after bulk: " + ", ".join(
            f"{k} {v['max'] / 1024:.1f} MiB" for k, v in rss.items()) + ".")
    d = {"title": "Tunnel bulk", "bytes": nbytes, "runs": res, "median_mbps": med, "peak_rss_kib": rss,
         "lines": lines}
    row = figure_row("tunnel_bulk_mbps", med.get("ours"), med["nginx_relays"], note=missing)
    return [row], d
