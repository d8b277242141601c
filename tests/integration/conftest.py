"""Lab fixtures: a real lab (network namespaces, `gslb dns`, unbound) for the session.

The lab is discovered through `gslb lab status --json` only; no address is
hard-coded. Every dig/curl runs inside a lab host (`ip netns exec <netns>`, as
`gslb lab exec` does), never in the root namespace.

Without root (or without unbound/dig/ip) the lab tests skip with the reason;
with CI=true they fail instead, because CI must run them.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from _helpers import Proc

ROOT = Path(__file__).resolve().parents[2]
TEST_PREFIX = os.environ.get("GSLB_TEST_LAB_PREFIX", "gslbt")


def gslb_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "gslb"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "gslb.cli"]


def gslb(*args: str, timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("GSLB_LAB_PREFIX", None)
    env.pop("GSLB_LAB_STATE_DIR", None)
    r = subprocess.run([*gslb_cmd(), *args], capture_output=True, text=True, timeout=timeout, env=env,
                       cwd=ROOT)
    if check and r.returncode != 0:
        pytest.fail(f"gslb {' '.join(args)} failed (exit {r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def require_lab_prerequisites() -> None:
    """Skip (outside CI) or fail (CI=true) when the lab cannot run here."""
    problems = []
    if os.geteuid() != 0:
        problems.append("the lab needs root (network namespaces)")
    for tool in ("ip", "unbound", "dig", "curl", "etcd", "etcdctl"):
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            problems.append(f"`{tool}` is not installed (make install)")
    if problems:
        msg = "lab tests cannot run: " + "; ".join(problems)
        if os.environ.get("CI") == "true":
            pytest.fail(msg + " (CI=true: lab tests must run, not skip)", pytrace=False)
        pytest.skip(msg)


@dataclass
class Lab:
    prefix: str
    status: dict
    up_seconds: float

    @property
    def hosts(self) -> list[dict]:
        return self.status["hosts"]

    def host(self, name: str) -> dict:
        for h in self.hosts:
            if h["name"] == name:
                return h
        raise KeyError(name)

    def role(self, role: str) -> list[dict]:
        return [h for h in self.hosts if h["role"] == role]

    def run(self, host: str, *cmd: str, timeout: float = 20) -> subprocess.CompletedProcess:
        """Run cmd inside lab host `host` (with its resolv.conf), as `gslb lab exec` does."""
        ns = self.host(host)["netns"]
        assert ns.startswith(self.prefix + "-"), ns
        return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True,
                              timeout=timeout)

    def spawn(self, host: str, *cmd: str, name: str | None = None) -> "LabProc":
        """Start cmd in lab host `host` through `gslb lab exec` (so with the environment it sets
        there: in the agent host, what a bare `gslb agent` needs). The pid is cmd's own (exec chain)."""
        return LabProc([*gslb_cmd(), "lab", "exec", "--prefix", self.prefix, host, "--", *cmd],
                       name or f"{host}:{cmd[0]}")


class LabProc(Proc):
    """A process in a lab host whose output lines a thread reads (never blocks the test).
    Stopped by its own pid only."""

    wait_timeout = 30.0
    stop_timeout = 5.0

    def __init__(self, argv: list[str], name: str) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        env.pop("GSLB_LAB_PREFIX", None)
        env.pop("GSLB_LAB_STATE_DIR", None)
        super().__init__(argv, name, env)


@pytest.fixture(scope="session")
def lab() -> Lab:
    require_lab_prerequisites()
    t0 = time.monotonic()
    r = gslb("lab", "up", "--prefix", TEST_PREFIX, "--force")
    up_seconds = time.monotonic() - t0
    if r.returncode != 0:
        gslb("lab", "down", "--prefix", TEST_PREFIX)
        pytest.fail(f"gslb lab up failed (exit {r.returncode}):\n{r.stdout}\n{r.stderr}", pytrace=False)
    st = gslb("lab", "status", "--prefix", TEST_PREFIX, "--json", check=True)
    yield Lab(prefix=TEST_PREFIX, status=json.loads(st.stdout), up_seconds=up_seconds)
    if os.environ.get("GSLB_TEST_KEEP_LAB") == "1":   # left up to look at; `gslb lab down --prefix ...` after
        print(f"\nGSLB_TEST_KEEP_LAB=1: lab {TEST_PREFIX} left up")
        return
    gslb("lab", "down", "--prefix", TEST_PREFIX)


@pytest.fixture(scope="session")
def gslb_run():
    """The `gslb` command line as a function: gslb_run("lab", "status", "--json")."""
    return gslb


@pytest.fixture()
def lab_prereqs() -> None:
    require_lab_prerequisites()


@pytest.fixture(scope="session")
def gslb_argv() -> list[str]:
    return gslb_cmd()
