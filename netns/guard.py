"""Checks that lab traffic starts inside a lab namespace, never in the root namespace.

The root namespace routes unknown addresses off the machine, and the machine's
egress even completes TCP handshakes to lab addresses (seen on the test machines), so
sending from root is both wrong and silently "successful". Code that sends
calls one of these first and refuses otherwise.
"""
from __future__ import annotations

import fcntl
import os
import socket

from netns.errors import NotInLabError
from netns.topology import NETNS_RUN_DIR

SIOCGSKNS = 0x894C   # ioctl: an fd of the network namespace a socket lives in


def _lab_inodes(prefix: str | None) -> dict[int, str]:
    out: dict[int, str] = {}
    try:
        names = os.listdir(NETNS_RUN_DIR)
    except OSError:
        return out
    for name in names:
        if prefix is not None and not name.startswith(prefix + "-"):
            continue
        try:
            out[os.stat(NETNS_RUN_DIR / name).st_ino] = name
        except OSError:
            pass
    return out


def current_namespace(prefix: str | None = None) -> str | None:
    """The lab namespace the calling thread is in (None: not a lab namespace, e.g. root)."""
    ino = os.stat("/proc/thread-self/ns/net").st_ino
    return _lab_inodes(prefix).get(ino)


def require_lab_namespace(prefix: str | None = None) -> str:
    """Raise NotInLabError unless the calling thread runs in a lab namespace."""
    name = current_namespace(prefix)
    if name is None:
        raise NotInLabError("refusing to send: this process is not inside a lab host; "
                            "run it with `gslb lab exec HOST -- ...`")
    return name


def socket_namespace_inode(sock: socket.socket) -> int:
    fd = fcntl.ioctl(sock.fileno(), SIOCGSKNS)
    try:
        return os.fstat(fd).st_ino
    finally:
        os.close(fd)


def require_socket_in(sock: socket.socket, ns: str) -> None:
    """Raise NotInLabError unless `sock` lives in namespace `ns` (cheap inode comparison)."""
    try:
        want = os.stat(NETNS_RUN_DIR / ns).st_ino
    except OSError:
        raise NotInLabError(f"refusing to send: namespace {ns} does not exist") from None
    if socket_namespace_inode(sock) != want:
        raise NotInLabError(f"refusing to send: socket is not in lab namespace {ns}")

