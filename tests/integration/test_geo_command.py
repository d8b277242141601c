"""The real `gslb geo` command, run as a separate process, end to end:
build the lab database from the example table, then locate one client per
PoP city and check each lands on its own PoP."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def gslb_command() -> list[str]:
    exe = Path(sys.executable).parent / "gslb"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("gslb")
    if found:
        return [found]
    if os.environ.get("CI") == "true":
        pytest.fail("the `gslb` command is not installed (run `make install`, i.e. pip install -e .)")
    # Outside CI, the dispatcher module is the same code path.
    return [sys.executable, "-m", "gslb.cli"]


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*gslb_command(), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def lab_db(tmp_path_factory):
    out = tmp_path_factory.mktemp("geo") / "lab.mmdb"
    p = run("geo", "build-mmdb", "examples/geo-table.toml", "--out", str(out),
            env={"SOURCE_DATE_EPOCH": "1764288000"})
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("event=mmdb_built ") and "build_epoch=1764288000" in p.stdout
    return out


@pytest.mark.parametrize("client,pop", [
    ("198.19.1.10", "ap"), ("198.19.2.10", "au"), ("198.19.3.10", "eu"), ("198.19.4.10", "in"),
    ("198.19.5.10", "jp"), ("198.19.6.10", "sa"), ("198.19.7.10", "us"), ("198.19.8.10", "us-cal-1"),
    ("fd7a:5e1b:c00:100::10", "ap"), ("fd7a:5e1b:c00:800::10", "us-cal-1"),
    ("198.19.22.10", "eu"),      # London: no PoP, Frankfurt is nearest
    ("198.19.23.10", "us"),      # Toronto: Ohio
    ("198.19.30.10", "jp"),      # CN: country map
    ("10.77.1.10", "us"),        # not in the table: default order
])
def test_each_lab_client_lands_on_its_pop(lab_db, client, pop):
    p = run("geo", "lookup", client, "--config", "examples/dns.toml", "--db", str(lab_db), "--json")
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout)
    assert rec["ranking"]["pops"][0] == pop
    assert sorted(rec["ranking"]["pops"]) == sorted(
        ["ap", "au", "eu", "in", "jp", "sa", "us", "us-cal-1"])


@pytest.mark.parametrize("sub", ["lookup", "build-mmdb", "info"])
def test_every_subcommand_has_help_with_examples(sub):
    p = run("geo", sub, "--help")
    assert p.returncode == 0 and "examples:" in p.stdout and f"gslb geo {sub}" in p.stdout


def test_bad_table_exits_2_and_keeps_the_old_file(tmp_path, lab_db):
    out = tmp_path / "lab.mmdb"
    out.write_bytes(lab_db.read_bytes())
    bad = tmp_path / "t.toml"
    bad.write_text('[[network]]\nnetwork = "198.19.5.1/24"\ncountry = "JP"\ncontinent = "AS"\n')
    p = run("geo", "build-mmdb", str(bad), "--out", str(out))
    assert p.returncode == 2  # a bad configuration file, as in every command
    assert f"{bad}:2: network[0].network: '198.19.5.1/24': " in p.stderr
    assert "did you mean 198.19.5.0/24?" in p.stderr
    assert out.read_bytes() == lab_db.read_bytes()
