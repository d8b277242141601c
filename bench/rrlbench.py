"""RRL bench: `gslb dns` with response rate limiting off and on, qps and server CPU per query.

Run inside a network namespace of its own, on its loopback only:

    unshare -n sh -c 'ip link set lo up && .venv/bin/python -m bench.rrlbench --seconds 5'

Three servers from one copy of examples/dns.toml (one worker each):

- `off`: no `[rrl]` (the default);
- `on`: `[rrl]` on with a rate no client reaches (1,000,000/s), so every UDP
  reply goes through its bucket and none is limited: the cost RRL adds to
  normal traffic;
- `flood`: `[rrl]` on at 20/s (slip 2), flooded by 10,000 identical queries
  at 5,000 a second from 8 source ports (tests/integration/rrl_flood.py):
  answers per second full, slipped (TC=1) and dropped, and the CPU a
  limited query costs; the same flood at `off` for comparison.

`off` and `on` take turns (`--rounds`, each a `dnsperf -c 4 -T 2 -l SECONDS`
run of the warm mix: every reply from the reply cache, the cheapest path, so
RRL's share is largest). Reported: qps, and the server's CPU seconds
(utime+stime from /proc) per completed query, medians over the rounds.
Bounded: every dnsperf run has -l and a timeout, the flood its count.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

from bench.dnssecbench import WARM, cpu_seconds, in_private_netns
from bench.parse import parse_dnsperf
from bench.procs import run_bounded, wait_dns

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = "127.0.0.1"
FLOOD = os.path.join(REPO, "tests", "integration", "rrl_flood.py")
PORTS = {"off": 5320, "on": 5321, "flood": 5322}
RRL = {"off": "", "on": "\n[rrl]\nenabled = true\nresponses_per_second = 1000000\n",
       "flood": "\n[rrl]\nenabled = true\nresponses_per_second = 20\n"}


def start(config: str, port: int, log: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-m", "gslb.cli", "dns", "--config", config,
                          "--listen", f"{HOST}:{port}", "--control", config + ".ctl"],
                         cwd=REPO, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    wait_dns(HOST, port, "lab.test")
    return p


def dnsperf(port: int, path: str, seconds: float, pid: int) -> dict:
    argv = ["dnsperf", "-s", HOST, "-p", str(port), "-d", path, "-c", "4", "-T", "2",
            "-l", f"{seconds:g}", "-e"]
    before = cpu_seconds(pid)
    r = run_bounded(argv, timeout=seconds + 30)
    cpu = cpu_seconds(pid) - before
    if r.returncode != 0:
        raise RuntimeError(f"dnsperf failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    stats = parse_dnsperf(r.stdout)
    return {"qps": round(stats["qps"]), "completed": stats["completed"], "lost": stats["lost"],
            "cpu_us_per_query": round(cpu / max(1, stats["completed"]) * 1e6, 2)}


def flood(port: int, pid: int, count: int = 10_000, qps: int = 5_000) -> dict:
    before = cpu_seconds(pid)
    r = subprocess.run([sys.executable, FLOOD, HOST, str(port), "--count", str(count), "--qps", str(qps),
                        "--sockets", "8", "--linger", "1.0"], capture_output=True, text=True, timeout=120)
    cpu = cpu_seconds(pid) - before
    if r.returncode != 0:
        raise RuntimeError(f"flood failed: {r.stderr[-500:]}")
    got = json.loads(r.stdout)
    secs = max(got["seconds"], 1e-9)
    got.update(full_per_s=round(got["full"] / secs, 1), tc_per_s=round(got["tc"] / secs, 1),
               dropped_per_s=round(got["missing"] / secs, 1),
               cpu_us_per_query=round(cpu / count * 1e6, 2))
    return got


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="example: unshare -n sh -c 'ip link set lo up && "
                                        ".venv/bin/python -m bench.rrlbench --seconds 5'")
    ap.add_argument("--seconds", type=float, default=5.0, help="each dnsperf run (default 5, max 60)")
    ap.add_argument("--rounds", type=int, default=3, help="off/on turns (default 3, max 10)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if not 1 <= args.seconds <= 60 or not 1 <= args.rounds <= 10:
        ap.error("--seconds must be 1-60, --rounds 1-10")
    if not in_private_netns():
        print("rrlbench: run it in a namespace of its own: unshare -n sh -c "
              "'ip link set lo up && python -m bench.rrlbench'", file=sys.stderr)
        return 2
    d = tempfile.mkdtemp(prefix="rrlbench-")
    procs: dict[str, subprocess.Popen] = {}
    try:
        base = open(os.path.join(REPO, "examples", "dns.toml")).read()
        shutil.copy(os.path.join(REPO, "examples", "lab.mmdb"), os.path.join(d, "lab.mmdb"))
        warm = os.path.join(d, "warm.txt")
        with open(warm, "w") as fh:
            fh.write("\n".join(WARM) + "\n")
        for name, extra in RRL.items():
            conf = os.path.join(d, f"{name}.toml")
            with open(conf, "w") as fh:
                fh.write(base + extra)
            procs[name] = start(conf, PORTS[name], os.path.join(d, f"{name}.log"))
        runs: dict[str, list[dict]] = {"off": [], "on": []}
        for rnd in range(args.rounds):
            for name in (("off", "on") if rnd % 2 == 0 else ("on", "off")):
                runs[name].append(dnsperf(PORTS[name], warm, args.seconds, procs[name].pid))
        out: dict = {}
        for name, rs in runs.items():
            out[name] = {"qps_median": statistics.median(r["qps"] for r in rs),
                         "cpu_us_per_query_median": statistics.median(r["cpu_us_per_query"] for r in rs),
                         "runs": rs}
        out["on/off"] = {"qps": round(out["on"]["qps_median"] / max(1, out["off"]["qps_median"]), 3),
                         "cpu_per_query": round(out["on"]["cpu_us_per_query_median"]
                                                / max(1e-9, out["off"]["cpu_us_per_query_median"]), 3)}
        out["flood"] = flood(PORTS["flood"], procs["flood"].pid)
        # The same paced flood at the server without RRL: what a query costs at that pace
        # (at 5,000 a second the loop wakes for nearly every datagram).
        out["flood_off"] = flood(PORTS["off"], procs["off"].pid)
        if args.json:
            print(json.dumps(out, indent=1))
        else:
            for k, v in out.items():
                print(f"{k:8} {v}")
        return 0
    finally:
        for p in procs.values():
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
