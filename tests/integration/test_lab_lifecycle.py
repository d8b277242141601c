"""The lab's life cycle on a prefix of its own (the session lab keeps running beside it):
up after kill -9 halfway, up on a running lab, down leaves nothing, failure partway cleans up."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

# Derived from the session lab's prefix, so two test runs with different prefixes never collide.
PREFIX = os.environ.get("GSLB_TEST_LAB_PREFIX", "gslbt") + "k"
STATE_DIR = Path("/run/gslb-lab") / PREFIX


def root_network_snapshot() -> str:
    """Links, addresses and routes of the root namespace (read-only `ip`)."""
    out = []
    for args in (["-o", "link"], ["-o", "addr"], ["route"], ["-6", "route"]):
        r = subprocess.run(["ip", *args], capture_output=True, text=True, check=True)
        # Counters and link-state flaps are not changes the lab made.
        out.append("\n".join(sorted(line.split(" link/")[0] if args == ["-o", "link"] else line
                                    for line in r.stdout.splitlines())))
    return "\n".join(out)


def lab_namespaces(prefix: str) -> list[str]:
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in r.stdout.splitlines() if line.split()[0].startswith(prefix + "-")]


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def assert_nothing_left(prefix: str, pids: list[int]) -> None:
    assert lab_namespaces(prefix) == [], "namespaces left behind"
    alive = [p for p in pids if pid_alive(p)]
    assert not alive, f"lab processes still alive: {alive}"
    etc = Path("/etc/netns")
    left = [d.name for d in etc.iterdir() if d.name.startswith(prefix + "-")] if etc.is_dir() else []
    assert not left, f"/etc/netns dirs left behind: {left}"
    assert not (Path("/run/gslb-lab") / prefix).exists(), "state dir left behind"
    # the name servers' control sockets live in the state dir, not in /run/gslb-dns/
    sockets = Path("/run/gslb-dns")
    left = [p.name for p in sockets.glob(f"{prefix}-*")] if sockets.is_dir() else []
    assert not left, f"control sockets left behind: {left}"


@pytest.fixture()
def own_lab(lab_prereqs, gslb_run):
    gslb_run("lab", "down", "--prefix", PREFIX)
    yield
    gslb_run("lab", "down", "--prefix", PREFIX)


def test_up_after_kill9_halfway_starts_clean_and_down_leaves_nothing(own_lab, gslb_run, gslb_argv):
    before = root_network_snapshot()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    first = subprocess.Popen([*gslb_argv, "lab", "up", "--prefix", PREFIX], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=env)
    # Halfway: the hosts exist and processes are being started (state says "building").
    deadline = time.monotonic() + 30
    halfway = False
    while time.monotonic() < deadline and first.poll() is None:
        try:
            st = json.loads((STATE_DIR / "state.json").read_text())
        except (OSError, ValueError):
            st = {}
        if st.get("status") == "building" and st.get("processes"):
            halfway = True
            break
        time.sleep(0.005)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    assert halfway, "never saw the first `lab up` halfway (building, with processes started)"
    assert lab_namespaces(PREFIX), "the killed `lab up` should have left namespaces behind"

    r = gslb_run("lab", "up", "--prefix", PREFIX)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "leftovers" in r.stderr   # a progress line: on stderr, stdout keeps the table
    st = json.loads(gslb_run("lab", "status", "--prefix", PREFIX, "--json", check=True).stdout)
    assert st["running"] is True
    pids = [p["pid"] for h in st["hosts"] for p in h["processes"]]
    assert pids and all(pid_alive(p) for p in pids)
    assert len(lab_namespaces(PREFIX)) == len(st["hosts"])

    # `up` on a running lab says so and changes nothing.
    r = gslb_run("lab", "up", "--prefix", PREFIX)
    assert r.returncode == 0 and "already up" in r.stdout
    again = json.loads(gslb_run("lab", "status", "--prefix", PREFIX, "--json", check=True).stdout)
    assert [p["pid"] for h in again["hosts"] for p in h["processes"]] == pids

    r = gslb_run("lab", "down", "--prefix", PREFIX)
    assert r.returncode == 0, r.stderr
    assert_nothing_left(PREFIX, pids)
    assert root_network_snapshot() == before, "the root namespace changed"

    r = gslb_run("lab", "down", "--prefix", PREFIX)
    assert r.returncode == 0 and "nothing to remove" in r.stdout


def test_down_touches_only_its_own_prefix(own_lab, lab, gslb_run):
    r = gslb_run("lab", "down", "--prefix", PREFIX)
    assert r.returncode == 0
    st = json.loads(gslb_run("lab", "status", "--prefix", lab.prefix, "--json").stdout)
    assert st["running"] is True, "down of another prefix disturbed the session lab"


def test_up_failing_partway_removes_what_it_built(own_lab):
    from netns import lab as netlab
    from netns.errors import BuildError
    from netns.plan import default_plan_path, load_plan

    original = netlab.resolver_command
    netlab.resolver_command = lambda paths: ["/bin/sh", "-c", "echo 'cannot bind 53' >&2; exit 3"]
    try:
        with pytest.raises(BuildError) as err:
            netlab.up(load_plan(default_plan_path()), PREFIX)
    finally:
        netlab.resolver_command = original
    assert "resolver" in str(err.value) and "cannot bind 53" in str(err.value)
    assert "removed" in str(err.value)
    assert_nothing_left(PREFIX, [])


def test_bad_plan_is_refused_before_anything_changes(tmp_path, lab_prereqs, gslb_run):
    bad = tmp_path / "lab.toml"
    text = (Path(__file__).resolve().parents[2] / "examples" / "lab.toml").read_text()
    bad.write_text(text.replace('ipv4 = ["198.18.0.11"]', 'ipv4 = ["192.0.2.11"]'))
    r = gslb_run("lab", "up", "--prefix", PREFIX, "--plan", str(bad))
    assert r.returncode == 2  # a bad configuration file, as in every command
    assert f"{bad}:" in r.stderr and "192.0.2.11 is outside the lab's 198.18.0.0/15" in r.stderr
    assert lab_namespaces(PREFIX) == []


def test_a_dead_process_makes_the_lab_degraded_and_up_refuses_until_force(own_lab, gslb_run):
    assert gslb_run("lab", "up", "--prefix", PREFIX).returncode == 0
    st = json.loads(gslb_run("lab", "status", "--prefix", PREFIX, "--json", check=True).stdout)
    victim = next(p for h in st["hosts"] if h["name"] == "pop-sa" for p in h["processes"])
    os.kill(victim["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while pid_alive(victim["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)

    r = gslb_run("lab", "status", "--prefix", PREFIX, "--json")
    st = json.loads(r.stdout)
    assert r.returncode == 1 and st["status"] == "degraded" and st["dead_processes"] == ["pop-sa:edge"]
    r = gslb_run("lab", "up", "--prefix", PREFIX)
    assert r.returncode == 1 and "pop-sa:edge" in r.stderr and "--force" in r.stderr
    r = gslb_run("lab", "up", "--prefix", PREFIX, "--force")
    assert r.returncode == 0, r.stdout + r.stderr
    st = json.loads(gslb_run("lab", "status", "--prefix", PREFIX, "--json", check=True).stdout)
    assert st["running"] is True
