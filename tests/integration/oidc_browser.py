"""A browser-like HTTP client for the OIDC tests: follows redirects one by one,
carries cookies (a real cookie jar: aiohttp's), and fills in the lab IdP's
login form. Run inside a lab client host (`ip netns exec`), never from root.

    python oidc_browser.py login URL --ca CA --user U --password P [--jar FILE] [--method POST]
    python oidc_browser.py get URL --ca CA [--jar FILE]

Prints one JSON object: the chain of (method, url, status), the final status
and body (the upstream's JSON when it is one), and the cookies kept; --jar
saves the jar to FILE (and loads it first when it exists), so another client
host can reuse the session.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import re
import ssl
import sys
from pathlib import Path
from urllib.parse import urljoin

import aiohttp

MAX_HOPS = 20


async def run(args: argparse.Namespace) -> dict:
    ctx = ssl.create_default_context(cafile=args.ca)
    jar = aiohttp.CookieJar()
    if args.jar and Path(args.jar).exists():
        jar.load(args.jar)  # aiohttp's own format
    chain = []
    async with aiohttp.ClientSession(cookie_jar=jar, connector=aiohttp.TCPConnector(ssl=ctx),
                                     timeout=aiohttp.ClientTimeout(total=20)) as s:
        method, url, data = args.method, args.url, (b"payload" if args.method == "POST" else None)
        status, body = 0, ""
        form_done = False
        extra = dict(h.split(": ", 1) for h in args.header)
        for _ in range(MAX_HOPS):
            async with s.request(method, url, data=data, allow_redirects=False, headers=extra) as r:
                extra = {}
                body = (await r.read()).decode("utf-8", "replace")
                status = r.status
                chain.append([method, url.split("?")[0], status])
                if status in (301, 302, 303, 307, 308):
                    url = urljoin(url, r.headers["Location"])
                    if status in (302, 303):
                        method, data = "GET", None
                    if args.stop_at_callback and url.split("?")[0].endswith("/oauth2/callback"):
                        break
                    continue
            m = re.search(r'<form method="post" action="([^"]+)" id="login">', body)
            if status == 200 and m and args.cmd == "login" and not form_done:
                form_done = True
                method, url = "POST", urljoin(url, m.group(1))
                data = {"username": args.user, "password": args.password}
                continue
            break
        if args.jar:
            jar.save(args.jar)
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        return {"chain": chain, "status": status, "json": parsed, "body": body[:2000], "next": url,
                "cookies": sorted({c.key for c in jar})}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("cmd", choices=("login", "get"))
    p.add_argument("url")
    p.add_argument("--ca", required=True)
    p.add_argument("--user", default="")
    p.add_argument("--password", default="")
    p.add_argument("--jar")
    p.add_argument("--method", default="GET")
    p.add_argument("--stop-at-callback", action="store_true", help="stop before following the redirect to "
                   "/oauth2/callback ('next' is its URL)")
    p.add_argument("--header", action="append", default=[], help="NAME: VALUE sent with the first request")
    print(json.dumps(asyncio.run(run(p.parse_args()))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
