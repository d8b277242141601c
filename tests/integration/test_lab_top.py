"""`gslb lab top` on a real lab, on a real terminal: tmux.

The live screen runs in a detached tmux session of a fixed size (its own tmux server,
`-L`, so nobody else's sessions are touched); the test reads the screen with
`tmux capture-pane -p`, polling with a bounded deadline, while it drives traffic from a
client host through one PoP's edge (HTTPS requests for an endpoint name that is offline:
each is a request head through the edge's front, answered 404, and counted), kills
another PoP's edge with `gslb lab kill`, and quits with `q`. The killed edge is restarted
and the tmux server killed in a finally: the session's lab is shared with other tests.
"""
from __future__ import annotations

import json
import os
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
    """One private tmux server (its own socket name) with one session."""

    def __init__(self, name: str) -> None:
        self.argv = ["tmux", "-L", name, "-f", "/dev/null"]
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


def describe(screen: str) -> str:
    return "screen:\n" + screen


@need_tools("tmux", "curl")
def test_top_shows_every_pop_its_rps_and_a_killed_edge_dead_and_quits_on_q(lab, gslb_run):
    pops = [h["name"] for h in lab.role("pop")]
    assert len(pops) >= 2, pops
    busy = "pop-eu" if "pop-eu" in pops else pops[0]
    victim = next(p for p in reversed(pops) if p != busy)
    region = lab.host(busy)["region"]
    client = f"client-{region}" if any(h["name"] == f"client-{region}" for h in lab.hosts) else lab.role("client")[0]["name"]
    zone = load_plan(lab.status["plan"]).zone
    ca = lab.status["state"]["ca"]
    addr = lab.host(busy)["ipv4"][0]
    name = f"top-probe.app.{zone}"

    tmux = Tmux(f"gslb-test-top-{os.getpid()}")
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
    tmux.start(f"{cmd}; echo \"top exited rc=$?\"; sleep 60")
    t = threading.Thread(target=traffic, daemon=True)
    try:
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
