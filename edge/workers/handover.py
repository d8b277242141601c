"""Handing an accepted, still encrypted client connection to the worker that owns its endpoint.

A worker accepts on :443 (SO_REUSEPORT: the kernel picks the worker), peeks the ClientHello
(nothing is read from the socket) and, when the SNI names an endpoint whose agent session lives
in another worker, sends the socket's descriptor there with SCM_RIGHTS (unix(7)) and closes its
own copy. The owner runs the same peek and dispatch: the ClientHello is still in the kernel's
receive buffer, TLS is done once, by the owner.

Each worker has one SOCK_DGRAM Unix socket pair: it reads the receiving end, every worker holds
the sending end. One datagram is one connection:

    magic "GH" | version 1 | from worker (u8) | client port (u16, big endian) | address length (u8)
    | the client address (ASCII, IPv4 or IPv6 text)

with exactly one descriptor in SCM_RIGHTS. Bounds: a datagram over MAX_MESSAGE bytes, a bad
magic or version, an address that is not an IP address, no descriptor or more than one, or a
truncated control message: logged (handover_rejected), every descriptor received is closed, the
message is dropped; the worker goes on. Sending never blocks (MSG_DONTWAIT): a full queue (the
owner is stuck or being restarted) closes the client connection instead (handover_failed).
"""
from __future__ import annotations

import errno
import os
import ipaddress
import logging
import socket
import struct
from dataclasses import dataclass
from typing import Any, Callable

from plumbing.kvlog import kv

log = logging.getLogger("gslb.edge.workers")

MAGIC = b"GH"
VERSION = 1
MAX_MESSAGE = 64
_HEAD = struct.Struct("!2sBBHB")
MAX_WORKERS = 255
_BATCH = 64       # datagrams per readiness event


class HandoverError(ValueError):
    """A handover message that is not one."""


@dataclass(frozen=True, slots=True)
class Handover:
    from_worker: int
    peer: tuple[str, int]


def encode(from_worker: int, peer: tuple[str, int]) -> bytes:
    host, port = str(peer[0]), int(peer[1])
    if not 0 <= from_worker <= MAX_WORKERS or not 0 <= port <= 65535:
        raise HandoverError(f"worker {from_worker} or port {port} out of range")
    addr = str(ipaddress.ip_address(host)).encode("ascii")
    return _HEAD.pack(MAGIC, VERSION, from_worker, port, len(addr)) + addr


def decode(data: bytes) -> Handover:
    if len(data) > MAX_MESSAGE:
        raise HandoverError(f"{len(data)} bytes, at most {MAX_MESSAGE}")
    if len(data) < _HEAD.size:
        raise HandoverError(f"{len(data)} bytes, shorter than the {_HEAD.size}-byte header")
    magic, version, worker, port, n = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise HandoverError(f"bad magic {magic!r}")
    if version != VERSION:
        raise HandoverError(f"version {version}, expected {VERSION}")
    if len(data) != _HEAD.size + n:
        raise HandoverError(f"address length {n} does not match the message's {len(data) - _HEAD.size} bytes")
    try:
        addr = str(ipaddress.ip_address(data[_HEAD.size:].decode("ascii")))
    except (UnicodeDecodeError, ValueError):
        raise HandoverError("the client address is not an IP address") from None
    return Handover(worker, (addr, port))


def send(channel: socket.socket, conn: socket.socket, from_worker: int, peer: tuple[str, int]) -> str | None:
    """Pass `conn` over `channel` (a non-blocking socket: a full queue is EAGAIN, never a wait);
    None when sent, else why not (the caller closes `conn`)."""
    try:
        socket.send_fds(channel, [encode(from_worker, peer)], [conn.fileno()], socket.MSG_DONTWAIT)
    except HandoverError as exc:
        return str(exc)
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc))
    return None


class Receiver:
    """Reads handed-over connections from `channel` on the loop; `on_conn(sock, peer)` for each."""

    def __init__(self, loop: Any, channel: socket.socket, on_conn: Callable[[socket.socket, tuple[str, int]], None]) -> None:
        self.loop = loop
        self.channel = channel
        self.on_conn = on_conn
        self.received = 0
        self.rejected = 0
        channel.setblocking(False)
        loop.add_reader(channel.fileno(), self._readable)

    def close(self) -> None:
        try:
            self.loop.remove_reader(self.channel.fileno())
        except (ValueError, OSError):
            pass

    def _readable(self) -> None:
        for _ in range(_BATCH):
            try:
                data, fds, flags, _ = socket.recv_fds(self.channel, MAX_MESSAGE + 1, 4)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.error(kv("handover_recv_failed", error=errno.errorcode.get(exc.errno or 0, str(exc))))
                return
            self.take(data, fds, flags)

    def take(self, data: bytes, fds: list[int], flags: int) -> None:
        """One datagram: a connection for on_conn, or rejected (its descriptors closed)."""
        try:
            if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
                raise HandoverError("truncated message or control data")
            if len(fds) != 1:
                raise HandoverError(f"{len(fds)} descriptors, expected 1")
            msg = decode(data)
            sock = socket.socket(fileno=fds[0])
        except (HandoverError, OSError) as exc:
            self.rejected += 1
            log.warning(kv("handover_rejected", error=str(exc), fds=len(fds)))
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            return
        if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
            self.rejected += 1
            log.warning(kv("handover_rejected", error="not a TCP socket"))
            sock.close()
            return
        self.received += 1
        sock.setblocking(False)
        self.on_conn(sock, msg.peer)
