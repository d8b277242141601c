"""Failover in the lab (docs/lab.md): one agent at its nearest PoP serves clients everywhere,
and PoP, agent and registry faults heal without a person.

Uses the session lab (`gslb lab up`): 8 PoP edges sharing a 3-member etcd
(registry-eu, -us, -ap) and linked by peer links; name servers with health
checks (http+tcp, every 1 s, fall 3, rise 2). An upstream and ONE bare agent
run in the agent host; `gslb lab exec agent` no longer sets GSLB_SERVER, so the
agent resolves connect.lab.test and binds at its nearest PoP only.

Faults go through the lab's own tracking: `gslb lab kill HOST` (SIGKILL to the
recorded pid) and `gslb lab restart HOST` (same command line, new pid recorded
in state.json), so `status --json` and `down` keep seeing every process. Every
test restores what it broke before it ends (and the module checks the lab is
`up` again), so later modules are not affected. Tests run in file order:
registry faults first, then a PoP without the agent, then the agent's PoP.

Every request runs inside a client host (curl/dig, or this file's `loop` and
`latency` modes), never in the root namespace. Measured figures are printed
(run with -s to see them) and summarised at the end of the module.
"""
from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import _polling
import pytest

pytestmark = [pytest.mark.lab, pytest.mark.timeout(420)]

HERE = Path(__file__).resolve()
PY = sys.executable
UP_PORT = 19080                  # the upstream, on the agent host's loopback
NAME = "failover"                # the endpoint: failover.app.lab.test
HOST = f"{NAME}.app.lab.test"
URL = f"https://{HOST}/"
# The lab's health checks (netns/render.py dns_toml): every 1 s, down after 3, up after 2.
INTERVAL, FALL, RISE = 1.0, 3, 2
# The agent's defaults (docs/protocol.md 3.5): heartbeat timeout 15 s; backoff
# attempt n waits uniform(0, min(30, 0.5 * 2^n)): three attempts at most 3.5 s.
HEARTBEAT_TIMEOUT, BACKOFF_3 = 15.0, 0.5 + 1.0 + 2.0
RESULTS: dict[str, str] = {}


# ---------------------------------------------------------------- helpers


def wait_for(pred, timeout, step=0.1):
    """The failover tests poll every 0.1 s (each probe is a process in a lab host)."""
    return _polling.wait_for(pred, timeout, step)


def pop_of_addr(lab, addr):
    for h in lab.role("pop"):
        if addr in h["ipv4"] + h["ipv6"]:
            return h["region"]
    return None


def auth_answer(lab, client, name=HOST):
    """(PoPs, ttl) of the authoritative answer for `client`'s /24, asked from `client` (dig @dns1 +subnet)."""
    dns1 = lab.role("dns")[0]["ipv4"][0]
    net = lab.host(client)["ipv4"][0].rsplit(".", 1)[0] + ".0/24"
    r = lab.run(client, "dig", "+noall", "+answer", "+time=1", "+tries=1", f"@{dns1}", name, "A",
                f"+subnet={net}", timeout=5)
    rows = [line.split() for line in r.stdout.splitlines() if "\tA\t" in line or " A " in line]
    pops = {pop_of_addr(lab, row[-1]) for row in rows}
    ttl = min((int(row[1]) for row in rows), default=None)
    return pops, ttl


def resolver_ttl(lab, client, name=HOST):
    """Remaining TTL of the resolver's answer for `client` (its cache, for its ECS scope)."""
    r = lab.run(client, "dig", "+noall", "+answer", "+time=2", "+tries=1", name, "A", timeout=6)
    ttls = [int(line.split()[1]) for line in r.stdout.splitlines() if line.strip()]
    return min(ttls) if ttls else None


def curl_via(lab, client, ca, *extra, timeout=5):
    """One request through the resolver: (http_code, remote_ip, Via header, body)."""
    r = lab.run(client, "curl", "-sS", "-i", "--max-time", str(timeout), "--cacert", ca, *extra, URL,
                "-w", "\n%{http_code} %{remote_ip}", timeout=timeout + 5)
    out, _, meta = r.stdout.rpartition("\n")
    code, _, ip = meta.partition(" ")
    via = re.findall(r"(?im)^via: *(.+?)\r?$", out)
    body = out.replace("\r\n", "\n").split("\n\n", 1)[-1]
    if code != "200":
        body += f"\n[curl exit {r.returncode}] {r.stderr.strip()[:300]}"   # what went wrong, for the assertion
    return code, ip, (via[-1] if via else None), body


