"""edge/workers: the handover message, the registry over IPC (the ownership table), the config key."""
from __future__ import annotations

import asyncio
import os
import socket

import pytest

from edge.registry import NameTaken, PortsExhausted
from edge.workers import handover
from edge.workers.ipc import (MAX_FRAME, FrameDecoder, FrameError, IpcRegistry, RegistryService, encode_frame,
                              error_from_wire, error_to_wire)


# -- handover messages ------------------------------------------------------------------

@pytest.mark.parametrize("peer", [("198.19.5.10", 51234), ("2001:db8::7", 443), ("::ffff:192.0.2.1", 1)])
def test_handover_message_round_trips_worker_and_client_address(peer):
    msg = handover.decode(handover.encode(3, peer))
    assert msg.from_worker == 3 and msg.peer == (str(__import__("ipaddress").ip_address(peer[0])), peer[1])


@pytest.mark.parametrize("data, why", [
    (b"", "shorter"),
    (b"XX\x01\x00\x00\x01\x07" + b"1.2.3.4", "magic"),
    (b"GH\x02\x00\x00\x01\x07" + b"1.2.3.4", "version"),
    (b"GH\x01\x00\x00\x01\x09" + b"1.2.3.4", "length"),
    (b"GH\x01\x00\x00\x01\x07" + b"1.2.3.x", "not an IP"),
    (b"GH\x01\x00\x00\x01\x07" + b"\xff.2.3.4", "not an IP"),
    (b"GH\x01\x00\x00\x01\x07" + b"1" * 100, "at most"),
])
def test_bad_handover_message_is_refused(data, why):
    with pytest.raises(handover.HandoverError, match=why):
        handover.decode(data)


def test_encode_refuses_what_cannot_be_sent():
    with pytest.raises(handover.HandoverError):
        handover.encode(256, ("1.2.3.4", 1))
    with pytest.raises(ValueError):
        handover.encode(0, ("not-an-address", 1))


def _tcp_pair():
    lst = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(lst.getsockname())
    server, _ = lst.accept()
    lst.close()
    return client, server


def test_handover_passes_the_connection_with_its_unread_bytes():
    async def main():
        loop = asyncio.get_running_loop()
        rx, tx = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        got = []
        done = asyncio.Event()
        recv = handover.Receiver(loop, rx, lambda s, p: (got.append((s, p)), done.set()))
        client, server = _tcp_pair()
        client.sendall(b"\x16\x03\x01hello")
        assert handover.send(tx, server, 1, ("127.0.0.1", client.getsockname()[1])) is None
        server.close()   # the sender's copy: the connection stays open in the receiver's
        await asyncio.wait_for(done.wait(), 10)
        sock, peer = got[0]
        assert peer == ("127.0.0.1", client.getsockname()[1]) and recv.received == 1
        assert sock.recv(100, socket.MSG_PEEK) == b"\x16\x03\x01hello"
        sock.sendall(b"from the owner")
        client.settimeout(10)
        assert client.recv(100) == b"from the owner"
        recv.close()
        for s in (sock, client, rx, tx):
            s.close()
    asyncio.run(main())


def test_bad_handover_datagrams_are_dropped_and_their_descriptors_closed():
    async def main():
        loop = asyncio.get_running_loop()
        rx, tx = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        got = []
        recv = handover.Receiver(loop, rx, lambda s, p: got.append(s))
        client, server = _tcp_pair()
        socket.send_fds(tx, [b"GH\x09garbage"], [server.fileno()])           # bad version, one fd
        tx.send(handover.encode(0, ("127.0.0.1", 1)))                         # no fd at all
        r, w = os.pipe()
        socket.send_fds(tx, [handover.encode(0, ("127.0.0.1", 1))], [r])       # not a TCP socket
        socket.send_fds(tx, [handover.encode(0, ("127.0.0.1", 1))], [server.fileno(), server.fileno()])
        server.close()
        os.close(r)
        for _ in range(200):
            if recv.rejected == 4:
                break
            await asyncio.sleep(0.01)
        assert recv.rejected == 4 and recv.received == 0 and not got
        # every copy of the server side is closed: the client sees EOF
        client.settimeout(10)
        assert client.recv(10) == b""
        os.close(w)
        recv.close()
        for s in (client, rx, tx):
            s.close()
    asyncio.run(main())


def test_send_to_a_full_channel_fails_without_blocking():
    rx, tx = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    tx.setblocking(False)   # as the supervisor makes every channel
    client, server = _tcp_pair()
    why = None
    for _ in range(10000):
        why = handover.send(tx, server, 0, ("127.0.0.1", 1))
        if why is not None:
            break
    assert why == "EAGAIN"
    for s in (rx, tx, client, server):
        s.close()


# -- the registry over IPC: the ownership table -----------------------------------------

def test_frames_are_bounded_and_must_be_json_objects():
    d = FrameDecoder()
    frame = encode_frame({"id": 1, "op": "kv_get", "args": {"key": "x"}})
    assert d.feed(frame[:3]) == [] and d.feed(frame[3:] + frame) == [{"id": 1, "op": "kv_get", "args": {"key": "x"}}] * 2
    with pytest.raises(FrameError):
        FrameDecoder().feed((MAX_FRAME + 1).to_bytes(4, "big"))
    with pytest.raises(FrameError):
        FrameDecoder().feed(b"\x00\x00\x00\x02[]")
    with pytest.raises(FrameError):
        FrameDecoder().feed(b"\x00\x00\x00\x02{x")


def test_registry_errors_cross_the_wire_with_their_fields():
    e = error_from_wire(error_to_wire(NameTaken("http", "a.app.lab.test", "t", "s1")))
    assert isinstance(e, NameTaken) and (e.pop, e.session) == ("t", "s1")
    assert isinstance(error_from_wire(error_to_wire(PortsExhausted(1, 2))), PortsExhausted)
    assert "bad error" in str(error_from_wire("junk"))


