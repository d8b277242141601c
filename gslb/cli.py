"""The `gslb` command: one entry point, one subcommand per component.

Each component package exposes `cli.add_parser(subparsers)`, which adds its
subcommand and sets `func` (called with the parsed namespace; returns the exit
status). Components are imported lazily so `gslb dns` never pays for the edge.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from gslb import __version__

# subcommand -> module providing add_parser(); order is the order in --help
_COMPONENTS = [
    ("dns", "dns.cli"),
    ("geo", "geo.cli"),
    ("edge", "edge.cli"),
    ("agent", "edge.agent_cli"),
    ("lab", "netns.cli"),
]

EPILOG = """\
examples:
  gslb dns --config examples/dns.toml --listen 127.0.0.1:5300
  gslb dns explain demo.app.lab.test --type A --client 198.19.5.10 --config examples/dns.toml
  gslb geo lookup 198.19.5.10 --db examples/lab.mmdb
  gslb lab up            # the whole edge network in network namespaces (root)
  gslb agent http 8080 --name demo
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gslb",
        description="gslb-edge: a geo-aware authoritative DNS server and the edge network it steers traffic to.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"gslb-edge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in _COMPONENTS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue  # component not built yet
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `gslb dns health | head`: the reader went away; that is not our error.
        # Point stdout at /dev/null so the interpreter's final flush stays quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
