"""Agent configuration, command line and backoff (no network)."""
from __future__ import annotations

import argparse

import pytest

from edge import agent_cli
from edge.agent.client import backoff_delay
from edge.agent.config import AgentConfig, ConfigError, EndpointConfig, load_agent_config, read_authtoken, split_host_port


@pytest.fixture(autouse=True)
def no_host_defaults(monkeypatch, tmp_path):
    """Hermetic: never read the host's /etc/gslb/agent.toml."""
    import edge.agent.config

    monkeypatch.setattr(edge.agent.config, "DEFAULTS_PATH", tmp_path / "absent.toml")


def parse(argv):
    p = argparse.ArgumentParser()
    sub = p.add_subparsers()
    agent_cli.add_parser(sub)
    return p.parse_args(argv)


GOOD = """\
zone = "lab.test"
authtoken_file = "{token}"
heartbeat_interval = 5
heartbeat_timeout = 12

[[endpoints]]
kind = "http"
name = "demo"
port = 8080

[[endpoints]]
kind = "tcp"
port = 22
proxy_protocol = true
"""


def write(tmp_path, text):
    tok = tmp_path / "token"
    tok.write_text("# comment\nsecret-token-value\n")
    p = tmp_path / "agent.toml"
    p.write_text(text.format(token=tok))
    return p


def test_load_good_config(tmp_path):
    cfg = load_agent_config(write(tmp_path, GOOD), env={})
    assert cfg.authtoken == "secret-token-value"
    assert cfg.server_address() == ("connect.lab.test", 443) and cfg.server_name() == "connect.lab.test"
    assert [e.kind for e in cfg.endpoints] == ["http", "tcp"]
    assert cfg.endpoints[1].bind_options() == {"proxy_protocol": True}
    assert cfg.heartbeat_interval == 5 and cfg.heartbeat_timeout == 12
    assert "secret-token-value" not in repr(cfg)


@pytest.mark.parametrize(
    "change, expect",
    [
        (("port = 8080", "port = 80800"), r"agent.toml:9: endpoints\[0\].port: 80800 is not a TCP port"),
        (('name = "demo"', 'name = "de mo"'), r"agent.toml:8: endpoints\[0\].name: 'de mo' is not a DNS label"),
        (("kind = \"tcp\"", "kind = \"udp\""), r"agent.toml:12: endpoints\[1\].kind: 'udp' is not one of"),
        (("heartbeat_timeout = 12", "heartbeat_timeout = 2"), r"agent.toml:4: heartbeat_timeout: must be above"),
        (("proxy_protocol = true", "proxy_protocol = 1"), r"agent.toml:14: endpoints\[1\].proxy_protocol: wrong type"),
        (("zone =", "zonne ="), r"agent.toml:1: zonne: unknown key"),
        (("proxy_protocol = true", 'deny_cidrs = ["10.0.0.0/33"]'), r"agent.toml:14: endpoints\[1\].deny_cidrs: option 'deny_cidrs': "),
        (("proxy_protocol = true", 'allow_cidrs = "10.0.0.0/8"'), r"agent.toml:14: endpoints\[1\].allow_cidrs: option 'allow_cidrs' must be a list"),
    ],
)
def test_bad_config_names_file_line_and_key(tmp_path, change, expect):
    text = GOOD.replace(*change)
    with pytest.raises(ConfigError, match=expect):
        load_agent_config(write(tmp_path, text), env={})


def test_missing_token_error_never_shows_a_token(tmp_path):
    p = tmp_path / "agent.toml"
    p.write_text('zone = "lab.test"\n[[endpoints]]\nkind = "tcp"\nport = 1\n')
    with pytest.raises(ConfigError, match="authtoken: none given"):
        load_agent_config(p, env={})


def test_authtoken_sources_in_order(tmp_path):
    f = tmp_path / "t"
    f.write_text("from-file\n")
    assert read_authtoken("flag", str(f), {"GSLB_AUTHTOKEN": "env"}) == "flag"
    assert read_authtoken(None, str(f), {"GSLB_AUTHTOKEN": "env"}) == "from-file"
    assert read_authtoken(None, None, {"GSLB_AUTHTOKEN": "env", "GSLB_AUTHTOKEN_FILE": str(f)}) == "env"
    assert read_authtoken(None, None, {"GSLB_AUTHTOKEN_FILE": str(f)}) == "from-file"
    with pytest.raises(ConfigError, match="cannot read"):
        read_authtoken(None, str(tmp_path / "nope"), {})


def test_environment_authtoken_beats_the_config_file(tmp_path):
    """Flags > environment > file: a token in agent.toml must not shadow GSLB_AUTHTOKEN."""
    f = tmp_path / "file-token"
    f.write_text("from-config-file\n")
    p = tmp_path / "agent.toml"
    p.write_text('authtoken_file = "file-token"\n[[endpoints]]\nkind = "tcp"\nport = 1\n')
    assert load_agent_config(p, env={"GSLB_AUTHTOKEN": "env"}).authtoken == "env"
    g = tmp_path / "flag-token"
    g.write_text("from-flag-file\n")
    p.write_text('authtoken = "inline"\n[[endpoints]]\nkind = "tcp"\nport = 1\n')
    assert load_agent_config(p, {"authtoken_file": str(g)}, env={}).authtoken == "from-flag-file"
    assert load_agent_config(p, env={}).authtoken == "inline"


