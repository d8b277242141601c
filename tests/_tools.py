"""Tests that need a system tool: skip locally when it is missing, fail in CI.

The project's rule: in CI (CI=true) a missing tool is a failure with a clear
message, never a silent skip (`make test` installs what the tests use).
"""
from __future__ import annotations

import functools
import os
import shutil
from typing import Callable

import pytest


def _present(tool: str) -> bool:
    if tool.startswith("/"):
        return os.path.exists(tool)
    return shutil.which(tool) is not None or os.path.exists(f"/usr/sbin/{tool}")


def need_tools(*tools: str) -> Callable:
    """Decorator: the test needs these commands (or absolute paths of files)."""
    missing = [t for t in tools if not _present(t)]
    if not missing:
        return lambda f: f
    msg = f"needs {', '.join(missing)}: run `make install` (it apt-get installs the tools the tests use)"
    if not os.environ.get("CI"):
        return pytest.mark.skip(reason=msg)

    def fail_in_ci(f: Callable) -> Callable:
        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            pytest.fail(f"CI: {msg}")
        return wrapper
    return fail_in_ci
