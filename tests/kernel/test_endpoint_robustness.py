"""Endpoints under abuse: forged namespace labels, invalid input, kill -9 in the middle of a create,
identity churn, and what a clean stop leaves on the host. Real agents, namespaces and traffic."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from apiary.loader.fs import cgroup2_root
from apiary.sensors.network.endpoints import PAUSE_ENV
from apiary.testing.agent import AgentProcess
from apiary.testing.net import Net

START = 120.0  # seconds for an agent to come up: other tests may load the machine
KUBE_SYSTEM_SAME_NAMESPACE = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: same-namespace-only, namespace: kube-system}
spec:
  endpointSelector: {matchLabels: {app: dns}}
  ingress:
  - fromEndpoints: [{}]
"""


@pytest.fixture
def net() -> Iterator[Net]:
    agent = AgentProcess()
    n = Net(agent)
    try:
        agent.start(timeout=START)
        yield n
    finally:
        n.close()
        if agent.proc and agent.proc.poll() is not None:
            agent.start(timeout=START)  # so that the endpoints are deleted through the API
        agent.cleanup()


def _netns_of(agent: AgentProcess) -> set[str]:
    return {n for n in os.listdir("/run/netns") if n.startswith(f"apiary-{agent.instance}-")}


def _routes() -> str:
    return subprocess.run(["ip", "route", "show", "table", "main"], capture_output=True, text=True).stdout


def _cgroup_dir(agent: AgentProcess) -> Path:
    root = cgroup2_root()
    assert root
    return Path(root) / "apiary" / agent.instance


def _status(agent: AgentProcess) -> dict[str, object]:
    return agent.client().get("/v1/status")["network"]


def test_forged_namespace_label_is_refused(net: Net) -> None:
    agent = net.agent
    dns = net.endpoint("dns", "kube-system", app="dns")
    net.endpoint("friend", "kube-system", app="client")
    net.serve("kube-system/dns", "serve-tcp", "5353")
    net.apply_ok(KUBE_SYSTEM_SAME_NAMESPACE)
    assert net.probe("kube-system/friend", "tcp", dns["ipv4"], "5353", "1")  # same namespace: allowed
    r = agent.cli("endpoint", "create", "spoof", "-n", "odd", "-l", "io.kubernetes.pod.namespace=kube-system")
    assert r.returncode == 1 and "io.kubernetes.pod.namespace" in r.stderr and "reserved" in r.stderr, r.stderr
    r = agent.cli("endpoint", "create", "spoof", "-n", "odd", "-l", "io.cilium.k8s.namespace.labels.team=infra")
    assert r.returncode == 1 and "io.cilium.k8s.namespace.labels.team" in r.stderr, r.stderr
    names = [e["name"] for e in json.loads(net.cli_ok("endpoint", "list", "-o", "json"))]
    assert sorted(names) == ["dns", "friend"]
    net.endpoint("spoof", "odd", app="client")  # without the forged label: an endpoint of namespace odd
    assert not net.probe("odd/spoof", "tcp", dns["ipv4"], "5353", "1")


