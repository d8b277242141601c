"""bench/profile.py: py-spy collapsed stacks into the functions that hold the time."""
from __future__ import annotations

from bench.profile import top_functions


def test_self_and_inclusive_shares_from_collapsed_stacks():
    lines = [
        "process 12:\"python\";<module> (gslb/cli.py:1);run (asyncio/runners.py:118);_read (edge/server.py:40) 60",
        "<module> (gslb/cli.py:1);run (asyncio/runners.py:118);write (ssl.py:900) 30",
        "<module> (gslb/cli.py:1);parse (edge/front/http1.py:10) 10",
        "",
        "garbage line without count",
    ]
    top = top_functions(lines, n=3)
    assert top["samples"] == 100
    assert top["self"][0] == ("_read (edge/server.py)", 60.0)
    assert ("write (python3.11/ssl.py)", 30.0) in top["self"] or ("write (ssl.py)", 30.0) in top["self"]
    assert ("<module> (gslb/cli.py)", 100.0) not in top["inclusive"]  # in every sample: no information
    assert top["inclusive"][0] == ("run (asyncio/runners.py)", 90.0)


def test_no_samples_is_empty_not_an_error():
    assert top_functions([]) == {"samples": 0, "self": [], "inclusive": []}
