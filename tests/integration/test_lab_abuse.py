"""The abuse layer in the lab: a slowloris client and a connection flood are blocked, others are not.

Uses the session lab (`gslb lab up`) with the edges' production defaults
(edge/abuse/README.md: slowloris = 5 heads slower than 64 B/s after 3 s, or
timed out, in 10 s; connection rate 50/s with a burst of 200; first block
10 s). An upstream (`python -m http.server`) and `gslb agent http` run in the
agent host. Every client runs inside a client host, never in the root
namespace, and every client targets the same PoP address (pop-eu) with
`--resolve`, so the three sources meet at one edge:

- client-in runs this file's `slowloris` mode: TLS connections that trickle a
  request head a byte at a time;
- client-sa runs `flood`: a bounded burst of TCP connections, as fast as it can;
- client-eu, a legitimate client, fetches with curl before and during the attacks.

Checked: both attackers are refused at accept while blocked (their own view,
which is also the block latency), the edge logs one abuse_block per block and
counts it, client-eu gets only 200s (its p50 before, during the attacks and while
they are blocked is printed; timings are not asserted), and both blocks expire (polled, bounded).
"""
from __future__ import annotations

import json
import re
import select
import socket
import ssl
import statistics
import sys
import time
from pathlib import Path

import pytest
from _polling import wait_for

pytestmark = [pytest.mark.lab, pytest.mark.timeout(300)]

HERE = Path(__file__).resolve()
PY = sys.executable
NAME = "abuse.app.lab.test"
UP_PORT = 18180                     # the upstream, on the agent host's loopback
POP = "pop-eu"
GOOD, SLOW, FLOOD = "client-eu", "client-in", "client-sa"
FLOOD_CONNECTIONS = 400             # twice the default burst (200)


# ---------------------------------------------------------------- attackers (run inside a client host)


def _tls_open(addr: str, ctx: ssl.SSLContext) -> ssl.SSLSocket | None:
    """A TLS connection to the edge, None when the edge closed it at accept (blocked)."""
    raw = socket.create_connection((addr, 443), timeout=5)
    try:
        return ctx.wrap_socket(raw, server_hostname=NAME)
    except (ssl.SSLError, ConnectionError, OSError):
        raw.close()
        return None


def slowloris(addr: str, ca: str, budget: float = 40.0, conns: int = 8) -> int:
    """Heads trickled at 2 bytes/s on `conns` connections, reopened as the edge closes them,
    until a new connection is closed at accept. Prints one JSON line; exit 0 once blocked."""
    ctx = ssl.create_default_context(cafile=ca)
    t0 = time.monotonic()
    live: list[ssl.SSLSocket] = []
    closed_by_edge = 0
    statuses: list[str] = []
    while time.monotonic() - t0 < budget:
        while len(live) < conns:
            s = _tls_open(addr, ctx)
            if s is None:
                print(json.dumps({"blocked_after_s": round(time.monotonic() - t0, 3),
                                  "closed_by_edge": closed_by_edge, "statuses": statuses[:10]}), flush=True)
                for x in live:
                    x.close()
                return 0
            s.sendall(f"GET / HTTP/1.1\r\nHost: {NAME}\r\n".encode())
            s.setblocking(False)   # TLS 1.3 session tickets make the socket readable with no data
            live.append(s)
        time.sleep(0.5)
        for s in list(live):
            try:
                try:
                    data = s.recv(4096)
                except ssl.SSLWantReadError:
                    s.send(b"X")   # nothing from the edge yet: one more byte of the head
                    continue
                if data:
                    statuses.append(data.split(b"\r\n", 1)[0].decode("latin-1"))
                raise ConnectionError("closed by the edge")
            except (OSError, ssl.SSLError, ConnectionError):
                closed_by_edge += 1
                live.remove(s)
                s.close()
    print(json.dumps({"blocked_after_s": None, "closed_by_edge": closed_by_edge, "statuses": statuses[:10]}),
          flush=True)
    return 1


