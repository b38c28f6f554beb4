from __future__ import annotations

from pathlib import Path

import pytest

from apiary.policy.compile import EndpointSpec, compile_policies
from apiary.policy.explain import (
    Peer,
    describe_rule,
    endpoint_peer,
    explain,
    identity_peer,
    ip_peer,
    lookup,
)
from apiary.policy.load import load_policies
from apiary.policy.types import (
    EGRESS,
    INGRESS,
    PROTO_TCP,
    PROTO_UDP,
    CompiledPolicy,
    EndpointPolicy,
    PolicyEntry,
    PolicyKey,
    RuleRef,
)

NS = "test-namespace"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "block-backend-access.yaml"
FRONTEND = EndpointSpec(1, "frontend", NS, {"app": "frontend"}, "10.200.0.11")
FRONTEND2 = EndpointSpec(2, "frontend2", NS, {"app": "frontend"}, "10.200.0.12")
BACKEND = EndpointSpec(3, "backend", NS, {"app": "backend"}, "10.200.0.23")
BACKEND2 = EndpointSpec(4, "backend2", NS, {"app": "backend"}, "10.200.0.24")
EPS = [FRONTEND, FRONTEND2, BACKEND, BACKEND2]


def seed() -> CompiledPolicy:
    return compile_policies(load_policies(EXAMPLE.read_text()), EPS, host_ips=["10.0.0.1"], revision=2)


def test_seed_policy_explained() -> None:
    c = seed()
    x = explain(c, endpoint_peer(c, FRONTEND), endpoint_peer(c, BACKEND), 5678, "TCP")
    assert x.verdict == "DENIED"
    assert x.sentence == ("DENIED at ingress of test-namespace/backend by CiliumNetworkPolicy "
                          "test-namespace/block-backend-access ingressDeny[0]")
    assert x.egress and x.egress.verdict == "not-enforced"
    assert x.ingress and x.ingress.verdict == "denied"
    assert x.ingress.rule == RuleRef("block-backend-access", NS, "CiliumNetworkPolicy", "ingressDeny[0]", 2,
                                     x.ingress.rule.labels)
    assert x.ingress.entry_key == PolicyKey(BACKEND.ep_id, INGRESS, c.ipcache["10.200.0.11/32"], 0, 0, 0)
    # the second frontend and backend behave the same; the other direction is not enforced
    assert explain(c, endpoint_peer(c, FRONTEND2), endpoint_peer(c, BACKEND2), 80, "UDP").verdict == "DENIED"
    back = explain(c, endpoint_peer(c, BACKEND), endpoint_peer(c, FRONTEND), 5678, "TCP")
    assert back.verdict == "ALLOWED" and back.sentence == (
        "ALLOWED: egress of test-namespace/backend not enforced; ingress of test-namespace/frontend not enforced")
    # anything else reaching a backend now hits default deny
    host = explain(c, ip_peer(c, "10.0.0.1"), endpoint_peer(c, BACKEND), 5678, "TCP")
    assert host.sentence == "DENIED at ingress of test-namespace/backend by default deny"
    assert host.ingress and host.ingress.verdict == "default-denied" and host.ingress.rule == c.rules[0]
    assert host.egress is None


def test_explain_allowed_names_both_rules() -> None:
    text = EXAMPLE.read_text().replace("block-backend-access", "web").replace("ingressDeny:", "ingress:")
    text += "  egress:\n  - toEndpoints: [{matchLabels: {app: frontend}}]\n"
    c = compile_policies(load_policies(text), EPS)
    x = explain(c, endpoint_peer(c, BACKEND), endpoint_peer(c, FRONTEND), 80)
    assert x.sentence == ("ALLOWED: egress of test-namespace/backend allowed by CiliumNetworkPolicy "
                          "test-namespace/web egress[0]; ingress of test-namespace/frontend not enforced")
    y = explain(c, endpoint_peer(c, BACKEND), endpoint_peer(c, BACKEND2), 80)
    assert y.sentence == "DENIED at egress of test-namespace/backend by default deny"
    assert y.ingress and y.ingress.verdict == "default-denied"  # both sides evaluated


