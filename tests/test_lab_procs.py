"""Process tracking of the lab: by pid plus start time, stopped by TERM then KILL, never by name.

These start plain local processes (sleep, sh) in the test's own namespace; they send no traffic.
"""
from __future__ import annotations

import os
import subprocess
import sys

from netns import procs
from netns.procs import Proc


def ignoring_term(seconds: int) -> subprocess.Popen:
    """A child that ignores SIGTERM and sleeps `seconds`, started and ready."""
    p = subprocess.Popen([sys.executable, "-c",
                          "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                          f"print('ready', flush=True); time.sleep({seconds})"], stdout=subprocess.PIPE)
    assert p.stdout.readline() == b"ready\n"
    return p


def proc_for(p: subprocess.Popen, name: str = "x") -> Proc:
    return Proc(host="h", name=name, pid=p.pid, starttime=procs.starttime_of(p.pid), cmd=("sleep",), log="/dev/null")


def test_alive_is_true_for_a_running_process_and_false_once_it_exits():
    p = subprocess.Popen(["sleep", "30"])
    pr = proc_for(p)
    assert procs.alive(pr)
    p.kill()
    p.wait()
    assert not procs.alive(pr)


def test_a_recycled_pid_is_not_our_process():
    p = subprocess.Popen(["sleep", "30"])
    try:
        other = Proc(host="h", name="x", pid=p.pid, starttime=procs.starttime_of(p.pid) + 1, cmd=(), log="")
        assert not procs.alive(other)
        # stop() refuses to signal a pid whose start time does not match.
        assert procs.stop([(p.pid, other.starttime)]) == []
        assert p.poll() is None
    finally:
        p.kill()
        p.wait()


def test_a_zombie_counts_as_dead():
    p = subprocess.Popen(["true"])
    pr = proc_for(p)
    # Not reaped yet: the kernel keeps a zombie until wait().
    os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)
    assert procs._stat(p.pid)[0] == "Z"
    assert not procs.alive(pr)
    p.wait()


def test_stop_terminates_then_kills_a_process_that_ignores_term():
    stubborn = ignoring_term(60)
    polite = subprocess.Popen(["sleep", "60"])
    pids = [(stubborn.pid, procs.starttime_of(stubborn.pid)), (polite.pid, -1)]
    assert sorted(procs.stop(pids, term_wait=0.3)) == sorted([stubborn.pid, polite.pid])
    assert stubborn.wait(timeout=5) == -9
    assert polite.wait(timeout=5) == -15


def test_a_per_pid_term_wait_overrides_the_default_one():
    # etcd members get KILL after ~1 s (docs/lab.md), others the default wait. The stubborn
    # process here has a short wait of its own while the default is long: if stop() used the
    # default for it, the module's timeout would stop the test, not this assertion.
    stubborn = ignoring_term(600)
    polite = subprocess.Popen(["sleep", "600"])
    try:
        pids = [(stubborn.pid, procs.starttime_of(stubborn.pid)), (polite.pid, -1)]
        assert sorted(procs.stop(pids, term_wait=250.0, term_waits={stubborn.pid: 0.2})) == sorted(
            [stubborn.pid, polite.pid])
        assert stubborn.wait(timeout=5) == -9      # KILLed after its own short wait
        assert polite.wait(timeout=5) == -15       # exited on TERM, no wait needed
    finally:
        for p in (stubborn, polite):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_stat_parses_a_command_name_with_spaces_and_parentheses(tmp_path):
    exe = tmp_path / "a (b) c"
    exe.symlink_to("/bin/sleep")
    p = subprocess.Popen([str(exe), "30"])
    try:
        state, start = procs._stat(p.pid)
        assert state in ("S", "R") and start > 0
    finally:
        p.kill()
        p.wait()


def test_tail_returns_the_last_lines(tmp_path):
    f = tmp_path / "x.log"
    f.write_text("".join(f"line {i}\n" for i in range(100)))
    assert procs.tail(f, 2) == "line 98\nline 99"
    assert procs.tail(tmp_path / "missing.log") == ""
