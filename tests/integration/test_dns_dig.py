"""`gslb dns` on loopback, queried with the real `dig` and `kdig`.

Each server runs on a free port of 127.0.0.1 and ::1 from a copy of
examples/dns.toml (with its lab mmdb built from examples/geo-table.toml).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest
from _helpers import dig_answers as answers
from _helpers import dig_flags as flags
from _helpers import dig_status as status

from dns.wire import SOA, ecs_option, make_query

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(REPO, "examples")
JP = {f"198.18.5.{i}" for i in range(1, 5)}
BIG_TXT = "x" * 700


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        msg = f"{tool} is not installed (make install puts it there)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def free_port() -> int:
    """A port free for UDP and TCP on both 127.0.0.1 and ::1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            for fam, kind, host in ((socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1"),
                                    (socket.AF_INET6, socket.SOCK_DGRAM, "::1"),
                                    (socket.AF_INET6, socket.SOCK_STREAM, "::1")):
                with socket.socket(fam, kind) as s:
                    s.bind((host, port))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port")


def udp_query(port: int, msg: bytes, host: str = "127.0.0.1", timeout: float = 1.0) -> bytes | None:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(msg, (host, port))
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


def write_config(d, *, extra: str = "", idle: float = 1.0, max_conns: int = 64, server: str = "") -> str:
    text = open(os.path.join(EXAMPLES, "dns.toml")).read()
    text = text.replace("tcp_idle_timeout = 10.0", f"tcp_idle_timeout = {idle}")
    text = text.replace("tcp_max_connections = 512", f"tcp_max_connections = {max_conns}\n{server}")
    text += f'\n[[record]]\nname = "big"\ntype = "TXT"\nvalue = "{BIG_TXT}"\n' + extra
    path = os.path.join(d, "dns.toml")
    with open(path, "w") as fh:
        fh.write(text)
    return path


class Server:
    def __init__(self, config: str, *args: str, log_dir) -> None:
        self.port = free_port()
        self.config = config
        self.log_path = os.path.join(log_dir, f"gslb-dns-{self.port}.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gslb.cli", "dns", "--config", config,
             "--listen", f"127.0.0.1:{self.port}", "--listen", f"[::1]:{self.port}", *args],
            cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"gslb dns exited {self.proc.returncode}: {self.logs()}")
            if udp_query(self.port, make_query("lab.test", SOA), timeout=0.2) is not None:
                return
        self.stop()
        raise AssertionError(f"gslb dns did not answer within 15 s: {self.logs()}")

    def logs(self) -> str:
        self.log.flush()
        return open(self.log_path).read()

    def wait_log(self, needle: str, count: int = 1, timeout: float = 10.0) -> None:
        """Poll the log (bounded) until `needle` stands in it `count` times; the caller asserts."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.logs().count(needle) < count:
            time.sleep(0.1)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def lab_dir(tmp_path_factory, lab_mmdb):
    d = tmp_path_factory.mktemp("dnsint")
    shutil.copy(lab_mmdb, d / "lab.mmdb")
    return d


@pytest.fixture(scope="module")
def server(lab_dir):
    srv = Server(write_config(str(lab_dir)), log_dir=str(lab_dir))
    yield srv
    assert srv.stop() == 0, "SIGTERM must be a clean exit"


def dig(server: Server, *args: str, host: str = "127.0.0.1") -> str:
    out = subprocess.run([need("dig"), f"@{host}", "-p", str(server.port), "+time=2", "+tries=1", *args],
                         capture_output=True, text=True, timeout=20)
    return out.stdout + out.stderr


def kdig(server: Server, *args: str, host: str = "127.0.0.1") -> str:
    out = subprocess.run([need("kdig"), f"@{host}", "-p", str(server.port), "+time=2", "+retry=0", *args],
                         capture_output=True, text=True, timeout=20)
    return out.stdout + out.stderr


# -- the acceptance -------------------------------------------------------------------

def test_dig_tokyo_subnet_gets_two_jp_addresses_ttl_30_aa_scope_24(server):
    out = dig(server, "demo.app.lab.test", "A", "+subnet=198.19.5.0/24")
    assert status(out) == "NOERROR" and "aa" in flags(out)
    got = answers(out)
    assert len(got) == 2 and {a[2] for a in got} <= JP and {a[1] for a in got} == {30}, out
    assert "CLIENT-SUBNET: 198.19.5.0/24/24" in out


def test_kdig_subnet_and_ipv6_transport(server):
    out = kdig(server, "demo.app.lab.test", "AAAA", "+subnet=198.19.3.0/24", host="::1")
    got = answers(out, "AAAA")
    assert len(got) == 2 and all(a[2].startswith("fd7a:5e1b:c00::3:") for a in got), out
    assert "CLIENT-SUBNET: 198.19.3.0/24/24" in out


def test_dig_over_tcp_and_ipv6(server):
    out = dig(server, "demo.app.lab.test", "AAAA", "+tcp", "+subnet=fd7a:5e1b:c00:500::/56", host="::1")
    got = answers(out, "AAAA")
    assert len(got) == 2 and all(a[2].startswith("fd7a:5e1b:c00::5:") for a in got), out
    assert "(TCP)" in out


def test_rotation_over_successive_dig_queries(server):
    seen = set()
    for _ in range(4):
        seen |= {a[2] for a in answers(dig(server, "x.app.lab.test", "+subnet=198.19.5.0/24"))}
    assert seen == JP


def test_norec_query_is_answered_authoritatively(server):
    out = dig(server, "+norec", "www.lab.test", "A", "+subnet=198.19.5.0/24")
    assert "rd" not in flags(out) and "aa" in flags(out)
    assert answers(out, "CNAME") and {a[2] for a in answers(out)} <= JP


def test_edns_version_1_is_badvers(server):
    assert status(dig(server, "+edns=1", "+noednsneg", "lab.test", "SOA")) == "BADVERS"
    assert "BADVERS" in kdig(server, "+edns=1", "lab.test", "SOA")


def test_any_is_minimal(server):
    out = dig(server, "lab.test", "ANY")
    types = {line.split()[3] for line in out.splitlines()
             if re.match(r"^lab\.test\.\s+\d+\s+IN\s+", line)}
    assert len(types) == 1, out


def test_outside_the_zone_is_refused(server):
    out = kdig(server, "example.com", "A")
    assert "REFUSED" in out and "aa" not in flags(out)


def test_nxdomain_and_nodata_carry_the_soa(server):
    out = dig(server, "nope.lab.test", "A", "+subnet=198.19.5.0/24")
    assert status(out) == "NXDOMAIN" and answers(out, "SOA")[0][1] == 30
    assert "CLIENT-SUBNET: 198.19.5.0/24/0" in out
    out = dig(server, "app.lab.test", "A")
    assert status(out) == "NOERROR" and answers(out, "SOA") and not answers(out)


def test_ns_with_glue(server):
    out = dig(server, "lab.test", "NS")
    assert len(answers(out, "NS")) == 2 and ("ns1.lab.test.", 3600, "127.0.0.1") in answers(out)


def test_bufsize_truncation_and_tcp_retry(server):
    out = dig(server, "+bufsize=512", "+ignore", "big.lab.test", "TXT")
    assert "tc" in flags(out) and not answers(out, "TXT"), out
    out = dig(server, "+noedns", "big.lab.test", "TXT")  # dig retries over TCP by itself
    assert answers(out, "TXT") and "(TCP)" in out, out
    out = dig(server, "+bufsize=1232", "big.lab.test", "TXT")
    assert answers(out, "TXT") and "tc" not in flags(out)


def test_tcp_pipelining_on_one_connection(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=3) as s:
        msgs = [make_query("demo.app.lab.test", qid=i, options=ecs_option("198.19.5.0/24")) for i in range(5)]
        s.sendall(b"".join(struct.pack("!H", len(m)) + m for m in msgs))
        buf = b""
        ids = []
        while len(ids) < 5:
            chunk = s.recv(65535)
            assert chunk, "server closed the connection"
            buf += chunk
            while len(buf) >= 2 and len(buf) >= 2 + struct.unpack("!H", buf[:2])[0]:
                n = struct.unpack("!H", buf[:2])[0]
                ids.append(struct.unpack("!H", buf[2:4])[0])
                buf = buf[2 + n:]
    assert ids == list(range(5))


def test_idle_tcp_connection_is_closed_after_the_timeout(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        started = time.monotonic()
        assert s.recv(10) == b""  # closed by the server (idle timeout 1 s in this config)
        assert time.monotonic() - started < 4.5


def test_malformed_packets_do_not_stop_the_server(server):
    for junk in (b"", b"\x00", b"\xff" * 11, b"\x12\x34" + b"\x00" * 10, os.urandom(300),
                 make_query("lab.test")[:-3], make_query("lab.test", options=b"\x00\x08\x00\x01\x00")):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(junk, ("127.0.0.1", server.port))
    with socket.create_connection(("127.0.0.1", server.port), timeout=3) as s:
        s.sendall(b"\x00\x05hello\xff\xff")
    assert udp_query(server.port, make_query("lab.test", SOA)) is not None
    assert server.proc.poll() is None


# -- cookies, keepalive, NSID, CHAOS (RFC 7873/9018, 7828, 5001) --------------------------------

SECRET = "0123456789abcdef0123456789abcdef"


def cookie(text: str) -> tuple[str, str]:
    """(the COOKIE hex, what dig/kdig says of it) from their output."""
    m = re.search(r"COOKIE: ([0-9A-Fa-f]+)(?: \((\w+)\))?", text)
    assert m, text
    return m.group(1).lower(), m.group(2) or ""


@pytest.fixture(scope="module")
def ident_server(lab_dir, tmp_path_factory):
    """A server with a configured cookie secret, an NSID and CHAOS names."""
    d = tmp_path_factory.mktemp("dnsident")
    shutil.copy(lab_dir / "lab.mmdb", d / "lab.mmdb")
    srv = Server(write_config(str(d), server='nsid = "ns1-gdp"', extra=f"""
