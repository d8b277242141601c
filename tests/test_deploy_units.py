"""deploy/*.service: the systemd units parse, start commands our CLI accepts, and are sandboxed.

Each unit is read as systemd reads it (an INI file, case kept, no key twice), its
ExecStart is split as systemd splits it and handed to the `gslb` argument parser (the
command a unit starts is one the CLI knows, with every flag spelled right), and
`systemd-analyze verify` judges the whole unit (unknown keys, bad values, a command that
is not executable: against the installed `gslb` in a copy whose paths point at it).
"""
from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _tools import need_tools

from gslb.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
INSTALLED = "/opt/gslb-edge/venv/bin/gslb"   # where docs/deploy.md installs the command
UNITS = ("gslb-dns.service", "gslb-edge@.service", "gslb-agent.service")


def unit(name: str) -> configparser.RawConfigParser:
    cp = configparser.RawConfigParser(strict=True, interpolation=None, delimiters=("=",),
                                      comment_prefixes=("#", ";"))
    cp.optionxform = str  # systemd keys are case-sensitive
    cp.read_string((DEPLOY / name).read_text(), source=name)
    return cp


def exec_start(name: str) -> list[str]:
    argv = shlex.split(unit(name)["Service"]["ExecStart"].replace("%i", "eu"))
    assert argv[0] == INSTALLED, argv
    return argv[1:]


def test_every_unit_is_there_and_parses_with_the_three_sections():
    for name in UNITS:
        cp = unit(name)
        assert cp.sections() == ["Unit", "Service", "Install"], (name, cp.sections())
        assert cp["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.parametrize("name, func", [("gslb-dns.service", "dns.cli._serve"),
                                        ("gslb-edge@.service", "edge.cli._run"),
                                        ("gslb-agent.service", "edge.agent_cli")])
def test_exec_start_is_a_command_line_the_gslb_parser_accepts(name, func):
    args = build_parser().parse_args(exec_start(name))
    assert f"{args.func.__module__}.{args.func.__name__}".startswith(func), args.func
    assert args.config.startswith("/etc/gslb/"), args.config
    if name.startswith("gslb-edge"):
        assert args.pop == "eu"       # the instance name is the PoP
    if name == "gslb-dns.service":
        assert args.control.startswith("/run/gslb-dns/")   # inside its RuntimeDirectory


def test_a_misspelt_flag_in_exec_start_would_be_refused(capsys):
    argv = exec_start("gslb-dns.service") + ["--workerz=2"]
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2 and "--workerz" in capsys.readouterr().err


@pytest.mark.parametrize("name", UNITS)
def test_every_unit_runs_unprivileged_in_a_sandbox(name):
    s = unit(name)["Service"]
    assert (s["User"], s["Group"]) == ("gslb", "gslb")
    for key, want in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                      "PrivateTmp": "yes", "PrivateDevices": "yes", "RestrictSUIDSGID": "yes",
                      "SystemCallFilter": "@system-service", "Restart": "on-failure", "UMask": "0077"}.items():
        assert s.get(key) == want, (name, key, s.get(key))
    families = set(s["RestrictAddressFamilies"].split())
    assert {"AF_INET", "AF_INET6", "AF_UNIX"} <= families <= {"AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"}
    assert int(s["LimitNOFILE"]) >= 65536


@pytest.mark.parametrize("name", ["gslb-dns.service", "gslb-edge@.service"])
def test_dns_and_edge_bind_low_ports_with_only_cap_net_bind_service(name):
    s = unit(name)["Service"]
    assert s["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"
    assert s["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"


def test_the_agent_holds_no_capability_at_all():
    s = unit("gslb-agent.service")["Service"]
    assert s["CapabilityBoundingSet"] == "" and "AmbientCapabilities" not in s


def test_dns_reloads_with_sighup_and_has_its_runtime_directory_edge_its_state_directory():
    dns = unit("gslb-dns.service")["Service"]
    assert dns["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert dns["RuntimeDirectory"] == "gslb-dns" and dns["KillMode"] == "mixed"
    edge = unit("gslb-edge@.service")["Service"]
    assert edge["StateDirectory"] == "gslb-edge"
    # The edge has no SIGHUP handler (SIGHUP would stop it): no reload promised.
    assert "ExecReload" not in edge and "ExecReload" not in unit("gslb-agent.service")["Service"]


@need_tools("systemd-analyze")
def test_systemd_analyze_verify_accepts_every_unit_without_a_warning(tmp_path):
    gslb = Path(sys.executable).with_name("gslb")
    assert gslb.exists(), gslb
    for name in UNITS:
        (tmp_path / name).write_text((DEPLOY / name).read_text().replace(INSTALLED, str(gslb)))
    targets = [str(tmp_path / n.replace("@.", "@eu.")) for n in UNITS]
    r = subprocess.run([shutil.which("systemd-analyze") or "systemd-analyze", "verify", *targets],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0 and r.stderr.strip() == "" and r.stdout.strip() == "", r.stdout + r.stderr


@need_tools("systemd-analyze")
def test_systemd_analyze_verify_does_catch_a_misspelt_key(tmp_path):
    gslb = Path(sys.executable).with_name("gslb")
    text = (DEPLOY / "gslb-dns.service").read_text().replace(INSTALLED, str(gslb))
    (tmp_path / "gslb-dns.service").write_text(text.replace("ProtectHome=", "ProtectHoem="))
    r = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "gslb-dns.service")],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert "Unknown key 'ProtectHoem'" in r.stderr, r.stderr
