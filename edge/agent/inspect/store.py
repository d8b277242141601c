"""The inspector's bounded store of captured exchanges.

A ring of at most `max_entries` entries holding at most `max_bytes` of
captured heads and bodies together; adding past either bound evicts the
oldest entries first. Each body keeps at most `body_cap` bytes (the rest is
counted, not kept, and the body is marked truncated).

Owns: the entries and the memory they hold. Must not touch: the network,
the clock (entries carry the times the capture gives them).
"""
from __future__ import annotations

import secrets
from collections import OrderedDict
from dataclasses import dataclass, field

DEFAULT_MAX_ENTRIES = 500
DEFAULT_MAX_BYTES = 32 * 1024 * 1024
DEFAULT_BODY_CAP = 1024 * 1024


@dataclass(slots=True, eq=False)
class Message:
    """One request or response as captured: its head as sent and the start of its body."""

    head: bytes            # as sent, with its blank line
    version: str
    method: str = ""       # requests
    uri: str = ""
    status: int = 0        # responses
    reason: str = ""
    body: bytearray = field(default_factory=bytearray)
    body_size: int = 0     # every body byte seen, kept or not
    truncated: bool = False
    done: bool = False
    _headers: list[tuple[str, str]] | None = None

    @property
    def headers(self) -> list[tuple[str, str]]:
        """Parsed when first shown (the capture only reads the framing fields)."""
        if self._headers is None:
            from edge.agent.inspect.capture import CaptureError, parse_head

            try:
                self._headers = parse_head(self.head[:-4], bool(self.method))[3]
            except CaptureError:
                self._headers = lenient_headers(self.head)
        return self._headers

    @property
    def kept(self) -> int:
        return len(self.head) + len(self.body)


def lenient_headers(head: bytes) -> list[tuple[str, str]]:
    """Every line after the first as (name, value); a line without a colon as (line, "")."""
    out = []
    for line in head.split(b"\r\n")[1:]:
        if line:
            name, _, value = line.partition(b":")
            out.append((name.decode("latin-1"), value.strip().decode("latin-1")))
    return out


@dataclass(slots=True, eq=False)
class Entry:
    tunnel_name: str
    remote_addr: str
    start: float           # seconds since the epoch
    replay_of: str | None = None
    id: str = ""
    request: Message | None = None
    response: Message | None = None
    end: float | None = None
    error: str | None = None
    upgrade_requested: bool = False
    websocket: bool = False
    ws_frames_in: int = 0   # upstream -> client
    ws_frames_out: int = 0  # client -> upstream
    ws_closed: bool = False
    evicted: bool = False

    def complete(self, now: float) -> None:
        if self.end is None:
            self.end = now
            if self.response is not None:
                self.response.done = True

    def abort(self, now: float, why: str) -> None:
        if self.end is None:
            self.end = now
            self.error = why

    @property
    def duration(self) -> float | None:
        return None if self.end is None else max(0.0, self.end - self.start)


class Store:
    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, max_bytes: int = DEFAULT_MAX_BYTES,
                 body_cap: int = DEFAULT_BODY_CAP) -> None:
        if max_entries < 1 or max_bytes < 1 or body_cap < 0:
            raise ValueError("the store needs room for at least one entry")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.body_cap = min(body_cap, max_bytes)
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self.bytes = 0          # heads + kept bodies of the entries held
        self.version = 0        # bumped on every change: the UI polls it
        self.evictions = 0
        self.captured = 0       # entries ever added
        self._prefix = secrets.token_hex(4)

    def __len__(self) -> int:
        return len(self._entries)

    def touch(self) -> None:
        self.version += 1

    def add(self, entry: Entry) -> None:
        self.captured += 1
        entry.id = f"{self._prefix}{self.captured:08x}"
        self._entries[entry.id] = entry
        if entry.request is not None:
            self.bytes += len(entry.request.head)
        self._evict()
        self.touch()

    def add_body(self, entry: Entry, msg: Message, data: bytes) -> None:
        msg.body_size += len(data)
        if entry.evicted:  # still in flight but out of the store: keep nothing more
            return
        room = self.body_cap - len(msg.body)
        if len(data) > room:
            msg.truncated = True
            data = data[:max(room, 0)]
        if data:
            msg.body += data
            self.bytes += len(data)
            self._evict()
        self.touch()

    def set_response(self, entry: Entry, msg: Message) -> None:
        entry.response = msg
        if not entry.evicted:
            self.bytes += len(msg.head)
            self._evict()
        self.touch()

    def get(self, entry_id: str) -> Entry | None:
        return self._entries.get(entry_id)

    def entries(self) -> list[Entry]:
        """Newest first, as ngrok lists them."""
        return list(reversed(self._entries.values()))

    def clear(self) -> None:
        for e in self._entries.values():
            e.evicted = True
        self._entries.clear()
        self.bytes = 0
        self.touch()

    def stats(self) -> dict[str, int]:
        return {"entries": len(self._entries), "bytes": self.bytes, "captured_total": self.captured,
                "evicted_total": self.evictions}

    def _evict(self) -> None:
        while self._entries and (len(self._entries) > self.max_entries or self.bytes > self.max_bytes):
            _, old = self._entries.popitem(last=False)
            old.evicted = True
            self.evictions += 1
            self.bytes -= sum(m.kept for m in (old.request, old.response) if m is not None)
