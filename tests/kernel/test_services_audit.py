"""Services as a new user met them (a new-user audit): each test is a bug found by hand, on a real agent."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import textwrap
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from apiary.testing.agent import AgentProcess, pinned_maps
from apiary.testing.net import Net
from apiary.testing.veth import veth_peer

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def env() -> Iterator[tuple[AgentProcess, Net]]:
    a = AgentProcess().start()
    net = Net(a)
    try:
        net.endpoint("web1", "shop", app="web")
        net.endpoint("client", "shop", app="client")
        net.serve("shop/web1", "serve-id", "8080", "web1")
        yield a, net
    finally:
        net.close()
        a.cleanup()


def apply(a: AgentProcess, text: str) -> subprocess.CompletedProcess[str]:
    return a.cli("service", "apply", "-f", "-", input=textwrap.dedent(text))


def spec(a: AgentProcess, name: str) -> dict[str, Any]:
    got: dict[str, Any] = a.client().get(f"/v1/services/shop/{name}")["service"]["spec"]
    return got


NODEPORT = """\
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: shop}}
spec:
  type: NodePort
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
"""


def test_reapplying_a_file_with_a_new_service_first_keeps_the_old_allocation(env: tuple[AgentProcess, Net]) -> None:
    """The whole manifest applied again with a new service added before an existing one: the existing one
    keeps its clusterIP and nodePort (they were its own), the new one gets others. It used to fail with
    'clusterIP ... is already allocated': the new service had been given the existing one's address."""
    a, _ = env
    r = apply(a, NODEPORT.format(name="keep"))
    assert r.returncode == 0, r.stderr
    before = spec(a, "keep")
    r = apply(a, NODEPORT.format(name="fresh") + "---\n" + NODEPORT.format(name="keep"))
    assert r.returncode == 0, r.stderr
    after, fresh = spec(a, "keep"), spec(a, "fresh")
    assert after["clusterIP"] == before["clusterIP"]
    assert after["ports"][0]["nodePort"] == before["ports"][0]["nodePort"]
    assert fresh["clusterIP"] != after["clusterIP"]
    assert fresh["ports"][0]["nodePort"] != after["ports"][0]["nodePort"]
    # what a re-applied service keeps is still refused to another service asking for it by name
    clash = NODEPORT.format(name="clash").replace("selector:", f"clusterIP: {after['clusterIP']}\n  selector:")
    r = apply(a, clash + "---\n" + NODEPORT.format(name="keep"))
    assert r.returncode != 0 and "already allocated" in r.stderr
    assert a.cli("service", "delete", "shop/keep", "shop/fresh").returncode == 0


def test_a_node_address_added_later_is_a_nodeport_address(env: tuple[AgentProcess, Net]) -> None:
    """A NodePort is reached at every node address, including one added after the LB loaded (a new
    interface, a second address). The LB's list of node addresses used to be taken once, at load: a
    connection to the new address was refused."""
    a, net = env
    r = apply(a, NODEPORT.format(name="late"))
    assert r.returncode == 0, r.stderr
    port = spec(a, "late")["ports"][0]["nodePort"]
    dev, addr = f"aud{uuid.uuid4().hex[:8]}", f"198.19.{uuid.uuid4().int % 250 + 1}.{uuid.uuid4().int % 250 + 2}"
    subprocess.run(["ip", "link", "add", dev, "type", "veth", "peer", "name", dev + "p"], check=True,
                   capture_output=True)
    try:
        subprocess.run(["ip", "addr", "add", f"{addr}/32", "dev", dev], check=True, capture_output=True)
        subprocess.run(["ip", "link", "set", dev, "up"], check=True, capture_output=True)
        deadline, out = time.monotonic() + 15, {}
        while time.monotonic() < deadline:
            out = net.ask(None, addr, port, 2)
            if out["answers"] == {"web1": 2}:
                break
            time.sleep(0.5)
        assert out["answers"] == {"web1": 2} and out["peers"] == {f"{addr}:{port}": 2}, out
        subprocess.run(["ip", "link", "del", dev], check=True, capture_output=True)
        # and an address gone is no node address any more
        packed = bytes(int(x) for x in addr.split("."))
        deadline = time.monotonic() + 15
        while packed in pinned_maps(a.pin_root, "lb", ("lb_host_addrs",))["lb_host_addrs"]:
            assert time.monotonic() < deadline, f"{addr} still in lb_host_addrs"
            time.sleep(0.5)
    finally:
        subprocess.run(["ip", "link", "del", dev], capture_output=True)
        a.cli("service", "delete", "shop/late")


