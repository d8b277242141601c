"""`make bench`: gslb-edge against the peers a user would pick, in the same run.

    python -m bench.run [--quick] [--only dns|edge|tunnel|failover]

Owns: the run as a whole. The outer process checks tools, makes a temporary
directory (``gslbbench-*``) and starts the inner process under
``unshare --net --mount --pid --fork --kill-child --mount-proc``: a network
namespace of the bench's own, where only ``lo`` exists (brought up here), a
private mount namespace in which a hosts file naming the bench's endpoint
names (127.0.0.1) is bind-mounted over /etc/hosts (clients such as wrk send
the name as TLS SNI), and a PID namespace, so that if the inner process dies
every process it started dies with it. The root namespace is never changed:
no address, route, link or firewall rule is added there. The inner process
runs the parts, stops every server by pid in a ``finally``, prints the table
and writes ``bench/results/<timestamp>.json`` and ``.md``. The outer removes
the temporary directory in its ``finally``.

Parts: ``dns`` (bench.dnsbench), ``edge`` and ``tunnel`` (bench.edgebench), ``failover``
(bench.failover). The failover part is the exception to the above: it needs the lab
(``gslb lab up --prefix gslbbf``, namespaces of its own, removed in a ``finally``), so
the OUTER process runs it first, before entering the bench namespace, and hands its
rows to the inner one in ``<tmp>/failover.json``. It sends nothing from the root
namespace either: every dig, curl and agent runs in a lab host (``gslb lab exec``).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from bench.summary import FAILOVER, REQUIRED, complete_summary, render_markdown, render_table, unavailable_row

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "bench", "results")
TOOLS = {"dnsperf": "dnsperf", "gdnsd": "gdnsd", "nginx": "nginx-light", "wrk": "wrk", "dig": "dnsutils",
         "ip": "iproute2", "unshare": "util-linux", "mount": "mount"}
NGINX_STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
HOSTNAMES = ("demo.app.lab.test", "demo2.app.lab.test", "bulk.tcp.lab.test", "connect.lab.test", "lab.test", "upstream.lab.test")
PARTS = ("dns", "edge", "tunnel", "failover")


class Ctx:
    def __init__(self, args: argparse.Namespace, tmp: str) -> None:
        self.args = args
        self.quick = args.quick
        self.tmp = tmp
        self.repo = REPO
        self.t0 = time.monotonic()
        self.dns_workers_from_config = args.dns_workers_from_config
        self.profile = args.profile
        self.profiles: dict = {}

    def log(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {msg}", flush=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="short runs (about a minute in all), same summary keys; failover: 1 round instead of 3")
    p.add_argument("--only", choices=PARTS, action="append",
                   help="run only this part (repeatable); the summary still lists every figure")
    p.add_argument("--dns-config", default=os.path.join(REPO, "examples", "dns.toml"))
    p.add_argument("--geo-table", default=os.path.join(REPO, "examples", "geo-table.toml"))
    p.add_argument("--dns-workers-from-config", action="store_true",
                   help="keep [server] workers from the DNS config (default: drop it, so `gslb dns` "
                        "runs with its own default)")
    p.add_argument("--profile", action="store_true",
                   help="after the scored runs, sample our servers with py-spy during extra runs "
                        "(needs py-spy; the profiles go to the report, the figures are unaffected)")
    p.add_argument("--no-install", action="store_true", help="do not apt-get install missing tools; fail instead")
    p.add_argument("--out", default=RESULTS, help="results directory (default bench/results)")
    p.add_argument("--inside", metavar="TMPDIR", help=argparse.SUPPRESS)
    return p


def check_tools() -> list[str]:
    missing = []
    for cmd, pkg in TOOLS.items():
        if shutil.which(cmd) is None and not os.path.exists(f"/usr/sbin/{cmd}"):
            missing.append(pkg)
    if not os.path.exists(NGINX_STREAM_MODULE):
        missing.append("libnginx-mod-stream")
    return sorted(set(missing))


# ---------------------------------------------------------------- outer

def outer(args: argparse.Namespace, argv: list[str]) -> int:
    if os.geteuid() != 0:
        print("bench: needs root (it runs everything in network namespaces of its own)", file=sys.stderr)
        return 1
    missing = check_tools()
    if missing and shutil.which("apt-get") and not args.no_install:
        # `make bench` installs what it needs (Debian packages; apt-get update only when something is missing).
        print(f"bench: installing {' '.join(missing)} with apt-get", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env, check=False)
        missing = check_tools()
    if missing:
        print(f"bench: missing Debian packages: {' '.join(missing)} "
              f"(apt-get install {' '.join(missing)})", file=sys.stderr)
        return 1
    tmp = tempfile.mkdtemp(prefix="gslbbench-")
    if "failover" in (args.only or PARTS):
        try:
            _failover_outer(args, tmp)
        except (KeyboardInterrupt, SystemExit):
            shutil.rmtree(tmp, ignore_errors=True)
            print("bench: interrupted during the failover part (its lab is down)", file=sys.stderr)
            return 130
    child = None
    stopping: list[int] = []
    first_stop: dict[str, float] = {}

    def forward(signum, frame):
        # unshare --fork ignores SIGINT/SIGTERM itself: hand the signal to the bench inside it,
        # which stops its servers in a `finally`. A second signal ends the whole PID namespace.
        stopping.append(signum)
        if child is None or child.poll() is not None:
            return
        if len(stopping) > 1:
            child.kill()  # --kill-child: the PID namespace goes with it
            return
        for pid in _children(child.pid):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with open(os.path.join(tmp, "hosts"), "w") as fh:
            fh.write("127.0.0.1 localhost\n::1 localhost\n")
            for h in HOSTNAMES:
                fh.write(f"127.0.0.1 {h}\n")
        cmd = ["unshare", "--net", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child",
               "--mount-proc", "--", sys.executable, "-m", "bench.run", "--inside", tmp, *argv]
        child = subprocess.Popen(cmd, cwd=REPO)
        while True:
            try:
                rc = child.wait(1.0)
                break
            except subprocess.TimeoutExpired:
                if stopping and time.monotonic() - first_stop.setdefault("t", time.monotonic()) > 30:
                    child.kill()  # the bench did not stop within 30 s: end its PID namespace
        return 130 if stopping else rc
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def _failover_outer(args: argparse.Namespace, tmp: str) -> None:
    """The failover part, in the root namespace's process (the lab's own namespaces do the isolation);
    the result goes to <tmp>/failover.json for the inner process. Ctrl-C/SIGTERM propagate (after
    `gslb lab down` in bench.failover's finally)."""
    from bench import failover

    t0 = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - t0:6.1f}s] {msg}", flush=True)

    out: dict = {"rows": [], "details": {}, "failure": None, "seconds": None}
    try:
        out["rows"], out["details"] = failover.run(args.quick, tmp, log)
        out["seconds"] = round(time.monotonic() - t0, 1)
        errors = out["details"].get("errors")
        if errors:   # figures measured before the error keep their values; the others get its note
            out["failure"] = "; ".join(errors)
    except Exception as exc:
        out["failure"] = f"{type(exc).__name__}: {exc}"
        log(f"failover: FAILED: {out['failure']}")
    with open(os.path.join(tmp, "failover.json"), "w") as fh:
        json.dump(out, fh, default=str)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(x) for x in fh.read().split()]
    except OSError:
        return []


