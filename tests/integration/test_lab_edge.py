"""The edge in the lab: clients -> nearest PoP's `gslb edge` -> tunnel -> `gslb agent` in the agent host.

Uses the session lab (`gslb lab up`): every PoP host runs `gslb edge`, the lab
CA is `state.ca`. The upstreams (HTTP, TLS with an agent-side CA, TCP echo)
run in the agent host, started from this file (`python THIS upstream DIR`);
the agents are bare `gslb agent ...` commands run through `gslb lab exec agent`,
so what the lab sets up for an agent is what is tested. Every client request
runs inside a client host (curl/dig, or this file's `ws`/`tls`/`tcp` modes),
never in the root namespace.

The request must enter through the client's nearest PoP: each test checks
which PoP the client's DNS answer points at and that curl connected to one of
those addresses (`%{remote_ip}`). The agents bind at their own nearest PoP
only (the lab no longer sets GSLB_SERVER), so most of these requests cross a
peer link between PoPs; tests/integration/test_lab_failover.py checks that
part (Via, latency, faults).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _polling import wait_for

pytestmark = [pytest.mark.lab, pytest.mark.timeout(400)]

HERE = Path(__file__).resolve()
PY = sys.executable
HTTP_PORT, TLS_PORT, TCP_PORT = 18080, 18443, 18022   # the upstreams, on the agent host's loopback
# client -> the PoP its DNS answer must point at (the plan's geography: docs/lab.md)
NEAREST = {"client-jp": "pop-jp", "client-lon": "pop-eu", "client-yyz": "pop-us", "client-au": "pop-au",
           "client-eu": "pop-eu"}
GIB = 1 << 30


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def net(lab, gslb_argv, tmp_path_factory):
    st = lab.status["state"]
    assert st["ca"] and Path(st["ca"]).is_file(), st
    assert st["authtoken_file"] and (Path(st["authtoken_file"]).stat().st_mode & 0o777) == 0o600
    tmp = tmp_path_factory.mktemp("lab-edge")
    started = []
    try:
        up = lab.spawn("agent", PY, str(HERE), "upstream", str(tmp), name="upstream")
        started.append(up)
        up.wait_line(r"^upstreams ready", 30)
        gslb = gslb_argv
        # Bare commands: no --server/--zone/--ca/--authtoken; `gslb lab exec agent` provides them.
        agents = {
            "http": lab.spawn("agent", *gslb, "agent", "http", str(HTTP_PORT), "--name", "demo", name="agent-http"),
            "tls": lab.spawn("agent", *gslb, "agent", "tls", str(TLS_PORT), "--name", "secure", name="agent-tls"),
            "tcp": lab.spawn("agent", *gslb, "agent", "tcp", str(TCP_PORT), name="agent-tcp"),
        }
        started += agents.values()
        agents["http"].wait_line(r"forwarding https://demo\.app\.lab\.test -> http://localhost:18080")
        agents["tls"].wait_line(r"forwarding tls://secure\.app\.lab\.test")
        m = agents["tcp"].wait_line(r"forwarding tcp://[^ ]+:(\d+) -> ")
        # The agent prints its URLs once its first session is online; the tests
        # need the endpoints online at every entry PoP they use (the agent's
        # other sessions, or cross-PoP routing, may take a moment longer).
        for client in NEAREST:
            wait_status(lab, client, "https://demo.app.lab.test/headers", st["ca"], "200")
        for qtype in ("A", "AAAA"):
            addr = entry(lab, "client-jp", qtype)[0]
            ok, _ = wait_for(lambda: lab.run("client-jp", PY, str(HERE), "tcp", addr, m.group(1)).returncode == 0,
                             20, 0.2)
            assert ok, f"tcp endpoint not online at {addr}"
        ok, _ = wait_for(lambda: lab.run("client-jp", PY, str(HERE), "tls", "secure.app.lab.test",
                                         str(tmp / "agent-ca" / "ca.pem")).returncode == 0, 20, 0.2)
        assert ok, "tls endpoint not online at pop-jp"
        yield type("Net", (), dict(lab=lab, ca=st["ca"], tmp=tmp, agents=agents, upstream=up,
                                   tcp_port=int(m.group(1)), gslb=gslb))
    finally:
        for p in reversed(started):
            p.stop()


def curl(lab, client, url, *extra, timeout=30):
    return lab.run(client, "curl", "-sS", "--max-time", str(timeout), *extra, url, timeout=timeout + 10)


def dig(lab, client, name, qtype="A"):
    r = lab.run(client, "dig", "+short", "+time=2", "+tries=2", qtype, name)
    assert r.returncode == 0, r.stderr
    return [x for x in r.stdout.split() if x[0].isdigit() or ":" in x]


def entry(lab, client, qtype="A"):
    """The addresses the client's DNS answer points at, checked to be its nearest PoP's."""
    got = dig(lab, client, "demo.app.lab.test", qtype)
    pop = lab.host(NEAREST[client])
    assert got and set(got) <= set(pop["ipv4"] + pop["ipv6"]), (client, got, pop["name"])
    return got


def edge_pid(lab, pop):
    procs = [p for p in lab.host(pop)["processes"] if p["name"] == "edge"]
    assert len(procs) == 1, lab.host(pop)
    return procs[0]["pid"]


def mem_kib(pid):
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            out[k] = int(v.split()[0])
    return out


def status_of(lab, client, url, ca):
    r = curl(lab, client, url, "--cacert", ca, "-o", "/dev/null", "-w", "%{http_code}", timeout=5)
    return r.stdout


def wait_status(lab, client, url, ca, want, timeout=20.0):
    """Poll until `url` answers HTTP status `want` to `client` (bounded); fail saying what it answered."""
    got = []
    ok, _ = wait_for(lambda: got.append(status_of(lab, client, url, ca)) or got[-1] == want, timeout, 0.1)
    assert ok, f"{url} from {client}: {got[-1:]} (want {want}) after {timeout:.0f} s"




# ---------------------------------------------------------------- what the lab sets up


def test_lab_exec_agent_hands_a_bare_agent_its_settings_but_never_the_token(lab, gslb_run):
    st = lab.status["state"]
    r = gslb_run("lab", "exec", "--prefix", lab.prefix, "agent", "--", "env")
    assert r.returncode == 0, r.stderr
    env = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
    assert env["GSLB_AGENT_CONFIG"] == st["agent_config"]
    assert env.get("GSLB_SERVER", "") == ",".join(st["agent_servers"])
    token = Path(st["authtoken_file"]).read_text().strip()
    assert token not in r.stdout and token not in Path(st["agent_config"]).read_text()
    r = gslb_run("lab", "exec", "--prefix", lab.prefix, "client-jp", "--", "env")
    assert "GSLB_AGENT_CONFIG" not in r.stdout


def test_every_edge_answers_healthz_and_listens_on_443_at_every_address(lab):
    for pop in lab.role("pop"):
        for a in pop["ipv4"] + pop["ipv6"]:
            h = f"[{a}]" if ":" in a else a
            r = lab.run("client-jnb", "curl", "-sS", "--max-time", "3", f"http://{h}/healthz")
            assert r.returncode == 0 and json.loads(r.stdout)["pop"] == pop["region"], (a, r.stdout, r.stderr)
            # any TLS answer at all on :443 (the name is unknown: the edge closes, curl says so)
            r = lab.run("client-jnb", "curl", "-sS", "--max-time", "3", "-o", "/dev/null", "-w", "%{remote_ip}",
                        "--connect-to", f"x.lab.test:443:{h}:443", "https://x.lab.test/")
            assert r.stdout == a, (a, r.stdout, r.stderr)


# ---------------------------------------------------------------- HTTPS


@pytest.mark.parametrize("client", ["client-jp", "client-lon", "client-yyz"])
def test_https_from_a_region_enters_its_nearest_pop_with_verified_cert_and_forwarded_for(net, client):
    lab = net.lab
    addrs = entry(lab, client)
    r = curl(lab, client, "https://demo.app.lab.test/headers?from=" + client, "-4", "--cacert", net.ca,
             "-w", "\n%{remote_ip} %{ssl_verify_result}")
    assert r.returncode == 0, r.stderr
    body, _, meta = r.stdout.rpartition("\n")
    remote_ip, verify = meta.split()
    assert remote_ip in addrs and verify == "0", (meta, addrs)
    seen = json.loads(body)
    assert seen["_path"] == f"/headers?from={client}"
    assert seen["X-Forwarded-For"] == lab.host(client)["ipv4"][0]
    assert seen["X-Forwarded-Proto"] == "https" and seen["X-Forwarded-Host"] == "demo.app.lab.test"


def test_https_over_ipv6_forwards_the_clients_ipv6_address(net):
    lab, client = net.lab, "client-au"
    addrs = entry(lab, client, "AAAA")
    r = curl(lab, client, "https://demo.app.lab.test/headers", "-6", "--cacert", net.ca, "-w", "\n%{remote_ip}")
    assert r.returncode == 0, r.stderr
    body, _, remote_ip = r.stdout.rpartition("\n")
    assert remote_ip in addrs
    assert json.loads(body)["X-Forwarded-For"] == lab.host(client)["ipv6"][0]


def test_the_certificate_is_the_lab_cas_and_nothing_else_trusts_it(net):
    # Without the lab CA, curl must refuse: proves --cacert above really verified something.
    r = curl(net.lab, "client-jp", "https://demo.app.lab.test/headers")
    assert r.returncode == 60, (r.returncode, r.stderr)


def test_websocket_echo_through_the_lab(net):
    r = net.lab.run("client-lon", PY, str(HERE), "ws", "wss://demo.app.lab.test/ws", net.ca, "hello from client-lon",
                    timeout=40)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == "echo:hello from client-lon"


def test_sse_first_event_arrives_before_the_stream_ends(net):
    lab, client = net.lab, "client-yyz"
    ns = lab.host(client)["netns"]
    p = subprocess.Popen(["ip", "netns", "exec", ns, "curl", "-sS", "-N", "--max-time", "30", "--cacert", net.ca,
                          "https://demo.app.lab.test/sse"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # The upstream holds the stream open after event one until /sse-release.
        assert p.stdout.readline() + p.stdout.readline() == b"data: one\n\n"
        assert p.poll() is None, "the stream ended before the first event was read"
        r = curl(lab, "client-jp", "https://demo.app.lab.test/sse-release", "--cacert", net.ca)
        assert r.stdout == "released", r.stdout + r.stderr
        out, err = p.communicate(timeout=30)
        assert out == b"data: two\n\n" and p.returncode == 0, err
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()


def test_one_gib_download_and_upload_keep_the_edge_memory_flat(net):
    lab, client = net.lab, "client-eu"
    addrs = entry(lab, client)
    pid = edge_pid(lab, "pop-eu")
    curl(lab, client, "https://demo.app.lab.test/download?n=4194304", "--cacert", net.ca, "-o", "/dev/null")
    before = mem_kib(pid)
    t0 = time.monotonic()
    r = curl(lab, client, f"https://demo.app.lab.test/download?n={GIB}", "-4", "--cacert", net.ca, "-o", "/dev/null",
             "-w", "%{size_download} %{remote_ip}", timeout=150)
    down_s = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    size, remote_ip = r.stdout.split()
    assert int(size) == GIB and remote_ip in addrs
    ns = lab.host(client)["netns"]
    t0 = time.monotonic()
    up = subprocess.run(["ip", "netns", "exec", ns, "sh", "-c",
                         f"head -c {GIB} /dev/zero | curl -sS --max-time 150 --cacert {net.ca} -T - -X POST "
                         "https://demo.app.lab.test/upload"], capture_output=True, text=True, timeout=170)
    up_s = time.monotonic() - t0
    assert up.returncode == 0, up.stderr
    assert json.loads(up.stdout)["bytes"] == GIB
    after = mem_kib(pid)
    grown = (after["VmHWM"] - before["VmHWM"]) / 1024
    print(f"\n1 GiB through pop-eu: download {GIB / down_s / 1e6:.0f} MB/s ({down_s:.1f} s), upload "
          f"{GIB / up_s / 1e6:.0f} MB/s ({up_s:.1f} s); edge VmRSS {before['VmRSS'] // 1024} -> "
          f"{after['VmRSS'] // 1024} MiB, VmHWM +{grown:.1f} MiB")
    # 2 GiB moved: a buffering edge would grow by hundreds of MiB.
    assert grown < 64, f"edge peak RSS grew {grown:.1f} MiB during 1 GiB down + 1 GiB up"


# ---------------------------------------------------------------- TLS and TCP


def test_tls_passthrough_client_sees_the_agent_side_certificate(net):
    agent_ca = str(net.tmp / "agent-ca" / "ca.pem")
    r = net.lab.run("client-jp", PY, str(HERE), "tls", "secure.app.lab.test", agent_ca, timeout=40)
    assert r.returncode == 0, r.stdout + r.stderr
    issuer, echo = r.stdout.split("\n")[:2]
    assert issuer == "issuer=agent-side CA" and echo == "echo:ping"
    # and the lab CA (the edge's) does not verify it: the edge did not terminate
    r = net.lab.run("client-jp", PY, str(HERE), "tls", "secure.app.lab.test", net.ca, timeout=40)
    assert r.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in r.stdout + r.stderr


@pytest.mark.parametrize("qtype", ["A", "AAAA"])
def test_tcp_endpoint_echo_round_trip(net, qtype):
    addr = entry(net.lab, "client-jp", qtype)[0]
    r = net.lab.run("client-jp", PY, str(HERE), "tcp", addr, str(net.tcp_port), timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == f"echo:round trip over {addr}"


# ---------------------------------------------------------------- agent life cycle and errors




def test_agent_killed_goes_offline_404_and_a_restart_is_online_within_2_s(net):
    lab, url = net.lab, "https://kill9.app.lab.test/headers"
    gslb = net.gslb
    victim = lab.spawn("agent", *gslb, "agent", "http", str(HTTP_PORT), "--name", "kill9", name="victim")
    try:
        victim.wait_line(r"forwarding https://kill9")
        wait_status(lab, "client-jp", url, net.ca, "200")
        t0 = time.monotonic()
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(5)
        # the heartbeat timeout (15 s) bounds it; the kernel's FIN/RST usually makes it immediate
        code, offline_s = wait_for(lambda: status_of(lab, "client-jp", url, net.ca) == "404", 15 + 5)
        assert code, "still online 20 s after SIGKILL"
        r = curl(lab, "client-jp", url, "--cacert", net.ca, "-i")
        assert r.stdout.startswith("HTTP/1.1 404") and "ERR_GSLB_3200" in r.stdout and "kill9" in r.stdout
        t_start = time.monotonic()
        victim = lab.spawn("agent", *gslb, "agent", "http", str(HTTP_PORT), "--name", "kill9", name="victim2")
        # The agent's own start-up (Python imports, TLS) depends on how busy the machine is:
        # "online within 2 s" counts from the agent saying it is forwarding.
        line = victim.wait_line(r"forwarding https://kill9", 15)
        started_s = time.monotonic() - t_start
        # When it was online: the start of the first request that got 200 (each check is a
        # curl process in a client namespace, ~0.1-0.3 s on a busy machine: its end would
        # add the check's own start-up to the figure).
        t_fwd, online_s, done_s = time.monotonic(), None, None
        while time.monotonic() - t_fwd < 15:   # bounded
            t_try = time.monotonic() - t_fwd
            if status_of(lab, "client-jp", url, net.ca) == "200":
                online_s, done_s = t_try, time.monotonic() - t_fwd
                break
            time.sleep(0.05)
        assert online_s is not None, "not online again 15 s after the restart"
        print(f"\nSIGKILL -> 404 after {offline_s:.2f} s (measured from the kill: {time.monotonic() - t0:.2f} s "
              f"incl. the check); restart: forwarding after {started_s:.2f} s, then the first 200 sent "
              f"{online_s:.2f} s later (answered at {done_s:.2f} s)")
        assert line and online_s <= 2.0, f"online {online_s:.2f} s after the agent said forwarding (> 2 s)"
    finally:
        victim.stop()


def _agent_exit(net, *args, timeout=30):
    p = net.lab.spawn("agent", *net.gslb, "agent", *args, name="agent-" + args[-1])
    try:
        rc = p.wait(timeout)
    finally:
        p.stop()
    time.sleep(0.05)   # the reader thread drains the last lines
    return rc, "\n".join(p.log)


def test_wrong_authtoken_is_a_final_error_that_never_shows_the_token(net):
    bad = net.tmp / "wrong-token"
    bad.write_text("not-the-lab-token-4711\n")
    bad.chmod(0o600)
    rc, out = _agent_exit(net, "http", str(HTTP_PORT), "--name", "wrongtoken", "--authtoken-file", str(bad))
    assert rc == 1 and "refused the authtoken" in out and "auth_failed" in out, out
    assert "not-the-lab-token-4711" not in out
    real = Path(net.lab.status["state"]["authtoken_file"]).read_text().strip()
    assert real not in out


def test_duplicate_name_is_refused_and_the_first_agent_keeps_it(net):
    rc, out = _agent_exit(net, "http", str(HTTP_PORT), "--name", "demo")
    assert rc == 1 and "already online" in out and "name_in_use" in out, out
    assert status_of(net.lab, "client-jp", "https://demo.app.lab.test/headers", net.ca) == "200"


def test_ip_restriction_deny_answers_403_to_the_denied_client_only(net):
    lab = net.lab
    jp = lab.host("client-jp")
    nets = [jp["ipv4"][0].rsplit(".", 1)[0] + ".0/24", jp["ipv6"][0].rsplit("::", 1)[0] + "::/56"]
    p = lab.spawn("agent", *net.gslb, "agent", "http", str(HTTP_PORT), "--name", "private",
                  "--deny-cidr", nets[0], "--deny-cidr", nets[1], name="agent-private")
    try:
        p.wait_line(r"forwarding https://private")
        wait_status(lab, "client-eu", "https://private.app.lab.test/headers", net.ca, "200")
        wait_status(lab, "client-jp", "https://private.app.lab.test/headers", net.ca, "403")
        for extra in ((), ("-6",)):
            r = curl(lab, "client-jp", "https://private.app.lab.test/headers", "--cacert", net.ca, "-i", *extra)
            assert r.stdout.startswith("HTTP/1.1 403") and "ERR_GSLB_3210" in r.stdout, r.stdout + r.stderr
    finally:
        p.stop()


# ---------------------------------------------------------------- helpers run inside lab hosts


def _upstream(workdir: str) -> None:
    """HTTP (headers, sse, ws, upload, download), TLS echo with an agent-side CA, TCP echo; 127.0.0.1."""
    import asyncio

    from _helpers import LineEcho, make_app
    from aiohttp import web

    from edge.certs import CertAuthority, CertStore

    ca = CertAuthority.create(Path(workdir) / "agent-ca", common_name="agent-side CA")
    store = CertStore(ca, Path(workdir) / "agent-certs")

    async def main():
        # 1 GiB uploads here: count them, do not hash them (the test prints the rate)
        app = make_app(asyncio.Event(), digest=False)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", HTTP_PORT).start()
        loop = asyncio.get_running_loop()
        await loop.create_server(LineEcho, "127.0.0.1", TLS_PORT, ssl=store.context("secure.app.lab.test"))
        await loop.create_server(LineEcho, "127.0.0.1", TCP_PORT)
        print("upstreams ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def _ws(url: str, ca: str, message: str) -> None:
    import ssl

    import websockets.sync.client as wsc

    with wsc.connect(url, ssl=ssl.create_default_context(cafile=ca), open_timeout=10) as ws:
        ws.send(message)
        print(ws.recv(timeout=10))


def _tls(name: str, ca: str) -> None:
    import socket
    import ssl

    ctx = ssl.create_default_context(cafile=ca)
    with socket.create_connection((name, 443), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=name) as s:
            issuer = dict(x[0] for x in s.getpeercert()["issuer"])["commonName"]
            print(f"issuer={issuer}")
            s.sendall(b"ping")
            print(s.recv(100).decode())


def _tcp(addr: str, port: str) -> None:
    import socket

    msg = f"round trip over {addr}".encode()
    with socket.create_connection((addr, int(port)), timeout=10) as s:
        s.sendall(msg)
        buf = b""
        while len(buf) < len(msg) + 5:
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
    print(buf.decode())


if __name__ == "__main__":
    sys.path[:0] = [str(HERE.parents[2]), str(HERE.parents[1])]   # the repository, tests/ (_helpers)
    mode, *rest = sys.argv[1:]
    {"upstream": _upstream, "ws": _ws, "tls": _tls, "tcp": _tcp}[mode](*rest)
