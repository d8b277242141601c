"""EtcdRegistry against a real 3-member etcd 3.4 cluster on 127.0.0.1.

Two EtcdRegistry instances play two PoPs. The cluster lives in a temp dir with
free ports, and is stopped by pid (TERM, ~1 s, KILL) in the fixture teardown.
The fault test kills members with SIGKILL and restarts them from their data
dirs (etcd: the initial-cluster flags are then ignored).
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from edge.registry import (
    EtcdConfig,
    EtcdRegistry,
    LeaseLost,
    NameTaken,
    PortNotHeld,
    PortsExhausted,
    RegistryUnavailable,
)
from edge.registry import keys

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _need_etcd() -> None:
    if shutil.which("etcd"):
        return
    message = "etcd is not installed (apt-get install etcd-server; `make install` does it)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _die_with_parent() -> None:
    """preexec_fn: the kernel SIGKILLs the member if pytest itself is killed
    (prctl PR_SET_PDEATHSIG), so even a crashed run leaves no etcd behind."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


class EtcdCluster:
    """Three etcd members on 127.0.0.1, each with its own client/peer port."""

    def __init__(self, root: Path) -> None:
        self.root = root
        ports = _free_ports(6)
        self.client_ports, self.peer_ports = ports[:3], ports[3:]
        self.names = ["e1", "e2", "e3"]
        self.procs: list[subprocess.Popen | None] = [None, None, None]
        self.initial = ",".join(f"{n}=http://127.0.0.1:{p}" for n, p in zip(self.names, self.peer_ports))

    @property
    def endpoints(self) -> tuple[str, ...]:
        return tuple(f"http://127.0.0.1:{p}" for p in self.client_ports)

    def start_member(self, i: int) -> None:
        assert self.procs[i] is None or self.procs[i].poll() is not None
        name, cp, pp = self.names[i], self.client_ports[i], self.peer_ports[i]
        log = open(self.root / f"{name}.log", "ab")
        try:
            self.procs[i] = subprocess.Popen(
                ["etcd", "--name", name, "--data-dir", str(self.root / name),
                 "--listen-peer-urls", f"http://127.0.0.1:{pp}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{pp}",
                 "--listen-client-urls", f"http://127.0.0.1:{cp}", "--advertise-client-urls", f"http://127.0.0.1:{cp}",
                 "--initial-cluster", self.initial, "--initial-cluster-state", "new",
                 "--initial-cluster-token", f"gslb-test-{os.getpid()}",
                 "--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, preexec_fn=_die_with_parent)
        finally:
            log.close()

    def start(self) -> None:
        for i in range(3):
            self.start_member(i)
        self.wait_healthy([0, 1, 2])

    def wait_healthy(self, members: list[int], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        pending = set(members)
        while pending and time.monotonic() < deadline:  # bounded by the deadline
            for i in list(pending):
                proc = self.procs[i]
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"etcd {self.names[i]} exited with {proc.returncode}: "
                                       f"{(self.root / (self.names[i] + '.log')).read_text()[-2000:]}")
                try:
                    with urllib.request.urlopen(f"{self.endpoints[i]}/health", timeout=1) as resp:
                        if json.loads(resp.read()).get("health") == "true":
                            pending.discard(i)
                except OSError:
                    pass
            time.sleep(0.1)
        if pending:
            raise RuntimeError(f"etcd members {sorted(pending)} not healthy after {timeout}s")

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=5)

    def stop(self) -> None:
        live = [p for p in self.procs if p is not None and p.poll() is None]
        for p in live:
            p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 1.0
        for p in live:
            try:
                p.wait(timeout=max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)


@pytest.fixture(scope="module")
def cluster():
    _need_etcd()
    root = Path(tempfile.mkdtemp(prefix="gslb-etcd-test-"))
    c = EtcdCluster(root)
    try:
        c.start()
        yield c
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)


def _config(cluster: EtcdCluster, prefix: str, **kw) -> EtcdConfig:
    kw.setdefault("request_timeout", 1.0)
    kw.setdefault("write_timeout", 3.0)
    kw.setdefault("read_timeout", 3.0)
    return EtcdConfig(endpoints=cluster.endpoints, prefix=prefix, **kw)


