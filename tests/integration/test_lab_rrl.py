"""RRL in the lab: a flood of 2,000 identical queries from one client host.

The lab's own name servers keep RRL off (their one resolver sends everything
from one address). So this starts a second `gslb dns` inside a dns host, on
another port, with the lab's configuration plus `[rrl]` (a temporary file) and
two workers, floods it from a client host with a bounded UDP sender
(tests/integration/rrl_flood.py: 2,000 queries at 1,000 a second from 8 source
ports, replies collected 1.5 s more), and runs `dig +tcp` from the same host.
The server is stopped by its pid.
"""
from __future__ import annotations

import json
import os
import re
import sys
import tempfile

import pytest

pytestmark = pytest.mark.lab

HERE = os.path.dirname(os.path.abspath(__file__))
FLOOD = os.path.join(HERE, "rrl_flood.py")
PORT = 5354
RATE = 10
WORKERS = 2


def test_a_flood_from_one_client_host_is_limited_and_dig_tcp_still_works(lab, gslb_argv):
    dns_host = lab.role("dns")[0]
    addr = dns_host["ipv4"][0]
    client = lab.role("client")[0]["name"]
    config = lab.status["state"]["config"]
    from dns.config import load_dns_config
    assert not load_dns_config(config).rrl.enabled, "the lab's name servers keep RRL off"
    with tempfile.TemporaryDirectory(prefix="gslb-rrl-") as d:
        conf = os.path.join(d, "dns-rrl.toml")
        # The lab's config, minus its /metrics listener (the lab's name server holds that port).
        with open(config) as src, open(conf, "w") as out:
            text = re.sub(r"(?m)^metrics_listen = .*$", "", src.read())
            out.write(text + f"\n[rrl]\nenabled = true\nresponses_per_second = {RATE}\n")
        # The lab's config holds absolute paths (mmdb, control socket): give this one its own socket.
        srv = lab.spawn(dns_host["name"], *gslb_argv, "dns", "--config", conf, "--listen", f"{addr}:{PORT}",
                        "--workers", str(WORKERS), "--control", os.path.join(d, "ctl.sock"),
                        name="gslb-dns-rrl")
        try:
            srv.wait_line(r"event=workers_started", timeout=30)
            for _ in range(WORKERS):
                srv.wait_line(r"event=listening .*:%d" % PORT, timeout=30)
            r = lab.run(client, sys.executable, FLOOD, addr, str(PORT), "--count", "2000", "--qps", "1000",
                        "--sockets", "8", "--linger", "1.5", timeout=60)
            assert r.returncode == 0, r.stderr
            got = json.loads(r.stdout)
            print(f"\nlab RRL flood from {client} to {addr}:{PORT} ({WORKERS} workers, {RATE}/s): {got}")
            # At most the configured rate of full answers in any one second, over both workers.
            assert 1 <= got["full"] and got["full_max_in_1s"] <= RATE, got
            # The limited ones that came back are TC=1 with no records (slip 2), nothing else. How
            # many come back is the network's business: on a busy machine the server's socket
            # queue drops queries before RRL sees them, so the slip ratio is judged on the
            # server's own counters below, not on what the client received.
            assert got["other"] == 0 and got["tc"] >= 1, got
            srv.wait_line(r"event=rrl_limit_start .*class=answer qname=demo\.app\.lab\.test\.", timeout=10)
            # dig +tcp from the flooding host still gets its answer.
            r = lab.run(client, "dig", f"@{addr}", "-p", str(PORT), "+tcp", "+time=3", "+tries=1",
                        "demo.app.lab.test", "A")
            assert "status: NOERROR" in r.stdout and "ANSWER: 2" in r.stdout and "(TCP)" in r.stdout, (
                r.stdout + "\n".join(srv.log[-30:]))
        finally:
            srv.stop()
        assert srv.p.returncode == 0, "\n".join(srv.log[-20:])
        stopped = [line for line in srv.log if "event=stopped" in line and "rrl_limited=" in line]
        assert len(stopped) == WORKERS, srv.log[-20:]
        counters: dict[str, int] = {}
        for line in stopped:
            for field in line.split():
                k, _, v = field.partition("=")
                if k.startswith("rrl_") and v.isdigit():
                    counters[k] = counters.get(k, 0) + int(v)
        print(f"server counters: {counters}")
        limited = counters["rrl_limited"]
        # slip 2: every second limited reply of a bucket slips (TC=1), the others are dropped.
        assert counters["rrl_slipped"] + counters["rrl_dropped"] == limited >= 1, counters
        assert 0.5 * limited - WORKERS <= counters["rrl_slipped"] <= 0.5 * limited + WORKERS, counters
        assert got["tc"] <= counters["rrl_slipped"], (got, counters)   # every TC=1 the client saw was a slip
