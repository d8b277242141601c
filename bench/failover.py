"""Failover times in the lab (docs/bench.md, "Failover"): DNS withdrawal of a dead PoP and agent failover.

    python -m bench.run --only failover [--quick]

Owns: one lab of the bench's own (prefix ``gslbbf``, state dir
``/run/gslb-lab/gslbbf``), brought up with ``gslb lab up`` and ALWAYS removed
with ``gslb lab down`` in a ``finally`` (also on Ctrl-C / SIGTERM). The part
runs in the bench's outer process, before the bench enters its own namespace
(``bench.run``): the lab builds its namespaces from there, as `make lab` does,
and the inner bench namespace bind-mounts a hosts file that would misroute the
lab's names. Nothing is sent from the root namespace: every dig, curl, the
upstream and the agent run inside lab hosts through ``gslb lab exec``; faults go
through ``gslb lab kill`` / ``gslb lab restart`` (pids the lab recorded).

Per round (3 full, 1 quick), the method of ``tests/integration/test_lab_failover.py``:

(a) DNS withdrawal: SIGKILL a PoP's edge that is not the agent's; from that PoP's
    own client, ``dig @dns1 +subnet=<client /24> bench.app.lab.test A +noall +answer``
    every 0.1 s (the kill waits until that answer is its own PoP with the full 30 s TTL,
    i.e. no health streak under way); seconds from the kill until the answer holds no address of the
    killed PoP (and keeps so for 3 answers). Then ``gslb lab restart`` it and
    time its return to the answers (from the moment its edge is ready again).
(b) Agent failover: SIGKILL the agent's PoP's edge; seconds until the agent
    prints its new ``forwarding`` line, and until curl from a client of another
    region (pinned to its own, live, PoP) gets 200 again and keeps getting it
    (5 in a row). Then restart the PoP and wait until it is back in the answers.

Every loop is bounded in count and time. Processes started here are stopped by pid.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = "gslbbf"
STATE_DIR = f"/run/gslb-lab/{PREFIX}"
NAME = "bench"
HOST = f"{NAME}.app.lab.test"
UP_PORT = 19180
LAB_TOOLS = ("ip", "unbound", "dig", "curl", "etcd", "etcdctl")
# The lab's health checks (netns/render.py): every 1 s, fall 3, rise 2. The agent: heartbeat timeout 15 s.
FALL_S, RISE_S, HEARTBEAT_TIMEOUT_S = 3.0, 2.0, 15.0
DNS_TTL = 30   # the lab's answer TTL (5 while a PoP's health is changing)
VICTIMS = ("eu", "jp", "in", "au")          # DNS withdrawal: a PoP with a client in its city
WATCHERS = ("ap", "jp", "eu", "in", "au")   # agent failover: a client of another region
FIGURE_KEYS = ("dns_withdrawal_s", "dns_return_s", "agent_failover_s", "agent_served_s", "lab_up_s", "lab_down_s")


# ---------------------------------------------------------------- pure parts (tests/test_bench_failover.py)


def parse_short(text: str) -> list[str]:
    """Addresses in `dig +short` output (CNAME targets, comments and errors left out)."""
    out = []
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith(";") or s.endswith("."):
            continue
        if all(c in "0123456789." for c in s) and s.count(".") == 3:
            out.append(s)
        elif ":" in s and all(c in "0123456789abcdefABCDEF:." for c in s):
            out.append(s)
    return out


def parse_answer(text: str) -> tuple[list[str], int | None]:
    """(addresses, lowest TTL) of the A/AAAA records in `dig +noall +answer` output."""
    addrs, ttls = [], []
    for line in text.splitlines():
        f = line.split()
        if line.startswith(";") or len(f) < 5 or f[3] not in ("A", "AAAA"):
            continue
        try:
            ttls.append(int(f[1]))
        except ValueError:
            continue
        addrs += parse_short(f[4])
    return addrs, (min(ttls) if ttls else None)


def steady(sample: Mapping, addrs: Iterable[str], ttl: int = 30) -> bool:
    """The answer holds some of `addrs` with the full TTL: no health streak under way for that PoP
    (the name servers answer with a 5 s TTL while a PoP's health is changing)."""
    return bool(set(sample.get("addrs") or ()) & set(addrs)) and (sample.get("ttl") or 0) >= ttl


def sample_good(sample: Mapping, spec: Mapping) -> bool:
    """Is this probe sample the awaited state? dns: addresses present, none of `absent`
    (withdrawal) or some of `present` (return); http: status 200."""
    if spec["kind"] == "http":
        return str(sample.get("code")) == "200"
    addrs = set(sample.get("addrs") or ())
    if spec.get("absent") is not None:
        return bool(addrs) and not addrs & set(spec["absent"])
    return bool(addrs & set(spec.get("present") or ()))


def settle_time(samples: Sequence[Mapping], t_ref: float, good: Callable[[Mapping], bool],
                stable: int = 1) -> float | None:
    """Seconds from t_ref until the state the samples wait for holds: the end time (t1) of the
    first good sample of the last run of good ones (started at or after t_ref) that is at least
    `stable` long and runs to the end of the samples. None when it never settled."""
    after = [s for s in samples if s["t0"] >= t_ref]
    run_start = None
    n = 0
    for s in after:
        if good(s):
            if run_start is None:
                run_start = s
            n += 1
        else:
            run_start, n = None, 0
    if run_start is None or n < stable:
        return None
    return run_start["t1"] - t_ref


def count_bad(samples: Sequence[Mapping], t_ref: float, good: Callable[[Mapping], bool]) -> tuple[int, int]:
    """(bad, all) samples started at or after t_ref."""
    after = [s for s in samples if s["t0"] >= t_ref]
    return sum(1 for s in after if not good(s)), len(after)


def first_line_after(lines: Iterable[tuple[float, str]], t_ref: float, needle: str) -> float | None:
    """Seconds from t_ref to the first (time, line) at or after t_ref containing needle."""
    for t, line in lines:
        if t >= t_ref and needle in line:
            return t - t_ref
    return None


def stats(values: Iterable[float | None]) -> dict | None:
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return None
    import statistics
    return {"median": statistics.median(vals), "min": vals[0], "max": vals[-1], "n": len(vals)}


def pop_of(status: Mapping, addr: str) -> str | None:
    for h in status["hosts"]:
        if h["role"] == "pop" and addr in h["ipv4"] + h["ipv6"]:
            return h["region"]
    return None


def summary_rows(rounds: Sequence[Mapping], lab_up_s: float | None, lab_down_s: float | None) -> list[dict]:
    """The failover figures: median/min/max over the rounds (peer and ratio null: no peer)."""
    from bench.summary import failover_row

    per = {
        "dns_withdrawal_s": [r.get("withdrawal_s") for r in rounds],
        "dns_return_s": [r.get("return_s") for r in rounds],
        "agent_failover_s": [r.get("rebind_s") for r in rounds],
        "agent_served_s": [r.get("served_s") for r in rounds],
        "lab_up_s": [lab_up_s],
        "lab_down_s": [lab_down_s],
    }
    return [failover_row(k, v) for k, v in per.items()]


def section_lines(details: Mapping) -> list[str]:
    lines = [f"Lab `{details.get('prefix', PREFIX)}` ({details.get('hosts', '?')} hosts): up "
             f"{_s(details.get('lab_up_s'))} s to ready (wall clock of `gslb lab up`; the lab's own "
             f"up-to-first-answer {_s(details.get('lab_up_first_answer_s'))} s), down "
             f"{_s(details.get('lab_down_s'))} s. Agent `{HOST}` first bound at "
             f"pop-{details.get('agent_first_pop', '?')} after {_s(details.get('agent_first_bind_s'))} s.",
             "",
             "| round | PoP killed (client) | withdrawn s | answer then | back s (after ready) | "
             "agent's PoP killed | agent re-bound s | at | curl 200 again s (watcher) | curl failed |",
             "|---|---|---:|---|---:|---|---:|---|---:|---:|"]
    for r in details.get("rounds", []):
        lines.append(
            f"| {r['round']} | pop-{r.get('victim')} ({r.get('client')}) | {_s(r.get('withdrawal_s'))} | "
            f"{', '.join('pop-' + p for p in r.get('answer_after') or []) or '-'} | {_s(r.get('return_s'))} | "
            f"pop-{r.get('agent_pop')} | {_s(r.get('rebind_s'))} | pop-{r.get('new_pop') or '?'} | "
            f"{_s(r.get('served_s'))} ({r.get('watcher')}) | {r.get('http_failed', '-')}/{r.get('http_samples', '-')} |")
    lines += ["",
              "Withdrawal: seconds from `gslb lab kill` (SIGKILL) until `dig @dns1 +subnet` from the PoP's own "
              f"client, every 0.1 s, holds no address of it (3 answers in a row); bound by the health checks "
              f"(fall {FALL_S:.0f} checks at 1 s). Back: from the moment `gslb lab restart` returned (edge ready) "
              f"until the answer holds it again (rise {RISE_S:.0f} checks). Agent: from the SIGKILL of its PoP "
              "until its new `forwarding` line, and until curl (new connection each 0.1 s, pinned to the "
              "watcher's own live PoP) gets 200 five times in a row. No peer: gdnsd and nginx have no "
              "counterpart of these figures."]
    for e in details.get("errors", []):
        lines.append(f"- error: {e}")
    return lines


def _s(v) -> str:
    return "-" if v is None else f"{v:.2f}"


# ---------------------------------------------------------------- the lab, driven through `gslb lab`


def gslb_argv() -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "gslb")
    return [exe] if os.path.exists(exe) else [sys.executable, "-m", "gslb.cli"]


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED="1")
    env.pop("GSLB_LAB_PREFIX", None)
    env.pop("GSLB_LAB_STATE_DIR", None)
    return env


