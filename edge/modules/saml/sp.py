"""The SAML 2.0 service-provider work of the `saml` module, on pysaml2 (with
xmlsec1 for XML signatures): per-endpoint SP configuration and metadata,
AuthnRequests (HTTP-Redirect or HTTP-POST binding), and the verification of
an IdP's Response (`verify_response`, run by the shell's thread pool as a
`Compute` effect: it starts xmlsec1).

Pure but for `verify_response` (a subprocess) and `idp_entity_id` (reads a
file at configuration time). Nothing here keeps state: the module does.
"""
from __future__ import annotations

import base64
import calendar
import time
import logging
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

with warnings.catch_warnings():  # pysaml2 imports a cipher mode cryptography has deprecated
    warnings.simplefilter("ignore")
    import saml2
    import saml2.response
    import saml2.sigver
    import saml2.time_util
    import saml2.validate
    from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT
    from saml2.client import Saml2Client
    from saml2.config import SPConfig
    from saml2.metadata import create_metadata_string
    from saml2.saml import NAMEID_FORMAT_PERSISTENT, NAMEID_FORMAT_UNSPECIFIED

logging.getLogger("saml2").setLevel(logging.CRITICAL)  # it logs whole assertions at INFO/ERROR; we log a kind

from edge.modules.saml import ACS_PATH, METADATA_PATH  # noqa: E402 - the package is loaded first

__all__ = ["BINDINGS", "SpSite", "idp_entity_id", "verify_response"]

BINDINGS = {"redirect": BINDING_HTTP_REDIRECT, "post": BINDING_HTTP_POST}
_MD = "urn:oasis:names:tc:SAML:2.0:metadata"
_DS = "http://www.w3.org/2000/09/xmldsig#"


