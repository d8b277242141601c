"""dig from every lab client, through the resolver and straight at the name servers.

The expected PoP of a client is its region when that is a PoP, else the PoP
nearest by great-circle distance, computed here from the coordinates the lab
reports (`status --json`), not hard-coded.
"""
from __future__ import annotations

import ipaddress
import math
import socket
import struct
import time
import uuid

import pytest

pytestmark = pytest.mark.lab

ZONE = "lab.test"
NAME = f"demo.app.{ZONE}"


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0088 * math.asin(math.sqrt(a))


def expected_pop(lab, client: dict) -> dict:
    pops = lab.role("pop")
    for p in pops:
        if p["region"] == client["region"]:
            return p
    return min(pops, key=lambda p: great_circle_km(client["lat"], client["lon"], p["lat"], p["lon"]))


def dig(lab, host: str, *args: str) -> list[tuple[int, str]]:
    """(ttl, address) of the answer section of `dig args` run inside `host`."""
    r = lab.run(host, "dig", "+noall", "+answer", "+time=2", "+tries=2", *args)
    assert r.returncode == 0, f"dig {' '.join(args)} in {host} failed: {r.stdout}{r.stderr}"
    out = []
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[3] in ("A", "AAAA"):
            out.append((int(parts[1]), parts[4]))
    return out


def clients(lab) -> list[dict]:
    cs = lab.role("client")
    assert len(cs) >= 11, "a client per PoP plus at least three places without a PoP"
    return cs


@pytest.fixture(scope="module")
def client_names(lab) -> list[str]:
    return [c["name"] for c in clients(lab)]


def test_status_json_lists_every_host_with_role_region_addresses_processes(lab):
    roles = {h["role"] for h in lab.hosts}
    assert {"bridge", "dns", "pop", "client", "resolver", "agent", "registry"} <= roles
    for h in lab.hosts:
        assert {"name", "role", "region", "ipv4", "ipv6", "processes", "netns"} <= set(h)
        assert h["netns"] == f"{lab.prefix}-{h['name']}"
        assert h["ipv4"] and h["ipv6"]
        for a in h["ipv4"]:
            assert ipaddress.ip_address(a) in ipaddress.ip_network("198.18.0.0/15")
        for a in h["ipv6"]:
            assert ipaddress.ip_address(a) in ipaddress.ip_network("fd7a:5e1b:c00::/48")
        for p in h["processes"]:
            assert {"pid", "cmd", "alive"} <= set(p) and p["alive"], (h["name"], p)
    for p in lab.role("pop"):
        assert len(p["ipv4"]) == 4 and len(p["ipv6"]) == 4 and p["processes"]
    assert len(lab.role("dns")) == 2 and all(h["processes"] for h in lab.role("dns"))
    assert set(lab.status["state"]) >= {"dir", "config", "mmdb", "ca", "authtoken_file", "registry"}
    assert lab.status["state"]["registry"] == [f"http://{h['ipv4'][0]}:2379" for h in lab.role("registry")]
    places = {c["region"] for c in lab.role("client")} - {p["region"] for p in lab.role("pop")}
    assert len(places) >= 3, "at least three clients in places with no PoP"


