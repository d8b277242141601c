"""DNSSEC bench: signed versus unsigned `gslb dns`, qps and server CPU per query (dnsperf).

Run inside a network namespace of its own, on its loopback only:

    unshare -n sh -c 'ip link set lo up && .venv/bin/python -m bench.dnssecbench --seconds 5'

Two servers from one copy of examples/dns.toml, one of them with a CSK
(`gslb dns keygen`). Mixes, each `dnsperf -c 4 -T 2 -l SECONDS`:

- `warm`: a fixed set of names (GSLB A/AAAA, CNAME, apex SOA/MX, NXDOMAIN,
  NODATA), so after the first round every reply, signed or not, comes from the
  reply cache: the steady state of a busy server;
- `cold`: every query a new name under `*.app` (unique, never cached), so every
  DO query is signed on the spot: the worst case.

Each mix runs unsigned (EDNS, no DO), signed with DO (`-D`), and, for warm,
signed without DO. Reported: qps, and the server's CPU seconds (utime+stime
from /proc) per completed query, so the comparison does not depend on how busy
the client was. Bounded: every dnsperf run has -l and a timeout.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

from bench.parse import parse_dnsperf
from bench.procs import run_bounded, wait_dns

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = "127.0.0.1"

WARM = ["demo.app.lab.test A", "demo.app.lab.test AAAA", "connect.lab.test A", "www.lab.test A",
        "status.lab.test A", "lab.test SOA", "lab.test MX", "lab.test DNSKEY", "mail.lab.test A",
        "nothere.lab.test A", "mail.lab.test TXT", "app.lab.test A"]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def in_private_netns() -> bool:
    """Only loopback here: the bench sends nothing anywhere else."""
    import socket
    return [name for _, name in socket.if_nameindex()] == ["lo"]  # this netns (not sysfs)


def start(config: str, port: int, log: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-m", "gslb.cli", "dns", "--config", config,
                          "--listen", f"{HOST}:{port}", "--control", config + ".ctl"],
                         cwd=REPO, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    wait_dns(HOST, port, "lab.test")
    return p


def dnsperf(port: int, path: str, seconds: float, do: bool, pid: int) -> dict:
    argv = ["dnsperf", "-s", HOST, "-p", str(port), "-d", path, "-c", "4", "-T", "2",
            "-l", f"{seconds:g}", "-D" if do else "-e"]
    before = cpu_seconds(pid)
    r = run_bounded(argv, timeout=seconds + 30)
    cpu = cpu_seconds(pid) - before
    if r.returncode != 0:
        raise RuntimeError(f"dnsperf failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    stats = parse_dnsperf(r.stdout)
    return {"qps": round(stats["qps"]), "completed": stats["completed"], "lost": stats["lost"],
            "cpu_s": round(cpu, 2),
            "cpu_us_per_query": round(cpu / max(1, stats["completed"]) * 1e6, 1),
            "rcodes": stats["rcodes"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="example: unshare -n sh -c 'ip link set lo up && "
                                        ".venv/bin/python -m bench.dnssecbench --seconds 5'")
    ap.add_argument("--seconds", type=float, default=5.0, help="each dnsperf run (default 5, max 60)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if not 1 <= args.seconds <= 60:
        ap.error("--seconds must be 1-60")
    if not in_private_netns():
        print("dnssecbench: run it in a namespace of its own: unshare -n sh -c "
              "'ip link set lo up && python -m bench.dnssecbench'", file=sys.stderr)
        return 2
    d = tempfile.mkdtemp(prefix="dnssecbench-")
    procs: list[subprocess.Popen] = []
    try:
        base = open(os.path.join(REPO, "examples", "dns.toml")).read()
        shutil.copy(os.path.join(REPO, "examples", "lab.mmdb"), os.path.join(d, "lab.mmdb"))
        plain = os.path.join(d, "plain.toml")
        with open(plain, "w") as fh:
            fh.write(base)
        subprocess.run([sys.executable, "-m", "gslb.cli", "dns", "keygen", "--out",
                        os.path.join(d, "csk.pem")], cwd=REPO, check=True, capture_output=True, timeout=60)
        signed = os.path.join(d, "signed.toml")
        with open(signed, "w") as fh:
            fh.write(base + '\n[[dnssec.keys]]\nfile = "csk.pem"\n')
        warm = os.path.join(d, "warm.txt")
        with open(warm, "w") as fh:
            fh.write("\n".join(WARM) + "\n")
        cold = os.path.join(d, "cold.txt")
        with open(cold, "w") as fh:  # more names than a run can send: none repeats
            fh.write("".join(f"n{i}.app.lab.test A\n" for i in range(int(args.seconds * 60_000))))
        p_plain = start(plain, 5310, os.path.join(d, "plain.log"))
        procs.append(p_plain)
        p_signed = start(signed, 5311, os.path.join(d, "signed.log"))
        procs.append(p_signed)
        runs = {}
        for mix, path in (("warm", warm), ("cold", cold)):
            runs[f"{mix}/unsigned"] = dnsperf(5310, path, args.seconds, False, p_plain.pid)
            runs[f"{mix}/signed+DO"] = dnsperf(5311, path, args.seconds, True, p_signed.pid)
            if mix == "warm":
                runs[f"{mix}/signed-noDO"] = dnsperf(5311, path, args.seconds, False, p_signed.pid)
        for mix in ("warm", "cold"):
            u, s = runs[f"{mix}/unsigned"], runs[f"{mix}/signed+DO"]
            runs[f"{mix}/ratio"] = {"cpu_per_query": round(s["cpu_us_per_query"] / u["cpu_us_per_query"], 2),
                                    "qps": round(s["qps"] / max(1, u["qps"]), 2)}
        if args.json:
            print(json.dumps(runs, indent=1))
        else:
            for k, v in runs.items():
                print(f"{k:20} {v}")
        return 0
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
