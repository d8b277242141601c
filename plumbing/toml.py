"""The one TOML layer under every configuration loader.

Owns: reading a TOML file (tomllib), finding the line a table or key is
written on, the typed getters, and the one error type, ``ConfigError``, whose
message is ``file:line: key: what is wrong``. The rules every loader shares
(docs/configuration.md, "Rules for every file") live here and nowhere else:

- a file is UTF-8 TOML of at most ``MAX_BYTES``;
- a key nobody asked for is an error (``Table.reject_unknown``), at the top
  level and inside every table;
- a relative path is relative to the directory of the file it is written in
  (``TomlDoc.resolve_path``, ``Table.path``), never to the working directory;
- a bad file is exit status ``EXIT_CONFIG`` (2) in every command.

Schemas are the loaders' own: the DNS server (dns/config.py), the edge
(edge/config.py), the agent (edge/agent/config.py), the lab plan
(netns/plan.py) and the geo table (geo/table.py). This module imports only
the standard library and no component, so each of them may use it without
breaking the import rules (`edge` stands alone, `netns` drives the others
through their command line).

tomllib reports a line only for syntax errors. For semantic errors (a wrong
type, an unknown PoP id) the line is found by scanning the source for the
table header and the key (`SourceIndex`): good enough to point a person at
the right line, and it never names a wrong file.
"""
from __future__ import annotations

import os
import re
import tomllib
from typing import Any, Callable, Iterable, Iterator, Mapping

__all__ = ["ConfigError", "TomlDoc", "Table", "SourceIndex", "MAX_BYTES", "EXIT_CONFIG", "MISSING"]

MAX_BYTES = 16 * 1024 * 1024   # no configuration file of ours comes near this
EXIT_CONFIG = 2                # exit status of every command on a bad configuration


class ConfigError(ValueError):
    """A configuration problem, formatted ``file:line: key: what is wrong``.

    `path` is empty for a value that came from a flag or the environment
    (the message is then ``key: what is wrong``); `line` is None when no
    line is known (a missing top-level key).
    """

    def __init__(self, path: str, line: int | None, key: str, problem: str) -> None:
        self.path, self.line, self.key, self.problem = path, line, key, problem
        where = f"{path}:{line}" if path and line else path
        super().__init__(": ".join(part for part in (where, key, problem) if part))


# ---------------------------------------------------------------------------
# Source positions

