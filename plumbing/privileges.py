"""Giving up root after binding: `--user USER[:GROUP]` of `gslb dns` and `gslb edge`.

Owns resolving a user/group spec and the drop itself. The daemons open what
needs root first (ports below 1024, the control socket, files only root may
read), then call `drop_privileges`, which, in this order (SEI CERT C POS36-C:
after setuid a process may no longer change its groups):

    setgroups([])   no supplementary group of root's stays (a process that keeps
                    group 0 after "dropping" still reads what group root may)
    setgid(gid)     real, effective and saved group ids (we are still root)
    setuid(uid)     real, effective and saved user ids: no way back

and then checks there is no way back (POS37-C): `setuid(0)` must fail, and the
real, effective and saved ids must all be the target's. Anything else is an error,
never a warning: a daemon that believes it dropped root and did not is worse
than one that refuses to start.

Under systemd the recommended form is `User=` with
`AmbientCapabilities=CAP_NET_BIND_SERVICE` (deploy/README.md): the process
never is root and this module is not used. `--user` is for hosts without
systemd, and for the lab.
"""
from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass

from plumbing.kvlog import log


class PrivilegeError(Exception):
    """A bad --user, or a drop that did not happen as it must."""


@dataclass(frozen=True)
class Identity:
    user: str
    uid: int
    group: str
    gid: int

    def __str__(self) -> str:
        return f"{self.user}:{self.group}"


def _lookup_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except (KeyError, OverflowError):
        raise PrivilegeError(f"--user {name!r}: no such user") from None


def _lookup_group(name: str) -> grp.struct_group:
    try:
        return grp.getgrgid(int(name)) if name.isdigit() else grp.getgrnam(name)
    except (KeyError, OverflowError):
        raise PrivilegeError(f"no such group {name!r}") from None


def resolve_user(spec: str) -> Identity:
    """'USER' (its primary group) or 'USER:GROUP'; names or numeric ids. Root is refused."""
    if not isinstance(spec, str) or len(spec) > 256:
        raise PrivilegeError("--user: expected USER or USER:GROUP")
    user_part, sep, group_part = spec.partition(":")
    if not user_part or (sep and not group_part) or ":" in group_part:
        raise PrivilegeError(f"--user {spec!r}: expected USER or USER:GROUP")
    pw = _lookup_user(user_part)
    try:
        gr = _lookup_group(group_part) if sep else grp.getgrgid(pw.pw_gid)
    except PrivilegeError as exc:
        raise PrivilegeError(f"--user {spec!r}: {exc}") from None
    except KeyError:  # a primary gid without a group entry: use the number
        return _checked(Identity(pw.pw_name, pw.pw_uid, str(pw.pw_gid), pw.pw_gid), spec)
    return _checked(Identity(pw.pw_name, pw.pw_uid, gr.gr_name, gr.gr_gid), spec)


def _checked(ident: Identity, spec: str) -> Identity:
    if ident.uid == 0 or ident.gid == 0:
        raise PrivilegeError(f"--user {spec!r}: that is root (uid {ident.uid}, gid {ident.gid}); "
                             "name an unprivileged user")
    return ident


# Modules the standard library and the daemons' libraries import lazily, inside a function, the
# first time it runs (codecs by name, asyncio's thread pool, aiohttp's helpers): a process that
# has dropped root may not be able to read the interpreter's directory (a Python installed
# under a user's home, mode 0700) and would fail there, long after start.
STDLIB_LAZY = (
    "encodings.idna", "encodings.punycode", "encodings.ascii", "encodings.latin_1", "encodings.utf_8",
    "encodings.utf_16", "encodings.raw_unicode_escape", "encodings.unicode_escape", "stringprep",
    "unicodedata", "gc", "resource", "ctypes", "ctypes.util", "concurrent.futures.thread",
    "concurrent.futures.process", "_strptime", "zlib", "gzip", "bz2", "lzma", "email.utils",
    "email.parser", "email.feedparser", "email.message", "http.client", "http.cookies", "mimetypes",
    "urllib.parse", "urllib.request", "netrc", "ssl", "hmac", "secrets", "base64", "binascii", "uuid",
    "json", "ipaddress", "shlex", "traceback", "linecache", "tokenize", "signal", "selectors",
    "asyncio.unix_events", "asyncio.sslproto", "asyncio.staggered", "asyncio.trsock", "tomllib",
)


# Test helpers and other programs' plug-ins inside libraries (aiohttp's pytest plugin, its gunicorn
# worker): never used by a daemon, and importing them would pull in pytest or fail.
_NOT_PRELOADED = frozenset({"pytest_plugin", "test_utils", "worker", "conftest", "__main__"})


def preload(packages: tuple[str, ...], extra: tuple[str, ...] = STDLIB_LAZY, exclude: tuple[str, ...] = ()) -> int:
    """Import now every module of `packages` (walking their sub-packages) and of `extra`.

    Called as root just before the drop: afterwards no code is loaded from disk, so the
    service user needs no access to the installation (nor can a file it can write be
    imported later). A module that cannot be imported (an optional dependency missing) is
    skipped: it would fail the same way later. Modules under a name in `exclude` (another
    program's code in the same package, e.g. the agent's beside the edge's) are not imported,
    so nothing they register at import (metrics, say) shows up in this daemon. Returns how
    many modules were imported."""
    import importlib
    import pkgutil

    count = 0
    for name in extra:
        try:
            importlib.import_module(name)
            count += 1
        except ImportError:
            pass
    for top in packages:
        try:
            pkg = importlib.import_module(top)
        except ImportError:
            continue
        count += 1
        for info in pkgutil.walk_packages(getattr(pkg, "__path__", []), prefix=top + ".", onerror=lambda _: None):
            if info.name.rsplit(".", 1)[-1] in _NOT_PRELOADED or any(
                    info.name == x or info.name.startswith(x + ".") for x in exclude):
                continue
            try:
                importlib.import_module(info.name)
                count += 1
            except Exception:  # noqa: BLE001 - ImportError and an optional library's own errors
                pass
    return count


def drop_privileges(ident: Identity, *, component: str) -> None:
    """Become `ident` for good (see the module docstring); logs event=privileges_dropped.

    Not root: allowed only when already running as exactly `ident` (nothing to do, said so);
    otherwise PrivilegeError, since only root can change users."""
    if os.geteuid() != 0:
        if os.getresuid() == (ident.uid,) * 3 and os.getresgid() == (ident.gid,) * 3:
            log("privileges_kept", component=component, user=ident.user, group=ident.group,
                reason="already running as that user")
            return
        raise PrivilegeError(f"--user {ident}: only root can switch users (running as uid {os.geteuid()}); "
                             "start as root, or leave --user out")
    os.setgroups([])
    os.setgid(ident.gid)
    os.setuid(ident.uid)
    verify_dropped(ident)
    log("privileges_dropped", component=component, user=ident.user, group=ident.group,
        uid=ident.uid, gid=ident.gid)


def verify_dropped(ident: Identity) -> None:
    """PrivilegeError unless every id is the target's, no group is left and root is out of reach."""
    if os.getresuid() != (ident.uid,) * 3 or os.getresgid() != (ident.gid,) * 3:
        raise PrivilegeError(f"--user {ident}: ids after the drop are uid {os.getresuid()} gid {os.getresgid()}")
    if set(os.getgroups()) - {ident.gid}:
        raise PrivilegeError(f"--user {ident}: supplementary groups left: {os.getgroups()}")
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise PrivilegeError(f"--user {ident}: setuid(0) succeeded after the drop; refusing to run")
