"""SipHash-2-4 (Aumasson and Bernstein, "SipHash: a fast short-input PRF", 2012).

Owns one function, `siphash24(key, data) -> int`: the 64-bit SipHash-2-4 of
`data` under a 16-byte `key`, as the reference implementation computes it (key
and message words little-endian; the hash written little-endian when it goes
on the wire, as RFC 9018 4.4 does for DNS server cookies).

The C implementation from the `siphashc` package is used when it is
installed (a dependency of gslb-edge); `siphash24_py` is the same function in
pure Python, kept as the fallback and as the second implementation the
reference test vectors are checked against (tests/test_dns_cookies.py).
"""
from __future__ import annotations

import struct

_MASK = 0xFFFFFFFFFFFFFFFF
_WORDS = struct.Struct("<QQ")


def siphash24_py(key: bytes, data: bytes) -> int:
    """SipHash-2-4 in pure Python (2 compression rounds, 4 finalization rounds)."""
    if len(key) != 16:
        raise ValueError("a SipHash key is 16 bytes")
    k0, k1 = _WORDS.unpack(key)
    v0 = k0 ^ 0x736F6D6570736575
    v1 = k1 ^ 0x646F72616E646F6D
    v2 = k0 ^ 0x6C7967656E657261
    v3 = k1 ^ 0x7465646279746573

    def rounds(n: int) -> None:
        nonlocal v0, v1, v2, v3
        for _ in range(n):
            v0 = (v0 + v1) & _MASK
            v1 = ((v1 << 13) | (v1 >> 51)) & _MASK
            v1 ^= v0
            v0 = ((v0 << 32) | (v0 >> 32)) & _MASK
            v2 = (v2 + v3) & _MASK
            v3 = ((v3 << 16) | (v3 >> 48)) & _MASK
            v3 ^= v2
            v0 = (v0 + v3) & _MASK
            v3 = ((v3 << 21) | (v3 >> 43)) & _MASK
            v3 ^= v0
            v2 = (v2 + v1) & _MASK
            v1 = ((v1 << 17) | (v1 >> 47)) & _MASK
            v1 ^= v2
            v2 = ((v2 << 32) | (v2 >> 32)) & _MASK

    full = len(data) // 8 * 8
    for (m,) in struct.iter_unpack("<Q", data[:full]):
        v3 ^= m
        rounds(2)
        v0 ^= m
    # The last block: the remaining bytes, and the message length mod 256 in the top byte.
    last = int.from_bytes(data[full:], "little") | ((len(data) & 0xFF) << 56)
    v3 ^= last
    rounds(2)
    v0 ^= last
    v2 ^= 0xFF
    rounds(4)
    return v0 ^ v1 ^ v2 ^ v3


try:
    from siphashc import siphash as _siphash_c
except ImportError:  # pragma: no cover - siphashc is a dependency; the pure version still works
    _siphash_c = None


def siphash24(key: bytes, data: bytes) -> int:
    """SipHash-2-4 of `data` under the 16-byte `key` (C when available)."""
    if _siphash_c is not None:
        return _siphash_c(key, data)
    return siphash24_py(key, data)


IMPLEMENTATION = "siphashc" if _siphash_c is not None else "python"