def test_audit_sentence() -> None:
    c = compile_policies(load_policies(EXAMPLE.read_text()), EPS, audit=True)
    x = explain(c, endpoint_peer(c, FRONTEND), endpoint_peer(c, BACKEND), 5678)
    assert x.verdict == "AUDIT" and x.sentence.startswith(
        "AUDIT: would be DENIED at ingress of test-namespace/backend by CiliumNetworkPolicy")
    assert x.ingress and x.ingress.forwarded


def hand_compiled(entries: dict[PolicyKey, PolicyEntry], enforced: bool = True) -> CompiledPolicy:
    rules = [RuleRef("", "", "", "default deny", 0), RuleRef("a", "ns", "CiliumNetworkPolicy", "ingress[0]", 1),
             RuleRef("d", "", "CiliumClusterwideNetworkPolicy", "ingressDeny[0]", 1)]
    ep = EndpointPolicy(9, ingress_enforced=enforced, egress_enforced=False, entries=entries)
    return CompiledPolicy(1, {9: ep}, rules, {"0.0.0.0/0": 2}, {2: ("reserved:world",)})


def test_lookup_longest_prefix_within_one_identity() -> None:
    c = hand_compiled({
        PolicyKey(9, INGRESS, 300, PROTO_TCP, 0, 0): PolicyEntry(True, 2),  # any TCP port denied ...
        PolicyKey(9, INGRESS, 300, PROTO_TCP, 8080, 13): PolicyEntry(False, 1),  # ... but 8080-8087 allowed
        PolicyKey(9, INGRESS, 300, 0, 0, 0): PolicyEntry(False, 1),  # every other protocol allowed
    })
    assert lookup(c, 9, INGRESS, 300, "TCP", 8087).verdict == "allowed"
    d = lookup(c, 9, INGRESS, 300, "TCP", 8088)
    assert d.verdict == "denied" and d.entry_key == PolicyKey(9, INGRESS, 300, PROTO_TCP, 0, 0)
    assert describe_rule(d.rule) == "CiliumClusterwideNetworkPolicy d ingressDeny[0]"
    assert lookup(c, 9, INGRESS, 300, "UDP", 8088).verdict == "allowed"
    assert lookup(c, 9, INGRESS, 301, "UDP", 1).verdict == "default-denied"
    assert lookup(c, 9, EGRESS, 301, "UDP", 1).verdict == "not-enforced"
    assert lookup(c, 42, INGRESS, 301, "UDP", 1).verdict == "not-enforced"


def test_lookup_deny_from_either_lookup_wins() -> None:
    c = hand_compiled({
        PolicyKey(9, INGRESS, 300, PROTO_UDP, 53, 16): PolicyEntry(False, 1),
        PolicyKey(9, INGRESS, 0, 0, 0, 0): PolicyEntry(True, 2),
        PolicyKey(9, INGRESS, 301, 0, 0, 0): PolicyEntry(True, 2),
        PolicyKey(9, INGRESS, 0, PROTO_TCP, 22, 16): PolicyEntry(False, 1),
    })
    d = lookup(c, 9, INGRESS, 300, "UDP", 53)
    assert d.verdict == "denied" and d.entry_key and d.entry_key.identity == 0
    assert lookup(c, 9, INGRESS, 301, "TCP", 22).verdict == "denied"  # identity deny beats any-identity allow
    c.endpoints[9].entries.pop(PolicyKey(9, INGRESS, 0, 0, 0, 0))
    assert lookup(c, 9, INGRESS, 300, "UDP", 53).verdict == "allowed"
    assert lookup(c, 9, INGRESS, 302, "TCP", 22).verdict == "allowed"  # from the identity-0 lookup
    assert lookup(c, 9, INGRESS, 0, "TCP", 22).verdict == "allowed"


def test_peers() -> None:
    c = seed()
    assert identity_peer(c, 2) == Peer(2, None, "world")
    assert ip_peer(c, "8.8.8.8") == Peer(2, None, "8.8.8.8")
    assert ip_peer(c, "10.200.0.23").identity == endpoint_peer(c, BACKEND).identity
    with pytest.raises(ValueError):
        endpoint_peer(c, EndpointSpec(77, "x", NS, {}, ""))
    with pytest.raises(ValueError):
        explain(c, identity_peer(c, 2), endpoint_peer(c, BACKEND), 1, "carrier-pigeon")
