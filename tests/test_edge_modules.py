"""The module chain and IP restriction."""
from __future__ import annotations

import pytest

from edge.modules import ModuleConfigError, Subject, Verdict, build_chain
from edge.modules.base import ALLOW, PASS, Chain, client_ip
from edge.modules.ip_restriction import IpRestriction


def subj(addr: str, **options) -> Subject:
    return Subject(client_ip=client_ip(addr), client_port=1234, kind="http", endpoint="demo", options=options)


def test_empty_chain_allows():
    assert Chain().decide(subj("192.0.2.1")) == ALLOW


def test_deny_list_answers_403():
    m = IpRestriction.from_config({"deny_cidrs": ["192.0.2.0/24"]})
    d = m.decide(subj("192.0.2.7"))
    assert d.verdict is Verdict.ANSWER and d.status == 403 and d.code == "ERR_GSLB_3210"
    assert m.decide(subj("198.51.100.1")) is PASS


def test_allow_list_refuses_outsiders_and_passes_members():
    m = IpRestriction.from_config({"allow_cidrs": ["10.0.0.0/8", "2001:db8::/32"]})
    assert m.decide(subj("10.1.2.3")) is PASS
    assert m.decide(subj("2001:db8::5")) is PASS
    assert m.decide(subj("11.0.0.1")).status == 403
    assert m.decide(subj("2001:db9::1")).status == 403


def test_ipv4_mapped_client_matches_ipv4_lists():
    m = IpRestriction.from_config({"deny_cidrs": ["127.0.0.0/8"]})
    assert m.decide(subj("::ffff:127.0.0.1")).status == 403


def test_ipv4_mapped_cidr_is_treated_as_ipv4():
    m = IpRestriction.from_config({"deny_cidrs": ["::ffff:192.0.2.0/120"]})
    assert m.decide(subj("192.0.2.9")).status == 403


def test_endpoint_options_apply_on_top_of_edge_lists():
    m = IpRestriction.from_config({})
    assert m.decide(subj("192.0.2.7", deny_cidrs=["192.0.2.0/24"])).status == 403
    assert m.decide(subj("192.0.2.7", allow_cidrs=["198.51.100.0/24"])).status == 403
    assert m.decide(subj("198.51.100.4", allow_cidrs=["198.51.100.0/24"])) is PASS


def test_deny_wins_over_allow():
    m = IpRestriction.from_config({"allow_cidrs": ["192.0.2.0/24"], "deny_cidrs": ["192.0.2.7/32"]})
    assert m.decide(subj("192.0.2.7")).status == 403
    assert m.decide(subj("192.0.2.8")) is PASS


def test_bad_endpoint_options_fail_closed():
    m = IpRestriction.from_config({})
    assert m.decide(subj("192.0.2.7", allow_cidrs=["not-a-cidr"])).status == 403


@pytest.mark.parametrize("opts", [
    {"allow_cidrs": "10.0.0.0/8"}, {"deny_cidrs": ["10.0.0.1/8"]}, {"deny_cidrs": ["x"]}, {"color": "red"},
])
def test_bad_config_is_a_typed_error(opts):
    with pytest.raises(ModuleConfigError):
        IpRestriction.from_config(opts)


def test_chain_order_first_non_pass_wins():
    class AllowAll:
        name = "allow_all"

        def decide(self, s):
            return ALLOW

    deny = IpRestriction.from_config({"deny_cidrs": ["0.0.0.0/0"]})
    assert Chain((AllowAll(), deny)).decide(subj("192.0.2.1")) == ALLOW
    assert Chain((deny, AllowAll())).decide(subj("192.0.2.1")).status == 403


def test_build_chain_rejects_unknown_module():
    with pytest.raises(ModuleConfigError, match="unknown module"):
        build_chain(["rate_limit_typo"], {})
    chain = build_chain(["ip_restriction"], {"ip_restriction": {"deny_cidrs": ["::1/128"]}})
    assert chain.decide(subj("::1")).status == 403
