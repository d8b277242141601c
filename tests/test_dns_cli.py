"""`gslb dns pops` and `gslb dns explain` through the real argument parser (no sockets)."""
from __future__ import annotations

import json
import os

import pytest

from gslb.cli import main


@pytest.fixture
def config(example_config_dir):
    return os.path.join(example_config_dir, "dns.toml")


def test_pops_json_lists_the_catalogue(config, capsys):
    assert main(["dns", "pops", "--config", config, "--json"]) == 0
    pops = json.loads(capsys.readouterr().out)
    assert [p["id"] for p in pops] == ["ap", "au", "eu", "in", "jp", "sa", "us", "us-cal-1"]
    jp = pops[4]
    assert jp["city"] == "Tokyo" and jp["lat"] == pytest.approx(35.6762) and len(jp["ipv4"]) == 4
    assert set(jp) == {"id", "city", "lat", "lon", "ipv4", "ipv6"}


def test_explain_json_for_a_tokyo_subnet(config, capsys):
    assert main(["dns", "explain", "demo.app.lab.test", "--type", "A", "--client", "127.0.0.1",
                 "--ecs", "198.19.5.0/24", "--config", config, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["location"]["country"] == "JP" and out["ranking"][0] == "jp"
    assert out["ranking_reason"] == "distance" and out["ecs_scope"] == 24 and out["ttl"] == 30
    assert out["policy"][0]["pops_used"] == ["jp"]


def test_explain_text_says_why(config, capsys):
    assert main(["dns", "explain", "demo.app.lab.test", "--client", "198.19.30.9", "--config", config]) == 0
    text = capsys.readouterr().out
    assert "ranking:   jp > ap" in text and "country:CN" in text and "TTL 30" in text


def test_explain_with_a_pop_down_shows_the_fill(config, capsys):
    assert main(["dns", "explain", "demo.app.lab.test", "--client", "198.19.5.9", "--down", "jp",
                 "--config", config, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["policy"][0]["pops_used"][0] != "jp" and out["ecs_scope"] is None


def test_bad_config_is_reported_with_file_line_and_key(tmp_path, capsys):
    bad = tmp_path / "dns.toml"
    bad.write_text('[zone]\nname = "lab.test"\n[[zone.ns]]\nname = "ns1"\n')
    assert main(["dns", "pops", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "dns.toml:" in err


def test_missing_config_is_an_error(capsys):
    assert main(["dns", "pops"]) == 2
    assert "--config" in capsys.readouterr().err


def test_unknown_type_is_an_error(config, capsys):
    assert main(["dns", "explain", "x.app.lab.test", "--type", "BOGUS", "--config", config]) == 2


@pytest.mark.parametrize("argv", [["dns", "--help"], ["dns", "explain", "--help"], ["dns", "pops", "--help"]])
def test_help_has_examples(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0 and "examples:" in capsys.readouterr().out


def test_bad_listen_is_rejected_by_the_parser(config, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["dns", "--config", config, "--listen", "::1:53"])
    assert exc.value.code == 2 and "[ADDR]:PORT" in capsys.readouterr().err
