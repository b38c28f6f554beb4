from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from apiary.policy.compile import EndpointSpec, check_capacity, compile_policies, port_blocks
from apiary.policy.explain import lookup
from apiary.policy.identity import IdentityAllocator, resolve
from apiary.policy.load import PolicyError, load_policies
from apiary.policy.models import CiliumNetworkPolicy
from apiary.policy.types import (
    EGRESS,
    INGRESS,
    LOCAL_SCOPE,
    PROTO_ICMP,
    PROTO_SCTP,
    PROTO_TCP,
    PROTO_UDP,
    CompiledPolicy,
    PolicyEntry,
    PolicyKey,
    RuleRef,
)
from apiary.store import FileStore

NS = "test-namespace"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "block-backend-access.yaml"
EPS = [
    EndpointSpec(1, "frontend", NS, {"app": "frontend"}, "10.200.0.10"),
    EndpointSpec(2, "frontend2", NS, {"app": "frontend"}, "10.200.0.11"),
    EndpointSpec(3, "backend", NS, {"app": "backend"}, "10.200.0.20"),
    EndpointSpec(4, "backend2", NS, {"app": "backend"}, "10.200.0.21"),
    EndpointSpec(5, "db", "other", {"app": "db"}, "10.200.0.30"),
]
HOST_IP = "192.168.50.1"


def cnp(spec: str, name: str = "p", kind: str = "CiliumNetworkPolicy") -> str:
    ns = f"  namespace: {NS}\n" if kind == "CiliumNetworkPolicy" else ""
    return (f"apiVersion: cilium.io/v2\nkind: {kind}\nmetadata:\n  name: {name}\n{ns}spec:\n"
            + textwrap.indent(textwrap.dedent(spec), "  "))


def build(*docs: str, eps: list[EndpointSpec] = EPS, **kw: object) -> CompiledPolicy:
    policies = [p for d in docs for p in load_policies(d)]
    return compile_policies(policies, eps, host_ips=[HOST_IP], **kw)  # type: ignore[arg-type]


def ident(c: CompiledPolicy, ep: int) -> int:
    return c.ipcache[f"{EPS[ep - 1].ipv4}/32"]


def verdict(c: CompiledPolicy, ep: int, direction: int, remote: int, proto: int | str = "TCP", port: int = 80) -> str:
    return lookup(c, ep, direction, remote, proto, port).verdict


def entries(c: CompiledPolicy, ep: int) -> dict[PolicyKey, PolicyEntry]:
    return c.endpoints[ep].entries


BACKEND_ALLOW_FRONTEND = cnp("""\
    endpointSelector: {matchLabels: {app: backend}}
    ingress:
    - fromEndpoints: [{matchLabels: {app: frontend}}]
      toPorts: [{ports: [{port: "80", protocol: TCP}]}]
""", name="allow-frontend")


def test_no_policy_no_enforcement() -> None:
    c = build()
    assert all(not (e.ingress_enforced or e.egress_enforced or e.entries) for e in c.endpoints.values())
    assert c.rules == [RuleRef("", "", "", "default deny", 0)]
    assert verdict(c, 3, INGRESS, ident(c, 1)) == "not-enforced"


def test_default_deny_follows_policies() -> None:
    c = build(BACKEND_ALLOW_FRONTEND)
    assert c.endpoints[3].ingress_enforced and not c.endpoints[3].egress_enforced
    assert not c.endpoints[1].ingress_enforced  # not selected
    fe = ident(c, 1)
    assert entries(c, 3) == {PolicyKey(3, INGRESS, fe, PROTO_TCP, 80, 16): PolicyEntry(False, 1)}
    assert c.rules[1] == RuleRef("allow-frontend", NS, "CiliumNetworkPolicy", "ingress[0]", 0, (
        "k8s:io.cilium.k8s.policy.derived-from=CiliumNetworkPolicy", "k8s:io.cilium.k8s.policy.name=allow-frontend",
        "k8s:io.cilium.k8s.policy.namespace=test-namespace"))
    assert verdict(c, 3, INGRESS, fe, port=80) == "allowed"
    assert verdict(c, 3, INGRESS, fe, port=81) == "default-denied"
    assert verdict(c, 3, INGRESS, fe, "UDP", 80) == "default-denied"
    assert verdict(c, 3, INGRESS, 1, port=80) == "default-denied"  # the host is not a frontend
    assert verdict(c, 3, EGRESS, 2) == "not-enforced"
    # policy removed: back to allow-all
    c = build()
    assert verdict(c, 3, INGRESS, 1, port=81) == "not-enforced"


