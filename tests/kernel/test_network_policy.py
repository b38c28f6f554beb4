"""CiliumNetworkPolicy enforced in the kernel, checked with real traffic between real namespaces.

For every case: the connection outcome (TCP echo, HTTP, UDP echo, ping) and the flow record the
agent produced (verdict, drop reason, direction, identities, policy)."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from apiary.testing.agent import AgentProcess
from apiary.testing.net import Net

NS = "test-namespace"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    agent = AgentProcess()
    n = Net(agent)
    try:
        agent.start()
        n.eps = {
            "frontend": n.endpoint("frontend", NS, app="frontend"),
            "frontend2": n.endpoint("frontend2", NS, app="frontend"),
            "backend": n.endpoint("backend", NS, app="backend"),
            "backend2": n.endpoint("backend2", NS, app="backend"),
            "other": n.endpoint("other", NS, app="other"),
            "stranger": n.endpoint("stranger", "elsewhere", app="frontend"),
        }
        for b in ("backend", "backend2"):
            n.serve(f"{NS}/{b}", "serve-tcp", "5678", "8080", "9000", "9005", "9010")
        n.serve(f"{NS}/backend", "serve-udp", "5353")
        n.serve(f"{NS}/backend2", "serve-http", "8000")
        yield n
    finally:
        n.close()
        agent.cleanup()


@pytest.fixture(autouse=True)
def no_policies_after(net: Net) -> Iterator[None]:
    yield
    net.delete_policies()


def ip(net: Net, name: str) -> str:
    return net.eps[name]["ipv4"]


def ident(net: Net, name: str) -> int:
    rows = json.loads(net.cli_ok("endpoint", "list", "-o", "json"))
    return next(r["identity"] for r in rows if r["name"] == name)


def tcp(net: Net, src: str, dst: str, port: int, ns: str = NS) -> bool:
    return net.probe(f"{ns}/{src}", "tcp", ip(net, dst), str(port), "1")


def last_drop(flows: list[dict[str, Any]], dst_port: int) -> dict[str, Any]:
    drops = [
        f
        for f in flows
        if f.get("verdict") == "DROPPED"
        and f.get("event_type", {}).get("type") == 1
        and f["l4"].get("TCP", f["l4"].get("UDP", {})).get("destination_port") == dst_port
    ]
    assert drops, f"no drop flow to port {dst_port}"
    return drops[-1]


ALLOW_FRONTEND = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: allow-frontend, namespace: test-namespace}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: frontend}
"""


def test_no_policy_everything_flows(net: Net) -> None:
    assert tcp(net, "frontend", "backend", 5678)
    assert tcp(net, "other", "backend", 8080)
    assert net.probe(f"{NS}/frontend", "udp", ip(net, "backend"), "5353")
    assert net.probe(f"{NS}/frontend", "http", ip(net, "backend2"), "8000")
    assert net.ping(f"{NS}/frontend", ip(net, "backend"))
    flows = net.flows("--to-pod", f"{NS}/backend", "--port", "5678", "--verdict", "FORWARDED")
    new = [f for f in flows if f.get("trace_reason") == "NEW" and f["traffic_direction"] == "INGRESS"]
    assert new and new[-1]["source"]["pod_name"] == "frontend"
    assert new[-1]["destination"]["identity"] == ident(net, "backend")


