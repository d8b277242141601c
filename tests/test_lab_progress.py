"""`gslb lab up`/`restart` progress lines: on stderr, with the seconds since the start; --quiet drops them."""
from __future__ import annotations

import re

from gslb.cli import build_parser
from netns.cli import _progress


def test_progress_lines_go_to_stderr_with_elapsed_seconds(capsys):
    progress = _progress("gde", quiet=False)
    progress("building 27 hosts")
    progress("2 name servers answer SOA")
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 2
    for line, msg in zip(lines, ("building 27 hosts", "2 name servers answer SOA")):
        m = re.fullmatch(r"lab gde: \[ *(\d+\.\d) s\] (.*)", line)
        assert m and m.group(2) == msg, line
    assert float(re.search(r"\[ *([\d.]+) s\]", lines[0]).group(1)) < 60


def test_quiet_prints_nothing(capsys):
    _progress("gde", quiet=True)("building 27 hosts")
    assert capsys.readouterr() == ("", "")


def test_up_and_restart_take_quiet():
    p = build_parser()
    assert p.parse_args(["lab", "up", "--quiet"]).quiet is True
    assert p.parse_args(["lab", "up"]).quiet is False
    assert p.parse_args(["lab", "restart", "-q", "pop-eu"]).quiet is True