@pytest.mark.parametrize("qtype", ["A", "AAAA"])
def test_every_client_gets_two_addresses_of_its_expected_pop_through_the_resolver(lab, qtype):
    failures = []
    for c in clients(lab):
        pop = expected_pop(lab, c)
        want = set(pop["ipv4"] if qtype == "A" else pop["ipv6"])
        answers = dig(lab, c["name"], NAME, qtype)          # no @: the client's resolv.conf -> resolver
        addrs = {a for _, a in answers}
        if len(answers) != 2 or not addrs <= want:
            failures.append(f"{c['name']} ({c['region']}): got {sorted(addrs)}, want 2 of {pop['name']} {sorted(want)}")
        for ttl, _ in answers:
            assert 0 <= ttl <= 30, f"{c['name']}: TTL {ttl} > 30"
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("qtype", ["A", "AAAA"])
def test_resolver_over_ipv6_transport_gives_the_same_pop(lab, qtype):
    resolver_v6 = lab.role("resolver")[0]["ipv6"][0]
    failures = []
    for c in clients(lab):
        pop = expected_pop(lab, c)
        want = set(pop["ipv4"] if qtype == "A" else pop["ipv6"])
        addrs = {a for _, a in dig(lab, c["name"], f"@{resolver_v6}", NAME, qtype)}
        if len(addrs) != 2 or not addrs <= want:
            failures.append(f"{c['name']}: got {sorted(addrs)}, want 2 of {pop['name']}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("ns_host", ["dns1", "dns2"])
def test_name_server_directly_with_and_without_subnet_agrees_with_the_resolver(lab, ns_host):
    ns_addr = lab.host(ns_host)["ipv4"][0]
    failures = []
    for c in clients(lab):
        pop = expected_pop(lab, c)
        v4net = ipaddress.ip_network(c["ipv4"][0] + "/24", strict=False)
        plain = {a for _, a in dig(lab, c["name"], f"@{ns_addr}", NAME, "A")}
        subnet = {a for _, a in dig(lab, c["name"], f"@{ns_addr}", NAME, "A", f"+subnet={v4net}")}
        via = {a for _, a in dig(lab, c["name"], NAME, "A")}
        for label, got in (("without +subnet", plain), ("with +subnet", subnet), ("via resolver", via)):
            if len(got) != 2 or not got <= set(pop["ipv4"]):
                failures.append(f"{c['name']} {label}: {sorted(got)} not 2 of {pop['name']}")
    assert not failures, "\n".join(failures)


def test_gslb_lab_exec_uses_the_hosts_resolv_conf(lab, gslb_run):
    resolver = lab.role("resolver")[0]
    r = gslb_run("lab", "exec", "--prefix", lab.prefix, "client-jp", "--", "cat", "/etc/resolv.conf")
    assert r.returncode == 0, r.stderr
    assert f"nameserver {resolver['ipv4'][0]}" in r.stdout and f"nameserver {resolver['ipv6'][0]}" in r.stdout
    r = gslb_run("lab", "exec", "--prefix", lab.prefix, "client-jp", "--", "dig", "+short", NAME)
    assert r.returncode == 0 and set(r.stdout.split()) <= set(lab.host("pop-jp")["ipv4"]) and r.stdout.split()


def test_unknown_host_gets_a_clear_error(lab, gslb_run):
    r = gslb_run("lab", "exec", "--prefix", lab.prefix, "client-nowhere", "--", "true")
    assert r.returncode == 1 and "no lab host 'client-nowhere'" in r.stderr and "client-jp" in r.stderr


def test_every_pop_host_answers_healthz_on_all_its_addresses(lab):
    client = lab.role("client")[0]["name"]
    for pop in lab.role("pop"):
        for a in pop["ipv4"] + pop["ipv6"]:
            host = f"[{a}]" if ":" in a else a
            r = lab.run(client, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "3",
                        f"http://{host}/healthz")
            assert r.stdout == "200", f"{pop['name']} {a}: {r.stdout} {r.stderr}"


def test_lab_hosts_have_no_route_off_the_lab(lab):
    # No default route: a non-lab destination fails at once (nothing wanders off the machine).
    r = lab.run("client-jp", "ip", "route", "get", "8.8.8.8")
    assert r.returncode != 0 and "unreachable" in r.stderr.lower()


# ------------------------------------------------------------------ ECS on the wire


# Classic BPF (linux/filter.h): keep only UDP to port 53, IPv4 or IPv6, so the name
# servers' own health-probe traffic cannot fill the socket's queue and push out the
# queries the test looks for. (code, jt, jf, k); SOCK_DGRAM: offsets from the IP header.
_UDP53 = (
    (0x20, 0, 0, 0xFFFFF000),  # 0: A = ntohs(skb->protocol)   (SKF_AD_OFF + SKF_AD_PROTOCOL)
    (0x15, 0, 5, 0x0800),      # 1: IPv4? else 7
    (0x30, 0, 0, 9),           # 2: A = IPv4 protocol
    (0x15, 0, 9, 17),          # 3: UDP? else drop
    (0xB1, 0, 0, 0),           # 4: X = IPv4 header length
    (0x48, 0, 0, 2),           # 5: A = UDP destination port
    (0x15, 5, 6, 53),          # 6: 53? accept : drop
    (0x15, 0, 5, 0x86DD),      # 7: IPv6? else drop
    (0x30, 0, 0, 6),           # 8: A = next header
    (0x15, 0, 3, 17),          # 9: UDP? else drop
    (0x28, 0, 0, 42),          # 10: A = UDP destination port (40-byte IPv6 header)
    (0x15, 0, 1, 53),          # 11: 53? accept : drop
    (0x06, 0, 0, 0x40000),     # 12: accept (up to 256 KiB)
    (0x06, 0, 0, 0),           # 13: drop
)
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33


def _sniff_socket(ns: str) -> socket.socket:
    """A receive-only packet socket inside namespace `ns` (it never sends) that queues
    only UDP packets to port 53, with a 4 MiB queue."""
    import ctypes
    from pyroute2 import netns as pnetns
    s = pnetns.create_socket(ns, socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0003), flags=0)
    prog = b"".join(struct.pack("HBBI", *ins) for ins in _UDP53)
    buf = ctypes.create_string_buffer(prog)
    s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                 struct.pack("HL", len(_UDP53), ctypes.addressof(buf)))
    s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)
    s.settimeout(0.2)
    return s


def _dns_queries(packet: bytes, proto: int) -> bytes | None:
    """The DNS payload of a UDP packet to port 53 (cooked capture: starts at the IP header)."""
    if proto == 0x0800:
        ihl = (packet[0] & 0x0F) * 4
        if packet[9] != 17:
            return None
        udp = packet[ihl:]
    elif proto == 0x86DD:
        if packet[6] != 17:
            return None
        udp = packet[40:]
    else:
        return None
    if len(udp) < 8 or struct.unpack("!H", udp[2:4])[0] != 53:
        return None
    return udp[8:]


