"""The edge's ACME client against a real CA: Debian's pebble on 127.0.0.1.

pebble validates for real (no PEBBLE_VA_ALWAYS_VALID; PEBBLE_VA_NOSLEEP=1 only
skips its random sleeps). Its resolver is pebble-challtestsrv, answering
127.0.0.1 for every name, so a validation reaches the edges here: HTTP-01 at
pebble's httpPort and TLS-ALPN-01 at its tlsPort, which are one edge's :80 and
:443. Two edges ("PoPs") share one registry (the memory one: the etcd one's
opaque keys are tested in test_registry_etcd.py), as every PoP of a deployment
shares etcd. pebble's issuing root is random per run: fetched from its
management interface, it is what the clients here verify against.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from types import MappingProxyType

import pytest
from _helpers import LineEcho, free_port
from _tools import need_tools
from cryptography import x509

from edge.acme.crypto import Sealer
from edge.acme.manager import AcmeManager, AcmeSettings
from edge.acme.solvers import Http01Solver, TlsAlpn01Solver
from edge.acme.store import AcmeStore
from edge.certs import CertAuthority, CertStore
from edge.config import EdgeConfig, Timeouts
from edge.endpoint import Endpoint
from edge.registry import MemoryRegistry
from edge.server import EdgeServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

DOMAIN = "app.lab.test"
VALIDITY = 12          # s: pebble's certificateValidityPeriod (renewal at ~2/3: 8 s)


class Pebble:
    """pebble + challtestsrv (as its DNS) on loopback; stop()/start() for "the CA is down"."""

    def __init__(self, tmp: Path, http_port: int, tls_port: int) -> None:
        self.tmp = tmp
        self.ca = CertAuthority.create(tmp / "pebble-tls-ca", common_name="pebble TLS test CA")
        issued = self.ca.issue(["localhost"])
        (tmp / "pebble.pem").write_bytes(issued.cert_pem)
        (tmp / "pebble.key").write_bytes(issued.key_pem)
        self.port, self.mgmt, self.dns = free_port(), free_port(), free_port()
        (tmp / "pebble.json").write_text(json.dumps({"pebble": {
            "listenAddress": f"127.0.0.1:{self.port}", "managementListenAddress": f"127.0.0.1:{self.mgmt}",
            "certificate": str(tmp / "pebble.pem"), "privateKey": str(tmp / "pebble.key"),
            "httpPort": http_port, "tlsPort": tls_port, "ocspResponderURL": "",
            "externalAccountBindingRequired": False, "certificateValidityPeriod": VALIDITY}}))
        self.procs: list[subprocess.Popen] = []
        self.root_pem = b""

    @property
    def directory(self) -> str:
        return f"https://localhost:{self.port}/dir"

    def start(self) -> None:
        log = open(self.tmp / "pebble.log", "ab")
        self.dns_proc = subprocess.Popen(
            ["pebble-challtestsrv", "-dns01", f"127.0.0.1:{self.dns}", "-http01", "", "-https01", "",
             "-tlsalpn01", "", "-management", f"127.0.0.1:{free_port()}", "-defaultIPv4", "127.0.0.1",
             "-defaultIPv6", ""], stdout=log, stderr=subprocess.STDOUT)
        self.proc = subprocess.Popen(["pebble", "-config", str(self.tmp / "pebble.json"),
                                      "-dnsserver", f"127.0.0.1:{self.dns}"],
                                     env={**os.environ, "PEBBLE_VA_NOSLEEP": "1"}, stdout=log, stderr=subprocess.STDOUT)
        ctx = ssl.create_default_context(cafile=str(self.ca.cert_path))
        deadline = time.monotonic() + 20
        while True:   # bounded by the deadline
            try:
                with urllib.request.urlopen(f"https://localhost:{self.mgmt}/roots/0", context=ctx, timeout=2) as r:
                    self.root_pem = r.read()
                with urllib.request.urlopen(self.directory, context=ctx, timeout=2) as r:
                    json.loads(r.read())
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("pebble did not start:\n" + (self.tmp / "pebble.log").read_text()[-2000:])
                time.sleep(0.1)

    def stop(self) -> None:
        for p in (self.proc, self.dns_proc):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


class Upstream(Endpoint):
    """A bound TLS endpoint terminated at the edge, relayed to a local line echo."""

    def __init__(self, hostname: str, port: int) -> None:
        self.kind, self.hostname, self.port = "tls", hostname, None
        self.url = f"tls://{hostname}"
        self.options = MappingProxyType({"terminate_at": "edge"})
        self.upstream_port = port

    async def open_stream(self, client_addr, client_port, *, sni=None, tls_terminated=False):
        from test_edge_front import LoopbackStream

        _, proto = await asyncio.get_running_loop().create_connection(LoopbackStream, "127.0.0.1",
                                                                      self.upstream_port)
        return proto


class Hub:
    def __init__(self) -> None:
        self.by_host: dict[str, Upstream] = {}
        self.connections: set = set()
        self.peers = None
        self.listeners: list = []

    def add_listener(self, fn):
        self.listeners.append(fn)

    def bind(self, b: Upstream) -> None:
        self.by_host[b.hostname] = b
        for fn in self.listeners:
            fn("bind", b)

    def lookup(self, kind, key):
        b = self.by_host.get(str(key))
        return b if b is not None and b.kind == kind else None

    def bindings(self):
        return list(self.by_host.values())


@pytest.fixture(scope="module")
def ports():
    return {"http": free_port(), "https": free_port()}


@pytest.fixture(scope="module")
def pebble(ports):
    if shutil.which("pebble") is None and not os.environ.get("CI"):
        pytest.skip("needs pebble: run `make install` (apt-get install pebble)")
    tmp = Path(tempfile.mkdtemp(prefix="gslb-pebble-"))
    p = Pebble(tmp, ports["http"], ports["https"])
    p.start()
    yield p
    p.stop()
    shutil.rmtree(tmp, ignore_errors=True)


class Deployment:
    """Edges sharing one registry and deployment key; edge 0 holds the ports pebble validates at."""

    def __init__(self, tmp: Path, pebble: Pebble, ports: dict, challenges: tuple[str, ...], n: int = 2,
                 **settings) -> None:
        self.tmp, self.pebble, self.ports = tmp, pebble, ports
        self.registry = MemoryRegistry()
        self.key = os.urandom(32)
        self.lab_ca = CertAuthority.create(tmp / "lab-ca")
        self.challenges = challenges
        self.n = n
        self.settings = AcmeSettings(**{"directory_url": pebble.directory, "ca_bundle": str(pebble.ca.cert_path),
                                        "handshake_wait": 20.0, "retry_base": 1.0, "retry_max": 2.0,
                                        "order_timeout": 30.0, "net_timeout": 5.0, "check_interval": 0.5,
                                        **settings})
        self.edges: list[EdgeServer] = []
        self.hubs: list[Hub] = []

    async def start(self) -> None:
        for i in range(self.n):
            pop = f"p{i}"
            store = AcmeStore(self.registry, Sealer(self.key), pop, self.tmp / pop / "acme")
            solvers = {}
            if "http-01" in self.challenges:
                solvers["http-01"] = Http01Solver(store)
            if "tls-alpn-01" in self.challenges:
                solvers["tls-alpn-01"] = TlsAlpn01Solver(store)
            manager = AcmeManager(self.settings, store, https_domain=DOMAIN, solvers=solvers)
            https = self.ports["https"] if i == 0 else free_port()
            http = self.ports["http"] if i == 0 else free_port()
            cfg = EdgeConfig(source="test", zone="lab.test", pop=pop, https_domain=DOMAIN, listen=("127.0.0.1",),
                             https_port=https, http_port=http, tcp_ports=None, health_listen=None,
                             ca_dir=str(self.tmp / "lab-ca"), cert_dir=str(self.tmp / pop / "certs"),
                             authtokens_file=None, timeouts=Timeouts(handshake=10.0, idle=60.0, stream_open=5.0))
            hub = Hub()
            edge = EdgeServer(cfg, hub, CertStore(self.lab_ca, self.tmp / pop / "certs"), acme=manager)
            await edge.start()
            await manager.start()
            self.edges.append(edge)
            self.hubs.append(hub)
        self.echo = await asyncio.get_running_loop().create_server(LineEcho, "127.0.0.1", 0)

    async def close(self) -> None:
        for e in self.edges:
            await e.acme.close()
            await e.close()
        self.echo.close()

    def bind(self, name: str, at: int) -> None:
        up = Upstream(name, self.echo.sockets[0].getsockname()[1])
        for i, hub in enumerate(self.hubs):
            if i == at:
                hub.bind(up)
            else:
                hub.by_host[name] = up   # seen through the registry at the other PoPs (no order there)

    def client_ctx(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cadata=self.pebble.root_pem.decode())
        return ctx


async def connect(dep: Deployment, edge: int, name: str):
    """A TLS connection to edge `edge` for `name`, verified against pebble's root: (reader, writer, serial)."""
    r, w = await asyncio.open_connection("127.0.0.1", dep.edges[edge].cfg.https_port, ssl=dep.client_ctx(),
                                         server_hostname=name)
    der = w.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return r, w, f"{x509.load_der_x509_certificate(der).serial_number:X}"