def idp_entity_id(xml: str, where: str) -> str:
    """The entityID of IdP metadata `xml`; ValueError unless it is one
    EntityDescriptor with an IDPSSODescriptor, a signing certificate and a
    single sign-on service (an IdP whose assertions can be verified)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise ValueError(f"{where}: not XML ({exc})") from None
    if root.tag != f"{{{_MD}}}EntityDescriptor" or not root.get("entityID"):
        raise ValueError(f"{where}: not a SAML EntityDescriptor")
    idp = root.find(f"{{{_MD}}}IDPSSODescriptor")
    if idp is None:
        raise ValueError(f"{where}: no IDPSSODescriptor (not an identity provider)")
    if idp.find(f"{{{_MD}}}SingleSignOnService") is None:
        raise ValueError(f"{where}: no SingleSignOnService")
    if idp.find(f".//{{{_MD}}}KeyDescriptor//{{{_DS}}}X509Certificate") is None:
        raise ValueError(f"{where}: no signing certificate (KeyDescriptor): its assertions could not be verified")
    return root.get("entityID")  # type: ignore[return-value]


@dataclass
class SpSite:
    """The SP of one endpoint host for one IdP (pysaml2's config; read-only once made)."""

    host: str
    idp: str
    config: Any
    metadata: bytes
    unsolicited: Any  # the same SP config allowing IdP-initiated responses

    @classmethod
    def make(cls, host: str, idp: str, idp_xml: str, xmlsec: str, *, accepted_skew: int = 60) -> "SpSite":
        def conf(unsolicited: bool) -> Any:
            c = SPConfig()
            c.load({
                "entityid": f"https://{host}{METADATA_PATH}",
                "service": {"sp": {
                    "endpoints": {"assertion_consumer_service": [(f"https://{host}{ACS_PATH}", BINDING_HTTP_POST)]},
                    "want_assertions_signed": True,         # every assertion must carry a valid signature
                    "want_response_signed": False,
                    "authn_requests_signed": False,
                    "allow_unsolicited": unsolicited,
                    "name_id_format": [NAMEID_FORMAT_PERSISTENT, NAMEID_FORMAT_UNSPECIFIED],
                }},
                "metadata": {"inline": [idp_xml]},          # only this endpoint's IdP: no other issuer verifies
                "xmlsec_binary": xmlsec,
                "allow_unknown_attributes": True,
                "accepted_time_diff": accepted_skew,
            })
            return c

        c = conf(False)
        return cls(host, idp, c, create_metadata_string(None, config=c, valid=None), conf(True))

    def authn_request(self, relay_state: str, binding: str) -> tuple[str, dict[str, Any]]:
        """(request ID, pysaml2's http info: `headers` with Location for
        HTTP-Redirect, `data` an auto-submitting form for HTTP-POST)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Saml2Client(config=self.config).prepare_for_authenticate(
                entityid=self.idp, relay_state=relay_state, binding=BINDINGS[binding])


def _kind(exc: BaseException) -> str:
    """A short name for what is wrong with a response (stats, log, page)."""
    text = str(exc).lower()
    if isinstance(exc, saml2.validate.ResponseLifetimeExceed) or "too old" in text or "expired" in text:
        return "expired"
    if isinstance(exc, saml2.validate.ToEarly):
        return "not_yet_valid"
    if isinstance(exc, saml2.response.UnsolicitedResponse) or "unsolicited" in text:
        return "unsolicited"
    if "not for me" in text or "audience" in text:
        return "wrong_audience"
    if "signature missing" in text or "not signed" in text or "unsigned" in text:
        return "unsigned"
    if isinstance(exc, (saml2.sigver.SignatureError, saml2.response.IncorrectlySigned, saml2.sigver.MissingKey)) \
            or "signature" in text:
        return "bad_signature"
    if isinstance(exc, saml2.response.StatusError):
        return "idp_status"
    if "destination" in text or "recipient" in text:
        return "wrong_destination"
    return "invalid"


_SAML = "urn:oasis:names:tc:SAML:2.0:assertion"


def _condition_kind(saml_response: str, sp_entity_id: str, now: float) -> str:
    """Which condition failed, for the stats and the page only: pysaml2 has
    refused the response already ("Condition not OK"); this reads the (not
    trusted) XML to say whether it was the time window or the audience."""
    try:
        root = ET.fromstring(base64.b64decode(saml_response))
    except (ValueError, ET.ParseError):
        return "invalid"
    for conds in root.iter(f"{{{_SAML}}}Conditions"):
        nooa, nb = _epoch(conds.get("NotOnOrAfter")), _epoch(conds.get("NotBefore"))
        if nooa is not None and now >= nooa:
            return "expired"
        if nb is not None and now < nb:
            return "not_yet_valid"
        audiences = [a.text.strip() for a in conds.iter(f"{{{_SAML}}}Audience") if a.text]
        if audiences and sp_entity_id not in audiences:
            return "wrong_audience"
    return "invalid"


def _epoch(value: str | None) -> int | None:
    if not value:
        return None
    try:
        return calendar.timegm(saml2.time_util.str_to_time(value))
    except (ValueError, TypeError):
        return None


def verify_response(site: SpSite, saml_response: str, outstanding: dict[str, str], unsolicited: bool) -> dict[str, Any]:
    """Verify a base64 SAMLResponse (HTTP-POST binding) for `site`: the
    assertion's signature (xmlsec1, the IdP's certificate from its metadata),
    issuer, audience (this SP), recipient, time conditions, and InResponseTo
    one of `outstanding` (request ID -> original URI) unless `unsolicited`.
    Returns {"error": kind} or the identity: {"id", "issuer", "name_id",
    "ava", "in_response_to", "not_on_or_after", "session_not_on_or_after"}.
    Runs in a worker thread: touches no shared state (a fresh client)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        client = Saml2Client(config=site.unsolicited if unsolicited else site.config)
        try:
            ar = client.parse_authn_request_response(saml_response, BINDING_HTTP_POST, outstanding=outstanding)
        except Exception as exc:  # noqa: BLE001 - pysaml2 raises many kinds (and plain Exception)
            kind = _kind(exc)
            if kind == "invalid" and "condition" in str(exc).lower():
                kind = _condition_kind(saml_response, site.config.entityid, time.time())
            return {"error": kind, "detail": f"{type(exc).__name__}: {str(exc)[:200]}"}
    if ar is None or ar.assertion is None:
        return {"error": "invalid", "detail": "no assertion"}
    if ar.issuer() != site.idp:
        return {"error": "wrong_issuer", "detail": ""}
    conds = ar.assertion.conditions
    subj_nooa = None
    for sc in ar.assertion.subject.subject_confirmation or ():
        if sc.subject_confirmation_data is not None:
            subj_nooa = _epoch(sc.subject_confirmation_data.not_on_or_after) or subj_nooa
    name_id = ar.name_id.text if ar.name_id is not None else ""
    return {
        "id": ar.assertion.id,
        "issuer": ar.issuer(),
        "name_id": name_id or "",
        "ava": {k: [str(v) for v in vals][:100] for k, vals in (ar.ava or {}).items()},
        "in_response_to": ar.in_response_to or "",
        "not_on_or_after": _epoch(conds.not_on_or_after if conds is not None else None) or subj_nooa,
        "session_not_on_or_after": ar.session_info().get("not_on_or_after") or None,
    }
