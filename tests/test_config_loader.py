"""The one configuration loader: examples load, and every error names file, line and key."""
from __future__ import annotations

import pathlib
import re

import pytest

from dns.config import ConfigError, load_dns_config, parse_listen

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "dns.toml"

MINIMAL = """\
[zone]
name = "lab.test"

[[zone.ns]]
name = "ns1"
ipv4 = ["127.0.0.1"]

[[pop]]
id = "eu"
lat = 50.1
lon = 8.7
ipv4 = ["198.18.3.1"]

[[pop]]
id = "jp"
lat = 35.7
lon = 139.7
ipv6 = ["fd7a:5e1b:c00::5:1"]

[[gslb]]
name = "*.app"
"""


def write(tmp_path: pathlib.Path, text: str) -> str:
    p = tmp_path / "dns.toml"
    p.write_text(text)
    return str(p)


def error_of(tmp_path, text) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_dns_config(write(tmp_path, text))
    return info.value


def test_example_config_loads_with_eight_pops_and_expanded_connect_names():
    cfg = load_dns_config(str(EXAMPLE))
    assert [p.id for p in cfg.pops] == ["ap", "au", "eu", "in", "jp", "sa", "us", "us-cal-1"]
    assert all(len(p.ipv4) == 4 and len(p.ipv6) == 4 for p in cfg.pops)
    names = {g.name: g.pin for g in cfg.gslb}
    assert names["*.app.lab.test."] is None
    assert names["connect.lab.test."] is None
    assert names["us-cal-1.connect.lab.test."] == "us-cal-1"
    assert cfg.zone.name == "lab.test."
    assert cfg.server.geoip_db == str(ROOT / "examples" / "lab.mmdb")


def test_defaults_apply_when_sections_are_absent(tmp_path):
    cfg = load_dns_config(write(tmp_path, MINIMAL))
    assert cfg.policy.addresses_per_answer == 2 and cfg.policy.ttl == 30
    assert cfg.policy.fallback == "nearest"
    assert cfg.routing.default_order == ("eu", "jp")
    assert cfg.server.udp_payload_max == 1232
    assert cfg.zone.soa.minimum == 30


def test_syntax_error_names_file_and_line(tmp_path):
    err = error_of(tmp_path, MINIMAL + "\n[policy\nttl = 3\n")
    assert re.match(r".*dns\.toml:2[0-9]: not valid TOML: ", str(err)), str(err)


def test_bad_address_names_line_and_key(tmp_path):
    text = MINIMAL.replace('ipv4 = ["198.18.3.1"]', 'ipv4 = ["198.18.3.999"]')
    err = error_of(tmp_path, text)
    assert err.line == 12 and err.key == "pop[0].ipv4", str(err)
    assert "198.18.3.999" in str(err)


def test_unknown_pop_in_routing_is_an_error(tmp_path):
    err = error_of(tmp_path, MINIMAL + '\n[routing]\ndefault_order = ["eu", "xx"]\n')
    assert err.key == "routing.default_order" and "unknown PoP 'xx'" in str(err)
    assert err.line == MINIMAL.count("\n") + 3  # blank, [routing], default_order


def test_misspelt_key_is_rejected_not_ignored(tmp_path):
    err = error_of(tmp_path, MINIMAL + "\n[policy]\naddresses_per_anwser = 3\n")
    assert err.key == "policy.addresses_per_anwser" and "unknown key" in str(err)


def test_wrong_type_is_reported(tmp_path):
    err = error_of(tmp_path, MINIMAL + '\n[policy]\nttl = "30"\n')
    assert err.key == "policy.ttl" and "expected an integer" in str(err)


def test_cname_cannot_share_its_name(tmp_path):
    text = MINIMAL + '''
[[record]]
name = "www"
type = "A"
value = "198.18.0.1"

[[record]]
name = "www"
type = "CNAME"
value = "demo.app"
'''
    err = error_of(tmp_path, text)
    assert "RFC 1034" in str(err)


def test_record_data_is_validated(tmp_path):
    err = error_of(tmp_path, MINIMAL + '\n[[record]]\nname = "@"\ntype = "MX"\nvalue = "mail"\n')
    assert err.key == "record[0].value"


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_dns_config(str(tmp_path / "nope.toml"))


@pytest.mark.parametrize("text,expected", [
    ("127.0.0.1:53", ("127.0.0.1", 53)),
    ("[::1]:5300", ("::1", 5300)),
    (":53", ("0.0.0.0", 53)),
])
def test_parse_listen(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["::1:53", "localhost:53", "127.0.0.1", "127.0.0.1:99999"])
def test_parse_listen_rejects(text):
    with pytest.raises(ValueError):
        parse_listen(text)