def ok_everywhere(lab, ca, clients):
    """True when every client gets 200 entering at its own nearest PoP, Via naming it."""
    for c in clients:
        code, ip, via, _ = curl_via(lab, c, ca, timeout=3)
        if code != "200" or via != f"1.1 {pop_of_addr(lab, ip)}.lab.test":
            return False
    return True


def haversine(a, b):
    la1, lo1, la2, lo2 = map(math.radians, (a[0], a[1], b[0], b[1]))
    h = math.sin((la2 - la1) / 2) ** 2 + math.cos(la1) * math.cos(la2) * math.sin((lo2 - lo1) / 2) ** 2
    return 12742 * math.asin(math.sqrt(h))


def ranked_pops(lab, client):
    """The client's PoPs by great-circle distance (the lab's plan has no override for these clients)."""
    c = lab.host(client)
    pops = lab.role("pop")
    return [p["region"] for p in sorted(pops, key=lambda p: haversine((c["lat"], c["lon"]), (p["lat"], p["lon"])))]


def binding_pop(lab, name=HOST):
    """Which PoP the registry says holds the endpoint (etcdctl from the agent host, serializable read)."""
    eps = ",".join(lab.status["state"]["registry"])
    r = lab.run("agent", "etcdctl", f"--endpoints={eps}", "--command-timeout=2s", "get", "--consistency=s",
                f"/gslb/bind/http/{name}", "--print-value-only", timeout=10)
    return json.loads(r.stdout)["pop"] if r.returncode == 0 and r.stdout.strip() else None


def lab_cmd(gslb_run, lab, *args):
    r = gslb_run("lab", *args, "--prefix", lab.prefix)
    assert r.returncode == 0, f"gslb lab {' '.join(args)}: {r.stdout}{r.stderr}"
    return r.stdout


def lab_kill(gslb_run, lab, host):
    """SIGKILL `host`'s processes through the lab's tracking; the epoch time of the signal."""
    r = gslb_run("lab", "kill", "--prefix", lab.prefix, "--json", host)
    assert r.returncode == 0, r.stdout + r.stderr
    killed = json.loads(r.stdout)
    assert killed and all(k["host"] == host for k in killed), killed
    return max(k["time"] for k in killed)


def lab_status(gslb_run, lab):
    return json.loads(gslb_run("lab", "status", "--prefix", lab.prefix, "--json").stdout)


