"""What `gslb lab exec HOST` adds to the environment: a bare `gslb agent` in the agent host connects."""
from __future__ import annotations

from netns import lab
from netns.plan import default_plan_path, load_plan

PLAN = load_plan(default_plan_path())


def _state(**kw) -> lab.LabState:
    hosts = [{"name": h.name, "role": h.role} for h in PLAN.hosts]
    return lab.LabState(prefix="t", dir="/run/gslb-lab/t", plan=PLAN.path, status="up", hosts=hosts, **kw)


def test_agent_host_gets_the_agent_config_and_every_pops_ingress_name():
    servers = lab.agent_servers(PLAN)
    st = _state(agent_config="/run/gslb-lab/t/agent.toml", agent_servers=servers)
    env = lab.exec_env(st, "agent")
    assert env["GSLB_AGENT_CONFIG"] == "/run/gslb-lab/t/agent.toml"
    if lab.AGENT_BINDS_EVERY_POP:
        assert env["GSLB_SERVER"].split(",") == [f"{p.id}.connect.lab.test:443" for p in PLAN.pops]
    else:
        assert "GSLB_SERVER" not in env


def test_other_hosts_and_a_lab_without_an_edge_get_nothing():
    st = _state(agent_config="/run/gslb-lab/t/agent.toml", agent_servers=lab.agent_servers(PLAN))
    assert lab.exec_env(st, "client-jp") == {} and lab.exec_env(st, "pop-eu") == {}
    assert lab.exec_env(_state(), "agent") == {}


def test_state_round_trips_the_edge_keys():
    st = _state(ca="/x/ca.pem", authtoken_file="/x/authtoken", edge_config="/x/edge.toml",
                agent_config="/x/agent.toml", agent_servers=["eu.connect.lab.test:443"])
    back = lab.LabState.from_json(st.to_json())
    assert (back.ca, back.authtoken_file, back.edge_config, back.agent_config, back.agent_servers) == (
        "/x/ca.pem", "/x/authtoken", "/x/edge.toml", "/x/agent.toml", ["eu.connect.lab.test:443"])
    # a state.json written before the edge existed still loads
    old = {k: v for k, v in st.to_json().items() if k not in ("ca", "authtoken_file", "edge_config",
                                                              "agent_config", "agent_servers")}
    assert lab.LabState.from_json(old).ca is None
