"""Asking worker processes for their counters at scrape time (docs/metrics.md).

Shared by `gslb dns --workers` (dns/metrics.py) and `gslb edge --workers` (edge/metrics.py).
The asking process holds one end of a stream socket pair per worker (made before the fork);
the worker answers each request line ("SEQ\\n") with one JSON line {"seq": SEQ, ...snapshot}.
What a snapshot holds and how snapshots add up is the caller's (`snapshot`, `merge`).

Bounds: a reply is at most MAX_SNAPSHOT bytes; a worker gets `timeout` seconds to answer
(`SnapshotAsker.collect`) and one that does not is left out of that scrape's fresh answers and
counted in `timeouts`: the scrape never waits longer. A late reply is recognised by its seq and
skipped by the next scrape.
"""
from __future__ import annotations

import asyncio
import json
import socket
from typing import Any, Callable, Hashable, Iterable

MAX_SNAPSHOT = 16 << 20     # bytes of one worker's reply
WORKER_TIMEOUT = 2.0        # s a worker has to answer a scrape

Snapshot = dict[str, Any]


def serve_snapshots(sock: socket.socket, snapshot: Callable[[], Snapshot]) -> None:
    """In a worker (inside its running event loop): answer each request line on `sock` with
    `snapshot()` as one JSON line carrying the request's seq."""
    loop = asyncio.get_running_loop()
    sock.settimeout(1.0)   # a stuck asker costs a worker at most this long
    fd = sock.fileno()

    def on_request() -> None:
        try:
            data = sock.recv(4096)
        except (BlockingIOError, InterruptedError, socket.timeout):
            return
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
            return
        seq = data.rstrip(b"\n").rsplit(b"\n", 1)[-1].decode("ascii", "replace")
        line = json.dumps({"seq": seq, **snapshot()}, separators=(",", ":")).encode() + b"\n"
        try:
            sock.sendall(line)
        except OSError:
            pass

    loop.add_reader(fd, on_request)


class SnapshotAsker:
    """In the asking process: each worker's socket (by key) and its last snapshot.

    `collect()` asks all at once and returns merge([retired, *last snapshots]); `answered` and
    `timeouts` say how the newest scrape went. `forget(key)` (a worker died) keeps its last
    snapshot in `retired` when `keep_retired`, so a respawn never makes a sum go backwards."""

    def __init__(self, merge: Callable[[Iterable[Snapshot]], Snapshot], empty: Callable[[], Snapshot],
                 keep_retired: bool = True) -> None:
        self.merge = merge
        self.empty = empty
        self.keep_retired = keep_retired
        self.socks: dict[Hashable, socket.socket] = {}
        self.last: dict[Hashable, Snapshot] = {}
        self.retired = empty()
        self.answered = 0       # workers that answered the newest scrape
        self.fresh: set[Hashable] = set()   # their keys
        self.timeouts = 0       # answers missed, since start
        self._bufs: dict[Hashable, bytes] = {}
        self._seq = 0
        self._lock = asyncio.Lock()

    def add(self, key: Hashable, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.socks[key] = sock

    def forget(self, key: Hashable) -> None:
        sock = self.socks.pop(key, None)
        if sock is not None:
            sock.close()
        last = self.last.pop(key, None)
        if last is not None and self.keep_retired:
            self.retired = self.merge([self.retired, last])
        self._bufs.pop(key, None)

    async def _ask(self, key: Hashable, sock: socket.socket, seq: str) -> None:
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(sock, seq.encode() + b"\n")
        buf = self._bufs.get(key, b"")
        while True:
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                try:
                    snap = json.loads(line)
                except ValueError:
                    continue  # a reply cut by the worker's send timeout
                if isinstance(snap, dict) and snap.get("seq") == seq:
                    if key in self.socks:   # not forgotten (dead) meanwhile
                        self._bufs[key] = buf
                        self.last[key] = snap
                    return
            chunk = await loop.sock_recv(sock, 1 << 16)
            if not chunk:
                raise ConnectionError("worker closed its stats socket")
            buf += chunk
            if len(buf) > MAX_SNAPSHOT:
                buf = b""
            self._bufs[key] = buf

    async def collect(self, timeout: float = WORKER_TIMEOUT, fresh_only: bool = False) -> Snapshot:
        """The sum. `fresh_only`: a worker that missed this scrape is left out (not its last)."""
        async with self._lock:
            self._seq += 1
            seq = str(self._seq)
            got: list[Hashable] = []

            async def one(key: Hashable, sock: socket.socket) -> None:
                try:
                    await asyncio.wait_for(self._ask(key, sock, seq), timeout)
                    got.append(key)
                except (asyncio.TimeoutError, OSError, ConnectionError):
                    self.timeouts += 1
            await asyncio.gather(*(one(k, s) for k, s in list(self.socks.items())))
            self.answered = len(got)
            self.fresh = set(got)
            snaps = [self.last[k] for k in got if k in self.last] if fresh_only else list(self.last.values())
            return self.merge([self.retired, *snaps])