def test_invalid_input_is_refused_naming_the_field(net: Net) -> None:
    agent = net.agent
    before = net.cli_ok("endpoint", "list", "-o", "json")
    netns_before = _netns_of(agent)
    for args, field in [
        (["web\n"], "name"),
        (["web", "-n", "a..b"], "namespace"),
        (["web", "-l", "app=has space"], "labels.app"),
        (["web", "-l", "app=" + "x" * 100_000], "labels.app"),
        (["web", "-l", "bad key=x"], "labels.bad key"),
    ]:
        r = agent.cli("endpoint", "create", *args)
        assert r.returncode == 1 and f"{field}:" in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
        assert len(r.stderr) < 1000  # a 100 KB value is not echoed back
    http = agent.client().http
    for body, field in [
        ({"name": "web", "labels": {"": "x"}}, "labels"),
        ({"name": "web", "labels": {"app": "a\nb"}}, "labels.app"),
        ({"name": 5}, "name"),
        ({"name": "web", "namespace": ["x"]}, "namespace"),
    ]:
        resp = http.post("/v1/endpoints", json=body)
        assert resp.status_code == 400 and resp.json()["field"] == field, (body, resp.text)
    resp = http.get("/v1/policy/explain", params={"from": "a/b", "to": "c/d", "port": "５６７８/TCP"})
    assert resp.status_code == 400 and resp.json()["field"] == "port"
    assert net.cli_ok("endpoint", "list", "-o", "json") == before and _netns_of(agent) == netns_before


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A route of this test's own in a range no agent uses (no traffic is ever sent to it)."""
    prefix = f"10.251.{os.getpid() % 250}.0/24"
    subprocess.run(["ip", "route", "add", "blackhole", prefix], check=True)
    try:
        yield prefix
    finally:
        subprocess.run(["ip", "route", "del", "blackhole", prefix], check=False)


def test_pod_cidr_that_overlaps_loopback_or_the_hosts_routes_is_refused(blackhole: str) -> None:
    for cidr, code, says in [
        ("127.0.0.0/8", 2, "loopback"),
        ("0.0.0.0/0", 2, "too wide"),
        (blackhole.replace(".0/24", ".0/25"), 1, f"blackhole route to {blackhole}"),
    ]:
        agent = AgentProcess()
        agent.pod_cidr = cidr
        try:
            with pytest.raises(RuntimeError) as e:
                agent.start(timeout=START)
            assert agent.proc is not None and agent.proc.returncode == code, e.value
            assert says in str(e.value) and "Traceback" not in str(e.value), str(e.value)
        finally:
            agent.stop()
            for d in (agent.dir, Path(agent.pin_root)):
                subprocess.run(["rm", "-rf", str(d)], check=False)
        routes = _routes()  # nothing installed, nothing removed (other agents may change other routes)
        assert f"blackhole {blackhole}" in routes and f"unreachable {cidr}" not in routes


