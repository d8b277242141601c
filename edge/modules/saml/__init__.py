"""SAML 2.0 login in front of an HTTP endpoint: the edge as a service provider.

Owns: the `saml_idp` and `saml_authorized_groups` bind options, the reserved
paths `/saml/metadata`, `/saml/acs` and `/saml/logout` on an endpoint that
has `saml_idp`, the session cookie and the login cookies (sealed with the
edge deployment's key, edge/modules/session.py: valid at every PoP), the
bounded replay cache of assertion IDs, and the identity headers upstream
(`Gslb-Auth-Email`, `Gslb-Auth-Subject`, `Gslb-Auth-Name`, stripped from
every client request of such an endpoint first).

Pure in decide/resume: the ACS body comes through a `ReadBody` effect and
the signature check (pysaml2 running xmlsec1) through a `Compute` effect;
wall-clock time is `subject.wall`. The SAML work itself is in sp.py.
See README.md and docs/saml.md.
"""
from __future__ import annotations

import html
import os
import re
import shutil
import secrets
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs

from edge import errors as E
from edge.modules import session as S
from edge.modules.base import (
    BindOption, Compute, Decision, Effect, EffectResult, Module, ModuleConfigError, ReadBody, Response, Subject, Verdict,
)

# pysaml2 (sp.py) takes half a second to import: loaded on first use, not by every `gslb` command
METADATA_PATH = "/saml/metadata"   # the SP's metadata; also its entity ID: https://<host>/saml/metadata
ACS_PATH = "/saml/acs"             # the assertion consumer service (HTTP-POST binding)
LOGOUT_PATH = "/saml/logout"       # ends the edge's session (local logout)
BINDINGS = ("redirect", "post")

SESSION_COOKIE = "__Host-gslb_session"     # the same name as the oidc module's (one of them per endpoint)
LOGIN_COOKIE = "__Host-gslb_saml_"         # + the login's RelayState key: one per login under way
IDENTITY_HEADERS = ("Gslb-Auth-Email", "Gslb-Auth-Subject", "Gslb-Auth-Name")
MAX_BODY = 256 * 1024
MAX_IDPS = 64
MAX_GROUPS = 100
LOGIN_TTL = 600                            # seconds a login may take at the IdP
MAX_SITES = 1024                           # per-host SP configurations kept
_KEY = re.compile(r"^[A-Za-z0-9_-]{16}$")
_BUILD = object()  # _site: not made yet
_GROUP = re.compile(r"^[^\x00-\x1f\x7f]{1,256}$")
_OPTIONS = {"session_key_file", "idp_metadata_files", "binding", "allow_idp_initiated", "group_attribute",
            "email_attribute", "name_attribute", "session_duration", "replay_cache_entries", "verify_timeout",
            "xmlsec_binary"}


def _one(value: Any, what: str) -> str:
    if isinstance(value, (list, tuple)) and len(value) == 1:  # a flag, collected into a list
        value = value[0]
    if not isinstance(value, str) or not 1 <= len(value) <= 512 or any(c in value for c in "\r\n\0 "):
        raise ValueError(f"option {what!r} must be one IdP entity ID (1..512 characters, no spaces)")
    return value


def _check_idp(value: Any) -> str:
    return _one(value, "saml_idp")


def _check_groups(value: Any) -> list[str]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not 1 <= len(value) <= MAX_GROUPS:
        raise ValueError(f"option 'saml_authorized_groups' must be a list of 1..{MAX_GROUPS} group names")
    for g in value:
        if not isinstance(g, str) or not _GROUP.match(g):
            raise ValueError("option 'saml_authorized_groups': a group is 1..256 characters, no control characters")
    return list(value)


def _header_value(text: Any) -> str:
    return re.sub(r"[\x00-\x1f\x7f]", "", str(text))[:256]


