"""Services on a real agent: socket-level load balancing from endpoints and from the host, real backends in
real namespaces (issue 10). Each backend answers with its name, so the tests see where a connection went."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from apiary.sensors.lb.sensor import netns_cookie
from apiary.testing.agent import AgentProcess, one_line_error, pinned_maps
from apiary.testing.net import Net

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def env() -> Iterator[tuple[AgentProcess, Net]]:
    a = AgentProcess().start()
    net = Net(a)
    try:
        net.endpoint("web1", "shop", app="web")
        net.endpoint("web2", "shop", app="web")
        net.endpoint("client", "shop", app="client")
        net.endpoint("other", "shop", app="other")
        net.serve("shop/web1", "serve-id", "8080", "web1")
        net.serve("shop/web2", "serve-id", "8080", "web2")
        yield a, net
    finally:
        net.close()
        a.cleanup()


def apply(a: AgentProcess, text: str) -> subprocess.CompletedProcess[str]:
    return a.cli("service", "apply", "-f", "-", input=textwrap.dedent(text))


def apply_ok(a: AgentProcess, text: str) -> None:
    r = apply(a, text)
    assert r.returncode == 0, f"{r.stderr}\n{a.log()[-3000:]}"


def service(name: str, *, ports: str = "[{name: http, port: 80, targetPort: 8080}]", selector: str = "{app: web}",
            extra: str = "", annotations: str = "") -> str:
    meta = f"{{name: {name}, namespace: shop{', annotations: ' + annotations if annotations else ''}}}"
    return f"apiVersion: v1\nkind: Service\nmetadata: {meta}\nspec:\n  selector: {selector}\n  ports: {ports}\n{extra}"


def vip(a: AgentProcess, name: str) -> str:
    ip: str = a.client().get(f"/v1/services/shop/{name}")["service"]["spec"]["clusterIP"]
    return ip


def ask(net: Net, ep: str | None, host: str, port: int, n: int, udp: bool = False) -> dict[str, dict[str, int]]:
    return net.ask(ep, host, port, n, udp)


def test_tcp_from_an_endpoint_reaches_every_backend_and_sees_the_vip(env: tuple[AgentProcess, Net]) -> None:
    a, net = env
    apply_ok(a, service("web"))
    ip = vip(a, "web")
    out = ask(net, "shop/client", ip, 80, 40)
    assert out["errors"] == {}
    assert set(out["answers"]) == {"web1", "web2"} and min(out["answers"].values()) >= 5, out  # random: loose
    assert out["peers"] == {f"{ip}:80": 40}  # getpeername shows the frontend, not the backend
    rows = a.client().get("/v1/services")["frontends"]
    row = next(r for r in rows if r["service"] == "shop/web")
    assert row["type"] == "ClusterIP" and row["frontend"] == f"{ip}:80/TCP"
    assert {b["state"] for b in row["backends"]} == {"active"} and len(row["backends"]) == 2
    table = a.cli("service", "list").stdout
    assert "ID" in table.splitlines()[0] and f"{ip}:80/TCP" in table and "=> " in table and "(active)" in table


def test_udp_service_answers_from_the_vip(env: tuple[AgentProcess, Net]) -> None:
    a, net = env
    apply_ok(a, service("dns", ports="[{name: dns, port: 53, targetPort: 8080, protocol: UDP}]"))
    ip = vip(a, "dns")
    out = ask(net, "shop/client", ip, 53, 20, udp=True)
    assert out["errors"] == {} and set(out["answers"]) <= {"web1", "web2"} and sum(out["answers"].values()) == 20
    assert out["peers"] == {f"{ip}:53": 20}  # recvmsg4 rewrote the reply's source back to the VIP


def test_a_host_process_reaches_the_service(env: tuple[AgentProcess, Net]) -> None:
    a, net = env
    apply_ok(a, service("web"))
    ip = vip(a, "web")
    out = ask(net, None, ip, 80, 10)
    assert out["errors"] == {} and sum(out["answers"].values()) == 10 and out["peers"] == {f"{ip}:80": 10}


def test_service_cidr_is_unreachable_on_the_host_and_in_endpoints(env: tuple[AgentProcess, Net]) -> None:
    a, net = env
    apply_ok(a, service("web"))
    host = subprocess.run(["ip", "route", "show", "type", "unreachable"], capture_output=True, text=True).stdout
    assert a.service_cidr in host
    ns = json.loads(net.cli_ok("endpoint", "get", "shop/client"))["netns"].rsplit("/", 1)[-1]
    inside = subprocess.run(["ip", "-n", ns, "route", "show", "type", "unreachable"], capture_output=True,
                            text=True).stdout
    assert a.service_cidr in inside
    # an address of the range that is no frontend fails at once, locally
    free = a.service_cidr.rsplit(".", 1)[0] + ".250"
    r = subprocess.run(net._exec("shop/client", "connect", free, "80"), capture_output=True, text=True, timeout=30)
    assert "EHOSTUNREACH" in r.stdout or "ENETUNREACH" in r.stdout, r.stdout


def test_no_backend_refuses_and_shows_a_drop_flow(env: tuple[AgentProcess, Net]) -> None:
    a, net = env
    apply_ok(a, service("empty", selector="{app: nobody}"))
    ip = vip(a, "empty")
    r = subprocess.run(net._exec("shop/client", "connect", ip, "80"), capture_output=True, text=True, timeout=30)
    assert "EHOSTUNREACH" in r.stdout, r.stdout
    flows = [f for f in net.flows("--to-ip", ip) if f.get("drop_reason_desc") == "SERVICE_BACKEND_NOT_FOUND"]
    assert flows, "no drop flow for the refused connect"
    f = flows[-1]
    assert f["verdict"] == "DROPPED" and f["drop_reason"] == 158
    assert f["source"]["pod_name"] == "client" and f["l4"]["TCP"]["destination_port"] == 80
    assert a.client().get("/v1/status")["services"]["counters"]["no_backend"] >= 1


def test_backends_follow_endpoints(env: tuple[AgentProcess, Net]) -> None:
    a, net = env
    apply_ok(a, service("web"))

    def backends() -> set[str]:
        row = next(r for r in a.client().get("/v1/services")["frontends"] if r["service"] == "shop/web")
        return {b["address"] for b in row["backends"]}

    before = backends()
    ep = net.endpoint("web3", "shop", app="web")
    try:
        assert backends() == before | {ep["ipv4"]}
    finally:
        net.cli_ok("endpoint", "delete", "shop/web3")
    assert backends() == before


def test_policy_applies_to_the_backend_identity_behind_the_vip(env: tuple[AgentProcess, Net]) -> None:
    a, net = env
    apply_ok(a, service("web"))
    ip = vip(a, "web")
    net.apply_ok("""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: web-from-client, namespace: shop}
        spec:
          endpointSelector: {matchLabels: {app: web}}
          ingress:
          - fromEndpoints: [{matchLabels: {app: client}}]
            toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
        """)
    try:
        ok = ask(net, "shop/client", ip, 80, 6)
        assert ok["errors"] == {} and sum(ok["answers"].values()) == 6
        denied = ask(net, "shop/other", ip, 80, 2)
        assert sum(denied["errors"].values()) == 2 and not denied["answers"], denied
        drops = [f for f in net.flows("--verdict", "DROPPED", "--from-pod", "shop/other")
                 if f.get("drop_reason_desc") == "POLICY_DENIED"]
        assert drops and drops[-1]["IP"]["destination"] != ip  # the packet carried the backend's address
        # explain to the VIP answers for its backends, as the datapath decides (not "egress not enforced")
        res = json.loads(net.cli_ok("policy", "explain", "--from", "shop/other", "--to", ip, "--port", "80/TCP",
                                    "-o", "json"))
        assert res["verdict"] == "DENIED" and res["service"] == "shop/web", res
        assert len(res["backends"]) == 2 and all(b["verdict"] == "DENIED" for b in res["backends"])
        assert all(b["backend"].endswith(":8080") for b in res["backends"])
        text = net.cli_ok("policy", "explain", "--from", "shop/client", "--to", ip, "--port", "80/TCP")
        assert text.startswith(f"ALLOWED: {ip}:80/TCP is service shop/web:http") and text.count("  -> ") == 2, text
    finally:
        net.cli_ok("policy", "delete", "web-from-client", "-n", "shop")


def test_hairpin_a_backend_reaches_its_own_service(env: tuple[AgentProcess, Net]) -> None:
    a, net = env
    apply_ok(a, service("web"))
    out = ask(net, "shop/web1", vip(a, "web"), 80, 10)
    assert out["errors"] == {} and sum(out["answers"].values()) == 10


def test_client_ip_affinity_sticks_then_expires(env: tuple[AgentProcess, Net]) -> None:
    a, net = env
    apply_ok(a, service("sticky", extra="  sessionAffinity: ClientIP\n"
                                        "  sessionAffinityConfig: {clientIP: {timeoutSeconds: 2}}\n"))
    ip = vip(a, "sticky")
    out = ask(net, "shop/client", ip, 80, 20)
    assert len(out["answers"]) == 1 and sum(out["answers"].values()) == 20, out  # the netns keeps its backend
    assert a.client().get("/v1/status")["services"]["counters"]["affinity_hits"] >= 19
    seen = set(out["answers"])
    deadline = time.monotonic() + 30
    while len(seen) < 2 and time.monotonic() < deadline:  # after the timeout, a new choice each time
        time.sleep(2.2)
        seen |= set(ask(net, "shop/client", ip, 80, 1)["answers"])
    assert seen == {"web1", "web2"}


def test_maglev_service_spreads_and_writes_its_table(env: tuple[AgentProcess, Net]) -> None:
    a, net = env
    apply_ok(a, service("mag", annotations="{service.cilium.io/lb-algorithm: maglev}"))
    out = ask(net, "shop/client", vip(a, "mag"), 80, 30)
    assert out["errors"] == {} and set(out["answers"]) == {"web1", "web2"}
    st = a.client().get("/v1/status")["services"]
    assert st["maps"]["lb4_maglev"]["entries"] >= 1
    row = next(r for r in a.client().get("/v1/services")["frontends"] if r["service"] == "shop/mag")
    assert row["algorithm"] == "maglev"
    # `service get`: the Service as YAML that applies again, its frontends as comments after it
    out = net.cli_ok("service", "get", "shop/mag")
    assert yaml.safe_load(out)["metadata"]["name"] == "mag"
    fronts = [ln for ln in out.splitlines() if ln.startswith("#   ClusterIP ")]
    assert fronts and all("(algorithm maglev" in ln and ":80/TCP -> " in ln for ln in fronts), out


def test_terminating_backend_keeps_its_connection_and_gets_no_new_ones(env: tuple[AgentProcess, Net]) -> None:
    a, net = env
    ips = {n: json.loads(net.cli_ok("endpoint", "get", f"shop/{n}"))["ipv4"] for n in ("web1", "web2")}
    for n in ("web1", "web2"):
        net.serve(f"shop/{n}", "serve-tcp", "9090")  # echo, for a connection held open

    def objects(web1: str, web2: str | None) -> str:
        eps = f'- addresses: ["{ips["web1"]}"]\n  conditions: {web1}\n'
        if web2:
            eps += f'- addresses: ["{ips["web2"]}"]\n  conditions: {web2}\n'
        return (
            "apiVersion: v1\nkind: Service\nmetadata: {name: manual, namespace: shop}\n"
            "spec:\n  ports: [{name: echo, port: 80}, {name: id, port: 81}]\n---\n"
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
            "metadata: {name: manual-1, namespace: shop, labels: {kubernetes.io/service-name: manual}}\n"
            "addressType: IPv4\n"
            "ports: [{name: echo, port: 9090, protocol: TCP}, {name: id, port: 8080, protocol: TCP}]\n"
            "endpoints:\n" + eps
        )

    apply_ok(a, objects("{ready: true}", None))  # web1 only: the held connection goes there
    ip = vip(a, "manual")
    held = net.start("shop/client", "hold", ip, "80", "4")
    assert held.stdout is not None
    assert held.stdout.readline().strip() == "connected"
    apply_ok(a, objects("{ready: false, serving: false, terminating: true}", "{ready: true}"))
    row = next(r for r in a.client().get("/v1/services")["frontends"] if r["frontend"] == f"{ip}:80/TCP")
    assert {b["address"]: b["state"] for b in row["backends"]} == {ips["web1"]: "terminating-not-serving",
                                                                   ips["web2"]: "active"}
    out = ask(net, "shop/client", ip, 81, 10)
    assert out["answers"] == {"web2": 10}, out  # new connections: the active backend only
    held.wait(timeout=30)
    assert held.stdout.read().strip().endswith("fail=0")  # the established one kept working to the end
    net.cli_ok("service", "delete", "shop/manual")


def test_nodeport_from_the_host_and_bind_refused(env: tuple[AgentProcess, Net]) -> None:
    a, net = env
    apply_ok(a, service("np", ports="[{name: http, port: 80, targetPort: 8080, nodePort: 31999}]",
                        extra="  type: NodePort\n"))
    out = ask(net, None, "127.0.0.1", 31999, 6)
    assert out["errors"] == {} and sum(out["answers"].values()) == 6 and out["peers"] == {"127.0.0.1:31999": 6}
    row = next(r for r in a.client().get("/v1/services")["frontends"] if r["type"] == "NodePort")
    assert row["frontend"] == "0.0.0.0:31999/TCP"
    s = socket.socket()
    try:
        with pytest.raises(OSError) as ei:
            s.bind(("0.0.0.0", 31999))
        assert ei.value.errno == 98  # EADDRINUSE: post_bind4 keeps the NodePort for the service
    finally:
        s.close()


def _local_netns(a: AgentProcess) -> set[int]:
    held = pinned_maps(a.pin_root, "lb", ("lb4_local_netns",))["lb4_local_netns"]
    return {int.from_bytes(k, "little") for k in held}


def _cookie(net: Net, ep: str) -> int:
    return netns_cookie(os.path.basename(json.loads(net.cli_ok("endpoint", "get", ep))["netns"]))


def test_nodeport_from_an_endpoint_at_a_node_address(env: tuple[AgentProcess, Net]) -> None:
    """An endpoint reaches a NodePort at a node address (its router, the host's address on its veth) through the
    socket path, as Cilium translates it at the socket: its netns cookie is in lb4_local_netns, kept in step with
    the endpoints. Its own loopback is not the node's (as in Cilium, loopback is a node address for host sockets
    only)."""
    a, net = env
    apply_ok(a, service("npe", ports="[{name: http, port: 80, targetPort: 8080, nodePort: 31997}]",
                        extra="  type: NodePort\n"))
    router = str(ipaddress.IPv4Network(a.pod_cidr).network_address + 1)
    try:
        assert _cookie(net, "shop/client") in _local_netns(a)
        out = ask(net, "shop/client", router, 31997, 10)
        assert out["errors"] == {} and set(out["answers"]) <= {"web1", "web2"}, out
        assert sum(out["answers"].values()) == 10 and out["peers"] == {f"{router}:31997": 10}, out
        out = ask(net, "shop/client", "127.0.0.1", 31997, 1)
        assert out["errors"] == {"ECONNREFUSED": 1}, out  # the endpoint's own loopback: nothing listens
        # a new endpoint is added to the map, a deleted one removed
        net.endpoint("npe-tmp", "shop", app="client")
        cookie = _cookie(net, "shop/npe-tmp")
        assert cookie in _local_netns(a)
        assert sum(ask(net, "shop/npe-tmp", router, 31997, 2)["answers"].values()) == 2
        net.cli_ok("endpoint", "delete", "shop/npe-tmp")
        assert cookie not in _local_netns(a)
        assert _status(a)["maps"]["lb4_local_netns"]["entries"] == len(_local_netns(a))
    finally:
        a.cli("endpoint", "delete", "shop/npe-tmp")
        a.cli("service", "delete", "shop/npe")


def test_external_ip_on_a_local_address(env: tuple[AgentProcess, Net]) -> None:
    a, net = env
    apply_ok(a, service("ext", extra='  externalIPs: ["127.77.0.1"]\n'))
    out = ask(net, None, "127.77.0.1", 80, 4)
    assert out["errors"] == {} and sum(out["answers"].values()) == 4


def test_bad_yaml_is_refused_whole_with_the_field(env: tuple[AgentProcess, Net]) -> None:
    a, _ = env
    before = a.client().get("/v1/services")
    bad = service("good") + "---\n" + service("lb", extra="  type: LoadBalancer\n")
    r = apply(a, bad)
    err = r.stderr
    assert r.returncode != 0 and "Traceback" not in err
    assert "document[1].spec.type" in err and "LoadBalancer" in err
    assert a.client().get("/v1/services") == before  # not even the good one
    assert "nothing was changed" in err


def test_delete_removes_the_frontend(env: tuple[AgentProcess, Net]) -> None:
    a, net = env
    apply_ok(a, service("gone"))
    ip = vip(a, "gone")
    assert a.cli("service", "delete", "shop/gone").returncode == 0
    assert all(r["service"] != "shop/gone" for r in a.client().get("/v1/services")["frontends"])
    r = subprocess.run(net._exec("shop/client", "connect", ip, "80"), capture_output=True, text=True, timeout=30)
    assert "EHOSTUNREACH" in r.stdout or "ENETUNREACH" in r.stdout  # the unreachable route, not a backend
    assert "not found" in one_line_error(a.cli("service", "delete", "shop/gone"))


def test_delete_many_in_one_change_all_or_nothing(env: tuple[AgentProcess, Net]) -> None:
    a, net = env
    apply_ok(a, "---\n".join(service(n) for n in ("bulk1", "bulk2", "bulk3")))

    def names() -> set[str]:
        return {s["name"] for s in a.client().get("/v1/services")["services"]}

    # one unknown name: refused, named, and nothing deleted
    r = a.cli("service", "delete", "shop/bulk1", "shop/nosuch")
    assert r.returncode != 0 and "items[1]" in r.stderr and "shop/nosuch" in r.stderr
    assert {"shop/bulk1", "shop/bulk2", "shop/bulk3"} <= names()
    r = a.cli("service", "delete", "shop/bulk1", "shop/bulk2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["service/shop/bulk1", "deleted", "service/shop/bulk2", "deleted"]
    assert not {"shop/bulk1", "shop/bulk2"} & names() and "shop/bulk3" in names()
    # -f reads kinds and names from the YAML, as kubectl delete -f does
    r = a.cli("service", "delete", "-f", "-", input=service("bulk3"))
    assert r.returncode == 0, r.stderr
    assert "shop/bulk3" not in names()
    assert all(not r["service"].startswith("shop/bulk") for r in a.client().get("/v1/services")["frontends"])


def test_capacity_error_names_the_map_and_changes_nothing() -> None:
    with AgentProcess("--lb-map-size", "16") as a:
        docs = "---\n".join(service(f"s{i}", selector="{app: none}") for i in range(20))
        r = apply(a, docs)
        assert r.returncode != 0
        line = one_line_error(r)
        assert "lb4_services" in line and "16" in line and "nothing was changed" in line
        assert a.client().get("/v1/services")["services"] == []


def test_services_survive_an_agent_restart() -> None:
    a = AgentProcess()
    net = Net(a)
    try:
        a.start()
        net.endpoint("b", "shop", app="web")
        net.serve("shop/b", "serve-id", "8080", "b")
        apply_ok(a, service("web"))
        apply_ok(a, service("np", ports="[{name: http, port: 80, targetPort: 8080, nodePort: 31996}]",
                            extra="  type: NodePort\n"))
        ip = vip(a, "web")
        a.stop()
        a.start()
        assert vip(a, "web") == ip
        out = ask(net, None, ip, 80, 3)
        assert out["answers"] == {"b": 3}, (out, a.log()[-2000:])
        # the adopted lb4_local_netns still names the endpoint's netns: it reaches the NodePort at a node address
        assert _local_netns(a) == {_cookie(net, "shop/b")}
        router = str(ipaddress.IPv4Network(a.pod_cidr).network_address + 1)
        assert ask(net, "shop/b", router, 31996, 2)["answers"] == {"b": 2}
    finally:
        net.close()
        a.cleanup()


def _status(a: AgentProcess) -> dict[str, Any]:
    st: dict[str, Any] = a.client().get("/v1/status")["services"]
    return st


def test_status_reports_the_lb(env: tuple[AgentProcess, Net]) -> None:
    a, _ = env
    apply_ok(a, service("web"))
    st = _status(a)
    assert st["mode"].startswith("socket LB") and st["services"] >= 1 and st["backends"] >= 2
    assert st["maps"]["lb4_services"]["capacity"] == 65536 and st["counters"]["translated"] >= 0


def test_nodeport_from_a_test_host_through_the_tc_path() -> None:
    """A client in a namespace of its own (another host) reaches a NodePort at the node's address on the
    device it is attached to: DNAT on tc ingress of that device, reverse NAT on its egress."""
    import uuid

    tag = uuid.uuid4().hex[:6]
    ns, h_if, t_if = f"apiary-np-{tag}", f"np{tag}h", f"np{tag}t"
    host_ip, client_ip = "198.51.100.1", "198.51.100.20"

    def sh(*cmd: str) -> None:
        subprocess.run(cmd, check=True, capture_output=True)

    a = AgentProcess("--devices", h_if)
    net = Net(a)
    try:
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", h_if, "type", "veth", "peer", "name", t_if, "netns", ns)
        sh("ip", "addr", "add", f"{host_ip}/24", "dev", h_if)
        sh("ip", "link", "set", h_if, "up")
        for cmd in (["ip", "link", "set", "lo", "up"], ["ip", "link", "set", t_if, "up"],
                    ["ip", "addr", "add", f"{client_ip}/24", "dev", t_if],
                    ["ip", "route", "add", "default", "via", host_ip, "dev", t_if]):
            sh("ip", "netns", "exec", ns, *cmd)
        a.start()
        net.endpoint("b1", "shop", app="web")
        net.serve("shop/b1", "serve-id", "8080", "b1")
        apply_ok(a, service("np", ports="[{name: http, port: 80, targetPort: 8080, nodePort: 31888}]",
                            extra="  type: NodePort\n"))
        r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "apiary.testing.netprobe", "ask",
                            host_ip, "31888", "5"], capture_output=True, text=True, timeout=60)
        out = json.loads(r.stdout.strip().splitlines()[-1])
        assert out["answers"] == {"b1": 5} and out["peers"] == {f"{host_ip}:31888": 5}, (out, r.stderr)
        c = a.client().get("/v1/status")["services"]["counters"]
        assert c["nodeport_in"] >= 5 and c["nodeport_out"] >= 5
        # no backend: the packet is dropped on the device, with its reason
        apply_ok(a, service("np0", selector="{app: nobody}",
                            ports="[{name: http, port: 80, targetPort: 8080, nodePort: 31889}]",
                            extra="  type: NodePort\n"))
        subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "apiary.testing.netprobe", "connect",
                        host_ip, "31889"], capture_output=True, text=True, timeout=60)
        drops = [f for f in net.flows() if f.get("drop_reason_desc") == "SERVICE_BACKEND_NOT_FOUND"]
        assert drops and drops[-1]["IP"]["source"] == client_ip
    finally:
        net.close()
        a.cleanup()
        subprocess.run(["ip", "link", "del", h_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_named_target_port_resolves_per_endpoint(env: tuple[AgentProcess, Net]) -> None:
    a, net = env
    ep = net.endpoint("named", "shop", ports=("web=8081/TCP",), app="named")
    try:
        net.serve("shop/named", "serve-id", "8081", "named")
        apply_ok(a, service("named", selector="{app: named}", ports="[{name: http, port: 80, targetPort: web}]"))
        row = next(r for r in a.client().get("/v1/services")["frontends"] if r["service"] == "shop/named")
        assert [(b["address"], b["port"]) for b in row["backends"]] == [(ep["ipv4"], 8081)]
        out = ask(net, "shop/client", vip(a, "named"), 80, 3)
        assert out["answers"] == {"named": 3}
        # a Hubble flow to the backend names the service (destination_service)
        flows = [f for f in net.flows("--to-service", "shop/named") if f.get("destination_service")]
        assert flows and flows[-1]["destination_service"] == {"name": "named", "namespace": "shop"}
    finally:
        net.cli_ok("endpoint", "delete", "shop/named")
