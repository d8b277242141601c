"""The deployment's certificate store, in the registry, and its order lock.

Owns the ACME keys under `<prefix>acme/` (docs/registry.md, docs/acme.md):

    certs/<name>        JSON: names, chain (PEM), the private key sealed with
                        the deployment key (crypto.py), validity, serial, who
                        ordered it and when. One per certificate, whichever PoP
                        ordered it; every PoP serves the same one.
    locks/<name>        the order lock: created under a short registry lease
                        held by the PoP that orders; it dies with that PoP.
    http01/<token>      HTTP-01 key authorization (RFC 8555 8.3), any PoP's :80 answers it
    tlsalpn01/<name>    TLS-ALPN-01 key authorization (RFC 8737), any PoP's :443 answers it
    account             the ACME account key (PEM, sealed): one account per deployment

and the disk cache of what this PoP serves (cache_dir/<name>.pem 0644,
<name>.key 0600), from which `ssl` loads it. Must not touch: the ACME
protocol (client.py), when to renew (schedule.py).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from edge.acme.crypto import CryptoError, Sealer
from edge.registry import InvalidKey, Lease, Registry, RegistryError
from plumbing.kvlog import kv

log = logging.getLogger("gslb.edge.acme")

LOCK_TTL = 30.0   # s: the order lock's lease; kept alive while the order runs


class StoreError(Exception):
    """A stored value does not parse or does not open."""


@dataclass(frozen=True)
class StoredCert:
    names: tuple[str, ...]
    chain_pem: bytes          # leaf first, then the intermediates the CA sent
    key_pem: bytes = field(repr=False)   # plaintext: only in memory and the 0600 cache file; never in a repr
    not_before: float         # epoch seconds
    not_after: float
    serial: str               # hex, as openssl prints it
    issued_at: float
    ordered_by: str           # the PoP whose order got it

    @classmethod
    def from_chain(cls, names: tuple[str, ...], chain_pem: bytes, key_pem: bytes, issued_at: float,
                   ordered_by: str) -> "StoredCert":
        leaf = x509.load_pem_x509_certificate(chain_pem)
        return cls(names=names, chain_pem=chain_pem, key_pem=key_pem,
                   not_before=leaf.not_valid_before_utc.timestamp(), not_after=leaf.not_valid_after_utc.timestamp(),
                   serial=f"{leaf.serial_number:X}", issued_at=issued_at, ordered_by=ordered_by)


def cert_key(name: str) -> str:
    return f"certs/{name}"


def _lock_key(name: str) -> str:
    return f"locks/{name}"


def _safe(name: str) -> str:
    return name.replace("*", "_wildcard")


class OrderLock:
    """This PoP orders `name`; release() (or the PoP dying) frees it for others."""

    def __init__(self, name: str, lease: Lease) -> None:
        self.name = name
        self.lease = lease

    @property
    def alive(self) -> bool:
        return self.lease.alive

    async def release(self) -> None:
        try:
            await self.lease.close()
        except RegistryError as exc:
            log.warning(kv("acme_lock_release_failed", name=self.name, error=exc))


class AcmeStore:
    def __init__(self, registry: Registry, sealer: Sealer, pop: str, cache_dir: str | Path,
                 lock_ttl: float = LOCK_TTL) -> None:
        self.registry = registry
        self.sealer = sealer
        self.pop = pop
        self.cache_dir = Path(cache_dir)
        self.lock_ttl = lock_ttl
        self.cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    # -- certificates ---------------------------------------------------------------
    async def get(self, name: str) -> StoredCert | None:
        raw = await self.registry.kv_get(cert_key(name))
        return None if raw is None else self._decode(name, raw)

    def _decode(self, name: str, raw: bytes) -> StoredCert:
        try:
            d = json.loads(raw)
            key_pem = self.sealer.open(d["key"].encode(), cert_key(name))
            return StoredCert(names=tuple(d["names"]), chain_pem=d["chain"].encode(), key_pem=key_pem,
                              not_before=float(d["not_before"]), not_after=float(d["not_after"]),
                              serial=str(d["serial"]), issued_at=float(d["issued_at"]),
                              ordered_by=str(d["ordered_by"]))
        except CryptoError as exc:
            raise StoreError(str(exc)) from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StoreError(f"{cert_key(name)}: stored value does not parse: {type(exc).__name__}: {exc}") from None

    async def put(self, name: str, cert: StoredCert) -> None:
        value = json.dumps({
            "names": list(cert.names), "chain": cert.chain_pem.decode(),
            "key": self.sealer.seal(cert.key_pem, cert_key(name)).decode(),
            "not_before": cert.not_before, "not_after": cert.not_after, "serial": cert.serial,
            "issued_at": cert.issued_at, "ordered_by": cert.ordered_by,
        }).encode()
        await self.registry.kv_put(cert_key(name), value)

    # -- the order lock ----------------------------------------------------------------
    async def lock(self, name: str) -> OrderLock | None:
        """The order lock for `name`, or None when another PoP holds it."""
        session = "acme-" + hashlib.sha256(f"{name}:{os.getpid()}:{id(self)}".encode()).hexdigest()[:16]
        lease = await self.registry.open_session(self.pop, session, ttl=self.lock_ttl)
        try:
            held = await self.registry.kv_create(
                _lock_key(name), json.dumps({"pop": self.pop, "at": _dt.datetime.now(_dt.timezone.utc)
                                             .isoformat(timespec="seconds")}).encode(), lease)
        except BaseException:
            await lease.close()
            raise
        if held is not None:
            await lease.close()
            return None
        return OrderLock(name, lease)

    async def lock_holder(self, name: str) -> str | None:
        raw = await self.registry.kv_get(_lock_key(name))
        if raw is None:
            return None
        try:
            return str(json.loads(raw)["pop"])
        except (ValueError, KeyError, TypeError):
            return "?"

    # -- challenges (solvers.py) -------------------------------------------------------
    async def put_challenge(self, kind: str, key: str, key_authorization: str) -> None:
        await self.registry.kv_put(f"{kind}/{key}", key_authorization.encode())

    async def get_challenge(self, kind: str, key: str) -> str | None:
        try:
            raw = await self.registry.kv_get(f"{kind}/{key}")
        except InvalidKey:
            return None   # a token or name that cannot be a key was never stored
        return raw.decode("ascii", "replace") if raw is not None else None

    async def delete_challenge(self, kind: str, key: str) -> None:
        await self.registry.kv_delete(f"{kind}/{key}")

    # -- the account key ---------------------------------------------------------------
    async def account_key(self, make: Any) -> bytes:
        """The deployment's ACME account key (PEM): the first PoP to ask makes it
        (`make()` -> PEM) and every later one reads the same."""
        raw = await self.registry.kv_get("account")
        if raw is None:
            pem = make()
            sealed = self.sealer.seal(pem, "account")
            raw = await self.registry.kv_create("account", sealed)
            if raw is None:
                return pem
        try:
            return self.sealer.open(raw, "account")
        except CryptoError as exc:
            raise StoreError(str(exc)) from None

    # -- disk cache ----------------------------------------------------------------------
    def write_cache(self, name: str, cert: StoredCert) -> tuple[Path, Path]:
        """Files `ssl` loads the certificate from: chain 0644, key 0600 (created so)."""
        base = f"{_safe(name)}.{cert.serial}"
        cert_path, key_path = self.cache_dir / f"{base}.pem", self.cache_dir / f"{base}.key"
        _write(key_path, cert.key_pem, 0o600)
        _write(cert_path, cert.chain_pem, 0o644)
        return cert_path, key_path

    def write_challenge_files(self, name: str, cert_pem: bytes, key_pem: bytes) -> tuple[Path, Path]:
        """Short-lived files for `ssl` to load a TLS-ALPN-01 answer from (removed right after)."""
        base = f"tlsalpn01-{_safe(name)}-{os.getpid()}-{os.urandom(6).hex()}"
        cert_path, key_path = self.cache_dir / f"{base}.pem", self.cache_dir / f"{base}.key"
        _write(key_path, key_pem, 0o600)
        _write(cert_path, cert_pem, 0o600)
        return cert_path, key_path

    def drop_cache(self, name: str, keep_serial: str) -> None:
        """Remove cached files of `name` other than serial `keep_serial` (after a swap)."""
        head = f"{_safe(name)}."
        for p in self.cache_dir.iterdir():
            if p.name.startswith(head) and p.suffix in (".pem", ".key") and \
                    p.name[len(head):-4] != keep_serial and "." not in p.name[len(head):-4]:
                try:
                    p.unlink()
                except OSError:
                    pass


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    os.replace(tmp, path)


