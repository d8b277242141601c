"""The one structured log line: one event, key=value, on stderr.

    ts=2026-12-07T11:00:00Z level=info event=listening pid=4242 address=127.0.0.1:5300 proto=udp+tcp

A value that is empty or holds a space, a quote, '=', a tab or a newline is
double-quoted with backslash escapes, so a line splits back into its fields
with `shlex.split`; a field whose value is None is left out.

Two ways in, one format: `log(event, level, **fields)` writes a line directly
(the DNS server: no logging machinery on its hot path), and `KvFormatter` is
the `logging.Formatter` for code that logs through the `logging` module (the
edge, the agent, the lab), whose messages are `kv(event, **fields)`.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, TextIO

TS_FORMAT = "%Y-%m-%dT%H:%M:%SZ"   # UTC


def value(v: object) -> str:
    """One field's value as it appears after 'key='."""
    s = str(v)
    if s == "" or any(c in s for c in ' "=\n\t'):
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'
    return s


def kv(event: str, **fields: Any) -> str:
    """'event=EVENT key=value ...' (None values left out): a log message for `logging`."""
    return " ".join([f"event={event}"] + [f"{k}={value(v)}" for k, v in fields.items() if v is not None])


def line(event: str, level: str = "info", **fields: Any) -> str:
    """A whole line without its newline: ts, level, event, pid, then the fields."""
    ts = time.strftime(TS_FORMAT, time.gmtime())
    head = f"ts={ts} level={level} event={event} pid={os.getpid()}"
    rest = " ".join(f"{k}={value(v)}" for k, v in fields.items() if v is not None)
    return f"{head} {rest}" if rest else head


def log(event: str, level: str = "info", *, stream: TextIO | None = None, **fields: Any) -> None:
    """Write one line to stderr (or `stream`). A closed stream must not take the caller down."""
    try:
        out = stream or sys.stderr
        out.write(line(event, level, **fields) + "\n")
        out.flush()
    except (OSError, ValueError):
        pass


class KvFormatter(logging.Formatter):
    """'ts=... level=... logger=NAME MESSAGE' for `logging` records (MESSAGE is usually `kv(...)`)."""

    converter = time.gmtime

    def __init__(self) -> None:
        super().__init__(datefmt=TS_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        return (f"ts={self.formatTime(record, self.datefmt)} level={record.levelname.lower()} "
                f"logger={record.name} {record.message}")


def configure(level: int, stream: TextIO | None = None) -> None:
    """Root logging to stderr (or `stream`) through KvFormatter, at `level`: what the edge,
    the agent and the lab commands call once at start."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(KvFormatter())
    # basicConfig leaves a root that already has handlers alone (pytest's capture, an embedding app).
    logging.basicConfig(level=level, handlers=[handler])
