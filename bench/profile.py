"""`--profile`: where our processes spend their time under the bench's load (py-spy).

Owns: sampling our servers (never the peers) with ``py-spy record --format raw``
during extra, unscored runs, and summing the collapsed stacks into the
functions that hold the most samples (self) and the most inclusive time.
Profiled runs are never used for a figure: sampling slows the target.

py-spy is optional; without it `--profile` says so and the bench goes on.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable

__all__ = ["py_spy", "Sampler", "top_functions"]


def py_spy() -> str | None:
    cand = os.path.join(os.path.dirname(sys.executable), "py-spy")
    if os.access(cand, os.X_OK):
        return cand
    return shutil.which("py-spy")


def _frame_name(frame: str) -> str:
    # py-spy raw frames: "function (path/to/file.py:123)"; drop the line, keep the file's tail.
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    parts = path.replace("\\", "/").split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{name} ({short})" if path else name


def top_functions(collapsed: Iterable[str], n: int = 12) -> dict:
    """Collapsed stacks ('a;b;c 17' a line) -> {'samples', 'self': [(fn, pct)], 'inclusive': [(fn, pct)]}."""
    self_c: Counter[str] = Counter()
    incl_c: Counter[str] = Counter()
    total = 0
    for line in collapsed:
        line = line.rstrip("\n")
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        try:
            k = int(count)
        except ValueError:
            continue
        frames = [_frame_name(f) for f in stack.split(";") if f]
        # py-spy puts "process 123:..." / "thread (0x..)" frames first with some options; skip those.
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += k
        self_c[frames[-1]] += k
        for f in set(frames):
            incl_c[f] += k
    if not total:
        return {"samples": 0, "self": [], "inclusive": []}
    # Frames in >= 95 % of the samples are the entry point and the event loop's driver: no information.
    inclusive = [(f, c) for f, c in incl_c.most_common() if c < 0.95 * total][:n]
    return {
        "samples": total,
        "self": [(f, round(100.0 * c / total, 1)) for f, c in self_c.most_common(n)],
        "inclusive": [(f, round(100.0 * c / total, 1)) for f, c in inclusive],
    }


class Sampler:
    """py-spy record of some pids for a while; `finish()` returns {label: top_functions(...)}."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.running: list[tuple[str, subprocess.Popen, str]] = []

    def start(self, label: str, pid: int, seconds: float) -> None:
        exe = py_spy()
        if exe is None:
            return
        out = os.path.join(self.out_dir, f"pyspy-{label.replace(' ', '_').replace('/', '_')}.txt")
        argv = [exe, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))), "--format", "raw",
                "--output", out, "--nonblocking", "--subprocesses", "--rate", "200"]
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.running.append((label, p, out))

    def finish(self, timeout: float = 60.0) -> dict:
        results = {}
        for label, p, out in self.running:
            try:
                _, err = p.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                _, err = p.communicate()
            try:
                with open(out) as fh:
                    results[label] = top_functions(fh)
            except OSError:
                results[label] = {"samples": 0, "self": [], "inclusive": [], "error": (err or "").strip()[-300:]}
        self.running = []
        return results


def markdown_lines(profiles: dict) -> list[str]:
    lines = ["py-spy (200 Hz, --nonblocking) on our processes during extra runs that are not scored.", ""]
    for label, prof in profiles.items():
        lines.append(f"**{label}** ({prof['samples']} samples)" + (f": {prof['error']}" if prof.get("error") else ""))
        lines.append("")
        if prof["self"]:
            lines.append("| self % | function | | inclusive % | function |")
            lines.append("|---:|---|---|---:|---|")
            from itertools import zip_longest
            for s_, i_ in zip_longest(prof["self"], prof["inclusive"]):
                fs, ps = s_ if s_ else ("", "")
                fi, pi = i_ if i_ else ("", "")
                lines.append(f"| {ps} | {f'`{fs}`' if fs else ''} | | {pi} | {f'`{fi}`' if fi else ''} |")
            lines.append("")
    return lines
