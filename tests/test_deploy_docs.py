"""docs/deploy.md stays true: the configuration files it writes load with our loaders.

The files are taken from the document itself (its `cat > FILE <<'EOF'` blocks), with the
document's own `sed` substitutions applied, so an edit to the page that breaks a file
breaks this test. Paths that only exist on the deployed hosts (the key, the geo
database, the token) are pointed at files made here.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "deploy.md").read_text()


def heredoc(target: str) -> str:
    m = re.search(r"cat > " + re.escape(target) + r" <<'?EOF'?\n(.*?)\nEOF\n", DOC, re.S)
    assert m, f"docs/deploy.md writes no {target}"
    return m.group(1) + "\n"


def test_the_edge_toml_of_the_page_loads_for_every_pop_with_etcd_and_peer_links(tmp_path):
    from edge.config import load
    path = tmp_path / "edge.toml"
    path.write_text(heredoc("./edge.toml"))
    pops = re.findall(r"^\[pops\.([a-z0-9-]+)\]", path.read_text(), re.M)
    assert len(pops) >= 3, pops
    for pop in pops:
        cfg = load(str(path), pop)
        assert cfg.registry.kind == "etcd" and len(cfg.registry.endpoints) == 3
        assert cfg.peer_listen and cfg.https_port == 443
        assert cfg.cert_dir == "/var/lib/gslb-edge/certs"   # the unit's StateDirectory
    # the unit starts `--pop %i`: the page enables an instance per PoP
    assert all(f"gslb-edge@{pop}" in DOC for pop in pops), pops


@pytest.mark.parametrize("ns", ["ns1", "ns2"])
def test_the_dns_toml_of_the_page_loads_on_each_name_server_and_serves_the_zone(ns, tmp_path):
    from dns.config import load_dns_config
    text = heredoc("./dns.toml.in")
    sed = re.search(r"sed (-e .*?) \./dns\.toml\.in > \./dns-" + ns + r"\.toml", DOC)
    assert sed, f"no sed line for {ns}"
    for old, new in re.findall(r"-e 's/([^/]+)/([^/]+)/'", sed.group(1)):
        text = text.replace(old, new)
    key = tmp_path / "zone.pem"
    subprocess.run([sys.executable, "-m", "gslb.cli", "dns", "keygen", "--out", str(key), "--zone",
                    "edge.example.com"], check=True, capture_output=True, cwd=ROOT, timeout=60)
    text = (text.replace("$(cat ./cookie-secret)", "00112233445566778899aabbccddeeff")
            .replace("/etc/gslb/edge.example.com.pem", str(key))
            .replace("/var/lib/GeoIP/GeoLite2-City.mmdb", str(ROOT / "examples" / "lab.mmdb")))
    path = tmp_path / "dns.toml"
    path.write_text(text)
    cfg = load_dns_config(str(path))
    assert cfg.zone.name == "edge.example.com."
    assert "@" not in repr(cfg.server.listen)
    assert cfg.health.enabled and cfg.health.allow_remote
    assert cfg.health.control_socket == "/run/gslb-dns/control.sock"   # what the unit passes too
    assert {p.id for p in cfg.pops} == {"eu", "us", "ap"}


def test_the_parent_zone_snippet_has_the_ns_set_and_glue_of_the_dns_toml():
    text = heredoc("./dns.toml.in")
    ns = dict(re.findall(r'name = "(ns\d\.edge\.example\.com\.)"\nipv4 = \["([^"]+)"\]', text))
    assert len(ns) == 2, ns
    for name, v4 in ns.items():
        assert re.search(rf"^edge\.example\.com\.\s+\d+ IN NS\s+{re.escape(name)}$", DOC, re.M), name
        assert re.search(rf"^{re.escape(name)}\s+\d+ IN A\s+{re.escape(v4)}$", DOC, re.M), (name, v4)
        assert re.search(rf"^{re.escape(name)}\s+\d+ IN AAAA\s+2001:db8:", DOC, re.M), name


def test_the_agent_toml_of_the_page_loads(tmp_path):
    from edge.agent.config import load_agent_config
    token = tmp_path / "authtoken"
    token.write_text("t" * 43 + "\n")
    token.chmod(0o600)
    path = tmp_path / "agent.toml"
    path.write_text(heredoc("/etc/gslb/agent.toml").replace("/etc/gslb/authtoken", str(token)))
    cfg = load_agent_config(str(path), env={})
    assert cfg.endpoints[0].name == "demo" and cfg.endpoints[0].port == 8080


def gslb_commands() -> list[list[str]]:
    """Every `gslb ...` command of the page's sh blocks (after `admin$`, `runuser -u gslb --`,
    `&&`, `;`; here-documents left out), as argv without the program."""
    import shlex
    out = []
    for block in re.findall(r"```sh\n(.*?)```", DOC, re.S):
        block = re.sub(r"<<'?EOF'?\n.*?\nEOF\n", "\n", block, flags=re.S).replace("\\\n", " ")
        for line in block.splitlines():
            lex = shlex.shlex(re.sub(r"^\s*admin\$\s*", "", line), posix=True, punctuation_chars=True)
            lex.whitespace_split = True
            lex.commenters = "#"
            words = list(lex)
            parts: list[list[str]] = [[]]
            for w in words:
                if w in ("&&", ";", "||", "|"):
                    parts.append([])
                else:
                    parts[-1].append(w)
            for cmd in parts:
                if cmd[:3] == ["runuser", "-u", "gslb"]:
                    cmd = cmd[4:]
                if cmd and cmd[0] in ("gslb", "/opt/gslb-edge/venv/bin/gslb"):
                    out.append(cmd[1:])
    return out


def test_every_gslb_command_on_the_page_is_one_the_cli_accepts():
    from gslb.cli import build_parser
    cmds = gslb_commands()
    assert len(cmds) >= 12, cmds
    seen = set()
    for argv in cmds:
        if argv == ["--version"]:
            continue
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:
            raise AssertionError(f"docs/deploy.md: `gslb {' '.join(argv)}` is refused by the parser") from exc
        assert getattr(args, "func", None) is not None, argv
        seen.add(tuple(argv[:2]))
    for want in (("dns", "--config"), ("edge", "--config"), ("dns", "drain"), ("dns", "ds"), ("edge", "ca")):
        assert want in seen, (want, sorted(seen))
