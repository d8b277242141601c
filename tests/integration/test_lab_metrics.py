"""The lab's Prometheus (the `metrics` host) scrapes every name server and edge; after dig and
curl traffic its HTTP API (/api/v1/targets, /api/v1/query) shows the real series grown by
what this test sent. Every request runs inside a lab host."""
from __future__ import annotations

import json
import time
import urllib.parse
from pathlib import Path

import pytest

pytestmark = [pytest.mark.lab, pytest.mark.timeout(300)]

N_DNS = 40     # HINFO queries for the zone apex straight to dns1: a type nobody else asks for
N_EDGE = 3     # HTTPS requests for a name no agent serves: the edge answers 404 itself


def api(lab, path: str, **params: str) -> dict:
    m = lab.role("metrics")[0]
    url = f"http://{m['ipv4'][0]}:9090{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    r = lab.run("metrics", "curl", "-sS", "--max-time", "5", url, timeout=15)
    assert r.returncode == 0, r.stderr
    reply = json.loads(r.stdout)
    assert reply["status"] == "success", reply
    return reply["data"]


def value(lab, query: str) -> float | None:
    """The instant value of a PromQL expression with one result, None without one."""
    result = api(lab, "/api/v1/query", query=query)["result"]
    assert len(result) <= 1, result
    return float(result[0]["value"][1]) if result else None


def poll(pred, timeout: float, what: str):
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        last = pred()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {last!r})")


def test_prometheus_scrapes_every_daemon_and_sees_the_traffic(lab, tmp_path):
    assert len(lab.role("metrics")) == 1
    st = lab.status["state"]
    assert (Path(st["dir"]) / "prometheus").is_dir()   # its data dir: in the state dir, removed by down
    expected = {h["name"] for h in lab.role("dns")} | {h["name"] for h in lab.role("pop")}

    def all_up():
        active = api(lab, "/api/v1/targets")["activeTargets"]
        up = {t["labels"]["host"] for t in active if t["health"] == "up"}
        return up if up == expected and len(active) == len(expected) else None
    poll(all_up, 60, "every target up")
    interval = api(lab, "/api/v1/status/config")["yaml"]
    assert "scrape_interval: 1s" in interval

    dns1 = lab.host("dns1")["ipv4"][0]
    series = f'gslb_dns_queries_total{{host="dns1",qtype="HINFO",rcode="NOERROR",transport="udp",ecs="no"}}'
    before = value(lab, series) or 0.0
    client = lab.role("client")[0]["name"]
    batch = "\n".join(["lab.test. HINFO"] * N_DNS) + "\n"
    path = tmp_path / "batch.txt"   # the lab hosts share the file system
    path.write_text(batch)
    r = lab.run(client, "dig", f"@{dns1}", "+time=2", "+tries=2", "-f", str(path), timeout=120)
    assert r.returncode == 0 and r.stdout.count("status: NOERROR") == N_DNS, r.stdout[-2000:] + r.stderr
    got = poll(lambda: (lambda v: v if v is not None and v >= before + N_DNS else None)(value(lab, series)),
               30, f"{series} grown by {N_DNS}")
    assert got == before + N_DNS   # nothing else asks dns1 for HINFO

    # Plausible values beside it: dns1 is one process; its health view has every PoP address up.
    assert value(lab, 'gslb_dns_workers{host="dns1"}') == 1
    n_addr = sum(len(h["ipv4"]) + len(h["ipv6"]) for h in lab.role("pop"))
    assert value(lab, 'sum(gslb_dns_health_up{host="dns1"})') == n_addr
    assert value(lab, 'gslb_dns_cache_hit_ratio{host="dns1"}') <= 1

    name = "nobody-metrics.app.lab.test"
    edge_series = f'sum(gslb_edge_requests_total{{endpoint="{name}",code="4xx",origin="edge"}})'
    for _ in range(N_EDGE):
        r = lab.run(client, "curl", "-sS", "--max-time", "10", "--cacert", st["ca"], "-o", "/dev/null",
                    "-w", "%{http_code}", f"https://{name}/", timeout=30)
        assert r.stdout == "404", (r.stdout, r.stderr)
    poll(lambda: value(lab, edge_series) == N_EDGE, 30, f"{edge_series} == {N_EDGE}")
    assert value(lab, 'sum(gslb_edge_connections_total{kind="https"})') >= N_EDGE
    assert value(lab, "count(up == 1)") == len(expected)
