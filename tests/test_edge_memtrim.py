"""edge.memtrim: the heap is trimmed once per `every` closed connections (edge/memtrim.py says why)."""
from __future__ import annotations

from edge.memtrim import HeapTrimmer


def test_trims_once_per_every_closed_connections():
    calls = []
    t = HeapTrimmer(every=100, trim=lambda pad: calls.append(pad) or 1)
    for _ in range(99):
        t.closed()
    assert calls == []
    t.closed()
    assert calls == [0] and t.trims == 1
    for _ in range(250):
        t.closed()
    assert len(calls) == 3 and t.trims == 3


def test_without_malloc_trim_it_only_counts():
    t = HeapTrimmer(every=1, trim=None)
    assert not t.available
    t.closed()
    assert t.trims == 0


def test_real_malloc_trim_is_callable_here():
    t = HeapTrimmer(every=1)
    t.closed()  # glibc: calls malloc_trim(0); elsewhere a no-op
    assert t.trims == (1 if t.available else 0)
