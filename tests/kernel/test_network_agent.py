"""Network behaviour across agent restarts and agent-wide modes, with real traffic."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator

import pytest

from apiary.testing.agent import AgentProcess
from apiary.testing.net import DENY_ALL_INGRESS, Net

NS = "test-namespace"


@pytest.fixture
def pair_factory() -> Iterator[object]:
    made: list[tuple[AgentProcess, Net]] = []

    def make(*extra: str) -> tuple[AgentProcess, Net]:
        agent = AgentProcess(*extra)
        net = Net(agent)
        made.append((agent, net))
        agent.start()
        net.eps = {
            "client": net.endpoint("client", NS, app="client"),
            "backend": net.endpoint("backend", NS, app="backend"),
        }
        net.serve(f"{NS}/backend", "serve-tcp", "5678")
        return agent, net

    yield make
    for agent, net in made:
        net.close()
        if agent.proc and agent.proc.poll() is not None:
            agent.start()  # bring it back so the endpoints are deleted through the API
        agent.cleanup()


def _can(net: Net) -> bool:
    return net.probe(f"{NS}/client", "tcp", net.eps["backend"]["ipv4"], "5678", "1")


def test_audit_mode_forwards_would_be_drops_and_reports_audit(pair_factory) -> None:
    agent, net = pair_factory("--policy-audit-mode")
    net.apply_ok(DENY_ALL_INGRESS)
    assert _can(net)  # forwarded in audit mode
    flows = net.flows("--to-pod", f"{NS}/backend", "--port", "5678")
    audited = [f for f in flows if f.get("verdict") == "AUDIT"]
    assert audited, flows
    assert "default deny" in audited[0]["extensions"]["apiary"]["decided_by"]
    out = net.cli_ok("policy", "explain", "--from", f"{NS}/client", "--to", f"{NS}/backend", "--port", "5678/TCP")
    assert out.startswith("AUDIT")


def test_enforcement_always_and_never(pair_factory) -> None:
    _, always = pair_factory("--enable-policy", "always")
    assert not _can(always)  # selected by nothing, still default deny
    rows = json.loads(always.cli_ok("endpoint", "list", "-o", "json"))
    assert all(r["ingress_enforcement"] and r["egress_enforcement"] for r in rows)
    _, never = pair_factory("--enable-policy", "never")
    never.apply_ok(DENY_ALL_INGRESS)
    assert _can(never)


def test_restart_keeps_enforcement_identities_and_policies(pair_factory) -> None:
    agent, net = pair_factory()
    net.apply_ok(DENY_ALL_INGRESS)
    assert not _can(net)
    before = json.loads(net.cli_ok("endpoint", "list", "-o", "json"))
    assert agent.stop(signal.SIGKILL) is not None  # no clean shutdown at all
    assert not _can(net)  # the kernel keeps enforcing while no agent runs
    agent.start()
    after = json.loads(net.cli_ok("endpoint", "list", "-o", "json"))
    assert [(r["name"], r["identity"], r["ipv4"]) for r in after] == [
        (r["name"], r["identity"], r["ipv4"]) for r in before
    ]
    assert [p["name"] for p in json.loads(net.cli_ok("policy", "list", "-o", "json"))["policies"]] == ["lockdown"]
    assert not _can(net)
    net.cli_ok("policy", "delete", "lockdown", "-n", NS)
    assert _can(net)


def test_observe_table_not_and_json_shape(pair_factory) -> None:
    _, net = pair_factory()
    assert _can(net)
    out = net.cli_ok("observe", "-o", "table", "--last", "5", "--to-pod", f"{NS}/backend")
    assert out.splitlines()[0].split()[:5] == ["TIMESTAMP", "SOURCE", "DESTINATION", "TYPE", "VERDICT"]
    flows = net.flows("--not", "--to-pod", f"{NS}/backend")
    assert flows and all(f.get("destination", {}).get("pod_name") != "backend" for f in flows)
    line = net.cli_ok("observe", "-o", "json", "--last", "1").splitlines()[0]
    resp = json.loads(line)
    assert set(resp) == {"flow", "node_name", "time"} and resp["flow"]["Type"] == "L3_L4"
    r = net.agent.cli("observe", "--bogus-filter", "x")
    assert r.returncode == 2 and "--bogus-filter" in r.stderr
    # the service filters go through the CLI and the agent (no service is configured: nothing has one)
    assert net.flows("--not", "--service", f"{NS}/backend") and not net.flows("--to-service", f"{NS}/")
    r = net.agent.cli("observe", "--to-service", "Bad/Name")
    assert r.returncode == 2 and "--to-service: invalid service 'Bad/Name'" in r.stderr
    # hubble's selectors: --first, --all, --since/--until (windows over the flows' times)
    every = [json.loads(x) for x in net.cli_ok("observe", "-o", "json", "--all").splitlines()]
    hour = [json.loads(x) for x in net.cli_ok("observe", "-o", "json", "--since", "1h").splitlines()]
    assert len(every) > 2 and hour[:len(every)] == every  # (a flow may come between the two)
    firsts = [json.loads(x) for x in net.cli_ok("observe", "-o", "json", "--first", "2").splitlines()]
    assert firsts == every[:2]
    assert net.cli_ok("observe", "--until", "2000-01-01T00:00:00Z") == ""  # before any flow
    later = net.cli_ok("observe", "-o", "json", "--since", every[-1]["time"]).splitlines()
    assert later and json.loads(later[0])["time"] >= every[-1]["time"]


def test_prometheus_metrics_have_hubble_and_tetragon_names(pair_factory) -> None:
    agent, net = pair_factory()
    assert _can(net)
    time.sleep(0.3)
    text = agent.client().http.get("/metrics").text
    assert 'hubble_flows_processed_total{protocol="TCP",subtype="to-endpoint",type="Trace",verdict="FORWARDED"}' in text
    assert "tetragon_events_total" in text and 'type="PROCESS_EXEC"' in text


def test_policy_over_map_capacity_is_refused_whole_and_pressure_is_shown(pair_factory) -> None:
    agent, net = pair_factory("--policy-map-size", "16")
    ports = ", ".join(f'{{port: "{p}", protocol: TCP}}' for p in range(7000, 7030))
    r = net.apply(f"""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {{name: too-big, namespace: test-namespace}}
        spec:
          endpointSelector: {{matchLabels: {{app: backend}}}}
          ingress:
          - toPorts: [{{ports: [{ports}]}}]
    """)
    assert r.returncode != 0 and "capacity is 16" in r.stderr and "nothing was written" in r.stderr
    assert json.loads(net.cli_ok("policy", "list", "-o", "json"))["policies"] == []
    assert _can(net)  # nothing changed in the datapath
    net.apply_ok("""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: small, namespace: test-namespace}
        spec:
          endpointSelector: {matchLabels: {app: backend}}
          ingress:
          - toPorts: [{ports: [{port: "5678", protocol: TCP}]}]
    """)
    st = json.loads(net.cli_ok("status", "-o", "json"))["network"]["policy_map"]
    assert st["capacity"] == 16 and st["entries"] == 1 and st["fill_pct"] == 6.25
