"""A headless Chromium (Debian's /usr/bin/chromium, driven by playwright) that goes
through a login at the lab's idp host, for tests/integration/test_lab_oidc.py
(OpenID Connect) and test_lab_saml.py (SAML 2.0). Run inside a client host:

    python login_chromium.py login URL --form oidc|saml --user U --password P --state FILE
    python login_chromium.py reuse URL --state FILE

`login` opens URL (the edge redirects to the IdP), fills in the IdP's login
form (`--form`: which IdP's fields) and submits it (with SAML the IdP's page
then POSTs the SAMLResponse to the edge's /saml/acs by its own JavaScript, the
HTTP-POST binding as a browser runs it), waits to be back at URL and saves
the browser's storage state (its cookies) to FILE; `reuse` opens URL with
that state (another client host: another PoP). Prints one JSON object: the
final URL, the page's text (the upstream's JSON), and every request (method,
URL without query). The lab CA is not in Chromium's store in a client
namespace, so certificate errors are ignored here; the HTTP-client tests of
both files verify the chain against the lab CA.
"""
from __future__ import annotations

import argparse
import json
import sys

from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
# The login form's (user, password, submit) of each lab IdP: oidc-provider's page, pysaml2's IdP.
FORMS = {"oidc": ("#username", "#password", "#submit"),
         "saml": ("input[name=username]", "input[name=password]", "input[type=submit]")}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("cmd", choices=("login", "reuse"))
    p.add_argument("url")
    p.add_argument("--form", choices=sorted(FORMS), default="oidc")
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
                user, password, submit = FORMS[a.form]
                page.wait_for_selector(user, timeout=20000)
                page.fill(user, a.user)
                page.fill(password, a.password)
                page.click(submit)
                page.wait_for_url(a.url, timeout=20000)
                ctx.storage_state(path=a.state)
            text = page.inner_text("body")
            print(json.dumps({"url": page.url, "text": text, "requests": seen}))
        finally:
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
