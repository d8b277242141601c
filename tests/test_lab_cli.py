"""`gslb lab` argument handling: help with examples, and bad input refused before anything changes."""
from __future__ import annotations

import pytest

from gslb.cli import main


def test_lab_help_has_examples(capsys):
    with pytest.raises(SystemExit) as e:
        main(["lab", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "gslb lab up" in out and "gslb lab exec client-jp -- dig" in out


@pytest.mark.parametrize("sub", ["up", "down", "status", "exec", "logs", "kill", "restart"])
def test_every_subcommand_has_help_with_examples(sub, capsys):
    with pytest.raises(SystemExit) as e:
        main(["lab", sub, "--help"])
    assert e.value.code == 0
    assert "examples:" in capsys.readouterr().out


def test_bad_prefix_is_refused(capsys, monkeypatch):
    monkeypatch.delenv("GSLB_LAB_PREFIX", raising=False)
    assert main(["lab", "up", "--prefix", "Bad-Prefix"]) == 1
    err = capsys.readouterr().err
    assert "lab prefix 'Bad-Prefix'" in err and "lowercase" in err


def test_bad_prefix_from_the_environment_is_refused(capsys, monkeypatch):
    monkeypatch.setenv("GSLB_LAB_PREFIX", "no_underscores")
    assert main(["lab", "status"]) == 1
    assert "lab prefix 'no_underscores'" in capsys.readouterr().err


def test_bad_plan_names_file_line_and_key_and_exits_2(tmp_path, capsys):
    plan = tmp_path / "lab.toml"
    plan.write_text("[lab]\nzone = \"lab.test\"\nipv4_prefix = \"10.0.0.0/8\"\nipv6_prefix = \"fd7a:5e1b:c00::/48\"\n")
    assert main(["lab", "up", "--prefix", "gslbu", "--plan", str(plan)]) == 2  # a bad file: 2, as everywhere
    err = capsys.readouterr().err
    assert f"{plan}:3: lab.ipv4_prefix: 10.0.0.0/8 is outside 198.18.0.0/15" in err


def test_status_of_a_lab_that_is_not_up(tmp_path, capsys):
    assert main(["lab", "status", "--prefix", "gslbnone", "--state-dir", str(tmp_path / "none")]) == 1
    assert "lab gslbnone: not running" in capsys.readouterr().out


def test_status_json_of_a_lab_that_is_not_up_keeps_the_keys(tmp_path, capsys):
    import json
    assert main(["lab", "status", "--json", "--prefix", "gslbnone", "--state-dir", str(tmp_path / "none")]) == 1
    st = json.loads(capsys.readouterr().out)
    assert st["running"] is False and st["hosts"] == []
    assert set(st["state"]) == {"dir", "config", "mmdb", "ca", "authtoken_file", "registry"}


def test_logs_of_a_lab_that_is_not_up(tmp_path, capsys):
    assert main(["lab", "logs", "dns1", "--prefix", "gslbnone", "--state-dir", str(tmp_path / "none")]) == 1
    assert "is not up" in capsys.readouterr().err


@pytest.mark.parametrize("sub", ["kill", "restart"])
def test_kill_and_restart_of_a_lab_that_is_not_up(sub, tmp_path, capsys):
    import os
    assert main(["lab", sub, "pop-eu", "--prefix", "gslbnone", "--state-dir", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err
    assert ("lab 'gslbnone' is not up" if os.geteuid() == 0 else "needs root") in err, err


def test_kill_and_restart_name_hosts_without_processes_and_unknown_hosts():
    from netns.errors import LabError
    from netns.lab import LabState, _host_processes
    from netns.procs import Proc

    st = LabState(prefix="p", dir="/x", plan="/x/lab.toml", status="up",
                  hosts=[{"name": "pop-eu"}, {"name": "client-eu"}],
                  processes=[Proc(host="pop-eu", name="edge", pid=1, starttime=1, cmd=("gslb",), log="/x/l")])
    assert _host_processes(st, "pop-eu") == [0]
    with pytest.raises(LabError, match="client-eu: the lab runs no process there .*pop-eu"):
        _host_processes(st, "client-eu")
    with pytest.raises(LabError, match="no lab host 'pop-xx'; hosts: pop-eu, client-eu"):
        _host_processes(st, "pop-xx")
