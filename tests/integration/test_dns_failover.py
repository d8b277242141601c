"""Health checks end to end on loopback: `gslb dns --workers 2` probing PoP responders.

Three PoPs whose addresses are loopback (127.0.0.21-26), each served by a small
HTTP responder process of this test, listening on the health port and on the
TCP probe port. Probes go to loopback only (the checker refuses anything else
from the root namespace). The answers are read with the real `dig`, several
queries each, so both workers (SO_REUSEPORT spreads dig's random source ports)
must agree.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.integration.test_dns_dig import REPO, Server, answers, dig, need

pytestmark = pytest.mark.integration

INTERVAL, FALL, RISE = 0.2, 3, 2
POPS = {  # id -> (lat, lon, addresses); the lab mmdb puts 198.19.5.0/24 in Tokyo
    "jp": (35.6762, 139.6503, ("127.0.0.21", "127.0.0.22")),
    "eu": (50.1109, 8.6821, ("127.0.0.23", "127.0.0.24")),
    "us": (39.9612, -82.9988, ("127.0.0.25", "127.0.0.26")),
}
TOKYO = "198.19.5.0/24"

RESPONDER = r"""
import asyncio, signal, sys
async def handle(reader, writer):
    try:
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
        await writer.drain()
    except Exception:
        pass
    writer.close()