def test_l3_allow_by_labels_then_default_deny_switches_off(net: Net) -> None:
    net.apply_ok(ALLOW_FRONTEND)
    assert tcp(net, "frontend", "backend", 5678)
    assert tcp(net, "frontend2", "backend2", 8080)
    assert not tcp(net, "other", "backend", 5678)
    # a frontend in another namespace is not selected: the peer selector is namespaced
    assert not tcp(net, "stranger", "backend", 5678, ns="elsewhere")
    d = last_drop(net.flows("--from-pod", f"{NS}/other", "--verdict", "DROPPED"), 5678)
    assert d["drop_reason_desc"] == "POLICY_DENIED" and d["traffic_direction"] == "INGRESS"
    assert d["source"]["identity"] == ident(net, "other") and d["destination"]["pod_name"] == "backend"
    assert "default deny" in d["extensions"]["apiary"]["decided_by"]
    rows = {r["name"]: r for r in json.loads(net.cli_ok("endpoint", "list", "-o", "json"))}
    assert rows["backend"]["ingress_enforcement"] and not rows["backend"]["egress_enforcement"]
    assert not rows["frontend"]["ingress_enforcement"]
    # without -n: neither at cluster scope nor in namespace default, and the error says where it is (a 404, not a
    # rejected policy)
    r = net.agent.cli("policy", "delete", "allow-frontend")
    assert r.returncode != 0 and "policy rejected" not in r.stderr, r.stderr
    assert (f"no policy 'allow-frontend' at cluster scope nor in namespace default; there is {NS}/allow-frontend "
            f"(-n {NS})") in r.stderr
    assert "name: allow-frontend" in net.cli_ok("policy", "get", f"{NS}/allow-frontend")  # kubectl's ns/name
    net.cli_ok("policy", "delete", f"{NS}/allow-frontend")
    assert tcp(net, "other", "backend", 5678)  # default deny is gone with the last selecting policy
    # a CiliumNetworkPolicy without a namespace lands in "default", where a NAME without -n finds it
    net.apply_ok("""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: in-default}
        spec: {endpointSelector: {matchLabels: {app: nothing-here}}, ingress: [{}]}
    """)
    got = net.cli_ok("policy", "get", "in-default")
    assert "name: in-default" in got and "namespace: default" in got, got  # where it landed, as kubectl shows it
    doc = json.loads(net.cli_ok("policy", "get", "in-default", "-o", "json"))
    assert doc["metadata"] == {"name": "in-default", "namespace": "default"} and doc["spec"]["ingress"] == [{}]
    assert "CiliumNetworkPolicy default/in-default" in net.cli_ok("policy", "delete", "in-default")
    # several -f: one stream of documents, applied together (kubectl's repeated -f)
    files = []
    for name in ("two-a", "two-b"):
        f = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
        f.write(f"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}}}\n"
                "spec: {endpointSelector: {matchLabels: {app: nothing-here}}, ingress: [{}]}\n")
        f.close()
        files.append(f.name)
    try:
        out = net.cli_ok("policy", "apply", "-f", files[0], "-f", files[1])
        assert "default/two-a created" in out and "default/two-b created" in out, out
    finally:
        for name in files:
            os.unlink(name)
    net.cli_ok("policy", "delete", "two-a")
    net.cli_ok("policy", "delete", "two-b")


def test_l4_port_allowed_other_port_dropped_udp_and_http(net: Net) -> None:
    net.apply_ok("""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: l4, namespace: test-namespace}
        spec:
          endpointSelector: {matchLabels: {app: backend}}
          ingress:
          - fromEndpoints: [{matchLabels: {app: frontend}}]
            toPorts:
            - ports: [{port: "5678", protocol: TCP}, {port: "8000", protocol: TCP}, {port: "5353", protocol: UDP}]
    """)
    assert tcp(net, "frontend", "backend", 5678)
    assert not tcp(net, "frontend", "backend", 8080)
    assert net.probe(f"{NS}/frontend", "udp", ip(net, "backend"), "5353")
    assert net.probe(f"{NS}/frontend", "http", ip(net, "backend2"), "8000")
    assert not net.ping(f"{NS}/frontend", ip(net, "backend"))  # once L4 rules apply, ICMP is not allowed
    d = last_drop(net.flows("--to-pod", f"{NS}/backend", "--verdict", "DROPPED", "--protocol", "tcp"), 8080)
    assert d["drop_reason_desc"] == "POLICY_DENIED" and d["l4"]["TCP"]["flags"] == {"SYN": True}
    assert d["source"]["identity"] == ident(net, "frontend")


def test_port_range(net: Net) -> None:
    net.apply_ok("""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: range, namespace: test-namespace}
        spec:
          endpointSelector: {matchLabels: {app: backend}}
          ingress:
          - toPorts:
            - ports: [{port: "9000", endPort: 9005, protocol: TCP}]
    """)
    assert tcp(net, "frontend", "backend", 9000)
    assert tcp(net, "other", "backend", 9005)  # no L3 peer: any identity
    assert not tcp(net, "frontend", "backend", 9010)
    assert not tcp(net, "frontend", "backend", 8080)


