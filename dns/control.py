"""The control socket: where it lives, its tiny protocol, and the client side.

A unix stream socket (mode 0600) the server's health monitor listens on
(`dns.monitor`). One request per connection: a JSON object on one line; one
JSON object back on one line, `{"ok": true, ...}` or `{"ok": false, "error": "..."}`.

    {"op": "drain", "pop": "eu"}     {"op": "undrain", "pop": "eu"}
    {"op": "health"}                 per-address state, drains, workers' versions
    {"op": "snapshot"}               the encoded view the workers answer from
    {"op": "rrl"}                    each worker's limited RRL buckets (dns/rrl.py), [] when none

Where: `--control PATH`, else `[health].control_socket`, else
`<runtime dir>/[<netns>-]<host>-<port>.sock` for the first listen address,
runtime dir `/run/gslb-dns` for root, `$XDG_RUNTIME_DIR/gslb-dns` or
`/tmp/gslb-dns-<uid>` otherwise (docs/configuration.md, `[health]`).
"""
from __future__ import annotations

import json
import os
import socket
from typing import Any

MAX_REQUEST = 4096
MAX_REPLY = 4 << 20
OPS = ("drain", "undrain", "health", "snapshot", "rrl")


class ControlError(Exception):
    """The control socket could not be reached, or the server said no."""


def runtime_dir() -> str:
    if os.geteuid() == 0:
        return "/run/gslb-dns"
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    return os.path.join(xdg, "gslb-dns") if xdg else f"/tmp/gslb-dns-{os.getuid()}"


def default_path(listen: tuple[tuple[str, int], ...], netns: str | None = None) -> str:
    """The default control socket of a server listening first on listen[0]."""
    host, port = listen[0]
    name = f"{host.replace(':', '_')}-{port}.sock"
    if netns:
        name = f"{netns}-{name}"
    return os.path.join(runtime_dir(), name)


def parse_request(line: bytes, pops: tuple[str, ...]) -> dict[str, Any]:
    """A request line -> {"op", "pop"?}; raises ControlError with the reason."""
    try:
        req = json.loads(line)
    except ValueError as exc:
        raise ControlError(f"not JSON: {exc}") from None
    if not isinstance(req, dict) or req.get("op") not in OPS:
        raise ControlError(f"expected {{\"op\": one of {', '.join(OPS)}}}")
    if req["op"] in ("drain", "undrain"):
        pop = req.get("pop")
        if not isinstance(pop, str) or pop not in pops:
            raise ControlError(f"unknown PoP {pop!r} (known: {', '.join(pops)})")
    return req


def request(path: str, req: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Send one request, return the reply; raises ControlError."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
            s.sendall(json.dumps(req).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n") and len(buf) < MAX_REPLY:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
    except FileNotFoundError:
        raise ControlError(f"{path}: no such control socket (is `gslb dns` running? "
                           "see --control and [health].control_socket)") from None
    except OSError as exc:
        raise ControlError(f"{path}: {exc.strerror or exc}") from None
    try:
        reply = json.loads(buf)
    except ValueError:
        raise ControlError(f"{path}: the server sent no valid reply") from None
    if not isinstance(reply, dict):
        raise ControlError(f"{path}: the server sent no valid reply")
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error", "refused")))
    return reply