async def _eventually(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # bounded by the deadline
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


def test_bind_at_one_pop_is_seen_by_lookup_at_another_and_duplicate_is_refused(cluster):
    async def scenario():
        async with EtcdRegistry(_config(cluster, "/t1/")) as eu, EtcdRegistry(_config(cluster, "/t1/")) as us:
            lease_eu = await eu.open_session("eu", "s-eu", ttl=10)
            lease_us = await us.open_session("us", "s-us", ttl=10)
            b = await eu.bind("http", "demo.app.lab.test", "eu", "s-eu", lease_eu, {"proto": "http"})
            assert (b.pop, b.session, dict(b.meta)) == ("eu", "s-eu", {"proto": "http"})
            assert await us.wait_revision(b.revision, 5.0)
            seen = us.lookup("http", "demo.app.lab.test")
            assert seen is not None and (seen.pop, seen.session, seen.revision) == ("eu", "s-eu", b.revision)

            with pytest.raises(NameTaken) as info:
                await us.bind("http", "demo.app.lab.test", "us", "s-us", lease_us, {})
            assert (info.value.pop, info.value.session) == ("eu", "s-eu")
            # Binding again from the holder is idempotent (retry after an unknown outcome).
            again = await eu.bind("http", "demo.app.lab.test", "eu", "s-eu", lease_eu, {"proto": "http"})
            assert again.revision == b.revision

            assert not await us.unbind("http", "demo.app.lab.test", "s-us", lease_us)  # not the holder
            assert await eu.unbind("http", "demo.app.lab.test", "s-eu", lease_eu)
            assert await _eventually(lambda: us.lookup("http", "demo.app.lab.test") is None)
            b2 = await us.bind("http", "demo.app.lab.test", "us", "s-us", lease_us, {})
            assert await eu.wait_revision(b2.revision, 5.0)
            assert eu.lookup("http", "demo.app.lab.test").pop == "us"
            await lease_eu.close()
            await lease_us.close()

    asyncio.run(scenario())


def test_lease_expiry_of_a_dead_edge_removes_its_bindings_and_ports(cluster):
    async def scenario():
        async with EtcdRegistry(_config(cluster, "/t2/")) as survivor:
            events = []
            survivor.subscribe(events.append)
            dead = EtcdRegistry(_config(cluster, "/t2/"))
            await dead.start()
            lease = await dead.open_session("ap", "s-ap", ttl=2)
            port = await dead.allocate_port("s-ap", lease, 30000, 30009)
            await dead.bind("tcp", str(port), "ap", "s-ap", lease)
            b = await dead.bind("tls", "db.app.lab.test", "ap", "s-ap", lease)
            assert await survivor.wait_revision(b.revision, 5.0)
            assert survivor.lookup("tcp", str(port)) is not None
            # The edge dies: keepalives stop, nothing is revoked.
            started = time.monotonic()
            await dead.close()
            assert await _eventually(lambda: survivor.lookup("tls", "db.app.lab.test") is None, timeout=8.0)
            gone_after = time.monotonic() - started
            assert survivor.lookup("tcp", str(port)) is None
            assert 1.0 <= gone_after <= 6.0, gone_after
            print(f"lease ttl=2 expiry seen by another PoP after {gone_after:.2f}s")
            assert {(e.type, e.kind, e.name) for e in events} >= {
                ("delete", "tls", "db.app.lab.test"), ("delete", "tcp", str(port))}
            # The port went with the lease.
            lease2 = await survivor.open_session("eu", "s-eu", ttl=10)
            assert await survivor.allocate_port("s-eu", lease2, 30000, 30009, preferred=port) == port
            await lease2.close()

    asyncio.run(scenario())


def test_revoking_a_lease_removes_bindings_at_once(cluster):
    async def scenario():
        async with EtcdRegistry(_config(cluster, "/t3/")) as a, EtcdRegistry(_config(cluster, "/t3/")) as b:
            lease = await a.open_session("eu", "s1", ttl=10)
            bound = await a.bind("http", "x.app.lab.test", "eu", "s1", lease)
            assert await b.wait_revision(bound.revision, 5.0)
            await lease.close()
            assert not lease.alive
            assert await _eventually(lambda: b.lookup("http", "x.app.lab.test") is None, timeout=2.0)

            # A lease that etcd dropped while this side still thought it alive
            # (e.g. the edge was frozen for a TTL): the next write says so.
            lease2 = await a.open_session("eu", "s2", ttl=10)
            await a._gw.call("/v3/lease/revoke", {"ID": str(lease2.id)}, 3.0, write=True)
            with pytest.raises(LeaseLost):
                await a.bind("http", "y.app.lab.test", "eu", "s2", lease2)
            assert not lease2.alive and lease2.lost_reason == "expired"
            assert a.lookup("http", "y.app.lab.test") is None

    asyncio.run(scenario())


def test_concurrent_port_allocation_from_two_pops_never_duplicates(cluster):
    async def scenario():
        async with EtcdRegistry(_config(cluster, "/t4/")) as a, EtcdRegistry(_config(cluster, "/t4/")) as b:
            la = await a.open_session("eu", "sa", ttl=10)
            lb = await b.open_session("us", "sb", ttl=10)
            # 24 allocations race for a range of 24 ports: every port is used once.
            results = await asyncio.gather(
                *[a.allocate_port("sa", la, 31000, 31023) for _ in range(12)],
                *[b.allocate_port("sb", lb, 31000, 31023) for _ in range(12)],
                return_exceptions=True)
            ports_a, ports_b = results[:12], results[12:]
            assert all(isinstance(p, int) for p in results), results
            assert sorted(results) == list(range(31000, 31024))  # no port twice, none lost
            with pytest.raises(PortsExhausted):
                await a.allocate_port("sa", la, 31000, 31023)
            # tcp binding needs the port held by the same lease.
            port_b = ports_b[0]
            with pytest.raises(PortNotHeld):
                await a.bind("tcp", str(port_b), "eu", "sa", la)
            bound = await b.bind("tcp", str(port_b), "us", "sb", lb)
            with pytest.raises(PortNotHeld):
                await b.release_port(port_b, "sb", lb)  # still bound
            assert await b.unbind("tcp", str(port_b), "sb", lb)  # frees the port too
            assert await a.allocate_port("sa", la, 31000, 31023, preferred=port_b) == port_b
            assert await a.wait_revision(bound.revision, 5.0)
            await la.close()
            await lb.close()

    asyncio.run(scenario())


def test_one_member_lost_is_invisible_two_lost_fails_writes_clearly_and_recovers(cluster):
    async def scenario():
        cfg = _config(cluster, "/t5/", request_timeout=1.0, write_timeout=3.0)
        async with EtcdRegistry(cfg) as eu, EtcdRegistry(cfg) as us:
            le = await eu.open_session("eu", "se", ttl=10)
            b0 = await eu.bind("http", "before.app.lab.test", "eu", "se", le)
            assert await us.wait_revision(b0.revision, 5.0)

            # Kill the member both registries talk to (first endpoint) and the
            # one the watch is on.
            cluster.kill(0)
            b1 = await eu.bind("http", "one-down.app.lab.test", "eu", "se", le)
            port = await eu.allocate_port("se", le, 32000, 32009)
            assert await us.wait_revision(b1.revision, 8.0), "watch did not fail over"
            assert us.lookup("http", "one-down.app.lab.test").pop == "eu"

            # Kill a second: no quorum.
            cluster.kill(1)
            assert us.lookup("http", "before.app.lab.test") is not None  # cached routes still answer
            started = time.monotonic()
            with pytest.raises(RegistryUnavailable) as info:
                await eu.bind("http", "two-down.app.lab.test", "eu", "se", le)
            elapsed = time.monotonic() - started
            assert str(info.value).startswith("etcd has no quorum: ")
            assert info.value.outcome_unknown
            assert elapsed <= cfg.write_timeout + 1.0, elapsed
            print(f"bind without quorum failed after {elapsed:.2f}s (write_timeout={cfg.write_timeout})")
            assert us.lookup("http", "one-down.app.lab.test") is not None
            assert eu.lookup("tcp", str(port)) is None  # allocated, not bound

            # Bring them back: binds work again, and the retry of the bind whose
            # outcome was unknown succeeds whether or not it had been committed.
            cluster.start_member(0)
            cluster.start_member(1)
            restarted = time.monotonic()
            cluster.wait_healthy([0, 1, 2])
            b2 = None
            deadline = time.monotonic() + 15
            while b2 is None and time.monotonic() < deadline:  # bounded
                try:
                    b2 = await eu.bind("http", "two-down.app.lab.test", "eu", "se", le)
                except RegistryUnavailable:
                    await asyncio.sleep(0.2)
            assert b2 is not None, "binds did not come back after quorum returned"
            print(f"binds work again {time.monotonic() - restarted:.2f}s after restarting two members")
            assert await us.wait_revision(b2.revision, 8.0)
            assert us.lookup("http", "two-down.app.lab.test").session == "se"
            assert le.alive  # the session's lease survived the quorum loss
            assert us.lookup("http", "before.app.lab.test") is not None
            await le.close()

    asyncio.run(scenario())


def test_watch_from_a_compacted_revision_asks_for_a_relist(cluster):
    from edge.registry.etcd import _Relist

    async def scenario():
        async with EtcdRegistry(_config(cluster, "/t6/")) as a:
            lease = await a.open_session("eu", "s1", ttl=10)
            first = await a.bind("http", "old.app.lab.test", "eu", "s1", lease)
            await a.unbind("http", "old.app.lab.test", "s1", lease)
            last = await a.bind("http", "new.app.lab.test", "eu", "s1", lease)
            await a._gw.call("/v3/kv/compaction", {"revision": str(last.revision), "physical": True}, 3.0, write=True)
            # A watch that would resume from before the compaction cannot.
            with pytest.raises(_Relist, match="compacted"):
                await asyncio.wait_for(a._watch_once(first.revision), 5.0)
            # The running watch was past it and is unaffected.
            assert await a.wait_revision(last.revision, 5.0)
            assert a.lookup("http", "new.app.lab.test") is not None
            assert a.lookup("http", "old.app.lab.test") is None
            await lease.close()

    asyncio.run(scenario())


def test_opaque_acme_keys_create_once_die_with_their_lease_and_list_by_prefix(cluster):
    """The ACME store's keys (<prefix>acme/...): kv_create is create-if-absent
    across PoPs (the order lock), a key under a lease goes with it."""
    async def scenario():
        async with EtcdRegistry(_config(cluster, "/t9/")) as eu, EtcdRegistry(_config(cluster, "/t9/")) as us:
            assert await eu.kv_get("certs/demo.app.lab.test") is None
            await eu.kv_put("certs/demo.app.lab.test", b"chain-1")
            assert await us.kv_get("certs/demo.app.lab.test") == b"chain-1"
            lease = await eu.open_session("eu", "acme-lock-1", ttl=10)
            assert await eu.kv_create("locks/demo.app.lab.test", b'{"pop": "eu"}', lease) is None
            assert await us.kv_create("locks/demo.app.lab.test", b'{"pop": "us"}') == b'{"pop": "eu"}'
            await eu.kv_put("http01/tok_1", b"tok_1.thumb")
            assert await us.kv_list("http01/") == {"http01/tok_1": b"tok_1.thumb"}
            await lease.close()
            assert await us.kv_get("locks/demo.app.lab.test") is None
            assert await us.kv_delete("http01/tok_1") is True
            assert await us.kv_delete("http01/tok_1") is False
            # Bindings are not opaque keys: the watch's view holds no acme/ key.
            assert eu.bindings() == []
            raw = await eu._read("/v3/kv/range", {"key": keys.b64("/t9/acme/certs/demo.app.lab.test")})
            assert raw["kvs"][0]["key"] == keys.b64("/t9/acme/certs/demo.app.lab.test")

    asyncio.run(scenario())