def test_deny_overrides_allow_and_names_the_policy(net: Net) -> None:
    net.apply_ok(
        ALLOW_FRONTEND
        + """
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-8080, namespace: test-namespace}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
"""
    )
    assert tcp(net, "frontend", "backend", 5678)
    assert not tcp(net, "frontend", "backend", 8080)
    d = last_drop(net.flows("--to-pod", f"{NS}/backend", "--verdict", "DROPPED"), 8080)
    assert d["drop_reason_desc"] == "POLICY_DENY" and d["drop_reason"] == 181
    (pol,) = d["ingress_denied_by"]
    assert pol["name"] == "deny-8080" and pol["namespace"] == NS and pol["kind"] == "CiliumNetworkPolicy"
    out = net.cli_ok(
        "observe",
        "--last",
        "50",
        "--verdict",
        "DROPPED",
        "--to-pod",
        f"{NS}/backend",
        "--print-policy-names",
        "--color",
        "never",
    )
    assert "Policy denied by denylist DROPPED" in out and "deny-8080" in out


def test_seed_block_backend_access_and_explain(net: Net) -> None:
    path = REPO / "examples" / "block-backend-access.yaml"
    assert tcp(net, "frontend", "backend", 5678)
    net.cli_ok("policy", "apply", "-f", str(path))
    assert not tcp(net, "frontend", "backend", 5678)
    assert not tcp(net, "frontend2", "backend2", 5678)
    # a deny-only policy also turns default deny on for the selected endpoints (Cilium's semantics)
    assert not tcp(net, "other", "backend", 5678)
    out = net.cli_ok(
        "policy", "explain", "--from", f"{NS}/frontend", "--to", f"{NS}/backend", "--port", "5678/TCP", "-o", "json"
    )
    res = json.loads(out)
    assert res["verdict"] in ("denied", "DENIED")
    assert "block-backend-access" in json.dumps(res)
    d = last_drop(net.flows("--from-pod", f"{NS}/frontend", "--verdict", "DROPPED"), 5678)
    assert d["ingress_denied_by"][0]["name"] == "block-backend-access"


def test_icmp_rules(net: Net) -> None:
    net.apply_ok("""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: icmp, namespace: test-namespace}
        spec:
          endpointSelector: {matchLabels: {app: backend}}
          ingress:
          - fromEndpoints: [{matchLabels: {app: frontend}}]
            icmps:
            - fields: [{type: EchoRequest, family: IPv4}]
    """)
    assert net.ping(f"{NS}/frontend", ip(net, "backend"))
    assert not net.ping(f"{NS}/other", ip(net, "backend"))
    assert not tcp(net, "frontend", "backend", 5678)
    flows = net.flows("--to-pod", f"{NS}/backend", "--protocol", "icmp")
    assert any(f["verdict"] == "FORWARDED" and f["Summary"] == "ICMPv4 EchoRequest" for f in flows)
    assert any(f["verdict"] == "DROPPED" and f["source"].get("pod_name") == "other" for f in flows)


def test_live_update_keeps_established_connection(net: Net) -> None:
    holder = net.start(f"{NS}/frontend", "hold", ip(net, "backend"), "5678", "3")
    assert holder.stdout is not None
    assert "connected" in holder.stdout.readline()
    time.sleep(0.5)
    net.apply_ok("""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: only-other, namespace: test-namespace}
        spec:
          endpointSelector: {matchLabels: {app: backend}}
          ingress:
          - fromEndpoints: [{matchLabels: {app: other}}]
    """)
    assert not tcp(net, "frontend", "backend", 5678)  # new connections: denied
    out, _ = holder.communicate(timeout=10)
    ok, fail = (int(x.split("=")[1]) for x in out.split())
    assert fail == 0 and ok > 10, out  # the established one never noticed