def lab(*args: str, timeout: float = 60, new_session: bool = False) -> subprocess.CompletedProcess:
    sub, *rest = args
    argv = [*gslb_argv(), "lab", sub, "--prefix", PREFIX, "--state-dir", STATE_DIR, *rest]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=_env(), cwd=REPO,
                          start_new_session=new_session)


def lab_ok(*args: str, timeout: float = 60) -> str:
    r = lab(*args, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"gslb lab {' '.join(args)}: exit {r.returncode}: {(r.stderr or r.stdout)[-400:]}")
    return r.stdout


class HostProc:
    """A process in a lab host (`gslb lab exec HOST -- CMD`, exec chain: the pid is CMD's own),
    its output lines timestamped by a reader thread; stdin kept open to send it a line."""

    def __init__(self, host: str, cmd: Sequence[str], log_path: str) -> None:
        argv = [*gslb_argv(), "lab", "exec", "--prefix", PREFIX, "--state-dir", STATE_DIR, host, "--", *cmd]
        self.host = host
        self.p = subprocess.Popen(argv, cwd=REPO, env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        self.lines: list[tuple[float, str]] = []
        self.q: queue.Queue[tuple[float, str]] = queue.Queue()
        self.log_path = log_path
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.p.stdout is not None
        with open(self.log_path, "a") as log:
            for raw in self.p.stdout:
                t = time.time()
                line = raw.decode(errors="replace").rstrip()
                self.lines.append((t, line))
                self.q.put((t, line))
                log.write(f"{t:.3f} {line}\n")

    def wait_for(self, pred: Callable[[str], bool], timeout: float) -> tuple[float, str] | None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                t, line = self.q.get(timeout=0.1)
            except queue.Empty:
                if self.p.poll() is not None and self.q.empty():
                    return None
                continue
            if pred(line):
                return t, line
        return None

    def send(self, text: str) -> None:
        try:
            assert self.p.stdin is not None
            self.p.stdin.write(text.encode() + b"\n")
            self.p.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def wait(self, timeout: float) -> int | None:
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        """SIGTERM by pid, then SIGKILL by pid."""
        if self.p.poll() is None:
            try:
                self.p.send_signal(signal.SIGTERM)
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
        if self.p.stdin:
            try:
                self.p.stdin.close()
            except OSError:
                pass


class Run:
    def __init__(self, quick: bool, tmp: str, log: Callable[[str], None]) -> None:
        self.quick = quick
        self.rounds_n = 1 if quick else 3
        self.tmp = tmp
        self.log = log
        self.status: dict = {}
        self.procs: list[HostProc] = []
        self.n = 0

    # -- helpers over the status JSON
    def host(self, name: str) -> dict:
        return next(h for h in self.status["hosts"] if h["name"] == name)

    def has(self, name: str) -> bool:
        return any(h["name"] == name for h in self.status["hosts"])

    def pop_addrs(self, pop: str) -> list[str]:
        h = self.host(f"pop-{pop}")
        return h["ipv4"] + h["ipv6"]

    def start(self, host: str, *cmd: str, name: str) -> HostProc:
        self.n += 1
        p = HostProc(host, cmd, os.path.join(self.tmp, f"failover.{self.n:02d}.{name}.log"))
        self.procs.append(p)
        return p

    def probe(self, host: str, spec: dict, max_seconds: float) -> HostProc:
        """A probe loop inside `host` (this module's `probe` mode); it prints `ready`, then samples."""
        p = self.start(host, sys.executable, "-m", "bench.failover", "probe", json.dumps(spec),
                       str(max_seconds), name=f"probe-{host}")
        if p.wait_for(lambda line: line == "ready", 20) is None:
            raise RuntimeError(f"probe in {host} did not start: {p.lines[-5:]}")
        return p

    @staticmethod
    def samples(p: HostProc) -> list[dict]:
        out = []
        for _, line in p.lines:
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def finish_probe(self, p: HostProc, timeout: float) -> list[dict]:
        if p.wait(timeout) is None:
            p.stop()
        time.sleep(0.05)   # let the reader thread take the last lines
        return self.samples(p)

    def dns_spec(self, client: str, **want) -> dict:
        net = self.host(client)["ipv4"][0].rsplit(".", 1)[0] + ".0/24"
        return {"kind": "dns", "server": self.host("dns1")["ipv4"][0], "subnet": net, "name": HOST,
                "interval": 0.1, "stable": 3, **want}

    def binding_pop(self) -> str | None:
        eps = ",".join(self.status["state"]["registry"])
        r = subprocess.run([*gslb_argv(), "lab", "exec", "--prefix", PREFIX, "--state-dir", STATE_DIR, "agent",
                            "--", "etcdctl", f"--endpoints={eps}", "--command-timeout=2s", "get",
                            "--consistency=s", f"/gslb/bind/http/{HOST}", "--print-value-only"],
                           capture_output=True, text=True, timeout=15, env=_env(), cwd=REPO)
        try:
            return json.loads(r.stdout)["pop"] if r.returncode == 0 and r.stdout.strip() else None
        except (ValueError, KeyError, TypeError):
            return None

    def wait_binding(self, not_pop: str | None, timeout: float) -> str | None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            pop = self.binding_pop()
            if pop and pop != not_pop:
                return pop
            time.sleep(0.3)
        return None

    def kill(self, host: str) -> float:
        out = lab_ok("kill", "--json", host, timeout=20)
        killed = json.loads(out)
        if not killed:
            raise RuntimeError(f"gslb lab kill {host}: nothing killed")
        return max(k["time"] for k in killed)

    # -- the two measurements
    def dns_round(self, r: dict, victim: str) -> None:
        client = f"client-{victim}"
        r.update(victim=victim, client=client)
        bad = self.pop_addrs(victim)
        p = self.probe(client, self.dns_spec(client, absent=bad), 40)
        # precondition: the client's answer is its own PoP with the full TTL, i.e. no health streak
        # under way for it (bounded wait: after a restart it is "changing" for rise + fall intervals)
        if p.wait_for(lambda line: line.startswith("{") and steady(json.loads(line), bad, DNS_TTL), 20) is None:
            p.stop()
            raise RuntimeError(f"{client}'s answer never pointed steadily at pop-{victim} before the kill")
        t_kill = self.kill(f"pop-{victim}")
        p.send(repr(t_kill))
        samples = self.finish_probe(p, FALL_S + 15)
        spec = self.dns_spec(client, absent=bad)
        r["withdrawal_s"] = settle_time(samples, t_kill, lambda s: sample_good(s, spec), spec["stable"])
        last = next((s for s in reversed(samples) if s.get("addrs")), None)
        r["answer_after"] = sorted({pop_of(self.status, a) or a for a in (last or {}).get("addrs", [])})
        self.log(f"failover: round {r['round']}: pop-{victim} SIGKILLed: dig @dns1 +subnet from {client} -> "
                 f"{', '.join(r['answer_after'])} after {_s(r['withdrawal_s'])} s")
        # back: restart it, time its return to the answers
        spec_back = self.dns_spec(client, present=bad)
        p = self.probe(client, spec_back, 25)
        t_restart = time.time()
        p.send(repr(t_restart))
        lab_ok("restart", f"pop-{victim}", timeout=40)
        t_ready = time.time()
        samples = self.finish_probe(p, RISE_S + 15)
        back = settle_time(samples, t_restart, lambda s: sample_good(s, spec_back), spec_back["stable"])
        r["restart_s"] = t_ready - t_restart
        r["return_from_restart_s"] = back
        r["return_s"] = None if back is None else max(0.0, back - (t_ready - t_restart))
        self.log(f"failover: round {r['round']}: pop-{victim} restarted ({r['restart_s']:.2f} s to ready): back in "
                 f"the answers {_s(r['return_s'])} s after ready")

    def agent_round(self, r: dict, agent: HostProc, agent_pop: str) -> str | None:
        watcher_region = next(w for w in WATCHERS if w != agent_pop and self.has(f"client-{w}"))
        watcher = f"client-{watcher_region}"
        pin = self.host(f"pop-{watcher_region}")["ipv4"][0]
        r.update(agent_pop=agent_pop, watcher=watcher)
        spec = {"kind": "http", "url": f"https://{HOST}/", "host": HOST, "pin": pin,
                "ca": self.status["state"]["ca"], "interval": 0.1, "stable": 5}
        p = self.probe(watcher, spec, HEARTBEAT_TIMEOUT_S + 15)
        if p.wait_for(lambda line: line.startswith("{") and json.loads(line).get("code") == "200", 15) is None:
            p.stop()
            raise RuntimeError(f"{watcher} never got 200 from {HOST} via pop-{watcher_region} before the kill")
        t_kill = self.kill(f"pop-{agent_pop}")
        p.send(repr(t_kill))
        needle = f"forwarding https://{HOST}"
        end = time.monotonic() + HEARTBEAT_TIMEOUT_S + 10
        while (r.get("rebind_s") is None and time.monotonic() < end and agent.p.poll() is None):
            r["rebind_s"] = first_line_after(list(agent.lines), t_kill, needle)
            time.sleep(0.05)
        samples = self.finish_probe(p, HEARTBEAT_TIMEOUT_S + 15)
        good = lambda s: sample_good(s, spec)  # noqa: E731
        r["served_s"] = settle_time(samples, t_kill, good, spec["stable"])
        r["http_failed"], r["http_samples"] = count_bad(samples, t_kill, good)
        r["new_pop"] = self.wait_binding(agent_pop, 10)
        self.log(f"failover: round {r['round']}: pop-{agent_pop} (the agent's) SIGKILLed: agent re-bound at "
                 f"pop-{r['new_pop']} after {_s(r['rebind_s'])} s; {watcher} 200 again after {_s(r['served_s'])} s "
                 f"({r['http_failed']} of {r['http_samples']} requests failed)")
        # restore: the PoP back in the lab and, where it has a client, in that client's answers
        lab_ok("restart", f"pop-{agent_pop}", timeout=40)
        probe_client = f"client-{agent_pop}"
        if self.has(probe_client):
            spec_back = self.dns_spec(probe_client, present=self.pop_addrs(agent_pop))
            spec_back["stable"] = 1
            pb = self.probe(probe_client, spec_back, 15)
            pb.send(repr(time.time()))
            self.finish_probe(pb, 17)
        return r["new_pop"]

    def measure(self, details: dict) -> dict:
        details["state_dir"] = STATE_DIR
        ca_upstream = self.start("agent", sys.executable, "-m", "bench.failover", "upstream", str(UP_PORT),
                                 name="upstream")
        if ca_upstream.wait_for(lambda line: line == "upstream ready", 20) is None:
            raise RuntimeError(f"upstream did not start: {ca_upstream.lines[-5:]}")
        t_agent = time.time()
        agent = self.start("agent", *gslb_argv(), "agent", "http", str(UP_PORT), "--name", NAME, name="agent")
        if agent.wait_for(lambda line: f"forwarding https://{HOST}" in line, 30) is None:
            raise RuntimeError(f"the agent did not bind: {[line for _, line in agent.lines[-8:]]}")
        details["agent_first_bind_s"] = first_line_after(agent.lines, t_agent, f"forwarding https://{HOST}")
        agent_pop = self.wait_binding(None, 10)
        if agent_pop is None:
            raise RuntimeError("no binding for the agent in the registry")
        details["agent_first_pop"] = agent_pop
        self.log(f"failover: agent bound at pop-{agent_pop}; {self.rounds_n} round(s)")
        for i in range(1, self.rounds_n + 1):
            r: dict = {"round": i}
            details["rounds"].append(r)
            try:
                victim = next(v for v in VICTIMS if v != agent_pop and self.has(f"client-{v}"))
                self.dns_round(r, victim)
                new_pop = self.agent_round(r, agent, agent_pop)
                if new_pop is None:
                    raise RuntimeError("the agent's new PoP is unknown")
                agent_pop = new_pop
            except Exception as exc:   # a failed round is reported; the next ones may still run
                msg = f"round {i}: {type(exc).__name__}: {exc}"
                details["errors"].append(msg)
                self.log(f"failover: {msg}")
                st = json.loads(lab("status", "--json", timeout=20).stdout or "{}")
                dead = sorted({d.split(":")[0] for d in st.get("dead_processes", [])})
                if dead:
                    lab("restart", *dead, timeout=60)
                agent_pop = self.wait_binding(None, 10) or agent_pop
        return details

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            p.stop()


def run(quick: bool, tmp: str, log: Callable[[str], None]) -> tuple[list[dict], dict]:
    """The failover part: (summary rows, details). The lab is always removed before returning."""
    missing = [t for t in LAB_TOOLS if shutil.which(t) is None and not os.path.exists(f"/usr/sbin/{t}")]
    if missing:
        raise RuntimeError(f"the lab needs {', '.join(missing)} (make install)")
    run_ = Run(quick, tmp, log)
    details: dict = {}
    up_s = down_s = None
    old_term = signal.signal(signal.SIGTERM, _raise_on_term)
    try:
        lab("down", timeout=60, new_session=True)          # leftovers of an earlier bench, if any
        log(f"failover: gslb lab up --prefix {PREFIX}")
        t0 = time.monotonic()
        r = lab("up", "--json", timeout=120)
        up_s = time.monotonic() - t0
        if r.returncode != 0:
            raise RuntimeError(f"gslb lab up: exit {r.returncode}: {(r.stderr or r.stdout)[-600:]}")
        run_.status = json.loads(r.stdout)
        log(f"failover: lab up in {up_s:.2f} s ({len(run_.status['hosts'])} hosts)")
        details = {"prefix": PREFIX, "rounds": [], "errors": []}
        try:
            details = run_.measure(details)
        except Exception as exc:   # reported with what was measured (lab up/down at least)
            details["errors"].append(f"{type(exc).__name__}: {exc}")
            log(f"failover: {details['errors'][-1]}")
        details["hosts"] = len(run_.status["hosts"])
        details["lab_up_first_answer_s"] = run_.status.get("timings", {}).get("up_to_first_answer")
    finally:
        # Stop what we started (by pid), then the lab, whatever happened (Ctrl-C included):
        # ignore further SIGINT/SIGTERM meanwhile; `down` runs in a session of its own, bounded.
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            run_.stop_all()
            t0 = time.monotonic()
            d = lab("down", timeout=60, new_session=True)
            down_s = time.monotonic() - t0
            log(f"failover: {d.stdout.strip() or d.stderr.strip()} ({down_s:.2f} s wall clock)")
            if d.returncode != 0:
                down_s = None
        finally:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old_term)
    details["lab_up_s"] = up_s
    details["lab_down_s"] = down_s
    return summary_rows(details.get("rounds", []), up_s, down_s), details


