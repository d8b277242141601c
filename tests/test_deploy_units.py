"""deploy/*.service: the systemd units parse, start commands our CLI accepts, and are sandboxed.

Each unit is read as systemd reads it (an INI file, case kept, no key twice), its
ExecStart is split as systemd splits it and handed to the `gslb` argument parser (the
command a unit starts is one the CLI knows, with every flag spelled right), and
`systemd-analyze verify` judges the whole unit (unknown keys, bad values, a command that
is not executable: against the installed `gslb` in a copy whose paths point at it).
"""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _tools import need_tools
from _units import one, parse_unit, unit

from gslb.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
INSTALLED = "/opt/gslb-edge/venv/bin/gslb"   # where docs/deploy.md installs the command
UNITS = ("gslb-dns.service", "gslb-edge@.service", "gslb-agent.service")


def exec_start(name: str) -> list[str]:
    argv = shlex.split(one(unit(name)["Service"], "ExecStart").replace("%i", "eu"))
    assert argv[0] == INSTALLED, argv
    return argv[1:]


def test_every_unit_is_there_and_parses_with_the_three_sections():
    for name in UNITS:
        u = unit(name)
        assert list(u) == ["Unit", "Service", "Install"], (name, list(u))
        assert one(u["Install"], "WantedBy") == "multi-user.target"
        # every key but the ones systemd documents as lists is given once
        for key, values in u["Service"].items():
            assert len(values) == 1 or key == "SystemCallFilter", (name, key, values)


def test_the_unit_parser_reads_lists_continuations_and_refuses_junk():
    u = parse_unit("[Service]\n# c\nA=1\nA=2\nB=x\\\n  y\n")   # backslash-newline: one space
    assert u == {"Service": {"A": ["1", "2"], "B": ["x y"]}}
    with pytest.raises(ValueError, match="not Key=Value"):
        parse_unit("[Service]\njunk\n")
    with pytest.raises(ValueError, match="section"):
        parse_unit("[Service]\n[Service]\n")


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
    assert (one(s, "User"), one(s, "Group")) == ("gslb", "gslb")
    for key, want in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                      "PrivateTmp": "yes", "PrivateDevices": "yes", "PrivateMounts": "yes",
                      "RestrictSUIDSGID": "yes", "Restart": "on-failure", "UMask": "0077"}.items():
        assert one(s, key) == want, (name, key, s.get(key))
    assert s["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    families = set(one(s, "RestrictAddressFamilies").split())
    assert {"AF_INET", "AF_INET6", "AF_UNIX"} <= families <= {"AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"}
    assert int(one(s, "LimitNOFILE")) >= 65536


@pytest.mark.parametrize("name", ["gslb-dns.service", "gslb-edge@.service"])
def test_dns_and_edge_bind_low_ports_with_only_cap_net_bind_service(name):
    s = unit(name)["Service"]
    assert one(s, "AmbientCapabilities") == "CAP_NET_BIND_SERVICE"
    assert one(s, "CapabilityBoundingSet") == "CAP_NET_BIND_SERVICE"


def test_the_agent_holds_no_capability_at_all():
    s = unit("gslb-agent.service")["Service"]
    assert one(s, "CapabilityBoundingSet") == "" and "AmbientCapabilities" not in s


def test_dns_reloads_with_sighup_and_has_its_runtime_directory_edge_its_state_directory():
    dns = unit("gslb-dns.service")["Service"]
    assert one(dns, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(dns, "RuntimeDirectory") == "gslb-dns" and one(dns, "KillMode") == "mixed"
    edge = unit("gslb-edge@.service")["Service"]
    assert one(edge, "StateDirectory") == "gslb-edge"
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


@need_tools("systemd-analyze")
def test_systemd_analyze_security_rates_every_unit_ok_with_exposure_at_most_2(tmp_path):
    """systemd's own score of the sandbox (0 = locked down, 10 = none); 1.3-1.5 when written."""
    gslb = Path(sys.executable).with_name("gslb")
    for name in UNITS:
        (tmp_path / name).write_text((DEPLOY / name).read_text().replace(INSTALLED, str(gslb)))
    for name in UNITS:
        target = name.replace("@.", "@eu.")
        r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", target],
                           capture_output=True, text=True, timeout=60, cwd=tmp_path)
        m = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", r.stdout)
        assert m, r.stdout[-500:] + r.stderr
        assert float(m.group(1)) <= 2.0 and m.group(2) == "OK", (target, m.group(0))
