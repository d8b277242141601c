"""The lab's name servers and edges bind :53/:443 as root and then run as nobody:nogroup.

`gslb lab up` starts `gslb dns --user nobody:nogroup` and `gslb edge --user nobody:nogroup`
(netns/lab.py SERVICE_USER). Checked from the outside, as an operator would: the real,
effective, saved and filesystem ids in /proc/<pid>/status of every such process (a name
server's workers too), the ports still answering real clients (dig, curl) from lab hosts,
a SIGHUP reload (which reads the configuration and the DNSSEC key again, as nobody), and
`gslb lab restart` of a PoP starting it unprivileged again. Pids come from the lab's state.
"""
from __future__ import annotations

import json
import os
import grp
import pwd
import re
import signal
import uuid
from pathlib import Path

import pytest
from _polling import wait_for

pytestmark = [pytest.mark.lab, pytest.mark.timeout(300)]

ZONE = "lab.test"
NOBODY = pwd.getpwnam("nobody").pw_uid
NOGROUP = grp.getgrnam("nogroup").gr_gid


def ids(pid: int) -> dict[str, list[int]]:
    """Uid, Gid (real, effective, saved, filesystem) and Groups of a running process."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            out[key] = [int(v) for v in rest.split()]
    return out


def children(pid: int) -> list[int]:
    """Every descendant of pid (a name server's workers), from /proc."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for c in (task / "children").read_text().split():
            out += [int(c), *children(int(c))]
    return out


def processes(gslb_run, lab, name: str) -> list[dict]:
    st = json.loads(gslb_run("lab", "status", "--prefix", lab.prefix, "--json", check=True).stdout)
    found = [dict(p, host=h["name"]) for h in st["hosts"] for p in h["processes"] if p["name"] == name]
    assert found, f"no {name} process in the lab's state"
    return found


def assert_unprivileged(pid: int, what: str) -> None:
    got = ids(pid)
    assert got["Uid"] == [NOBODY] * 4, f"{what} (pid {pid}) Uid {got['Uid']}: not nobody"
    assert got["Gid"] == [NOGROUP] * 4, f"{what} (pid {pid}) Gid {got['Gid']}: not nogroup"
    assert got["Groups"] == [], f"{what} (pid {pid}) kept supplementary groups {got['Groups']}"


def test_every_name_server_worker_and_edge_runs_as_nobody_after_start(lab, gslb_run):
    checked = 0
    for p in processes(gslb_run, lab, "dns") + processes(gslb_run, lab, "edge"):
        assert p["alive"], p
        assert "--user nobody:nogroup" in p["cmd"], p["cmd"]
        for pid in [p["pid"], *children(p["pid"])]:
            assert_unprivileged(pid, f"{p['host']}: {p['name']}")
            checked += 1
        log = Path(p["log"]).read_text()
        assert "event=privileges_dropped" in log and "user=nobody" in log, log[-2000:]
    assert checked >= 2 + 8, checked   # both name servers and every PoP's edge at least


def test_port_53_and_443_answer_and_the_edge_issues_certificates_as_nobody(lab):
    ns1 = lab.role("dns")[0]
    for addr in (ns1["ipv4"][0], ns1["ipv6"][0]):
        for transport in ("+notcp", "+tcp"):
            r = lab.run("client-eu", "dig", f"@{addr}", f"{ZONE}.", "SOA", "+norec", "+time=2", "+tries=2",
                        transport)
            assert "status: NOERROR" in r.stdout and "flags: qr aa" in r.stdout, r.stdout + r.stderr
    # A name no run has used: the edge issues its certificate now, after the drop, into cert_dir.
    name = f"p{uuid.uuid4().hex[:10]}.app.{ZONE}"
    pop = lab.host("pop-eu")
    ca = lab.status["state"]["ca"]
    r = lab.run("client-eu", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{ssl_verify_result}",
                "--max-time", "10", "--cacert", ca, "--resolve", f"{name}:443:{pop['ipv4'][0]}", f"https://{name}/")
    assert r.stdout == "404 0", f"curl https://{name}/ at pop-eu: {r.stdout!r} {r.stderr}"
    cert_dir = Path(lab.status["state"]["dir"]) / "certs"
    key = cert_dir / f"{name}.key"
    st = key.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (NOBODY, NOGROUP, 0o600), (key, st)


def test_a_sighup_reload_works_as_nobody_and_the_name_server_still_answers(lab, gslb_run):
    p = processes(gslb_run, lab, "dns")[0]
    log = Path(p["log"])
    before = log.read_text().count("event=reloaded")
    os.kill(p["pid"], signal.SIGHUP)
    text, waited = wait_for(lambda: (t := log.read_text()).count("event=reloaded") > before and t, 15)
    assert text, f"no event=reloaded in {log} {waited:.1f} s after SIGHUP:\n{log.read_text()[-2000:]}"
    assert "reload_failed" not in text[-4000:], text[-4000:]
    host = lab.host(p["host"])
    r = lab.run("client-jp", "dig", f"@{host['ipv4'][0]}", f"demo.app.{ZONE}", "A", "+norec", "+time=2",
                "+tries=2", "+dnssec")
    assert "status: NOERROR" in r.stdout and "RRSIG" in r.stdout, r.stdout   # signed with the key read as nobody
    for pid in [p["pid"], *children(p["pid"])]:
        assert_unprivileged(pid, "dns after SIGHUP")


def test_lab_restart_of_a_pop_starts_its_edge_unprivileged_again(lab, gslb_run):
    old = next(p for p in processes(gslb_run, lab, "edge") if p["host"] == "pop-au")
    r = gslb_run("lab", "restart", "--prefix", lab.prefix, "pop-au", check=True, timeout=60)
    new = next(p for p in processes(gslb_run, lab, "edge") if p["host"] == "pop-au")
    # progress on stderr (seconds since the start), the result on stdout
    assert re.search(rf"^lab {lab.prefix}: \[ *[\d.]+ s\] pop-au: edge started \(pid {new['pid']}\)$",
                     r.stderr, re.M), r.stderr
    assert f"pop-au: edge running again (pid {new['pid']})" in r.stdout, r.stdout
    assert new["pid"] != old["pid"] and new["alive"], (old, new)
    assert_unprivileged(new["pid"], "pop-au: edge after restart")
    pop = lab.host("pop-au")
    r = lab.run("client-au", "curl", "-s", "--max-time", "5", f"http://{pop['ipv4'][0]}/healthz")
    assert json.loads(r.stdout)["pid"] == new["pid"], r.stdout + r.stderr
    name = f"demo.app.{ZONE}"
    r = lab.run("client-au", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{ssl_verify_result}",
                "--max-time", "10", "--cacert", lab.status["state"]["ca"],
                "--resolve", f"{name}:443:{pop['ipv4'][0]}", f"https://{name}/")
    code, verify = r.stdout.split()
    # Any HTTP answer (404 without an agent, 200 with one) over a verified TLS handshake.
    assert verify == "0" and code != "000", f"https at the restarted pop-au: {r.stdout!r} {r.stderr}"


def test_no_name_server_or_edge_log_shows_code_that_could_not_be_loaded_after_the_drop(lab, gslb_run):
    """Run last in this file (and after the other lab test files in a session): whatever they
    made the daemons do, nothing failed to import once they ran as nobody (the lab's Python
    may live where nobody cannot read: plumbing.privileges.preload)."""
    bad = ("ModuleNotFoundError", "No module named", "unknown encoding", "Permission denied", "Traceback")
    for p in processes(gslb_run, lab, "dns") + processes(gslb_run, lab, "edge"):
        text = Path(p["log"]).read_text(errors="replace")
        found = [b for b in bad if b in text]
        assert not found, f"{p['host']}: {p['name']} log has {found}:\n{text[-3000:]}"
