"""Lab code that sends refuses to run outside a lab namespace (the root namespace routes off the machine)."""
from __future__ import annotations

import socket

import pytest

from netns import guard
from netns.errors import NotInLabError


def test_the_test_process_is_not_in_a_lab_namespace(monkeypatch, tmp_path):
    monkeypatch.setattr(guard, "NETNS_RUN_DIR", tmp_path)   # no lab namespaces at all
    assert guard.current_namespace() is None
    with pytest.raises(NotInLabError, match="gslb lab exec"):
        guard.require_lab_namespace()


def test_a_namespace_whose_inode_is_ours_is_recognised(monkeypatch):
    # /run/netns/<name> has the namespace's inode; pretend the lab's list holds
    # the thread's own namespace instead of creating one.
    import os
    ino = os.stat("/proc/thread-self/ns/net").st_ino
    monkeypatch.setattr(guard, "_lab_inodes", lambda prefix: {ino: "gslbu-client-jp"} if prefix in (None, "gslbu") else {})
    assert guard.current_namespace("gslbu") == "gslbu-client-jp"
    assert guard.require_lab_namespace() == "gslbu-client-jp"
    with pytest.raises(NotInLabError):
        guard.require_lab_namespace("other")


def test_a_root_namespace_socket_is_refused(monkeypatch, tmp_path):
    (tmp_path / "gslbu-client-jp").write_text("")      # an inode that is not our namespace
    monkeypatch.setattr(guard, "NETNS_RUN_DIR", tmp_path)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with pytest.raises(NotInLabError, match="not in lab namespace gslbu-client-jp"):
            guard.require_socket_in(s, "gslbu-client-jp")
        with pytest.raises(NotInLabError, match="does not exist"):
            guard.require_socket_in(s, "gslbu-missing")
    finally:
        s.close()
