"""The endpoint TC programs run on crafted packets with BPF_PROG_TEST_RUN: verdict and flow records for
policies compiled by compile_policies(), in seconds and without namespaces. The same cases run with real
traffic in test_network_policy.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from apiary.observe.hubble.raw import (
    CT_ESTABLISHED,
    CT_NEW,
    CT_RELATED,
    CT_REPLY,
    MSG_DROP,
    MSG_POLICY_VERDICT,
    MSG_TRACE,
    VERDICT_AUDIT,
    VERDICT_DROPPED,
    VERDICT_FORWARDED,
)
from apiary.testing.progrun import (
    TC_ACT_OK,
    TC_ACT_SHOT,
    TCP_ACK,
    TCP_FIN,
    TCP_SYN,
    Peer,
    ProgRun,
    icmp_packet,
    tcp_packet,
    udp_packet,
)

pytestmark = pytest.mark.kernel
NS = "test-namespace"
DROP_POLICY_DENIED, DROP_POLICY_DENY = 133, 181
BACKEND = Peer("backend", NS, {"app": "backend"}, "10.200.0.3", 3)
FRONTEND = Peer("frontend", NS, {"app": "frontend"}, "10.200.0.2", 2)
OTHER = Peer("other", NS, {"app": "other"}, "10.200.0.4", 4)
STRANGER = Peer("stranger", "elsewhere", {"app": "frontend"}, "10.200.0.5", 5)


@pytest.fixture
def pr() -> Iterator[ProgRun]:
    with ProgRun(BACKEND, [FRONTEND, OTHER, STRANGER]) as r:
        yield r


def policy(spec: str, name: str = "p") -> str:
    body = "\n".join("  " + line for line in spec.strip("\n").splitlines())
    return f"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}, namespace: {NS}}}\n" \
           f"spec:\n{body}\n"


def syn_to_backend(pr: ProgRun, src: Peer, port: int, sport: int = 40000) -> tuple[int, list]:  # type: ignore[type-arg]
    return pr.run(tcp_packet(src.ipv4, BACKEND.ipv4, sport, port, TCP_SYN), egress=False)


def kinds(flows: list) -> list[int]:  # type: ignore[type-arg]
    return [f.kind for f in flows]


def test_no_policy_forwards_and_traces(pr: ProgRun) -> None:
    pr.apply()
    ret, flows = syn_to_backend(pr, FRONTEND, 5678)
    assert ret == TC_ACT_OK
    assert kinds(flows) == [MSG_TRACE]
    f = flows[0]
    assert (f.verdict, f.ct_state, f.egress, f.ep_id) == (VERDICT_FORWARDED, CT_NEW, False, BACKEND.ep_id)
    assert (f.src_ip, f.dst_ip, f.sport, f.dport) == (FRONTEND.ipv4, BACKEND.ipv4, 40000, 5678)
    assert (f.src_identity, f.dst_identity) == (pr.identity(FRONTEND), pr.identity(BACKEND))


def test_l3_allow_by_identity(pr: ProgRun) -> None:
    pr.apply(policy("""
endpointSelector: {matchLabels: {app: backend}}
ingress:
- fromEndpoints: [{matchLabels: {app: frontend}}]
"""))
    ret, flows = syn_to_backend(pr, FRONTEND, 5678)
    assert ret == TC_ACT_OK
    assert kinds(flows) == [MSG_POLICY_VERDICT, MSG_TRACE]
    assert flows[0].verdict == VERDICT_FORWARDED and flows[0].rule_id != 0 and flows[0].match_type == 1
    for peer in (OTHER, STRANGER):  # other labels; same labels in another namespace
        ret, flows = syn_to_backend(pr, peer, 5678)
        assert ret == TC_ACT_SHOT
        assert kinds(flows) == [MSG_POLICY_VERDICT, MSG_DROP]
        assert flows[1].sub_type == DROP_POLICY_DENIED and flows[1].verdict == VERDICT_DROPPED
        assert flows[1].src_identity == pr.identity(peer)


def test_l4_port_allow(pr: ProgRun) -> None:
    pr.apply(policy("""
