"""Circuit breaker and rate limit on loopback, with real curl:
curl -> `gslb edge` -> tunnel -> `gslb agent` -> upstream.

The edge and the agent are real processes (their command lines); the
upstream (aiohttp, in a thread of this test) answers /status with the status
the test sets and counts the requests that reach it. The agent's
endpoints carry their protection as agent.toml tables (short windows and
tripped durations: the lower limit of 1 s keeps this a few seconds long).
Every wait has a deadline; nothing depends on a fixed sleep.
"""
from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

from _helpers import GSLB, AiohttpUpstream, Proc, curl_https, free_port, free_range, loopback_edge_toml, secret_file
from _tools import need_tools

from edge.certs import CertAuthority

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

TRIPPED = 3  # s: the circuit's tripped_duration; long enough for a few curls while open


class Upstream(AiohttpUpstream):
    """GET /status answers `status`, counting requests; /headers echoes the request's headers."""

    def __init__(self) -> None:
        self.status = 500
        self.count = 0
        self._lock = threading.Lock()
        super().__init__()

    def app(self):
        from aiohttp import web

        async def status(request):
            with self._lock:
                self.count += 1
                code = self.status
            return web.Response(status=code, text=f"upstream {code}\n")

        async def headers(request):
            return web.json_response(dict(request.headers))

        app = web.Application()
        app.router.add_get("/status", status)
        app.router.add_get("/headers", headers)
        return app

    def seen(self) -> int:
        with self._lock:
            return self.count

    def set_status(self, code: int) -> None:
        with self._lock:
            self.status = code


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    tmp: Path = tmp_path_factory.mktemp("protection")
    ca = CertAuthority.create(tmp / "ca")
    token = secret_file(tmp / "authtokens", "protection-token-123\n")
    https_port, http_port, admin_port = free_port(), free_port(), free_port()
    lo, hi = free_range(2)
    # no [edge.modules] order: the default chain (ip_restriction, rate_limit, circuit_breaker)
    cfg = loopback_edge_toml(tmp, token, https_port, (lo, hi),
                             pop_extra=f'http_port = {http_port}\nhealth_listen = "127.0.0.1:{admin_port}"')
    up = Upstream()
    agent_toml = tmp / "agent.toml"
    agent_toml.write_text(f"""
server = "127.0.0.1:{https_port}"
zone = "lab.test"
ca = "{ca.cert_path}"
authtoken_file = "{token}"

[[endpoints]]
kind = "http"
name = "flaky"
port = {up.port}
[endpoints.circuit_breaker]
error_threshold = 0.5
volume_threshold = 4
window = 10
buckets = 10
tripped_duration = {TRIPPED}

[[endpoints]]
kind = "http"
name = "limited"
port = {up.port}
rate_limit = "3/h"

[[endpoints]]
kind = "http"
name = "keyed"
port = {up.port}
rate_limit = {{ rate = "2/h", key = "header:X-Api-Key" }}
""")
    edge = Proc([*GSLB, "edge", "--config", str(cfg), "--pop", "t", "--workers", "1"], "edge")
    edge.wait_line(r"gslb edge: pop=t")
    agent = Proc([*GSLB, "agent", "start", "--config", str(agent_toml)], "agent")
    for name in ("flaky", "limited", "keyed"):
        agent.wait_line(rf"forwarding https://{name}\.app\.lab\.test")
    yield type("Net", (), dict(ca=ca, up=up, edge=edge, agent=agent, https_port=https_port,
                                admin_port=admin_port))
    agent.stop()
    edge.stop()


def get(net, name: str, path: str, *extra: str) -> tuple[int, dict[str, str], str]:
    """curl -i: (status, header fields (lower-case names), body)."""
    r = curl_https(net.ca.cert_path, net.https_port, f"{name}.app.lab.test", path, "-i", *extra,
                   max_time=20, timeout=40)
    assert r.returncode == 0, r.stderr
    head, _, body = r.stdout.decode("latin-1").replace("\r\n", "\n").partition("\n\n")
    lines = head.split("\n")
    fields = {}
    for ln in lines[1:]:
        n, _, v = ln.partition(":")
        fields[n.strip().lower()] = v.strip()
    return int(lines[0].split()[1]), fields, body


