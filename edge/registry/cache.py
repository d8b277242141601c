"""The local view of every binding, kept current from etcd's watch. Pure.

The edge routes every connection through `lookup`, so it must not wait on
the network: the view is a dict, fed a consistent snapshot (a range read at
revision R) and then every change after R, in order (a watch from R+1). When
etcd loses quorum the feed stops and the view stays as it was: routes that
worked keep working.

Owns: the view, its revision, and telling subscribers what changed. Must not
touch: I/O (etcd.py feeds it), the hub's sessions.
"""
from __future__ import annotations

import logging
from typing import Callable, Iterable

from edge.registry import keys
from edge.registry.errors import InvalidKey
from edge.registry.gateway import KeyValue, WatchEvent
from edge.registry.model import Binding, BindingEvent, decode_binding_value
from plumbing import kvlog

log = logging.getLogger("edge.registry")

Subscriber = Callable[[BindingEvent], None]
MAX_SUBSCRIBERS = 1024


class BindingCache:
    def __init__(self, prefix: str = keys.DEFAULT_PREFIX) -> None:
        self._prefix = keys.check_prefix(prefix)
        self._entries: dict[tuple[str, str], Binding] = {}
        self._subscribers: list[Subscriber] = []
        self.revision = 0  # every change up to here is in the view

    # -- reading ------------------------------------------------------------
    def lookup(self, kind: str, name: str | int) -> Binding | None:
        if isinstance(name, int):  # lookup("tcp", 20001): the port itself
            name = str(name)
        return self._entries.get((kind, name))

    def bindings(self) -> list[Binding]:
        return list(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call `callback(event)` on every change; returns the unsubscribe."""
        if len(self._subscribers) >= MAX_SUBSCRIBERS:
            raise RuntimeError(f"more than {MAX_SUBSCRIBERS} registry subscribers")
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    # -- feeding from etcd --------------------------------------------------
    def replace(self, kvs: Iterable[KeyValue], revision: int) -> list[BindingEvent]:
        """Install a snapshot read at `revision`; tell subscribers what differs
        from the view they knew (after a re-list, e.g. on watch compaction)."""
        fresh: dict[tuple[str, str], Binding] = {}
        for kv in kvs:
            parsed = self._decode(kv)
            if parsed is not None:
                fresh[(parsed.kind, parsed.name)] = parsed
        changes: list[BindingEvent] = []
        for k, old in self._entries.items():
            if k not in fresh:
                changes.append(BindingEvent("delete", k[0], k[1], old, revision))
        for k, new in fresh.items():
            if self._entries.get(k) != new:
                changes.append(BindingEvent("put", k[0], k[1], new, new.revision))
        self._entries = fresh
        self.revision = revision
        self._emit(changes)
        return changes

    def apply(self, events: Iterable[WatchEvent]) -> list[BindingEvent]:
        changes = []
        for ev in events:
            self.revision = max(self.revision, ev.kv.mod_revision)
            parsed_key = keys.parse_bind_key(self._prefix, ev.kv.key.decode("utf-8", "replace"))
            if parsed_key is None:
                continue
            if ev.type == "put":
                b = self._decode(ev.kv)
                if b is not None:
                    change = self.put(b)
                else:  # an unreadable value is no route at all
                    change = self.delete(*parsed_key, ev.kv.mod_revision)
            else:
                change = self.delete(*parsed_key, ev.kv.mod_revision)
            if change is not None:
                changes.append(change)
        self._emit(changes)
        return changes

    # -- the two changes (MemoryRegistry calls these directly) --------------
    def put(self, b: Binding) -> BindingEvent | None:
        old = self._entries.get((b.kind, b.name))
        # A resumed watch may deliver again what the view already has.
        if old is not None and old.revision >= b.revision:
            return None
        self._entries[(b.kind, b.name)] = b
        return BindingEvent("put", b.kind, b.name, b, b.revision)

    def delete(self, kind: str, name: str, revision: int) -> BindingEvent | None:
        old = self._entries.get((kind, name))
        if old is None or old.revision >= revision:
            return None
        del self._entries[(kind, name)]
        return BindingEvent("delete", kind, name, old, revision)

    def emit(self, change: BindingEvent | None) -> None:
        if change is not None:
            self._emit([change])

    def _emit(self, changes: list[BindingEvent]) -> None:
        for change in changes:
            for cb in list(self._subscribers):
                try:
                    cb(change)
                except Exception:  # one bad subscriber must not stop the feed
                    log.exception(kvlog.kv("subscriber_failed", kind=change.kind, name=change.name))

    def _decode(self, kv: KeyValue) -> Binding | None:
        key = kv.key.decode("utf-8", "replace")
        parsed = keys.parse_bind_key(self._prefix, key)
        if parsed is None:
            return None
        try:
            return decode_binding_value(parsed[0], parsed[1], kv.value, kv.mod_revision, kv.lease)
        except InvalidKey as exc:
            log.warning(kvlog.kv("bad_binding_value", key=key, error=str(exc)))
            return None
