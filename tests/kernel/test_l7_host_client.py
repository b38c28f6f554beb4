"""A host process as the client of an endpoint's ingress L7 policy: its packets reach the endpoint through
the host veth's TC egress (to_container), where they cannot be handed to HAProxy (no sk_assign there); the
datapath loops them back into the same veth's ingress (from_container), which hands them to the proxy, as
Cilium does for host-originated traffic to an L7 ingress. The client here is a subprocess of the test in
the host's network namespace; everything else is a real agent, its HAProxy and endpoints."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from apiary.sensors.l7proxy.haproxy import haproxy_binary
from apiary.testing.agent import is_root
from apiary.testing.net import Net, running_net

pytestmark = [
    pytest.mark.skipif(not is_root(), reason="needs root"),
    pytest.mark.skipif(haproxy_binary() is None, reason="haproxy not installed (scripts/setup.sh installs it)"),
]

NS = "hostl7"
L7_PORT, L4_PORT = 8080, 9000
POLICY = f"""\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: host-l7, namespace: {NS}}}
spec:
  endpointSelector: {{matchLabels: {{app: server}}}}
  ingress:
  - fromEntities: [host]
    toPorts:
    - ports: [{{port: "{L7_PORT}", protocol: TCP}}]
      rules:
        http:
        - {{method: GET, path: "/api/v1/.*"}}
  - fromEntities: [host]
    toPorts:
    - ports: [{{port: "{L4_PORT}", protocol: TCP}}]
  - fromEndpoints: [{{matchLabels: {{app: client}}}}]
    toPorts:
    - ports: [{{port: "{L7_PORT}", protocol: TCP}}]
      rules:
        http:
        - {{method: GET, path: "/api/v1/.*"}}
"""


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    with running_net() as n:
        n.eps = {  # type: ignore[attr-defined]
            "server": n.endpoint("server", NS, app="server"),
            "client": n.endpoint("client", NS, app="client"),
        }
        n.serve(f"{NS}/server", "serve-http11", str(L7_PORT))
        n.serve(f"{NS}/server", "serve-id", str(L4_PORT), "server")
        n.apply_ok(POLICY)
        yield n


def server_ip(net: Net) -> str:
    return str(net.eps["server"]["ipv4"])  # type: ignore[attr-defined]


def host_source(dst: str) -> str:
    """The address the host's stack picks as source to ``dst``."""
    out = subprocess.run(["ip", "-j", "route", "get", dst], capture_output=True, text=True, check=True).stdout
    return str(json.loads(out)[0]["prefsrc"])


def netprobe(*argv: str) -> list[str]:
    return [sys.executable, "-m", "apiary.testing.netprobe", *argv]


def host_requests(net: Net, *reqs: tuple[str, str]) -> dict[str, Any]:
    """Requests from a process on the host (no netns), on one keep-alive connection."""
    spec = json.dumps([[m, path, {}, ""] for m, path in reqs])
    p = subprocess.run(netprobe("requests", server_ip(net), str(L7_PORT), spec), capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    return dict(json.loads(p.stdout.strip().splitlines()[-1]))




def test_host_client_is_judged_request_by_request(net: Net) -> None:
    out = host_requests(net, ("GET", "/api/v1/items"), ("GET", "/admin"), ("GET", "/api/v1/again"))
    assert [s for s, _ in out["responses"]] == [200, 403, 200], out
    assert out["connections"] == 1  # one keep-alive connection, judged request by request
    assert out["responses"][1][1] == "Access denied\r\n"
    # the proxy connected from the client's (the host's) address: the server saw it as the peer
    host = host_source(server_ip(net))
    assert out["responses"][0][1].split() == ["GET", "/api/v1/items", "from", host], out

    allowed = net.l7_requests("/api/v1/items")[-1]
    assert allowed["verdict"] == "FORWARDED" and allowed["traffic_direction"] == "INGRESS", allowed
    assert allowed["source"]["identity"] == 1 and "reserved:host" in allowed["source"]["labels"], allowed
    assert allowed["destination"]["pod_name"] == "server", allowed
    assert "ingress[0].toPorts[0].rules.http[0]" in allowed["extensions"]["apiary"]["decided_by"], allowed
    denied = net.l7_requests("/admin")[-1]
    assert denied["verdict"] == "DROPPED" and denied["source"]["identity"] == 1, denied

    # the host's packets were handed to the proxy (trace to-proxy at the server's veth), and the proxy's own
    # connection was judged by the server's ingress with the host's identity
    at_server = [f for f in net.flows("--to-pod", f"{NS}/server", "--port", str(L7_PORT))
                 if f["traffic_direction"] == "INGRESS" and f["IP"]["source"] == host]
    assert any(f["Type"] == "L3_L4" and f["event_type"] == {"type": 4, "sub_type": 1} for f in at_server), at_server
    verdicts = [f for f in at_server if f["Type"] == "L3_L4" and f["event_type"]["type"] == 5]
    assert verdicts and all(f["verdict"] == "FORWARDED" for f in verdicts), verdicts
    assert verdicts[-1]["source"]["identity"] == 1, verdicts[-1]


def test_host_client_without_l7_rules_is_not_redirected(net: Net) -> None:
    out = net.ask(None, server_ip(net), L4_PORT, 3)
    assert out["answers"] == {"server": 3} and not out["errors"], out


def test_endpoint_client_still_goes_through_its_own_veth(net: Net) -> None:
    client = str(net.eps["client"]["ipv4"])  # type: ignore[attr-defined]
    spec = json.dumps([["GET", "/api/v1/ep", {}, ""], ["GET", "/admin", {}, ""]])
    p = subprocess.run(net._exec(f"{NS}/client", "requests", server_ip(net), str(L7_PORT), spec),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert [s for s, _ in out["responses"]] == [200, 403], out
    assert out["responses"][0][1].split() == ["GET", "/api/v1/ep", "from", client], out


def test_an_endpoint_made_before_gets_accept_local_at_restart(net: Net) -> None:
    """A host veth an older agent created has accept_local=0 (the looped packets would be martians): the agent
    sets it on every endpoint it restores, and the host client is served again."""
    knob = Path(f"/proc/sys/net/ipv4/conf/{net.eps['server']['interface']}/accept_local")  # type: ignore[attr-defined]
    knob.write_text("0")
    assert net.agent.stop() == 0
    net.agent.start()
    assert knob.read_text().strip() == "1"
    out = host_requests(net, ("GET", "/api/v1/after-restart"))
    assert [s for s, _ in out["responses"]] == [200], out


def test_agent_stopped_proxy_gone_fails_closed(net: Net) -> None:
    """Last in the module: with the agent (and so its HAProxy) stopped the endpoint keeps its programs; the
    host's connection the policy sends to the proxy is dropped (no listener), never let through unjudged;
    the L3/L4 port still answers."""
    assert net.agent.stop() == 0
    probe = ["python3", "-c", "import socket,sys\ntry:\n socket.create_connection((sys.argv[1], int(sys.argv[2])), "
             "timeout=2).close()\n print('connected')\nexcept OSError as e:\n print('failed', e)"]
    out = subprocess.run([*probe, server_ip(net), str(L7_PORT)], capture_output=True, text=True, timeout=60).stdout
    assert out.startswith("failed"), out
    out = subprocess.run([*probe, server_ip(net), str(L4_PORT)], capture_output=True, text=True, timeout=60).stdout
    assert out.startswith("connected"), out
