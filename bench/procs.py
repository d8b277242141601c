"""Servers and load generators the bench starts: start, wait until ready, stop by pid.

Owns: the processes of one bench run. Every server logs to a file in the
run's temporary directory, is registered here when started, and is stopped
by its pid (SIGTERM, then SIGKILL to the process group it leads) by
`Procs.stop_all()`, which `bench.run` calls in a `finally`. Nothing here
changes the network: the caller has already entered the bench's own network
namespace (see `bench.run`).
"""
from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["Proc", "Procs", "StartError", "wait_tcp", "wait_dns", "peak_rss_kib", "tree_pids", "run_bounded",
           "stat_cpu_ticks", "tree_cpu_seconds", "cpu_snapshot", "cpu_delta", "machine_busy_seconds",
           "parse_proc_stat_busy"]


class StartError(RuntimeError):
    pass


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: str
    argv: Sequence[str] = field(default_factory=tuple)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(0, 2)
                size = fh.tell()
                fh.seek(max(0, size - 8192))
                text = fh.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Procs:
    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir
        self.procs: list[Proc] = []

    def start(self, name: str, argv: Sequence[str], *, env: dict | None = None, cwd: str | None = None) -> Proc:
        log_path = os.path.join(self.log_dir, f"{name}.log")
        fh = open(log_path, "ab")
        try:
            p = subprocess.Popen(list(argv), stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env=env, cwd=cwd, start_new_session=True)
        finally:
            fh.close()
        proc = Proc(name, p, log_path, tuple(argv))
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc, timeout: float = 5.0) -> int | None:
        """SIGTERM the pid, wait; SIGKILL its process group (it leads one) if it lingers."""
        if proc.alive():
            try:
                os.kill(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # Whatever the process left in its own group (nginx workers, worker processes).
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.popen.wait(2.0)
        except subprocess.TimeoutExpired:
            pass
        if proc in self.procs:
            self.procs.remove(proc)
        return proc.popen.returncode

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc)


def run_bounded(argv: Sequence[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    """A load generator or client: bounded in time (the tool's own limit, and this one)."""
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, **kw)


def run_bounded_all(argvs: Sequence[Sequence[str]], timeout: float) -> list[subprocess.CompletedProcess]:
    """Several load generators at once, each bounded as in `run_bounded`; their results in order.
    One that overruns is killed (and so are the others once the first has failed)."""
    procs = [subprocess.Popen(list(a), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for a in argvs]
    deadline = time.monotonic() + timeout
    out = []
    try:
        for p, a in zip(procs, argvs):
            stdout, stderr = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
            out.append(subprocess.CompletedProcess(list(a), p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return out


def wait_tcp(host: str, port: int, proc: Proc | None = None, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise StartError(f"{proc.name} exited ({proc.popen.returncode}) before listening on "
                             f"{host}:{port}:\n{proc.log_tail()}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise StartError(f"nothing listens on {host}:{port} after {timeout:.0f}s"
                     + (f":\n{proc.log_tail()}" if proc else ""))


def wait_dns(host: str, port: int, qname: str, proc: Proc | None = None, timeout: float = 20.0) -> None:
    """Until a UDP query for qname/SOA gets any answer."""
    labels = b"".join(bytes([len(x)]) + x.encode() for x in qname.rstrip(".").split("."))
    query = struct.pack("!HHHHHH", 0x4242, 0, 1, 0, 0, 0) + labels + b"\x00" + struct.pack("!HH", 6, 1)
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    deadline = time.monotonic() + timeout
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.settimeout(0.3)
        while time.monotonic() < deadline:
            if proc is not None and not proc.alive():
                raise StartError(f"{proc.name} exited ({proc.popen.returncode}) before answering on "
                                 f"{host}:{port}:\n{proc.log_tail()}")
            try:
                s.sendto(query, (host, port))
                data = s.recv(4096)
                if data[:2] == b"\x42\x42":
                    return
            except OSError:
                time.sleep(0.1)
    raise StartError(f"no DNS answer from {host}:{port} after {timeout:.0f}s"
                     + (f":\n{proc.log_tail()}" if proc else ""))


def tree_pids(pid: int) -> list[int]:
    """pid and its descendants (from /proc/*/stat ppid)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def peak_rss_kib(pid: int) -> dict[str, int]:
    """VmHWM (peak resident set) of a process and its descendants, KiB: {'max','sum','procs'}."""
    values = []
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        values.append(int(line.split()[1]))
        except OSError:
            continue
    return {"max": max(values, default=0), "sum": sum(values), "procs": len(values)}


def stat_cpu_ticks(stat: str) -> int:
    """utime + stime + cutime + cstime of one /proc/PID/stat line, clock ticks (proc(5): fields 14-17).

    The command name (field 2) may hold spaces and parentheses, so fields are counted after its last ')'.
    cutime/cstime are the reaped children's: a worker that exits and is waited for moves its time there,
    so a tree's sum does not drop when a process of it ends.
    """
    fields = stat.rsplit(")", 1)[1].split()
    if len(fields) < 15:
        raise ValueError(f"not a /proc/PID/stat line: {stat[:80]!r}")
    return sum(int(x) for x in fields[11:15])


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system, reaped children included) of pid and its live descendants."""
    ticks = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/stat") as fh:
                ticks += stat_cpu_ticks(fh.read())
        except (OSError, ValueError):
            continue   # ended between the listing and the read: its time is in its parent's cutime
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_snapshot(trees: dict[str, int | Sequence[int]]) -> dict[str, float]:
    """{name: CPU seconds} of named process trees (a name may sum several trees: nginx relays A+B)."""
    out = {}
    for name, pids in trees.items():
        pids = [pids] if isinstance(pids, int) else list(pids)
        out[name] = sum(tree_cpu_seconds(p) for p in pids)
    return out


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds spent between two snapshots, per name present in both (never negative)."""
    return {k: max(0.0, after[k] - before[k]) for k in before if k in after}


def parse_proc_stat_busy(text: str) -> float:
    """CPU seconds the whole machine was busy since boot, from /proc/stat's first `cpu` line
    (user nice system idle iowait irq softirq steal ...: everything but idle and iowait)."""
    for line in text.splitlines():
        if line.startswith("cpu "):
            v = [int(x) for x in line.split()[1:]]
            if len(v) < 5:
                break
            return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")
    raise ValueError("no 'cpu' line in /proc/stat")


def machine_busy_seconds() -> float:
    """Busy CPU seconds of the machine (all cores, every namespace's processes): see parse_proc_stat_busy."""
    with open("/proc/stat") as fh:
        return parse_proc_stat_busy(fh.read())