# ---------------------------------------------------------------- inner

def _enter_lab(tmp: str) -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    # A fresh namespace has lo and, with some kernel modules loaded, fallback tunnel devices that stay down.
    links = subprocess.run(["ip", "-o", "link", "show", "up"], capture_output=True, text=True, check=True).stdout
    names = [line.split(":")[1].strip() for line in links.splitlines() if line.strip()]
    if names != ["lo"]:
        raise SystemExit(f"bench: expected a private network namespace with only lo up, found {names}")
    # Private mount namespace (unshare --propagation private): this bind mount is seen by nobody else.
    subprocess.run(["mount", "--bind", os.path.join(tmp, "hosts"), "/etc/hosts"], check=True)


def _on_term(signum, frame):
    raise SystemExit(128 + signum)


def inner(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, _on_term)
    from bench.procs import Procs

    tmp = args.inside
    _enter_lab(tmp)
    ctx = Ctx(args, tmp)
    started = _dt.datetime.now(_dt.timezone.utc)
    parts = args.only or list(PARTS)
    ctx.log(f"bench: {'quick' if args.quick else 'full'} run of {', '.join(parts)} in a private network "
            f"namespace (lo only); temp dir {tmp}")
    load_start = _loadavg()
    ctx.log(f"bench: load average {load_start} (the machine is shared; ratios are paired within the run)")
    if args.profile:
        from bench.profile import py_spy
        if py_spy() is None:
            ctx.log("bench: --profile: py-spy is not installed (pip install py-spy); no profiles this run")
    rows: list[dict] = []
    details: dict = {}
    logs_dir = os.path.join(tmp, "logs")
    os.makedirs(logs_dir, exist_ok=True)
    procs = Procs(logs_dir)
    failures: dict[str, str] = {}
    seconds: dict[str, float] = {}   # wall-clock time of each part, for the final summary line
    t_part = time.monotonic()

    def part_done(name: str) -> None:
        nonlocal t_part
        seconds[name] = round(time.monotonic() - t_part, 1)
        t_part = time.monotonic()
    try:
        if "dns" in parts:
            from bench import dnsbench
            try:
                r, d = dnsbench.run(ctx, procs, args.dns_config, args.geo_table)
                rows += r
                details["dns"] = d
            except Exception as exc:  # a failed part is reported, the others still run
                failures["dns"] = f"{type(exc).__name__}: {exc}"
                ctx.log(f"dns: FAILED: {failures['dns']}")
            finally:
                procs.stop_all()
                part_done("dns")
        if "edge" in parts or "tunnel" in parts:
            from bench import edgebench
            try:
                r, d = edgebench.run(ctx, procs, edge="edge" in parts, tunnel="tunnel" in parts)
                rows += r
                details.update(d)
            except Exception as exc:
                failures["edge"] = f"{type(exc).__name__}: {exc}"
                ctx.log(f"edge: FAILED: {failures['edge']}")
            finally:
                procs.stop_all()
                part_done("+".join(p for p in ("edge", "tunnel") if p in parts))
        if "failover" in parts:   # measured by the outer process (see the module docstring)
            try:
                with open(os.path.join(tmp, "failover.json")) as fh:
                    fo = json.load(fh)
            except (OSError, ValueError) as exc:
                fo = {"rows": [], "details": {}, "failure": f"no result from the outer process: {exc}"}
            rows += fo["rows"]
            if fo.get("seconds") is not None:
                seconds["failover"] = fo["seconds"]
            if fo["details"]:
                details["failover"] = fo["details"]
            if fo.get("failure"):
                failures["failover"] = fo["failure"]
    finally:
        procs.stop_all()

    for part, why in failures.items():
        if part == "failover":
            for key in FAILOVER:
                if not any(r["figure"] == key and r.get("ours") is not None for r in rows):
                    rows[:] = [r for r in rows if r["figure"] != key]
                    rows.append(unavailable_row(key, f"failover part failed: {why.splitlines()[0][:200]}"))
            continue
        for key in REQUIRED:
            if key.startswith(part if part != "edge" else ("edge", "agent", "tunnel")) and not any(
                    r["figure"] == key for r in rows):
                rows.append(unavailable_row(key, f"{part} part failed: {why.splitlines()[0][:200]}"))
    summary = complete_summary(rows, "not measured in this run (--only)")
    result = {
        "started": started.isoformat(timespec="seconds"),
        "quick": args.quick,
        "parts": parts,
        "meta": {
            "host": platform.node(), "cpus": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "mode": "quick" if args.quick else "full",
            "tools": _versions(),
            "loadavg_at_start": load_start,
            "loadavg_at_end": _loadavg(),
            "part_seconds": seconds,
        },
        "summary": summary,
        "details": details,
        "failures": failures,
    }
    if ctx.profiles:
        details["profiles"] = ctx.profiles
    result["sections"] = _sections(details)
    if ctx.profiles:
        from bench.profile import markdown_lines
        result["sections"].append({"title": "Profiles", "lines": markdown_lines(ctx.profiles)})
    os.makedirs(args.out, exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    jpath = os.path.join(args.out, f"{stamp}.json")
    mpath = os.path.join(args.out, f"{stamp}.md")
    with open(jpath, "w") as fh:
        json.dump(result, fh, indent=2, default=str)
        fh.write("\n")
    with open(mpath, "w") as fh:
        fh.write(render_markdown(result))
    print()
    print(render_table(summary))
    print()
    ctx.log(f"bench: wrote {os.path.relpath(jpath, REPO)} and {os.path.relpath(mpath, REPO)}")
    # The failover part ran before this process started (in the outer one): its time is added.
    total = time.monotonic() - ctx.t0 + seconds.get("failover", 0.0)
    ctx.log(f"bench: done in {total:.1f} s ("
            + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items())
            + (f"; failed: {', '.join(failures)}" if failures else "") + ")")
    return 1 if failures else 0