def explain(a: AgentProcess, src: str, dst: str, port: str) -> dict[str, Any]:
    r = a.cli("policy", "explain", "--from", src, "--to", dst, "--port", port, "-o", "json")
    assert r.returncode == 0, r.stderr
    out: dict[str, Any] = json.loads(r.stdout)
    return out


def test_explain_to_a_service_address_that_is_no_frontend_says_unreachable(env: tuple[AgentProcess, Net]) -> None:
    """`policy explain` to an address of the service CIDR at a port no frontend has (or an address no
    service has) says DENIED, as the connection fails (EHOSTUNREACH). It used to say ALLOWED."""
    a, net = env
    r = apply(a, NODEPORT.format(name="expl"))
    assert r.returncode == 0, r.stderr
    vip = spec(a, "expl")["clusterIP"]
    try:
        assert explain(a, "shop/client", vip, "80/TCP")["verdict"] == "ALLOWED"  # the frontend itself
        for dst, port in ((vip, 81), (str(ipaddress.ip_network(a.service_cidr)[-2]), 80)):
            assert net.ask("shop/client", dst, port, 1)["errors"] == {"EHOSTUNREACH": 1}
            got = explain(a, "shop/client", dst, f"{port}/TCP")
            assert got["verdict"] == "DENIED" and "routed unreachable" in got["text"], got
    finally:
        a.cli("service", "delete", "shop/expl")


def test_explain_to_an_external_ip_the_node_does_not_have(env: tuple[AgentProcess, Net]) -> None:
    """An external IP that is no node address is left alone by the socket LB (Cilium's anti-MITM check): a
    connection from an endpoint goes to that address itself. `policy explain` used to say it reached the
    service's backends."""
    a, net = env
    with veth_peer() as far:  # the external IP is an address of a namespace of the test's own
        subprocess.run(["ip", "-n", far["netns"], "route", "add", a.pod_cidr, "via", far["host"]], check=True)
        r = apply(a, NODEPORT.format(name="extip").replace("selector:", f"externalIPs: [{far['a']}]\n  selector:"))
        assert r.returncode == 0, r.stderr
        try:
            out = net.ask("shop/client", far["a"], 80, 1)
            assert out["answers"] == {} and out["errors"] == {"ECONNREFUSED": 1}, out  # not web1
            got = explain(a, "shop/client", far["a"], "80/TCP")
            assert "service" not in got and "is not translated" in got["text"], got
        finally:
            a.cli("service", "delete", "shop/extip")


def test_a_headless_service_does_not_break_the_next_allocation(env: tuple[AgentProcess, Net]) -> None:
    """With a headless service (clusterIP: None) applied, the next service that needs a clusterIP is
    allocated one. It used to fail with an internal error (AddressValueError: 'None' taken as an address)."""
    a, _ = env
    headless = "apiVersion: v1\nkind: Service\nmetadata: {name: hl, namespace: shop}\n" \
               "spec: {clusterIP: None, selector: {app: web}, ports: [{port: 80}]}\n"
    r = apply(a, headless)
    assert r.returncode == 0, r.stderr
    try:
        r = apply(a, NODEPORT.format(name="after-hl"))
        assert r.returncode == 0, r.stderr
        assert spec(a, "after-hl")["clusterIP"] != "None"
    finally:
        a.cli("service", "delete", "shop/hl", "shop/after-hl")


def test_explain_follows_the_terminating_backends_new_connections_use(env: tuple[AgentProcess, Net]) -> None:
    """With no ready endpoint, new connections go to the serving terminating ones (Cilium's fallback, which
    the datapath does); `policy explain` used to say DENIED (no active backend) while they went through."""
    a, net = env
    ip = json.loads(net.cli_ok("endpoint", "get", "shop/web1"))["ipv4"]
    r = apply(a, f"""\
        apiVersion: v1
        kind: Service
        metadata: {{name: term, namespace: shop}}
        spec: {{ports: [{{name: web, port: 80}}]}}
        ---
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata: {{name: term-1, namespace: shop, labels: {{kubernetes.io/service-name: term}}}}
        addressType: IPv4
        ports: [{{name: web, port: 8080}}]
        endpoints: [{{addresses: ["{ip}"], conditions: {{ready: false, serving: true, terminating: true}}}}]
        """)
    assert r.returncode == 0, r.stderr
    try:
        vip = spec(a, "term")["clusterIP"]
        assert net.ask("shop/client", vip, 80, 2)["answers"] == {"web1": 2}
        got = explain(a, "shop/client", vip, "80/TCP")
        assert got["verdict"] == "ALLOWED" and [b["backend"] for b in got["backends"]] == [f"{ip}:8080"], got
    finally:
        a.cli("service", "delete", "shop/term")
