"""The abuse layer in a real edge on loopback (no lab, no root): blocked at accept, others served.

The edge of tests/integration/test_edge_front.py (EdgeServer, a fake hub, an
aiohttp upstream) with its abuse tracker replaced, before any connection, by
one with small limits and loopback not exempt: 127.0.0.1, 127.0.0.2 and
127.0.0.3 are three sources of one /24 (net_factor 8 keeps the /24 out of it).
tests/integration/test_lab_abuse.py shows the same across lab hosts.
"""
from __future__ import annotations

import json
import socket
import ssl
import subprocess
import threading
import time

import pytest
from _helpers import CURL, curl_https
from _polling import wait_for
from test_edge_front import Lab

from edge import server as edge_server
from edge.abuse import AbuseConfig, AbuseTracker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

NAME = "demo.app.lab.test"
CFG = AbuseConfig(exempt=(), connections_burst=5, connections_per_second=0.01, slow_headers=2,
                  block_durations=(2.0, 4.0))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if CURL is None:
        pytest.skip("curl not installed")
    lab = Lab(tmp_path_factory.mktemp("edge-abuse"))
    lab.start()
    swapped = threading.Event()

    def swap():
        lab.edge.abuse = AbuseTracker(CFG, edge_server._abuse_log)
        lab.edge.rate_grace = 0.5          # slow heads judged after 0.5 s (min_header_rate stays 64 B/s)
        swapped.set()

    lab.call(swap)
    assert swapped.wait(10)
    yield lab
    lab.stop()


def get(lab, source: str) -> str:
    r = curl_https(lab.ca.cert_path, lab.https_port, NAME, "/headers", "--interface", source,
                   "-o", "/dev/null", "-w", "%{http_code}", max_time=10)
    return r.stdout.decode() or f"curl exit {r.returncode}: {r.stderr.decode().strip()[:200]}"


def tls_refused(lab, source: str) -> bool:
    """True when a TLS connection from `source` is closed before its handshake ends."""
    ctx = ssl.create_default_context(cafile=str(lab.ca.cert_path))
    raw = socket.create_connection(("127.0.0.1", lab.https_port), timeout=5, source_address=(source, 0))
    try:
        ctx.wrap_socket(raw, server_hostname=NAME).close()
        return False
    except (ssl.SSLError, OSError):
        return True
    finally:
        raw.close()


def abuse_stats(lab) -> dict:
    out = subprocess.run([CURL, "-sS", f"http://127.0.0.1:{lab.health_port}/healthz"], capture_output=True).stdout
    return json.loads(out)["abuse"]


def test_connection_burst_blocks_its_source_at_accept_and_another_source_is_served(lab):
    assert get(lab, "127.0.0.2") == "200"
    held = [socket.create_connection(("127.0.0.1", lab.https_port), timeout=5, source_address=("127.0.0.1", 0))
            for _ in range(CFG.connections_burst)]          # the whole burst, held without a ClientHello
    try:
        ok, _ = wait_for(lambda: tls_refused(lab, "127.0.0.1"), 10, 0.1)
        assert ok, "the source over its burst was not closed at accept"
        assert abuse_stats(lab)["blocks_connection_rate"] == 1
        assert get(lab, "127.0.0.2") == "200"                # the neighbour is not blocked
    finally:
        for s in held:
            s.close()
    ok, waited = wait_for(lambda: get(lab, "127.0.0.1") == "200", 15, 0.2)   # the 2 s block ends
    assert ok, f"still blocked after {waited:.1f} s"
    assert abuse_stats(lab)["unblocks"] >= 1


def test_slow_heads_block_their_source(lab):
    ctx = ssl.create_default_context(cafile=str(lab.ca.cert_path))
    statuses = []
    for _ in range(CFG.slow_headers):
        raw = socket.create_connection(("127.0.0.1", lab.https_port), timeout=5, source_address=("127.0.0.3", 0))
        with ctx.wrap_socket(raw, server_hostname=NAME) as s:
            s.sendall(f"GET / HTTP/1.1\r\nHost: {NAME}\r\n".encode())
            s.settimeout(0.2)
            end = time.monotonic() + 10
            data = b""
            while time.monotonic() < end and not data:
                try:
                    data = s.recv(4096)
                except TimeoutError:
                    s.send(b"X")                              # one byte of the head every 0.2 s
                except OSError:
                    break
            statuses.append(data.split(b"\r\n", 1)[0])
    assert statuses == [b"HTTP/1.1 408 Request Timeout"] * CFG.slow_headers
    assert tls_refused(lab, "127.0.0.3")
    assert abuse_stats(lab)["blocks_slowloris"] == 1
    assert get(lab, "127.0.0.2") == "200"
