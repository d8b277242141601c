"""Giving freed heap memory back to the OS after connection churn.

Why (`make bench`, docs/bench.md: edge RSS 55 MiB -> 200+ MiB after the HTTPS runs): every
TLS connection makes the C side allocate and free per-connection buffers
(uvloop's SSL protocol mallocs a 256 KiB read buffer, OpenSSL its record
buffers and handshake state). Measured on loopback with many short HTTPS
connections: the Python objects and allocated blocks return to baseline
after every round (no leak of live objects), but glibc keeps the freed
chunks in holes of its heap, so RSS grows with each round of churn
(+35 MiB per ~5,500 connections); `malloc_trim(0)` gave it back at once
(110 -> 62 MiB). glibc only trims the top of the heap by itself, never
holes in the middle, hence this explicit trim.

`HeapTrimmer.closed()` is called once per ended connection; every `every`
closed connections it calls malloc_trim(0) (glibc; a no-op elsewhere). Its
cost (a walk of the heap's free chunks) is paid once per `every` closed
connections, never per request; the new-connection-per-request bench
variant showed no change beyond run-to-run noise.
Must not touch: anything but the allocator.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
from typing import Callable

log = logging.getLogger("gslb.edge")


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc (musl, macOS): nothing to trim
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


class HeapTrimmer:
    def __init__(self, every: int = 512, trim: Callable[[int], int] | None | bool = True) -> None:
        self.every = max(1, every)
        self._trim = _load_malloc_trim() if trim is True else (trim or None)
        self._since = 0
        self.trims = 0  # for health and tests

    @property
    def available(self) -> bool:
        return self._trim is not None

    def closed(self, n: int = 1) -> None:
        self._since += n
        if self._since >= self.every:
            self.trim_now()

    def trim_now(self) -> None:
        self._since = 0
        if self._trim is None:
            return
        self._trim(0)
        self.trims += 1