async def main():
    servers = []
    for spec in sys.argv[1:]:
        host, port = spec.rsplit(":", 1)
        servers.append(await asyncio.start_server(handle, host, int(port)))
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
asyncio.run(main())
"""


def free_tcp_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Responder:
    """One PoP's edge stand-in: GET anything -> 200, on the health port and the TCP port."""

    def __init__(self, addresses: tuple[str, ...], ports: tuple[int, int]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", RESPONDER, *(f"{a}:{p}" for a in addresses for p in ports)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.kill()
            raise AssertionError(f"responder did not start: {line}{self.proc.stdout.read()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc.stdout.close()


def write_config(d: str, http_port: int, tcp_port: int) -> str:
    pops = "".join(
        f'\n[[pop]]\nid = "{pid}"\nlat = {lat}\nlon = {lon}\nipv4 = {json.dumps(list(addrs))}\n'
        for pid, (lat, lon, addrs) in POPS.items())
    text = f"""
[server]
geoip_db = "lab.mmdb"

[zone]
name = "lab.test"

[[zone.ns]]
name = "ns1.lab.test."
ipv4 = ["127.0.0.1"]

[policy]
addresses_per_answer = 2
ttl = 30
fallback = "nearest"

[health]
enabled = true
interval = {INTERVAL}
timeout = 0.5
fall = {FALL}
rise = {RISE}
port = {http_port}
tcp_port = {tcp_port}
check = "http+tcp"
changing_ttl = 5
{pops}
[[gslb]]
name = "*.app"
"""
    path = os.path.join(d, "dns.toml")
    with open(path, "w") as fh:
        fh.write(text)
    return path


def gslb(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gslb.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=30)


def pops_answered(srv: Server, times: int = 8) -> list[set[str]]:
    """The PoPs of `times` successive answers to a Tokyo client, plus their TTLs."""
    out = []
    for _ in range(times):
        got = answers(dig(srv, "demo.app.lab.test", "A", f"+subnet={TOKYO}"))
        out.append({pid for pid, (_, _, addrs) in POPS.items() for _, _, a in got if a in addrs})
    return out


def wait_for(srv: Server, want: str, bound: float) -> float:
    """Seconds until every one of 6 successive answers comes from PoP `want` (bounded)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < bound:
        if all(p == {want} for p in pops_answered(srv, 6)):
            return time.monotonic() - t0
        time.sleep(0.02)
    raise AssertionError(f"answers did not move to {want} within {bound} s: {pops_answered(srv)}\n"
                         f"{srv.logs()[-3000:]}")


@pytest.fixture
def setup(tmp_path, lab_mmdb):
    need("dig")
    shutil.copy(lab_mmdb, tmp_path / "lab.mmdb")
    ports = (free_tcp_port("127.0.0.21"), free_tcp_port("127.0.0.21"))
    responders: dict[str, Responder] = {}
    srv = None
    try:
        for pid, (_, _, addrs) in POPS.items():
            responders[pid] = Responder(addrs, ports)
        control = str(tmp_path / "control.sock")
        srv = Server(write_config(str(tmp_path), *ports), "--workers", "2", "--control", control,
                     log_dir=str(tmp_path))
        yield srv, responders, ports, control
    finally:
        code = srv.stop() if srv is not None else 0
        for r in responders.values():
            r.kill()
    assert code == 0, "SIGTERM must be a clean exit"


def test_dead_pop_is_withdrawn_then_returns_and_every_worker_agrees(setup):
    srv, responders, ports, control = setup
    assert all(p == {"jp"} for p in pops_answered(srv)), "a Tokyo client starts at jp"

    responders["jp"].kill()
    t_kill = time.monotonic()
    bound = (FALL + 1) * INTERVAL + 3.0  # the threshold, a round in flight, dig and CI slack
    withdrawn = wait_for(srv, "eu", bound)
    # The TTL is lowered while jp's health is changing (it just changed).
    ttls = {ttl for _, ttl, _ in answers(dig(srv, "demo.app.lab.test", "A", f"+subnet={TOKYO}"))}
    assert ttls == {5}, ttls
    assert re.search(r"event=health_change pid=\d+ pop=jp addr=127\.0\.0\.2[12] family=4 state=down "
                     r"after=\"3 failures\"", srv.logs()), srv.logs()[-2000:]
    health = json.loads(gslb("dns", "health", "--control", control, "--json").stdout)
    assert {a["address"]: a["state"] for a in health["addresses"] if a["pop"] == "jp"} == \
        {"127.0.0.21": "down", "127.0.0.22": "down"}
    assert len(health["workers"]) == 2 and set(health["workers"].values()) == {health["version"]}
    print(f"withdrawal: {time.monotonic() - t_kill:.2f} s from SIGKILL (answers seen moving after "
          f"{withdrawn:.2f} s)")

    responders["jp"] = Responder(POPS["jp"][2], ports)
    returned = wait_for(srv, "jp", RISE * INTERVAL + 3.0)
    print(f"return: {returned:.2f} s after the responder restarted")
    assert "state=up after=\"2 successes\"" in srv.logs()


def test_drain_and_undrain_change_answers_without_restart(setup):
    srv, _, _, control = setup
    r = gslb("dns", "drain", "jp", "--control", control)
    assert r.returncode == 0 and "every worker answers accordingly" in r.stdout, r.stdout + r.stderr
    # drain returns after both workers acknowledged: no waiting needed
    assert all(p == {"eu"} for p in pops_answered(srv))
    text = gslb("dns", "health", "--control", control).stdout
    assert "drained: jp" in text and re.search(r"jp\s+127\.0\.0\.21\s+drained", text), text

    srv.proc.send_signal(signal.SIGHUP)  # a reload keeps a runtime drain (config unchanged)
    srv.wait_log("event=reloaded", 2)
    assert srv.logs().count("event=reloaded") == 2
    assert all(p == {"eu"} for p in pops_answered(srv))

    r = gslb("dns", "undrain", "jp", "--control", control)
    assert r.returncode == 0 and "drained now: none" in r.stdout, r.stdout + r.stderr
    assert all(p == {"jp"} for p in pops_answered(srv))

    bad = gslb("dns", "drain", "mars", "--control", control)
    assert bad.returncode == 1 and "unknown PoP 'mars' (known: jp, eu, us)" in bad.stderr
    assert all(p == {"jp"} for p in pops_answered(srv)), "a refused drain changes nothing"


def test_every_pop_down_answers_the_nearest_fallback(setup):
    srv, responders, _, control = setup
    for r in responders.values():
        r.kill()
    deadline = time.monotonic() + (FALL + 1) * INTERVAL + 5.0
    while time.monotonic() < deadline:
        health = json.loads(gslb("dns", "health", "--control", control, "--json").stdout)
        if all(a["state"] == "down" for a in health["addresses"]):
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"not every address went down: {health}")
    time.sleep(2 * INTERVAL)  # let the last snapshot reach both workers
    # fallback = "nearest": the first-ranked PoP's addresses, health ignored, with the short TTL
    assert all(p == {"jp"} for p in pops_answered(srv))
    assert {t for _, t, _ in answers(dig(srv, "demo.app.lab.test", "A", f"+subnet={TOKYO}"))} == {5}
    out = gslb("dns", "explain", "demo.app.lab.test", "--ecs", TOKYO, "--config",
               os.path.join(os.path.dirname(control), "dns.toml"), "--server-control", control)
    assert "fallback nearest" in out.stdout, out.stdout + out.stderr
    assert re.search(r"health: +jp down(, changing)?; eu down(, changing)?; us down", out.stdout), out.stdout
    assert "TTL 5 (lowered: fallback answer)" in out.stdout, out.stdout
