"""A PoP host's stand-in until the edge runs there: `GET /healthz` -> 200 on every PoP address.

Run by the lab inside a pop host (`python -m netns.responder --listen ADDR:PORT ...`).
It only answers; it never sends first. Logs one key=value line per request.
The command line the lab uses for PoP hosts is built in one place:
`netns.lab.pop_command()`, so switching PoPs to `gslb edge` is one change.
"""
from __future__ import annotations

import argparse
import asyncio
import signal
import sys


def parse_listen(value: str) -> tuple[str, int]:
    """ADDR:PORT or [V6ADDR]:PORT."""
    if value.startswith("["):
        host, _, port = value[1:].partition("]:")
    else:
        host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{value!r}: expected ADDR:PORT or [V6ADDR]:PORT")
    return host, int(port)


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pop: str) -> None:
    peer = writer.get_extra_info("peername")
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ConnectionError):
        writer.close()
        return
    parts = head.split(b"\r\n", 1)[0].split()
    path = parts[1].decode("latin-1") if len(parts) >= 2 else "?"
    if len(parts) >= 2 and parts[0] in (b"GET", b"HEAD") and path == "/healthz":
        status, body = "200 OK", f"ok pop={pop}\n".encode()
    else:
        status, body = "404 Not Found", b"not found\n"
    local = writer.get_extra_info("sockname")
    writer.write(f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                 f"X-Gslb-Pop: {pop}\r\nConnection: close\r\n\r\n".encode()
                 + (body if parts[0] != b"HEAD" else b""))
    print(f"event=request pop={pop} client={peer[0] if peer else '?'} local={local[0] if local else '?'} "
          f"path={path} status={status.split()[0]}", flush=True)
    try:
        await writer.drain()
    finally:
        writer.close()


async def serve(listens: list[tuple[str, int]], pop: str) -> None:
    servers = [await asyncio.start_server(lambda r, w: _handle(r, w, pop), host, port)
               for host, port in listens]
    print(f"event=listening pop={pop} addresses={','.join(f'{h}:{p}' for h, p in listens)}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for s in servers:
        s.close()
    print(f"event=stopped pop={pop}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m netns.responder",
        description="Health responder for a lab PoP host: GET /healthz -> 200.",
        epilog="example:\n  python -m netns.responder --pop jp --listen 198.18.5.1:80 --listen '[fd7a:5e1b:c00::5:1]:80'",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", type=parse_listen, action="append", required=True,
                        help="ADDR:PORT or [V6ADDR]:PORT; repeat for every address")
    parser.add_argument("--pop", default="?", help="PoP id, echoed in X-Gslb-Pop")
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.listen, args.pop))
    except OSError as exc:
        print(f"event=error what=bind error={exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
