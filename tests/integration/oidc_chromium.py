"""Headless Chromium (Debian's /usr/bin/chromium through PyPI playwright)
through an OIDC login, for tests/integration/test_lab_oidc.py. Run inside a
lab client host (`ip netns exec`), never from root.

    python oidc_chromium.py login URL --user U --password P --state FILE
    python oidc_chromium.py reuse URL --state FILE

`login` opens URL, fills in the lab IdP's login form, waits to be back at
URL, saves the browser's storage state (its cookies) to FILE; `reuse` opens
URL with that state (another client host: another PoP). Prints one JSON
object: the final URL, the page's text (the upstream's JSON), and every URL
the browser requested. The lab CA is not in Chromium's store in a client
namespace, so certificate errors are ignored here; the HTTP client tests
(oidc_browser.py) verify the chain against the lab CA.
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
                page.wait_for_selector("#username", timeout=20000)
                page.fill("#username", a.user)
                page.fill("#password", a.password)
                page.click("#submit")
                page.wait_for_url(a.url, timeout=20000)
                ctx.storage_state(path=a.state)
            text = page.inner_text("body")
            print(json.dumps({"url": page.url, "text": text, "requests": seen}))
        finally:
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
