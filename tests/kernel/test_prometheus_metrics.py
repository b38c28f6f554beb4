"""`apiary agent --metrics-addr`: a real agent's exposition checked by promtool, scraped by a real Prometheus,
and the deploy/ dashboard's queries checked against the names it really serves."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from apiary.testing.agent import AgentProcess
from apiary.testing.net import DENY_ALL_INGRESS, Net
from apiary.testing.prom import PrometheusServer, exposed_names, free_port, promql_metric_names

NS = "test-namespace"
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
# the names the issue asks for, all served (a labelled family with no sample yet still has its TYPE line)
REQUIRED = [
    "hubble_flows_processed_total", "hubble_drop_total", "hubble_tcp_flags_total", "hubble_port_distribution_total",
    "hubble_policy_verdicts_total", "hubble_lost_events_total", "tetragon_events_total",
    "tetragon_policy_events_total", "tetragon_bpf_missed_events_total", "tetragon_process_cache_size",
    "apiary_bpf_map_pressure", "apiary_bpf_program_runs_total", "apiary_bpf_program_run_seconds_total",
    "apiary_bpf_stats_enabled", "apiary_endpoints", "apiary_identities", "apiary_policies", "apiary_services",
    "apiary_build_info", "tetragon_map_entries", "tetragon_map_capacity", "tetragon_tracingpolicy_loaded",
]

pytestmark = pytest.mark.skipif(shutil.which("promtool") is None, reason="prometheus not installed (scripts/setup.sh)")


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AgentProcess, Net, str]]:
    """An agent serving metrics on a loopback port (drop metric with pod context labels), two endpoints, one
    connection refused by policy; an events file export (the alert rules use its loss counter)."""
    addr = f"127.0.0.1:{free_port()}"
    agent = AgentProcess(
        "--metrics-addr", addr, "--bpf-stats",
        "--hubble-metrics", "flow drop:sourceContext=pod;destinationContext=pod tcp port-distribution policy",
        "--export-filename", str(tmp_path_factory.mktemp("export") / "events.json"),
    )
    net = Net(agent)
    try:
        agent.start()
        net.eps = {  # type: ignore[attr-defined]
            "client": net.endpoint("client", NS, app="client"),
            "backend": net.endpoint("backend", NS, app="backend"),
        }
        net.serve(f"{NS}/backend", "serve-tcp", "5678")
        ip = net.eps["backend"]["ipv4"]  # type: ignore[attr-defined]
        assert net.probe(f"{NS}/client", "tcp", ip, "5678", "1")
        net.apply_ok(DENY_ALL_INGRESS)
        assert not net.probe(f"{NS}/client", "tcp", ip, "5678", "1")
        net.flows()  # the agent has read the flows
        yield agent, net, addr
    finally:
        net.close()
        agent.cleanup()


def _text(addr: str) -> str:
    r = httpx.get(f"http://{addr}/metrics", timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return r.text


def test_exposition_has_the_real_names_and_passes_promtool(scraped: tuple[AgentProcess, Net, str]) -> None:
    agent, _, addr = scraped
    text = _text(addr)
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    names = exposed_names(text)
    assert [n for n in REQUIRED if n not in names] == []
    assert "_created" not in text  # Hubble and Tetragon have no such series
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    # Tetragon's map gauges cover the process sensor's maps; no TracingPolicy is loaded in this agent
    capacity = {dict(k[1])["map"]: v for k, v in samples.items() if k[0] == "tetragon_map_capacity"}
    assert capacity and all(v > 0 for v in capacity.values()), capacity
    assert ("tetragon_tracingpolicy_loaded", (("state", "enabled"),)) in samples
    assert value("tetragon_tracingpolicy_loaded", state="enabled") == 0

    # the drop carries the context labels asked for (sourceContext=pod, destinationContext=pod)
    drop = dict(source=f"{NS}/client", destination=f"{NS}/backend", reason="POLICY_DENIED", protocol="TCP")
    assert value("hubble_drop_total", **drop) >= 1
    assert value("hubble_tcp_flags_total", flag="SYN", family="IPv4") >= 1
    assert value("hubble_port_distribution_total", protocol="TCP", port="5678") >= 1
    assert value("hubble_policy_verdicts_total", direction="ingress", match="none", action="dropped") >= 1
    assert value("apiary_endpoints") == 2 and value("apiary_policies") == 1 and value("apiary_identities") >= 2
    assert value("tetragon_process_cache_size") > 0
    # Tetragon's event labels: the execs in the endpoints (the probe and the server) by pod, binary and node
    execs = [dict(k[1]) for k, v in samples.items()
             if k[0] == "tetragon_events_total" and dict(k[1])["type"] == "PROCESS_EXEC" and v >= 1]
    assert execs and all(set(e) == {"type", "namespace", "workload", "pod", "binary", "node_name"} for e in execs)
    in_pods = [e for e in execs if e["namespace"] == NS]
    assert {e["pod"] for e in in_pods} == {"client", "backend"}, in_pods
    assert all(e["binary"].startswith("/") and e["node_name"] == agent.node_name for e in in_pods), in_pods
    assert value("apiary_bpf_stats_enabled") == 1
    assert value("apiary_bpf_program_runs_total", program="to_container", attach="tc (per endpoint veth)") > 0
    assert 0 < value("apiary_bpf_map_pressure", map_name="endpoints") < 1
    # the unix-socket API serves the same families
    assert exposed_names(agent.client().http.get("/metrics").text) == names
    assert "Prometheus metrics on http://" + addr + "/metrics" in agent.log()


def test_prometheus_scrapes_the_agent_and_answers_promql(scraped: tuple[AgentProcess, Net, str]) -> None:
    agent, net, addr = scraped
    with PrometheusServer([addr]) as prom:
        up = prom.wait_for('up{job="apiary"} == 1')
        assert up, prom.log_text()
        q = f'sum(hubble_drop_total{{reason="POLICY_DENIED", source="{NS}/client"}})'
        before = float(prom.wait_for(q)[0]["value"][1])
        assert before >= 1
        # move the counter: one more refused connection, seen by Prometheus on a later scrape
        assert not net.probe(f"{NS}/client", "tcp", net.eps["backend"]["ipv4"], "5678", "1")  # type: ignore[attr-defined]
        moved = prom.wait_for(f"{q} > {before}")
        assert moved and float(moved[0]["value"][1]) > before, prom.log_text()
        execs = prom.wait_for('tetragon_events_total{type="PROCESS_EXEC"} > 0')
        assert execs
        # every query of the dashboard parses and runs on the real server
        for expr in _dashboard_exprs():
            prom.query(expr.replace("$__rate_interval", "1m"))


def _dashboard_exprs() -> list[str]:
    dash = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 6
    return exprs


def test_every_dashboard_query_uses_served_names(scraped: tuple[AgentProcess, Net, str]) -> None:
    _, _, addr = scraped
    served = exposed_names(_text(addr)) | {"up"}  # `up` is Prometheus's own, per target
    dash = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    titles = {p["title"] for p in dash["panels"]}
    for needed in ("Flows by verdict", "Drops by reason", "Runtime events by type", "TracingPolicy events",
                   "Losses", "BPF map pressure"):
        assert needed in titles
    for expr in _dashboard_exprs():
        names = promql_metric_names(expr)
        assert names, expr
        assert names <= served, f"{expr}: not served: {sorted(names - served)}"
    rules = (DEPLOY / "prometheus-rules.yaml").read_text()
    import yaml

    for group in yaml.safe_load(rules)["groups"]:
        for rule in group["rules"]:
            assert promql_metric_names(rule["expr"]) <= served, rule["alert"]


def test_metrics_port_taken_is_one_clear_error() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        agent = AgentProcess("--metrics-addr", f"127.0.0.1:{port}", "--no-network")
        try:
            with pytest.raises(RuntimeError) as e:
                agent.start()
            assert f"--metrics-addr 127.0.0.1:{port}: cannot listen" in str(e.value)
            assert "Traceback" not in str(e.value)
        finally:
            agent.cleanup()


@pytest.mark.parametrize("flag", [(), ("--no-bpf-stats",)], ids=["default", "no-bpf-stats"])
def test_without_bpf_stats_the_metrics_say_so(flag: tuple[str, ...]) -> None:
    """Off by default (every BPF program run on the node would pay two clock reads): the metrics say so, and
    so does `apiary status`."""
    addr = f"127.0.0.1:{free_port()}"
    with AgentProcess("--metrics-addr", addr, "--no-network", *flag) as agent:
        text = _text(addr)
        assert "apiary_bpf_stats_enabled 0.0" in text
        assert agent.client().get("/v1/status")["bpf_stats"] is False
        assert "--bpf-stats" in agent.cli("status", "--verbose").stdout
        assert "apiary_endpoints 0.0" in text and "hubble_flows_processed_total" not in text  # no datapath
        assert "tetragon_events_total" in text
        assert agent.proc is not None and agent.proc.poll() is None