def test_empty_ingress_item_denies_all_and_empty_list_selects_nothing() -> None:
    c = build(cnp("endpointSelector: {}\ningress: [{}]\n"))
    assert all(c.endpoints[i].ingress_enforced and not c.endpoints[i].entries for i in (1, 2, 3, 4))
    assert not c.endpoints[5].ingress_enforced  # other namespace
    c = build(cnp("""\
        endpointSelector: {}
        egress:
        - toEndpoints: []
          toPorts: [{ports: [{port: "53", protocol: UDP}]}]
        - toPorts: [{ports: [{port: "443", protocol: TCP}]}]
    """))
    assert set(entries(c, 1)) == {PolicyKey(1, EGRESS, 0, PROTO_TCP, 443, 16)}  # omitted peers = any identity


def test_enable_default_deny_false_is_additive() -> None:
    c = build(cnp("""\
        endpointSelector: {matchLabels: {app: backend}}
        enableDefaultDeny: {ingress: false}
        ingressDeny:
        - fromEndpoints: [{matchLabels: {app: frontend}}]
    """))
    fe = ident(c, 1)
    assert c.endpoints[3].ingress_enforced
    assert entries(c, 3) == {PolicyKey(3, INGRESS, fe, 0, 0, 0): PolicyEntry(True, 1),
                             PolicyKey(3, INGRESS, 0, 0, 0, 0): PolicyEntry(False, 2)}
    assert c.rules[2].section == "enableDefaultDeny.ingress"
    assert verdict(c, 3, INGRESS, fe) == "denied"
    assert verdict(c, 3, INGRESS, 1) == "allowed"  # the host is not denied, and nothing defaults to deny
    # a second policy that wants default deny wins
    c = build(cnp("""\
        endpointSelector: {matchLabels: {app: backend}}
        enableDefaultDeny: {ingress: false}
        ingress:
        - fromEntities: [host]
    """), BACKEND_ALLOW_FRONTEND)
    assert PolicyKey(3, INGRESS, 0, 0, 0, 0) not in entries(c, 3)
    assert verdict(c, 3, INGRESS, 1) == "allowed" and verdict(c, 3, INGRESS, 2) == "default-denied"


def test_deny_only_policy_enables_default_deny() -> None:
    c = build(EXAMPLE.read_text())
    fe = ident(c, 1)
    for ep in (3, 4):
        assert c.endpoints[ep].ingress_enforced and not c.endpoints[ep].egress_enforced
        assert entries(c, ep) == {PolicyKey(ep, INGRESS, fe, 0, 0, 0): PolicyEntry(True, 1)}
    assert c.rules[1].policy == "block-backend-access" and c.rules[1].section == "ingressDeny[0]"
    assert verdict(c, 3, INGRESS, fe) == "denied" and verdict(c, 3, INGRESS, 1) == "default-denied"
    assert ident(c, 1) == ident(c, 2)  # both frontends share one identity


def test_enforcement_modes() -> None:
    c = build(enforcement="always")
    assert all(e.ingress_enforced and e.egress_enforced and not e.entries for e in c.endpoints.values())
    c = build(BACKEND_ALLOW_FRONTEND, enforcement="never")
    assert all(not (e.ingress_enforced or e.entries) for e in c.endpoints.values())
    assert verdict(c, 3, INGRESS, 1) == "not-enforced"
    with pytest.raises(ValueError):
        build(enforcement="sometimes")


def test_deny_precedence_same_key_and_covering_key() -> None:
    deny = cnp("""\
        endpointSelector: {matchLabels: {app: backend}}
        ingressDeny:
        - fromEndpoints: [{matchLabels: {app: frontend}}]
          toPorts: [{ports: [{port: "80", protocol: TCP}]}]
        - fromEndpoints: [{matchLabels: {app: frontend}}]
          toPorts: [{ports: [{port: "0", protocol: UDP}]}]
    """, name="deny")
    allow = cnp("""\
        endpointSelector: {matchLabels: {app: backend}}
        ingress:
        - fromEndpoints: [{matchLabels: {app: frontend}}]
          toPorts: [{ports: [{port: "80", protocol: TCP}, {port: "53", protocol: UDP}, {port: "81", protocol: TCP}]}]
    """, name="allow")
    c = build(allow, deny)
    fe = ident(c, 1)
    e = entries(c, 3)
    by_name = {r.policy + " " + r.section: i for i, r in enumerate(c.rules)}
    assert e[PolicyKey(3, INGRESS, fe, PROTO_TCP, 80, 16)] == PolicyEntry(True, by_name["deny ingressDeny[0]"])
    # UDP/53 allow is covered by the any-UDP-port deny: rewritten into a deny with the deny's attribution
    assert e[PolicyKey(3, INGRESS, fe, PROTO_UDP, 53, 16)] == PolicyEntry(True, by_name["deny ingressDeny[1]"])
    assert e[PolicyKey(3, INGRESS, fe, PROTO_UDP, 0, 0)] == PolicyEntry(True, by_name["deny ingressDeny[1]"])
    assert e[PolicyKey(3, INGRESS, fe, PROTO_TCP, 81, 16)] == PolicyEntry(False, by_name["allow ingress[0]"])
    assert verdict(c, 3, INGRESS, fe, "UDP", 53) == "denied" and verdict(c, 3, INGRESS, fe, "TCP", 81) == "allowed"


