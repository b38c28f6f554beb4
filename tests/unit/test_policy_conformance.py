"""Every real Cilium policy in the conformance corpus either loads and compiles, or is rejected with a
PolicyError whose messages are "unsupported: <path> (...)" or "<path>: <reason>" — never anything else."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from apiary.policy.compile import EndpointSpec, compile_policies
from apiary.policy.explain import lookup
from apiary.policy.identity import resolve
from apiary.policy.load import PolicyError, load_policies
from apiary.policy.models import Policy
from apiary.policy.types import EGRESS, INGRESS, CompiledPolicy

CORPUS = Path("/work/shared/conformance/cilium-policies")
FILES = sorted(CORPUS.rglob("*.yaml")) if CORPUS.is_dir() else []
pytestmark = pytest.mark.skipif(not FILES, reason=f"{CORPUS} not available")

TEMPLATE_VALUES = {
    "TestNamespace": "cilium-test", "ClusterNameLocal": "default", "ClusterNameRemote": "default",
    "ExternalTarget": "one.one.one.one.", "ExternalCIDRv4": "192.0.2.0/24", "ExternalCIDRv6": "2001:db8::/64",
    "ExternalIPv4": "192.0.2.1", "ExternalIPv6": "2001:db8::1",
    "ExternalOtherIPv4": "192.0.2.2", "ExternalOtherIPv6": "2001:db8::2",
}
PATH_MESSAGE = re.compile(r"^(document\[\d+\]\.)?[A-Za-z][\w]*(\[\d+\])*(\.[A-Za-z][\w]*(\[\d+\])*)*: \S")
UNSUPPORTED_MESSAGE = re.compile(r"^unsupported: (document\[\d+\]\.)?[A-Za-z][\w.\[\]]* \(.+\)$")

LOADS = {
    "connectivity/allow-all-except-world.yaml", "connectivity/allow-all-ingress.yaml",
    "connectivity/allow-cluster-entity.yaml", "connectivity/allow-egress-specific-ns-ccnp.yaml",
    "connectivity/allow-host-entity-egress.yaml", "connectivity/allow-ingress-identity.yaml",
    "connectivity/client-egress-to-echo-deny-port-range.yaml", "connectivity/client-egress-to-echo-deny.yaml",
    "connectivity/client-egress-to-echo-expression-deny.yaml", "connectivity/client-egress-to-echo-expression.yaml",
    "connectivity/client-egress-to-echo-named-port-deny.yaml",
    "connectivity/client-egress-to-echo-service-account.yaml", "connectivity/client-egress-to-echo.yaml",
    "connectivity/client-egress-to-entities-k8s.yaml", "connectivity/client-egress-to-entities-world.yaml",
    "connectivity/client-ingress-from-client2.yaml", "connectivity/deny-all-egress.yaml",
    "connectivity/deny-all-entities.yaml", "connectivity/deny-all-ingress.yaml",
    "connectivity/deny-ingress-entity.yaml", "connectivity/deny-world-entity.yaml",
    "connectivity/echo-ingress-from-other-client-deny.yaml",
    "examples/kubernetes/clusterwide/clusterscope-policy.yaml", "examples/kubernetes/namespace/isolate-namespaces.yaml",
    "examples/kubernetes/namespace/kubedns-policy.yaml", "examples/kubernetes/namespace/namespace-policy.yaml",
    "examples/l3/cidr/cidr.yaml", "examples/l3/egress-default-deny/egress-default-deny.yaml",
    "examples/l3/egress-deny/egress-deny.yaml", "examples/l3/entities/apiserver.yaml",
    "examples/l3/entities/from_world_deny.yaml", "examples/l3/entities/host.yaml", "examples/l3/entities/nodes.yaml",
    "examples/l3/entities/world.yaml", "examples/l3/ingress-allow-all/ingress-allow-all.yaml",
    "examples/l3/simple/l3.yaml", "examples/l4/cidr_l4_combined.yaml", "examples/l4/l3_l4_combined.yaml",
    "examples/l4/l4.yaml", "examples/l4/l4_port_range.yaml",
    # L7 HTTP through the agent's proxy (files with headerMatches secrets stay refused)
    "connectivity/client-egress-l7-http-method.yaml", "connectivity/echo-ingress-l7-http-named-port.yaml",
    "connectivity/echo-ingress-l7-http.yaml", "examples/getting-started/l7-policy.yaml",
    "examples/kubernetes/serviceaccount/serviceaccount-policy.yaml", "examples/l7/http/http.yaml",
    "examples/l7/http/l7_multi.yaml",
    # DNS through the agent's DNS proxy, toFQDNs (and the HTTP files that combine with them)
    "connectivity/client-egress-l7-http-named-port.yaml", "connectivity/client-egress-l7-http-port-range.yaml",
    "connectivity/client-egress-l7-http.yaml", "connectivity/client-egress-only-dns.yaml",
    "connectivity/client-egress-to-fqdns-and-http-get.yaml", "connectivity/client-egress-to-fqdns.yaml",
    "examples/getting-started/dns-matchname.yaml", "examples/l3/fqdn/fqdn-short.yaml", "examples/l3/fqdn/fqdn.yaml",
    "examples/l7/dns/dns-visibility.yaml", "examples/l7/dns/dns.yaml",
}
# rejected by validation (not merely unsupported): file -> a message it must carry
INVALID = {
    "examples/l3/requires/requires.yaml": "specs[0].ingress[0].fromRequires: fromRequires was removed in Cilium 1.19",
    "examples/l3/match-expressions/and-statement.yaml":
        'spec.ingress[0].fromEndpoints[0].matchExpressions[0].operator: "in" is not a valid label selector operator',
    "examples/l3/match-expressions/or-statement.yaml":
        'spec.ingress[0].fromEndpoints[1].matchExpressions[0].operator: "in" is not a valid label selector operator',
    "examples/kubernetes/clusterwide/wildcard-from-endpoints.yaml": "description: unknown field",
    "examples/l3/host/host-policy.yaml": "description: unknown field",
}

EPS = [
    EndpointSpec(1, "client", "cilium-test", {"kind": "client", "name": "client"}, "10.200.0.10"),
    EndpointSpec(2, "client2", "cilium-test", {"kind": "client", "other": "client", "name": "client2"}, "10.200.0.11"),
    EndpointSpec(3, "echo", "cilium-test", {"kind": "echo", "name": "echo-same-node"}, "10.200.0.20",
                 {"http-8080": (8080, "TCP")}),
    EndpointSpec(4, "coredns", "kube-system", {"k8s-app": "kube-dns"}, "10.200.0.30"),
    EndpointSpec(5, "frontend", "cilium-test", {"role": "frontend", "app": "myService"}, "10.200.0.40"),
    EndpointSpec(6, "backend", "cilium-test", {"role": "backend"}, "10.200.0.41"),
]


def render(text: str) -> str:
    """Render the connectivity-test Go templates with fixed values."""

    def value(m: re.Match[str]) -> str:
        expr = m.group(1)
        name = re.search(r"\.(\w+)", expr)
        assert name, expr
        v = TEMPLATE_VALUES[name.group(1)]
        if "trimSuffix" in expr:
            v = v.rstrip(".")
        if "ipToCIDR" in expr:
            v += "/128" if ":" in v else "/32"
        return v

    return re.sub(r"\{\{(.*?)\}\}", value, text)


def load(rel: str) -> list[Policy]:
    return load_policies(render((CORPUS / rel).read_text()), default_namespace="cilium-test")


def compiled(rel: str) -> CompiledPolicy:
    return compile_policies(load(rel), EPS, host_ips=["192.168.1.1"])


@pytest.mark.parametrize("path", FILES, ids=[str(f.relative_to(CORPUS)) for f in FILES])
def test_loads_or_is_rejected_precisely(path: Path) -> None:
    rel = str(path.relative_to(CORPUS))
    try:
        policies = load(rel)
    except PolicyError as e:
        assert rel not in LOADS, e.messages
        assert e.messages
        for m in e.messages:
            assert UNSUPPORTED_MESSAGE.match(m) or PATH_MESSAGE.match(m), m
        if rel in INVALID:
            assert any(m.startswith(INVALID[rel]) for m in e.messages), e.messages
        else:
            assert all(m.startswith("unsupported: ") for m in e.messages), e.messages
        return
    assert rel in LOADS and policies
    c = compile_policies(policies, EPS, host_ips=["192.168.1.1"])
    assert set(c.endpoints) == {ep.ep_id for ep in EPS}
    for ep in c.endpoints.values():
        for entry in ep.entries.values():
            assert 0 < entry.rule_id < len(c.rules)


def test_corpus_totals() -> None:
    loaded = rejected = 0
    for f in FILES:
        try:
            load(str(f.relative_to(CORPUS)))
            loaded += 1
        except PolicyError:
            rejected += 1
    assert (loaded, rejected) == (len(LOADS), len(FILES) - len(LOADS))


def test_requires_is_rejected() -> None:
    with pytest.raises(PolicyError) as exc:
        load("examples/l3/requires/requires.yaml")
    assert any("fromRequires" in m for m in exc.value.messages)


def ident(c: CompiledPolicy, ep: int) -> int:
    return c.ipcache[f"{EPS[ep - 1].ipv4}/32"]


def test_from_world_deny() -> None:
    c = compiled("examples/l3/entities/from_world_deny.yaml")  # CCNP: ingress all, ingressDeny world
    for ep in (1, 4, 6):
        assert lookup(c, ep, INGRESS, 2, "TCP", 80).verdict == "denied"
        assert lookup(c, ep, INGRESS, 1, "TCP", 80).verdict == "allowed"
        assert lookup(c, ep, INGRESS, ident(c, 3), "UDP", 53).verdict == "allowed"


def test_egress_deny_beats_allow_all() -> None:
    c = compiled("examples/l3/egress-deny/egress-deny.yaml")
    assert lookup(c, 5, EGRESS, ident(c, 6), "TCP", 80).verdict == "denied"
    assert lookup(c, 5, EGRESS, 2, "TCP", 80).verdict == "allowed"
    assert lookup(c, 6, EGRESS, ident(c, 5), "TCP", 80).verdict == "not-enforced"


def test_cidr_example() -> None:
    c = compiled("examples/l3/cidr/cidr.yaml")  # app=myService: toCIDR 20.1.1.1/32, 10.0.0.0/8 except 10.96.0.0/12

    def to(ip: str) -> str:
        return lookup(c, 5, EGRESS, resolve(c.ipcache, ip), "TCP", 443).verdict

    assert to("20.1.1.1") == "allowed" and to("10.1.2.3") == "allowed"
    assert to("10.96.0.1") == "default-denied" and to("20.1.1.2") == "default-denied"
    assert to("10.200.0.41") == "default-denied"  # an endpoint is never matched by a CIDR rule


def test_connectivity_client_egress_to_echo() -> None:
    c = compiled("connectivity/client-egress-to-echo.yaml")
    assert lookup(c, 1, EGRESS, ident(c, 3), "TCP", 8080).verdict == "allowed"
    assert lookup(c, 1, EGRESS, ident(c, 3), "TCP", 8081).verdict == "default-denied"
    assert lookup(c, 1, EGRESS, ident(c, 4), "UDP", 53).verdict == "allowed"  # kube-system namespace named
    assert lookup(c, 1, EGRESS, 1, "UDP", 53).verdict == "allowed"  # host entity
    assert lookup(c, 1, EGRESS, 1, "UDP", 54).verdict == "default-denied"
    assert lookup(c, 3, EGRESS, 1, "UDP", 54).verdict == "not-enforced"


def test_connectivity_named_port_deny() -> None:
    c = compiled("connectivity/client-egress-to-echo-named-port-deny.yaml")  # echo's ingressDeny http-8080 from client
    assert lookup(c, 3, INGRESS, ident(c, 1), "TCP", 8080).verdict == "denied"  # the name resolved on echo
    assert lookup(c, 3, INGRESS, ident(c, 1), "TCP", 8081).verdict == "default-denied"
    assert lookup(c, 3, INGRESS, ident(c, 2), "TCP", 8080).verdict == "default-denied"
    assert lookup(c, 3, INGRESS, ident(c, 1), "UDP", 8080).verdict == "default-denied"


def test_isolate_namespaces_two_documents() -> None:
    c = compiled("examples/kubernetes/namespace/isolate-namespaces.yaml")  # ns1/ns2: none of our endpoints
    assert not any(e.ingress_enforced for e in c.endpoints.values())
    assert [p.namespace for p in load("examples/kubernetes/namespace/isolate-namespaces.yaml")] == ["ns1", "ns2"]
