"""Headless Chromium (Debian's /usr/bin/chromium through PyPI playwright)
through a SAML login, for tests/integration/test_lab_saml.py. Run inside a
lab client host (`ip netns exec`), never from root.

    python saml_chromium.py login URL --user U --password P --state FILE
    python saml_chromium.py reuse URL --state FILE

`login` opens URL (the edge redirects to the lab IdP), fills in the IdP's
login form and submits it; the IdP's page POSTs the SAMLResponse to the
edge's /saml/acs by its own JavaScript (the HTTP-POST binding as a browser
runs it); waits to be back at URL and saves the cookies to FILE. `reuse`
opens URL with them (another client host: another PoP). Prints one JSON
object: the final URL, the page's text, every request (method, URL without
query). The lab CA is not in Chromium's store in a client namespace, so
certificate errors are ignored here; the aiohttp browser of
test_lab_saml.py verifies the chain against the lab CA.
"""
from __future__ import annotations

import argparse
import json
import sys

from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("cmd", choices=("login", "reuse"))
    p.add_argument("url")
    p.add_argument("--user", default="")
    p.add_argument("--password", default="")
    p.add_argument("--state", required=True)
    a = p.parse_args()
    seen: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            ctx = browser.new_context(ignore_https_errors=True,
                                      storage_state=a.state if a.cmd == "reuse" else None)
            page = ctx.new_page()
            page.on("request", lambda r: seen.append(r.method + " " + r.url.split("?")[0]))
            page.goto(a.url, timeout=20000)
            if a.cmd == "login":
                page.wait_for_selector("input[name=username]", timeout=20000)
                page.fill("input[name=username]", a.user)
                page.fill("input[name=password]", a.password)
                page.click("input[type=submit]")
                page.wait_for_url(a.url, timeout=20000)
                ctx.storage_state(path=a.state)
            print(json.dumps({"url": page.url, "text": page.inner_text("body"), "requests": seen}))
        finally:
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
