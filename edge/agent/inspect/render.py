"""Views of a captured entry: ngrok's JSON shape for the API, a summary row
for the UI's list, and a body as text to show (JSON/XML pretty-printed,
binary as a hex dump, capped and marked truncated).

The shape follows ngrok's agent API (https://ngrok.com/docs/agent/api/,
"Capture Request Detail"): `id`, `uri`, `tunnel_name`, `remote_addr`, `start`
(RFC 3339), `duration` (nanoseconds), `request{method, proto, headers, uri, raw}`
and `response{status, status_code, proto, headers, raw}`, `raw` base64 of the
bytes as seen (head + captured body). Fields it does not have are added (as
its API stability rules allow): `replay_of`, `websocket`, `error`, `body`.

Must not touch: the store (read-only), the network.
"""
from __future__ import annotations

import base64
import json
import re
from datetime import datetime, timezone
from typing import Any

from edge.agent.inspect.capture import header
from edge.agent.inspect.store import Entry, Message

SHOW_CAP = 256 * 1024   # body bytes rendered into the details view
_XML_TOKEN = re.compile(rb"(<[^>]*>)")


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def go_headers(headers: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Go's http.Header shape ngrok uses: canonical name -> list of values."""
    out: dict[str, list[str]] = {}
    for k, v in headers:
        out.setdefault("-".join(p[:1].upper() + p[1:].lower() for p in k.split("-")), []).append(v)
    return out


def media_type(headers: list[tuple[str, str]]) -> str:
    return (header(headers, "content-type") or "").split(";", 1)[0].strip().lower()


def body_view(msg: Message) -> dict[str, Any]:
    """{kind: json|xml|text|binary|empty, text, size, captured, truncated, error?}."""
    data = bytes(msg.body[:SHOW_CAP])
    view: dict[str, Any] = {"size": msg.body_size, "captured": len(msg.body),
                            "truncated": msg.truncated or len(msg.body) > SHOW_CAP}
    encoding = (header(msg.headers, "content-encoding") or "identity").lower()
    if not data:
        view.update(kind="empty", text="")
        return view
    mt = media_type(msg.headers)
    if encoding not in ("identity", ""):
        view.update(kind="binary", text=hexdump(data), note=f"content-encoding {encoding}")
        return view
    text = _as_text(data)
    if text is None:
        view.update(kind="binary", text=hexdump(data))
        return view
    if mt == "application/json" or mt.endswith("+json"):
        view["kind"] = "json"
        if view["truncated"]:
            view["text"] = text
            return view
        try:
            view["text"] = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
        except ValueError as exc:
            view.update(text=text, error=f"invalid JSON: {exc}")
        return view
    if mt in ("application/xml", "text/xml") or mt.endswith("+xml"):
        view.update(kind="xml", text=pretty_xml(text))
        return view
    view.update(kind="text", text=text)
    return view


def _as_text(data: bytes) -> str | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(data) - 3:  # not just a character cut by the cap
            return None
        text = data[:exc.start].decode("utf-8")
    if any(c < " " and c not in "\t\r\n" for c in text[:4096]):
        return None
    return text


def hexdump(data: bytes, width: int = 16) -> str:
    """`00000000  de ad be ef ...  |....|` lines, like `hexdump -C`."""
    lines = []
    for off in range(0, len(data), width):
        chunk = data[off:off + width]
        hexes = " ".join(f"{b:02x}" for b in chunk)
        text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in chunk)
        lines.append(f"{off:08x}  {hexes:<{width * 3 - 1}}  |{text}|")
    return "\n".join(lines)


def pretty_xml(text: str) -> str:
    """Indent by tag depth without an XML parser (no entity expansion: the
    bytes come from strangers); text that does not tokenize stays as it is."""
    out, depth = [], 0
    for tok in _XML_TOKEN.split(text.encode("utf-8")):
        t = tok.strip()
        if not t:
            continue
        s = t.decode("utf-8", "replace")
        if s.startswith("</"):
            depth = max(0, depth - 1)
            out.append("  " * depth + s)
        elif s.startswith("<") and not s.startswith(("<?", "<!")) and not s.endswith("/>"):
            out.append("  " * depth + s)
            depth += 1
        else:
            out.append("  " * depth + s)
    # a text node between an open and its close tag goes on the open tag's line
    merged: list[str] = []
    for line in out:
        if merged and line.strip().startswith("</") and len(merged) >= 2 and not merged[-1].strip().startswith("<"):
            txt = merged.pop().strip()
            merged[-1] = merged[-1] + txt + line.strip()
            continue
        merged.append(line)
    return "\n".join(merged)


def _message_json(msg: Message, request: bool) -> dict[str, Any]:
    raw = base64.b64encode(msg.head + bytes(msg.body)).decode("ascii")
    if request:
        return {"method": msg.method, "proto": msg.version, "headers": go_headers(msg.headers),
                "uri": msg.uri, "raw": raw}
    return {"status": f"{msg.status} {msg.reason}".strip(), "status_code": msg.status, "proto": msg.version,
            "headers": go_headers(msg.headers), "raw": raw}


def entry_json(entry: Entry, *, views: bool = False) -> dict[str, Any]:
    """ngrok's capture detail; `views` adds the rendered bodies and header lists for the UI."""
    d = entry.duration
    out: dict[str, Any] = {
        "uri": f"/api/requests/http/{entry.id}",
        "id": entry.id,
        "tunnel_name": entry.tunnel_name,
        "remote_addr": entry.remote_addr,
        "start": rfc3339(entry.start),
        "duration": int(d * 1e9) if d is not None else 0,
        "request": _message_json(entry.request, True) if entry.request else None,
        "response": _message_json(entry.response, False) if entry.response else None,
        "replay_of": entry.replay_of,
        "websocket": _ws(entry),
        "error": entry.error,
    }
    if views:
        for key, msg in (("request", entry.request), ("response", entry.response)):
            if msg is not None:
                out[key]["body"] = body_view(msg)
                out[key]["header_list"] = [[k, v] for k, v in msg.headers]
                out[key]["truncated"] = msg.truncated
    return out


def _ws(entry: Entry) -> dict[str, Any] | None:
    if not entry.websocket:
        return None
    return {"frames_in": entry.ws_frames_in, "frames_out": entry.ws_frames_out, "closed": entry.ws_closed}


def summary_json(entry: Entry) -> dict[str, Any]:
    """One row of the UI's list."""
    req, resp = entry.request, entry.response
    d = entry.duration
    return {
        "id": entry.id,
        "tunnel_name": entry.tunnel_name,
        "method": req.method if req else "",
        "path": req.uri if req else "",
        "status_code": resp.status if resp else None,
        "duration_ms": round(d * 1000, 3) if d is not None else None,
        "size": resp.body_size if resp else 0,
        "start": rfc3339(entry.start),
        "remote_addr": entry.remote_addr,
        "replay_of": entry.replay_of,
        "websocket": _ws(entry),
        "error": entry.error,
    }


def matches(entry: Entry, path: str = "", status: str = "", min_ms: float | None = None) -> bool:
    """The UI's filters: path substring, status ("404", "4xx", "4"), duration at least min_ms."""
    if path and (entry.request is None or path not in entry.request.uri):
        return False
    if status:
        code = str(entry.response.status) if entry.response else ""
        want = status.lower().rstrip("x")
        if not code.startswith(want):
            return False
    if min_ms is not None:
        d = entry.duration
        if d is None or d * 1000 < min_ms:
            return False
    return True
