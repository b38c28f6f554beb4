"""A client outside the node (a namespace of the test's own behind a veth, routed to the pod CIDR through the
node) as the client of an endpoint's ingress L7 policy. Its packets are forwarded by the node into the
endpoint's host veth, whose TC egress (to_container) cannot hand them to HAProxy; they take the same loop into
the veth's ingress as a host process's do, are judged request by request, and the server sees the outside
client's own address. Everything is real: the agent, its HAProxy, the endpoints, the routed namespace."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from apiary.sensors.l7proxy.haproxy import haproxy_binary
from apiary.testing.agent import AgentProcess, is_root
from apiary.testing.net import Net
from apiary.testing.veth import outside_host

pytestmark = [
    pytest.mark.skipif(not is_root(), reason="needs root"),
    pytest.mark.skipif(haproxy_binary() is None, reason="haproxy not installed (scripts/setup.sh installs it)"),
]

NS = "outl7"
L7_PORT, L4_PORT, CLOSED_PORT, FAR_PORT = 8080, 9000, 9001, 8081
POLICY = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: outside-l7, namespace: {ns}}}
spec:
  endpointSelector: {{matchLabels: {{app: server}}}}
  ingress:
  - fromCIDR: [{cidr}]
    toPorts:
    - ports: [{{port: "{l7}", protocol: TCP}}]
      rules:
        http:
        - {{method: GET, path: "/api/v1/.*"}}
  - fromEntities: [world]
    toPorts:
    - ports: [{{port: "{l4}", protocol: TCP}}]
"""


@pytest.fixture(scope="module")
def env() -> Iterator[tuple[Net, dict[str, str]]]:
    agent = AgentProcess()
    with outside_host(agent.pod_cidr) as out:
        agent.extra = ("--devices", out["dev"])  # the node's device facing the outside client (Cilium's --devices)
        n = Net(agent)
        far: subprocess.Popen[str] | None = None
        try:
            # a server on the other host, for an endpoint's egress L7
            far = subprocess.Popen(["ip", "netns", "exec", out["netns"], sys.executable, "-m",
                                    "apiary.testing.netprobe", "serve-http11", str(FAR_PORT)], stdout=subprocess.PIPE,
                                   text=True)
            assert far.stdout is not None and "ready" in far.stdout.readline()
            agent.start()
            n.eps = {"server": n.endpoint("server", NS, app="server"),  # type: ignore[attr-defined]
                     "client": n.endpoint("client", NS, app="client")}
            n.serve(f"{NS}/server", "serve-http11", str(L7_PORT))
            n.serve(f"{NS}/server", "serve-id", str(L4_PORT), "server")
            n.serve(f"{NS}/server", "serve-id", str(CLOSED_PORT), "server")
            n.apply_ok(POLICY.format(ns=NS, cidr=out["cidr"], l7=L7_PORT, l4=L4_PORT))
            yield n, out
        finally:
            if far is not None:
                far.kill()
                far.wait()
            n.close()
            agent.cleanup()


def server_ip(net: Net) -> str:
    return str(net.eps["server"]["ipv4"])  # type: ignore[attr-defined]