def test_deny_on_any_identity_beats_specific_allow() -> None:
    c = build(BACKEND_ALLOW_FRONTEND, cnp("""\
        endpointSelector: {matchLabels: {app: backend}}
        ingressDeny:
        - toPorts: [{ports: [{port: "80", protocol: TCP}]}]
    """, name="deny-80"))
    fe = ident(c, 1)
    e = entries(c, 3)
    # different identity sub-spaces are not rewritten: the datapath's two lookups make the deny win
    assert not e[PolicyKey(3, INGRESS, fe, PROTO_TCP, 80, 16)].deny
    assert e[PolicyKey(3, INGRESS, 0, PROTO_TCP, 80, 16)].deny
    d = lookup(c, 3, INGRESS, fe, "TCP", 80)
    assert d.verdict == "denied" and d.rule and d.rule.policy == "deny-80" and d.entry_key.identity == 0


def test_l3_deny_covers_port_range_allow() -> None:
    c = build(cnp("""\
        endpointSelector: {matchLabels: {app: backend}}
        ingress:
        - fromEntities: [host]
          toPorts: [{ports: [{port: "8080", endPort: 8090, protocol: TCP}]}]
        ingressDeny:
        - fromEntities: [host]
    """))
    assert {k.port_prefix for k in entries(c, 3)} == {0, 13, 15, 16}
    assert all(e == PolicyEntry(True, 2) for e in entries(c, 3).values())
    assert c.rules[2].section == "ingressDeny[0]"


def test_port_blocks() -> None:
    assert list(port_blocks(8080, 8090)) == [(8080, 13), (8088, 15), (8090, 16)]
    assert list(port_blocks(80, 80)) == [(80, 16)]
    assert list(port_blocks(0, 65535)) == [(0, 0)]
    assert list(port_blocks(1, 65535))[:3] == [(1, 16), (2, 15), (4, 14)]
    for first, last in [(80, 444), (1, 1023), (4096, 8191), (65534, 65535), (1000, 1000)]:
        covered = [p for port, plen in port_blocks(first, last) for p in range(port, port + (1 << (16 - plen)))]
        assert covered == list(range(first, last + 1))


def test_end_port_range_exact_through_lookup() -> None:
    c = build(cnp("""\
        endpointSelector: {matchLabels: {app: backend}}
        ingress:
        - toPorts: [{ports: [{port: "8080", endPort: 8090, protocol: TCP}]}]
    """))
    assert {(k.port, k.port_prefix) for k in entries(c, 3)} == {(8080, 13), (8088, 15), (8090, 16)}
    allowed = [p for p in range(65536) if verdict(c, 3, INGRESS, 12345, "TCP", p) == "allowed"]
    assert allowed == list(range(8080, 8091))
    assert verdict(c, 3, INGRESS, 12345, "UDP", 8080) == "default-denied"


def test_any_protocol_and_port_zero() -> None:
    c = build(cnp("""\
        endpointSelector: {matchLabels: {app: backend}}
        ingress:
        - toPorts: [{ports: [{port: "53"}, {port: "0", protocol: SCTP}]}]
    """))
    assert set(entries(c, 3)) == {PolicyKey(3, INGRESS, 0, p, 53, 16) for p in (PROTO_TCP, PROTO_UDP, PROTO_SCTP)} | {
        PolicyKey(3, INGRESS, 0, PROTO_SCTP, 0, 0)}
    assert verdict(c, 3, INGRESS, 9, "UDP", 53) == "allowed" and verdict(c, 3, INGRESS, 9, "SCTP", 9999) == "allowed"
    assert verdict(c, 3, INGRESS, 9, "ICMP", 8) == "default-denied"  # ANY never includes ICMP


