"""DNS-01 TXT records end to end on loopback: a real etcd, a real `gslb dns` (two workers), dig.

A put under `<prefix>acme/dns01/` shows up as TXT at both workers within the
poll interval (the delay is measured and printed); a delete takes it away;
etcd going down keeps the last set answered and everything else too.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from test_dns_dig import Server, dig, need, write_config

from dns.wire import TXT, make_query

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PREFIX = "/gslb/"


def digest(text: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Etcd:
    """One etcd member on 127.0.0.1 (stopped by pid in the fixture)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.client, self.peer = _free_ports(2)
        self.url = f"http://127.0.0.1:{self.client}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.root / "etcd.log", "ab")
        self.proc = subprocess.Popen(
            ["etcd", "--name", "a1", "--data-dir", str(self.root / "a1"),
             "--listen-peer-urls", f"http://127.0.0.1:{self.peer}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer}",
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--initial-cluster", f"a1=http://127.0.0.1:{self.peer}",
             "--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # bounded
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as resp:
                    if json.loads(resp.read()).get("health") == "true":
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("etcd not healthy in 20 s: " + (self.root / "etcd.log").read_text()[-2000:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def call(self, path: str, body: dict) -> dict:
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read())

    def put(self, name: str, values: list[str], expires: float | None = None) -> None:
        key = f"{PREFIX}acme/dns01/{name}".encode()
        value = json.dumps({"values": values, "expires": expires or time.time() + 600}).encode()
        self.call("/v3/kv/put", {"key": base64.b64encode(key).decode(), "value": base64.b64encode(value).decode()})

    def delete(self, name: str) -> None:
        key = f"{PREFIX}acme/dns01/{name}".encode()
        self.call("/v3/kv/deleterange", {"key": base64.b64encode(key).decode()})


@pytest.fixture(scope="module")
def etcd():
    if not shutil.which("etcd"):
        msg = "etcd is not installed (apt-get install etcd-server; `make install` does it)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    root = Path(tempfile.mkdtemp(prefix="gslb-acme-etcd-"))
    e = Etcd(root)
    try:
        e.start()
        yield e
    finally:
        e.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def server(etcd, tmp_path_factory, lab_mmdb):
    d = tmp_path_factory.mktemp("acmedns")
    shutil.copy(lab_mmdb, d / "lab.mmdb")
    extra = (f'\n[acme]\nenabled = true\nendpoints = ["{etcd.url}"]\nttl = 5\npoll_interval = 0.5\n'
             f'request_timeout = 0.5\n')
    srv = Server(write_config(str(d), extra=extra), "--workers", "2", log_dir=str(d))
    yield srv
    assert srv.stop() == 0


def txt_values(port: int, name: str) -> list[str] | None:
    """The TXT values one UDP query (a fresh socket: a fresh source port, so any worker) gets."""
    import dnslib
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1.0)
        s.sendto(make_query(name, TXT, edns=True), ("127.0.0.1", port))
        try:
            r = dnslib.DNSRecord.parse(s.recv(65535))
        except TimeoutError:
            return None
    return sorted(str(rr.rdata).strip('"') for rr in r.rr if rr.rtype == TXT)


def wait_everywhere(port: int, name: str, want: list[str], timeout: float = 10.0) -> float:
    """Seconds until 20 queries in a row (from 20 source ports: both workers) see `want`."""
    start = time.monotonic()
    streak = 0
    while time.monotonic() - start < timeout:  # bounded by the deadline
        got = txt_values(port, name)
        if got == sorted(want):
            streak += 1
            if streak == 1:
                first_seen = time.monotonic() - start
            if streak >= 20:
                return first_seen
        else:
            streak = 0
            time.sleep(0.01)
    raise AssertionError(f"{name}: {want} not answered everywhere within {timeout}s (last {got})")


def test_put_appears_as_txt_at_every_worker_and_delete_takes_it_away(etcd, server):
    need("dig")
    v1, v2 = digest("a.thumb"), digest("b.thumb")
    name = "_acme-challenge.demo.app.lab.test"
    delays = []
    for i in range(5):
        etcd.put(name, [v1] if i % 2 == 0 else [v1, v2])
        delays.append(wait_everywhere(server.port, name, [v1] if i % 2 == 0 else [v1, v2]))
    out = dig(server, name, "TXT", "+norec")
    assert "status: NOERROR" in out and " aa" in out and f'"{v1}"' in out
    ttl = int(next(line.split()[1] for line in out.splitlines() if line.startswith(name + ".")))
    assert ttl == 5
    # A at the challenge name: NODATA; the endpoint's own name still answers its A records.
    out = dig(server, name, "A", "+norec")
    assert "status: NOERROR" in out and "ANSWER: 0" in out and "SOA" in out
    assert "ANSWER: 2" in dig(server, "demo.app.lab.test", "A", "+norec", "+subnet=198.19.5.0/24")
    etcd.delete(name)
    delays.append(wait_everywhere(server.port, name, []))
    print(f"\nDNS-01 propagation (poll_interval 0.5 s, 2 workers): "
          f"max {max(delays) * 1000:.0f} ms, mean {sum(delays) / len(delays) * 1000:.0f} ms")
    assert max(delays) < 5.0   # an interval plus slack for a busy machine; the figure is printed


def test_registry_down_keeps_the_last_set_and_everything_else(etcd, server):
    v = digest("kept.thumb")
    name = "_acme-challenge.kept.lab.test"
    etcd.put(name, [v])
    wait_everywhere(server.port, name, [v])
    etcd.stop()
    try:
        server.wait_log("acme_registry_unavailable", count=2)   # once per worker
        assert txt_values(server.port, name) == [v]
        assert "ANSWER: 2" in dig(server, "demo.app.lab.test", "A", "+norec", "+subnet=198.19.5.0/24")
        time.sleep(1.5)   # three more failed polls: still logged once per worker
        assert server.logs().count("acme_registry_unavailable") == 2
    finally:
        etcd.start()
    server.wait_log("acme_registry_back", count=2)
    assert server.logs().count("acme_registry_back") == 2
    etcd.delete(name)


def test_dns01_solver_through_etcd_and_both_workers(etcd, server):
    """Dns01Solver with the edge's EtcdRegistry: present returns once the server answers, cleanup removes."""
    import asyncio

    from edge.acme.dns01 import Dns01Solver, txt_value
    from edge.registry import EtcdConfig, EtcdRegistry

    async def main():
        async with EtcdRegistry(EtcdConfig(endpoints=(etcd.url,), prefix=PREFIX)) as reg:
            solver = Dns01Solver(reg, [f"127.0.0.1:{server.port}", f"[::1]:{server.port}"], timeout=20,
                                 interval=0.1, confirmations=5)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            await solver.present("*.tls.lab.test", "tk1", "tk1.thumb")
            await solver.present("tls.lab.test", "tk2", "tk2.thumb")
            took = loop.time() - t0
            want = sorted([txt_value("tk1.thumb"), txt_value("tk2.thumb")])
            assert txt_values(server.port, "_acme-challenge.tls.lab.test") == want
            out = dig(server, "_acme-challenge.tls.lab.test", "TXT", "+norec")
            assert all(f'"{v}"' in out for v in want)
            await solver.cleanup("*.tls.lab.test", "tk1")
            await solver.cleanup("tls.lab.test", "tk2")
            assert await reg.kv_get("dns01/_acme-challenge.tls.lab.test") is None
            return took
    took = asyncio.run(main())
    wait_everywhere(server.port, "_acme-challenge.tls.lab.test", [])
    print(f"\nDns01Solver.present x2 (poll 0.5 s, 2 workers, 2 addresses): {took * 1000:.0f} ms")


def test_a_reload_keeps_the_txt_set(etcd, server):
    """With etcd down (no poll can bring it back), a SIGHUP reload still answers the set read before."""
    v = digest("reload.thumb")
    name = "_acme-challenge.reload.lab.test"
    etcd.put(name, [v])
    wait_everywhere(server.port, name, [v])
    etcd.stop()
    try:
        before = server.logs().count("event=reloaded")
        server.proc.send_signal(signal.SIGHUP)
        server.wait_log("event=reloaded", count=before + 2)   # both workers
        assert server.logs().count("event=reloaded") == before + 2
        assert all(txt_values(server.port, name) == [v] for _ in range(20))
    finally:
        etcd.start()
    etcd.delete(name)
    wait_everywhere(server.port, name, [])
