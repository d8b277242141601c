import ipaddress
import textwrap
from pathlib import Path

import pytest

from geo.errors import GeoTableError
from geo.table import load_table, parse_table

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "geo-table.toml"

GOOD = """\
[[network]]
network = ["198.19.5.0/24", "fd7a:5e1b:c00:500::/56"]
city = "Tokyo"
country = "JP"
continent = "AS"
lat = 35.6762
lon = 139.6503
accuracy_radius = 20

[[network]]
network = "198.19.30.0/24"
country = "CN"
continent = "AS"
"""


def test_example_table_parses():
    t = load_table(EXAMPLE)
    assert len(t.entries) == 12
    tokyo = [e for e in t.entries if e.city == "Tokyo"][0]
    assert ipaddress.ip_network("198.19.5.0/24") in tokyo.networks
    assert (tokyo.country, tokyo.continent, tokyo.lat, tokyo.lon) == ("JP", "AS", 35.6762, 139.6503)
    cn = [e for e in t.entries if e.country == "CN"][0]
    assert cn.city is None and cn.lat is None


def test_single_network_string_and_line_numbers_are_kept():
    t = parse_table(GOOD, "t.toml")
    assert t.entries[1].networks == (ipaddress.ip_network("198.19.30.0/24"),)
    assert [e.line for e in t.entries] == [1, 10]
    assert t.entries[0].accuracy_radius == 20


def bad(replace_from: str, replace_to: str) -> GeoTableError:
    text = GOOD.replace(replace_from, replace_to, 1)
    assert text != GOOD
    with pytest.raises(GeoTableError) as ei:
        parse_table(text, "t.toml")
    return ei.value


@pytest.mark.parametrize("old,new,line,key,fragment", [
    ('country = "JP"', 'country = "jp"', 4, "network[0].country", "alpha-2"),
    ('country = "JP"', 'country = "JPN"', 4, "network[0].country", "alpha-2"),
    ('continent = "AS"', 'continent = "XX"', 5, "network[0].continent", "one of AF AN"),
    ("lat = 35.6762", "lat = 135.6762", 6, "network[0].lat", "[-90, 90]"),
    ("lon = 139.6503", "lon = -181", 7, "network[0].lon", "[-180, 180]"),
    ("lon = 139.6503\n", "", 6, "network[0].lat", "without 'lon'"),
    ("lat = 35.6762", 'lat = "35.6"', 6, "network[0].lat", "must be a number"),
    ("accuracy_radius = 20", "accuracy_radius = 0", 8, "network[0].accuracy_radius", "[1, 65535]"),
    ("accuracy_radius = 20", "accuracy_radius = 2.5", 8, "network[0].accuracy_radius", "integer"),
    ('city = "Tokyo"', 'city = ""', 3, "network[0].city", "non-empty"),
    ('city = "Tokyo"', 'cty = "Tokyo"', 3, "network[0].cty", "unknown key"),
    ('"198.19.5.0/24"', '"198.19.5.1/24"', 2, "network[0].network", "did you mean 198.19.5.0/24?"),
    ('"198.19.5.0/24"', '"198.19.5.0/33"', 2, "network[0].network", "198.19.5.0/33"),
    ('"198.19.5.0/24"', '"::ffff:198.19.5.0/120"', 2, "network[0].network", "IPv4 form"),
    ('network = "198.19.30.0/24"', 'network = "198.19.5.0/24"', 11, "network[1].network",
     "already given in network[0] (line 2)"),
    ('network = "198.19.30.0/24"', 'network = []', 11, "network[1].network", "non-empty list"),
    ('network = "198.19.30.0/24"', 'network = [5]', 11, "network[1].network", "not a string"),
])
def test_bad_value_is_reported_with_file_line_and_key(old, new, line, key, fragment):
    err = bad(old, new)
    assert (err.path, err.line, err.key) == ("t.toml", line, key)
    assert fragment in str(err)
    assert str(err).startswith(f"t.toml:{line}: {key}: ")


def test_missing_network_key_names_the_table():
    err = bad('network = "198.19.30.0/24"\n', "")
    assert err.key == "network[1]" and err.line == 10


def test_invalid_toml_reports_its_line():
    err = bad("lat = 35.6762", "lat = = 3")
    assert err.line == 6 and "not valid TOML" in str(err)


def test_unknown_top_level_key_and_empty_table_are_refused():
    with pytest.raises(GeoTableError, match=r"^t\.toml:1: title: unknown key \(known: network\)"):
        parse_table("title = 'x'\n" + GOOD, "t.toml")
    with pytest.raises(GeoTableError, match="at least one"):
        parse_table("", "t.toml")


def test_missing_file_is_a_table_error(tmp_path):
    with pytest.raises(GeoTableError, match="No such file"):
        load_table(tmp_path / "nope.toml")


def test_non_utf8_file_is_a_table_error(tmp_path):
    p = tmp_path / "t.toml"
    p.write_bytes(b"\xff\xfe" + textwrap.dedent(GOOD).encode())
    with pytest.raises(GeoTableError, match="not UTF-8"):
        load_table(p)
