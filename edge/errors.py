"""The error codes the edge and the agent show to people: one table, `ERR_GSLB_*`.

Owns: each code and the HTTP status it is answered with. What a code means
and what the person who sees it should do is docs/errors.md (a test keeps the
two the same: every code here is there, with this status, and no other).
A code is stable: scripts and monitoring match on it (the `X-Gslb-Error-Code`
response header, the error page, log lines), so a code is never reused for
another meaning. Numbering after ngrok's ERR_NGROK_*: 32xx the endpoint
(offline, unknown, refused by a module), 34xx the client's request (the HTTP
status in the last digits), 35xx the path behind the edge.
Must not touch: sockets or pages; `edge.front.http1.error_response` renders a page.
"""
from __future__ import annotations

from typing import NamedTuple


class ErrorCode(NamedTuple):
    code: str       # ERR_GSLB_...
    status: int     # the HTTP status it is answered with


OFFLINE = ErrorCode("ERR_GSLB_3200", 404)             # no agent online for the HTTPS name
UNKNOWN_HOST = ErrorCode("ERR_GSLB_3201", 404)        # plain HTTP for a name that is no HTTPS endpoint
DENIED = ErrorCode("ERR_GSLB_3210", 403)              # refused by ip_restriction
AUTH_DENIED = ErrorCode("ERR_GSLB_3211", 403)         # signed in, but not on the endpoint's allow lists (oidc)
AUTH_FAILED = ErrorCode("ERR_GSLB_3212", 403)         # the login failed: bad token, state or callback (oidc)
FORBIDDEN = ErrorCode("ERR_GSLB_3403", 403)           # refused by a module without a code of its own
BAD_REQUEST = ErrorCode("ERR_GSLB_3400", 400)         # not valid HTTP/1.x
AUTH_REQUIRED = ErrorCode("ERR_GSLB_3401", 401)       # basic_auth: no or wrong user and password
SAML_REJECTED = ErrorCode("ERR_GSLB_3441", 400)       # saml: the IdP's response or assertion is not valid
SAML_DENIED = ErrorCode("ERR_GSLB_3216", 403)         # saml: the user is not in the endpoint's authorized groups
SAML_UNAVAILABLE = ErrorCode("ERR_GSLB_3521", 502)    # saml: the endpoint's IdP is not configured, or its check failed
METHOD_NOT_ALLOWED = ErrorCode("ERR_GSLB_3405", 405)  # CONNECT: the edge is no forward proxy
REQUEST_TIMEOUT = ErrorCode("ERR_GSLB_3408", 408)     # request head not complete in time
MISDIRECTED = ErrorCode("ERR_GSLB_3421", 421)         # Host is not the connection's SNI
ABUSE_BLOCKED = ErrorCode("ERR_GSLB_3430", 429)       # the client's network is blocked by the abuse layer
HEAD_TOO_LARGE = ErrorCode("ERR_GSLB_3431", 431)      # request head too large or too many fields
BAD_GATEWAY = ErrorCode("ERR_GSLB_3502", 502)         # the endpoint's agent could not be reached
RATE_LIMITED = ErrorCode("ERR_GSLB_3429", 429)        # over the endpoint's rate_limit (Retry-After says when)
CIRCUIT_OPEN = ErrorCode("ERR_GSLB_3503", 503)
IDP_UNREACHABLE = ErrorCode("ERR_GSLB_3504", 502)     # the identity provider did not answer (oidc)        # the endpoint's circuit_breaker is open (Retry-After)
AGENT_UPSTREAM = ErrorCode("ERR_GSLB_AGENT_UPSTREAM", 502)  # the agent could not reach its local service

CODES: dict[str, ErrorCode] = {e.code: e for e in (
    OFFLINE, UNKNOWN_HOST, DENIED, FORBIDDEN, BAD_REQUEST, METHOD_NOT_ALLOWED, REQUEST_TIMEOUT,
    MISDIRECTED, HEAD_TOO_LARGE, BAD_GATEWAY, AGENT_UPSTREAM,
    RATE_LIMITED, CIRCUIT_OPEN, ABUSE_BLOCKED, AUTH_REQUIRED, SAML_REJECTED, SAML_DENIED, SAML_UNAVAILABLE,
    AUTH_DENIED, AUTH_FAILED, IDP_UNREACHABLE,
)}