def test_two_policies_select_the_same_endpoint(net: Net) -> None:
    for name, port in (("p5678", 5678), ("p8080", 8080)):
        net.apply_ok(f"""
            apiVersion: cilium.io/v2
            kind: CiliumNetworkPolicy
            metadata: {{name: {name}, namespace: test-namespace}}
            spec:
              endpointSelector: {{matchLabels: {{app: backend}}}}
              ingress:
              - fromEndpoints: [{{matchLabels: {{app: frontend}}}}]
                toPorts: [{{ports: [{{port: "{port}", protocol: TCP}}]}}]
        """)
    assert tcp(net, "frontend", "backend", 5678) and tcp(net, "frontend", "backend", 8080)
    assert not tcp(net, "frontend", "backend", 9000)
    net.cli_ok("policy", "delete", "p5678", "-n", NS)
    assert not tcp(net, "frontend", "backend", 5678) and tcp(net, "frontend", "backend", 8080)


def test_egress_entities_and_cidr_with_except(net: Net) -> None:
    with world_host():
        net.apply_ok("""
            apiVersion: cilium.io/v2
            kind: CiliumNetworkPolicy
            metadata: {name: egress, namespace: test-namespace}
            spec:
              endpointSelector: {matchLabels: {app: frontend}}
              egress:
              - toCIDRSet:
                - cidr: 198.51.100.0/24
                  except: [198.51.100.128/25]
              - toEntities: [host]
        """)
        assert net.probe(f"{NS}/frontend", "tcp", "198.51.100.10", "7000", "1")
        assert not net.probe(f"{NS}/frontend", "tcp", "198.51.100.200", "7000", "1")
        assert not tcp(net, "frontend", "backend", 5678)  # cluster peers are not matched by CIDR rules
        router = str(ipaddress.IPv4Network(net.agent.pod_cidr).network_address + 1)
        assert net.probe(f"{NS}/frontend", "tcp", router, "7001", "1")  # entity host: the node itself
        assert tcp(net, "other", "backend", 5678)  # other endpoints unaffected
        d = last_drop(net.flows("--from-pod", f"{NS}/frontend", "--verdict", "DROPPED"), 7000)
        assert d["traffic_direction"] == "EGRESS" and d["IP"]["destination"] == "198.51.100.200"
        assert "reserved:world" in d["destination"]["labels"]
        net.cli_ok("policy", "delete", "egress", "-n", NS)
        net.apply_ok("""
            apiVersion: cilium.io/v2
            kind: CiliumNetworkPolicy
            metadata: {name: world, namespace: test-namespace}
            spec:
              endpointSelector: {matchLabels: {app: frontend}}
              egress:
              - toEntities: [world]
        """)
        assert net.probe(f"{NS}/frontend", "tcp", "198.51.100.200", "7000", "1")
        assert not tcp(net, "frontend", "backend", 5678)
        net.cli_ok("policy", "delete", "world", "-n", NS)
        net.apply_ok("""
            apiVersion: cilium.io/v2
            kind: CiliumNetworkPolicy
            metadata: {name: cluster, namespace: test-namespace}
            spec:
              endpointSelector: {matchLabels: {app: frontend}}
              egress:
              - toEntities: [cluster]
        """)
        assert tcp(net, "frontend", "backend", 5678)
        assert not net.probe(f"{NS}/frontend", "tcp", "198.51.100.10", "7000", "1")


