"""The ACME order flow (RFC 8555 7) around certbot's `acme` library.

    account (one per deployment: its key is in the store) -> new order for
    the names -> for each pending authorization choose a challenge
    (solvers.choose), present it through its solver, answer it -> poll the
    authorizations with backoff until valid or invalid -> finalize with a
    CSR (a fresh P-256 key per certificate) -> download the chain.

The `acme` library is synchronous (requests): every call runs in a thread
(the loop's default executor) under a timeout, and a fresh `ClientV2` is
made per order, so concurrent orders never share a requests session or
nonce pool. Solvers are async and run on the loop. Whatever was presented
is cleaned up, whatever happens.

Errors are `AcmeError` with a message a person can act on ("directory
https://...: connection refused", "demo.app.lab.test: http-01 validation
failed: ..."); `rate_limited` marks the CA's urn:ietf:params:acme:error:
rateLimited (RFC 8555 6.7), after which the manager waits the longest backoff.
Must not touch: where certificates are kept (store.py), when to order (manager.py).
"""
from __future__ import annotations

import asyncio
import datetime as _dt
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import josepy as jose
import requests
from acme import challenges, client as acme_client, crypto_util, errors as acme_errors, messages
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from edge.acme.solvers import ChallengeError, Solver, choose
from plumbing.kvlog import kv

log = logging.getLogger("gslb.edge.acme")

USER_AGENT = "gslb-edge-acme"
POLL_FIRST = 0.5    # s: first authorization poll after answering
POLL_MAX = 5.0      # s: cap of the poll backoff


# acme 5.x dropped its TLS-ALPN-01 classes; the wire form is the generic
# key-authorization challenge (RFC 8737 3: the response body is {}).
class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
    typ = "tls-alpn-01"


class TLSALPN01(challenges.KeyAuthorizationChallenge):
    typ = "tls-alpn-01"
    response_cls = TLSALPN01Response

    def validation(self, account_key: jose.JWK, **unused: Any) -> None:
        return None


if "tls-alpn-01" not in challenges.Challenge.TYPES:
    challenges.ChallengeResponse.register(TLSALPN01Response)
    challenges.Challenge.register(TLSALPN01)


class AcmeError(Exception):
    def __init__(self, message: str, *, rate_limited: bool = False) -> None:
        super().__init__(message)
        self.rate_limited = rate_limited


@dataclass(frozen=True)
class Issued:
    names: tuple[str, ...]
    chain_pem: bytes
    key_pem: bytes
    seconds: float


