"""DNS-01 (RFC 8555 8.4): `_acme-challenge` TXT records from the registry (etcd).

Owns the read-only view of `<prefix>acme/dns01/` the name server answers
from: parsing etcd's JSON gateway answers into a TXT set (sans-IO:
`range_body`, `parse_range`), and `AcmeTxtSource`, which polls one member
of the cluster (failing over to the next) every `poll_interval` seconds and
hands every change to a callback. The DNS must not import the edge, so the
few lines of gateway arithmetic it needs are here (docs/registry.md says
what the gateway's JSON looks like).

Why a poll and not a watch: one range request per second per process is
nothing for etcd, a poll has no stream to resume (no compaction, no
reconnect state), and the propagation delay is bounded by the interval
(measured in docs/acme-dns.md). Each DNS process (each worker) polls on its
own: workers see a change within one interval of each other.

Key layout (docs/registry.md): `<prefix>acme/dns01/<fqdn>` (no trailing
dot, the `_acme-challenge.` label included) -> JSON
`{"values": ["<base64url SHA-256 digest>", ...], "expires": <unix time>}`.
Only names whose first label is `_acme-challenge` are served, so a registry
writer cannot publish arbitrary TXT records in the zone; entries past
`expires` are not served.
"""
from __future__ import annotations

import asyncio
import base64
import json
import re
from dataclasses import dataclass
from typing import Any, Callable

from dns.log import log
from dns.wire import name_from_text

CHALLENGE_LABEL = "_acme-challenge"
MAX_NAMES = 10_000            # TXT names served at once; more is a runaway writer
MAX_VALUES = 16               # values per name (a wildcard and its base name need 2)
MAX_ANSWER_BYTES = 8 << 20    # one range answer
# A base64url SHA-256 digest without padding is 43 characters (RFC 8555 8.4).
_VALUE = re.compile(r"^[A-Za-z0-9_-]{43}$")


def dns01_prefix(prefix: str) -> str:
    return prefix + "acme/dns01/"


def range_end(prefix: bytes) -> bytes:
    """etcd's range_end for "every key starting with prefix" (clientv3 GetPrefixRangeEnd)."""
    end = bytearray(prefix)
    while end and end[-1] == 0xFF:
        end.pop()
    if not end:
        return b"\x00"
    end[-1] += 1
    return bytes(end)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def range_body(prefix: str) -> dict[str, Any]:
    """The body of POST /v3/kv/range for every key of the DNS-01 space."""
    key = dns01_prefix(prefix).encode()
    return {"key": _b64(key), "range_end": _b64(range_end(key)), "limit": str(MAX_NAMES + 1)}


class AcmeError(ValueError):
    """A gateway answer that is not what etcd sends."""


@dataclass(frozen=True, slots=True)
class TxtSet:
    """What the zone serves: wire owner (lower case) -> the TXT values, sorted."""

    names: dict[bytes, tuple[str, ...]]
    skipped: int = 0    # keys not served (bad name, bad JSON, expired)

    def key(self) -> tuple:
        return tuple(sorted(self.names.items()))


def parse_entry(name: str, value: bytes, now: float) -> tuple[bytes, tuple[str, ...]] | None:
    """(wire owner, values) of one registry entry, None when it must not be served."""
    if not name or len(name) > 253 or name.endswith(".") or not name.isascii():
        return None
    labels = name.lower().split(".")
    if labels[0] != CHALLENGE_LABEL or len(labels) < 2 or any(not x or len(x) > 63 for x in labels):
        return None
    try:
        obj = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict):
        return None
    values, expires = obj.get("values"), obj.get("expires")
    if not isinstance(values, list) or not values or len(values) > MAX_VALUES:
        return None
    if not all(isinstance(v, str) and _VALUE.match(v) for v in values):
        return None
    if expires is not None:
        if isinstance(expires, bool) or not isinstance(expires, (int, float)) or expires <= now:
            return None
    try:
        owner = name_from_text(".".join(labels) + ".")
    except ValueError:
        return None
    return owner, tuple(sorted(set(values)))


