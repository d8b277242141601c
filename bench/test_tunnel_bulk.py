"""Bulk throughput through the tunnel, in separate processes like the real
thing: client -> (TCP front + hub, one process) -> yamux over TLS -> agent
(`gslb agent tcp`) -> upstream source. Opt-in (GSLB_BENCH=1): it measures,
it does not judge speed; it checks every byte arrives and memory stays flat.

    GSLB_BENCH=1 GSLB_BENCH_BYTES=1073741824 .venv/bin/python -m pytest \\
        bench/test_tunnel_bulk.py -s -p no:cacheprovider
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.environ.get("GSLB_BENCH") != "1", reason="benchmark: set GSLB_BENCH=1"),
]

ROOT = Path(__file__).resolve().parents[1]
SIZE = int(os.environ.get("GSLB_BENCH_BYTES", 256 * 1024 * 1024))

EDGE = r"""
import asyncio, signal, ssl, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from tests.integration.test_tunnel_agent import make_ca_and_cert
from edge.hub import Hub, HubConfig, agent_protocol_factory
from edge.agent.relay import UpstreamProtocol, StreamToUpstream
tmp = Path(sys.argv[1])
async def main():
    ca, cert, key = make_ca_and_cert(tmp)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH); ctx.load_cert_chain(cert, key)
    (tmp / "token").write_text("benchtoken\n")
    hub = Hub(HubConfig(domain="app.lab.test"), ["benchtoken"])
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(agent_protocol_factory(hub), "127.0.0.1", 0, ssl=ctx)
    class Front(asyncio.Protocol):  # what edge/front does for a TCP endpoint
        def connection_made(self, t):
            b = hub.lookup("tcp", 20000)
            if b is None:
                t.close(); return
            t.pause_reading()  # until the stream is open (Endpoint.open_stream is async)
            self.opening = asyncio.ensure_future(self.opened(t, b.open_stream(*t.get_extra_info("peername")[:2])))
        async def opened(self, t, opening):
            st = await opening
            self.inner = UpstreamProtocol(st); self.inner.connection_made(t)
            st.set_protocol(StreamToUpstream(t)); t.resume_reading()
        def data_received(self, d): self.inner.data_received(d)
        def eof_received(self): return self.inner.eof_received()
        def pause_writing(self): self.inner.pause_writing()
        def resume_writing(self): self.inner.resume_writing()
        def connection_lost(self, exc):
            if hasattr(self, "inner"): self.inner.connection_lost(exc)
    front = await loop.create_server(Front, "127.0.0.1", 0)
    print(srv.sockets[0].getsockname()[1], front.sockets[0].getsockname()[1], flush=True)
    stop = asyncio.Event(); loop.add_signal_handler(signal.SIGTERM, stop.set); await stop.wait()
import uvloop; uvloop.run(main())
"""

SOURCE = r"""
import asyncio, sys, uvloop
N = int(sys.argv[1]); CH = b"\x5a" * (1 << 20)
class P(asyncio.Protocol):
    def connection_made(self, t):
        self.t = t; self.left = N; self.paused = False; self.pump()
    def pump(self):
        while self.left > 0 and not self.paused:
            n = min(self.left, len(CH)); self.t.write(CH if n == len(CH) else CH[:n]); self.left -= n
        if self.left <= 0: self.t.close()
    def pause_writing(self): self.paused = True
    def resume_writing(self): self.paused = False; self.pump()
async def main():
    s = await asyncio.get_running_loop().create_server(P, "127.0.0.1", 0)
    print(s.sockets[0].getsockname()[1], flush=True); await asyncio.Event().wait()
uvloop.run(main())
"""


def _cpu_and_hwm(pid: int) -> tuple[float, int]:
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    hwm = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmHWM"))
    return cpu, hwm


@pytest.mark.parametrize("agent_loop", ["uvloop", "asyncio"])
def test_bulk_download_through_the_tunnel(tmp_path, agent_loop):
    procs = []
    try:
        edge = subprocess.Popen([sys.executable, "-c", EDGE, str(tmp_path), str(ROOT)], stdout=subprocess.PIPE, text=True)
        procs.append(edge)
        src = subprocess.Popen([sys.executable, "-c", SOURCE, str(SIZE)], stdout=subprocess.PIPE, text=True)
        procs.append(src)
        agent_port, front_port = map(int, edge.stdout.readline().split())
        up_port = int(src.stdout.readline())
        agent = subprocess.Popen(
            [sys.executable, "-m", "gslb.cli", "agent", "tcp", str(up_port), "--server", f"127.0.0.1:{agent_port}",
             "--zone", "lab.test", "--ca", str(tmp_path / "ca.pem"), "--authtoken-file", str(tmp_path / "token"),
             "--loop", agent_loop],
            stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )
        procs.append(agent)
        assert agent.stdout.readline().startswith("forwarding tcp://")
        edge_cpu0, _ = _cpu_and_hwm(edge.pid)
        agent_cpu0, _ = _cpu_and_hwm(agent.pid)
        sock = socket.create_connection(("127.0.0.1", front_port), timeout=60)
        buf = bytearray(1 << 20)
        total = 0
        t0 = time.perf_counter()
        while True:
            n = sock.recv_into(buf)
            if not n:
                break
            total += n
        elapsed = time.perf_counter() - t0
        sock.close()
        edge_cpu, edge_hwm = _cpu_and_hwm(edge.pid)
        agent_cpu, agent_hwm = _cpu_and_hwm(agent.pid)
        assert total == SIZE
        print(
            f"\nbench tunnel_download agent_loop={agent_loop} bytes={SIZE} seconds={elapsed:.2f} "
            f"mb_per_s={SIZE / elapsed / 1e6:.0f} edge_cpu_s={edge_cpu - edge_cpu0:.2f} agent_cpu_s={agent_cpu - agent_cpu0:.2f} "
            f"edge_peak_rss_mb={edge_hwm // 1024} agent_peak_rss_mb={agent_hwm // 1024}"
        )
        # memory is bounded by windows (16 MiB a stream), never by the transfer
        assert edge_hwm < 200 * 1024 and agent_hwm < 200 * 1024
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
