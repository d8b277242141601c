"""The one TOML layer (plumbing/toml.py): lines, the error format, unknown keys, paths, exit status."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import plumbing.toml as toml
from gslb.cli import main
from plumbing.toml import EXIT_CONFIG, ConfigError, Table, TomlDoc

NESTED = """\
zone = "lab.test"            # 1

[edge]                       # 3
ca_dir = "ca"

[edge.timeouts]              # 6
handshake = 5
idle = 300                   # 8

[pops.eu]                    # 10
listen = ["198.19.2.1"]

[pops.us]                    # 13
listen = ["198.19.1.1"]
limits = { max_connections = 5 }   # 15
"""

ARRAYS = """\
[zone]                       # 1
name = "lab.test"

[[zone.ns]]                  # 4
name = "ns1"
ipv4 = ["198.18.0.11"]       # 6

[[zone.ns]]                  # 8
name = "ns2"
ipv4 = ["198.18.0.12"]       # 10

[[pop]]                      # 12
id = "eu"

[[pop]]                      # 15
id = "us"
"lat" = 1.5                  # 17
"""


def doc(text: str, name: str = "t.toml") -> TomlDoc:
    return TomlDoc(name, text)


def test_error_names_file_line_and_dotted_key_in_nested_tables():
    root = doc(NESTED).root()
    timeouts = root.table("edge").table("timeouts")
    err = timeouts.error("idle", "too long")
    assert (err.path, err.line, err.key, str(err)) == ("t.toml", 8, "edge.timeouts.idle",
                                                        "t.toml:8: edge.timeouts.idle: too long")
    # a key the table lacks: the line of its table
    assert timeouts.error("header", "missing").line == 6
    # an implicit table ([pops.eu] makes `pops`): its first header
    pops = root.table("pops")
    assert pops.error("xx", "no such PoP").line == 10
    assert pops.table("us").error("listen", "x").line == 14
    # an inline table: the line of the key that holds it
    assert pops.table("us").table("limits").error("max_connections", "x").line == 15


def test_error_lines_in_arrays_of_tables_count_each_entry():
    root = doc(ARRAYS).root()
    ns = root.table("zone").array("ns")
    assert [t.error("ipv4", "x").line for t in ns] == [6, 10]
    assert ns[1].error("ipv4", "x").key == "zone.ns[1].ipv4"
    pops = root.array("pop")
    assert pops[1].error("lat", "x").line == 17          # a quoted key
    assert pops[1].error("lon", "x").line == 15          # missing: the entry's header
    assert pops[0].error(None, "x").key == "pop[0]"
    # a missing top-level key has no line: "file: key: problem"
    assert str(root.error("gslb", "at least one")) == "t.toml: gslb: at least one"


def test_unknown_key_is_an_error_at_its_line_listing_the_known_ones():
    t = doc("[policy]\nttl = 3\naddresses_per_anwser = 2\n").root().table("policy")
    t.int("ttl", 30)
    with pytest.raises(ConfigError) as e:
        t.reject_unknown(["fallback"])
    assert str(e.value) == "t.toml:3: policy.addresses_per_anwser: unknown key (known: fallback, ttl)"


def test_typed_getters_name_the_key():
    t = doc('[a]\nn = "3"\nb = 1\nl = [1]\n').root().table("a")
    with pytest.raises(ConfigError, match=r"^t\.toml:2: a\.n: expected an integer, got '3'$"):
        t.int("n")
    with pytest.raises(ConfigError, match=r"^t\.toml:3: a\.b: expected true or false"):
        t.bool("b")
    with pytest.raises(ConfigError, match=r"^t\.toml:4: a\.l: expected a list of strings"):
        t.str_list("l")
    with pytest.raises(ConfigError, match=r"^t\.toml:1: a: missing required key 'x'"):
        t.str("x")
    with pytest.raises(ConfigError, match=r"^t\.toml:2: a\.n: '3': one of 1, 2"):
        t.choice("n", ("1", "2"))


def test_relative_paths_are_relative_to_the_files_directory_not_the_cwd(tmp_path, monkeypatch):
    sub = tmp_path / "etc"
    sub.mkdir()
    f = sub / "x.toml"
    f.write_text('db = "data/geo.mmdb"\nabs = "/var/lib/x"\nup = "../run/sock"\n')
    monkeypatch.chdir(tmp_path)
    root = TomlDoc("etc/x.toml").root()
    assert root.path("db") == str(sub / "data" / "geo.mmdb")
    assert root.path("abs") == "/var/lib/x"
    assert root.path("up") == str(tmp_path / "run" / "sock")
    assert root.path("absent") is None


def test_relative_paths_in_every_loader_that_has_paths(tmp_path, monkeypatch):
    from edge.agent.config import load_agent_config
    from edge.config import load

    d = tmp_path / "conf"
    d.mkdir()
    (d / "token").write_text("t0ken\n")
    (d / "edge.toml").write_text('zone = "lab.test"\n[edge]\nca_dir = "ca"\nauthtokens_file = "tokens"\n'
                                 '[pops.eu]\nlisten = ["198.19.2.1"]\n')
    (d / "agent.toml").write_text('zone = "lab.test"\nca = "ca/ca.pem"\nauthtoken_file = "token"\n'
                                  '[[endpoints]]\nkind = "tcp"\nport = 22\n')
    monkeypatch.chdir(tmp_path)
    edge = load("conf/edge.toml", "eu")
    assert (edge.ca_dir, edge.cert_dir, edge.authtokens_file) == (
        str(d / "ca"), str(d / "ca" / "issued"), str(d / "tokens"))
    agent = load_agent_config("conf/agent.toml", env={})
    assert agent.ca == d / "ca" / "ca.pem" and agent.authtoken == "t0ken"


def test_syntax_error_unreadable_non_utf8_and_oversized_files(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"^t\.toml:2: not valid TOML: .*\(column \d+\)$"):
        doc('a = 1\nb = = 2\n')
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read: No such file"):
        TomlDoc(tmp_path / "nope.toml")
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'a = "\xe9"\n')
    with pytest.raises(ConfigError, match=r"latin1\.toml: not UTF-8 text \(byte 5\)"):
        TomlDoc(bad)
    big = tmp_path / "big.toml"
    big.write_text("a = 1\n" * 20)
    monkeypatch.setattr(toml, "MAX_BYTES", 100)
    with pytest.raises(ConfigError, match=r"big\.toml: larger than"):
        TomlDoc(big)


def test_a_component_gets_its_own_error_type():
    class PlanLikeError(ConfigError):
        pass

    with pytest.raises(PlanLikeError, match=r"^p\.toml:2: lab\.x: unknown key \(known: none\)"):
        TomlDoc("p.toml", "[lab]\nx = 1\n", error=PlanLikeError).root().table("lab").reject_unknown()
    with pytest.raises(PlanLikeError, match="not valid TOML"):
        TomlDoc("p.toml", "[lab\n", error=PlanLikeError)


def test_an_error_without_a_file_reads_key_colon_problem():
    assert str(ConfigError("", None, "server", "'x:y' has an invalid port")) == "server: 'x:y' has an invalid port"
    assert isinstance(ConfigError("f", 1, "k", "p"), ValueError)


def test_table_of_tables_yields_each_with_its_label():
    root = doc(NESTED).root()
    assert [(k, t.label) for k, t in root.table("pops").tables()] == [("eu", "pops.eu"), ("us", "pops.us")]
    assert isinstance(root.table("pops").table("eu"), Table)


DNS_EXAMPLE = (Path(__file__).resolve().parents[1] / "examples" / "dns.toml").read_text()
EDGE = 'zone = "lab.test"\n[edge]\nca_dir = "/tmp/ca"\ncolour = "red"\n[pops.eu]\nlisten = ["198.19.2.1"]\n'


@pytest.mark.parametrize("argv, text, name", [
    (["edge", "--pop", "eu", "--config"], EDGE, "edge.toml"),
    (["dns", "pops", "--config"], "bogus = 1\n" + DNS_EXAMPLE, "dns.toml"),
    (["agent", "start", "--config"], 'zone = "lab.test"\nauthtoken = "t"\ncolour = 1\n', "agent.toml"),
    (["geo", "build-mmdb", "--out", "/nonexistent/x.mmdb"], '[[network]]\nnetwork = "198.19.5.0/24"\n'
     'country = "JP"\ncontinent = "AS"\ncolour = 1\n', "geo.toml"),
])
def test_every_command_exits_2_on_a_bad_file(tmp_path, capsys, argv, text, name):
    f = tmp_path / name
    f.write_text(text)
    args = argv + [str(f)] if argv[-1] == "--config" else argv[:2] + [str(f)] + argv[2:]
    assert main(args) == EXIT_CONFIG == 2
    err = capsys.readouterr().err
    assert f"{f}:" in err and "unknown key" in err, err
    assert not os.path.exists("/nonexistent/x.mmdb")