_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]\]?\s*(#.*)?$")
_KEYLINE = re.compile(r"^\s*((?:[A-Za-z0-9_\-]+|\"[^\"]*\"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_\-]+|\"[^\"]*\"|'[^']*'))*)\s*=")


def _dotted(text: str) -> str:
    """`a . "b" .c` -> `a.b.c` (quotes and spaces around dots dropped)."""
    return ".".join(part.strip().strip("\"'") for part in text.split("."))


class SourceIndex:
    """Maps (table path, array index, key) to a 1-based line of the source.

    A table path is dotted without indexes (``zone.ns``); `index` is the
    position of an entry of an array of tables (``[[zone.ns]]``), counted
    over the whole file.
    """

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        # (header name, occurrence index, header line (0: the root), last line)
        self.sections: list[tuple[str, int, int, int]] = []
        seen: dict[str, int] = {}
        starts: list[tuple[str, int, int]] = [("", 0, 0)]
        for i, line in enumerate(self.lines):
            m = _HEADER.match(line)
            if m:
                name = _dotted(m.group(2))
                n = seen.get(name, 0)
                seen[name] = n + 1
                starts.append((name, n, i + 1))
        for j, (name, n, start) in enumerate(starts):
            end = starts[j + 1][2] - 1 if j + 1 < len(starts) else len(self.lines)
            self.sections.append((name, n, start, end))

    def _key_in(self, start: int, end: int, key: str) -> int | None:
        for ln in range(start + 1, end + 1):
            m = _KEYLINE.match(self.lines[ln - 1])
            if m:
                written = _dotted(m.group(1))
                if written == key or written.startswith(key + "."):
                    return ln
        return None

    def _header(self, prefix: str) -> int | None:
        """The first header of `prefix` or of a table below it (an implicit table)."""
        for name, _, start, _ in self.sections:
            if start and (name == prefix or name.startswith(prefix + ".")):
                return start
        return None

    def line_of(self, table: str, index: int | None = None, key: str | None = None) -> int | None:
        for name, n, start, end in self.sections:
            if name != table or (index is not None and n != index):
                continue
            if key is None:
                return start or None
            return (self._key_in(start, end, key)
                    or self._header(f"{table}.{key}" if table else key)
                    or start or None)
        # No header of its own: an implicit table ([pops.eu] makes `pops`), or
        # an inline table / dotted key written in its parent (`timeouts = {...}`).
        if index is None and table:
            if key and (sub := self._header(f"{table}.{key}")):
                return sub
            if implicit := self._header(table):
                return implicit
            parent, _, last = table.rpartition(".")
            return self.line_of(parent, None, last)
        return None


# ---------------------------------------------------------------------------
# The document

class TomlDoc:
    """A parsed TOML file plus what is needed to report errors in it."""

    def __init__(self, path: str | os.PathLike[str], text: str | None = None, *,
                 error: type[ConfigError] = ConfigError) -> None:
        """Read `path`, or parse `text` and name it `path` in errors.

        `error` is the ConfigError subclass a component raises (the lab's
        PlanFileError, geo's GeoTableError), so its callers catch their own.
        """
        self.path = os.fspath(path)
        self.error_type = error
        self.dir = os.path.dirname(os.path.abspath(self.path))
        if text is None:
            text = self._read()
        elif len(text) > MAX_BYTES:
            raise error(self.path, None, "", f"larger than {MAX_BYTES >> 20} MiB")
        try:
            self.data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            msg = str(exc)
            m = re.search(r" \(at line (\d+), column (\d+)\)", msg)
            line = int(m.group(1)) if m else None
            problem = msg[:m.start()] + f" (column {m.group(2)})" if m else msg
            raise error(self.path, line, "", f"not valid TOML: {problem}") from None
        self.index = SourceIndex(text)

    def _read(self) -> str:
        try:
            with open(self.path, "rb") as fh:
                raw = fh.read(MAX_BYTES + 1)
        except OSError as exc:
            raise self.error_type(self.path, None, "", f"cannot read: {exc.strerror or exc}") from None
        if len(raw) > MAX_BYTES:
            raise self.error_type(self.path, None, "", f"larger than {MAX_BYTES >> 20} MiB")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.error_type(self.path, None, "", f"not UTF-8 text (byte {exc.start})") from None

    def root(self) -> "Table":
        return Table(self, self.data, "", None)

    def resolve_path(self, value: str) -> str:
        """A path written in a config file is relative to the file's directory."""
        return value if os.path.isabs(value) else os.path.normpath(os.path.join(self.dir, value))


MISSING: Any = object()   # the default of a required key


class Table:
    """One TOML table, with typed getters that raise ConfigError with a line number.

    `name` is the table's header path (``pop``, ``edge.timeouts``) and `index`
    its position when it is an entry of an array of tables; `label` is how
    error messages name it (``pop[1]``).
    """

    def __init__(self, doc: TomlDoc, data: Mapping[str, Any], name: str, index: int | None,
                 label: str | None = None) -> None:
        self.doc, self.data, self.name, self.index = doc, data, name, index
        self.label = label if label is not None else (name if index is None else f"{name}[{index}]")
        self._used: set[str] = set()

    # -- reporting
    def qualified(self, key: str) -> str:
        return f"{self.label}.{key}" if self.label else key

    def line(self, key: str | None = None) -> int | None:
        return self.doc.index.line_of(self.name, self.index, key)

    def error(self, key: str | None, problem: str) -> ConfigError:
        return self.doc.error_type(self.doc.path, self.line(key), self.qualified(key) if key else self.label,
                                   problem)

    # -- access
    def __contains__(self, key: str) -> bool:
        return key in self.data

    def has(self, key: str) -> bool:
        return key in self.data

    def keys(self) -> list[str]:
        return list(self.data)

    def value(self, key: str, default: Any = MISSING) -> Any:
        """The raw value (any type), marked as known; `default` when absent."""
        self._used.add(key)
        if key in self.data:
            return self.data[key]
        if default is MISSING:
            raise self.error(None, f"missing required key {key!r}")
        return default

    def str(self, key: str, default: Any = MISSING) -> Any:
        v = self.value(key, default)
        if key not in self.data:
            return v
        if not isinstance(v, str) or not v:
            raise self.error(key, f"expected a non-empty string, got {_show(v)}")
        return v

    def choice(self, key: str, choices: Iterable[str], default: Any = MISSING) -> Any:
        v = self.str(key, default)
        options = tuple(choices)
        if key in self.data and v not in options:
            raise self.error(key, f"{v!r}: one of {', '.join(options)}")
        return v

    def path(self, key: str, default: Any = None) -> Any:
        """A path, resolved against the directory of the file (the one rule for paths)."""
        v = self.str(key, default)
        return self.doc.resolve_path(v) if key in self.data else v

    def int(self, key: str, default: Any = MISSING, *, min: int | None = None, max: int | None = None) -> Any:
        v = self.value(key, default)
        if key not in self.data:
            return v
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.error(key, f"expected an integer, got {_show(v)}")
        _check_range(self, key, v, min, max)
        return v

    def float(self, key: str, default: Any = MISSING, *, min: float | None = None, max: float | None = None) -> Any:
        v = self.value(key, default)
        if key not in self.data:
            return v
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.error(key, f"expected a number, got {_show(v)}")
        _check_range(self, key, v, min, max)
        return float(v)

    def bool(self, key: str, default: Any = MISSING) -> Any:
        v = self.value(key, default)
        if key in self.data and not isinstance(v, bool):
            raise self.error(key, f"expected true or false, got {_show(v)}")
        return v

    def str_list(self, key: str, default: Any = MISSING, *, item: Callable[[str], Any] | None = None,
                 what: str = "string") -> Any:
        v = self.value(key, default)
        if key not in self.data:
            return v
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise self.error(key, f"expected a list of strings, got {_show(v)}")
        if item is None:
            return tuple(v)
        out = []
        for x in v:
            try:
                out.append(item(x))
            except ValueError as exc:
                raise self.error(key, f"{x!r} is not a valid {what}: {exc}") from None
        return tuple(out)

    def table(self, key: str, *, required: bool = False) -> "Table":
        v = self.value(key, MISSING if required else {})
        if not isinstance(v, dict):
            raise self.error(key, f"expected a table, got {_show(v)}")
        name = f"{self.name}.{key}" if self.name else key
        return Table(self.doc, v, name, None, self.qualified(key))

    def tables(self) -> Iterator[tuple[str, "Table"]]:
        """Every key of a table of tables (``[peers.<pop>]``), each as a Table."""
        for key in list(self.data):
            yield key, self.table(key)

    def array(self, key: str, *, required: bool = False) -> list["Table"]:
        v = self.value(key, MISSING if required else [])
        if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
            raise self.error(key, f"expected an array of tables ([[{key}]]), got {_show(v)}")
        name = f"{self.name}.{key}" if self.name else key
        return [Table(self.doc, x, name, i, f"{self.qualified(key)}[{i}]") for i, x in enumerate(v)]

    def reject_unknown(self, extra: Iterable[str] = ()) -> None:
        """A misspelt key is an error, not a silently ignored line."""
        allowed = self._used | set(extra)
        for key in self.data:
            if key not in allowed:
                raise self.error(key, f"unknown key (known: {', '.join(sorted(allowed)) or 'none'})")


def _show(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _check_range(t: Table, key: str, v: float, lo: float | None, hi: float | None) -> None:
    if lo is not None and v < lo:
        raise t.error(key, f"must be >= {lo}, got {v}")
    if hi is not None and v > hi:
        raise t.error(key, f"must be <= {hi}, got {v}")
