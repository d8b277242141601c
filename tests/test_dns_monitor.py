"""The health monitor, the worker feed, the engine's use of a health snapshot, the [health] keys.

No network: the monitor gets a fake checker and a fake clock; the worker feed is an os.pipe; the one
socket is the CLI's failed connect to a control socket that does not exist.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil

import dnslib
import pytest

from dns.engine import Engine
from dns.explain import explain
from dns.policy import HealthView
from dns.monitor import HealthMonitor, LocalPublisher
from dns.server import DnsServer
from dns.wire import A, ecs_option, make_query
from dns.config import ConfigError, load_dns_config

JP = {f"198.18.5.{i}" for i in range(1, 5)}
TOKYO = ecs_option("198.19.5.0/24")


def ips_and_ttls(engine: Engine, name: str = "demo.app.lab.test") -> tuple[set[str], set[int]]:
    msg = dnslib.DNSRecord.parse(engine.respond(make_query(name, A, options=TOKYO), "127.0.0.1"))
    return {str(rr.rdata) for rr in msg.rr}, {rr.ttl for rr in msg.rr}


@pytest.fixture
def engine(example_config, lab_mmdb):
    e = Engine.from_config(example_config, lab_mmdb)
    yield e
    e.close()


# -- the engine answering from a snapshot -----------------------------------------------------

def test_changing_pop_gets_the_lowered_ttl_in_the_wire_answer(engine):
    assert ips_and_ttls(engine)[1] == {30}
    engine.set_health(HealthView(1, changing=frozenset({"jp"})))
    ips, ttls = ips_and_ttls(engine)
    assert ips <= JP and ttls == {5}  # [health].changing_ttl default
    engine.set_health(HealthView(2, changing=frozenset({"eu"})))
    assert ips_and_ttls(engine)[1] == {30}  # eu is not what a Tokyo client depends on


def test_failover_answer_is_short_lived_while_the_nearest_pop_is_changing(engine):
    down = frozenset(("jp", f"198.18.5.{i}") for i in range(1, 5))
    engine.set_health(HealthView(1, down=down, changing=frozenset({"jp"})))
    ips, ttls = ips_and_ttls(engine)
    assert ips and not ips & JP and ttls == {5}


def test_monitor_counts_probe_timeouts_towards_timeout_fall_not_fall(example_config, engine):
    from dns.prober import ProbeTimeout
    results: dict[str, str | None] = {f"198.18.5.{i}": ProbeTimeout("http: timeout after 1 s")
                                      for i in range(1, 5)}
    mon, server, clock = make_monitor(example_config, engine, results)

    async def rounds(n: int) -> None:
        sem = asyncio.Semaphore(4)
        for _ in range(n):
            clock.now += 1
            await asyncio.gather(*(mon._check_one(t.pop, t.address, sem) for t in mon.states.targets))
    asyncio.run(rounds(3))  # fall = 3 rounds of timeouts: still answered
    assert ips_and_ttls(server.engine)[0] & JP
    asyncio.run(rounds(3))  # 2 x fall: withdrawn
    assert not ips_and_ttls(server.engine)[0] & JP


def test_snapshot_drains_are_authoritative_so_a_runtime_undrain_works(example_config, lab_mmdb):
    cfg = dataclasses.replace(example_config, health=dataclasses.replace(example_config.health, drained=("jp",)))
    e = Engine.from_config(cfg, lab_mmdb)
    assert not ips_and_ttls(e)[0] & JP  # config drain, no checker view yet
    e.set_health(HealthView(1, drained=frozenset()))  # the monitor says: undrained at runtime
    assert ips_and_ttls(e)[0] <= JP
    e.close()


def test_explain_shows_health_and_the_lowered_ttl(engine):
    down = frozenset(("jp", f"198.18.5.{i}") for i in range(1, 3))
    engine.set_health(HealthView(1, down=down, drained=frozenset({"ap"}), changing=frozenset({"jp"})))
    out = explain(engine, "demo.app.lab.test", A, "127.0.0.1", "198.19.5.0/24")
    rows = {h["pop"]: h for h in out["health"]}
    assert rows["jp"]["state"] == "partial" and rows["jp"]["down"] == ["198.18.5.1", "198.18.5.2"]
    assert rows["jp"]["changing"] and rows["ap"]["state"] == "drained" and rows["eu"]["state"] == "up"
    assert out["ttl"] == 5 and out["ttl_lowered"]


# -- the monitor, with a fake checker and clock ------------------------------------------------

class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_monitor(example_config, engine, results: dict[str, str | None]):
    async def checker(address: str, settings) -> str | None:
        return results.get(address)
    server = DnsServer(engine, (("127.0.0.1", 0),))
    clock = FakeClock()
    mon = HealthMonitor(example_config, LocalPublisher(server), control_path=None, checker=checker, clock=clock)
    return mon, server, clock


def test_monitor_publishes_a_new_view_when_a_check_result_changes_answers(example_config, engine):
    results: dict[str, str | None] = {f"198.18.5.{i}": "tcp: refused" for i in range(1, 5)}
    mon, server, clock = make_monitor(example_config, engine, results)

    async def run() -> None:
        mon.publish()
        sem = asyncio.Semaphore(4)
        for _ in range(3):  # fall = 3
            clock.now += 1
            await asyncio.gather(*(mon._check_one(t.pop, t.address, sem) for t in mon.states.targets))
    asyncio.run(run())
    assert server.engine.health.version == mon.states.snapshot(clock.now).version
    ips, ttls = ips_and_ttls(server.engine)
    assert ips and not ips & JP and ttls == {5}


def test_monitor_control_requests(example_config, engine):
    mon, server, clock = make_monitor(example_config, engine, {})

    async def run() -> list[dict]:
        mon.publish()
        return [await mon.handle_request(line) for line in (
            b'{"op": "drain", "pop": "jp"}\n', b'{"op": "health"}\n', b'{"op": "drain", "pop": "mars"}\n',
            b'not json\n', b'{"op": "reboot"}\n', b'{"op": "undrain", "pop": "jp"}\n', b'{"op": "snapshot"}\n')]
    drain, health, mars, junk, reboot, undrain, snap = asyncio.run(run())
    assert drain["ok"] and drain["changed"] and drain["drained"] == ["jp"] and drain["workers_agree"]
    assert health["drained"] == ["jp"] and len(health["addresses"]) == 64
    jp1 = next(a for a in health["addresses"] if a["address"] == "198.18.5.1")
    assert jp1["state"] == "drained" and jp1["family"] == 4
    assert not mars["ok"] and "unknown PoP 'mars'" in mars["error"]
    assert not junk["ok"] and "not JSON" in junk["error"]
    assert not reboot["ok"] and "drain, undrain, health, snapshot" in reboot["error"]
    assert undrain["ok"] and undrain["drained"] == []
    assert HealthView.decode(snap["snapshot"].encode()).drained == frozenset()
    assert ips_and_ttls(server.engine)[0] <= JP


# -- the worker side of the pipe ---------------------------------------------------------------

def test_worker_applies_the_newest_snapshot_from_its_pipe_and_acknowledges_it(engine):
    server = DnsServer(engine, (("127.0.0.1", 0),))
    feed_r, feed_w = os.pipe()
    ack_r, ack_w = os.pipe()
    server.health_feed = (feed_r, ack_w)
    try:
        old = HealthView(3, drained=frozenset({"eu"}))
        new = HealthView(4, drained=frozenset({"jp"}))
        line = new.encode()
        os.write(feed_w, old.encode() + line[:10])  # a line cut in two by the pipe
        server._on_feed()
        assert server.engine.health == old
        os.write(feed_w, line[10:])
        server._on_feed()
        assert server.engine.health == new and not ips_and_ttls(server.engine)[0] & JP
        acks = os.read(ack_r, 100).decode().split("\n")
        assert acks[:2] == [f"{os.getpid()} 3", f"{os.getpid()} 4"]
        os.write(feed_w, b'{"version": "x"}\n')  # garbage: logged, the view stays
        server._on_feed()
        assert server.engine.health == new
    finally:
        for fd in (feed_r, feed_w, ack_r, ack_w):
            os.close(fd)


def test_reload_keeps_the_snapshot(example_config, engine):
    snap = HealthView(9, drained=frozenset({"jp"}))
    server = DnsServer(engine, (("127.0.0.1", 0),), reload=lambda: Engine(example_config))
    server.apply_health(snap)
    assert server.reload() and server.engine.health is snap


# -- [health] configuration keys -----------------------------------------------------------------

def test_health_keys_load_with_their_defaults(example_config):
    h = example_config.health
    assert (h.enabled, h.check, h.port, h.tcp_port, h.changing_ttl, h.allow_remote, h.control_socket) == \
        (False, "http+tcp", 80, 443, 5, False, None)
    assert h.timeout_fall == 0  # 0: 2 x fall (dns.health)


def _with_health(example_config_dir, tmp_path, body: str) -> str:
    text = open(os.path.join(example_config_dir, "dns.toml")).read() + "\n[health]\n" + body
    p = tmp_path / "dns.toml"
    p.write_text(text)
    shutil.copy(os.path.join(example_config_dir, "lab.mmdb"), tmp_path / "lab.mmdb")
    return str(p)


def test_health_keys_are_read_and_control_socket_is_relative_to_the_file(example_config_dir, tmp_path):
    cfg = load_dns_config(_with_health(example_config_dir, tmp_path,
                                       'enabled = true\ncheck = "tcp"\ntcp_port = 8443\nchanging_ttl = 2\n'
                                       'allow_remote = true\ncontrol_socket = "run/dns.sock"\ndrained = ["eu"]\n'))
    h = cfg.health
    assert (h.enabled, h.check, h.tcp_port, h.changing_ttl, h.allow_remote, h.drained) == \
        (True, "tcp", 8443, 2, True, ("eu",))
    assert h.control_socket == str(tmp_path / "run" / "dns.sock")


@pytest.mark.parametrize("body, key, problem", [
    ('check = "ping"\n', "health.check", "one of http, tcp, http+tcp"),
    ('path = "healthz"\n', "health.path", "starting with '/'"),
    ("tcp_port = 0\n", "health.tcp_port", "must be >= 1"),
    ('drained = ["mars"]\n', "health.drained", "unknown PoP 'mars'"),
    ("allow_remote = 1\n", "health.allow_remote", "expected true or false"),
    ("fall = 4\ntimeout_fall = 3\n", "health.timeout_fall", "below fall (4)"),
])
def test_bad_health_keys_name_the_key(example_config_dir, tmp_path, body, key, problem):
    with pytest.raises(ConfigError) as info:
        load_dns_config(_with_health(example_config_dir, tmp_path, body))
    assert info.value.key == key and problem in str(info.value) and info.value.line


# -- the command line --------------------------------------------------------------------------

def test_serve_refuses_to_probe_lab_addresses_from_the_root_namespace(example_config_dir, tmp_path,
                                                                     monkeypatch, capsys):
    import dns.prober
    import dns.server
    from gslb.cli import main

    def never(*a, **kw):
        raise AssertionError("the server must not start")
    monkeypatch.setattr(dns.server, "run_single", never)
    monkeypatch.setattr(dns.server, "run_workers", never)
    monkeypatch.setattr(dns.prober, "named_netns", lambda: None)  # as in the root namespace
    path = _with_health(example_config_dir, tmp_path, "enabled = true\n")
    assert main(["dns", "--config", path, "--listen", "127.0.0.1:0", "--control", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "non-loopback addresses (198.18.1.1" in err and "allow_remote = true" in err


def test_drain_without_a_server_says_where_it_looked(tmp_path, capsys):
    from gslb.cli import main
    assert main(["dns", "drain", "eu", "--control", str(tmp_path / "nope.sock")]) == 1
    assert "no such control socket" in capsys.readouterr().err
    assert main(["dns", "health"]) == 2
    assert "give --control PATH or --config FILE" in capsys.readouterr().err


def test_explain_rejects_a_down_that_is_neither_pop_nor_address(example_config_dir, capsys):
    from gslb.cli import main
    cfg = os.path.join(example_config_dir, "dns.toml")
    assert main(["dns", "explain", "demo.app.lab.test", "--down", "mars", "--config", cfg]) == 2
    assert "neither a PoP" in capsys.readouterr().err
    assert main(["dns", "explain", "demo.app.lab.test", "--ecs", "198.19.5.0/24", "--down", "jp",
                 "--config", cfg, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {h["pop"]: h["state"] for h in out["health"]}["jp"] == "drained"


def test_pipe_publisher_reaches_every_worker_and_waits_for_their_acknowledgements(example_config, lab_mmdb):
    from dns.monitor import PipePublisher
    workers = [DnsServer(Engine(example_config), (("127.0.0.1", 0),)) for _ in range(2)]
    ack_r, ack_w = os.pipe()
    feeds, fds = [], [ack_r, ack_w]
    for i, w in enumerate(workers):
        r, wr = os.pipe()
        w.health_feed = (r, ack_w)
        feeds.append((os.getpid() if i == 0 else -1, wr))  # acks carry the real pid: only one can match
        fds += [r]

    async def run() -> tuple[bool, bool, dict]:
        pub = PipePublisher(feeds, ack_r)
        pub.start()
        loop = asyncio.get_running_loop()
        for w in workers:
            os.set_blocking(w.health_feed[0], False)
            loop.add_reader(w.health_feed[0], w._on_feed)
        pub.publish(HealthView(5, drained=frozenset({"jp"})))
        agreed = await pub.wait_applied(5, 0.5)
        applied = pub.applied()
        late = await pub.wait_applied(6, 0.1)  # nobody has version 6
        for w in workers:
            loop.remove_reader(w.health_feed[0])
        for pid in list(pub.feeds):
            pub.forget(pid)  # closes the write ends
        return agreed, late, applied
    try:
        agreed, late, applied = asyncio.run(run())
    finally:
        for fd in fds:
            os.close(fd)
    assert [w.engine.health.version for w in workers] == [5, 5]
    assert all(not ips_and_ttls(w.engine)[0] & JP for w in workers)
    # Both acknowledged with this process's pid; the feed registered as pid -1 never is:
    # a drain then says which worker did not agree instead of claiming they all did.
    assert applied == {str(os.getpid()): 5, "-1": 0} and agreed is False and late is False


def test_single_process_reload_reconfigures_the_monitor(example_config, engine):
    calls = []

    class Monitor:
        def reconfigure(self, cfg):
            calls.append(cfg)
    new_cfg = dataclasses.replace(example_config, health=dataclasses.replace(example_config.health, drained=("eu",)))
    server = DnsServer(engine, (("127.0.0.1", 0),), reload=lambda: Engine(new_cfg))
    server.monitor = Monitor()
    assert server.reload() and calls == [new_cfg]