def parse_range(obj: Any, prefix: str, now: float) -> TxtSet:
    """The TxtSet in a /v3/kv/range answer (proto3 JSON: base64 bytes, no "kvs" when empty)."""
    if not isinstance(obj, dict):
        raise AcmeError("range answer is not a JSON object")
    kvs = obj.get("kvs", [])
    if not isinstance(kvs, list):
        raise AcmeError("range answer: kvs is not a list")
    head = dns01_prefix(prefix).encode()
    names: dict[bytes, tuple[str, ...]] = {}
    skipped = 0
    for kv in kvs:
        try:
            key = base64.b64decode(kv["key"], validate=True)
            value = base64.b64decode(kv.get("value", ""), validate=True)
        except (KeyError, TypeError, ValueError) as exc:
            raise AcmeError(f"range answer: bad kv: {exc}") from None
        if not key.startswith(head) or len(names) >= MAX_NAMES:
            skipped += 1
            continue
        try:
            name = key[len(head):].decode("ascii")
        except UnicodeDecodeError:
            skipped += 1
            continue
        entry = parse_entry(name, value, now)
        if entry is None:
            skipped += 1
            continue
        names[entry[0]] = entry[1]
    return TxtSet(names, skipped)


class AcmeTxtSource:
    """Polls the registry for the DNS-01 TXT set; `on_change(TxtSet)` on every change.

    An unreachable registry keeps the last set (the zone goes on answering
    it) and is logged once per outage. Expiry is applied at each poll.
    """

    def __init__(self, settings: Any, on_change: Callable[[TxtSet], None], *,
                 clock: Callable[[], float] | None = None) -> None:
        import time
        self.settings = settings
        self.on_change = on_change
        self.clock = clock or time.time
        self.current: TxtSet = TxtSet({})
        self.member = 0
        self.failing = False
        self.counters = {"polls": 0, "poll_errors": 0, "changes": 0, "names": 0, "skipped": 0}
        self._task: asyncio.Task[None] | None = None
        self._session: Any = None

    def stats(self) -> dict[str, int]:
        """Counters for /metrics (docs/metrics.md): polls, poll_errors, changes, names, skipped."""
        return dict(self.counters)

    def apply(self, obj: Any) -> bool:
        """A range answer arrived: serve its set if it differs. True when it changed."""
        new = parse_range(obj, self.settings.prefix, self.clock())
        self.counters["skipped"] = new.skipped
        if new.key() == self.current.key():
            return False
        self.current = new
        self.counters["changes"] += 1
        self.counters["names"] = len(new.names)
        self.on_change(new)
        return True

    def failed(self, error: str) -> None:
        self.counters["poll_errors"] += 1
        if not self.failing:
            self.failing = True
            log("acme_registry_unavailable", level="warning", error=error,
                kept=f"{len(self.current.names)} TXT names as last seen")

    def recovered(self) -> None:
        if self.failing:
            self.failing = False
            log("acme_registry_back", names=len(self.current.names))

    async def poll_once(self) -> None:
        """One range request, to the member that answered last, then the others."""
        import aiohttp
        s = self.settings
        n = len(s.endpoints)
        body = range_body(s.prefix)
        last = ""
        self.counters["polls"] += 1
        for i in range(n):
            index = (self.member + i) % n
            url = s.endpoints[index].rstrip("/") + "/v3/kv/range"
            try:
                async with self._session.post(url, json=body, timeout=aiohttp.ClientTimeout(
                        total=s.request_timeout)) as resp:
                    data = await resp.content.read(MAX_ANSWER_BYTES + 1)
                    if len(data) > MAX_ANSWER_BYTES:
                        raise AcmeError(f"answer larger than {MAX_ANSWER_BYTES} bytes")
                    if resp.status != 200:
                        raise AcmeError(f"HTTP {resp.status}: {data[:200]!r}")
                    obj = json.loads(data)
                self.member = index
                self.apply(obj)
                self.recovered()
                return
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
                last = f"{s.endpoints[index]}: {type(exc).__name__}: {exc}"
        self.failed(last)

    async def run(self) -> None:
        import aiohttp
        loop = asyncio.get_running_loop()
        async with aiohttp.ClientSession() as session:
            self._session = session
            while True:
                started = loop.time()
                try:
                    await self.poll_once()
                except Exception as exc:  # noqa: BLE001 - a bug must not stop the polls
                    log("acme_poll_error", level="error", error=repr(exc))
                await asyncio.sleep(max(0.0, self.settings.poll_interval - (loop.time() - started)))

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(), name="acme-txt-poll")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
