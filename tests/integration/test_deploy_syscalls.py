"""The units' sandbox fits what the daemons really do: every system call `gslb dns` and
`gslb edge` make (traced with strace from exec to exit, serving real queries and a TLS
request) is in the unit's `SystemCallFilter=@system-service`, and every socket family
they open is in its `RestrictAddressFamilies=`.

A call outside the filter would fail with EPERM under systemd (SystemCallErrorNumber),
a family outside the list with EAFNOSUPPORT: this finds either without a systemd host.
The allowed set is systemd's own (`systemd-analyze syscall-filter`), groups expanded.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _helpers import Proc, free_port
from _tools import need_tools
from _units import one, unit

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
LINE = re.compile(r"^\d+\s+(?:<\.\.\. )?([a-z0-9_]+)(?:\(| resumed>)")
FAMILY = re.compile(r"\bsocket\((AF_[A-Z0-9]+)")


def allowed_syscalls(group: str) -> set[str]:
    seen: set[str] = set()
    names: set[str] = set()
    todo = [group]
    while todo:
        g = todo.pop()
        if g in seen:
            continue
        seen.add(g)
        out = subprocess.run(["systemd-analyze", "syscall-filter", g], capture_output=True, text=True,
                             timeout=30, check=True).stdout
        for raw in out.splitlines()[1:]:   # the first line is the group's own name
            item = raw.strip()
            if item.startswith("@"):
                todo.append(item)
            elif item and not item.startswith("#"):
                names.add(item)
    return names


def filter_of(service: dict[str, list[str]]) -> set[str]:
    """What the unit's SystemCallFilter= lines allow: the first an allow list, each `~` line
    taken away from it (systemd.exec(5))."""
    allowed: set[str] = set()
    for i, value in enumerate(service["SystemCallFilter"]):
        deny = value.startswith("~")
        names = set().union(*(allowed_syscalls(g) if g.startswith("@") else {g}
                              for g in value.lstrip("~").split()))
        assert deny or i == 0, "an allow list after the first line widens nothing here"
        allowed = allowed - names if deny else names
    return allowed


def traced(trace: Path) -> tuple[set[str], set[str]]:
    calls, families = set(), set()
    for line in trace.read_text(errors="replace").splitlines():
        m = LINE.match(line)
        if m:
            calls.add(m.group(1))
        f = FAMILY.search(line)
        if f:
            families.add(f.group(1))
    return calls, families


def strace(trace: Path, *argv: str) -> Proc:
    """`gslb ARGV` under strace (every thread and child, from exec to exit), output lines read
    by a thread (Proc)."""
    return Proc(["strace", "-f", "-qq", "-o", str(trace), sys.executable, "-m", "gslb.cli", *argv], "strace gslb",
                env=dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1"))


def stop_traced(p: Proc) -> None:
    """Stop `gslb` under strace by its own pid (strace's child), then strace: strace 6.1
    detaches from its tracees when it gets SIGTERM itself, and they would run on."""
    if p.p.poll() is None:
        try:
            children = Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()
        except OSError:
            children = []
        for child in children:
            try:
                os.kill(int(child), signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            p.p.wait(30)
        except subprocess.TimeoutExpired:
            for child in children:
                try:
                    os.kill(int(child), signal.SIGKILL)
                except ProcessLookupError:
                    pass
    p.stop()


def wait_until(pred, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return False


def check(unit_name: str, trace: Path, seen: tuple[str, ...] = ("socket", "bind", "execve")) -> None:
    s = unit(unit_name)["Service"]
    allowed = filter_of(s)
    assert len(allowed) > 100, len(allowed)
    calls, families = traced(trace)
    assert set(seen) <= calls, sorted(calls)   # the trace is real
    outside = sorted(calls - allowed)
    assert not outside, f"{unit_name}: system calls outside {s['SystemCallFilter']}: {outside}"
    restricted = set(one(s, "RestrictAddressFamilies").split())
    assert families and families <= restricted, f"{unit_name}: families {sorted(families)} vs {sorted(restricted)}"


@need_tools("strace", "systemd-analyze", "dig")
def test_gslb_dns_with_workers_stays_inside_the_units_syscall_filter_and_families(tmp_path, lab_mmdb):
    shutil.copy(lab_mmdb, tmp_path / "lab.mmdb")
    (tmp_path / "dns.toml").write_text((ROOT / "examples" / "dns.toml").read_text())
    port = free_port()
    trace = tmp_path / "dns.trace"
    p = strace(trace, "dns", "--config", str(tmp_path / "dns.toml"), "--listen", f"127.0.0.1:{port}",
               "--workers", "2", "--control", str(tmp_path / "ctl.sock"))
    try:
        pid = int(p.wait_line(r"event=starting pid=(\d+)", 60).group(1))   # the server's own pid, not strace's

        def dig(*extra: str) -> str:
            return subprocess.run(["dig", "@127.0.0.1", "-p", str(port), "demo.app.lab.test", "A", "+time=2",
                                   "+tries=1", *extra], capture_output=True, text=True, timeout=20).stdout
        assert wait_until(lambda: "status: NOERROR" in dig(), 60), "gslb dns under strace never answered"
        assert "status: NOERROR" in dig("+tcp")
        os.kill(pid, signal.SIGHUP)
        for _ in range(2):
            p.wait_line(r"event=reloaded ", 30)
        assert "status: NOERROR" in dig("+subnet=198.19.5.0/24")
        r = subprocess.run([sys.executable, "-m", "gslb.cli", "dns", "health", "--control", str(tmp_path / "ctl.sock")],
                           capture_output=True, text=True, timeout=30, cwd=ROOT,
                           env=dict(os.environ, PYTHONPATH=str(ROOT)))
        assert r.returncode == 0, r.stderr
        os.kill(pid, signal.SIGTERM)
        assert p.wait(60) == 0, p.log[-20:]
    finally:
        stop_traced(p)
    check("gslb-dns.service", trace)


@need_tools("strace", "systemd-analyze", "curl")
def test_gslb_edge_serving_tls_stays_inside_the_units_syscall_filter_and_families(tmp_path):
    r = subprocess.run([sys.executable, "-m", "gslb.cli", "edge", "ca", "init", "--dir", str(tmp_path / "ca")],
                       capture_output=True, text=True, timeout=60, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr
    https, http = free_port(), free_port()
    (tmp_path / "edge.toml").write_text(
        f'zone = "lab.test"\n[edge]\nca_dir = "{tmp_path}/ca"\ncert_dir = "{tmp_path}/certs"\n'
        f'[pops.local]\nlisten = ["127.0.0.1"]\nhttps_port = {https}\nhttp_port = {http}\n')
    trace = tmp_path / "edge.trace"
    p = strace(trace, "edge", "--config", str(tmp_path / "edge.toml"), "--pop", "local", "--workers", "1")
    try:
        name = "demo.app.lab.test"

        def curl() -> str:
            return subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5",
                                   "--cacert", str(tmp_path / "ca" / "ca.pem"), "--resolve", f"{name}:{https}:127.0.0.1",
                                   f"https://{name}:{https}/"], capture_output=True, text=True, timeout=20).stdout
        assert wait_until(lambda: curl() == "404", 60), "gslb edge under strace never answered 404 (no agent)"
        r = subprocess.run(["curl", "-s", "--max-time", "5", f"http://127.0.0.1:{http}/healthz"],
                           capture_output=True, text=True, timeout=20)
        health = json.loads(r.stdout)
        assert health["pop"] == "local", health
        os.kill(health["pid"], signal.SIGTERM)   # the edge's own pid, not strace's
        assert p.wait(60) == 0, p.log[-20:]
    finally:
        stop_traced(p)
    check("gslb-edge@.service", trace)


@need_tools("strace", "systemd-analyze", "curl")
def test_gslb_agent_carrying_requests_stays_inside_the_units_syscall_filter_and_families(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    r = subprocess.run([sys.executable, "-m", "gslb.cli", "edge", "ca", "init", "--dir", str(tmp_path / "ca")],
                       capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr
    token = tmp_path / "authtoken"
    token.write_text("gde-syscalls-" + "t" * 30 + "\n")
    token.chmod(0o600)
    https, http, upstream_port = free_port(), free_port(), free_port()
    (tmp_path / "edge.toml").write_text(
        f'zone = "lab.test"\n[edge]\nca_dir = "{tmp_path}/ca"\ncert_dir = "{tmp_path}/certs"\n'
        f'authtokens_file = "{token}"\n'
        f'[pops.local]\nlisten = ["127.0.0.1"]\nhttps_port = {https}\nhttp_port = {http}\n')
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "index.html").write_text("hello through the tunnel\n")
    edge = Proc([sys.executable, "-m", "gslb.cli", "edge", "--config", str(tmp_path / "edge.toml"), "--pop", "local", "--workers", "1"],
                "edge", env=env)
    upstream = Proc([sys.executable, "-m", "http.server", str(upstream_port), "--bind", "127.0.0.1",
                     "--directory", str(tmp_path / "www")], "upstream", env=env)
    trace = tmp_path / "agent.trace"
    agent = strace(trace, "agent", "http", str(upstream_port), "--name", "demo", "--server", f"127.0.0.1:{https}",
                   "--zone", "lab.test", "--ca", str(tmp_path / "ca" / "ca.pem"), "--authtoken-file", str(token))
    name = "demo.app.lab.test"
    try:
        edge.wait_line(r"gslb edge: pop=local", 60)

        def curl() -> str:
            return subprocess.run(["curl", "-s", "--max-time", "5", "--cacert", str(tmp_path / "ca" / "ca.pem"),
                                   "--resolve", f"{name}:{https}:127.0.0.1", f"https://{name}:{https}/"],
                                  capture_output=True, text=True, timeout=20).stdout
        assert wait_until(lambda: curl() == "hello through the tunnel\n", 60), agent.log[-20:]
        for _ in range(5):
            assert curl() == "hello through the tunnel\n"
        stop_traced(agent)   # SIGTERM to the agent itself; strace ends with it
        assert agent.p.returncode is not None
    finally:
        stop_traced(agent)
        upstream.stop()
        edge.stop()
    check("gslb-agent.service", trace, seen=("socket", "connect", "execve"))