def test_icmp() -> None:
    c = build(cnp("""\
        endpointSelector: {matchLabels: {app: backend}}
        ingress:
        - fromEndpoints: [{matchLabels: {app: frontend}}]
          icmps: [{fields: [{type: EchoRequest}, {family: IPv4, type: 13}]}]
    """))
    fe = ident(c, 1)
    assert set(entries(c, 3)) == {PolicyKey(3, INGRESS, fe, PROTO_ICMP, 8, 16),
                                  PolicyKey(3, INGRESS, fe, PROTO_ICMP, 13, 16)}
    assert verdict(c, 3, INGRESS, fe, "ICMP", 8) == "allowed"
    assert verdict(c, 3, INGRESS, fe, "ICMP", 0) == "default-denied"
    assert verdict(c, 3, INGRESS, fe, "TCP", 8) == "default-denied"


def test_l3_only_rule_allows_every_protocol() -> None:
    c = build(cnp("""\
        endpointSelector: {matchLabels: {app: backend}}
        ingress:
        - fromEndpoints: [{matchLabels: {app: frontend}}]
    """))
    fe = ident(c, 1)
    assert set(entries(c, 3)) == {PolicyKey(3, INGRESS, fe, 0, 0, 0)}
    assert all(verdict(c, 3, INGRESS, fe, p, 7) == "allowed" for p in ("TCP", "UDP", "ICMP", "SCTP", 47))


def test_cidr_with_except_never_matches_endpoints() -> None:
    c = build(cnp("""\
        endpointSelector: {matchLabels: {app: frontend}}
        egress:
        - toCIDRSet:
          - cidr: 10.200.0.0/16
            except: [10.200.9.0/24]
        - toCIDR: [192.0.2.7]
    """))
    wide, exc, single = (c.ipcache[p] for p in ("10.200.0.0/16", "10.200.9.0/24", "192.0.2.7/32"))
    assert {wide, exc, single} == {LOCAL_SCOPE + 1, LOCAL_SCOPE + 2, LOCAL_SCOPE + 3}
    assert c.identities[wide] == ("cidr:10.200.0.0/16", "reserved:world")
    assert {k.identity for k in entries(c, 1)} == {wide, single}

    def to(ip: str) -> str:
        return verdict(c, 1, EGRESS, resolve(c.ipcache, ip))

    assert to("10.200.77.1") == "allowed" and to("192.0.2.7") == "allowed"
    assert to("10.200.9.1") == "default-denied" and to("192.0.2.8") == "default-denied"
    assert to("10.200.0.20") == "default-denied"  # an endpoint inside the CIDR keeps its own identity
    assert to(HOST_IP) == "default-denied"


@pytest.mark.parametrize(("entity", "allowed", "denied"), [
    ("host", [HOST_IP], ["10.200.0.20", "8.8.8.8"]),
    ("world", ["8.8.8.8", "192.0.2.1"], [HOST_IP, "10.200.0.20"]),
    ("cluster", [HOST_IP, "10.200.0.20", "10.200.0.30"], ["8.8.8.8", "192.0.2.1"]),
    ("all", [HOST_IP, "10.200.0.20", "8.8.8.8", "192.0.2.1"], []),
])
def test_entities(entity: str, allowed: list[str], denied: list[str]) -> None:
    c = build(cnp(f"""\
        endpointSelector: {{matchLabels: {{app: frontend}}}}
        egress:
        - toEntities: [{entity}]
        - toCIDR: [192.0.2.0/24]
          toPorts: [{{ports: [{{port: "1", protocol: UDP}}]}}]
    """))
    for ip in allowed:
        assert verdict(c, 1, EGRESS, resolve(c.ipcache, ip)) == "allowed", ip
    for ip in denied:
        assert verdict(c, 1, EGRESS, resolve(c.ipcache, ip)) == "default-denied", ip
    if entity == "all":
        assert PolicyKey(1, EGRESS, 0, 0, 0, 0) in entries(c, 1)


def test_ccnp_peers_and_subjects() -> None:
    c = build(cnp("""\
        endpointSelector: {matchLabels: {app: db}}
        ingress:
        - fromEndpoints: [{}]
    """, name="all-pods", kind="CiliumClusterwideNetworkPolicy"))
    assert c.endpoints[5].ingress_enforced
    assert {k.identity for k in entries(c, 5)} == {ident(c, 1), ident(c, 3), ident(c, 5)}
    assert c.rules[1] == RuleRef("all-pods", "", "CiliumClusterwideNetworkPolicy", "ingress[0]", 0, (
        "k8s:io.cilium.k8s.policy.derived-from=CiliumClusterwideNetworkPolicy",
        "k8s:io.cilium.k8s.policy.name=all-pods"))


