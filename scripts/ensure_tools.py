#!/usr/bin/env python3
"""Install the Debian packages whose commands are missing: `ensure_tools.py cmd:pkg ...`.

`cmd` may also be an absolute path of a file the package provides.

Runs `apt-get update` once, only when something is missing, so a machine that
already has everything pays nothing. Exits non-zero with a clear message when a
tool is missing and cannot be installed (not root, no apt-get).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys


def main(argv: list[str]) -> int:
    missing: list[str] = []
    for spec in argv:
        cmd, _, pkg = spec.partition(":")
        if cmd.startswith("/"):  # a file a package provides (e.g. an nginx module)
            present = os.path.exists(cmd)
        else:
            present = shutil.which(cmd) is not None or os.path.exists(f"/usr/sbin/{cmd}")
        if not present:
            missing.append(pkg or cmd)
    if not missing:
        return 0
    missing = sorted(set(missing))
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        print(f"ensure_tools: missing {' '.join(missing)}; install them "
              f"(apt-get install {' '.join(missing)}) or run as root", file=sys.stderr)
        return 1
    print(f"ensure_tools: installing {' '.join(missing)} with apt-get", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    # policy-rc.d may refuse to start services here; that is what we want:
    # the lab starts unbound/etcd itself with its own configs.
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
                   check=True, env=env)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
