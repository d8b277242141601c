"""Bulk transfer source and client for the tunnel figure.

    python -m bench.bulk serve --port 9000 [--tls CERT KEY]
    python -m bench.bulk fetch --port 9001 --bytes 1073741824 [--tls CAFILE --sni NAME]

Protocol: the client sends the number of bytes it wants (8 octets, big
endian); the source sends that many bytes and closes. The client times from
connect to the last byte and prints one JSON line: bytes, seconds, MB/s
(MB = 10^6 bytes). Whatever sits between them (the edge and agent, nginx
relays, nothing) only relays bytes. The payload comes from memory, not from a
file, so the page cache plays no part.

Bounded: the source serves at most --max-connections connections and exits
after --idle seconds without one; the client gives up after --timeout.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import struct
import sys
import time

CHUNK = 256 * 1024
MAX_BYTES = 8 * 1024**3


def serve(args: argparse.Namespace) -> int:
    ctx = None
    if args.tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls[0], args.tls[1])
    payload = memoryview(os.urandom(1024 * 1024) * 4)  # 4 MiB, incompressible
    ls = socket.create_server((args.host, args.port), reuse_port=False)
    ls.settimeout(args.idle)
    served = 0
    try:
        while served < args.max_connections:
            try:
                conn, _ = ls.accept()
            except socket.timeout:
                return 0
            served += 1
            conn.settimeout(args.idle)
            try:
                if ctx is not None:
                    conn = ctx.wrap_socket(conn, server_side=True)
                head = b""
                while len(head) < 8:
                    part = conn.recv(8 - len(head))
                    if not part:
                        break
                    head += part
                if len(head) < 8:
                    continue
                (n,) = struct.unpack("!Q", head)
                n = min(n, MAX_BYTES)
                while n > 0:
                    k = min(n, len(payload), CHUNK if ctx is not None else len(payload))
                    conn.sendall(payload[:k])
                    n -= k
            except OSError as exc:
                print(f"event=bulk_serve_error error={exc!r}", file=sys.stderr, flush=True)
            finally:
                try:
                    conn.close()
                except OSError:
                    pass
    finally:
        ls.close()
    return 0


def fetch(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    sock = socket.create_connection((args.host, args.port), timeout=args.timeout)
    if args.tls:
        ctx = ssl.create_default_context(cafile=args.tls)
        sock = ctx.wrap_socket(sock, server_hostname=args.sni)
    sock.settimeout(args.timeout)
    sock.sendall(struct.pack("!Q", args.bytes))
    buf = bytearray(1024 * 1024)
    view = memoryview(buf)
    got = 0
    deadline = t0 + args.timeout
    while got < args.bytes:
        n = sock.recv_into(view)
        if n == 0:
            break
        got += n
        if time.perf_counter() > deadline:
            break
    t1 = time.perf_counter()
    sock.close()
    out = {"bytes": got, "seconds": t1 - t0, "mbps": got / (t1 - t0) / 1e6, "complete": got == args.bytes}
    print(json.dumps(out), flush=True)
    return 0 if got == args.bytes else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bulk")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    s.add_argument("--max-connections", type=int, default=64)
    s.add_argument("--idle", type=float, default=600.0)
    f = sub.add_parser("fetch")
    f.add_argument("--host", default="127.0.0.1")
    f.add_argument("--port", type=int, required=True)
    f.add_argument("--bytes", type=int, required=True)
    f.add_argument("--tls", metavar="CAFILE")
    f.add_argument("--sni", default=None)
    f.add_argument("--timeout", type=float, default=120.0)
    args = p.parse_args(argv)
    return serve(args) if args.cmd == "serve" else fetch(args)


if __name__ == "__main__":
    sys.exit(main())
