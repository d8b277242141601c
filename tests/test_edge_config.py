"""Edge configuration: defaults, PoP overrides, errors naming file:line: key."""
from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import ConfigError, load, parse

BASE = """\
zone = "lab.test"

[edge]
ca_dir = "/tmp/ca"
tcp_ports = "20000-20009"

[edge.timeouts]
handshake = 5

[pops.us]
listen = ["198.19.1.1", "2001:db8::1"]
health_listen = "[2001:db8::1]:8081"

[pops.eu]
listen = ["198.19.2.1"]
https_port = 8443
"""


def test_defaults_and_pop_override():
    us = parse(BASE, "us", "e.toml")
    assert us.listen == ("198.19.1.1", "2001:db8::1")
    assert us.https_port == 443 and us.http_port == 80 and us.tcp_ports == (20000, 20009)
    assert us.https_domain == "app.lab.test"
    assert us.health_listen == ("2001:db8::1", 8081)
    assert us.timeouts.handshake == 5.0 and us.timeouts.idle == 300.0 and us.timeouts.header == 20.0
    assert parse(BASE.replace("handshake = 5", "header = 2.5"), "us").timeouts.header == 2.5
    assert us.ingress_names == ("connect.lab.test", "us.connect.lab.test")
    assert us.cert_dir == "/tmp/ca/issued"
    assert parse(BASE, "eu").https_port == 8443


def test_example_file_loads_for_every_pop():
    path = Path(__file__).resolve().parents[1] / "examples" / "edge.toml"
    for pop in ("local", "us"):
        assert load(path, pop).pop == pop


def test_unknown_pop_lists_the_configured_ones():
    with pytest.raises(ConfigError, match=r"pops\.xx: no such PoP \(configured: eu, us\)"):
        parse(BASE, "xx", "e.toml")


@pytest.mark.parametrize("patch,line,key", [
    (('https_port = 8443', 'https_port = "x"'), 16, "pops.eu.https_port"),
    (('listen = ["198.19.2.1"]', 'listen = ["not-an-ip"]'), 15, "pops.eu.listen"),
    (('handshake = 5', 'handshake = -1'), 8, "edge.timeouts.handshake"),
    (('handshake = 5', 'header = 0'), 8, "edge.timeouts.header"),
    (('tcp_ports = "20000-20009"', 'tcp_ports = "20009-20000"'), 5, "edge.tcp_ports"),
    (('tcp_ports = "20000-20009"', 'tcp_ports = "20000-30000"'), 5, "edge.tcp_ports"),
    (('ca_dir = "/tmp/ca"', 'ca_dir = "/tmp/ca"\ncolour = "red"'), 5, "edge.colour"),
])
def test_errors_name_file_line_and_key(patch, line, key):
    text = BASE.replace(*patch)
    with pytest.raises(ConfigError) as ei:
        parse(text, "eu", "e.toml")
    assert str(ei.value).startswith(f"e.toml:{line}: {key}: "), str(ei.value)


def test_bad_toml_names_the_line():
    with pytest.raises(ConfigError, match=r"^e\.toml:2: not valid TOML"):
        parse('zone = "a"\nthis is not toml\n', "us", "e.toml")


def test_unknown_module_fails_at_load():
    text = BASE.replace("[pops.us]", '[edge.modules]\norder = ["rate_limit_typo"]\n\n[pops.us]')
    with pytest.raises(ConfigError, match="unknown module"):
        parse(text, "us", "e.toml")


def test_bad_cidr_in_module_options_fails_at_load():
    text = BASE.replace("[pops.us]", '[edge.modules]\norder = ["ip_restriction"]\n\n'
                        '[edge.modules.ip_restriction]\ndeny_cidrs = ["10.0.0.1/8"]\n\n[pops.us]')
    with pytest.raises(ConfigError, match="deny_cidrs"):
        parse(text, "us", "e.toml")


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "nope.toml", "us")


def test_default_module_order_when_none_is_given():
    assert parse(BASE, "us", "e.toml").module_order == ("ip_restriction", "basic_auth", "oidc", "saml", "rate_limit", "circuit_breaker")
    text = BASE.replace("[pops.us]", '[edge.modules.circuit_breaker]\ntripped_duration = 30\n\n[pops.us]')
    assert parse(text, "us", "e.toml").module_options["circuit_breaker"] == {"tripped_duration": 30}


@pytest.mark.parametrize("table, line, key, problem", [
    ('[edge.modules.circuit_breaker]\nerror_threshold = 0.5\nwindow = 0.5\n', 12,
     "edge.modules.circuit_breaker.window", "0.5 s is outside 1 s to 120 s"),
    ('[edge.modules.circuit_breaker]\nmax_circuits = 0\n', 11, "edge.modules.circuit_breaker.max_circuits",
     "expected an integer from 1 to 1000000"),
    ('[edge.modules.rate_limit]\nkey = "cookie"\n', 11, "edge.modules.rate_limit.key", "'cookie' is not"),
    ('[edge.modules.rate_limit]\nmax_buckets = -1\n', 11, "edge.modules.rate_limit.max_buckets",
     "expected an integer"),
])
def test_bad_protection_module_options_name_their_line_and_key(table, line, key, problem):
    text = BASE.replace("[pops.us]", table + "\n[pops.us]")
    with pytest.raises(ConfigError) as ei:
        parse(text, "us", "e.toml")
    assert str(ei.value).startswith(f"e.toml:{line}: {key}: "), str(ei.value)
    assert problem in str(ei.value)