def _raise_on_term(signum, frame):
    raise SystemExit(128 + signum)


# ---------------------------------------------------------------- helpers run inside lab hosts


def _probe(spec_json: str, max_seconds: str) -> None:
    """Sample dig or curl every `interval` s; print each sample as a JSON line. The parent writes the
    reference time (the kill) on stdin; stop once the awaited state held `stable` samples after it,
    or after max_seconds / 2000 samples."""
    spec = json.loads(spec_json)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if spec["kind"] == "dns":
        argv = ["dig", f"@{spec['server']}", f"+subnet={spec['subnet']}", spec["name"], "A", "+noall",
                "+answer", "+time=1", "+tries=1"]
    else:
        argv = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2", "--cacert", spec["ca"],
                "--resolve", f"{spec['host']}:443:{spec['pin']}", spec["url"]]
    print("ready", flush=True)
    samples: list[dict] = []
    t_ref = None
    end = time.monotonic() + float(max_seconds)
    while time.monotonic() < end and len(samples) < 2000:
        if t_ref is None and select.select([sys.stdin], [], [], 0)[0]:
            line = sys.stdin.readline()
            t_ref = float(line) if line.strip() else None
        t0 = time.time()
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=5)
            out = r.stdout
        except subprocess.TimeoutExpired:
            out = ""
        s = {"t0": t0, "t1": time.time()}
        if spec["kind"] == "dns":
            s["addrs"], s["ttl"] = parse_answer(out)
        else:
            s["code"] = out.strip()[-3:] or "000"
        samples.append(s)
        print(json.dumps(s), flush=True)
        if t_ref is not None and settle_time(samples, t_ref, lambda x: sample_good(x, spec),
                                             spec.get("stable", 1)) is not None:
            break
        time.sleep(max(0.0, spec.get("interval", 0.1) - (time.time() - t0)))
    print("done", flush=True)


def _upstream(port: str) -> None:
    """HTTP on 127.0.0.1:port: JSON with the client address the edge
    forwarded (also the upstream of tests/integration/test_lab_failover.py)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True   # head and body in two writes: no 40 ms Nagle/delayed-ACK stall

        def do_GET(self):  # noqa: N802
            body = json.dumps({"xff": self.headers.get("X-Forwarded-For"), "via_agent": "yes",
                               "path": self.path}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", int(port)), H)
    srv.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("upstream ready", flush=True)
    srv.serve_forever()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.failover",
                                description="helpers run inside lab hosts by bench.run --only failover")
    p.add_argument("mode", choices=("probe", "upstream"))
    p.add_argument("rest", nargs="*")
    a = p.parse_args(argv)
    if a.mode == "probe":
        _probe(*a.rest)
    else:
        _upstream(*a.rest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
