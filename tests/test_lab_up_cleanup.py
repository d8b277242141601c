"""`lab up` cleans up only in the process that built: never in a forked helper.

pyroute2 forks helpers without exec; a helper stopped by SIGTERM (whose handler
the CLI installs) unwinds through lab.up()'s stack. Cleaning up there would
remove the namespaces the parent is still building (seen as a random
FileNotFoundError in `lab up`). No root needed: the build is faked.
"""
from __future__ import annotations

import os

import pytest

from netns import lab
from netns.errors import BuildError, LabError
from netns.plan import default_plan_path, load_plan


def test_a_forked_helper_unwinding_through_up_does_not_clean_up(tmp_path, monkeypatch):
    parent = os.getpid()
    calls = tmp_path / "teardowns"
    calls.mkdir()
    monkeypatch.setattr(lab, "check_environment", lambda need_tools=True, extra_tools=(): None)
    monkeypatch.setattr(lab, "_teardown",
                        lambda paths, progress=None: (calls / str(os.getpid())).touch())

    def fake_build(plan, paths, progress):
        pid = os.fork()
        if pid == 0:
            raise SystemExit(143)    # what a helper's inherited SIGTERM handler raises
        os.waitpid(pid, 0)
        raise LabError("the build failed in the parent")

    monkeypatch.setattr(lab, "_build_and_start", fake_build)
    state_dir = tmp_path / "state" / "gslbu"
    try:
        with pytest.raises(BuildError, match="the build failed in the parent"):
            lab.up(load_plan(default_plan_path()), "gslbu", str(state_dir))
    except BaseException:
        if os.getpid() != parent:
            os._exit(0)           # the child: leave pytest alone
        raise
    if os.getpid() != parent:
        os._exit(0)
    assert sorted(p.name for p in calls.iterdir()) == [str(parent)]
    assert not (tmp_path / "state" / ".gslbu.lock").exists()


def test_the_lock_file_is_removed_when_no_lab_is_left(tmp_path):
    paths = lab.lab_paths("gslbu", str(tmp_path / "gslbu"))
    with lab._lock(paths):
        assert (tmp_path / ".gslbu.lock").exists()
    assert not (tmp_path / ".gslbu.lock").exists()
