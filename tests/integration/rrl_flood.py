"""A bounded UDP flood of identical DNS queries, for the RRL tests (standard library only).

    python rrl_flood.py HOST PORT [--count 2000] [--qps 1000] [--sockets 8] [--linger 1.5]

Sends `count` copies of one query (`demo.app.lab.test A`, EDNS, distinct IDs)
at about `qps` per second, round robin over `sockets` sockets (each its own
source port, as a resolver sends, so SO_REUSEPORT spreads them over the
server's workers), then collects replies for `linger` seconds more. Prints one
JSON object: how many replies were full (answers, TC=0), truncated (TC=1,
no records), other, and missing, and the full answers per second of the run
(by receive time). Bounded: at most `count` sends, at most
count/qps + linger seconds.
"""
from __future__ import annotations

import argparse
import json
import select
import socket
import struct
import time


def query(qid: int, name: str = "demo.app.lab.test") -> bytes:
    qname = b"".join(bytes((len(p),)) + p.encode() for p in name.split(".")) + b"\x00"
    opt = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)
    return struct.pack("!HHHHHH", qid, 0, 1, 0, 0, 1) + qname + struct.pack("!HH", 1, 1) + opt


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--count", type=int, default=2000)
    p.add_argument("--qps", type=float, default=1000.0)
    p.add_argument("--sockets", type=int, default=8)
    p.add_argument("--linger", type=float, default=1.5)
    a = p.parse_args()
    if not (1 <= a.count <= 100_000 and 1 <= a.sockets <= 64 and 1 <= a.qps <= 100_000):
        p.error("count 1-100000, sockets 1-64, qps 1-100000")
    fam = socket.AF_INET6 if ":" in a.host else socket.AF_INET
    socks = []
    for _ in range(a.sockets):
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.setblocking(False)
        s.connect((a.host, a.port))
        socks.append(s)
    full = tc = other = 0
    full_at: list[float] = []
    seen: set[int] = set()
    t0 = time.monotonic()

    def drain(until: float) -> None:
        nonlocal full, tc, other
        while True:
            left = until - time.monotonic()
            ready, _, _ = select.select(socks, [], [], max(0.0, left))
            if not ready:
                if left <= 0:
                    return
                continue
            for s in ready:
                try:
                    data = s.recv(65535)
                except (BlockingIOError, ConnectionRefusedError):
                    continue
                if len(data) < 12:
                    other += 1
                    continue
                qid, flags, _, an = struct.unpack("!HHHH", data[:8])
                if qid in seen:
                    other += 1
                    continue
                seen.add(qid)
                if flags & 0x0200 and an == 0:
                    tc += 1
                elif an and not flags & 0x0200 and flags & 0x000F == 0:
                    full += 1
                    full_at.append(time.monotonic() - t0)
                else:
                    other += 1

    for i in range(a.count):
        due = t0 + i / a.qps
        if time.monotonic() < due:
            drain(due)
        try:
            socks[i % len(socks)].send(query(i + 1))
        except (BlockingIOError, ConnectionRefusedError):
            pass
    sent_for = time.monotonic() - t0
    drain(time.monotonic() + a.linger)
    per_second = [0] * (int(max(full_at, default=0)) + 1)
    for t in full_at:
        per_second[int(t)] += 1
    # The most full answers in any window of one second, wherever it starts.
    window_max = 0
    j = 0
    for i in range(len(full_at)):
        while full_at[i] - full_at[j] >= 1.0:
            j += 1
        window_max = max(window_max, i - j + 1)
    print(json.dumps({"sent": a.count, "seconds": round(sent_for, 3), "full": full, "tc": tc,
                      "other": other, "missing": a.count - full - tc - other,
                      "full_per_second": per_second, "full_max_in_1s": window_max,
                      "sockets": a.sockets}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
