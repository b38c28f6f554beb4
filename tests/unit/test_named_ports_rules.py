"""Endpoint container ports: validation (API, CLI, state file) and named ports in CiliumNetworkPolicy,
resolved as Cilium does (ingress: the selected endpoint's own ports; egress: each peer identity's)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from apiary.cli.main import cli
from apiary.policy.compile import EndpointSpec, compile_policies
from apiary.policy.explain import lookup
from apiary.policy.load import load_policies
from apiary.policy.models import is_port_name
from apiary.policy.types import EGRESS, ID_UNKNOWN, INGRESS, PROTO_TCP, PROTO_UDP, CompiledPolicy, PolicyKey
from apiary.sensors.network.endpoints import Endpoint, EndpointManager
from apiary.sensors.network.validate import ValidationError, check_port, check_ports
from apiary.store import FileStore

NS = "test-namespace"


# ----------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("name", ["http", "h", "dns-tcp", "http-80", "a1", "1a", "abcdefghijklmno"])
def test_port_names_kubernetes_accepts(name: str) -> None:
    assert is_port_name(name)
    assert check_port(name, 8080, "TCP") == (name, 8080, "TCP")


@pytest.mark.parametrize("name", ["", "Http", "-http", "http-", "http--s", "8080", "abcdefghijklmnop", "h_t",
                                  "http\n", "ｈttp", "h.t"])
def test_port_names_kubernetes_refuses(name: str) -> None:
    assert not is_port_name(name)
    with pytest.raises(ValidationError, match="not an IANA service name") as e:
        check_port(name, 8080, "TCP")
    assert e.value.field == "ports"


@pytest.mark.parametrize(("port", "proto", "reason"), [
    (0, "TCP", "0 is not a port number 1-65535"),
    (65536, "TCP", "65536 is not a port number 1-65535"),
    (True, "TCP", "must be an integer, not bool"),
    ("80", "TCP", "must be an integer, not str"),
    (80, "tcp", "protocol 'tcp' is not TCP, UDP or SCTP"),
    (80, "ICMP", "protocol 'ICMP' is not TCP, UDP or SCTP"),
    (80, None, "protocol NoneType is not TCP, UDP or SCTP"),
])
def test_port_number_and_protocol(port: object, proto: object, reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        check_port("http", port, proto)


def test_check_ports_body() -> None:
    assert check_ports({"http": [8080, "TCP"], "dns": (53, "UDP")}) == {"http": (8080, "TCP"), "dns": (53, "UDP")}
    assert check_ports({}) == {}
    for bad, reason in [([["http", 80]], "must be an object"), ({"http": 80}, "expected \\[port, protocol\\]"),
                        ({"http": [80]}, "expected \\[port, protocol\\]"), ({"HTTP": [80, "TCP"]}, "IANA")]:
        with pytest.raises(ValidationError, match=reason):
            check_ports(bad)


def _create(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(cli, ["--socket", "/nonexistent/apiary.sock", "endpoint", "create", "web", *args])
    return r.exit_code, r.output


@pytest.mark.parametrize(("flag", "reason"), [
    ("http", "expected NAME=PORT[/PROTOCOL]"),
    ("http=", "expected NAME=PORT[/PROTOCOL]"),
    ("http=80/", "expected NAME=PORT[/PROTOCOL]"),
    ("http=eighty", "port 'eighty' is not a number 1-65535"),
    ("http=70000", "70000 is not a port number 1-65535"),
    ("http=0", "0 is not a port number 1-65535"),
    ("Http=80", "port name 'Http' is not an IANA service name"),
    ("http--x=80", "is not an IANA service name"),
    ("http=80/ICMP", "protocol 'ICMP' is not TCP, UDP or SCTP"),
])
def test_cli_port_flag_refused_before_the_agent_is_asked(flag: str, reason: str) -> None:
    code, out = _create("--port", flag)
    assert code == 2, out
    assert "--port" in out and reason in out, out


def test_cli_duplicate_port_name_refused() -> None:
    code, out = _create("--port", "http=80", "-p", "http=8080/UDP")
    assert code == 2 and "--port" in out and "'http' given twice" in out, out


def test_cli_ports_reach_the_request(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: dict[str, object] = {}

    def request(self: object, method: str, path: str, **kw: object) -> dict[str, object]:
        sent.update(kw)
        return {"namespace": "default", "name": "web", "id": 1, "identity": 9, "ipv4": "10.0.0.2",
                "interface": "lxc0", "ports": {"dns": [53, "UDP"], "http": [8080, "TCP"]}}

    monkeypatch.setattr("apiary.cli.client.Client.request", request)
    code, out = _create("--port", "http=8080", "-p", "dns=53/udp")
    assert code == 0, out
    assert sent["json"] == {"name": "web", "namespace": "default", "labels": {},
                            "ports": {"http": (8080, "TCP"), "dns": (53, "UDP")}}
    assert "ports dns=53/UDP,http=8080/TCP" in out


# ----------------------------------------------------------------------------------------- state file
def _record(**extra: object) -> dict[str, object]:
    return {"ep_id": 1, "name": "web", "namespace": "default", "labels": {"app": "web"}, "ipv4": "10.0.0.2",
            "netns": "apiary-x-1", "host_if": "lxc1", "host_ifindex": 7, "cgroup": "/sys/fs/cgroup/x", **extra}


def test_state_file_with_and_without_ports(tmp_path: Path) -> None:
    state = tmp_path / "endpoints.json"
    old = _record()
    new = _record(ep_id=2, name="api", ipv4="10.0.0.3", ports={"http": [8080, "TCP"], "dns": [53, "UDP"]})
    state.write_text(json.dumps([old, new]))
    em = EndpointManager("10.0.0.0/24", "x", str(tmp_path / "cg"), FileStore(tmp_path))
    assert em.endpoints["default/web"].ports == {}
    assert em.endpoints["default/api"].ports == {"http": (8080, "TCP"), "dns": (53, "UDP")}
    em._save()  # written back as JSON lists, read back as tuples
    assert json.loads(state.read_text())[1]["ports"] == {"http": [8080, "TCP"], "dns": [53, "UDP"]}
    assert Endpoint.from_dict(json.loads(state.read_text())[1]) == em.endpoints["default/api"]


# ----------------------------------------------------------------------------------------- resolution
WEB = EndpointSpec(1, "web", NS, {"app": "web"}, "10.200.0.10", {"http": (8080, "TCP"), "dns": (53, "UDP")})
WEB2 = EndpointSpec(2, "web2", NS, {"app": "web"}, "10.200.0.11", {"http": (9090, "TCP")})
API = EndpointSpec(3, "api", NS, {"app": "api"}, "10.200.0.20", {"http": (8000, "TCP")})
CLIENT = EndpointSpec(4, "client", NS, {"app": "client"}, "10.200.0.30")
DB = EndpointSpec(5, "db", NS, {"app": "db"}, "10.200.0.40", {"pg": (5432, "TCP")})
EPS = [WEB, WEB2, API, CLIENT, DB]


def build(spec: str, eps: list[EndpointSpec] = EPS) -> CompiledPolicy:
    text = (f"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p, namespace: {NS}}}\nspec:\n"
            + textwrap.indent(textwrap.dedent(spec), "  "))
    return compile_policies(load_policies(text), eps, host_ips=["192.168.50.1"])


def ident(c: CompiledPolicy, ep: EndpointSpec) -> int:
    return c.ipcache[f"{ep.ipv4}/32"]


def verdict(c: CompiledPolicy, ep: EndpointSpec, direction: int, remote: int, proto: str, port: int) -> str:
    return lookup(c, ep.ep_id, direction, remote, proto, port).verdict


def test_ingress_resolves_against_each_selected_endpoints_own_ports() -> None:
    c = build("""\
        endpointSelector: {matchLabels: {app: web}}
        ingress:
        - fromEndpoints: [{matchLabels: {app: client}}]
          toPorts: [{ports: [{port: HTTP, protocol: TCP}]}]
    """)  # Cilium lower-cases a port name in a policy
    cl = ident(c, CLIENT)
    assert verdict(c, WEB, INGRESS, cl, "TCP", 8080) == "allowed"
    assert verdict(c, WEB, INGRESS, cl, "TCP", 9090) == "default-denied"
    assert verdict(c, WEB2, INGRESS, cl, "TCP", 9090) == "allowed"  # same identity, its own number
    assert verdict(c, WEB2, INGRESS, cl, "TCP", 8080) == "default-denied"
    assert set(c.endpoints[1].entries) == {PolicyKey(1, INGRESS, cl, PROTO_TCP, 8080, 16)}


def test_ingress_protocol_any_takes_the_ports_protocol_and_a_mismatch_allows_nothing() -> None:
    c = build("""\
        endpointSelector: {matchLabels: {app: web}}
        ingress:
        - toPorts: [{ports: [{port: dns}]}]
        - toPorts: [{ports: [{port: http, protocol: UDP}]}]
    """)
    assert set(c.endpoints[1].entries) == {PolicyKey(1, INGRESS, ID_UNKNOWN, PROTO_UDP, 53, 16)}
    assert verdict(c, WEB, INGRESS, ident(c, CLIENT), "UDP", 53) == "allowed"
    assert verdict(c, WEB, INGRESS, ident(c, CLIENT), "TCP", 53) == "default-denied"
    assert c.endpoints[2].ingress_enforced and not c.endpoints[2].entries  # web2 has neither dns nor http/UDP


def test_unknown_name_allows_nothing_and_is_not_an_error() -> None:
    c = build("""\
        endpointSelector: {matchLabels: {app: client}}
        ingress:
        - toPorts: [{ports: [{port: nosuch, protocol: TCP}]}]
        egress:
        - toEndpoints: [{matchLabels: {app: db}}]
          toPorts: [{ports: [{port: http, protocol: TCP}]}]
    """)
    ep = c.endpoints[CLIENT.ep_id]
    assert ep.ingress_enforced and ep.egress_enforced and not ep.entries


def test_egress_resolves_against_each_peer_identitys_ports() -> None:
    c = build("""\
        endpointSelector: {matchLabels: {app: client}}
        egress:
        - toEndpoints: [{matchLabels: {app: api}}, {matchLabels: {app: db}}]
          toPorts: [{ports: [{port: http, protocol: TCP}, {port: pg, protocol: TCP}]}]
    """)
    api, db = ident(c, API), ident(c, DB)
    assert set(c.endpoints[CLIENT.ep_id].entries) == {
        PolicyKey(CLIENT.ep_id, EGRESS, api, PROTO_TCP, 8000, 16),  # api's http
        PolicyKey(CLIENT.ep_id, EGRESS, db, PROTO_TCP, 5432, 16),  # db's pg
    }
    assert verdict(c, CLIENT, EGRESS, api, "TCP", 8000) == "allowed"
    assert verdict(c, CLIENT, EGRESS, api, "TCP", 5432) == "default-denied"  # pg is db's, not api's
    assert verdict(c, CLIENT, EGRESS, db, "TCP", 8000) == "default-denied"


def test_egress_peer_identity_with_two_numbers_for_a_name_allows_nothing() -> None:
    c = build("""\
        endpointSelector: {matchLabels: {app: client}}
        egress:
        - toEndpoints: [{matchLabels: {app: web}}]
          toPorts: [{ports: [{port: http, protocol: TCP}, {port: dns, protocol: UDP}]}]
    """)  # web (8080) and web2 (9090) share an identity: http is ambiguous for it, dns is web's alone
    web = ident(c, WEB)
    assert set(c.endpoints[CLIENT.ep_id].entries) == {PolicyKey(CLIENT.ep_id, EGRESS, web, PROTO_UDP, 53, 16)}
    # once web2 is gone (the agent recompiles on endpoint delete) the name is unique again
    c = build("""\
        endpointSelector: {matchLabels: {app: client}}
        egress:
        - toEndpoints: [{matchLabels: {app: web}}]
          toPorts: [{ports: [{port: http, protocol: TCP}]}]
    """, eps=[WEB, API, CLIENT, DB])
    assert verdict(c, CLIENT, EGRESS, ident(c, WEB), "TCP", 8080) == "allowed"


def test_egress_without_l3_peer_uses_every_endpoints_ports() -> None:
    spec = """\
        endpointSelector: {matchLabels: {app: client}}
        egress:
        - toPorts: [{ports: [{port: pg, protocol: TCP}, {port: http, protocol: TCP}]}]
    """
    c = build(spec)  # pg is 5432 everywhere; http is 8080, 9090 and 8000: ambiguous
    assert set(c.endpoints[CLIENT.ep_id].entries) == {PolicyKey(CLIENT.ep_id, EGRESS, ID_UNKNOWN, PROTO_TCP, 5432, 16)}
    c = build(spec, eps=[API, CLIENT])
    assert set(c.endpoints[CLIENT.ep_id].entries) == {PolicyKey(CLIENT.ep_id, EGRESS, ID_UNKNOWN, PROTO_TCP, 8000, 16)}


def test_egress_to_entities_and_cidrs_has_no_named_ports() -> None:
    c = build("""\
        endpointSelector: {matchLabels: {app: client}}
        egress:
        - toEntities: [world, host]
          toPorts: [{ports: [{port: http, protocol: TCP}]}]
        - toCIDR: [192.0.2.0/24]
          toPorts: [{ports: [{port: http, protocol: TCP}]}]
    """)
    assert c.endpoints[CLIENT.ep_id].egress_enforced and not c.endpoints[CLIENT.ep_id].entries


def test_named_port_deny_and_numbers_together() -> None:
    c = build("""\
        endpointSelector: {matchLabels: {app: web}}
        ingress:
        - fromEndpoints: [{matchLabels: {app: client}}]
          toPorts: [{ports: [{port: "8000", endPort: 9000, protocol: TCP}]}]
        ingressDeny:
        - fromEndpoints: [{matchLabels: {app: client}}]
          toPorts: [{ports: [{port: http, protocol: TCP}]}]
    """)
    cl = ident(c, CLIENT)
    assert verdict(c, WEB, INGRESS, cl, "TCP", 8080) == "denied"  # web's http
    assert verdict(c, WEB, INGRESS, cl, "TCP", 8081) == "allowed"
    assert verdict(c, WEB2, INGRESS, cl, "TCP", 8080) == "allowed"  # web2's http is 9090
    assert verdict(c, WEB2, INGRESS, cl, "TCP", 9090) == "denied"  # web2's http
