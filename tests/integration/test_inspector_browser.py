"""The inspector's web UI in a real headless browser (Debian's chromium,
driven by playwright with executable_path: playwright's own browser download
is not used): the list updates live while curl sends requests through the
edge, a replay shows up as a new entry and reaches the upstream, an edited
replay sends the edits, filters narrow the list, a `<script>` path is shown
as text. Screenshots go to the test's tmp dir; their paths are printed."""
from __future__ import annotations

import os
import re

import pytest

from _inspector_net import Net, poll
from _tools import need_tools

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

CHROMIUM = "/usr/bin/chromium"


def _missing(msg: str) -> None:
    """Skip locally, fail in CI (the rule of tests/_tools.py)."""
    if os.environ.get("CI"):
        pytest.fail(f"CI: {msg}")
    pytest.skip(msg)


def _playwright():
    if not os.path.exists(CHROMIUM):
        _missing(f"needs {CHROMIUM} (Debian package chromium): run `make install`")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("needs the PyPI package playwright (the test extras: `make install`)")
    return sync_playwright


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    _playwright()  # the clear message before anything starts
    n = Net(tmp_path_factory.mktemp("inspect-ui"))
    yield n
    n.stop()


@pytest.fixture(scope="module")
def page(net):
    sync_playwright = _playwright()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        pg = browser.new_page(viewport={"width": 1400, "height": 900})
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.on("dialog", lambda d: (errors.append("dialog: " + d.message), d.dismiss()))
        pg.errors = errors
        pg.goto(net.inspector + "/")
        yield pg
        browser.close()


def rows(page) -> list[dict]:
    return page.eval_on_selector_all("#list tbody tr.entry", """trs => trs.map(tr => ({
        id: tr.dataset.id, replay: tr.classList.contains('replay'),
        method: tr.querySelector('.method').textContent, path: tr.querySelector('.path').textContent,
        status: tr.querySelector('.status').textContent, duration: tr.querySelector('.duration').textContent,
        size: tr.querySelector('.size').textContent, client: tr.querySelector('.client').textContent}))""")


def shot(page, tmp_path, capsys, name: str) -> None:
    """A full-page screenshot under the test's tmp dir; its path goes to the
    terminal even when pytest captures output."""
    path = tmp_path / f"inspector-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    with capsys.disabled():
        print(f"\nscreenshot: {path}")


@need_tools(CHROMIUM, "curl")
def test_list_updates_live_while_curl_sends_requests(net, page, tmp_path, capsys):
    net.api("/api/requests/http", "DELETE")
    poll("empty list", lambda: rows(page) == [])
    for i in range(3):
        assert net.curl(f"/live/{i}").returncode == 0
        # each request shows up without a reload
        poll(f"row for /live/{i}", lambda: any(r["path"] == f"/live/{i}" and r["status"] == "200" for r in rows(page)))
    got = rows(page)
    assert [r["path"] for r in got] == ["/live/2", "/live/1", "/live/0"]  # newest first
    assert all(r["method"] == "GET" and r["client"] == "127.0.0.1" and re.fullmatch(r"\d+\.\d+ m?s", r["duration"])
               for r in got), got
    net.curl("/status/404")
    poll("the 404 row", lambda: any(r["status"] == "404" for r in rows(page)))
    shot(page, tmp_path, capsys, "live-list")
    page.fill("#f-status", "4xx")
    poll("only the 404 under the 4xx filter", lambda: [r["path"] for r in rows(page)] == ["/status/404"])
    page.fill("#f-status", "")
    page.fill("#f-path", "/live/1")
    poll("only /live/1 under the path filter", lambda: [r["path"] for r in rows(page)] == ["/live/1"])
    page.fill("#f-path", "")
    poll("all rows back", lambda: len(rows(page)) == 4)
    assert page.errors == []


