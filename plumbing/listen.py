"""Listening sockets, set up the one way every server here wants them.

SO_REUSEADDR always (a restart must not wait out TIME_WAIT); SO_REUSEPORT on
request (several worker processes sharing one port, the kernel spreading
connections and datagrams over them); IPV6_V6ONLY on IPv6 sockets, so
``[::]:53`` next to ``0.0.0.0:53`` is two sockets that do not clash; non-blocking.
"""
from __future__ import annotations

import socket

from plumbing.addr import join_host_port


def listen_socket(host: str, port: int, kind: int = socket.SOCK_STREAM, *, reuse_port: bool = False,
                  backlog: int = 1024, rcvbuf: int | None = None) -> socket.socket:
    """A bound (and, for SOCK_STREAM, listening) non-blocking socket on host:port.

    `rcvbuf` asks for a receive buffer of that many bytes (the kernel caps it at
    net.core.rmem_max). On failure the socket is closed and OSError is raised with
    the errno kept and the message ``cannot listen on HOST:PORT: reason``.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {join_host_port(host, port)}: {exc.strerror}") from None
    except BaseException:
        sock.close()
        raise
    return sock
