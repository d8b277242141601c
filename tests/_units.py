"""systemd unit files as systemd reads them (systemd.syntax(7)): sections of `Key=Value`
lines, `#`/`;` comments, a trailing backslash continues a line, and a key may be given
more than once (SystemCallFilter= twice is an allow list, then a deny list)."""
from __future__ import annotations

from pathlib import Path

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


class UnitError(ValueError):
    pass


def parse_unit(text: str, name: str = "unit") -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for n, raw in enumerate(text.splitlines(), 1):
        line = pending + raw.strip() if pending else raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            if line[1:-1] in sections:
                raise UnitError(f"{name}:{n}: section {line} twice")
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        if not sep or current is None or not key.strip():
            raise UnitError(f"{name}:{n}: not Key=Value inside a section: {raw!r}")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def unit(name: str) -> dict[str, dict[str, list[str]]]:
    return parse_unit((DEPLOY / name).read_text(), name)


def one(section: dict[str, list[str]], key: str) -> str:
    """The value of a key given exactly once (KeyError when absent)."""
    values = section[key]
    if len(values) != 1:
        raise UnitError(f"{key}= given {len(values)} times")
    return values[0]
