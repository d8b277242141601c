"""The inspector's web UI and JSON API (aiohttp), by default on 127.0.0.1:4040.

The API follows ngrok's agent API (https://ngrok.com/docs/agent/api/) so that
tools written for it work: `GET /api/tunnels`, `GET /api/requests/http`
(?limit, ?tunnel_name), `GET /api/requests/http/:id`, `POST
/api/requests/http {"id", "tunnel_name"?}` (replay, 204), `DELETE
/api/requests/http` (clear, 204). Additions: the list takes ?summary=1,
?path, ?status, ?min_ms and carries `version`; a replay may carry `method`,
`path`, `headers` and `body` edits; `GET /api/requests/http/:id?views=1` adds
rendered bodies; `?unless_version=V` answers `{"unchanged": true}` while the
store's version is still V (the page polls with it).

Replays go from the agent straight to the endpoint's local upstream (as
ngrok's do) and are captured as new entries with `replay_of`.

Security: the server answers only requests whose Host is localhost,
127.0.0.1, [::1] or the configured address (a DNS-rebinding page's Host is
its own name), refuses a cross-site Origin on anything that changes state,
and takes JSON only (a cross-site form cannot send application/json without
a CORS preflight, which is never granted). Request data reaches the page as
JSON and is shown with textContent only (static/app.js).

Owns: the HTTP side of the inspector. Must not touch: the relay.
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from aiohttp import web

from edge.agent.inspect.capture import HttpCapture
from edge.agent.inspect.render import entry_json, matches, summary_json
from edge.agent.inspect.store import Entry, Store
from plumbing.kvlog import kv

log = logging.getLogger("edge.agent.inspect")

DEFAULT_ADDR = "127.0.0.1:4040"
PORT_TRIES = 10               # 4040 busy -> 4041 ... 4049
REPLAY_TIMEOUT = 30.0
MAX_API_BODY = 2 * 1024 * 1024
STATIC = Path(__file__).with_name("static")
_STATIC_FILES = {"app.js": "application/javascript", "app.css": "text/css"}
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")   # RFC 9110 5.6.2
_FRAMING = {"content-length", "transfer-encoding", "connection", "keep-alive", "proxy-connection", "te",
            "trailer", "upgrade"}


@dataclass(frozen=True, slots=True)
class Tunnel:
    name: str
    public_url: str
    proto: str        # https | tls | tcp
    host: str
    port: int
    inspect: bool

    def json(self) -> dict[str, Any]:
        return {"name": self.name, "uri": f"/api/tunnels/{self.name}", "public_url": self.public_url,
                "proto": self.proto, "config": {"addr": f"{self.host}:{self.port}", "inspect": self.inspect}}


def tunnel_name(ep: Any) -> str:
    return ep.name or f"{ep.kind}-{ep.port}"


class ApiError(Exception):
    def __init__(self, status: int, msg: str) -> None:
        super().__init__(msg)
        self.status, self.msg = status, msg


class Inspector:
    """The store, the captures that fill it, and the tunnels the agents bound."""

    def __init__(self, store: Store | None = None, *, now: Callable[[], float] = time.time,
                 allowed_hosts: Iterable[str] = ()) -> None:
        self.store = store if store is not None else Store()
        self.now = now
        self.agents: list[Any] = []
        self.allowed_hosts = {"localhost", "127.0.0.1", "::1", *(h.lower() for h in allowed_hosts)}
        self.url: str | None = None
        self._replays: set[asyncio.Task[None]] = set()

    # -- what the agent calls ---------------------------------------------
    def new_capture(self, ep: Any, remote_addr: str) -> HttpCapture:
        return HttpCapture(self.store, tunnel_name(ep), remote_addr, self.now)

    def tunnels(self) -> list[Tunnel]:
        seen: dict[str, Tunnel] = {}
        for agent in self.agents:
            for f in agent.forwardings:
                ep = f.endpoint
                proto = "https" if ep.kind == "http" else ep.kind
                seen.setdefault(f.url, Tunnel(tunnel_name(ep), f.url, proto, ep.host, ep.port, ep.kind == "http"))
        return list(seen.values())

    def _endpoint_of(self, name: str) -> Tunnel | None:
        for t in self.tunnels():
            if t.name == name and t.inspect:
                return t
        return None

    # -- replay -----------------------------------------------------------
    def replay_bytes(self, entry: Entry, edits: dict[str, Any]) -> bytes:
        """The request to send again, with the edits; ApiError if it cannot be."""
        req = entry.request
        if req is None:
            raise ApiError(400, "the entry has no request")
        method = edits.get("method", req.method)
        path = edits.get("path", req.uri)
        if not isinstance(method, str) or not _TOKEN.match(method):
            raise ApiError(400, "method: not an HTTP method token")
        if not isinstance(path, str) or not path or len(path) > 8192 or not (path.startswith("/") or path == "*") \
                or any(c <= " " or c == "\x7f" for c in path):
            raise ApiError(400, "path: must start with '/' and hold no spaces or control characters")
        if "headers" in edits:
            raw_headers = edits["headers"]
            if isinstance(raw_headers, dict):
                pairs = []
                for k, v in raw_headers.items():
                    pairs.extend((k, x) for x in (v if isinstance(v, list) else [v]))
            elif isinstance(raw_headers, list) and all(isinstance(p, list) and len(p) == 2 for p in raw_headers):
                pairs = [(p[0], p[1]) for p in raw_headers]
            else:
                raise ApiError(400, "headers: an object of name -> value(s) or a list of [name, value]")
            headers = []
            for k, v in pairs:
                if not isinstance(k, str) or not isinstance(v, str) or not _TOKEN.match(k) \
                        or any(c in v for c in "\r\n\x00"):
                    raise ApiError(400, f"headers: bad field {str(k)[:40]!r}")
                headers.append((k, v))
        else:
            headers = list(req.headers)
        if "body" in edits:
            if not isinstance(edits["body"], str):
                raise ApiError(400, "body: must be a string")
            body = edits["body"].encode("utf-8")
        else:
            if req.truncated or not req.done:
                raise ApiError(409, "the captured body is incomplete (truncated or cut short): edit the body to replay")
            body = bytes(req.body)
        if len(body) > self.store.body_cap:
            raise ApiError(413, f"body over the capture cap of {self.store.body_cap} bytes")
        lines = [f"{method} {path} HTTP/1.1"]
        if not any(k.lower() == "host" for k, _ in headers):
            # RFC 9112 3.2: HTTP/1.1 requests carry Host; the original's, if an edit dropped it
            host = next((v for k, v in req.headers if k.lower() == "host"), "localhost")
            headers = [("Host", host), *headers]
        lines += [f"{k}: {v}" for k, v in headers if k.lower() not in _FRAMING]
        if body or method.upper() in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}")
        lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace") + body

    async def replay(self, entry_id: str, edits: dict[str, Any], tunnel: str | None = None) -> Entry:
        """Send a captured request again to its endpoint's upstream; return the new entry
        once sent (the response is read in the background, bounded in time)."""
        entry = self.store.get(entry_id)
        if entry is None:
            raise ApiError(404, f"no captured request {entry_id!r}")
        target = self._endpoint_of(tunnel or entry.tunnel_name)
        if target is None:
            raise ApiError(404, f"no HTTP tunnel {tunnel or entry.tunnel_name!r} is bound now")
        data = self.replay_bytes(entry, edits)
        capture = HttpCapture(self.store, target.name, "replay", self.now, replay_of=entry.id)
        loop = asyncio.get_running_loop()
        try:
            transport, proto = await asyncio.wait_for(
                loop.create_connection(lambda: _ReplayProtocol(capture), target.host, target.port), 5.0)
        except (OSError, asyncio.TimeoutError) as exc:
            raise ApiError(502, f"upstream {target.host}:{target.port} unreachable: {exc}") from None
        transport.write(data)
        capture.feed_request(data)
        log.info(kv("replay", of=entry.id, tunnel=target.name, bytes=len(data)))
        task = loop.create_task(proto.wait(transport))  # type: ignore[attr-defined]
        self._replays.add(task)
        task.add_done_callback(self._replays.discard)
        assert capture.last_entry is not None
        return capture.last_entry

    # -- web --------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=MAX_API_BODY)
        r = app.router
        r.add_get("/", self._index)
        r.add_get("/static/{name}", self._static)
        r.add_get("/api/", self._root)
        r.add_get("/api/tunnels", self._tunnels)
        r.add_get("/api/tunnels/{name}", self._tunnel)
        r.add_get("/api/requests/http", self._list)
        r.add_post("/api/requests/http", self._replay)
        r.add_delete("/api/requests/http", self._clear)
        r.add_get("/api/requests/http/{id}", self._detail)
        return app

    def host_allowed(self, host_header: str | None) -> bool:
        if not host_header:
            return False
        h = host_header.strip().lower()
        if h.startswith("["):
            name = h[1:h.find("]")] if "]" in h else ""
        else:
            name = h.rsplit(":", 1)[0] if h.count(":") == 1 else h
        return name in self.allowed_hosts

    @web.middleware
    async def _guard(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        if not self.host_allowed(request.headers.get("Host")):
            # DNS rebinding: a page of another site that resolves to 127.0.0.1
            return _error(403, "Host not allowed: use http://127.0.0.1 or http://localhost")
        if request.method not in ("GET", "HEAD"):
            origin = request.headers.get("Origin")
            if origin is not None and not self.host_allowed(origin.split("://", 1)[-1]):
                return _error(403, "cross-site request refused")
        try:
            resp = await handler(request)
        except ApiError as exc:
            resp = _error(exc.status, exc.msg)
        resp.headers.setdefault("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'")
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=(STATIC / "index.html").read_bytes(), content_type="text/html", charset="utf-8")

    async def _static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in _STATIC_FILES:
            raise ApiError(404, "not found")
        return web.Response(body=(STATIC / name).read_bytes(), content_type=_STATIC_FILES[name], charset="utf-8")

    async def _root(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"uri": "/api/", "tunnels_uri": "/api/tunnels", "requests_uri": "/api/requests/http",
                                  "store": self.store.stats()})

    async def _tunnels(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"tunnels": [t.json() for t in self.tunnels()], "uri": "/api/tunnels"})

    async def _tunnel(self, request: web.Request) -> web.StreamResponse:
        for t in self.tunnels():
            if t.name == request.match_info["name"]:
                return web.json_response(t.json())
        raise ApiError(404, "no such tunnel")

    async def _list(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        try:
            limit = int(q.get("limit", "50"))
            min_ms = float(q["min_ms"]) if q.get("min_ms") else None
        except ValueError:
            raise ApiError(400, "limit and min_ms must be numbers") from None
        limit = max(0, min(limit, self.store.max_entries))
        if q.get("unless_version") == str(self.store.version):
            # the page's poll when nothing changed: no list built, no rows sent
            return web.json_response({"uri": "/api/requests/http", "unchanged": True, "version": self.store.version})
        tunnel = q.get("tunnel_name")
        path, status = q.get("path", ""), q.get("status", "")
        out = []
        for e in self.store.entries():
            if len(out) >= limit:
                break
            if (tunnel and e.tunnel_name != tunnel) or e.request is None or not matches(e, path, status, min_ms):
                continue
            out.append(summary_json(e) if q.get("summary") else entry_json(e))
        return web.json_response({"uri": "/api/requests/http", "requests": out, "version": self.store.version,
                                  "store": self.store.stats()})

    async def _detail(self, request: web.Request) -> web.StreamResponse:
        e = self.store.get(request.match_info["id"])
        if e is None:
            raise ApiError(404, "no such captured request")
        return web.json_response(entry_json(e, views=bool(request.query.get("views"))))

    async def _replay(self, request: web.Request) -> web.StreamResponse:
        if request.content_type != "application/json":
            raise ApiError(415, "send application/json")
        try:
            body = await request.json()
        except ValueError:
            raise ApiError(400, "the body is not JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            raise ApiError(400, 'expected {"id": "...", "tunnel_name"?: "..."}')
        tunnel = body.get("tunnel_name")
        if tunnel is not None and not isinstance(tunnel, str):
            raise ApiError(400, "tunnel_name: must be a string")
        edits = {k: body[k] for k in ("method", "path", "headers", "body") if k in body}
        new = await self.replay(body["id"], edits, tunnel)
        return web.Response(status=204, headers={"Location": f"/api/requests/http/{new.id}"})

    async def _clear(self, request: web.Request) -> web.StreamResponse:
        self.store.clear()
        return web.Response(status=204)

    # -- lifecycle --------------------------------------------------------
    async def start(self, host: str, port: int, tries: int = PORT_TRIES) -> web.AppRunner:
        """Listen on host:port, or the next free of `tries` ports; OSError if none."""
        self.allowed_hosts.add(host.lower())
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        last: OSError | None = None
        for p in range(port, port + max(1, tries)) if port else [0]:
            try:
                site = web.TCPSite(runner, host, p)
                await site.start()
                bound = runner.addresses[-1][1]
                shown = f"[{host}]" if ":" in host else host
                self.url = f"http://{shown}:{bound}"
                log.info(kv("inspector_listening", url=self.url, max_entries=self.store.max_entries,
                            max_bytes=self.store.max_bytes))
                return runner
            except OSError as exc:
                last = exc
        await runner.cleanup()
        raise last or OSError("no port")


class _ReplayProtocol(asyncio.Protocol):
    def __init__(self, capture: HttpCapture) -> None:
        self.capture = capture
        self.done = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.capture.feed_response(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.capture.close()
        if not self.done.done():
            self.done.set_result(None)

    async def wait(self, transport: asyncio.Transport) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(self.done), REPLAY_TIMEOUT)
        except asyncio.TimeoutError:
            transport.abort()
            self.capture.close()


def _error(status: int, msg: str) -> web.Response:
    return web.json_response({"status_code": status, "msg": msg, "details": {}}, status=status)


def parse_inspect(value: str) -> tuple[str, int] | None:
    """'ADDR:PORT', 'PORT', 'false'/'off' -> (host, port) or None (off); ValueError if bad.
    Port 0: any free port (the agent prints the URL)."""
    v = value.strip()
    if v.lower() in ("false", "off", "no", "0"):
        return None
    if v.lower() in ("true", "on", "yes"):
        v = DEFAULT_ADDR
    if v.isdigit():
        v = f"127.0.0.1:{v}"
    from plumbing.addr import split_host_port

    host, port = split_host_port(v, 4040)
    if not host or not 0 <= port <= 65535:
        raise ValueError(f"{value!r}: expected ADDR:PORT (e.g. 127.0.0.1:4040) or false")
    return host, port
