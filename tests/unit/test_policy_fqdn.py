"""toFQDNs and rules.dns: Cilium's matchName/matchPattern semantics, which entries go to the DNS proxy, and
the identities of the IPs a toFQDNs selector learned."""

from __future__ import annotations

import pytest

from apiary.policy.compile import EndpointSpec, compile_policies
from apiary.policy.fqdn import dns_verdict, pattern_regex, selector_matches
from apiary.policy.load import PolicyError, load_policies
from apiary.policy.types import EGRESS, LOCAL_SCOPE, PROTO_SCTP, PROTO_TCP, PROTO_UDP, DnsRule, PolicyKey


@pytest.mark.parametrize(("pattern", "name", "hit"), [
    ("*", "example.com", True),
    ("*", "a.b.c.", True),
    ("**.", "x.", True),
    ("*.cilium.io", "sub.cilium.io.", True),
    ("*.cilium.io", "cilium.io.", False),  # exactly one label
    ("*.cilium.io", "a.b.cilium.io.", False),
    ("*.cilium.io", "SUB.Cilium.IO", True),  # case-insensitive
    ("**.cilium.io", "a.b.cilium.io.", True),  # one or more labels
    ("**.cilium.io", "sub.cilium.io.", True),
    ("**.cilium.io", "cilium.io.", False),
    ("sub*.cilium.io", "sub.cilium.io.", True),  # * in a label: zero or more DNS characters
    ("sub*.cilium.io", "subzero.cilium.io.", True),
    ("sub*.cilium.io", "x.sub.cilium.io.", False),
    ("cilium.io", "cilium.io.", True),
    ("cilium.io", "ciliumxio.", False),  # the dot is literal
])
def test_match_pattern(pattern: str, name: str, hit: bool) -> None:
    assert selector_matches(name, None, pattern) is hit, pattern_regex(pattern).pattern


def test_match_name_is_exact_and_case_insensitive() -> None:
    assert selector_matches("API.github.com", "api.github.com", None)
    assert selector_matches("api.github.com.", "api.github.com", None)
    assert not selector_matches("x.api.github.com.", "api.github.com", None)


def test_dns_verdict_first_rule_and_void_rule() -> None:
    rules = [DnsRule(1, "a", "a.example.com"), DnsRule(2, "b", None, "*.test.")]
    assert dns_verdict(rules, "a.example.com.") == rules[0]
    assert dns_verdict(rules, "x.test.") == rules[1]
    assert dns_verdict(rules, "b.example.com.") is None
    assert dns_verdict([DnsRule(3, "egress[1]")], "anything.") is not None  # a plain L4 allow voids them


@pytest.mark.parametrize(("sel", "where"), [
    ("{matchPattern: 'a[b].com'}", "matchPattern"),
    ("{matchName: 'a*.com'}", "matchName"),
    ("{}", "toFQDNs[0]"),
    ("{matchName: a.com, matchPattern: '*.b.com'}", "toFQDNs[0]: only one of matchName or matchPattern"),
])
def test_invalid_selectors_are_named(sel: str, where: str) -> None:
    with pytest.raises(PolicyError) as exc:
        load_policies(POLICY.replace("{matchName: api.example.com}", sel))
    assert any(where in m for m in exc.value.messages), exc.value.messages


POLICY = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: fqdn, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: dns}}]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns: [{matchName: api.example.com}, {matchPattern: "*.svc.example.com"}]
  - toFQDNs: [{matchName: api.example.com}]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
"""
EPS = [EndpointSpec(1, "client", "default", {"app": "client"}, "10.0.0.5"),
       EndpointSpec(2, "dns", "default", {"app": "dns"}, "10.0.0.6"),
       EndpointSpec(3, "other", "default", {"app": "other"}, "10.0.0.7")]


def test_a_dns_rule_may_set_both_and_either_matches() -> None:
    both = POLICY.replace('{matchPattern: "*.svc.example.com"}', '{matchName: a.com, matchPattern: "*.b.com"}')
    assert load_policies(both)  # a PortRuleDNS is not an FQDNSelector: Cilium takes both
    rule = DnsRule(3, "egress[0]", "a.com", "*.b.com")
    assert dns_verdict([rule], "a.com.") and dns_verdict([rule], "x.b.com.") and not dns_verdict([rule], "c.com.")


def test_dns_entries_go_to_the_proxy_for_udp_and_tcp_only() -> None:
    c = compile_policies(load_policies(POLICY), EPS)
    dns_id = c.ipcache["10.0.0.6/32"]
    entries = c.endpoints[1].entries
    for proto in (PROTO_UDP, PROTO_TCP):
        key = PolicyKey(1, EGRESS, dns_id, proto, 53, 16)
        assert entries[key].dns and not entries[key].l7
        assert [r.ref for r in c.dns[key]] == ["egress[0].toPorts[0].rules.dns[0]",
                                               "egress[0].toPorts[0].rules.dns[1]"]
    assert not entries[PolicyKey(1, EGRESS, dns_id, PROTO_SCTP, 53, 16)].dns  # the proxy has no SCTP
    assert not c.endpoints[3].entries and not c.endpoints[2].entries  # only the selected endpoint is proxied
    assert c.fqdn_ips == {}  # nothing resolved yet: toFQDNs selects nothing, port 443 allows nobody
    assert not any(k.port == 443 for k in entries)


def test_learned_ips_get_shared_local_identities() -> None:
    learned = {"api.example.com.": ["192.0.2.1", "192.0.2.2"], "alias.example.com.": ["192.0.2.1"],
               "unrelated.example.org.": ["192.0.2.9"]}
    c = compile_policies(load_policies(POLICY), EPS, fqdn_ips=learned)
    ids = {c.ipcache["192.0.2.1/32"], c.ipcache["192.0.2.2/32"]}
    assert len(ids) == 2 and all(i > LOCAL_SCOPE for i in ids)
    assert "192.0.2.9/32" not in c.ipcache  # no selector asked for it
    keys = {k for k in c.endpoints[1].entries if k.port == 443}
    assert keys == {PolicyKey(1, EGRESS, i, PROTO_TCP, 443, 16) for i in ids}
    assert c.fqdn_ips == {"api.example.com.": ("192.0.2.1", "192.0.2.2")}


def test_plain_allow_of_the_port_voids_dns_rules() -> None:
    text = POLICY + """  - toEndpoints: [{matchLabels: {app: dns}}]
    toPorts: [{ports: [{port: "53", protocol: UDP}]}]
"""
    c = compile_policies(load_policies(text), EPS)
    key = PolicyKey(1, EGRESS, c.ipcache["10.0.0.6/32"], PROTO_UDP, 53, 16)
    assert c.endpoints[1].entries[key].dns  # still proxied (visibility) ...
    assert dns_verdict(c.dns[key], "whatever.org.") is not None  # ... but every name allowed
