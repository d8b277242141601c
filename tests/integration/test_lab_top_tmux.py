"""`gslb lab top` on a real lab, on a real terminal: tmux.

The live screen runs in a detached tmux session of a fixed size (its own tmux server,
`-S` a socket of its own, so nobody else's sessions are touched); the test reads the screen with
`tmux capture-pane -p`, polling with a bounded deadline, while it drives traffic from a
client host through one PoP's edge (HTTPS requests for an endpoint name that is offline:
each is a request head through the edge's front, answered 404, and counted), kills
another PoP's edge with `gslb lab kill`, and quits with `q`. The killed edge is restarted
and the tmux server killed in a finally: the session's lab is shared with other tests.
"""
from __future__ import annotations

import json
import re
import subprocess
import threading
import time

import pytest
from _polling import wait_for
from _tools import need_tools
from conftest import gslb_cmd

from netns.plan import load_plan

pytestmark = [pytest.mark.lab, pytest.mark.timeout(240)]

ROW = re.compile(r"^(?P<host>pop-[a-z0-9-]+)\s+.*?\s(?P<state>alive|dead|no answer)\s+(?P<pid>\d+|-)\s+"
                 r"(?P<conns>\d+|-)\s+(?P<sessions>\d+|-)\s+(?P<rps>[\d.]+|-)\s+(?P<requests>\d+|-)\s+(?P<dns>.*)$")


class Tmux:
    """One private tmux server (its own socket, in a temporary directory: `kill-server`
    leaves the socket file behind) with one session; no configuration file."""

    def __init__(self, socket_path: str) -> None:
        self.argv = ["tmux", "-S", socket_path, "-f", "/dev/null"]
        self.session = "top"

    def __call__(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*self.argv, *args], capture_output=True, text=True, timeout=10)

    def start(self, command: str) -> None:
        r = self("new-session", "-d", "-s", self.session, "-x", "160", "-y", "40", command)
        assert r.returncode == 0, r.stderr

    def screen(self) -> str:
        r = self("capture-pane", "-p", "-t", self.session)
        return r.stdout if r.returncode == 0 else ""

    def size(self) -> str:
        return self("display-message", "-p", "-t", self.session, "#{window_width}x#{window_height}").stdout.strip()

    def kill(self) -> None:
        self("kill-server")


def rows(screen: str) -> dict[str, dict[str, str]]:
    return {m["host"]: m.groupdict() for m in map(ROW.match, screen.splitlines()) if m}


def client_of(lab, pop: str) -> str:
    """The client host in the PoP's city when the plan has one, else the first client."""
    mine = f"client-{lab.host(pop)['region']}"
    return mine if any(h["name"] == mine for h in lab.hosts) else lab.role("client")[0]["name"]


def describe(screen: str) -> str:
    return "screen:\n" + screen


@need_tools("tmux", "curl")
def test_top_shows_every_pop_its_rps_and_a_killed_edge_dead_and_quits_on_q(lab, gslb_run, tmp_path_factory):
    pops = [h["name"] for h in lab.role("pop")]
    assert len(pops) >= 2, pops
    busy = "pop-eu" if "pop-eu" in pops else pops[0]
    victim = next(p for p in reversed(pops) if p != busy)
    client = client_of(lab, busy)
    zone = load_plan(lab.status["plan"]).zone
    ca = lab.status["state"]["ca"]
    addr = lab.host(busy)["ipv4"][0]
    name = f"top-probe.app.{zone}"

    tmux = Tmux(str(tmp_path_factory.mktemp("tmux") / "s"))
    stop = threading.Event()
    sent = [0]
    killed = False

    def traffic() -> None:
        # Bounded in count and time: at most 300 curl runs of 10 requests, 60 s.
        end = time.monotonic() + 60
        for _ in range(300):
            if stop.is_set() or time.monotonic() > end:
                return
            urls = [f"https://{name}/?n={sent[0] + i}" for i in range(10)]
            lab.run(client, "curl", "-s", "-o", "/dev/null", "--max-time", "5", "--cacert", ca,
                    "--resolve", f"{name}:443:{addr}", *urls, timeout=15)
            sent[0] += len(urls)

    # The test process's children inherit COLUMNS=80 LINES=24 (seen under pytest), and rich
    # prefers them to the terminal's size: the screen must be the tmux window's 160x40.
    cmd = " ".join(["env", "-u", "COLUMNS", "-u", "LINES",
                    *gslb_cmd(), "lab", "top", "--prefix", lab.prefix, "--interval", "0.5"])
    t = threading.Thread(target=traffic, daemon=True)
    try:
        tmux.start(f"{cmd}; echo \"top exited rc=$?\"; sleep 60")
        # 1. Every PoP has its row, every edge alive, both name servers' views in.
        got, took = wait_for(lambda: (lambda s: s if set(pops) <= set(rows(s)) and
                                      all(r["state"] == "alive" for r in rows(s).values()) else None)(tmux.screen()),
                             timeout=30, step=0.2)
        screen = tmux.screen()
        assert got, f"not every PoP shown alive within 30 s (window {tmux.size()}); {describe(screen)}"
        header = screen.splitlines()[0]
        assert header.startswith(f"lab {lab.prefix}  up ") and " UTC " in header, describe(screen)
        assert "q quit" in screen and "dns1" in screen and "dns2" in screen, describe(screen)
        print(f"\nall {len(pops)} PoPs on screen after {took:.2f} s")

        # 2. Traffic through one edge: its rps column goes above 0.
        t.start()
        got, took = wait_for(lambda: (lambda r: r if r and r["rps"] not in ("-", "0.0") else None)(
            rows(tmux.screen()).get(busy)), timeout=30, step=0.2)
        assert got, f"{busy} never showed a non-zero rps ({sent[0]} requests sent); {describe(tmux.screen())}"
        assert float(got["rps"]) > 0 and int(got["requests"]) > 0, got
        print(f"{busy}: {got['rps']} rps, {got['requests']} requests on screen ({sent[0]} sent by then)")
        stop.set()
        t.join(20)

        # 3. Kill another PoP's edge: shown dead, the rest still alive; the name servers notice.
        r = gslb_run("lab", "kill", "--prefix", lab.prefix, "--json", victim)
        assert r.returncode == 0, r.stderr
        killed = True
        pid = json.loads(r.stdout)[0]["pid"]
        got, took = wait_for(lambda: (lambda r: r if r and r["state"] == "dead" else None)(
            rows(tmux.screen()).get(victim)), timeout=15, step=0.2)
        assert got, f"{victim} (pid {pid}) not shown dead within 15 s; {describe(tmux.screen())}"
        assert got["pid"] == str(pid) and got["rps"] == "-" and got["conns"] == "-", got
        others = rows(tmux.screen())
        assert all(others[p]["state"] == "alive" for p in pops if p != victim), describe(tmux.screen())
        print(f"{victim} shown dead {took:.2f} s after the kill")
        got, took = wait_for(lambda: (lambda r: r if r and re.fullmatch(r"0/\d+ up\s+0/\d+ up", r["dns"].strip())
                                      else None)(rows(tmux.screen()).get(victim)), timeout=30, step=0.2)
        assert got, f"the name servers' views of {victim} never went to 0 up; {describe(tmux.screen())}"
        print(f"{victim}: both name servers show it down {took:.2f} s after it was shown dead")

        # 4. q quits: the process exits with status 0.
        tmux("send-keys", "-t", tmux.session, "q")
        got, took = wait_for(lambda: "top exited rc=" in tmux.screen(), timeout=10, step=0.1)
        screen = tmux.screen()
        assert got, f"still running 10 s after q; {describe(screen)}"
        assert "top exited rc=0" in screen, describe(screen)
    finally:
        stop.set()
        if t.is_alive():
            t.join(20)
        tmux.kill()
        if killed:
            gslb_run("lab", "restart", "--prefix", lab.prefix, victim, timeout=60)