def _loadavg() -> str:
    try:
        with open("/proc/loadavg") as fh:
            return " ".join(fh.read().split()[:3])
    except OSError:
        return "?"


def _versions() -> str:
    out = []
    for argv in (["gdnsd", "-h"], ["dnsperf", "-h"], ["nginx", "-v"], ["wrk", "-v"]):
        name = argv[0]
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            continue
        text = r.stdout + r.stderr
        for line in text.splitlines():
            low = line.lower()
            if "version" in low or line.startswith("wrk "):
                line = line.strip().split(" Copyright")[0]
                out.append(line if name in line.lower() else f"{name} {line}")
                break
    return "; ".join(out)


def _sections(details: dict) -> list[dict]:
    sections = []
    dns = details.get("dns")
    if dns:
        from bench.dnsbench import section_lines as dns_lines
        lines = dns_lines(dns)
        sections.append({"title": "DNS", "lines": lines})
    for key in ("edge", "tunnel"):
        sec = details.get(key)
        if sec and sec.get("lines"):
            sections.append({"title": sec.get("title", key), "lines": sec["lines"]})
    if details.get("failover"):
        from bench.failover import section_lines
        sections.append({"title": "Failover (lab)", "lines": section_lines(details["failover"])})
    return sections


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.inside:
        return inner(args)
    return outer(args, argv)


if __name__ == "__main__":
    sys.exit(main())
