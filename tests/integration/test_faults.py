"""Faults and bad input against real processes on 127.0.0.1 (bench.faults, smaller counts).

- 20,000 malformed DNS packets at a running `gslb dns` (2 workers): it is alive, logs no
  traceback or internal error, and answers a valid query correctly right after.
- Every tunnel garbage case (bench.faults.TUNNEL_CASES, docs/protocol.md 2 and 3) on a fresh raw
  TLS session to a running `gslb edge`: each gets its documented outcome, while a real `gslb agent`
  serves HTTPS requests through the same edge without one failure.
- 200 slow header senders and 200 silent TCP connections: each is closed at the edge's header
  (408) or handshake timeout, never before, and a normal client keeps being served.
- Over [edge.limits] max_connections the edge closes new connections at once.

Outcomes are waited for with bounded deadlines; the only time checks are lower bounds the edge's
own timers guarantee (nothing closes before its timeout).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import pytest

from bench import faults
from bench.procs import tree_pids

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_20000_malformed_packets_leave_gslb_dns_alive_and_answering_correctly(tmp_path):
    r = faults.dns_fuzz(20000, str(tmp_path), senders=2, rate=8000.0, workers=2, tcp_every=500, log=lambda m: None)
    assert r["packets"] == 20000 and r["tcp_sent"] == 40
    assert r["alive_after"] and r["crashes"] == 0
    assert r["bad_log_lines"] == 0, r["bad_log_sample"]
    assert r["answer_before_ok"] and r["answer_after_ok"], r["answer_after"]
    assert r["udp_answered"] > 0          # FORMERR and friends came back, not only silence
    assert r["exit_code_on_stop"] == 0    # and it still stops cleanly


def test_tunnel_garbage_cases_get_their_documented_outcome_while_another_agent_serves(tmp_path):
    assert len(faults.TUNNEL_CASES) >= 30
    r = faults.tunnel_garbage(str(tmp_path), log=lambda m: None)
    assert r["failed"] == [], r["failed"]
    assert r["ok"] == len(faults.TUNNEL_CASES)
    assert r["client"]["requests"] > 20 and r["client"]["failed"] == 0, r["client"]
    assert r["edge_alive"] and r["agent_alive"] and r["agent_reconnects"] == 0
    assert r["bad_log_lines"] == 0, r["first_traceback"]


def test_slow_headers_and_idle_tls_are_closed_at_their_timeouts_and_a_client_is_served(tmp_path):
    r = faults.slowloris(str(tmp_path), slow=200, idle=200, header_timeout=2.0, handshake_timeout=2.0,
                         ramp_s=2.0, client_interval=0.05, log=lambda m: None)
    slow, idle = r["slow_header"], r["idle_tls"]
    assert slow["connected"] == 200 and idle["connected"] == 200
    assert slow["never_closed"] == 0 and slow["closed"] == 200
    assert slow["statuses"] == {"HTTP/1.1 408 Request Timeout": 200}
    assert idle["never_closed"] == 0 and idle["closed"] == 200
    # nothing is closed before its timeout (the edge's own timers)
    assert slow["closed_after_s_min"] >= 2.0 - 0.05 and idle["closed_after_s_min"] >= 2.0 - 0.05
    assert r["client"]["failed"] == 0 and r["client"]["requests"] > 20, r["client"]
    assert r["edge_alive"] and r["bad_log_lines"] == 0, r["bad_log_sample"]


def test_connections_over_max_connections_are_closed_at_once(tmp_path):
    net = faults.LoopbackEdge(str(tmp_path), limits={"max_connections": 20},
                              timeouts={"handshake": 60}, agent=False)
    socks = []
    try:
        for _ in range(30):
            socks.append(socket.create_connection(("127.0.0.1", net.port), timeout=5))
        end = time.monotonic() + 10
        while time.monotonic() < end and net.health().get("refused_limit", 0) < 10:
            time.sleep(0.05)
        h = net.health()
        assert h["refused_limit"] == 10 and h["connections"] == 20
        closed = 0
        for s in socks:
            s.settimeout(0.5)
            try:
                if s.recv(1) == b"":
                    closed += 1
            except ConnectionResetError:
                closed += 1
            except socket.timeout:
                pass
        assert closed == 10   # the ten over the cap; the others wait for their ClientHello
    finally:
        for s in socks:
            s.close()
        net.close()


def test_out_of_file_descriptors_the_edge_pauses_accepting_instead_of_spinning(tmp_path):
    # Hard limit 256: 400 connections exhaust the edge's descriptors (accept fails with EMFILE).
    # Before the fix every loop iteration retried accept() and logged: ~200,000 lines a second.
    net = faults.LoopbackEdge(str(tmp_path), timeouts={"handshake": 60}, open_files=256)
    socks = []
    t0 = time.monotonic()
    try:
        for _ in range(400):
            socks.append(socket.create_connection(("127.0.0.1", net.port), timeout=5))
        time.sleep(2.0)   # out of descriptors for a while (the health endpoint is starved too)
    finally:
        for s in socks:
            s.close()
    try:
        ctx = faults.client_context(net.ca)
        end = time.monotonic() + 20
        err = "not tried"
        while time.monotonic() < end:
            err = faults.https_get("demo.app.lab.test", net.port, ctx, "127.0.0.1", 5)
            if not err:
                break
            time.sleep(0.2)
        assert err == ""          # descriptors back: it serves again
        h = net.health()
        elapsed = time.monotonic() - t0
        assert h["accept_errors"] >= 5
        # one failed accept per retry delay (0.1 s), not one per loop iteration
        assert h["accept_errors"] <= elapsed / 0.1 + 5, (h, elapsed)
        text = net.log_text()
        assert 1 <= text.count("event=accept_error") <= elapsed / 5 + 1
        assert "event=open_files_limit" in text
    finally:
        net.close()


def _workers(srv) -> list[int]:
    return [p for p in tree_pids(srv.proc.pid) if p != srv.proc.pid]


def _wait(pred, timeout=20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s")


def _health(srv, tmp) -> dict:
    r = subprocess.run([*faults.gslb_argv(), "dns", "health", "--json", "--control",
                        os.path.join(str(tmp), f"dns-{srv.port}.sock"), "--config",
                        os.path.join(faults.REPO, "examples", "dns.toml")],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_a_killed_dns_worker_is_replaced_with_the_current_view_and_no_query_is_lost(tmp_path):
    srv = faults.DnsServer(str(tmp_path), workers=2)
    try:
        subprocess.run([*faults.gslb_argv(), "dns", "drain", "ap", "--control",
                        os.path.join(str(tmp_path), f"dns-{srv.port}.sock"), "--config",
                        os.path.join(faults.REPO, "examples", "dns.toml")], check=True, capture_output=True,
                       timeout=20)
        old = _workers(srv)
        assert len(old) == 2
        os.kill(old[0], signal.SIGKILL)
        new = _wait(lambda: [p for p in _workers(srv) if p not in old])
        _wait(lambda: "event=worker_respawned" in srv.log_text())  # logged just after the fork
        h = _wait(lambda: (lambda h: h if str(new[0]) in h["workers"] and
                           set(h["workers"].values()) == {h["version"]} else None)(_health(srv, tmp_path)))
        assert h["drained"] == ["ap"] and len(h["workers"]) == 2
        # every query answered, whichever worker the kernel hands it to
        for _ in range(40):
            ok, seen = faults.dns_answer_ok(srv.port)
            assert ok, seen
    finally:
        assert srv.stop() == 0      # and SIGTERM still stops the new worker with the old one


def test_a_dns_worker_crash_loop_stops_the_server_with_status_1(tmp_path):
    from dns.server import RESPAWN_LIMIT
    srv = faults.DnsServer(str(tmp_path), workers=2)
    try:
        seen: set[int] = set()
        for _ in range(RESPAWN_LIMIT + 1):
            pid = _wait(lambda: next((p for p in _workers(srv) if p not in seen), None))
            seen.add(pid)
            os.kill(pid, signal.SIGKILL)
        srv.proc.popen.wait(20)
        assert srv.proc.popen.returncode == 1
        log = srv.log_text()
        assert log.count("event=worker_respawned") == RESPAWN_LIMIT and "event=worker_exited" in log
    finally:
        srv.stop()


def test_a_dns_worker_that_exits_by_itself_is_not_replaced_and_the_server_stops_with_1(tmp_path):
    srv = faults.DnsServer(str(tmp_path), workers=2)
    try:
        os.kill(_workers(srv)[0], signal.SIGTERM)    # it stops cleanly, status 0: its own decision
        srv.proc.popen.wait(20)
        assert srv.proc.popen.returncode == 1
        log = srv.log_text()
        assert "event=worker_respawned" not in log and "event=worker_exited" in log
    finally:
        srv.stop()
