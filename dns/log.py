"""The DNS server's logs: `plumbing.kvlog.log` (one event per line, key=value, on stderr).

Quiet by default: startup, reloads, errors. A value with spaces or quotes is
double-quoted, so a line splits back into fields with shlex. Kept as a name
of its own so the server's modules say where their lines go.
"""
from __future__ import annotations

from plumbing.kvlog import log

__all__ = ["log"]