def flood(addr: str, n: int, ca: str) -> int:
    """`n` TCP connections as fast as they open, held; then one TLS connection, which a
    blocked source cannot complete. Prints one JSON line; exit 0 once blocked."""
    t0 = time.monotonic()
    socks: list[socket.socket] = []
    refused_at = None
    refused = 0
    for i in range(n):
        try:
            socks.append(socket.create_connection((addr, 443), timeout=5))
        except OSError:
            refused += 1
            refused_at = refused_at or time.monotonic() - t0
        if i % 25 == 24 or i == n - 1:
            # the edge closes a refused connection at once: readable, EOF or reset
            readable, _, _ = select.select(socks, [], [], 0.05)
            for s in readable:
                try:
                    gone = s.recv(1) == b""
                except OSError:
                    gone = True
                if gone:
                    refused += 1
                    refused_at = refused_at or time.monotonic() - t0
                    socks.remove(s)
                    s.close()
    flood_s = time.monotonic() - t0
    for s in socks:
        s.close()
    after = _tls_open(addr, ssl.create_default_context(cafile=ca))
    blocked = after is None
    if after is not None:
        after.close()
    print(json.dumps({"blocked_after_s": round(refused_at, 3) if refused_at is not None else None,
                      "refused": refused, "held": len(socks), "flood_s": round(flood_s, 3),
                      "new_connection_refused": blocked}), flush=True)
    return 0 if blocked and refused_at is not None else 1


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def net(lab, gslb_argv, tmp_path_factory):
    st = lab.status["state"]
    tmp = tmp_path_factory.mktemp("lab-abuse")
    (tmp / "index.html").write_text("ok\n")
    started = []
    try:
        up = lab.spawn("agent", PY, "-m", "http.server", str(UP_PORT), "--bind", "127.0.0.1",
                       "--directory", str(tmp), name="abuse-upstream")
        started.append(up)
        agent = lab.spawn("agent", *gslb_argv, "agent", "http", str(UP_PORT), "--name", "abuse", name="agent-abuse")
        started.append(agent)
        agent.wait_line(r"forwarding https://abuse\.app\.lab\.test -> http://localhost:18180")
        addr = lab.host(POP)["ipv4"][0]
        ok, _ = wait_for(lambda: fetch(lab, GOOD, addr, st["ca"])[0] == "200", 30, 0.2)
        assert ok, f"{NAME} not online at {POP} ({addr})"
        yield type("Net", (), dict(lab=lab, ca=st["ca"], addr=addr, tmp=tmp))
    finally:
        for p in reversed(started):
            p.stop()


def fetch(lab, client: str, addr: str, ca: str) -> tuple[str, float]:
    """(HTTP status, seconds) of one curl from `client` to NAME at `addr`."""
    r = lab.run(client, "curl", "-sS", "--max-time", "10", "--cacert", ca, "--resolve", f"{NAME}:443:{addr}",
                "-o", "/dev/null", "-w", "%{http_code} %{time_total}", f"https://{NAME}/", timeout=20)
    code, _, secs = r.stdout.strip().partition(" ")
    return code or f"curl exit {r.returncode}: {r.stderr.strip()[:200]}", float(secs or 0)


def abuse_stats(lab, addr: str) -> dict:
    r = lab.run(GOOD, "curl", "-sS", "--max-time", "5", f"http://{addr}/healthz")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["abuse"]


def edge_log(lab) -> Path:
    procs = [p for p in lab.host(POP)["processes"] if p["name"] == "edge"]
    assert len(procs) == 1, lab.host(POP)
    return Path(procs[0]["log"])


# ---------------------------------------------------------------- the test