endpointSelector: {matchLabels: {app: backend}}
ingress:
- fromEndpoints: [{matchLabels: {app: frontend}}]
  toPorts: [{ports: [{port: "5678", protocol: TCP}, {port: "5353", protocol: UDP}]}]
"""))
    assert syn_to_backend(pr, FRONTEND, 5678)[0] == TC_ACT_OK
    ret, flows = syn_to_backend(pr, FRONTEND, 8080)
    assert ret == TC_ACT_SHOT and flows[-1].sub_type == DROP_POLICY_DENIED
    assert syn_to_backend(pr, OTHER, 5678)[0] == TC_ACT_SHOT
    ret, flows = pr.run(udp_packet(FRONTEND.ipv4, BACKEND.ipv4, 40000, 5353), egress=False)
    assert ret == TC_ACT_OK and flows[0].match_type == 2
    assert pr.run(udp_packet(FRONTEND.ipv4, BACKEND.ipv4, 40000, 5678), egress=False)[0] == TC_ACT_SHOT


def test_deny_wins_over_allow(pr: ProgRun) -> None:
    pr.apply(policy("""
endpointSelector: {matchLabels: {app: backend}}
ingress:
- fromEndpoints: [{matchLabels: {app: frontend}}]
ingressDeny:
- fromEndpoints: [{matchLabels: {app: frontend}}]
  toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
"""))
    assert syn_to_backend(pr, FRONTEND, 5678)[0] == TC_ACT_OK
    ret, flows = syn_to_backend(pr, FRONTEND, 8080)
    assert ret == TC_ACT_SHOT
    assert kinds(flows) == [MSG_POLICY_VERDICT, MSG_DROP]
    assert flows[1].sub_type == DROP_POLICY_DENY and flows[1].rule_id != 0


def test_egress_cidr_with_except(pr: ProgRun) -> None:
    pr.apply(policy("""
endpointSelector: {matchLabels: {app: backend}}
egress:
- toCIDRSet:
  - cidr: 198.51.100.0/24
    except: [198.51.100.128/25]
"""))

    def out(dst: str) -> int:
        return pr.run(tcp_packet(BACKEND.ipv4, dst, 40000, 7000, TCP_SYN), egress=True)[0]

    assert out("198.51.100.10") == TC_ACT_OK
    assert out("198.51.100.200") == TC_ACT_SHOT  # inside the except
    assert out("203.0.113.1") == TC_ACT_SHOT  # outside the CIDR
    assert out(FRONTEND.ipv4) == TC_ACT_SHOT  # cluster peers are not matched by CIDR rules
    ret, flows = pr.run(tcp_packet(BACKEND.ipv4, "198.51.100.200", 40001, 7000, TCP_SYN), egress=True)
    d = flows[-1]
    assert (d.kind, d.egress, d.dst_ip, d.src_identity) == (MSG_DROP, True, "198.51.100.200", pr.identity(BACKEND))


def test_icmp_rules(pr: ProgRun) -> None:
    pr.apply(policy("""
endpointSelector: {matchLabels: {app: backend}}
ingress:
- fromEndpoints: [{matchLabels: {app: frontend}}]
  icmps:
  - fields: [{type: EchoRequest, family: IPv4}]
"""))
    ret, flows = pr.run(icmp_packet(FRONTEND.ipv4, BACKEND.ipv4, 8), egress=False)
    assert ret == TC_ACT_OK and (flows[-1].sport, flows[-1].dport) == (8, 0)  # ICMP: type and code
    assert pr.run(icmp_packet(OTHER.ipv4, BACKEND.ipv4, 8), egress=False)[0] == TC_ACT_SHOT
    assert syn_to_backend(pr, FRONTEND, 5678)[0] == TC_ACT_SHOT
    # the echo reply leaves as the reply of the tracked request: no new connection, nothing new to report
    ret, flows = pr.run(icmp_packet(BACKEND.ipv4, FRONTEND.ipv4, 0), egress=True)
    assert ret == TC_ACT_OK and flows == []
    # ICMP errors pass as related to some connection
    ret, flows = pr.run(icmp_packet(OTHER.ipv4, BACKEND.ipv4, 3, 1), egress=False)
    assert ret == TC_ACT_OK and flows[0].ct_state == CT_RELATED


def test_conntrack_new_established_reply(pr: ProgRun) -> None:
    pr.apply(policy("""