def start_loop(lab, client, ca, seconds, pin=None, interval=0.1):
    """A bounded request loop in `client` (new connection per request, 2 s timeout); pin = address
    (None: resolve through the resolver every time). Collect with finish_loop()."""
    ns = lab.host(client)["netns"]
    return subprocess.Popen(["ip", "netns", "exec", ns, PY, str(HERE), "loop", URL, ca, str(seconds),
                             pin or "-", str(interval)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_loop(p, timeout=60, now=False):
    """The loop's rows and its failed ones; now=True stops it first (SIGTERM: it prints what it has)."""
    if now and p.poll() is None:
        p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, err
    rows = json.loads(out)
    failed = [r for r in rows if r["status"] != 200]
    return rows, failed


def fmt_failed(failed, t0):
    return ", ".join(f"+{r['t'] - t0:.2f}s {r['status'] or r['err']}" for r in failed[:8])


# ---------------------------------------------------------------- fixture


@pytest.fixture(scope="module")
def fo(lab, gslb_argv, gslb_run):
    st = lab.status["state"]
    assert st["agent_servers"] == [], "the agent must resolve connect.lab.test (AGENT_BINDS_EVERY_POP off)"
    assert len(lab.role("registry")) == 3 and len(st["registry"]) == 3
    started = []
    try:
        # the bench's upstream (JSON with the forwarded client address)
        up = lab.spawn("agent", PY, "-m", "bench.failover", "upstream", str(UP_PORT), name="fo-upstream")
        started.append(up)
        up.wait_line(r"^upstream ready", 30)
        agent = lab.spawn("agent", *gslb_argv, "agent", "http", str(UP_PORT), "--name", NAME, name="fo-agent")
        started.append(agent)
        agent.wait_line(rf"forwarding https://{re.escape(HOST)} ", 30)
        # Where it landed: the registry's binding, and the DNS answer for connect.lab.test in its host.
        pop, _ = wait_for(lambda: binding_pop(lab), 10)
        r = lab.run("agent", "dig", "+short", "connect.lab.test", "A")
        dns_pops = {pop_of_addr(lab, a) for a in r.stdout.split()}
        assert pop and dns_pops == {pop}, f"agent bound at {pop}, its DNS answer points at {dns_pops}"
        # Clients in other regions: those in a PoP's own city (nearest PoP = theirs).
        clients = [h["name"] for h in lab.role("client") if h["region"] in {p["region"] for p in lab.role("pop")}
                   and h["region"] != pop][:5]
        assert len(clients) >= 4, clients
        print(f"\nagent bound at pop-{pop} (its nearest by the DNS); clients: {', '.join(clients)}")
        yield type("FO", (), dict(lab=lab, ca=st["ca"], agent=agent, agent_pop=pop, clients=clients,
                                  gslb=gslb_argv, run=gslb_run))
    finally:
        for p in reversed(started):
            p.stop()
        if RESULTS:
            print("\n== failover, measured ==\n" + "\n".join(f"  {k}: {v}" for k, v in RESULTS.items()))


@pytest.fixture()
def restored(fo):
    """After the test: every lab process alive again (status up), whatever the test did."""
    yield
    st = lab_status(fo.run, fo.lab)
    if st["status"] != "up":
        dead = sorted({d.split(":")[0] for d in st.get("dead_processes", [])})
        fo.run("lab", "restart", "--prefix", fo.lab.prefix, *dead)
        st = lab_status(fo.run, fo.lab)
    assert st["status"] == "up", f"the lab was not restored: {st.get('dead_processes')}"


# ---------------------------------------------------------------- one network


def test_one_agent_serves_clients_in_other_regions_each_entering_at_its_nearest_pop(fo):
    lab = fo.lab
    for c in fo.clients:
        code, ip, via, body = curl_via(lab, c, fo.ca)
        entry = pop_of_addr(lab, ip)
        want = lab.host(c)["region"]
        assert code == "200", (c, code, body)
        assert entry == want, f"{c} entered at {entry}, its nearest PoP is {want}"
        assert via == f"1.1 {want}.lab.test", (c, via)
        seen = json.loads(body)
        # the agent's upstream answered, and saw the client's own address (curl may pick IPv6)
        assert seen["xff"] in lab.host(c)["ipv4"] + lab.host(c)["ipv6"] and seen["via_agent"] == "yes"
        print(f"{c}: entered {entry} ({ip}), Via: {via}, agent at {fo.agent_pop}")


def test_cross_pop_added_latency_is_measured(fo):
    lab = fo.lab
    client = "client-eu" if "client-eu" in fo.clients else fo.clients[0]
    other = lab.host(client)["region"]
    same_addr = lab.host(f"pop-{fo.agent_pop}")["ipv4"][0]
    cross_addr = lab.host(f"pop-{other}")["ipv4"][0]
    r = lab.run(client, PY, str(HERE), "latency", URL, fo.ca, same_addr, cross_addr, "200", timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(r.stdout)
    assert res["same"]["via"] == f"1.1 {fo.agent_pop}.lab.test" and res["cross"]["via"] == f"1.1 {other}.lab.test"
    assert res["same"]["n"] == res["cross"]["n"] == 200
    s, x = res["same"], res["cross"]
    line = (f"p50 {x['p50']:.2f} ms vs {s['p50']:.2f} ms ({x['p50'] - s['p50']:+.2f}), "
            f"p99 {x['p99']:.2f} ms vs {s['p99']:.2f} ms ({x['p99'] - s['p99']:+.2f}); "
            f"200 sequential keep-alive requests each, {client} via pop-{other} -> pop-{fo.agent_pop} vs via "
            f"pop-{fo.agent_pop}")
    RESULTS["cross-PoP added latency"] = line
    print("\n" + line)


# ---------------------------------------------------------------- registry


def _leader(lab):
    """The registry host whose etcd member leads, from `etcdctl endpoint status`."""
    eps = ",".join(lab.status["state"]["registry"])
    r = lab.run("agent", "etcdctl", f"--endpoints={eps}", "endpoint", "status", "-w", "json", timeout=10)
    rows = json.loads(r.stdout)
    for row in rows:
        if row["Status"]["header"]["member_id"] == row["Status"]["leader"]:
            addr = row["Endpoint"].split("//")[1].rsplit(":", 1)[0]
            return next(h["name"] for h in lab.role("registry") if addr in h["ipv4"])
    raise AssertionError(f"no leader in {r.stdout}")


def test_etcd_one_member_down_is_invisible_two_down_keeps_traffic_but_refuses_binds(fo, restored):
    lab, ca = fo.lab, fo.ca
    client = fo.clients[0]
    extra = []
    try:
        # -- one member (the leader: the worst one) --
        leader = _leader(lab)
        loop = start_loop(lab, client, ca, 6.0, pin=lab.host(f"pop-{lab.host(client)['region']}")["ipv4"][0])
        time.sleep(1.0)
        t_kill = lab_kill(fo.run, lab, leader)
        # a new bind with one member down: works (a new leader within ~1-2 s; the edge retries)
        a1 = lab.spawn("agent", *fo.gslb, "agent", "http", str(UP_PORT), "--name", "fo-one", name="fo-one")
        extra.append(a1)
        a1.wait_line(r"forwarding https://fo-one\.app\.lab\.test", 20)
        rows, failed = finish_loop(loop)
        RESULTS["requests lost, 1 etcd member killed"] = f"{len(failed)} of {len(rows)} ({leader}, the leader)"
        print(f"\n1 etcd member ({leader}, leader) killed: {len(failed)} of {len(rows)} requests failed; "
              f"a new bind worked")
        assert rows and not failed, f"requests failed with one member down: {fmt_failed(failed, t_kill)}"

        # -- two members: no quorum --
        second = next(h["name"] for h in lab.role("registry") if h["name"] != leader)
        loop = start_loop(lab, client, ca, 8.0, pin=lab.host(f"pop-{lab.host(client)['region']}")["ipv4"][0])
        time.sleep(0.5)
        t_kill2 = lab_kill(fo.run, lab, second)
        a2 = lab.spawn("agent", *fo.gslb, "agent", "http", str(UP_PORT), "--name", "fo-two", name="fo-two")
        extra.append(a2)
        # the edge gives up after its write_timeout (5 s) and tells the agent why
        m = a2.wait_line(r"registry_unavailable|forwarding https://fo-two", 20)
        assert "registry_unavailable" in m.group(0), f"a bind without quorum did not fail: {m.group(0)}"
        bind_fail_s = time.time() - t_kill2
        rows, failed = finish_loop(loop)
        # running traffic (the agent's session, cached routes, peer links) still flows
        code, _, _, _ = curl_via(lab, fo.clients[1], ca)
        RESULTS["requests lost, 2 etcd members killed"] = (f"{len(failed)} of {len(rows)}; a new bind failed "
                                                           f"with registry_unavailable after {bind_fail_s:.1f} s")
        print(f"2 etcd members killed: {len(failed)} of {len(rows)} requests failed; new bind: "
              f"registry_unavailable after {bind_fail_s:.1f} s")
        assert rows and not failed, f"running traffic failed without quorum: {fmt_failed(failed, t_kill2)}"
        assert code == "200"
        # a2 must not be online
        code2 = lab.run(fo.clients[1], "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "3",
                        "--cacert", ca, "https://fo-two.app.lab.test/").stdout
        assert code2 != "200", "an endpoint was bound without quorum"

        # -- back: the waiting agent binds (it retries with backoff) --
        t_back = time.monotonic()
        out = lab_cmd(fo.run, lab, "restart", leader, second)
        assert out.count("running again") == 2, out
        a2.wait_line(r"forwarding https://fo-two\.app\.lab\.test", 45)
        back_s = time.monotonic() - t_back
        ok, _ = wait_for(lambda: lab.run(fo.clients[1], "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                          "--max-time", "3", "--cacert", ca,
                                          "https://fo-two.app.lab.test/").stdout == "200", 10)
        assert ok, "fo-two not reachable after the registry came back"
        print(f"members back: the refused agent bound {back_s:.1f} s after `gslb lab restart`")
        st = lab_status(fo.run, lab)
        assert st["status"] == "up", st.get("dead_processes")
    finally:
        for p in extra:
            p.stop()


# ---------------------------------------------------------------- a PoP dies (not the agent's)


def test_a_dead_pop_leaves_the_dns_within_3_s_of_the_fall_threshold_and_returns_after_rise(fo, restored):
    lab, ca = fo.lab, fo.ca
    victim = "eu" if fo.agent_pop != "eu" else "jp"
    client = f"client-{victim}"
    ranking = ranked_pops(lab, client)
    assert ranking[0] == victim
    nxt = ranking[1]
    pops, ttl_before = auth_answer(lab, client)
    assert pops == {victim}, pops
    # The realistic start: the client has just used its PoP, so the resolver caches that answer.
    code, ip, _, _ = curl_via(lab, client, ca)
    assert code == "200" and pop_of_addr(lab, ip) == victim
    loop = start_loop(lab, client, ca, 40.0, pin=None, interval=0.2)   # through the resolver, like users
    time.sleep(1.0)
    t_kill = lab_kill(fo.run, lab, f"pop-{victim}")
    cached = resolver_ttl(lab, client)
    # authoritative view: the next nearest PoP
    got, withdraw_s = wait_for(lambda: auth_answer(lab, client)[0] == {nxt}, FALL * INTERVAL + 10, 0.1)
    withdraw_s = time.time() - t_kill
    assert got, f"pop-{victim} still answered {FALL * INTERVAL + 10:.0f} s after SIGKILL"
    _, ttl_changing = auth_answer(lab, client)
    print(f"\npop-{victim} SIGKILLed: dig @dns1 +subnet from {client} -> pop-{nxt} after {withdraw_s:.2f} s "
          f"(fall threshold {FALL * INTERVAL:.0f} s: {withdraw_s - FALL * INTERVAL:+.2f} s); TTL "
          f"{ttl_before} -> {ttl_changing} while changing; resolver cache had {cached} s left")
    assert withdraw_s <= FALL * INTERVAL + 3.0, f"withdrawn {withdraw_s:.2f} s after the kill (> fall + 3 s)"
    assert ttl_changing is not None and ttl_changing < ttl_before
    # through the resolver: once its cached answer's TTL has run out
    def via_resolver_ok():
        code, ip, via, _ = curl_via(lab, client, ca, timeout=2)
        return code == "200" and pop_of_addr(lab, ip) == nxt and via == f"1.1 {nxt}.lab.test"
    ok, _ = wait_for(via_resolver_ok, (cached or 30) + 10, 0.2)
    curl_s = time.time() - t_kill
    assert ok, f"curl through the resolver still failing {curl_s:.1f} s after the kill"
    print(f"curl through the resolver: 200 via pop-{nxt} {curl_s:.2f} s after the kill")
    # The resolver serves its cached answer until it expires; had it expired before the
    # withdrawal, it re-fetched the dead PoP with the short changing TTL.
    limit = max(cached or 0, withdraw_s + ttl_changing) + 3.0
    assert curl_s <= limit, f"{curl_s:.1f} s > the cached TTL ({cached} s) / withdrawal + changing TTL, + 3 s"
    time.sleep(1.0)   # a few more requests that must all pass
    rows, failed = finish_loop(loop, now=True)
    lost_window = (max(r["t"] for r in failed) - t_kill) if failed else 0.0
    RESULTS["DNS withdrawal of a dead PoP"] = (f"{withdraw_s:.2f} s after SIGKILL (fall threshold "
                                               f"{FALL * INTERVAL:.0f} s); answer TTL {ttl_before} -> "
                                               f"{ttl_changing} while changing")
    RESULTS["requests lost, PoP killed (clients of that PoP, via resolver)"] = (
        f"{len(failed)} of {len(rows)} (one every 0.2 s), until {lost_window:.1f} s after the kill "
        f"(the resolver's cached answer had {cached} s left)")
    print(f"requests lost by {client} (via resolver, every 0.2 s): {len(failed)} of {len(rows)}, last "
          f"{lost_window:.1f} s after the kill")
    assert lost_window <= limit, f"requests failed until {lost_window:.1f} s after the kill"

    # back: the PoP returns to the answers after the rise threshold
    out = lab_cmd(fo.run, lab, "restart", f"pop-{victim}")
    t_back = time.time()
    got, _ = wait_for(lambda: auth_answer(lab, client)[0] == {victim}, RISE * INTERVAL + 10, 0.1)
    back_s = time.time() - t_back
    assert got, f"pop-{victim} not back in the answers {back_s:.1f} s after its restart"
    print(f"pop-{victim} restarted ({out.strip()}): back in the answers after {back_s:.2f} s "
          f"(rise threshold {RISE * INTERVAL:.0f} s)")
    RESULTS["PoP back in the answers"] = f"{back_s:.2f} s after it was ready again (rise {RISE * INTERVAL:.0f} s)"
    assert back_s <= RISE * INTERVAL + 3.0, f"back after {back_s:.2f} s (> rise + 3 s)"
    # Its clients enter there again once the resolver's cached answer runs out (the next
    # nearest's, cached with the full TTL once pop-eu was stably down): the lab as it was.
    left = resolver_ttl(lab, client) or 0
    ok, again_s = wait_for(lambda: pop_of_addr(lab, curl_via(lab, client, ca, timeout=2)[1]) == victim,
                           left + 5, 0.3)
    assert ok, f"{client} does not enter pop-{victim} again {again_s:.1f} s later (cached answer: {left} s left)"
    print(f"{client} enters pop-{victim} again after {again_s:.1f} s (its resolver answer had {left} s left)")


# ---------------------------------------------------------------- the agent's PoP dies


def test_killing_the_agents_pop_moves_the_agent_and_every_client_is_served_again(fo, restored):
    lab, ca = fo.lab, fo.ca
    dead = fo.agent_pop
    clients = fo.clients[:4]
    assert ok_everywhere(lab, ca, clients)
    # a client entering at a PoP that stays up: what it loses is the agent's move only
    watcher = clients[0]
    loop = start_loop(lab, watcher, ca, 12.0, pin=lab.host(f"pop-{lab.host(watcher)['region']}")["ipv4"][0])
    time.sleep(1.0)
    n_before = len(fo.agent.log)
    t_kill = lab_kill(fo.run, lab, f"pop-{dead}")
    fo.agent.wait_line(r"forwarding https://" + re.escape(HOST), HEARTBEAT_TIMEOUT + BACKOFF_3 + 5)
    rebound_s = time.time() - t_kill
    ok, _ = wait_for(lambda: ok_everywhere(lab, ca, clients), 20, 0.1)
    all_s = time.time() - t_kill
    assert ok, f"clients not all served {all_s:.1f} s after pop-{dead} died"
    new_pop, _ = wait_for(lambda: (binding_pop(lab) or dead) != dead and binding_pop(lab), 10)
    agent_lines = [line for line in fo.agent.log[n_before:] if "event=" in line]
    time.sleep(1.0)   # a few more requests that must all pass
    rows, failed = finish_loop(loop, now=True)
    late = [r for r in failed if r["t"] > t_kill + all_s]
    assert not late, f"requests failed after every client was served again: {fmt_failed(late, t_kill)}"
    print(f"\npop-{dead} (the agent's) SIGKILLed: agent re-bound at pop-{new_pop} after {rebound_s:.2f} s; "
          f"{', '.join(clients)} all 200 after {all_s:.2f} s; {watcher} lost {len(failed)} of {len(rows)} "
          f"requests ({fmt_failed(failed, t_kill)})\n  agent: " + "\n  agent: ".join(agent_lines[-6:]))
    RESULTS["agent failover"] = (f"re-bound at pop-{new_pop} {rebound_s:.2f} s after its PoP (pop-{dead}) was "
                                 f"SIGKILLed; clients in {len(clients)} regions all served after {all_s:.2f} s")
    RESULTS["requests lost, agent's PoP killed"] = (f"{len(failed)} of {len(rows)} (one every 0.1 s from "
                                                    f"{watcher}, entering a live PoP)")
    assert new_pop and new_pop != dead
    assert all_s <= HEARTBEAT_TIMEOUT + BACKOFF_3, f"{all_s:.1f} s > heartbeat timeout + backoff"

    # restore: the PoP back in the lab and in the answers (the agent stays where it is now)
    lab_cmd(fo.run, lab, "restart", f"pop-{dead}")
    probe = f"client-{dead}" if any(h["name"] == f"client-{dead}" for h in lab.role("client")) else None
    if probe:
        got, _ = wait_for(lambda: auth_answer(lab, probe)[0] == {dead}, RISE * INTERVAL + 10, 0.2)
        assert got, f"pop-{dead} not back in the answers"
    assert ok_everywhere(lab, ca, clients)


# ---------------------------------------------------------------- helpers run inside lab hosts


def _conn(url: str, ca: str, addr: str | None, timeout: float):
    """An HTTPS connection for url's host, to `addr` if given (SNI and certificate: the host)."""
    import http.client
    import socket
    import ssl
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname
    ctx = ssl.create_default_context(cafile=ca)

    class Conn(http.client.HTTPSConnection):
        def connect(self):
            raw = socket.create_connection((addr or host, 443), timeout=timeout)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock = ctx.wrap_socket(raw, server_hostname=host)

    return Conn(host, 443, timeout=timeout)


def _loop(url: str, ca: str, seconds: str, pin: str, interval: str) -> None:
    """Sequential requests, a new connection each, for `seconds` (at most 2000); JSON rows out."""
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))   # the test has seen enough: report now
    rows = []
    end = time.time() + float(seconds)
    while time.time() < end and len(rows) < 2000 and not stop:
        t = time.time()
        status, err = None, None
        try:
            c = _conn(url, ca, None if pin == "-" else pin, 2.0)
            c.request("GET", "/loop", headers={"Connection": "close"})
            r = c.getresponse()
            r.read()
            status = r.status
            c.close()
        except Exception as exc:  # every failure counts: refused, reset, timeout, TLS
            err = f"{type(exc).__name__}: {exc}"[:120]
        rows.append({"t": t, "dt": time.time() - t, "status": status, "err": err})
        time.sleep(float(interval))
    print(json.dumps(rows))


def _latency(url: str, ca: str, same: str, cross: str, n: str) -> None:
    """n sequential keep-alive GETs through each address, interleaved; p50/p99 in ms."""
    import statistics

    out = {}
    conns = {"same": _conn(url, ca, same, 5.0), "cross": _conn(url, ca, cross, 5.0)}
    times: dict[str, list[float]] = {"same": [], "cross": []}
    via = {}
    for key, c in conns.items():   # warm-up: TLS handshake, peer link, route cache
        for _ in range(5):
            c.request("GET", "/warm")
            r = c.getresponse()
            r.read()
            via[key] = r.getheader("Via")
    for _ in range(int(n)):
        for key, c in conns.items():
            t = time.perf_counter()
            c.request("GET", "/lat")
            r = c.getresponse()
            r.read()
            if r.status == 200:
                times[key].append((time.perf_counter() - t) * 1000)
    for key, xs in times.items():
        xs.sort()
        out[key] = {"n": len(xs), "p50": statistics.median(xs), "p99": xs[min(len(xs) - 1, int(len(xs) * 0.99))],
                    "via": via[key]}
    print(json.dumps(out))


if __name__ == "__main__":
    mode, *rest = sys.argv[1:]
    {"loop": _loop, "latency": _latency}[mode](*rest)
