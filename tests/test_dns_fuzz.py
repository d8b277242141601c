"""Malformed packets never escape the core: parse_query raises only Drop/QueryError,
and Engine.respond answers (same ID, QR=1) or stays silent, never via its bug net."""
from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dns.engine import Engine
from dns.wire import AAAA, ANY, Drop, QueryError, ecs_option, make_query, parse_query

SEEDS = [
    make_query("demo.app.lab.test"),
    make_query("demo.app.lab.test", AAAA, options=ecs_option("198.19.5.0/24")),
    make_query("www.lab.test", ANY, edns=True, do=True),
    make_query("lab.test", options=ecs_option("fd7a:5e1b:c00:500::/56") + b"\x00\x0a\x00\x08" + b"c" * 8),
]


@pytest.fixture(scope="module")
def engine(example_config, lab_mmdb):
    e = Engine.from_config(example_config, lab_mmdb)
    yield e
    e.close()


def check(engine: Engine, data: bytes) -> None:
    try:
        parse_query(data)
    except (Drop, QueryError):
        pass
    out = engine.respond(data, "198.19.5.9")
    if out is not None:
        assert out[:2] == data[:2] and out[2] & 0x80 and len(out) >= 12
    out = engine.respond(data, "::1", True)
    if out is not None:
        assert out[:2] == data[:2]
    assert engine.stats["internal_errors"] == 0


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=600))
def test_random_bytes_never_escape(engine, data):
    check(engine, data)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6),
       st.integers(0, 400))
def test_mutated_queries_never_escape(engine, seed, flips, cut):
    data = bytearray(seed)
    for pos, val in flips:
        if pos < len(data):
            data[pos] = val
    check(engine, bytes(data[:max(cut, 12)] if cut < len(data) else data))


def test_many_random_mutations_with_a_fixed_seed(engine):
    rng = random.Random(1035)
    for _ in range(20000):
        data = bytearray(rng.choice(SEEDS))
        for _ in range(rng.randint(1, 4)):
            op = rng.random()
            if op < 0.6 and data:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif op < 0.8 and data:
                del data[rng.randrange(len(data)):]
            else:
                data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        check(engine, bytes(data))