endpointSelector: {matchLabels: {app: backend}}
ingress:
- fromEndpoints: [{matchLabels: {app: frontend}}]
  toPorts: [{ports: [{port: "5678", protocol: TCP}]}]
egress:
- toEndpoints: [{matchLabels: {app: other}}]
"""))
    ret, flows = syn_to_backend(pr, FRONTEND, 5678, sport=41000)
    assert ret == TC_ACT_OK and flows[-1].ct_state == CT_NEW
    # the reply passes although egress to frontend is not allowed: conntrack, no policy lookup
    ret, flows = pr.run(tcp_packet(BACKEND.ipv4, FRONTEND.ipv4, 5678, 41000, TCP_SYN | TCP_ACK), egress=True)
    assert ret == TC_ACT_OK and [(f.kind, f.ct_state) for f in flows] == [(MSG_TRACE, CT_REPLY)]
    ret, flows = pr.run(tcp_packet(FRONTEND.ipv4, BACKEND.ipv4, 41000, 5678, TCP_ACK), egress=False)
    assert ret == TC_ACT_OK and [(f.kind, f.ct_state) for f in flows] == [(MSG_TRACE, CT_ESTABLISHED)]
    # the same flags again: nothing new to report until the trace interval
    ret, flows = pr.run(tcp_packet(FRONTEND.ipv4, BACKEND.ipv4, 41000, 5678, TCP_ACK), egress=False)
    assert ret == TC_ACT_OK and flows == []
    ret, flows = pr.run(tcp_packet(FRONTEND.ipv4, BACKEND.ipv4, 41000, 5678, TCP_ACK | TCP_FIN), egress=False)
    assert ret == TC_ACT_OK and flows[0].ct_state == CT_ESTABLISHED
    # a policy change keeps the established connection; a new one from the same peer is denied
    pr.apply(policy("""
endpointSelector: {matchLabels: {app: backend}}
ingress:
- fromEndpoints: [{matchLabels: {app: other}}]
"""), clear_ct=False)
    assert pr.run(tcp_packet(FRONTEND.ipv4, BACKEND.ipv4, 41000, 5678, TCP_ACK), egress=False)[0] == TC_ACT_OK
    assert syn_to_backend(pr, FRONTEND, 5678, sport=41001)[0] == TC_ACT_SHOT


def test_audit_mode_forwards_what_would_be_dropped(pr: ProgRun) -> None:
    pr.apply(policy("""
endpointSelector: {matchLabels: {app: backend}}
ingress:
- fromEndpoints: [{matchLabels: {app: frontend}}]
"""), audit=True)
    ret, flows = syn_to_backend(pr, OTHER, 5678)
    assert ret == TC_ACT_OK
    assert [(f.kind, f.verdict) for f in flows] == [(MSG_POLICY_VERDICT, VERDICT_AUDIT), (MSG_TRACE, VERDICT_AUDIT)]
    ret, flows = pr.run(tcp_packet(OTHER.ipv4, BACKEND.ipv4, 40000, 5678, TCP_ACK), egress=False)
    assert ret == TC_ACT_OK and flows[0].verdict == VERDICT_AUDIT and flows[0].ct_state == CT_ESTABLISHED
    ret, flows = syn_to_backend(pr, FRONTEND, 5678)
    assert ret == TC_ACT_OK and flows[0].verdict == VERDICT_FORWARDED


def test_forget_purges_the_endpoints_connections(pr: ProgRun) -> None:
    pr.apply()
    assert syn_to_backend(pr, FRONTEND, 5678)[0] == TC_ACT_OK
    assert len(list(pr.dp.ct_map.items())) == 1
    pr.dp.forget(pr.endpoint)
    assert list(pr.dp.ct_map.items()) == []
    # no endpoint on the interface any more: packets pass untouched, nothing tracked or reported
    ret, flows = syn_to_backend(pr, FRONTEND, 5678)
    assert ret == TC_ACT_OK and flows == [] and list(pr.dp.ct_map.items()) == []
