"""Key layout of the registry in etcd, and the byte arithmetic etcd needs.

Owns: the prefix (default `/gslb/`), `<prefix>bind/<kind>/<name>`,
`<prefix>ports/<port>` and the opaque keys `<prefix>acme/<key>` (the ACME
certificate store, edge/acme/store.py), validation of kinds/names/ports, base64 for the JSON
gateway, and the `range_end` of a prefix. Pure: no I/O.
"""
from __future__ import annotations

import base64
import re

from edge.registry.errors import InvalidKey

KINDS = ("http", "tls", "tcp")
DEFAULT_PREFIX = "/gslb/"
MAX_NAME_LENGTH = 253  # a DNS name's presentation limit (RFC 1035 2.3.4 with dots)
MAX_PREFIX_LENGTH = 128

# Hostnames (http, tls) plus `_` and a leading `*.` for wildcards. Never `/`:
# the name is a path segment of the key, and a `/` would let one kind's name
# reach into another's key space.
_NAME = re.compile(r"^(\*\.)?[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?$")
_PREFIX = re.compile(r"^/([A-Za-z0-9_.-]+/)*$")


def check_prefix(prefix: str) -> str:
    if len(prefix) > MAX_PREFIX_LENGTH or not _PREFIX.match(prefix):
        raise InvalidKey(f"registry prefix must look like /a/b/ (got {prefix!r})")
    return prefix


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise InvalidKey(f"kind must be one of {', '.join(KINDS)} (got {kind!r})")
    return kind


def check_port(port: int) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InvalidKey(f"port must be an int in 1-65535 (got {port!r})")
    return port


def check_name(kind: str, name: str) -> str:
    check_kind(kind)
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_LENGTH:
        raise InvalidKey(f"name must be 1-{MAX_NAME_LENGTH} characters (got {name!r:.80})")
    if kind == "tcp":
        # A TCP endpoint is its port (the same on every PoP): the name is the
        # port in canonical decimal, so "020001" and "20001" cannot both exist.
        if not name.isascii() or not name.isdigit() or str(int(name)) != name:
            raise InvalidKey(f"a tcp endpoint's name is its port in decimal (got {name!r:.80})")
        check_port(int(name))
    elif not _NAME.match(name):
        raise InvalidKey(f"name must be a hostname (letters, digits, - _ .; got {name!r:.80})")
    return name


# Opaque keys (`<prefix>acme/<key>`): 1-4 segments joined by `/`, each of
# letters, digits and `_ . * -` (a wildcard name's `*`), never `.` or `..`.
MAX_OPAQUE_KEY = 512
MAX_OPAQUE_SEGMENTS = 4
MAX_OPAQUE_VALUE = 256 * 1024   # bytes: a certificate chain and an encrypted key fit many times
MAX_OPAQUE_LIST = 10000         # keys one kv_list returns at most
_SEGMENT = re.compile(r"^[A-Za-z0-9_.*-]{1,253}$")


def check_opaque_key(key: str) -> str:
    if not isinstance(key, str) or not key or len(key) > MAX_OPAQUE_KEY:
        raise InvalidKey(f"opaque key must be 1-{MAX_OPAQUE_KEY} characters (got {key!r:.80})")
    parts = key.split("/")
    if len(parts) > MAX_OPAQUE_SEGMENTS or any(not _SEGMENT.match(p) or p in (".", "..") for p in parts):
        raise InvalidKey(f"opaque key must be 1-{MAX_OPAQUE_SEGMENTS} segments of letters, digits, _ . * - "
                         f"joined by / (got {key!r:.80})")
    return key


def check_opaque_value(value: bytes) -> bytes:
    if not isinstance(value, bytes) or len(value) > MAX_OPAQUE_VALUE:
        raise InvalidKey(f"opaque value must be bytes, at most {MAX_OPAQUE_VALUE} (got "
                         f"{len(value) if isinstance(value, bytes) else type(value).__name__})")
    return value


def check_opaque_list_prefix(rel: str) -> str:
    """A kv_list prefix: "" (every opaque key) or a key, maybe ending in '/'."""
    if rel:
        check_opaque_key(rel[:-1] if rel.endswith("/") else rel)
    return rel


def opaque_prefix(prefix: str) -> str:
    return prefix + "acme/"


def opaque_key(prefix: str, key: str) -> str:
    return opaque_prefix(prefix) + check_opaque_key(key)


def bind_prefix(prefix: str) -> str:
    return prefix + "bind/"


def ports_prefix(prefix: str) -> str:
    return prefix + "ports/"


def bind_key(prefix: str, kind: str, name: str) -> str:
    return f"{bind_prefix(prefix)}{check_kind(kind)}/{check_name(kind, name)}"


def port_key(prefix: str, port: int) -> str:
    return f"{ports_prefix(prefix)}{check_port(port)}"


def parse_bind_key(prefix: str, key: str) -> tuple[str, str] | None:
    """(kind, name) of a binding key, or None for a key that is not one
    (someone else's key under our prefix changes nothing)."""
    head = bind_prefix(prefix)
    if not key.startswith(head):
        return None
    kind, sep, name = key[len(head):].partition("/")
    if not sep:
        return None
    try:
        check_name(kind, name)
    except InvalidKey:
        return None
    return kind, name


def parse_port_key(prefix: str, key: str) -> int | None:
    head = ports_prefix(prefix)
    if not key.startswith(head):
        return None
    rest = key[len(head):]
    if not rest.isascii() or not rest.isdigit() or str(int(rest)) != rest or not 1 <= int(rest) <= 65535:
        return None
    return int(rest)


def range_end(prefix: bytes) -> bytes:
    """etcd's range_end for "every key starting with prefix": the prefix with
    its last byte incremented, dropping trailing 0xff bytes first (they cannot
    be incremented). An all-0xff or empty prefix means "to the end of the key
    space", which etcd spells as the single byte 0x00 (etcd clientv3
    GetPrefixRangeEnd)."""
    end = bytearray(prefix)
    while end and end[-1] == 0xFF:
        end.pop()
    if not end:
        return b"\x00"
    end[-1] += 1
    return bytes(end)


def b64(data: bytes | str) -> str:
    """The JSON gateway carries proto `bytes` fields as standard base64."""
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)