@need_tools(CHROMIUM, "curl")
def test_details_and_replay_from_the_ui_reach_the_upstream(net, page, tmp_path, capsys):
    r = net.curl("/webhook", "-H", "Content-Type: application/json", "-H", "X-Signature: abc",
                 "--data-binary", '{"event": "push", "n": 1}')
    assert r.returncode == 0
    poll("the webhook row", lambda: any(x["path"] == "/webhook" for x in rows(page)))
    page.click("#list tbody tr.entry:has(td.path:text-is('/webhook'))")
    page.wait_for_selector("#detail:not([hidden])")
    poll("the details", lambda: page.text_content("#d-title") == "POST /webhook")
    headers = page.text_content("#d-req-headers")
    assert "X-Signature" in headers and "abc" in headers and "X-Forwarded-For" in headers
    assert page.text_content("#d-req-body") == '{\n  "event": "push",\n  "n": 1\n}'  # pretty-printed
    shot(page, tmp_path, capsys, "details")
    before = len(net.up.seen)
    page.click("#replay")
    poll("the upstream got the replay", lambda: len(net.up.seen) > before)
    assert net.up.seen[-1][1] == "/webhook" and net.up.seen[-1][3] == b'{"event": "push", "n": 1}'
    replayed = poll("a replay row", lambda: [x for x in rows(page) if x["replay"] and x["path"] == "/webhook"])
    assert replayed[0]["client"] == "replay"
    # edited replay: method, path, a header and the body
    page.click("#edit-toggle")
    page.fill("#edit-method", "PUT")
    page.fill("#edit-path", "/edited?v=2")
    page.fill("#edit-headers", page.input_value("#edit-headers") + "\nX-Edited: yes")
    page.fill("#edit-body", "changed")
    before = len(net.up.seen)
    page.click("#edit-send")
    poll("the upstream got the edited replay", lambda: len(net.up.seen) > before)
    method, path, hdrs, body = net.up.seen[-1]
    assert (method, path, hdrs.get("X-Edited"), body) == ("PUT", "/edited?v=2", "yes", b"changed")
    poll("the edited replay row", lambda: any(x["replay"] and x["path"] == "/edited?v=2" for x in rows(page)))
    shot(page, tmp_path, capsys, "replayed")
    assert page.errors == []


@need_tools(CHROMIUM, "curl")
def test_script_in_a_path_is_shown_as_text(net, page, tmp_path, capsys):
    evil = "/<script>window.__pwned=1</script><svg/onload=window.__pwned=2>"
    r = net.curl(evil, "--path-as-is", "-g")
    assert r.returncode == 0, r.stderr
    eid = poll("the evil path captured", lambda: [e["id"] for e in net.api("/api/requests/http?limit=5")[2]["requests"]
                                                  if e["request"]["uri"] == evil])[0]
    row = poll("its row", lambda: [x for x in rows(page) if x["id"] == eid])[0]
    assert page.evaluate("window.__pwned === undefined"), "request data ran as script in the list"
    assert row["path"] == evil
    page.click(f"#list tbody tr.entry[data-id='{eid}']")
    poll("its details", lambda: page.text_content("#d-title") == "GET " + evil)
    assert page.evaluate("window.__pwned === undefined")
    assert page.eval_on_selector_all("#list script, #list svg, #detail script, #detail svg", "els => els.length") == 0
    shot(page, tmp_path, capsys, "xss-as-text")
    assert page.errors == []


@need_tools(CHROMIUM, "curl")
def test_binary_body_as_hex_and_clear(net, page, tmp_path, capsys):
    net.curl("/bin", "-o", "/dev/null")
    poll("the /bin row", lambda: any(x["path"] == "/bin" for x in rows(page)))
    page.click("#list tbody tr.entry:has(td.path:text-is('/bin'))")
    poll("hex dump", lambda: (page.text_content("#d-resp-body") or "").startswith("00000000  00 01 02 03"))
    assert "binary" in page.text_content("#d-resp-meta")
    page.click("#clear")
    poll("an empty list after Clear", lambda: rows(page) == [])
    assert net.api("/api/requests/http")[2]["requests"] == []