def test_paths_in_the_agent_file_are_relative_to_the_file(tmp_path):
    (tmp_path / "tok").write_text("t\n")
    p = tmp_path / "agent.toml"
    p.write_text('authtoken_file = "tok"\nca = "ca.pem"\n[[endpoints]]\nkind = "tcp"\nport = 1\n')
    cfg = load_agent_config(p, env={})
    assert cfg.authtoken == "t" and str(cfg.ca) == str(tmp_path / "ca.pem")


@pytest.mark.parametrize(
    "value, expect",
    [("edge.example", ("edge.example", 443)), ("127.0.0.1:4443", ("127.0.0.1", 4443)), ("[::1]:8443", ("::1", 8443)), ("::1", ("::1", 443))],
)
def test_split_host_port(value, expect):
    assert split_host_port(value) == expect


def test_split_host_port_rejects_bad_port():
    with pytest.raises(ConfigError, match="invalid port"):
        split_host_port("h:99999")


def test_cli_http_builds_one_endpoint_from_flags_and_env(tmp_path):
    args = parse(["agent", "http", "8080", "--name", "Demo"])
    cfg = agent_cli.build_config(args, env={"GSLB_ZONE": "lab.test", "GSLB_AUTHTOKEN": "t0k"})
    assert cfg.endpoints == (EndpointConfig("http", 8080, "demo"),)
    assert cfg.server_address() == ("connect.lab.test", 443)
    assert cfg.heartbeat_interval == 10 and cfg.heartbeat_timeout == 15


def test_cli_tls_terminate_at_and_tcp_proxy_protocol():
    env = {"GSLB_ZONE": "lab.test", "GSLB_AUTHTOKEN": "t"}
    cfg = agent_cli.build_config(parse(["agent", "tls", "8443", "--name", "s", "--terminate-at", "edge"]), env=env)
    assert cfg.endpoints[0].bind_options() == {"terminate_at": "edge"}
    cfg = agent_cli.build_config(parse(["agent", "tcp", "22", "--proxy-protocol", "--server", "127.0.0.1:4443"]), env=env)
    assert cfg.endpoints[0].bind_options() == {"proxy_protocol": True}
    assert cfg.server_address() == ("127.0.0.1", 4443)


def test_cli_without_zone_or_server_is_a_usage_error():
    with pytest.raises(ConfigError, match="server"):
        agent_cli.build_config(parse(["agent", "tcp", "22"]), env={"GSLB_AUTHTOKEN": "t"})


def test_cli_rejects_bad_heartbeat_and_missing_ca(tmp_path):
    env = {"GSLB_ZONE": "lab.test", "GSLB_AUTHTOKEN": "t"}
    with pytest.raises(ConfigError, match="heartbeat_timeout"):
        agent_cli.build_config(parse(["agent", "tcp", "22", "--heartbeat-interval", "10", "--heartbeat-timeout", "5"]), env=env)
    with pytest.raises(ConfigError, match="ca:"):
        agent_cli.build_config(parse(["agent", "tcp", "22", "--ca", str(tmp_path / "none.pem")]), env=env)


def test_cli_exit_status_2_on_bad_config(capsys):
    args = parse(["agent", "http", "8080", "--name", "bad_name", "--zone", "lab.test", "--authtoken", "t"])
    assert args.func(args) == 2
    assert "name: 'bad_name' is not a DNS label" in capsys.readouterr().err