def outside(out: dict[str, str], *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """apiary.testing.netprobe run in the outside namespace."""
    return subprocess.run(["ip", "netns", "exec", out["netns"], sys.executable, "-m", "apiary.testing.netprobe",
                           *argv], capture_output=True, text=True, timeout=timeout)




def test_outside_client_is_judged_request_by_request(env: tuple[Net, dict[str, str]]) -> None:
    net, out = env
    spec = json.dumps([[m, p, {}, ""] for m, p in (("GET", "/api/v1/items"), ("GET", "/admin"),
                                                    ("GET", "/api/v1/again"))])
    p = outside(out, "requests", server_ip(net), str(L7_PORT), spec)
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert [s for s, _ in res["responses"]] == [200, 403, 200], res
    assert res["connections"] == 1, res  # one keep-alive connection, judged request by request
    assert res["responses"][1][1] == "Access denied\r\n"
    # the proxy connected to the server from the outside client's own address
    assert res["responses"][0][1].split() == ["GET", "/api/v1/items", "from", out["client"]], res

    allowed = net.l7_requests("/api/v1/items")[-1]
    assert allowed["verdict"] == "FORWARDED" and allowed["traffic_direction"] == "INGRESS", allowed
    assert allowed["IP"]["source"] == out["client"], allowed
    assert "reserved:world" in allowed["source"]["labels"], allowed
    assert f"cidr:{out['cidr']}" in allowed["source"]["labels"], allowed
    assert allowed["destination"]["pod_name"] == "server", allowed
    assert "ingress[0].toPorts[0].rules.http[0]" in allowed["extensions"]["apiary"]["decided_by"], allowed
    denied = net.l7_requests("/admin")[-1]
    assert denied["verdict"] == "DROPPED" and denied["IP"]["source"] == out["client"], denied
    assert denied["l7"]["http"]["code"] == 403, denied


def test_status_names_the_device(env: tuple[Net, dict[str, str]]) -> None:
    net, out = env
    st = net.agent.client().get("/v1/status")
    assert st["network"]["l7_proxy"]["devices"] == [out["dev"]], st["network"]["l7_proxy"]
    health = net.cli_ok("status")
    assert f"clients on other hosts through {out['dev']}" in health, health


def test_outside_client_on_an_l4_port_is_not_redirected(env: tuple[Net, dict[str, str]]) -> None:
    net, out = env
    p = outside(out, "ask", server_ip(net), str(L4_PORT), "3")
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["answers"] == {"server": 3} and not res["errors"], res
    # judged at L3/L4 only: no L7 flow names this port
    assert not [f for f in net.flows("--type", "l7") if f.get("Type") == "L7"
                and f["destination"].get("port") == L4_PORT]


def test_outside_client_on_a_port_no_rule_allows_is_dropped(env: tuple[Net, dict[str, str]]) -> None:
    net, out = env
    p = outside(out, "ask", server_ip(net), str(CLOSED_PORT), "1")
    res = json.loads(p.stdout.strip().splitlines()[-1]) if p.stdout.strip() else {"answers": {}}
    assert not res["answers"], res
    drops = [f for f in net.flows("--verdict", "DROPPED", "--to-pod", f"{NS}/server", "--port", str(CLOSED_PORT))
             if f["IP"]["source"] == out["client"]]
    assert drops and drops[-1]["drop_reason_desc"] == "POLICY_DENIED", drops


NODEPORT = """\
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {ns}}}
spec:
  type: NodePort
  selector: {{app: server}}
  ports: [{{name: http, port: 80, targetPort: {l7}, nodePort: {np}}}]
"""


def test_outside_client_through_a_nodeport_is_judged_too(env: tuple[Net, dict[str, str]]) -> None:
    """The NodePort at the node's address on the device: translated to the local backend by the NodePort
    filter, then the proxied connection's packets are handed to HAProxy by from_netdev, which runs after it."""
    net, out = env
    r = net.agent.cli("apply", "-f", "-", input=NODEPORT.format(ns=NS, l7=L7_PORT, np=31877))
    assert r.returncode == 0, r.stderr
    spec = json.dumps([["GET", "/api/v1/np", {}, ""], ["DELETE", "/api/v1/np", {}, ""]])
    p = outside(out, "requests", out["node"], "31877", spec)
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert [s for s, _ in res["responses"]] == [200, 403], res
    assert res["connections"] == 1, res
    # no SNAT to a local backend (Cilium's nodeport_lb4): the server sees the client
    assert res["responses"][0][1].split() == ["GET", "/api/v1/np", "from", out["client"]], res
    allowed = net.l7_requests("/api/v1/np")
    assert {f["verdict"] for f in allowed} == {"FORWARDED", "DROPPED"}, allowed
    assert all(f["IP"]["source"] == out["client"] and f["destination"]["pod_name"] == "server" for f in allowed)


EGRESS = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: to-outside, namespace: {ns}}}
spec:
  endpointSelector: {{matchLabels: {{app: client}}}}
  egress:
  - toCIDR: [{cidr}]
    toPorts:
    - ports: [{{port: "{port}", protocol: TCP}}]
      rules:
        http:
        - {{method: GET, path: "/api/.*"}}
"""


def test_an_endpoint_calls_a_server_on_another_host_through_its_egress_l7(env: tuple[Net, dict[str, str]]) -> None:
    """Egress L7 to a server outside the node (an external API, as toFQDNs/toCIDR with rules.http are used):
    judged request by request; the proxy connects from the node's address, so the server's answers come
    back to the node (no device program needed)."""
    net, out = env
    net.apply_ok(EGRESS.format(ns=NS, cidr=out["cidr"], port=FAR_PORT))
    spec = json.dumps([["GET", "/api/x", {}, ""], ["POST", "/api/x", {}, "body"], ["GET", "/api/y", {}, ""]])
    p = subprocess.run(net._exec(f"{NS}/client", "requests", out["client"], str(FAR_PORT), spec),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert [s for s, _ in res["responses"]] == [200, 403, 200], res
    assert res["connections"] == 1, res
    allowed = net.l7_requests("/api/x")
    req = [f for f in allowed if f["verdict"] == "FORWARDED"][-1]
    assert req["traffic_direction"] == "EGRESS" and req["IP"]["destination"] == out["client"], req
    assert req["source"]["pod_name"] == "client", req
    assert "reserved:world" in req["destination"]["labels"], req
    assert "egress[0].toPorts[0].rules.http[0]" in req["extensions"]["apiary"]["decided_by"], req
    assert any(f["verdict"] == "DROPPED" and f["l7"]["http"]["method"] == "POST" for f in allowed), allowed


def test_after_an_agent_restart_the_outside_client_is_served(env: tuple[Net, dict[str, str]]) -> None:
    """Last in the module: the stopped agent leaves from_netdev on the device (the endpoints keep their
    programs); the next agent replaces it in place and the outside client is judged again."""
    net, out = env
    assert net.agent.stop() == 0
    net.agent.start()
    shown = subprocess.run(["tc", "filter", "show", "dev", out["dev"], "ingress"], capture_output=True,
                           text=True).stdout
    assert shown.count("handle 0xa1c") == 1, shown
    spec = json.dumps([["GET", "/api/v1/after", {}, ""], ["GET", "/admin", {}, ""]])
    p = outside(out, "requests", server_ip(net), str(L7_PORT), spec)
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert [s for s, _ in res["responses"]] == [200, 403], res