def test_slowloris_and_connection_flood_blocked_while_another_client_keeps_getting_200(net):
    lab, addr, ca = net.lab, net.addr, net.ca
    slow_ip, flood_ip = lab.host(SLOW)["ipv4"][0], lab.host(FLOOD)["ipv4"][0]
    log = edge_log(lab)
    log_start = log.stat().st_size
    before_stats = abuse_stats(lab, addr)

    before = []
    for _ in range(15):
        code, secs = fetch(lab, GOOD, addr, ca)
        assert code == "200", code
        before.append(secs)

    t_attack = time.monotonic()
    slow = lab.spawn(SLOW, PY, str(HERE), "slowloris", addr, ca, name="slowloris")
    flooder = lab.spawn(FLOOD, PY, str(HERE), "flood", addr, str(FLOOD_CONNECTIONS), ca, name="flood")
    during, blocked = [], []      # before both attackers saw their block, and after (while it holds)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (slow.p.poll() is None or flooder.p.poll() is None
                                               or len(blocked) < 15):
            attacking = slow.p.poll() is None or flooder.p.poll() is None
            code, secs = fetch(lab, GOOD, addr, ca)
            assert code == "200", f"the legitimate client got {code} during the attacks"
            (during if attacking else blocked).append(secs)
        slow_report = json.loads(slow.wait_line(r"^\{.*\}$", 5).group(0))
        flood_report = json.loads(flooder.wait_line(r"^\{.*\}$", 5).group(0))
        attack_s = time.monotonic() - t_attack
    finally:
        slow.stop()
        flooder.stop()

    assert slow_report["blocked_after_s"] is not None, slow_report
    assert slow_report["closed_by_edge"] >= 5, slow_report            # the 5 slow heads that blocked it
    assert all(s.startswith("HTTP/1.1 408") for s in slow_report["statuses"]), slow_report
    assert flood_report["blocked_after_s"] is not None and flood_report["new_connection_refused"], flood_report
    assert flood_report["refused"] >= FLOOD_CONNECTIONS - 300, flood_report   # most beyond the burst

    after_stats = abuse_stats(lab, addr)
    assert after_stats["blocks_slowloris"] >= before_stats["blocks_slowloris"] + 1, after_stats
    assert after_stats["blocks_connection_rate"] >= before_stats["blocks_connection_rate"] + 1, after_stats
    assert after_stats["refused"] > before_stats["refused"], after_stats

    # One line per block, none per refused connection.
    def lines(event: str, ip: str) -> list[str]:
        with log.open("rb") as f:
            f.seek(log_start)
            text = f.read().decode("utf-8", "replace")
        return [ln for ln in text.splitlines() if f"event={event}" in ln and f"prefix={ip}/32" in ln]

    assert len(lines("abuse_block", slow_ip)) == 1 and "reason=slowloris" in lines("abuse_block", slow_ip)[0]
    assert len(lines("abuse_block", flood_ip)) == 1, lines("abuse_block", flood_ip)
    assert "reason=connection_rate" in lines("abuse_block", flood_ip)[0]

    # The blocks expire (10 s for a first offence): both attackers get 200 again, and the edge says so.
    for client, ip in ((SLOW, slow_ip), (FLOOD, flood_ip)):
        ok, waited = wait_for(lambda: fetch(lab, client, addr, ca)[0] == "200", 30, 0.5)
        assert ok, f"{client} still refused {waited:.0f} s after the attacks"
        ok, _ = wait_for(lambda: len(lines("abuse_unblock", ip)) == 1, 10, 0.2)
        assert ok, f"no abuse_unblock line for {ip}"
    m = re.search(r"duration_s=(\S+)", lines("abuse_unblock", slow_ip)[0])
    assert m and float(m.group(1)) == 10.0

    report = {
        "slowloris_block_after_s": slow_report["blocked_after_s"],
        "flood_block_after_s": flood_report["blocked_after_s"],
        "flood": flood_report,
        "good_client_p50_ms_before": round(statistics.median(before) * 1000, 1),
        "good_client_p50_ms_during_attack": round(statistics.median(during) * 1000, 1) if during else None,
        "good_client_requests_during_attack": len(during),
        "good_client_p50_ms_while_blocked": round(statistics.median(blocked) * 1000, 1),
        "good_client_requests_while_blocked": len(blocked),
        "attack_s": round(attack_s, 1),
    }
    print("abuse figures:", json.dumps(report))


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "slowloris":
        sys.exit(slowloris(sys.argv[2], sys.argv[3]))
    if mode == "flood":
        sys.exit(flood(sys.argv[2], int(sys.argv[3]), sys.argv[4]))
    sys.exit(f"unknown mode {mode!r}")