@contextlib.contextmanager
def world_host() -> Iterator[dict[str, str]]:
    """A "world" peer in a network namespace of our own: 198.51.100.10 and 198.51.100.200 (TEST-NET-2,
    only inside this namespace), TCP echo on 7000; the host answers on 7001 at its side of the link."""
    tag = uuid.uuid4().hex[:6]
    ns, h_if, t_if = f"apiary-th-{tag}", f"th{tag}h", f"th{tag}t"
    host_ip = "198.51.100.1"
    procs: list[subprocess.Popen[str]] = []

    def sh(*cmd: str) -> None:
        subprocess.run(cmd, check=True, capture_output=True)

    try:
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", h_if, "type", "veth", "peer", "name", t_if, "netns", ns)
        sh("ip", "addr", "add", f"{host_ip}/32", "dev", h_if)
        sh("ip", "link", "set", h_if, "up")
        sh("ip", "route", "add", "198.51.100.0/24", "dev", h_if)
        # never let a probe leave the machine: the range must now route to our own veth only
        for probe in ("198.51.100.10", "198.51.100.200"):
            got = subprocess.run(["ip", "route", "get", probe], capture_output=True, text=True).stdout
            if f"dev {h_if}" not in got:
                raise RuntimeError(f"{probe} does not route to the test host ({got.strip()}): refusing to send")
        for cmd in (
            ["ip", "link", "set", "lo", "up"],
            ["ip", "link", "set", t_if, "up"],
            ["ip", "addr", "add", "198.51.100.10/24", "dev", t_if],
            ["ip", "addr", "add", "198.51.100.200/24", "dev", t_if],
            ["ip", "route", "add", "10.0.0.0/8", "via", host_ip, "dev", t_if, "onlink"],
        ):
            sh("ip", "netns", "exec", ns, *cmd)
        import sys

        for where, port in ((["ip", "netns", "exec", ns], "7000"), ([], "7001")):
            p = subprocess.Popen(
                [*where, sys.executable, "-m", "apiary.testing.netprobe", "serve-tcp", port],
                stdout=subprocess.PIPE,
                text=True,
            )
            procs.append(p)
            assert p.stdout and "ready" in p.stdout.readline()
        yield {"netns": ns, "host_ip": host_ip}
    finally:
        for p in procs:
            p.kill()
            p.wait()
        subprocess.run(["ip", "route", "del", "198.51.100.0/24", "dev", h_if], capture_output=True)
        subprocess.run(["ip", "link", "del", h_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_bad_policy_is_rejected_whole_and_changes_nothing(net: Net) -> None:
    net.apply_ok(ALLOW_FRONTEND)
    before = json.loads(net.cli_ok("policy", "list", "-o", "json"))
    r = net.apply("""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: good-one, namespace: test-namespace}
        spec:
          endpointSelector: {matchLabels: {app: frontend}}
          egress: [{toEntities: [world]}]
        ---
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: bad-one, namespace: test-namespace}
        spec:
          endpointSelector: {matchLabels: {app: backend}}
          ingress:
          - toPorts:
            - ports: [{port: "99999", protocol: TCP}]
    """)
    assert r.returncode != 0
    assert "toPorts[0].ports[0].port" in r.stderr and "Traceback" not in r.stderr
    assert json.loads(net.cli_ok("policy", "list", "-o", "json")) == before  # good-one did not land either
    assert tcp(net, "frontend", "backend", 5678) and not tcp(net, "other", "backend", 5678)
    r = net.apply("""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: l7, namespace: test-namespace}
        spec:
          endpointSelector: {matchLabels: {app: backend}}
          ingress:
          - toPorts:
            - ports: [{port: "9092", protocol: TCP}]
              rules: {kafka: [{topic: t}]}
    """)
    assert r.returncode != 0 and "unsupported" in r.stderr and "rules.kafka" in r.stderr


def test_endpoint_list_identities_and_delete_cleans_kernel_objects(net: Net) -> None:
    rows = {r["name"]: r for r in json.loads(net.cli_ok("endpoint", "list", "-o", "json"))}
    assert rows["frontend"]["identity"] == rows["frontend2"]["identity"] >= 256  # same labels, same identity
    assert rows["frontend"]["identity"] != rows["backend"]["identity"]
    assert rows["stranger"]["identity"] != rows["frontend"]["identity"]  # other namespace: other label set
    ids = json.loads(net.cli_ok("identity", "list", "-o", "json"))
    by_id = {r["identity"]: r for r in ids}
    assert by_id[1]["labels"] == ["reserved:host"] and by_id[2]["labels"] == ["reserved:world"]
    assert f"k8s:io.kubernetes.pod.namespace={NS}" in by_id[rows["backend"]["identity"]]["labels"]
    e = net.endpoint("temp", NS, app="temp")
    ns_path, cg, ifname = e["netns"], e["cgroup"], e["interface"]
    assert os.path.exists(ns_path) and os.path.isdir(cg)
    net.cli_ok("endpoint", "delete", f"{NS}/temp")
    assert not os.path.exists(ns_path) and not os.path.isdir(cg)
    assert subprocess.run(["ip", "link", "show", ifname], capture_output=True).returncode != 0
