"""plumbing.privileges: --user parsing, the drop (in a forked child, as root), and the CLIs' answers."""
from __future__ import annotations

import grp
import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from plumbing.privileges import Identity, PrivilegeError, drop_privileges, preload, resolve_user

ROOT = Path(__file__).resolve().parents[1]
NOBODY = pwd.getpwnam("nobody")


def test_user_alone_takes_its_primary_group():
    ident = resolve_user("nobody")
    assert (ident.user, ident.uid, ident.gid) == ("nobody", NOBODY.pw_uid, NOBODY.pw_gid)
    assert ident.group == grp.getgrgid(NOBODY.pw_gid).gr_name


def test_user_and_group_by_name_or_number():
    g = grp.getgrnam("nogroup")
    assert resolve_user("nobody:nogroup") == Identity("nobody", NOBODY.pw_uid, "nogroup", g.gr_gid)
    assert resolve_user(f"{NOBODY.pw_uid}:{g.gr_gid}") == Identity("nobody", NOBODY.pw_uid, "nogroup", g.gr_gid)


@pytest.mark.parametrize("spec, message", [
    ("no-such-user-gde", "no such user"),
    ("nobody:no-such-group-gde", "no such group 'no-such-group-gde'"),
    ("nobody:", "expected USER or USER:GROUP"),
    (":nogroup", "expected USER or USER:GROUP"),
    ("nobody:nogroup:x", "expected USER or USER:GROUP"),
    ("root", "that is root"),
    ("nobody:root", "that is root"),
    ("0", "that is root"),
])
def test_bad_user_specs_say_what_is_wrong(spec, message):
    with pytest.raises(PrivilegeError, match=message.replace("(", r"\(")):
        resolve_user(spec)


def _in_child(fn) -> dict:
    """Run fn() in a forked child (the drop is for good); its JSON-able result or its error."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            out = {"ok": fn()}
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            out = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(data)


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root (CI runs as root)")
def test_drop_sets_every_id_clears_groups_and_root_is_out_of_reach():
    def drop() -> dict:
        os.setgroups([0, 4])          # supplementary groups root had: must be gone after
        drop_privileges(resolve_user("nobody:nogroup"), component="test")
        try:
            os.setuid(0)
            back = True
        except PermissionError:
            back = False
        try:
            os.setgid(0)
            back_gid = True
        except PermissionError:
            back_gid = False
        return {"uid": os.getresuid(), "gid": os.getresgid(), "groups": os.getgroups(), "back": back,
                "back_gid": back_gid}
    got = _in_child(drop)["ok"]
    g = grp.getgrnam("nogroup").gr_gid
    assert got == {"uid": [NOBODY.pw_uid] * 3, "gid": [g] * 3, "groups": [], "back": False, "back_gid": False}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user first")
def test_not_root_can_only_keep_its_own_identity():
    def as_nobody() -> str:
        os.setgroups([])
        os.setgid(NOBODY.pw_gid)
        os.setuid(NOBODY.pw_uid)
        drop_privileges(resolve_user("nobody"), component="test")   # already that user: fine
        try:
            drop_privileges(Identity("daemon", 1, "daemon", 1), component="test")
        except PrivilegeError as exc:
            return str(exc)
        return "no error"
    assert "only root can switch users" in _in_child(as_nobody)["ok"]


def test_preload_imports_the_packages_modules_and_skips_what_cannot_be_imported():
    n = preload(("plumbing",), extra=("json", "no_such_module_gde"))
    assert n >= 1 + len([p for p in (ROOT / "plumbing").glob("*.py") if p.name != "__init__.py"])
    assert "plumbing.privileges" in sys.modules and "no_such_module_gde" not in sys.modules


def _gslb(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gslb.cli", *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))


@pytest.mark.parametrize("cmd", [["dns", "--config", "examples/dns.toml", "--listen", "127.0.0.1:0"],
                                 ["edge", "--config", "examples/edge.toml", "--pop", "local"]])
def test_a_user_that_does_not_exist_exits_2_before_anything_is_opened(cmd):
    r = _gslb(*cmd, "--user", "no-such-user-gde")
    assert r.returncode == 2, r
    assert "--user 'no-such-user-gde': no such user" in r.stderr, r.stderr
    assert "listening" not in r.stderr


def test_dns_server_user_key_is_checked_with_its_file_and_line(tmp_path):
    from dns.config import ConfigError, load_dns_config
    text = (ROOT / "examples" / "dns.toml").read_text().replace("[server]\n", "[server]\nuser = \"no-such-user-gde\"\n", 1)
    text = text.replace('geoip_db = "lab.mmdb"', f'geoip_db = "{ROOT / "examples" / "lab.mmdb"}"')
    path = tmp_path / "dns.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"dns.toml:\d+: .*user.*no such user"):
        load_dns_config(str(path))
    path.write_text(text.replace('user = "no-such-user-gde"', 'user = "nobody:nogroup"'))
    assert load_dns_config(str(path)).server.user == "nobody:nogroup"


def test_edge_user_key_is_checked_with_its_file_and_line_and_a_pop_may_override_it(tmp_path):
    from edge.config import ConfigError, load
    base = ('zone = "lab.test"\n[edge]\nca_dir = "/tmp/gde-ca"\nuser = "{edge}"\n'
            '[pops.a]\nlisten = ["127.0.0.1"]\n[pops.b]\nlisten = ["127.0.0.1"]\nuser = "{b}"\n')
    path = tmp_path / "edge.toml"
    path.write_text(base.format(edge="no-such-user-gde", b="nobody"))
    with pytest.raises(ConfigError, match=r"edge.toml:4: .*user.*no such user"):
        load(str(path), "a")
    assert load(str(path), "b").user == "nobody"          # the PoP's own value wins
    path.write_text(base.format(edge="nobody:nogroup", b="nobody"))
    assert load(str(path), "a").user == "nobody:nogroup"


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root (CI runs as root)")
def test_edge_refuses_to_serve_when_the_user_cannot_write_cert_dir(tmp_path):
    import socket
    r = _gslb("edge", "ca", "init", "--dir", str(tmp_path / "ca"))
    assert r.returncode == 0, r.stderr
    (tmp_path / "certs").mkdir(mode=0o755)          # root's: nobody cannot write there
    tmp_path.chmod(0o755)
    with socket.socket() as s:                       # two loopback ports nobody else uses now
        s.bind(("127.0.0.1", 0))
        https = s.getsockname()[1]
        with socket.socket() as s2:
            s2.bind(("127.0.0.1", 0))
            http = s2.getsockname()[1]
    (tmp_path / "edge.toml").write_text(
        f'zone = "lab.test"\n[edge]\nca_dir = "{tmp_path}/ca"\ncert_dir = "{tmp_path}/certs"\n'
        f'user = "nobody:nogroup"\n[pops.local]\nlisten = ["127.0.0.1"]\nhttps_port = {https}\nhttp_port = {http}\n')
    r = _gslb("edge", "--config", str(tmp_path / "edge.toml"), "--pop", "local")
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "event=privileges_dropped" in r.stderr and "user=nobody" in r.stderr, r.stderr
    assert f"cert_dir {tmp_path}/certs is not writable by that user" in r.stderr, r.stderr


def test_preload_leaves_out_what_is_excluded():
    import importlib
    import sys as _sys
    for name in [m for m in _sys.modules if m == "geo.build" or m.startswith("geo.build.")]:
        del _sys.modules[name]
    preload(("geo",), extra=(), exclude=("geo.build",))
    assert "geo.build" not in _sys.modules and "geo.locate" in _sys.modules
    importlib.import_module("geo.build")   # what the other tests of this run may expect
