"""Structured logs: one event per line, key=value, on stderr.

Quiet by default: startup, reloads, errors. A value with spaces or quotes is
double-quoted, so a line splits back into fields with shlex.
"""
from __future__ import annotations

import os
import sys
import time


def _fmt(v: object) -> str:
    s = str(v)
    if s == "" or any(c in s for c in ' "=\n\t'):
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return s


def log(event: str, level: str = "info", **fields: object) -> None:
    ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    parts = [f"ts={ts}", f"level={level}", f"event={event}", f"pid={os.getpid()}"]
    parts += [f"{k}={_fmt(v)}" for k, v in fields.items()]
    try:
        sys.stderr.write(" ".join(parts) + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass  # a closed stderr must not take the server down