async def echo(r, w, line: bytes) -> bytes:
    w.write(line)
    await w.drain()
    return await asyncio.wait_for(r.readexactly(len(line) + 5), 10)


async def until(predicate, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:   # bounded
        if predicate():
            return True
        await asyncio.sleep(step)
    return predicate()


@need_tools("pebble", "pebble-challtestsrv")
def test_http01_new_endpoint_gets_one_certificate_that_both_pops_serve(pebble, ports, tmp_path):
    """Bound at p1, validated over HTTP-01 at p0's :80 (the PoP the CA reaches), served by both."""
    async def run():
        dep = Deployment(tmp_path, pebble, ports, ("http-01",))
        await dep.start()
        try:
            name = "web.app.lab.test"
            t0 = time.monotonic()
            dep.bind(name, at=1)
            assert await until(lambda: name in dep.edges[1].acme.served(), 30), dep.edges[1].acme.stats()
            bind_to_cert = time.monotonic() - t0
            _, w0, s0 = await connect(dep, 0, name)
            r1, w1, s1 = await connect(dep, 1, name)
            assert s0 == s1 == dep.edges[1].acme.served()[name].serial
            assert await echo(r1, w1, b"hello\n") == b"echo:hello\n"
            assert dep.edges[1].acme.stats()["orders_ok"] == 1 and dep.edges[0].acme.stats()["orders_ok"] == 0
            for w in (w0, w1):
                w.close()
            print(f"bind_to_valid_certificate_s={bind_to_cert:.2f}")
        finally:
            await dep.close()
    asyncio.run(run())


@need_tools("pebble", "pebble-challtestsrv")
def test_tls_alpn01_is_answered_by_the_edge_443_listener(pebble, ports, tmp_path):
    async def run():
        dep = Deployment(tmp_path, pebble, ports, ("tls-alpn-01",), n=1)
        await dep.start()
        try:
            name = "alpn.app.lab.test"
            dep.bind(name, at=0)
            r, w, serial = await connect(dep, 0, name)   # the first handshake waits for the order
            assert serial == dep.edges[0].acme.served()[name].serial
            assert await echo(r, w, b"x\n") == b"echo:x\n"
            w.close()
        finally:
            await dep.close()
    asyncio.run(run())


@need_tools("pebble", "pebble-challtestsrv")
def test_renewal_swaps_the_certificate_and_an_open_connection_keeps_working(pebble, ports, tmp_path):
    async def run():
        dep = Deployment(tmp_path, pebble, ports, ("http-01",))
        await dep.start()
        try:
            name = "renew.app.lab.test"
            dep.bind(name, at=0)
            r, w, first = await connect(dep, 0, name)
            assert await echo(r, w, b"before\n") == b"echo:before\n"
            _, w1, at_p1 = await connect(dep, 1, name)     # p1 serves it too, from the store
            assert at_p1 == first
            # pebble's certificates live VALIDITY s: due at ~2/3, renewed by a check pass
            assert await until(lambda: dep.edges[0].acme.served()[name].serial != first, VALIDITY + 10), \
                dep.edges[0].acme.stats()
            assert await echo(r, w, b"after\n") == b"echo:after\n"     # opened before the renewal
            _, w2, second = await connect(dep, 0, name)
            assert second != first
            # whichever PoP's pass got the lock renewed; the other swapped it in from the store
            p0, p1 = (e.acme for e in dep.edges)
            assert await until(lambda: p1.served()[name].serial == p0.served()[name].serial != first, 10)
            stats = [p0.stats(), p1.stats()]
            assert sum(st["renewals"] for st in stats) >= 1 and sum(st["swaps"] for st in stats) >= 1, stats
            w1.close()
            for x in (w, w2):
                x.close()
        finally:
            await dep.close()
    asyncio.run(run())


@need_tools("pebble", "pebble-challtestsrv")
def test_ca_down_fails_clearly_and_keeps_the_old_certificate(pebble, ports, tmp_path, caplog):
    async def run():
        # Renewal due at a quarter of the 12 s lifetime: the failed order comes ~3 s in, and the
        # old certificate is asked for again long before it expires (at 2/3 it could expire
        # first on a busy machine, and the edge rightly stops serving an expired one).
        dep = Deployment(tmp_path, pebble, ports, ("http-01",), n=1, renew_at=0.25)
        await dep.start()
        try:
            name = "down.app.lab.test"
            dep.bind(name, at=0)
            _, w, first = await connect(dep, 0, name)
            w.close()
            pebble.stop()
            try:
                acme = dep.edges[0].acme
                assert await until(lambda: acme.stats()["orders_failed"] >= 1, VALIDITY + 10), acme.stats()
                failed = [r.getMessage() for r in caplog.records if "acme_order_failed" in r.getMessage()]
                assert failed and "cannot connect" in failed[0] and pebble.directory in failed[0], failed
                assert f"kept_serial={first}" in failed[0]
                _, w, still = await connect(dep, 0, name)    # still valid: served as before
                assert still == first
                w.close()
            finally:
                pebble.start()
        finally:
            await dep.close()
    asyncio.run(run())