def test_kill9_during_create_is_undone_at_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "paused"
    monkeypatch.setenv(PAUSE_ENV, str(marker))
    agent = AgentProcess()
    net = Net(agent)
    try:
        agent.start(timeout=START)
        monkeypatch.delenv(PAUSE_ENV)  # only this first agent process pauses
        create = subprocess.Popen(
            [sys.executable, "-m", "apiary", "--socket", agent.socket, "endpoint", "create", "web"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), agent.log()
        orphan = _netns_of(agent)
        assert len(orphan) == 1  # netns, veth and host route exist; the state file does not know them
        assert f"{agent.pod_cidr.rsplit('.', 1)[0]}.2 dev lxc" in _routes()
        agent.stop(signal.SIGKILL)
        create.wait(timeout=60)
        assert create.returncode != 0
        # and objects of this instance that no journal mentions (an older agent's, say)
        stray_ns = f"apiary-{agent.instance}-0123456789"
        subprocess.run(["ip", "netns", "add", stray_ns], check=True)
        stray_cg = _cgroup_dir(agent) / "stray_x"
        stray_cg.mkdir(parents=True)
        agent.start(timeout=START)
        log = agent.log()
        assert "undid the interrupted creation of endpoint default/web" in log, log
        assert stray_ns in log and "stray_x" in log
        assert _netns_of(agent) == set() and not stray_cg.exists()
        other = net.endpoint("other", "default", app="other")  # took "File exists" before: the orphan's IP
        web = net.endpoint("web", "default", app="web")
        assert other["ipv4"].endswith(".2") and web["ipv4"].endswith(".3")
        assert _netns_of(agent) == {os.path.basename(other["netns"]), os.path.basename(web["netns"])}
        net.serve("default/web", "serve-tcp", "5678")
        assert net.probe("default/other", "tcp", web["ipv4"], "5678", "1")
        net.cli_ok("endpoint", "delete", "default/web")
        net.cli_ok("endpoint", "delete", "default/other")
        assert _netns_of(agent) == set()
        assert not list((agent.dir / "state").glob("endpoints.journal*"))
    finally:
        net.close()
        if agent.proc and agent.proc.poll() is not None:
            agent.start(timeout=START)
        agent.cleanup()


def test_clean_stop_leaves_host_objects_only_while_endpoints_exist(net: Net) -> None:
    agent = net.agent
    unreachable, svc_route = f"unreachable {agent.pod_cidr}", f"unreachable {agent.service_cidr}"
    assert unreachable in _routes() and svc_route in _routes() and _cgroup_dir(agent).is_dir()
    assert agent.stop() == 0
    assert unreachable not in _routes() and not _cgroup_dir(agent).exists()
    assert svc_route not in _routes()  # no service: the service CIDR's route goes too
    agent.start(timeout=START)
    ep = net.endpoint("keeper", "default", app="x")
    assert agent.stop() == 0  # endpoints keep enforcing while the agent is down: their host objects stay
    assert unreachable in _routes() and Path(ep["cgroup"]).is_dir()
    agent.start(timeout=START)
    net.cli_ok("endpoint", "delete", "default/keeper")
    assert agent.stop() == 0
    assert unreachable not in _routes() and not _cgroup_dir(agent).exists()
    agent.start(timeout=START)


def _cidr_policy(name: str, n: int) -> str:
    cidrs = "\n".join(f"    - 198.18.{i // 16}.{i % 16 * 16}/28" for i in range(n))
    return f"""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: {name}, namespace: default}}
spec:
  endpointSelector: {{matchLabels: {{app: x}}}}
  egress:
  - toCIDR:
{cidrs}
"""


def test_identities_are_released_when_nothing_references_them(net: Net) -> None:
    agent = net.agent
    net.endpoint("a", "default", app="x")
    base = _status(agent)["identities_allocated"]
    listed = len(agent.client().get("/v1/identities"))
    state = agent.dir / "state" / "identities.json"
    for _ in range(10):
        net.apply_ok(_cidr_policy("hundred", 100))
        assert _status(agent)["identities_allocated"] == base + 100
        net.cli_ok("policy", "delete", "hundred", "-n", "default")
    assert _status(agent)["identities_allocated"] == base
    assert len(agent.client().get("/v1/identities")) == listed
    assert len(json.loads(state.read_text())["identities"]) == base
    t0 = time.monotonic()
    net.apply_ok(_cidr_policy("big", 500 if os.environ.get("APIARY_TEST_KERNEL") else 2000))
    print(f"\n2,000-CIDR policy applied through the CLI in {time.monotonic() - t0:.2f} s")
    net.cli_ok("policy", "delete", "big", "-n", "default")
    net.cli_ok("endpoint", "delete", "default/a")  # its label identity goes with the last endpoint using it
    assert _status(agent)["identities_allocated"] == base - 1


def test_interrupted_delete_is_finished_at_restart(net: Net) -> None:
    """An agent killed after journalling a delete (the veth may be gone, the state not yet written)."""
    agent = net.agent
    ep = net.endpoint("doomed", "default", app="x")
    keep = net.endpoint("kept", "default", app="y")
    state = agent.dir / "state"
    (rec,) = [e for e in json.loads((state / "endpoints.json").read_text()) if e["name"] == "doomed"]
    agent.stop(signal.SIGKILL)
    (state / "endpoints.journal").write_text(json.dumps({"op": "delete", "endpoint": rec}))
    subprocess.run(["ip", "link", "del", ep["interface"]], check=True)  # the delete had got this far
    agent.start(timeout=START)
    assert "finished the interrupted deletion of endpoint default/doomed" in agent.log()
    rows = json.loads(net.cli_ok("endpoint", "list", "-o", "json"))
    assert [(r["name"], r["state"]) for r in rows] == [("kept", "ready")]
    assert _netns_of(agent) == {os.path.basename(keep["netns"])} and not Path(ep["cgroup"]).exists()
    assert not (state / "endpoints.journal").exists()