[cookies]
secret = "{SECRET}"

[chaos]
version = "gslb-edge test"
id = "ns1.lab.test"
"""), log_dir=str(d))
    yield srv
    assert srv.stop() == 0


def test_dig_cookie_gets_a_server_cookie_which_is_validated_when_sent_back(server):
    out = dig(server, "+cookie", "demo.app.lab.test", "+subnet=198.19.5.0/24")
    assert status(out) == "NOERROR" and len(answers(out)) == 2
    given, _ = cookie(out)
    assert len(given) == 48 and given[16:24] == "01000000"  # client 8 | version 1, reserved 0 | ...
    back = dig(server, f"+cookie={given}", "demo.app.lab.test", "+subnet=198.19.5.0/24")
    assert cookie(back) == (given, "good") and len(answers(back)) == 2  # valid: echoed unchanged
    tampered = given[:-2] + ("00" if given[-2:] != "00" else "01")
    again, _ = cookie(dig(server, f"+cookie={tampered}", "lab.test", "SOA"))
    assert again[:16] == given[:16] and again != tampered  # answered, with a fresh cookie


def test_kdig_cookie_and_a_malformed_cookie_is_formerr(server):
    got, _ = cookie(kdig(server, "+cookie", "lab.test", "SOA"))
    assert len(got) == 48
    assert status(dig(server, "+cookie=0011223344", "lab.test", "SOA")) == "FORMERR"


def test_dig_keepalive_over_tcp_only(server):
    out = dig(server, "+tcp", "+keepalive", "lab.test", "SOA")
    assert "TCP KEEPALIVE: 1.0 secs" in out and "(TCP)" in out  # tcp_idle_timeout = 1.0 here
    assert "KEEPALIVE" not in dig(server, "+keepalive", "lab.test", "SOA")
    assert "KEEPALIVE" not in dig(server, "+tcp", "lab.test", "SOA")


def test_dig_and_kdig_nsid(ident_server, server):
    out = dig(ident_server, "+nsid", "lab.test", "SOA")
    assert re.search(r'NSID: .*\("ns1-gdp"\)', out), out
    assert '"ns1-gdp"' in kdig(ident_server, "+nsid", "lab.test", "SOA")
    assert "NSID" not in dig(server, "+nsid", "lab.test", "SOA")  # off unless configured


def test_chaos_txt_answers_only_when_configured(ident_server, server):
    out = dig(ident_server, "version.bind", "CH", "TXT")
    assert status(out) == "NOERROR" and re.search(r'version\.bind\.\s+0\s+CH\s+TXT\s+"gslb-edge test"', out)
    assert '"ns1.lab.test"' in kdig(ident_server, "id.server", "CH", "TXT")
    assert status(dig(ident_server, "hostname.bind", "CH", "TXT")) == "REFUSED"
    assert status(dig(server, "version.bind", "CH", "TXT")) == "REFUSED"


def test_configured_secret_signs_the_cookie(ident_server):
    from dns.cookies import Cookies
    given, _ = cookie(dig(ident_server, "+cookie", "lab.test", "SOA"))
    jar = Cookies((bytes.fromhex(SECRET),))
    assert jar.signed_by(bytes.fromhex(given), socket.inet_aton("127.0.0.1")) == 0


def test_notimp_to_an_edns_query_has_an_opt_and_no_rd(server):
    out = dig(server, "+opcode=notify", "lab.test", "SOA")
    assert status(out) == "NOTIMP" and "OPT PSEUDOSECTION" in out and "rd" not in flags(out)


def test_require_cookie_badcookie_then_answered_with_the_cookie(lab_dir, tmp_path):
    shutil.copy(lab_dir / "lab.mmdb", tmp_path / "lab.mmdb")
    srv = Server(write_config(str(tmp_path), extra=f'[cookies]\nsecret = "{SECRET}"\nrequire = true\n'),
                 log_dir=str(tmp_path))
    try:
        out = dig(srv, "+cookie", "+nobadcookie", "demo.app.lab.test")
        assert status(out) == "BADCOOKIE" and not answers(out)
        given, _ = cookie(out)
        back = dig(srv, f"+cookie={given}", "demo.app.lab.test")
        assert status(back) == "NOERROR" and len(answers(back)) == 2
        retried = dig(srv, "+cookie", "demo.app.lab.test")  # dig resends with the cookie by itself
        assert status(retried) == "NOERROR" and len(answers(retried)) == 2, retried
        assert len(answers(dig(srv, "+tcp", "+cookie", "demo.app.lab.test"))) == 2  # TCP: answered
        assert len(answers(dig(srv, "+nocookie", "demo.app.lab.test"))) == 2       # no cookie: answered
    finally:
        assert srv.stop() == 0


def test_workers_share_the_random_secret(lab_dir, tmp_path):
    """No configured secret: one random secret per start, made before the workers fork."""
    shutil.copy(lab_dir / "lab.mmdb", tmp_path / "lab.mmdb")
    srv = Server(write_config(str(tmp_path)), "--workers", "2", log_dir=str(tmp_path))
    try:
        given, _ = cookie(dig(srv, "+cookie", "lab.test", "SOA"))
        # dig uses a new source port each time, so SO_REUSEPORT spreads these over both workers
        for _ in range(8):
            assert cookie(dig(srv, f"+cookie={given}", "lab.test", "SOA")) == (given, "good")
    finally:
        assert srv.stop() == 0


# -- servers of their own -----------------------------------------------------------------------

def test_acceptance_with_the_example_config_as_shipped(tmp_path):
    """The issue's command line, with examples/dns.toml itself (its mmdb is built by make install)."""
    if not os.path.exists(os.path.join(EXAMPLES, "lab.mmdb")):
        msg = "examples/lab.mmdb is missing: run make install (it builds it)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    srv = Server(os.path.join(EXAMPLES, "dns.toml"), log_dir=str(tmp_path))
    try:
        out = dig(srv, "demo.app.lab.test", "A", "+subnet=198.19.5.0/24")
        got = answers(out)
        assert status(out) == "NOERROR" and "aa" in flags(out)
        assert len(got) == 2 and {a[2] for a in got} <= JP and {a[1] for a in got} == {30}, out
        assert "CLIENT-SUBNET: 198.19.5.0/24/24" in out
    finally:
        assert srv.stop() == 0