async def _two_workers():
    service = RegistryService()
    workers = []
    for i in range(2):
        sup, wk = socket.socketpair()
        await service.serve(sup, label=str(i))
        reg = IpcRegistry(wk)
        await reg.start()
        workers.append(reg)
    return service, workers


def test_a_name_is_unique_across_workers_and_every_worker_sees_the_owner():
    async def main():
        service, (w0, w1) = await _two_workers()
        l0 = await w0.open_session("t", "s0")
        l1 = await w1.open_session("t", "s1")
        b = await w0.bind("http", "a.app.lab.test", "t", "s0", l0, {"worker": 0})
        assert w0.lookup("http", "a.app.lab.test") == b     # in the binder's view when bind returns
        with pytest.raises(NameTaken) as taken:
            await w1.bind("http", "a.app.lab.test", "t", "s1", l1, {"worker": 1})
        assert taken.value.session == "s0"
        assert w1.lookup("http", "a.app.lab.test").meta["worker"] == 0
        p0 = await w0.allocate_port("s0", l0, 20000, 20001)
        p1 = await w1.allocate_port("s1", l1, 20000, 20001)
        assert {p0, p1} == {20000, 20001}
        # a lease of another worker's connection is refused
        with pytest.raises(Exception):
            await w1.bind("http", "b.app.lab.test", "t", "s0", l0)
        await l0.close()
        for _ in range(100):
            if w1.lookup("http", "a.app.lab.test") is None:
                break
            await asyncio.sleep(0.01)
        assert w1.lookup("http", "a.app.lab.test") is None
        await w1.kv_put("acme/x", b"\x00\xffv")
        assert await w0.kv_get("acme/x") == b"\x00\xffv" and list(await w0.kv_list("")) == ["acme/x"]
    asyncio.run(main())


def test_a_worker_that_goes_away_frees_its_names_and_a_new_one_gets_the_snapshot():
    async def main():
        service, (w0, w1) = await _two_workers()
        l1 = await w1.open_session("t", "s1")
        await w1.bind("http", "gone.app.lab.test", "t", "s1", l1, {"worker": 1})
        l0 = await w0.open_session("t", "s0")
        await w0.bind("http", "stays.app.lab.test", "t", "s0", l0, {"worker": 0})
        await w1.close()      # the worker died: its connection ends
        for _ in range(200):
            if w0.lookup("http", "gone.app.lab.test") is None:
                break
            await asyncio.sleep(0.01)
        assert w0.lookup("http", "gone.app.lab.test") is None
        sup, wk = socket.socketpair()
        await service.serve(sup, label="1")
        fresh = IpcRegistry(wk)
        await fresh.start()
        for _ in range(200):
            if fresh.lookup("http", "stays.app.lab.test") is not None:
                break
            await asyncio.sleep(0.01)
        assert fresh.lookup("http", "stays.app.lab.test").meta["worker"] == 0
    asyncio.run(main())


def test_a_worker_loses_its_leases_when_the_supervisor_goes():
    async def main():
        sup, wk = socket.socketpair()
        service = RegistryService()
        transport = await service.serve(sup, label="0")
        reg = IpcRegistry(wk)
        await reg.start()
        lease = await reg.open_session("t", "s0")
        transport.close()
        assert await asyncio.wait_for(lease.wait_lost(), 10) == "expired"
        with pytest.raises(Exception, match="not reachable"):
            await reg.open_session("t", "s1")
    asyncio.run(main())


def test_a_bad_frame_drops_only_that_workers_connection():
    async def main():
        service, (w0, w1) = await _two_workers()
        lease = await w0.open_session("t", "s0")
        await w0.bind("http", "x.app.lab.test", "t", "s0", lease, {"worker": 0})
        w0._transport.write(b"\x00\x00\x00\x05nope!")
        assert await asyncio.wait_for(lease.wait_lost(), 10) == "expired"
        for _ in range(200):
            if w1.lookup("http", "x.app.lab.test") is None:
                break
            await asyncio.sleep(0.01)
        assert w1.lookup("http", "x.app.lab.test") is None
        assert await w1.open_session("t", "s1")   # the other worker goes on
    asyncio.run(main())


# -- configuration ----------------------------------------------------------------------

def _cfg(tmp_path, extra=""):
    from edge.config import load
    (tmp_path / "e.toml").write_text(f'zone = "lab.test"\n[edge]\nca_dir = "{tmp_path}"\n{extra}\n'
                                     '[pops.t]\nlisten = ["127.0.0.1"]\n')
    return load(tmp_path / "e.toml", "t")


def test_workers_key_defaults_to_unset_and_is_bounded(tmp_path):
    from edge.config import ConfigError
    assert _cfg(tmp_path).workers is None
    assert _cfg(tmp_path, "workers = 3").workers == 3
    for bad in ("0", "65", "true", '"2"'):
        with pytest.raises(ConfigError, match="edge.workers"):
            _cfg(tmp_path, f"workers = {bad}")


def test_worker_count_default_is_the_cpus_the_edge_may_run_on_and_etcd_runs_one(tmp_path):
    import argparse
    from edge.cli import _workers
    args = argparse.Namespace(workers=None)
    assert _workers(args, _cfg(tmp_path)) == len(os.sched_getaffinity(0))
    assert _workers(argparse.Namespace(workers=1), _cfg(tmp_path, "workers = 4")) == 1
    etcd = _cfg(tmp_path, '[registry]\nkind = "etcd"\nendpoints = ["http://127.0.0.1:2379"]')
    assert _workers(args, etcd) == 1
    assert "etcd" in str(_workers(argparse.Namespace(workers=2), etcd))