def _page(status: int, code: str, title: str, text: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    body = ("<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title></head>\n"
            "<body><h1>{t}</h1>\n<p>{d}</p>\n<p><code>{c}</code></p>\n</body></html>\n").format(
        t=html.escape(title), d=html.escape(text), c=html.escape(code)).encode("utf-8")
    return Response(status, headers + (("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store"),
                                       ("X-Gslb-Error-Code", code)) if code else headers + (
        ("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store")), body)


def _safe_target(target: str) -> str:
    """A local path to send the browser back to (no scheme, no host: no open redirect)."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target or len(target) > 2048 \
            or any(ord(c) < 0x21 or ord(c) == 0x7f for c in target):
        return "/"
    return target


@dataclass
class Saml(Module):
    name: ClassVar[str] = "saml"
    bind_options: ClassVar[Mapping[str, BindOption]] = {
        "saml_idp": BindOption(("http",), _check_idp, "require a SAML 2.0 login at this IdP (its entity ID, one the "
                               "edge trusts: [edge.modules.saml] idp_metadata_files)", flag="--saml-idp",
                               metavar="ENTITY_ID"),
        "saml_authorized_groups": BindOption(("http",), _check_groups, "only users in one of these groups (the "
                                             "IdP's group attribute; repeatable)", flag="--saml-group",
                                             metavar="GROUP"),
    }
    sealer: S.Sealer | None = None
    idps: Mapping[str, str] = field(default_factory=dict)   # entity ID -> metadata XML
    binding: str = "redirect"
    allow_idp_initiated: bool = False
    group_attribute: str = "groups"
    email_attribute: str = "mail"
    name_attribute: str = "displayName"
    session_duration: int = 8 * 3600
    replay_cache_entries: int = 100_000
    verify_timeout: float = 5.0
    xmlsec_binary: str = ""
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys((
        "logins_started_total", "logins_ok_total", "logins_denied_total", "logins_failed_total",
        "sessions_ok_total", "metadata_total", "logouts_total"), 0))
    errors: dict[str, int] = field(default_factory=dict)  # assertion errors by kind
    _sites: "OrderedDict[tuple[str, str], Any]" = field(default_factory=OrderedDict)  # sp.SpSite
    _replay: "OrderedDict[str, float]" = field(default_factory=OrderedDict)

    @classmethod
    def from_config(cls, options: Mapping[str, Any]) -> "Saml":
        unknown = set(options) - _OPTIONS
        if unknown:
            raise ModuleConfigError(f"saml: unknown option(s) {', '.join(sorted(unknown))}")
        kw: dict[str, Any] = {}
        files = options.get("idp_metadata_files", [])
        if isinstance(files, str) or not isinstance(files, list) or len(files) > MAX_IDPS:
            raise ModuleConfigError(f"idp_metadata_files: a list of at most {MAX_IDPS} files")
        idps: dict[str, str] = {}
        for f in files:
            try:
                xml = Path(f).read_text("utf-8")
                if len(xml) > 1024 * 1024:
                    raise ValueError(f"{f}: larger than 1 MiB")
                from edge.modules.saml.sp import idp_entity_id

                idps[idp_entity_id(xml, str(f))] = xml
            except (OSError, UnicodeDecodeError, ValueError, TypeError) as exc:
                raise ModuleConfigError(f"idp_metadata_files: {exc}") from None
        kw["idps"] = idps
        key = options.get("session_key_file")
        if idps and not key:
            raise ModuleConfigError("session_key_file: needed with idp_metadata_files (the key every PoP shares)")
        if key:
            try:
                kw["sealer"] = S.Sealer(S.load_key_file(key))
            except S.SessionKeyError as exc:
                raise ModuleConfigError(f"session_key_file: {exc}") from None
        binding = options.get("binding", "redirect")
        if binding not in BINDINGS:
            raise ModuleConfigError("binding: 'redirect' (HTTP-Redirect) or 'post' (HTTP-POST)")
        kw["binding"] = binding
        unsolicited = options.get("allow_idp_initiated", False)
        if not isinstance(unsolicited, bool):
            raise ModuleConfigError("allow_idp_initiated: true or false")
        kw["allow_idp_initiated"] = unsolicited
        for k in ("group_attribute", "email_attribute", "name_attribute"):
            if k in options:
                v = options[k]
                if not isinstance(v, str) or not 1 <= len(v) <= 256:
                    raise ModuleConfigError(f"{k}: an attribute name (1..256 characters)")
                kw[k] = v
        for k, lo, hi in (("session_duration", 60, 30 * 86400), ("replay_cache_entries", 1, 10_000_000)):
            if k in options:
                v = options[k]
                if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                    raise ModuleConfigError(f"{k}: an integer, {lo}..{hi}")
                kw[k] = v
        if "verify_timeout" in options:
            v = options["verify_timeout"]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.1 <= v <= 60:
                raise ModuleConfigError("verify_timeout: seconds, 0.1..60")
            kw["verify_timeout"] = float(v)
        xmlsec = options.get("xmlsec_binary") or shutil.which("xmlsec1") or ""
        if idps and not (xmlsec and os.access(xmlsec, os.X_OK)):
            raise ModuleConfigError("xmlsec_binary: xmlsec1 not found (apt-get install xmlsec1)")
        kw["xmlsec_binary"] = xmlsec
        return cls(**kw)

    def stats(self) -> dict[str, int]:
        """Counters (`*_total`, assertion errors as `assertion_<kind>_total`) and gauges; names in README.md."""
        out = {**self.counters, "replay_cache_entries": len(self._replay), "sites": len(self._sites)}
        out.update({f"assertion_{k}_total": v for k, v in self.errors.items()})
        return out

    # -- the chain -------------------------------------------------------------------
    def idle(self, options: Mapping[str, Any]) -> bool:
        return not options.get("saml_idp")  # the endpoint names no IdP: decide() passes

    def decide(self, subject: Subject) -> Decision:
        idp = subject.options.get("saml_idp")
        if not idp or subject.request is None:
            return Decision(Verdict.PASS)
        site = self._site(subject.endpoint, idp)
        if site is _BUILD:
            # this host's SP configuration is made once (pysaml2 parses the IdP's metadata, ~0.1 s):
            # in the thread pool, not in the event loop; `resume` keeps it and decides again
            xml, xmlsec, host = self.idps[idp], self.xmlsec_binary, subject.endpoint

            def build() -> Any:
                from edge.modules.saml.sp import SpSite

                return SpSite.make(host, idp, xml, xmlsec)

            return Decision(Verdict.PERFORM, module=self.name, effect=Compute(build, "saml_site", 30.0))
        if site is None or self.sealer is None:
            return self._answer(_page(502, E.SAML_UNAVAILABLE.code, "Login not available",
                                      f"This edge does not trust the SAML identity provider {idp} "
                                      f"that {subject.endpoint} asks for."), "idp not configured")
        req = subject.request
        path = req.target.partition("?")[0]
        if path == METADATA_PATH:
            self.counters["metadata_total"] += 1
            return self._answer(Response(200, (("Content-Type", "application/samlmetadata+xml"),
                                               ("Cache-Control", "max-age=300")), site.metadata), "sp metadata")
        if path == ACS_PATH:
            if req.method != "POST":
                return self._reject(subject, "not_post", "The assertion consumer takes the IdP's HTTP-POST.")
            length = req.header("content-length")
            if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
                return self._reject(subject, "body_too_large", "The IdP's response is too large.")  # at once
            return Decision(Verdict.PERFORM, module=self.name, effect=ReadBody(MAX_BODY))
        if path == LOGOUT_PATH:
            self.counters["logouts_total"] += 1
            return self._answer(_page(200, "", "Logged out", f"You are logged out of {subject.endpoint}.",
                                      (("Set-Cookie", S.clear_cookie(SESSION_COOKIE)),)), "logout")
        data = self._session(subject, idp)
        if data is not None:
            self.counters["sessions_ok_total"] += 1
            add = [("Gslb-Auth-Subject", _header_value(data["sub"]))]
            if data.get("email"):
                add.append(("Gslb-Auth-Email", _header_value(data["email"])))
            if data.get("name"):
                add.append(("Gslb-Auth-Name", _header_value(data["name"])))
            return Decision(Verdict.PASS, add_upstream=tuple(add), strip_upstream=IDENTITY_HEADERS)
        return self._login(subject, site)

    def resume(self, subject: Subject, effect: Effect, result: EffectResult) -> Decision:
        if isinstance(effect, ReadBody):
            return self._acs_body(subject, result)
        if isinstance(effect, Compute) and effect.what == "saml_site":
            if result.error or result.value is None:
                self.errors["site_failed"] = self.errors.get("site_failed", 0) + 1
                return self._answer(_page(502, E.SAML_UNAVAILABLE.code, "Login not available",
                                          f"The edge could not set up the SAML login for {subject.endpoint} "
                                          f"({result.error or 'no configuration'}); try again."), "site failed")
            key = (subject.endpoint, subject.options.get("saml_idp"))
            self._sites[key] = result.value
            while len(self._sites) > MAX_SITES:
                self._sites.popitem(last=False)
            return self.decide(subject)
        if isinstance(effect, Compute):
            return self._acs_verified(subject, result)
        raise ValueError(f"saml: no such effect {effect!r}")

    # -- pieces ------------------------------------------------------------------------
    def _site(self, host: str, idp: str) -> Any:
        """The cached SP of (host, idp); _BUILD when it must be made first; None for an untrusted IdP."""
        if idp not in self.idps:
            return None
        key = (host, idp)
        site = self._sites.get(key)
        if site is None:
            return _BUILD
        self._sites.move_to_end(key)
        return site

    def _session(self, subject: Subject, idp: str) -> dict[str, Any] | None:
        value = S.cookie_value(subject.request.header("Cookie") if subject.request else None, SESSION_COOKIE)
        opened = self.sealer.open(f"session:saml:{subject.endpoint}", value, subject.wall) if self.sealer else None
        if opened is None:
            return None
        data = opened[0]
        if not isinstance(data, dict) or data.get("idp") != idp or not isinstance(data.get("sub"), str):
            return None
        groups = subject.options.get("saml_authorized_groups")
        if groups and not set(groups) & set(data.get("groups") or ()):
            return None  # the binding's groups changed since the login: log in again
        return data

    def _login(self, subject: Subject, site: Any) -> Decision:
        """A new login: an AuthnRequest to the IdP, the login's state in a sealed cookie."""
        key = secrets.token_urlsafe(12)  # 16 characters: the RelayState, and the login cookie's name
        reqid, info = site.authn_request(key, self.binding)
        target = _safe_target(subject.request.target)  # type: ignore[union-attr]
        sealed = self.sealer.seal(f"login:saml:{subject.endpoint}", {"r": reqid, "t": target, "k": key},  # type: ignore[union-attr]
                                  subject.wall, LOGIN_TTL)
        # SameSite=None: the IdP's HTTP-POST to the ACS is a cross-site request
        cookie = ("Set-Cookie", S.set_cookie(LOGIN_COOKIE + key, sealed, LOGIN_TTL, same_site="None"))
        self.counters["logins_started_total"] += 1
        if self.binding == "redirect":
            location = dict(info["headers"])["Location"]
            return self._answer(Response(302, (("Location", location), cookie, ("Cache-Control", "no-store"))),
                                "login redirect")
        return self._answer(Response(200, (cookie, ("Content-Type", "text/html; charset=utf-8"),
                                           ("Cache-Control", "no-store")), str(info["data"]).encode("utf-8")),
                            "login form (HTTP-POST)")

    def _acs_body(self, subject: Subject, result: EffectResult) -> Decision:
        if result.error:
            return self._reject(subject, "body_too_large" if result.error == "body_too_large" else "no_body",
                                "The IdP's response could not be read.")
        try:
            form = parse_qs(result.body.decode("ascii"), max_num_fields=16, strict_parsing=False)
        except (UnicodeDecodeError, ValueError):
            return self._reject(subject, "invalid", "The IdP's response is not a form.")
        saml_response = (form.get("SAMLResponse") or [""])[0]
        relay = (form.get("RelayState") or [""])[0]
        if not saml_response:
            return self._reject(subject, "invalid", "The POST holds no SAMLResponse.")
        idp = subject.options.get("saml_idp")
        site = self._site(subject.endpoint, idp) if idp else None
        if site is None or site is _BUILD:  # decide made it before asking for the body
            return self._reject(subject, "invalid", "The endpoint has no IdP.")
        login = None
        if _KEY.match(relay):
            cookie = S.cookie_value(subject.request.header("Cookie") if subject.request else None, LOGIN_COOKIE + relay)
            opened = self.sealer.open(f"login:saml:{subject.endpoint}", cookie, subject.wall)  # type: ignore[union-attr]
            if opened is not None and isinstance(opened[0], dict) and opened[0].get("k") == relay:
                login = opened[0]
        if login is None:
            if not self.allow_idp_initiated:
                return self._reject(subject, "unsolicited", "No login is under way in this browser for this response "
                                    "(expired, started elsewhere, or sent unasked by the IdP).")
            outstanding: dict[str, str] = {}
            target = _safe_target(relay) if relay.startswith("/") else "/"
            clear = ""
        else:
            outstanding = {str(login["r"]): str(login["t"])}
            target, clear = _safe_target(str(login["t"])), LOGIN_COOKIE + relay
        unsolicited = login is None
        from edge.modules.saml.sp import verify_response

        return Decision(Verdict.PERFORM, module=self.name, effect=Compute(
            lambda: {"v": verify_response(site, saml_response, outstanding, unsolicited), "t": target, "c": clear},
            "saml_verify", self.verify_timeout))

    def _acs_verified(self, subject: Subject, result: EffectResult) -> Decision:
        if result.error:
            self.counters["logins_failed_total"] += 1
            self.errors["verify_" + ("timeout" if result.error == "timeout" else "failed")] = \
                self.errors.get("verify_" + ("timeout" if result.error == "timeout" else "failed"), 0) + 1
            return self._answer(_page(502, E.SAML_UNAVAILABLE.code, "Login failed",
                                      "The edge could not check the identity provider's response "
                                      f"({result.error}); try again."), f"verify {result.error}")
        v, target, clear = result.value["v"], result.value["t"], result.value["c"]
        if "error" in v:
            return self._reject(subject, v["error"], "The identity provider's response was refused: "
                                f"{v['error'].replace('_', ' ')}.", clear)
        # Replay: an assertion ID is accepted once on this edge node while it is valid.
        now = subject.now
        while self._replay and next(iter(self._replay.values())) <= now:
            self._replay.popitem(last=False)
        if v["id"] in self._replay:
            return self._reject(subject, "replayed", "This assertion was used before.", clear)
        valid_for = min(max((v.get("not_on_or_after") or 0) - subject.wall, 60), 86400)
        self._replay[v["id"]] = now + valid_for
        while len(self._replay) > self.replay_cache_entries:
            self._replay.popitem(last=False)
        ava = v["ava"]
        groups = [g for g in ava.get(self.group_attribute, [])][:MAX_GROUPS]
        wanted = subject.options.get("saml_authorized_groups")
        if wanted and not set(wanted) & set(groups):
            self.counters["logins_denied_total"] += 1
            headers = (("Set-Cookie", S.clear_cookie(clear)),) if clear else ()
            return self._answer(_page(403, E.SAML_DENIED.code, "Access denied",
                                      f"{v['name_id'] or 'This user'} is not in a group allowed to use "
                                      f"{subject.endpoint}.", headers), "not in authorized groups")
        ttl = self.session_duration
        if v.get("session_not_on_or_after"):
            ttl = max(60, min(ttl, int(v["session_not_on_or_after"] - subject.wall)))
        data = {"sub": v["name_id"] or v["id"], "idp": v["issuer"],
                "email": (ava.get(self.email_attribute) or [""])[0][:256],
                "name": (ava.get(self.name_attribute) or [""])[0][:256], "groups": groups[:20]}
        try:
            sealed = self.sealer.seal(f"session:saml:{subject.endpoint}", data, subject.wall, ttl)  # type: ignore[union-attr]
        except ValueError:
            data["groups"] = [g for g in groups if g in (wanted or ())][:5]
            sealed = self.sealer.seal(f"session:saml:{subject.endpoint}", data, subject.wall, ttl)  # type: ignore[union-attr]
        self.counters["logins_ok_total"] += 1
        headers: tuple[tuple[str, str], ...] = (("Location", target), ("Set-Cookie", S.set_cookie(SESSION_COOKIE, sealed, ttl)),
                                                ("Cache-Control", "no-store"))
        if clear:
            headers += (("Set-Cookie", S.clear_cookie(clear)),)
        return self._answer(Response(302, headers), "session cookie set")

    def _reject(self, subject: Subject, kind: str, text: str, clear: str = "") -> Decision:
        self.counters["logins_failed_total"] += 1
        self.errors[kind] = self.errors.get(kind, 0) + 1
        headers = (("Set-Cookie", S.clear_cookie(clear)),) if clear else ()
        return self._answer(_page(E.SAML_REJECTED.status, E.SAML_REJECTED.code, "Login refused", text, headers),
                            f"saml {kind}")

    def _answer(self, response: Response, reason: str) -> Decision:
        return Decision(Verdict.ANSWER, status=response.status, reason=reason, module=self.name, response=response)
