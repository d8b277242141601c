"""Typed errors of the lab. Each message says what went wrong and what to do next."""
from __future__ import annotations

from plumbing.toml import ConfigError


class LabError(Exception):
    """Base class: the lab could not do what was asked. `str(err)` is shown to the user."""


class PlanError(LabError):
    """The lab plan or the lab prefix is invalid. Nothing was changed."""


class PlanFileError(PlanError, ConfigError):
    """The lab plan file is invalid: "file:line: key: what is wrong" (plumbing.toml). Nothing was changed."""


class NotRootError(LabError):
    """Building or removing namespaces needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN)."""


class ToolMissingError(LabError):
    """A system tool the lab runs (unbound, ip) is not installed."""


class BuildError(LabError):
    """`lab up` failed partway; what was built has been removed again."""


class NotInLabError(LabError):
    """Code that sends lab traffic was called outside a lab namespace and refused."""
