"""Processes inside lab hosts: start detached, track by pid, stop by pid.

Owns how a daemon is started in a host (`ip netns exec <ns>`, which also binds
the host's /etc/netns/<ns>/resolv.conf and remounts /sys: docs/lab.md), how
it is recorded (pid plus the kernel's start time, so a recycled pid is never
mistaken for ours), and how it is stopped (TERM, bounded wait, KILL, reap).
Nothing here is ever found or killed by name.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from plumbing.kvlog import kv

log = logging.getLogger("gslb.lab")

# Popen objects of children started by this process, so we can reap (wait())
# them; children of an earlier `gslb lab up` have been reparented to PID 1,
# which reaps them.
_CHILDREN: dict[int, subprocess.Popen] = {}


@dataclass(frozen=True)
class Proc:
    host: str
    name: str           # short role of the process in the host: "dns", "unbound", "edge", "etcd"
    pid: int
    starttime: int      # /proc/<pid>/stat field 22: pid + starttime identify one process
    cmd: tuple[str, ...]
    log: str

    def to_json(self) -> dict:
        return {"host": self.host, "name": self.name, "pid": self.pid, "starttime": self.starttime,
                "cmd": list(self.cmd), "log": self.log}

    @classmethod
    def from_json(cls, d: dict) -> "Proc":
        return cls(host=d["host"], name=d["name"], pid=int(d["pid"]), starttime=int(d["starttime"]),
                   cmd=tuple(d["cmd"]), log=d["log"])


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, starttime) of a pid, or None when it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces and parentheses: split after the last ')'.
    rest = raw[raw.rindex(")") + 2:].split()
    return rest[0], int(rest[19])


def starttime_of(pid: int) -> int:
    st = _stat(pid)
    return st[1] if st else -1


def alive(proc: Proc) -> bool:
    """Running, not a zombie, and still the same process (pid not recycled)."""
    child = _CHILDREN.get(proc.pid)
    if child is not None and child.poll() is not None:
        return False
    st = _stat(proc.pid)
    return st is not None and st[0] not in ("Z", "X") and st[1] == proc.starttime


def spawn(ns: str, host: str, name: str, argv: list[str], log_path: Path,
          env: dict[str, str] | None = None) -> Proc:
    """Start argv inside namespace `ns` as a detached daemon (own session), logging to log_path."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full = ["ip", "netns", "exec", ns, *argv]
    with open(log_path, "ab") as out:
        # start_new_session: setsid, so the daemon outlives `gslb lab up` and a
        # Ctrl-C in the terminal does not reach it. `ip netns exec` execs the
        # command, so the pid we get is the daemon's own.
        p = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                             start_new_session=True, close_fds=True, env=env)
    _CHILDREN[p.pid] = p
    st = _stat(p.pid)
    proc = Proc(host=host, name=name, pid=p.pid, starttime=st[1] if st else -1, cmd=tuple(argv),
                log=str(log_path))
    log.debug(kv("spawn", host=host, name=name, pid=p.pid))
    return proc


def stop(pids: list[tuple[int, int]], term_wait: float = 2.0,
         term_waits: dict[int, float] | None = None) -> list[int]:
    """Stop processes given as (pid, starttime; -1 = any): TERM, wait, KILL, reap.

    Each pid waits `term_waits[pid]` (else `term_wait`) seconds after TERM
    before it gets KILL: an etcd member can take 7 s to exit on TERM (seen with
    etcd 3.4.23), so the lab gives it about 1 s. Returns the pids that were signalled.
    Bounded: at most max(term waits) + 2 s.
    """
    targets = []
    for pid, start in pids:
        st = _stat(pid)
        if st is None or st[0] in ("Z", "X") or (start != -1 and st[1] != start):
            _reap(pid)
            continue
        targets.append(pid)
    for pid in targets:
        _signal(pid, signal.SIGTERM)
    t0 = time.monotonic()
    waits = {pid: (term_waits or {}).get(pid, term_wait) for pid in targets}
    pending = set(targets)
    while pending and time.monotonic() - t0 < max(waits.values()) + 0.05:
        for pid in list(pending):
            if not _running(pid):
                pending.discard(pid)
            elif time.monotonic() - t0 >= waits[pid]:
                log.info(kv("kill", pid=pid, reason="term_timeout", after=f"{waits[pid]:.1f}"))
                _signal(pid, signal.SIGKILL)
                pending.discard(pid)
        time.sleep(0.02)
    for pid in pending:   # (not reached in practice: the loop above runs to the longest wait)
        if _running(pid):
            _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and any(_running(p) for p in targets):
        time.sleep(0.02)
    return targets


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _reap(pid: int) -> None:
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        try:
            child.wait(timeout=0)
        except subprocess.TimeoutExpired:
            pass


def _running(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        _CHILDREN.pop(pid, None)
        return False
    st = _stat(pid)
    # A zombie is dead: its parent (PID 1 for a detached daemon) reaps it.
    return st is not None and st[0] not in ("Z", "X")


def tail(path: str | Path, lines: int = 20) -> str:
    try:
        data = Path(path).read_bytes()[-65536:]
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])
