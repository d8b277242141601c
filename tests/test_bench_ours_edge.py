"""bench/ours_edge.py: `--workers N` only when `gslb edge --help` lists it; the config and agent lines."""
from __future__ import annotations

import os

from bench.ours_edge import edge_argv, edge_help, help_lists_workers, parse_forwarding

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WITH = """usage: gslb edge [-h] [--config FILE] [--pop ID] [--workers N]
options:
  --config FILE        edge configuration (TOML)
  --workers N          worker processes (default: the number of CPUs)
"""
WITH_SHORT = "options:\n  -w N, --workers N    worker processes\n"
WITHOUT = """usage: gslb edge [-h] [--config FILE] [--pop ID]
options:
  --config FILE   edge configuration; see --workers in gslb dns for the DNS server
"""


def test_the_option_line_counts_not_the_usage_line_or_prose():
    assert help_lists_workers(WITH) and help_lists_workers(WITH_SHORT)
    assert not help_lists_workers(WITHOUT)
    assert not help_lists_workers("usage: gslb edge [--workers N]\n")


def test_workers_passed_only_when_listed_and_asked_for():
    base = ["py", "-m", "gslb.cli", "edge", "--config", "e.toml", "--pop", "bench"]
    assert edge_argv("py", "e.toml", "bench", 2, WITH) == base + ["--workers", "2"]
    assert edge_argv("py", "e.toml", "bench", 2, WITHOUT) == base
    assert edge_argv("py", "e.toml", "bench", None, WITH) == base


def test_this_checkouts_edge_help_decides_the_same_way():
    text = edge_help(REPO)
    assert "--pop" in text   # the real help was read
    argv = edge_argv("py", "e.toml", "bench", 2, text)
    assert ("--workers" in argv) == any(line.lstrip().startswith("--workers") for line in text.splitlines())


def test_forwarding_lines():
    assert parse_forwarding("x\nforwarding https://demo.app.lab.test:443 -> 127.0.0.1:8080\n") == [
        ("https://demo.app.lab.test:443", "127.0.0.1:8080")]
