"""The DNS-01 challenge (RFC 8555 8.4), answered by our own name servers.

`Dns01Solver.present` writes base64url(SHA-256(key authorization)) into the
registry at `<prefix>acme/dns01/_acme-challenge.<name>` (docs/registry.md),
where every `gslb dns` with `[acme] enabled` reads it (dns/acme.py), then waits,
bounded, until every authoritative name server it was given answers the TXT
over UDP from this host: only then may the ACME client tell the CA to look.
`cleanup` takes the value away again. A wildcard (`*.app.lab.test`) and its
base name (`app.lab.test`) share one owner, so a key holds several values.

Writes of one owner are serialized in this process (a lock per name): the
manager orders the names of one certificate from one process (acme-core's
order lock), so no two processes write the same owner at once. A value left
behind (a crash between present and cleanup) stops being served at
`expires` (`value_lifetime` after the last present).
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
from typing import Any, Callable, Sequence

from edge.acme import dnsmsg
from plumbing import kvlog

log = logging.getLogger("edge.acme.dns01")

MAX_VALUES = 16   # as dns/acme.py serves


class Dns01Error(Exception):
    """The challenge could not be put in place (registry down, a name server never answered it)."""


def txt_value(key_authorization: str) -> str:
    """RFC 8555 8.4: base64url(SHA-256(key authorization)), no padding: 43 characters."""
    d = hashlib.sha256(key_authorization.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(d).rstrip(b"=").decode("ascii")


def challenge_name(identifier: str) -> str:
    """`_acme-challenge.<identifier>` without a wildcard's `*.` (RFC 8555 8.4), lower case, no dot."""
    name = dnsmsg.normalize(identifier)
    if name.startswith("*."):
        name = name[2:]
    dnsmsg.encode_name("_acme-challenge." + name)   # raises on a bad name
    return "_acme-challenge." + name


def registry_key(identifier: str) -> str:
    """The key relative to `<prefix>acme/` (Registry.kv_put)."""
    return "dns01/" + challenge_name(identifier)


class Dns01Solver:
    """DNS-01 through the registry and our name servers (the interface the ACME manager calls).

    `nameservers`: every authoritative server of the zone, as "addr", "addr:port" or
    "[v6]:port" (each must answer the TXT before `present` returns).
    """

    challenge_type = "dns-01"

    def __init__(self, registry: Any, nameservers: Sequence[str], *, timeout: float = 60.0,
                 interval: float = 0.25, query_timeout: float = 1.0, confirmations: int = 3,
                 value_lifetime: float = 3600.0, clock: Callable[[], float] = time.time) -> None:
        if not nameservers:
            raise ValueError("dns-01 needs the zone's name servers (at least one address)")
        self.registry = registry
        self.servers = [dnsmsg.parse_server(s) for s in nameservers]
        self.timeout = timeout
        self.interval = interval
        self.query_timeout = query_timeout
        # Answers in a row, each from a fresh source port, before a server counts as ready:
        # a server with several worker processes (SO_REUSEPORT) spreads them over its workers.
        self.confirmations = confirmations
        self.value_lifetime = value_lifetime
        self.clock = clock
        self._locks: dict[str, asyncio.Lock] = {}
        self._presented: dict[tuple[str, str], str] = {}   # (challenge name, token) -> value
        self.counters = {"presented": 0, "cleaned": 0, "timeouts": 0, "queries": 0}

    def stats(self) -> dict[str, int]:
        return dict(self.counters)

    def _lock(self, name: str) -> asyncio.Lock:
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    async def _read(self, key: str) -> list[str]:
        raw = await self.registry.kv_get(key)
        if raw is None:
            return []
        try:
            values = json.loads(raw).get("values", [])
        except (ValueError, AttributeError):
            return []   # a broken value is replaced
        return [v for v in values if isinstance(v, str)] if isinstance(values, list) else []

    async def _write(self, key: str, values: list[str]) -> None:
        if values:
            body = {"values": values[-MAX_VALUES:], "expires": int(self.clock() + self.value_lifetime)}
            await self.registry.kv_put(key, json.dumps(body, separators=(",", ":")).encode())
        else:
            await self.registry.kv_delete(key)

    async def present(self, identifier: str, token: str, key_authorization: str) -> None:
        name = challenge_name(identifier)
        key = "dns01/" + name
        value = txt_value(key_authorization)
        async with self._lock(name):
            values = await self._read(key)
            if value not in values:
                values.append(value)
            await self._write(key, values)
        self._presented[(name, token)] = value
        self.counters["presented"] += 1
        started = time.monotonic()
        await self.wait_visible(name, value)
        log.info(kvlog.kv("dns01_presented", name=name, servers=len(self.servers),
                          seconds=f"{time.monotonic() - started:.2f}"))

    async def cleanup(self, identifier: str, token: str) -> None:
        name = challenge_name(identifier)
        value = self._presented.pop((name, token), None)
        if value is None:
            return   # not presented here (or already cleaned): its expiry takes it away
        key = "dns01/" + name
        async with self._lock(name):
            values = [v for v in await self._read(key) if v != value]
            await self._write(key, values)
        self.counters["cleaned"] += 1

    async def wait_visible(self, name: str, value: str) -> None:
        """Until every server answers `value` at `name` `confirmations` times in a row, or Dns01Error."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        streak = {s: 0 for s in self.servers}
        last: dict[tuple[str, int], str] = {s: "no answer yet" for s in self.servers}
        while True:   # bounded by the deadline
            for server in self.servers:
                while streak[server] < self.confirmations:
                    self.counters["queries"] += 1
                    try:
                        r = await dnsmsg.query(server, name, dnsmsg.TXT,
                                               min(self.query_timeout, max(0.05, deadline - loop.time())))
                        ok = r.rcode == dnsmsg.NOERROR and value in r.values(dnsmsg.TXT, name)
                        last[server] = "answered" if ok else (
                            f"{dnsmsg.RCODE_NAMES.get(r.rcode, r.rcode)} with {len(r.answers)} records")
                    except (asyncio.TimeoutError, OSError, dnsmsg.DnsMessageError) as exc:
                        ok = False
                        last[server] = f"{type(exc).__name__} {exc}".strip()
                    if not ok:
                        streak[server] = 0
                        break
                    streak[server] += 1
            if all(n >= self.confirmations for n in streak.values()):
                return
            if loop.time() >= deadline:
                self.counters["timeouts"] += 1
                missing = ", ".join(f"{h}:{p} ({last[(h, p)]})" for (h, p), n in streak.items()
                                    if n < self.confirmations)
                raise Dns01Error(f"TXT {name} not answered by every name server in {self.timeout:g}s: "
                                 f"{missing}")
            await asyncio.sleep(min(self.interval, max(0.0, deadline - loop.time())))
