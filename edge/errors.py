"""The error codes the edge and the agent show to people: one table, `ERR_GSLB_*`.

Owns: each code's HTTP status, title and meaning, and what the person who
sees it should do (docs/errors.md is this table in prose; a test keeps the two
the same). A code is stable: scripts and monitoring match on it (the
`X-Gslb-Error-Code` response header, the error page, log lines), so a code is
never reused for another meaning. Numbering after ngrok's ERR_NGROK_*: 32xx
the endpoint (offline, unknown, refused by a module), 34xx the client's
request (the HTTP status in the last digits), 35xx the path behind the edge.
Must not touch: sockets or pages; `edge.front.http1.error_response` renders a page.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorCode:
    code: str       # ERR_GSLB_...
    status: int     # the HTTP status it is answered with
    title: str      # the page's title
    meaning: str    # what happened, one sentence
    action: str     # what the person who sees it should do


OFFLINE = ErrorCode(
    "ERR_GSLB_3200", 404, "Endpoint offline",
    "No agent is online for this HTTPS name (none connected, or its agent left).",
    "Start the agent (`gslb agent http PORT --name NAME`) or check its log; "
    "it binds again by itself after a lost connection.")
UNKNOWN_HOST = ErrorCode(
    "ERR_GSLB_3201", 404, "Unknown host",
    "A plain-HTTP request (port 80) whose Host is not the name of an HTTPS endpoint, so there is "
    "nothing to redirect to.",
    "Check the name in the URL; endpoints are <name>.<https_domain> and served over HTTPS.")
DENIED = ErrorCode(
    "ERR_GSLB_3210", 403, "Forbidden",
    "The client's address is refused by the endpoint's `ip_restriction` module "
    "(in `deny_cidrs`, or not in `allow_cidrs`).",
    "Ask the endpoint's owner to allow your network; the owner sets `allow_cidrs`/`deny_cidrs` on the binding.")
FORBIDDEN = ErrorCode(
    "ERR_GSLB_3403", 403, "Forbidden",
    "A module refused the request without a code of its own; the page says which and why.",
    "Read the reason on the page; the module's README (edge/modules/) says what it checks.")
BAD_REQUEST = ErrorCode(
    "ERR_GSLB_3400", 400, "Bad request",
    "The request is not valid HTTP/1.x (RFC 9112): a malformed head, two Host fields, "
    "no Host in HTTP/1.1, Transfer-Encoding in HTTP/1.0.",
    "Fix the client; the page names the rule the request broke.")
METHOD_NOT_ALLOWED = ErrorCode(
    "ERR_GSLB_3405", 405, "Method not allowed",
    "CONNECT: the edge is not a forward proxy.",
    "Send requests to the endpoint's name itself.")
REQUEST_TIMEOUT = ErrorCode(
    "ERR_GSLB_3408", 408, "Request timeout",
    "The request head was not complete within `[edge.timeouts] header` seconds of its first byte.",
    "Send the whole head at once (a slow link or a stalled client); the operator can raise the timeout.")
MISDIRECTED = ErrorCode(
    "ERR_GSLB_3421", 421, "Misdirected request",
    "The Host of the request is not the TLS server name (SNI) of the connection (RFC 9110 15.5.20).",
    "Open a new connection for the other name; a client reusing connections across names should "
    "honour 421 and retry.")
HEAD_TOO_LARGE = ErrorCode(
    "ERR_GSLB_3431", 431, "Request header fields too large",
    "The request head is larger than `[edge.limits] max_header_bytes` or has too many fields.",
    "Send fewer or smaller header fields (large cookies are the usual cause).")
BAD_GATEWAY = ErrorCode(
    "ERR_GSLB_3502", 502, "Bad gateway",
    "The edge could not reach the endpoint's agent (the stream could not be opened, or was reset "
    "before any response byte: the agent or its PoP went away).",
    "Retry: the agent reconnects and other PoPs take over within seconds; if it persists, check the "
    "agent's log and the peer links.")
AGENT_UPSTREAM = ErrorCode(
    "ERR_GSLB_AGENT_UPSTREAM", 502, "Bad gateway",
    "The agent is online but could not connect to its local service (the `http` endpoint's upstream).",
    "Start the local service, or give the agent the address it listens on.")

CODES: dict[str, ErrorCode] = {e.code: e for e in (
    OFFLINE, UNKNOWN_HOST, DENIED, FORBIDDEN, BAD_REQUEST, METHOD_NOT_ALLOWED, REQUEST_TIMEOUT,
    MISDIRECTED, HEAD_TOO_LARGE, BAD_GATEWAY, AGENT_UPSTREAM)}