def _ecs_of(payload: bytes) -> tuple[str, str, str] | None:
    """(qname, qtype, client subnet) of a query carrying EDNS Client Subnet (RFC 7871 option 8)."""
    from dnslib import QTYPE, DNSRecord
    try:
        q = DNSRecord.parse(payload)
    except Exception:
        return None
    if q.header.qr:
        return None
    for rr in q.ar:
        if rr.rtype != 41:
            continue
        for opt in rr.rdata:
            if opt.code == 8:
                family, source = struct.unpack("!HB", opt.data[:3])
                raw = opt.data[4:]
                if family == 1:
                    addr = ipaddress.IPv4Address(raw.ljust(4, b"\0"))
                else:
                    addr = ipaddress.IPv6Address(raw.ljust(16, b"\0"))
                return str(q.q.qname).rstrip("."), QTYPE[q.q.qtype], f"{addr}/{source}"
    return None


def test_ecs_from_the_resolver_reaches_the_name_servers(lab):
    """Capture, inside dns1 and dns2, the resolver's query for a fresh name asked by client-jp:
    it carries the client's /24 (v4 transport) and /56 (v6 transport) as EDNS Client Subnet."""
    client = lab.host("client-jp")
    resolver = lab.role("resolver")[0]
    socks = [_sniff_socket(h["netns"]) for h in lab.role("dns")]
    try:
        name4 = f"ecs-{uuid.uuid4().hex[:10]}.app.{ZONE}"
        name6 = f"ecs-{uuid.uuid4().hex[:10]}.app.{ZONE}"
        assert dig(lab, "client-jp", f"@{resolver['ipv4'][0]}", name4, "A")
        assert dig(lab, "client-jp", f"@{resolver['ipv6'][0]}", name6, "AAAA")
        seen = {}
        deadline = time.monotonic() + 10   # the loop ends as soon as both are seen
        while time.monotonic() < deadline and len(seen) < 2:
            for s in socks:
                try:
                    packet, addr = s.recvfrom(65535)
                except socket.timeout:
                    continue
                payload = _dns_queries(packet, addr[1])
                found = _ecs_of(payload) if payload else None
                if found and found[0] in (name4, name6):
                    seen[found[0]] = found
    finally:
        for s in socks:
            s.close()
    want4 = str(ipaddress.ip_network(client["ipv4"][0] + "/24", strict=False))
    want6 = str(ipaddress.ip_network(client["ipv6"][0] + "/56", strict=False))
    assert seen.get(name4, (None, None, None))[2] == want4, f"ECS seen at the name servers: {seen}"
    assert seen.get(name6, (None, None, None))[2] == want6, f"ECS seen at the name servers: {seen}"


def test_hosts_have_dad_off_and_usable_addresses_at_once(lab):
    for name in ("client-jp", "pop-eu", "resolver"):
        r = lab.run(name, "cat", "/proc/sys/net/ipv6/conf/eth0/accept_dad", "/proc/sys/net/ipv4/ip_forward")
        assert r.stdout.split() == ["0", "0"], (name, r.stdout)
        addrs = lab.run(name, "ip", "-o", "addr", "show", "dev", "eth0").stdout
        assert "tentative" not in addrs and "nodad" in addrs, addrs
    bridge = lab.role("bridge")[0]["name"]
    r = lab.run(bridge, "cat", "/proc/sys/net/bridge/bridge-nf-call-iptables")
    assert r.stdout.strip() == "0"
    links = lab.run(bridge, "ip", "-o", "link", "show", "master", "br0").stdout.splitlines()
    assert len(links) == len(lab.hosts) - 1, "one veth per host on the bridge"


def test_lab_logs_shows_the_processes_logs(lab, gslb_run):
    r = gslb_run("lab", "logs", "--prefix", lab.prefix, "dns1", "-n", "100000")
    assert r.returncode == 0 and "dns1.dns.log" in r.stdout and "listening" in r.stdout
    # The whole log: the lab's other tests may have sent the resolver thousands of queries
    # since it started, and it logs each (its start line was out of the last 500 lines).
    r = gslb_run("lab", "logs", "--prefix", lab.prefix, "resolver", "-n", "100000")
    assert r.returncode == 0 and "start of service" in r.stdout
    r = gslb_run("lab", "logs", "--prefix", lab.prefix, "client-jp")
    assert r.returncode == 0 and "runs no process" in r.stdout


def test_the_registry_is_an_etcd_the_agent_host_can_write_and_read(lab):
    endpoints = ",".join(lab.status["state"]["registry"])
    key = f"/lab/test/{uuid.uuid4().hex[:8]}"
    put = lab.run("agent", "etcdctl", f"--endpoints={endpoints}", "put", key, "hello")
    assert put.returncode == 0 and put.stdout.strip() == "OK", put.stderr
    got = lab.run("agent", "etcdctl", f"--endpoints={endpoints}", "get", key, "--print-value-only")
    assert got.stdout.strip() == "hello"
    v6 = lab.role("registry")[0]["ipv6"][0]
    health = lab.run("agent", "curl", "-s", "--max-time", "3", f"http://[{v6}]:2379/health")
    assert '"health":"true"' in health.stdout