def test_connection_cap_closes_extra_connections(lab_dir, tmp_path):
    shutil.copy(lab_dir / "lab.mmdb", tmp_path / "lab.mmdb")
    srv = Server(write_config(str(tmp_path), max_conns=2, idle=10.0), log_dir=str(tmp_path))
    try:
        held = [socket.create_connection(("127.0.0.1", srv.port), timeout=3) for _ in range(2)]
        time.sleep(0.3)
        extra = socket.create_connection(("127.0.0.1", srv.port), timeout=3)
        try:
            data = extra.recv(10)
        except ConnectionResetError:
            data = b""
        assert data == b""
        q = make_query("lab.test", SOA, qid=7)
        held[0].sendall(struct.pack("!H", len(q)) + q)
        assert held[0].recv(2)  # the held ones still work
        for s in held + [extra]:
            s.close()
    finally:
        assert srv.stop() == 0


def test_sighup_reloads_good_config_and_keeps_old_on_bad(lab_dir, tmp_path):
    shutil.copy(lab_dir / "lab.mmdb", tmp_path / "lab.mmdb")
    path = write_config(str(tmp_path))
    srv = Server(path, log_dir=str(tmp_path))
    try:
        assert {a[1] for a in answers(dig(srv, "demo.app.lab.test"))} == {30}
        text = open(path).read()
        with open(path, "w") as fh:
            fh.write(text.replace("ttl = 30 ", "ttl = 45 "))
        srv.proc.send_signal(signal.SIGHUP)
        srv.wait_log("event=reloaded")
        assert {a[1] for a in answers(dig(srv, "demo.app.lab.test"))} == {45}

        with open(path, "w") as fh:
            fh.write(text.replace("[zone]", "[zone\n"))  # a TOML syntax error
        srv.proc.send_signal(signal.SIGHUP)
        srv.wait_log("event=reload_failed")
        assert "event=reload_failed" in srv.logs() and "dns.toml:" in srv.logs()
        assert {a[1] for a in answers(dig(srv, "demo.app.lab.test"))} == {45}  # old data kept
        assert srv.proc.poll() is None
    finally:
        assert srv.stop() == 0


