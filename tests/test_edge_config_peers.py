"""[registry], [peer] and [peers.<pop>]: optional, defaults keep the one-node edge."""
from __future__ import annotations

import pytest

from edge.agent.client import split_addr
from edge.config import ConfigError, PeerConfig, RegistryConfig, parse

BASE = """
zone = "lab.test"
[edge]
ca_dir = "/tmp/ca"
[pops.eu]
listen = ["198.19.2.1"]
[pops.us]
listen = ["198.19.1.1"]
"""


def test_without_new_keys_registry_is_memory_and_there_are_no_peers():
    cfg = parse(BASE, "eu")
    assert cfg.registry == RegistryConfig() and cfg.registry.kind == "memory"
    assert cfg.peer == PeerConfig() and cfg.peers == () and cfg.peer_listen == ()


def test_etcd_registry_and_peers_parse_and_own_peer_address_is_the_listener():
    cfg = parse(BASE + """
[registry]
kind = "etcd"
endpoints = ["http://10.77.0.21:2379", "http://10.77.0.22:2379"]
lease_ttl = 6
[peers.eu]
address = "198.19.2.1:4443"
ingress = ["198.19.2.1:443", "[2001:db8:19:2::1]:443"]
[peers.us]
address = "[2001:db8:19:1::1]:4443"
""", "eu")
    assert cfg.registry.endpoints == ("http://10.77.0.21:2379", "http://10.77.0.22:2379")
    assert cfg.registry.lease_ttl == 6.0 and cfg.registry.prefix == "/gslb/"
    assert cfg.peer_listen == (("198.19.2.1", 4443),)
    assert cfg.peer_address("us") == ("2001:db8:19:1::1", 4443)
    assert cfg.peer_address("jp") is None
    assert cfg.peers[0].ingress == (("198.19.2.1", 443), ("2001:db8:19:2::1", 443))
    assert cfg.peer_name == "eu.peer.lab.test"


def test_explicit_peer_listen_wins():
    cfg = parse(BASE + '[peer]\nlisten = ["127.0.0.11:4443"]\n[peers.eu]\naddress = "198.19.2.1:4443"\n', "eu")
    assert cfg.peer_listen == (("127.0.0.11", 4443),)


@pytest.mark.parametrize("extra, where", [
    ('[registry]\nkind = "zookeeper"\n', "registry.kind"),
    ('[registry]\nkind = "etcd"\n', "registry.endpoints"),
    ('[registry]\nendpoints = ["10.0.0.1:2379"]\n', "registry.endpoints"),
    ('[registry]\nprefix = "gslb"\n', "registry.prefix"),
    ('[registry]\nlease_ttl = 0.5\n', "registry.lease_ttl"),
    ('[registry]\nbogus = 1\n', "registry.bogus"),
    ('[peer]\nlisten = ["nowhere"]\n', "peer.listen"),
    ('[peers.us]\naddress = "198.19.1.1"\n', "peers.us.address"),
    ('[peers.us]\nport = 1\n', "peers.us.port"),
])
def test_bad_new_keys_name_file_line_and_key(extra, where):
    with pytest.raises(ConfigError, match=rf"edge.toml:\d+: {where}"):
        parse(BASE + extra, "eu", "edge.toml")


def test_agent_split_addr_for_ingress_addresses():
    assert split_addr("198.19.1.1:8443", 443) == ("198.19.1.1", 8443)
    assert split_addr("[2001:db8::1]:8443", 443) == ("2001:db8::1", 8443)
    assert split_addr("[2001:db8::1]", 443) == ("2001:db8::1", 443)
    assert split_addr("us.connect.lab.test", 443) == ("us.connect.lab.test", 443)
    with pytest.raises(ValueError):
        split_addr("198.19.1.1:http", 443)
