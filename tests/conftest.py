"""Shared fixtures: the example configuration and the lab mmdb built from the example table."""
from __future__ import annotations

import os
import shutil

import pytest
from hypothesis import HealthCheck, settings

# CI must not be flaky: the same examples every run, and no deadline on a
# 2-core machine shared with servers under test. Locally, hypothesis explores.
settings.register_profile("ci", derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(REPO, "examples")


@pytest.fixture(scope="session")
def lab_mmdb(tmp_path_factory: pytest.TempPathFactory) -> str:
    """examples/geo-table.toml built into a fresh mmdb (Tokyo = 198.19.5.0/24)."""
    from geo.build import build_mmdb
    from geo.table import load_table
    out = tmp_path_factory.mktemp("geo") / "lab.mmdb"
    build_mmdb(load_table(os.path.join(EXAMPLES, "geo-table.toml")), str(out))
    return str(out)


@pytest.fixture(scope="session")
def example_config_dir(tmp_path_factory: pytest.TempPathFactory, lab_mmdb: str) -> str:
    """A directory holding a copy of examples/dns.toml and its lab.mmdb (tests may not touch examples/)."""
    d = tmp_path_factory.mktemp("dnsconf")
    shutil.copy(os.path.join(EXAMPLES, "dns.toml"), d / "dns.toml")
    shutil.copy(lab_mmdb, d / "lab.mmdb")
    return str(d)


@pytest.fixture(scope="session")
def example_config(example_config_dir: str):
    from dns.config import load_dns_config
    return load_dns_config(os.path.join(example_config_dir, "dns.toml"))


@pytest.fixture(scope="session")
def geolite2_city() -> str:
    """The real (2018) GeoLite2-City database shipped by the maxminddb-geolite2 test dependency.

    Missing: a failure under CI=true (it is in `.[test]`), a skip elsewhere.
    """
    import importlib.util
    spec = importlib.util.find_spec("_maxminddb_geolite2")
    path = None
    if spec is not None and spec.submodule_search_locations:
        path = os.path.join(list(spec.submodule_search_locations)[0], "GeoLite2-City.mmdb")
    if path is None or not os.path.exists(path):
        msg = "maxminddb-geolite2 is not installed (pip install -e '.[test]')"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path
