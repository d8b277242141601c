"""Typed errors of the geo package.

Every error says what was wrong and where, precisely enough to fix it without
reading code: a file (and line, when the input is a file), the key, the value
and what was expected. Raising one of these means nothing was changed: a table
that fails validation writes no database, a database that fails to open
replaces nothing.
"""
from __future__ import annotations

from plumbing.toml import ConfigError


class GeoError(Exception):
    """Base class of every error raised by `geo`."""


class GeoDatabaseError(GeoError):
    """A GeoIP2 mmdb could not be opened, or is not a City/Country database."""


GeoDBError = GeoDatabaseError  # the short name geo exports too


class RoutingError(GeoError):
    """The routing data (PoPs, region maps, default order) is inconsistent.

    `key` names the offending configuration key in the dotted form used by
    docs/configuration.md (e.g. ``routing.country.CN``), so the configuration
    loader can point at the file and line where that key is written.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


class GeoTableError(GeoError, ConfigError):
    """A geo table (the input of `gslb geo build-mmdb`) is invalid.

    A `plumbing.toml.ConfigError` like every configuration file's error: it
    carries the file, the 1-based line (None when unknown) and the key, so
    that the message reads like a compiler's:
    ``geo-table.toml:12: network[2].lat: ...``.
    """

    @property
    def message(self) -> str:
        return self.problem