def test_two_policies_select_the_same_endpoint() -> None:
    c = build(BACKEND_ALLOW_FRONTEND, cnp("""\
        endpointSelector: {matchLabels: {app: backend}}
        ingress:
        - fromEntities: [host]
        - fromEndpoints: [{matchLabels: {app: frontend}}]
          toPorts: [{ports: [{port: "80", protocol: TCP}, {port: "443", protocol: TCP}]}]
    """, name="second"), revision=7)
    fe = ident(c, 1)
    e = entries(c, 3)
    assert c.rules[e[PolicyKey(3, INGRESS, fe, PROTO_TCP, 80, 16)].rule_id].policy == "allow-frontend"  # first wins
    assert c.rules[e[PolicyKey(3, INGRESS, fe, PROTO_TCP, 443, 16)].rule_id].section == "ingress[1]"
    assert c.rules[e[PolicyKey(3, INGRESS, 1, 0, 0, 0)].rule_id].section == "ingress[0]"
    assert {r.revision for r in c.rules[1:]} == {7}
    assert verdict(c, 3, INGRESS, 1, "UDP", 5) == "allowed"
    assert verdict(c, 3, INGRESS, fe, "TCP", 22) == "default-denied"


def test_specs_sections_and_description() -> None:
    text = cnp("endpointSelector: {}\ningress: [{}]\n").split("spec:")[0] + textwrap.dedent("""\
        specs:
        - endpointSelector: {matchLabels: {app: nothing}}
          egress: [{}]
        - endpointSelector: {matchLabels: {app: frontend}}
          description: web egress
          labels: ["user:team=web"]
          egress:
          - toEntities: [world]
    """)
    c = build(text)
    (rule_id,) = {e.rule_id for e in entries(c, 1).values()}
    ref = c.rules[rule_id]
    assert ref.section == "specs[1].egress[0]" and ref.description == "web egress" and ref.labels[-1] == "user:team=web"


def test_audit_marks_deny_entries() -> None:
    c = build(EXAMPLE.read_text(), BACKEND_ALLOW_FRONTEND, audit=True)
    fe = ident(c, 1)
    e = entries(c, 3)
    assert e[PolicyKey(3, INGRESS, fe, 0, 0, 0)] == PolicyEntry(True, 1, audit=True)
    # the frontend's TCP/80 allow is covered by the L3 deny and becomes an audited deny
    assert e[PolicyKey(3, INGRESS, fe, PROTO_TCP, 80, 16)] == PolicyEntry(True, 1, audit=True)
    assert verdict(c, 3, INGRESS, fe) == "audit"
    assert lookup(c, 3, INGRESS, 1, "TCP", 80, audit=True).verdict == "audit"
    assert lookup(c, 3, INGRESS, 1, "TCP", 80).verdict == "default-denied"


def test_identities_and_ipcache(tmp_path: Path) -> None:
    state = FileStore(tmp_path)
    c1 = build(BACKEND_ALLOW_FRONTEND, allocator=IdentityAllocator(state))
    c2 = build(BACKEND_ALLOW_FRONTEND, allocator=IdentityAllocator(state), eps=list(reversed(EPS)))
    assert c1.ipcache == c2.ipcache and c1.identities == c2.identities
    assert c1.ipcache[f"{HOST_IP}/32"] == 1 and c1.ipcache["0.0.0.0/0"] == 2
    assert c1.identities[ident(c1, 3)] == ("k8s:app=backend", "k8s:io.cilium.k8s.policy.cluster=default",
                                           "k8s:io.kubernetes.pod.namespace=test-namespace")
    assert {1, 2, 3, 4, 5, 6, 7, 8} <= set(c1.identities)


def test_check_capacity() -> None:
    c = build(cnp("""\
        endpointSelector: {}
        ingress:
        - toPorts: [{ports: [{port: "1", endPort: 1000, protocol: ANY}]}]
    """))
    need = sum(len(e.entries) for e in c.endpoints.values())
    assert need == 4 * 3 * len(list(port_blocks(1, 1000)))
    check_capacity(c, need)
    with pytest.raises(PolicyError) as exc:
        check_capacity(c, need - 1)
    assert exc.value.messages == [f"policy map would need {need} entries, capacity {need - 1}"]


def test_compile_refuses_what_load_would_reject() -> None:
    p = CiliumNetworkPolicy.model_validate({
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "svc"},
        "spec": {"endpointSelector": {}, "egress": [{"toServices": [{"k8sService": {"serviceName": "s"}}],
                                                     "toPorts": [{"ports": [{"port": "443"}]}]}]}})
    assert p.namespace == "default"
    with pytest.raises(PolicyError) as exc:
        compile_policies([p], EPS)
    assert exc.value.messages[0].startswith("unsupported: spec.egress[0].toServices (")