def test_worker_mode_serves_and_exits_cleanly(lab_dir, tmp_path):
    shutil.copy(lab_dir / "lab.mmdb", tmp_path / "lab.mmdb")
    srv = Server(write_config(str(tmp_path)), "--workers", "2", log_dir=str(tmp_path))
    try:
        for _ in range(6):
            got = answers(kdig(srv, "demo.app.lab.test", "+subnet=198.19.5.0/24"))
            assert len(got) == 2 and {a[2] for a in got} <= JP
        assert "event=workers_started" in srv.logs() and srv.logs().count("event=listening") == 4
        srv.proc.send_signal(signal.SIGHUP)  # relayed to every worker
        srv.wait_log("event=reloaded", 2)
        assert srv.logs().count("event=reloaded") == 2
    finally:
        assert srv.stop() == 0


def test_a_sighup_while_the_workers_start_is_not_lost(lab_dir, tmp_path):
    """A reload asked for the moment the workers are forked, while each still loads its
    database: every worker reloads once it is up (none is killed, none ignores it)."""
    shutil.copy(lab_dir / "lab.mmdb", tmp_path / "lab.mmdb")
    config, port = write_config(str(tmp_path)), free_port()
    log_path = tmp_path / "gslb-dns-early-hup.log"
    with open(log_path, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gslb.cli", "dns", "--config", config,
                                 "--listen", f"127.0.0.1:{port}", "--workers", "2"],
                                cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "event=workers_started" not in log_path.read_text():
            assert proc.poll() is None, log_path.read_text()
            time.sleep(0.005)
        assert "event=workers_started" in log_path.read_text()
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and log_path.read_text().count("event=reloaded") < 2:
            assert proc.poll() is None, log_path.read_text()
            time.sleep(0.05)
        logs = log_path.read_text()
        assert logs.count("event=reloaded") == 2, logs
        assert logs.count("event=listening") == 2, logs   # both workers up, none respawned
        assert "worker_respawned" not in logs and "worker_exited" not in logs, logs
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(20) == 0, log_path.read_text()
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise


def test_bad_config_prints_the_error_and_does_not_start(tmp_path):
    path = tmp_path / "dns.toml"
    path.write_text(open(os.path.join(EXAMPLES, "dns.toml")).read().replace('fallback = "nearest"',
                                                                            'fallback = "random"'))
    out = subprocess.run([sys.executable, "-m", "gslb.cli", "dns", "--config", str(path),
                          "--listen", f"127.0.0.1:{free_port()}"], cwd=REPO, capture_output=True,
                         text=True, timeout=20)
    assert out.returncode == 2
    assert re.search(r"dns\.toml:\d+: policy\.fallback: ", out.stderr), out.stderr


def test_real_geolite2_database_answers_each_client_from_its_nearest_pop(lab_dir, tmp_path, geolite2_city):
    db = geolite2_city
    shutil.copy(lab_dir / "lab.mmdb", tmp_path / "lab.mmdb")
    srv = Server(write_config(str(tmp_path)), "--geoip-db", db, log_dir=str(tmp_path))
    # Public networks as the 2018 GeoLite2-City database places them (ECS values only).
    cases = {
        "210.130.0.0/24": "5",     # Japan -> jp (Tokyo)
        "203.116.1.0/24": "1",     # Singapore -> ap
        "1.120.0.0/24": "2",       # Australia -> au (Sydney)
        "80.150.1.0/24": "3",      # Germany -> eu (Frankfurt)
        "49.205.1.0/24": "4",      # Vijayawada, India -> in (Mumbai)
        "200.147.1.0/24": "6",     # Brazil -> sa (Sao Paulo)
        "128.101.101.0/24": "7",   # Minneapolis -> us (Ohio)
        "64.233.160.0/24": "8",    # Los Angeles -> us-cal-1
        "114.114.114.0/24": "5",   # China -> routing.country CN = [jp, ap]
    }
    try:
        for subnet, pop in cases.items():
            out = dig(srv, "demo.app.lab.test", f"+subnet={subnet}")
            got = {a[2] for a in answers(out)}
            assert len(got) == 2 and all(ip.startswith(f"198.18.{pop}.") for ip in got), (subnet, out)
            m = re.search(r"CLIENT-SUBNET: \S+/(\d+)", out)
            assert m and int(m.group(1)) > 0, out
        out = kdig(srv, "demo.app.lab.test", "AAAA", "+subnet=2001:200::/48")  # Japan, IPv6
        assert all(a[2].startswith("fd7a:5e1b:c00::5:") for a in answers(out, "AAAA")), out
    finally:
        assert srv.stop() == 0