def new_account_key() -> bytes:
    """A P-256 account key (PEM, PKCS#8): ES256 JWS (RFC 7518 3.4)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _jwk(account_key_pem: bytes) -> tuple[jose.JWK, jose.JWASignature]:
    key = serialization.load_pem_private_key(account_key_pem, password=None)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return jose.JWKEC(key=key), jose.ES256
    if isinstance(key, rsa.RSAPrivateKey):
        return jose.JWKRSA(key=key), jose.RS256
    raise AcmeError("account key: expected an EC (P-256) or RSA private key")


def _problem(exc: BaseException) -> str:
    if isinstance(exc, messages.Error):
        return f"{exc.typ}: {exc.detail}" if exc.detail else str(exc.typ)
    if isinstance(exc, requests.exceptions.SSLError):
        return f"TLS: {exc}"
    if isinstance(exc, requests.exceptions.ConnectionError):
        # urllib3 wraps the OS error in a long repr; the errno line is what a person needs
        m = re.search(r"\[Errno -?\d+\] [^'\")]+", str(exc))
        return f"cannot connect: {m.group(0) if m else exc}"
    if isinstance(exc, requests.exceptions.Timeout):
        return "no answer in time"
    return f"{type(exc).__name__}: {exc}"


class AcmeClient:
    """One ACME account at one directory; `order(names)` gets a certificate."""

    def __init__(self, directory_url: str, account_key_pem: bytes, *, email: str | None = None,
                 ca_bundle: str | None = None, net_timeout: float = 30.0, order_timeout: float = 120.0) -> None:
        self.directory_url = directory_url
        self.email = email
        self.ca_bundle = ca_bundle
        self.net_timeout = net_timeout
        self.order_timeout = order_timeout
        self._key, self._alg = _jwk(account_key_pem)
        self._directory: messages.Directory | None = None
        self._account: messages.RegistrationResource | None = None
        self._setup = asyncio.Lock()

    # -- plumbing --------------------------------------------------------------------
    def _net(self) -> acme_client.ClientNetwork:
        net = acme_client.ClientNetwork(self._key, account=self._account, alg=self._alg,
                                        user_agent=USER_AGENT, timeout=int(max(1, self.net_timeout)))
        # requests' `verify` takes a CA bundle path too; the library passes verify_ssl as it.
        net.verify_ssl = self.ca_bundle or True  # type: ignore[assignment]
        return net

    async def _run(self, what: str, fn: Callable[..., Any], *args: Any, timeout: float | None = None) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(None, fn, *args),
                                          timeout if timeout is not None else self.net_timeout + 5)
        except asyncio.TimeoutError:
            raise AcmeError(f"{what}: no answer from {self.directory_url} in time") from None
        except AcmeError:
            raise
        except messages.Error as exc:
            if exc.code in ("accountDoesNotExist", "unauthorized") and what != "account":
                # The CA forgot the account (pebble keeps none across restarts): register again next time.
                self._account = None
            raise AcmeError(f"{what}: {_problem(exc)}", rate_limited=exc.code == "rateLimited") from None
        except (requests.exceptions.RequestException, OSError) as exc:
            raise AcmeError(f"{what}: {self.directory_url}: {_problem(exc)}") from None
        except (acme_errors.Error, ValueError) as exc:
            raise AcmeError(f"{what}: {_problem(exc)}") from None

    # -- account ---------------------------------------------------------------------
    async def _ensure_account(self) -> acme_client.ClientV2:
        async with self._setup:
            if self._account is None:
                await self._run("account", self._register)
        assert self._directory is not None
        return acme_client.ClientV2(self._directory, self._net())

    def _register(self) -> None:
        net = self._net()
        directory = acme_client.ClientV2.get_directory(self.directory_url, net)
        cl = acme_client.ClientV2(directory, net)
        new = messages.NewRegistration.from_data(email=self.email, terms_of_service_agreed=True)
        try:
            regr = cl.new_account(new)
        except acme_errors.ConflictError as exc:
            # The key has an account already (another PoP, or an earlier run): use it.
            regr = cl.query_registration(messages.RegistrationResource(uri=exc.location,
                                                                       body=messages.Registration()))
        self._directory, self._account = directory, regr
        log.info(kv("acme_account", directory=self.directory_url, account=regr.uri))

    # -- order -----------------------------------------------------------------------
    async def order(self, names: tuple[str, ...], solvers: Mapping[str, Solver]) -> Issued:
        t0 = time.monotonic()
        deadline = t0 + self.order_timeout
        cl = await self._ensure_account()
        cert_key = ec.generate_private_key(ec.SECP256R1())
        key_pem = cert_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption())
        csr = crypto_util.make_csr(key_pem, list(names))
        orderr = await self._run(f"new order for {','.join(names)}", cl.new_order, csr)
        presented: list[tuple[Solver, str, str]] = []
        try:
            answers = []
            for authzr in orderr.authorizations:
                body = authzr.body
                if body.status == messages.STATUS_VALID:
                    continue   # an authorization the CA still holds (RFC 8555 7.1.4)
                ident = ("*." if body.wildcard else "") + body.identifier.value
                offered = [c.chall.typ for c in body.challenges if hasattr(c.chall, "typ")]
                try:
                    kind = choose(ident, offered, solvers)
                except ChallengeError as exc:
                    raise AcmeError(str(exc)) from None
                challb = next(c for c in body.challenges if c.chall.typ == kind)
                token = challb.chall.encode("token")
                key_auth = challb.chall.key_authorization(self._key)
                solver = solvers[kind]
                # The identifier a solver gets has no "*.": the DNS-01 record is
                # _acme-challenge.<base> for a wildcard too (RFC 8555 8.4).
                await solver.present(body.identifier.value, token, key_auth)
                presented.append((solver, body.identifier.value, token))
                answers.append((authzr, challb, kind))
            for authzr, challb, kind in answers:
                await self._run(f"{authzr.body.identifier.value}: answer {kind}", cl.answer_challenge, challb,
                                challb.chall.response(self._key))
            for authzr, challb, kind in answers:
                await self._poll(cl, authzr, kind, deadline)
            remaining = max(1.0, deadline - time.monotonic())
            fin_deadline = _dt.datetime.now() + _dt.timedelta(seconds=remaining)
            done = await self._run(f"finalize {','.join(names)}", cl.finalize_order, orderr, fin_deadline,
                                   timeout=remaining + self.net_timeout)
        finally:
            for solver, ident, token in presented:
                try:
                    await solver.cleanup(ident, token)
                except Exception as exc:  # noqa: BLE001 - cleanup must not hide the order's outcome
                    log.warning(kv("acme_cleanup_failed", name=ident, challenge=solver.challenge_type,
                                   error=type(exc).__name__, detail=exc))
        chain = done.fullchain_pem.encode() if isinstance(done.fullchain_pem, str) else done.fullchain_pem
        return Issued(names=names, chain_pem=chain, key_pem=key_pem, seconds=time.monotonic() - t0)

    async def _poll(self, cl: acme_client.ClientV2, authzr: messages.AuthorizationResource, kind: str,
                    deadline: float) -> None:
        ident = authzr.body.identifier.value
        delay = POLL_FIRST
        while True:
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            authzr, _ = await self._run(f"{ident}: poll", cl.poll, authzr)
            status = authzr.body.status
            if status == messages.STATUS_VALID:
                return
            if status not in (messages.STATUS_PENDING, messages.STATUS_PROCESSING):
                errors = [c.error for c in authzr.body.challenges if c.error is not None]
                detail = "; ".join(_problem(e) for e in errors) or f"authorization {status}"
                raise AcmeError(f"{ident}: {kind} validation failed: {detail}")
            if time.monotonic() >= deadline:
                raise AcmeError(f"{ident}: {kind} validation still pending after {self.order_timeout:.0f}s")
            delay = min(delay * 2, POLL_MAX)
