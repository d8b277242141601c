"""Sealed cookies (edge/modules/session.py): bytes and time only."""
from __future__ import annotations

import base64
import os

import pytest

from edge.modules.session import (
    MAX_VALUE, Sealer, SessionKeyError, clear_cookie, cookie_value, load_key_file, new_key_file, set_cookie,
)

KEY = bytes(range(32))
NOW = 1_800_000_000.0


def test_a_sealed_value_opens_with_the_same_key_and_purpose_until_it_expires():
    s = Sealer(KEY)
    v = s.seal("session:demo.app.lab.test", {"sub": "u1", "email": "a@example.test"}, NOW, 3600)
    assert v.startswith("v1.") and "a@example.test" not in v          # encrypted, not just signed
    assert s.open("session:demo.app.lab.test", v, NOW + 10) == ({"sub": "u1", "email": "a@example.test"}, NOW)
    assert Sealer(KEY).open("session:demo.app.lab.test", v, NOW + 3599) is not None  # another PoP, same key
    assert s.open("session:demo.app.lab.test", v, NOW + 3600) is None              # expired
    assert s.open("session:other.app.lab.test", v, NOW) is None                    # another endpoint
    assert s.open("login:demo.app.lab.test", v, NOW) is None                       # another purpose


def test_tampered_foreign_or_malformed_values_open_to_none_never_raise():
    s = Sealer(KEY)
    v = s.seal("p", {"a": 1}, NOW, 60)
    raw = bytearray(base64.urlsafe_b64decode(v[3:] + "=" * (-len(v[3:]) % 4)))
    for i in (0, 12, len(raw) - 1):                     # nonce, ciphertext, tag
        bad = bytearray(raw)
        bad[i] ^= 1
        assert s.open("p", "v1." + base64.urlsafe_b64encode(bytes(bad)).decode().rstrip("="), NOW) is None
    assert Sealer(bytes(32)).open("p", v, NOW) is None  # another deployment's key
    for junk in ("", None, "v1.", "v2." + v[3:], "v1.!!!!", "v1." + "A" * 10, v[:-5], "x" * (MAX_VALUE + 1)):
        assert s.open("p", junk, NOW) is None


def test_values_issued_far_in_the_future_are_refused_small_clock_skew_is_not():
    s = Sealer(KEY)
    assert s.open("p", s.seal("p", 1, NOW + 200, 600), NOW) == (1, NOW + 200)
    assert s.open("p", s.seal("p", 1, NOW + 400, 600), NOW) is None


def test_a_value_too_big_for_a_cookie_is_refused_when_sealed():
    with pytest.raises(ValueError, match="does not fit in a cookie"):
        Sealer(KEY).seal("p", "x" * 4000, NOW, 60)


def test_the_key_never_shows_in_repr():
    assert KEY.hex() not in repr(Sealer(KEY)) and "hidden" in repr(Sealer(KEY))
    with pytest.raises(ValueError):
        Sealer(b"short")


def test_key_files_are_0600_base64_of_32_bytes(tmp_path):
    p = new_key_file(tmp_path / "session.key")
    assert os.stat(p).st_mode & 0o777 == 0o600
    assert len(load_key_file(p)) == 32
    with pytest.raises(FileExistsError):
        new_key_file(p)                                  # never overwrite a deployment's key
    os.chmod(p, 0o644)
    with pytest.raises(SessionKeyError, match="read by others.*chmod 600"):
        load_key_file(p)
    bad = tmp_path / "bad.key"
    bad.write_text("not base64 at all!\n")
    os.chmod(bad, 0o600)
    with pytest.raises(SessionKeyError, match="not base64"):
        load_key_file(bad)
    bad.write_text(base64.b64encode(b"x" * 16).decode() + "\n")
    with pytest.raises(SessionKeyError, match="16 bytes, expected 32"):
        load_key_file(bad)
    with pytest.raises(SessionKeyError, match="cannot read"):
        load_key_file(tmp_path / "missing.key")


def test_cookies_are_host_only_secure_and_http_only():
    c = set_cookie("__Host-gslb_session", "v1.abc", 3600)
    assert c == "__Host-gslb_session=v1.abc; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=3600"
    assert "Domain" not in c
    assert clear_cookie("x").endswith("Max-Age=0") and clear_cookie("x").startswith("x=;")
    with pytest.raises(ValueError):
        set_cookie("x", "y", None, same_site="lax")
    header = 'a=1; __Host-gslb_session="v1.abc"; __Host-gslb_session=second; b'
    assert cookie_value(header, "__Host-gslb_session") == "v1.abc"
    assert cookie_value(header, "missing") is None and cookie_value(None, "a") is None