@need_tools("curl")
def test_circuit_breaker_trips_on_500s_holds_requests_back_and_closes_after_recovery(net):
    up = net.up
    up.set_status(500)
    statuses = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(statuses) < 20:
        status, fields, body = get(net, "flaky", "/status")
        statuses.append(status)
        if status == 503:
            break
    assert statuses[-1] == 503, statuses
    tripped_at = time.monotonic()
    # the first 4 (volume_threshold) reached the upstream and failed; then the edge answered
    assert statuses[:4] == [500] * 4 and set(statuses[:-1]) == {500} and len(statuses) <= 6, statuses
    assert fields["x-gslb-error-code"] == "ERR_GSLB_3503" and "ERR_GSLB_3503" in body
    assert 1 <= int(fields["retry-after"]) <= TRIPPED
    net.edge.wait_line(r"event=circuit_opened endpoint=flaky\.app\.lab\.test .*reason=error_threshold", 10)
    count = up.seen()
    # While open, nothing reaches the upstream: each 503 leaves its count as it was. (A
    # request once tripped_duration has passed is a probe: it reaches the upstream, which
    # still fails, and the circuit opens again.)
    held = 0
    while held < 3 and time.monotonic() < deadline:
        status, fields, _ = get(net, "flaky", "/status")
        if status == 503:
            assert up.seen() == count
            held += 1
        else:
            assert status == 500 and time.monotonic() - tripped_at >= TRIPPED - 0.5
            count = up.seen()
    assert held == 3
    # The upstream recovers: once tripped_duration has passed a probe goes through and closes it.
    up.set_status(200)
    recovered = None
    while time.monotonic() < deadline:
        status, _, body = get(net, "flaky", "/status")
        if status == 200:
            recovered = body
            break
        assert status == 503
        time.sleep(0.2)  # polling interval; the deadline bounds the wait
    assert recovered == "upstream 200\n"
    net.edge.wait_line(r"event=circuit_half_open endpoint=flaky\.app\.lab\.test", 10)
    net.edge.wait_line(r"event=circuit_closed endpoint=flaky\.app\.lab\.test", 10)
    before = up.seen()
    assert [get(net, "flaky", "/status")[0] for _ in range(3)] == [200] * 3
    assert up.seen() == before + 3


@need_tools("curl")
def test_rate_limit_answers_429_with_retry_after_and_other_clients_are_unaffected(net):
    def from_(addr: str) -> tuple[int, dict[str, str], str]:
        return get(net, "limited", "/headers", "--interface", addr)

    status, _, body = from_("127.0.0.2")
    assert status == 200 and json.loads(body)["X-Forwarded-For"] == "127.0.0.2"  # curl's source is the key
    assert [from_("127.0.0.2")[0] for _ in range(2)] == [200, 200]
    status, fields, body = from_("127.0.0.2")
    assert status == 429, (status, body)
    assert fields["x-gslb-error-code"] == "ERR_GSLB_3429" and "ERR_GSLB_3429" in body
    assert re.fullmatch(r"\d+", fields["retry-after"]) and 1 <= int(fields["retry-after"]) <= 1200  # 3/h
    status, _, body = from_("127.0.0.3")
    assert status == 200 and json.loads(body)["X-Forwarded-For"] == "127.0.0.3"
    assert from_("127.0.0.2")[0] == 429


@need_tools("curl")
def test_rate_limit_by_header_value(net):
    def as_(key: str) -> int:
        return get(net, "keyed", "/headers", "-H", f"X-Api-Key: {key}")[0]

    assert [as_("alice"), as_("alice"), as_("alice")] == [200, 200, 429]
    assert as_("bob") == 200


@need_tools("curl")
def test_what_the_modules_did_reaches_the_edges_metrics(net):
    """After the tests above: /metrics on the edge's admin listener carries the
    modules' stats() (docs/metrics.md, gslb_edge_module_stat{module,stat})."""
    from prometheus_client.parser import text_string_to_metric_families

    out = subprocess.run(["curl", "-sf", "--max-time", "10", f"http://127.0.0.1:{net.admin_port}/metrics"],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    stat = {(s.labels["module"], s.labels["stat"]): s.value for fam in text_string_to_metric_families(out.stdout)
            if fam.name == "gslb_edge_module_stat" for s in fam.samples}
    assert stat[("circuit_breaker", "opened_total")] >= 1 and stat[("circuit_breaker", "closed_total")] >= 1, stat
    assert stat[("circuit_breaker", "rejected_total")] >= 3, stat
    assert stat[("rate_limit", "limited_total")] >= 3, stat
