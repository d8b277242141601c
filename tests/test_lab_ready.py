"""netns.lab readiness: "ready" means every name server answers with every PoP address.

The name servers' health views are read over their control sockets (a unix socket, docs:
one JSON line each way); here a thread plays the server with canned replies."""
from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

from netns.lab import _health_not_up


def serve_once(path: Path, reply: bytes) -> threading.Thread:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)

    def run() -> None:
        with srv:
            conn, _ = srv.accept()
            with conn:
                assert json.loads(conn.recv(4096)) == {"op": "health"}
                conn.sendall(reply)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def addr(address: str, state: str = "up", failures: int = 0, checks: int = 3) -> dict:
    return {"pop": "eu", "address": address, "state": state, "failures": failures, "checks": checks}


def health(addresses: list[dict], version: int = 4, workers: dict | None = None) -> bytes:
    return json.dumps({"ok": True, "version": version, "addresses": addresses,
                       "workers": workers if workers is not None else {"1": version}}).encode() + b"\n"


def test_a_view_with_everything_up_and_checked_is_ready(tmp_path):
    p = tmp_path / "ns1.ctl"
    t = serve_once(p, health([addr("198.18.3.1"), addr("fd7a::1")]))
    assert _health_not_up(p) == []
    t.join(5)


def test_down_failing_unchecked_and_drained_addresses_are_named(tmp_path):
    p = tmp_path / "ns1.ctl"
    serve_once(p, health([addr("198.18.3.1", state="down"), addr("198.18.3.2", failures=1),
                          addr("198.18.3.3", checks=0), addr("198.18.3.4", state="drained"),
                          addr("198.18.3.5")]))
    assert _health_not_up(p) == ["198.18.3.1", "198.18.3.2", "198.18.3.3", "198.18.3.4"]


def test_workers_behind_the_newest_view_are_not_ready(tmp_path):
    p = tmp_path / "ns1.ctl"
    serve_once(p, health([addr("198.18.3.1")], version=5, workers={"10": 5, "11": 4}))
    assert _health_not_up(p) == ["(workers have not applied the newest view)"]


def test_no_server_or_garbage_is_not_ready_and_says_why(tmp_path):
    missing = _health_not_up(tmp_path / "nothing.ctl")
    assert len(missing) == 1 and "nothing.ctl" in missing[0]
    p = tmp_path / "ns1.ctl"
    serve_once(p, b"not json\n")
    got = _health_not_up(p)
    assert len(got) == 1 and "control socket" in got[0]