def test_full_jitter_backoff_bounds():
    top = lambda lo, hi: hi  # noqa: E731 - the upper bound of the draw
    assert [backoff_delay(a, 0.5, 30.0, top) for a in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert backoff_delay(1000, 0.5, 30.0, top) == 30
    assert all(0 <= backoff_delay(a, 0.5, 30.0) <= 30 for a in range(50))


def test_agent_config_repr_hides_token():
    cfg = AgentConfig(endpoints=(), authtoken="hidden-value")
    assert "hidden-value" not in repr(cfg)


def test_defaults_file_supplies_server_zone_ca_and_token_but_not_endpoints(tmp_path):
    tok = tmp_path / "token"
    tok.write_text("lab-token\n")
    ca = tmp_path / "ca.pem"
    ca.write_text("not read here\n")
    d = tmp_path / "agent.toml"
    d.write_text(
        f'zone = "lab.test"\nca = "{ca}"\nauthtoken_file = "{tok}"\nheartbeat_interval = 3\nheartbeat_timeout = 9\n'
        '[[endpoints]]\nkind = "tcp"\nport = 1\n'
    )
    env = {"GSLB_AGENT_CONFIG": str(d)}
    cfg = agent_cli.build_config(parse(["agent", "http", "8080", "--name", "demo"]), env=env)
    assert cfg.endpoints == (EndpointConfig("http", 8080, "demo"),)
    assert cfg.authtoken == "lab-token" and cfg.ca == ca and cfg.server_name() == "connect.lab.test"
    assert (cfg.heartbeat_interval, cfg.heartbeat_timeout) == (3, 9)
    # flags and environment win over the file
    cfg = agent_cli.build_config(
        parse(["agent", "http", "8080", "--name", "demo", "--zone", "other.test", "--authtoken", "flagtok"]),
        env={**env, "GSLB_SERVER": "127.0.0.1:4443"},
    )
    assert cfg.zone == "other.test" and cfg.authtoken == "flagtok" and cfg.server == "127.0.0.1:4443"


def test_several_servers_from_flags_or_environment():
    args = parse(["agent", "tcp", "22", "--server", "127.0.0.1:1", "--server", "[::1]:2"])
    assert agent_cli.server_list(args, {}) == ["127.0.0.1:1", "[::1]:2"]
    args = parse(["agent", "tcp", "22"])
    assert agent_cli.server_list(args, {"GSLB_SERVER": "a:1, b:2"}) == ["a:1", "b:2"]
    assert agent_cli.server_list(args, {}) == []


def test_bad_defaults_file_is_reported_with_its_line(tmp_path):
    d = tmp_path / "agent.toml"
    d.write_text('zone = "lab.test"\nheartbeat_interval = "often"\n')
    with pytest.raises(ConfigError, match=r"agent.toml:2: heartbeat_interval: wrong type"):
        agent_cli.build_config(parse(["agent", "tcp", "22"]), env={"GSLB_AGENT_CONFIG": str(d), "GSLB_AUTHTOKEN": "t"})


def test_module_bind_options_come_from_the_modules_in_file_and_flags(tmp_path):
    text = GOOD.replace("proxy_protocol = true", 'proxy_protocol = true\nallow_cidrs = ["198.19.0.0/16"]\ndeny_cidrs = []')
    cfg = load_agent_config(write(tmp_path, text), env={})
    assert cfg.endpoints[1].bind_options() == {"proxy_protocol": True, "allow_cidrs": ["198.19.0.0/16"],
                                              "deny_cidrs": []}
    args = parse(["agent", "tcp", "22", "--allow-cidr", "10.0.0.0/8", "--allow-cidr", "2001:db8::/32",
                  "--deny-cidr", "10.9.0.0/16", "--zone", "lab.test", "--authtoken", "t"])
    ep = agent_cli.build_config(args, env={}).endpoints[0]
    assert ep.bind_options() == {"allow_cidrs": ["10.0.0.0/8", "2001:db8::/32"], "deny_cidrs": ["10.9.0.0/16"]}
    with pytest.raises(ConfigError, match="allow_cidrs: option 'allow_cidrs': "):
        agent_cli.build_config(parse(["agent", "http", "80", "--name", "d", "--allow-cidr", "x",
                                      "--zone", "lab.test", "--authtoken", "t"]), env={})


def test_protection_options_as_flags_and_as_agent_toml_tables(tmp_path):
    args = parse(["agent", "http", "8080", "--name", "demo", "--circuit-breaker", "0.5", "--rate-limit", "100/s",
                  "--zone", "lab.test", "--authtoken", "t"])
    ep = agent_cli.build_config(args, env={}).endpoints[0]
    assert ep.bind_options() == {"circuit_breaker": ["0.5"], "rate_limit": ["100/s"]}  # the hub normalizes
    text = GOOD.replace('port = 8080\n', 'port = 8080\nrate_limit = {{ rate = "10/s", burst = 20, key = "header:X-Api-Key" }}\n'
                        '[endpoints.circuit_breaker]\nerror_threshold = 0.5\nwindow = 2\ntripped_duration = 1\n')
    cfg = load_agent_config(write(tmp_path, text), env={})
    assert cfg.endpoints[0].bind_options() == {
        "rate_limit": {"rate": "10/s", "burst": 20, "key": "header:X-Api-Key"},
        "circuit_breaker": {"error_threshold": 0.5, "window": 2, "tripped_duration": 1}}


@pytest.mark.parametrize("line, expect", [
    ('rate_limit = "100/d"', r"agent.toml:10: endpoints\[0\].rate_limit: option 'rate_limit': '100/d' is not a rate"),
    ("circuit_breaker = {{ window = 0.5 }}",
     r"agent.toml:10: endpoints\[0\].circuit_breaker: option 'circuit_breaker'.window: 0.5 s is outside 1 s to 120 s"),
])
def test_bad_protection_options_in_agent_toml_name_file_line_and_key(tmp_path, line, expect):
    with pytest.raises(ConfigError, match=expect):
        load_agent_config(write(tmp_path, GOOD.replace("port = 8080\n", f"port = 8080\n{line}\n")), env={})
    with pytest.raises(ConfigError, match="option 'circuit_breaker': 'x' is not an error threshold"):
        agent_cli.build_config(parse(["agent", "http", "80", "--name", "d", "--circuit-breaker", "x",
                                      "--zone", "lab.test", "--authtoken", "t"]), env={})
