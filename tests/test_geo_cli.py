"""`gslb geo` in-process, through the real dispatcher (gslb.cli.main)."""
import json
from pathlib import Path

import pytest

from gslb.cli import main

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "examples" / "geo-table.toml"
CONFIG = ROOT / "examples" / "dns.toml"


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    out = tmp_path_factory.mktemp("geo") / "lab.mmdb"
    assert main(["geo", "build-mmdb", str(TABLE), "--out", str(out)]) == 0
    return out


def test_build_prints_a_structured_summary(tmp_path, capsys):
    out = tmp_path / "x.mmdb"
    assert main(["geo", "build-mmdb", str(TABLE), "--out", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("event=mmdb_built out=")
    assert "entries=12 networks=23" in line and "database_type=GeoIP2-City" in line
    assert out.stat().st_size > 0


def test_lookup_with_config_shows_ranking_and_distances(db, capsys):
    rc = main(["geo", "lookup", "198.19.21.7", "--db", str(db), "--config", str(CONFIG)])
    assert rc == 0
    out = capsys.readouterr().out
    assert 'network=198.19.21.0/24  location="Johannesburg,ZA,AF (-26.20,28.05)"' in out
    assert "reason=distance order=in,sa," in out and "km=6983," in out


def test_lookup_json_of_a_subnet(db, capsys):
    assert main(["geo", "lookup", "fd7a:5e1b:c00:800::/56", "--db", str(db), "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["network"] == "fd7a:5e1b:c00:800::/56" and rec["prefix_len"] == 56
    assert rec["location"]["city"] == "San Jose" and "ranking" not in rec


def test_bad_address_is_a_usage_error_and_nothing_is_printed_to_stdout(db, capsys):
    assert main(["geo", "lookup", "198.19.5", "--db", str(db)]) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and "'198.19.5' is not an IP address or subnet" in cap.err


def test_missing_database_is_an_error_naming_the_file(tmp_path, capsys):
    assert main(["geo", "lookup", "1.2.3.4", "--db", str(tmp_path / "no.mmdb")]) == 1
    assert "no.mmdb: no such file" in capsys.readouterr().err


def test_bad_routing_in_config_names_file_line_and_key(tmp_path, db, capsys):
    cfg = tmp_path / "dns.toml"
    text = CONFIG.read_text().replace('CN = ["jp", "ap"]', 'CN = ["jp", "xx"]')
    cfg.write_text(text)
    line = text.splitlines().index('CN = ["jp", "xx"]') + 1
    assert main(["geo", "lookup", "1.2.3.4", "--db", str(db), "--config", str(cfg)]) == 2  # bad file: 2
    err = capsys.readouterr().err
    assert err.startswith("gslb geo: error: ")
    assert f"{cfg}:{line}" in err and "routing.country.CN" in err and "xx" in err


def test_bad_table_changes_nothing(tmp_path, db, capsys):
    out = tmp_path / "keep.mmdb"
    out.write_bytes(db.read_bytes())
    table = tmp_path / "t.toml"
    text = TABLE.read_text().replace('country = "JP"', 'country = "Japan"')
    table.write_text(text)
    line = text.splitlines().index('country = "Japan"') + 1
    index = text[:text.index('country = "Japan"')].count("[[network]]") - 1
    assert main(["geo", "build-mmdb", str(table), "--out", str(out)]) == 2  # bad file: 2
    err = capsys.readouterr().err
    assert f"{table}:{line}: network[{index}].country: must be an ISO 3166-1 alpha-2 code" in err
    assert out.read_bytes() == db.read_bytes()


def test_info_reports_metadata(db, capsys):
    assert main(["geo", "info", "--db", str(db), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["database_type"] == "GeoIP2-City" and info["ip_version"] == 6


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit) as ei:
        main(["geo", "lookup", "--help"])
    assert ei.value.code == 0
    assert "examples:" in capsys.readouterr().out


def test_geo_without_subcommand_prints_help_and_exits_2(capsys):
    assert main(["geo"]) == 2
    assert "build-mmdb" in capsys.readouterr().out


def test_lookup_reports_where_coordinates_came_from(db, capsys):
    assert main(["geo", "lookup", "198.19.30.9", "198.19.5.9", "10.9.9.9", "--db", str(db),
                 "--json"]) == 0
    cn, tokyo, private = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert cn["source"] == "country-centroid" and cn["location"]["latitude"] == 35.86166
    assert tokyo["source"] == "city" and tokyo["found"] is True
    assert private["source"] == "none" and private["found"] is False and private["location"] is None


def test_lookup_with_config_explains_the_ranking(db, capsys):
    assert main(["geo", "lookup", "198.19.30.9", "--db", str(db), "--config", str(CONFIG),
                 "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["ranking"]["pops"][:2] == ["jp", "ap"]
    assert rec["ranking"]["why"] == "country CN override, then by distance"