def top_once(gslb_run, lab, *extra: str) -> tuple[int, dict]:
    r = gslb_run("lab", "top", "--prefix", lab.prefix, "--once", "--json", "--interval", "0.3", *extra, timeout=30)
    assert r.stdout, f"no output (exit {r.returncode}): {r.stderr}"
    return r.returncode, json.loads(r.stdout)


def test_top_once_json_counts_requests_and_exits_1_while_an_edge_does_not_answer(lab, gslb_run):
    pops = [h["name"] for h in lab.role("pop")]
    busy, stopped = pops[0], pops[1]
    zone = load_plan(lab.status["plan"]).zone
    name = f"top-once.app.{zone}"
    rc, before = top_once(gslb_run, lab)
    assert rc == 0, before
    assert [p["host"] for p in before["pops"]] == pops
    assert all(p["state"] == "alive" and p["pid"] for p in before["pops"]), before["pops"]
    assert before["totals"]["alive"] == len(pops) and before["dns"] == {h["name"]: True for h in lab.role("dns")}
    count = {p["host"]: p["requests"] for p in before["pops"]}[busy]

    # 5 requests through `busy` (one curl, one connection per 404: the edge closes after it)
    urls = [f"https://{name}/?i={i}" for i in range(5)]
    r = lab.run(client_of(lab, busy), "curl", "-s", *["-o", "/dev/null"] * len(urls), "-w", "%{http_code} ",
                "--max-time", "5", "--cacert", lab.status["state"]["ca"],
                "--resolve", f"{name}:443:{lab.host(busy)['ipv4'][0]}", *urls)
    assert r.stdout.split() == ["404"] * 5, (r.stdout, r.stderr)
    rc, after = top_once(gslb_run, lab)
    row = {p["host"]: p for p in after["pops"]}[busy]
    assert row["requests"] - count >= 5, (count, row)

    # A stopped edge (SIGSTOP): alive but not answering; --once says so with exit 1.
    r = gslb_run("lab", "kill", "--prefix", lab.prefix, "--signal", "STOP", stopped)
    assert r.returncode == 0, r.stderr
    try:
        rc, snap = top_once(gslb_run, lab)
        row = {p["host"]: p for p in snap["pops"]}[stopped]
        assert rc == 1 and row["state"] == "no answer" and row["error"] == "timeout", row
        assert row["connections"] is None and row["rps"] is None, row
        assert snap["totals"]["alive"] == len(pops) - 1, snap["totals"]
    finally:
        gslb_run("lab", "kill", "--prefix", lab.prefix, "--signal", "CONT", stopped)
    # Back: its /healthz answers and both name servers have every address of it up again.
    def back():
        rc, snap = top_once(gslb_run, lab)
        row = {p["host"]: p for p in snap["pops"]}[stopped]
        views = list(row["dns"].values())
        return rc == 0 and row["state"] == "alive" and all(v and v["up"] == v["total"] for v in views)
    ok, took = wait_for(back, timeout=30, step=0.2)
    assert ok, f"{stopped} not back in every view within 30 s of SIGCONT"
    print(f"\n{stopped}: SIGSTOP shown as no answer (exit 1); back in both views {took:.1f} s after SIGCONT")
