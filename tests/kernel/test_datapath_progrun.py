"""The endpoint TC programs run on crafted packets with BPF_PROG_TEST_RUN: verdict and flow records for
policies compiled by compile_policies(), in seconds and without namespaces. The same cases run with real
traffic in test_network_policy.py."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

from apiary.observe.hubble.raw import (
    CT_ESTABLISHED,
    CT_NEW,
    CT_RELATED,
    CT_REPLY,
    MSG_DROP,
    MSG_POLICY_VERDICT,
    MSG_TRACE,
    OBS_TO_PROXY,
    VERDICT_AUDIT,
    VERDICT_DROPPED,
    VERDICT_FORWARDED,
)
from apiary.policy.types import INGRESS, PROTO_TCP, PROTO_UDP, PolicyEntry, PolicyKey
from apiary.sensors.network import abi
from apiary.sensors.network.sensor import CT_TIMEOUTS_S, kernel_hz
from apiary.testing.progrun import (
    TC_ACT_OK,
    TC_ACT_REDIRECT,
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


def test_l7_ingress_loops_a_client_that_is_not_a_local_endpoint(pr: ProgRun) -> None:
    """A host's (here: a CIDR's) connection to an L7 ingress is looped back to the veth's ingress, where it can
    be handed to the proxy, every packet of it; a local endpoint's that did not come through the proxy is
    dropped (its own veth redirects). The loop's other half (from_container hands the looped packet to the
    proxy) is in test_l7_host_client.py."""
    pr.dp.proxy_port = 15001
    pr.apply(policy("""
endpointSelector: {matchLabels: {app: backend}}
ingress:
- fromCIDR: [192.0.2.0/24]
  toPorts: [{ports: [{port: "8080", protocol: TCP}], rules: {http: [{method: GET}]}}]
- fromEndpoints: [{matchLabels: {app: backend}}]
  toPorts: [{ports: [{port: "8080", protocol: TCP}], rules: {http: [{method: GET}]}}]
"""))
    ret, flows = pr.run(tcp_packet("192.0.2.7", BACKEND.ipv4, 40000, 8080, TCP_SYN), egress=False)
    assert ret == TC_ACT_REDIRECT
    assert kinds(flows) == [MSG_POLICY_VERDICT, MSG_TRACE] and flows[1].sub_type == OBS_TO_PROXY
    assert flows[0].verdict == VERDICT_FORWARDED
    assert pr.run(tcp_packet("192.0.2.7", BACKEND.ipv4, 40000, 8080, TCP_ACK), egress=False)[0] == TC_ACT_REDIRECT
    # the only local endpoint here is the subject (peers are addresses): its own connection to itself
    ret, flows = syn_to_backend(pr, BACKEND, 8080)
    assert ret == TC_ACT_SHOT and flows[-1].sub_type == abi.DROP_PROXY_LOOKUP_FAILED


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
    # the echo reply leaves as the reply of the tracked request (no new connection), traced as the first packet
    # of its direction (it has no TCP flags to be new); a second one within the trace interval is not
    ret, flows = pr.run(icmp_packet(BACKEND.ipv4, FRONTEND.ipv4, 0), egress=True)
    assert ret == TC_ACT_OK and [(f.kind, f.ct_state, f.sport) for f in flows] == [(MSG_TRACE, CT_REPLY, 0)]
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


def test_a_udp_answer_is_traced_once_per_direction(pr: ProgRun) -> None:
    """Cilium traces the first packet of each direction of a connection: the answer to a UDP request (no TCP
    flags to be new) shows as the reply; repeats within the trace interval do not."""
    pr.apply()
    ret, flows = pr.run(udp_packet(FRONTEND.ipv4, BACKEND.ipv4, 42000, 53), egress=False)
    assert ret == TC_ACT_OK and [(f.kind, f.ct_state) for f in flows] == [(MSG_TRACE, CT_NEW)]
    ret, flows = pr.run(udp_packet(FRONTEND.ipv4, BACKEND.ipv4, 42000, 53), egress=False)
    assert ret == TC_ACT_OK and flows == []  # the request's direction was traced already
    ret, flows = pr.run(udp_packet(BACKEND.ipv4, FRONTEND.ipv4, 53, 42000), egress=True)
    assert ret == TC_ACT_OK and [(f.kind, f.ct_state, f.src_ip, f.dport) for f in flows] == [
        (MSG_TRACE, CT_REPLY, BACKEND.ipv4, 42000)]
    ret, flows = pr.run(udp_packet(BACKEND.ipv4, FRONTEND.ipv4, 53, 42000), egress=True)
    assert ret == TC_ACT_OK and flows == []


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


# ---------------------------------------------------------------- the two policy maps (issue 9)
# Entries of one port, one protocol or any protocol are in the hash map `policy`; the blocks of endPort
# ranges in the LPM trie `policy_ranges`. The decision must be what one LPM over every entry would give.

def policy_kinds(pr: ProgRun) -> tuple[int, int, int]:
    """(flags, policy_kinds ingress, policy_kinds egress) of the endpoint under test, as the datapath reads them."""
    raw = pr.dp.endpoints_map.lookup(pr.endpoint.host_ifindex.to_bytes(4, "little"))
    assert raw is not None
    info = abi.EpInfo.from_buffer_copy(raw)
    return info.flags, info.policy_kinds[0], info.policy_kinds[1]


def map_sizes(pr: ProgRun) -> tuple[int, int]:
    return len(pr.dp.policy_map.lookup_batch()), len(pr.dp.ranges_map.lookup_batch())


RANGE_ALLOW = """
endpointSelector: {matchLabels: {app: backend}}
ingress:
- fromEndpoints: [{matchLabels: {app: frontend}}]
  toPorts: [{ports: [{port: "8000", endPort: 8999, protocol: TCP}]}]
"""


def test_port_range_and_exact_port_for_the_same_peer(pr: ProgRun) -> None:
    pr.apply(policy(RANGE_ALLOW + """
ingressDeny:
- fromEndpoints: [{matchLabels: {app: frontend}}]
  toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
"""))
    exact, ranges = map_sizes(pr)
    assert exact == 1 and ranges > 1  # the deny in the hash map, the range's blocks in the trie
    _, kinds, _ = policy_kinds(pr)
    assert kinds == abi.PK_PORT | abi.PK_RANGE
    for port in (8000, 8079, 8081, 8999):
        ret, flows = syn_to_backend(pr, FRONTEND, port)
        assert ret == TC_ACT_OK, port
        assert flows[0].kind == MSG_POLICY_VERDICT and flows[0].match_type == 2
    allow_rule = flows[0].rule_id
    ret, flows = syn_to_backend(pr, FRONTEND, 8080)  # the exact deny is more specific than the range
    assert ret == TC_ACT_SHOT and flows[1].sub_type == DROP_POLICY_DENY
    assert flows[1].rule_id not in (0, allow_rule)
    for port in (7999, 9000):  # outside the range: default deny
        ret, flows = syn_to_backend(pr, FRONTEND, port)
        assert ret == TC_ACT_SHOT and flows[1].sub_type == DROP_POLICY_DENIED, port
    assert syn_to_backend(pr, OTHER, 8500)[0] == TC_ACT_SHOT  # another peer: the range is not its


def test_range_deny_beats_a_more_specific_exact_allow(pr: ProgRun) -> None:
    """Deny precedence inside one identity across the maps: the compiler turns the exact allow covered by the
    range deny into that deny, and the datapath finds it in the hash map."""
    pr.apply(policy("""
endpointSelector: {matchLabels: {app: backend}}
ingress:
- fromEndpoints: [{matchLabels: {app: frontend}}]
  toPorts: [{ports: [{port: "8080", protocol: TCP}, {port: "7000", protocol: TCP}]}]
ingressDeny:
- fromEndpoints: [{matchLabels: {app: frontend}}]
  toPorts: [{ports: [{port: "8000", endPort: 8191, protocol: TCP}]}]
"""))
    ret, flows = syn_to_backend(pr, FRONTEND, 8080)
    assert ret == TC_ACT_SHOT and flows[1].sub_type == DROP_POLICY_DENY
    deny_rule = flows[1].rule_id
    ret, flows = syn_to_backend(pr, FRONTEND, 8100)  # found in the trie
    assert ret == TC_ACT_SHOT and flows[1].sub_type == DROP_POLICY_DENY and flows[1].rule_id == deny_rule
    assert syn_to_backend(pr, FRONTEND, 7000)[0] == TC_ACT_OK


def test_any_identity_range_deny_beats_a_peer_allow(pr: ProgRun) -> None:
    """Deny of any identity (a port range, in the trie) beats the remote identity's allow (hash map), and is
    reported as L4-only; the peer's own L3 allow beats an any-identity exact allow."""
    pr.apply(policy("""
endpointSelector: {matchLabels: {app: backend}}
ingress:
- fromEndpoints: [{matchLabels: {app: frontend}}]
- toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
ingressDeny:
- toPorts: [{ports: [{port: "9000", endPort: 9100, protocol: TCP}]}]
"""))
    flags, kinds, _ = policy_kinds(pr)
    assert flags & abi.EP_ANY_DENY_INGRESS and not flags & abi.EP_ANY_DENY_EGRESS
    assert kinds == abi.PK_ANY | (abi.PK_PORT | abi.PK_RANGE) << abi.PK_ANY_IDENTITY_SHIFT
    ret, flows = syn_to_backend(pr, FRONTEND, 9050)
    assert ret == TC_ACT_SHOT and flows[1].sub_type == DROP_POLICY_DENY and flows[1].match_type == 3
    ret, flows = syn_to_backend(pr, FRONTEND, 8080)  # the peer's L3 allow is its own: more specific
    assert ret == TC_ACT_OK and flows[0].match_type == 1
    ret, flows = syn_to_backend(pr, OTHER, 8080)  # any identity, one port
    assert ret == TC_ACT_OK and flows[0].match_type == 3
    assert syn_to_backend(pr, OTHER, 9050)[0] == TC_ACT_SHOT
    assert syn_to_backend(pr, OTHER, 5678)[0] == TC_ACT_SHOT


def test_policy_swap_moves_both_maps_to_the_new_slot(pr: ProgRun) -> None:
    pr.apply(policy(RANGE_ALLOW))
    slot = abi.EpInfo.from_buffer_copy(
        pr.dp.endpoints_map.lookup(pr.endpoint.host_ifindex.to_bytes(4, "little")) or b"").policy_slot
    assert syn_to_backend(pr, FRONTEND, 8500)[0] == TC_ACT_OK
    assert {abi.policy_key_decode(k)[0] for k, _ in pr.dp.ranges_map.lookup_batch()} == {slot}
    # to a policy without ranges: the trie empties, the datapath stops looking there
    pr.apply(policy("""
endpointSelector: {matchLabels: {app: backend}}
ingress:
- fromEndpoints: [{matchLabels: {app: frontend}}]
  toPorts: [{ports: [{port: "8500", protocol: TCP}]}]
"""))
    _, kinds, _ = policy_kinds(pr)
    assert kinds == abi.PK_PORT and map_sizes(pr) == (1, 0)
    new_slot = abi.policy_key_decode(pr.dp.policy_map.lookup_batch()[0][0])[0]
    assert new_slot == slot ^ 1
    assert syn_to_backend(pr, FRONTEND, 8500)[0] == TC_ACT_OK
    assert syn_to_backend(pr, FRONTEND, 8501)[0] == TC_ACT_SHOT
    # and back to ranges: the hash map's old slot goes, the trie holds the new one
    pr.apply(policy(RANGE_ALLOW))
    exact, ranges = map_sizes(pr)
    assert exact == 0 and ranges > 1
    assert {abi.policy_key_decode(k)[0] for k, _ in pr.dp.ranges_map.lookup_batch()} == {slot}
    assert syn_to_backend(pr, FRONTEND, 8501)[0] == TC_ACT_OK
    # no policy at all: nothing left in either map
    pr.apply()
    assert map_sizes(pr) == (0, 0) and policy_kinds(pr)[1:] == (0, 0)
    assert syn_to_backend(pr, OTHER, 1)[0] == TC_ACT_OK


def _reference(entries: dict[PolicyKey, PolicyEntry], remote: int, proto: int, port: int) -> PolicyEntry | None:
    """The decision of one LPM over every entry (the datapath before the split): the longest prefix of the remote
    identity and of any identity; a deny from either wins, then the remote identity's entry."""
    def best(identity: int) -> PolicyEntry | None:
        found = [(0 if k.proto == 0 else 8 + k.port_prefix, e) for k, e in entries.items()
                 if k.identity == identity and (k.proto == 0 or (
                     k.proto == proto and port >> (16 - k.port_prefix) == k.port >> (16 - k.port_prefix)))]
        return max(found, key=lambda f: f[0])[1] if found else None

    v1, v0 = best(remote), best(0)
    if v1 and v1.deny:
        return v1
    if v0 and (v0.deny or not v1):
        return v0
    return v1


def test_the_split_maps_decide_as_one_lpm_over_every_entry(pr: ProgRun) -> None:
    """Random entries of every kind (ports, aligned port blocks, protocols, any protocol; the peer's identity,
    any identity, another identity; allow and deny, without the compiler's deny precedence) and packets near
    their ports: the verdict and the deciding entry are the ones the reference gives."""
    compiled = pr.apply(policy(RANGE_ALLOW))
    remote, other = pr.identity(FRONTEND), pr.identity(OTHER)
    rng = random.Random(9)
    sport = 20000
    for _ in range(25):
        entries: dict[PolicyKey, PolicyEntry] = {}
        ports = [rng.randrange(1, 65536) for _ in range(4)]
        for rule_id in range(1, rng.randrange(2, 14)):
            proto = rng.choice([0, PROTO_TCP, PROTO_TCP, PROTO_UDP])
            plen = 0 if proto == 0 else rng.choice([0, 16, 16, rng.randrange(1, 16)])
            port = rng.choice(ports) >> (16 - plen) << (16 - plen) if plen else 0
            k = PolicyKey(BACKEND.ep_id, INGRESS, rng.choice([remote, remote, 0, 0, other]), proto, port, plen)
            entries[k] = PolicyEntry(rng.random() < 0.4, rule_id)
        compiled.endpoints[BACKEND.ep_id] = replace(compiled.endpoints[BACKEND.ep_id], ingress_enforced=True,
                                                    entries=entries)
        pr.dp.sync(compiled, {BACKEND.ep_id: pr.endpoint}, {BACKEND.ep_id: pr.identity(BACKEND)})
        for _ in range(12):
            proto = rng.choice([PROTO_TCP, PROTO_UDP])
            port = max(1, min(65535, rng.choice(ports) + rng.choice([0, 0, 1, -1, rng.randrange(-600, 600)])))
            sport += 1
            frame = (tcp_packet(FRONTEND.ipv4, BACKEND.ipv4, sport, port, TCP_SYN) if proto == PROTO_TCP
                     else udp_packet(FRONTEND.ipv4, BACKEND.ipv4, sport, port))
            ret, flows = pr.run(frame, egress=False)
            want = _reference(entries, remote, proto, port)
            case = (entries, proto, port)
            assert flows[0].kind == MSG_POLICY_VERDICT, case
            if want is None or want.deny:
                assert ret == TC_ACT_SHOT, case
                assert flows[1].sub_type == (DROP_POLICY_DENY if want else DROP_POLICY_DENIED), case
            else:
                assert ret == TC_ACT_OK, case
            assert flows[0].rule_id == (want.rule_id if want else 0), case


def test_conntrack_times_are_jiffies_and_flow_times_monotonic_ns(pr: ProgRun) -> None:
    """Conntrack expiry and the periodic trace run on bpf_jiffies64(): what ct_gc and the trace interval read
    must be in that unit; flow records keep CLOCK_MONOTONIC nanoseconds."""
    pr.apply()
    hz = kernel_hz()
    ret, flows = pr.run(udp_packet(FRONTEND.ipv4, BACKEND.ipv4, 40000, 53), egress=False)
    assert ret == TC_ACT_OK and flows[0].ct_state == CT_NEW
    assert abs(flows[0].ktime - time.clock_gettime_ns(time.CLOCK_MONOTONIC)) < 5 * 10**9
    ((key, raw),) = pr.dp.ct_map.items()
    ct = abi.CtValue.from_buffer_copy(raw)
    now = pr.dp.ct_clock()
    assert now - hz <= ct.last_report <= now
    assert ct.expires - ct.last_report == CT_TIMEOUTS_S["ct_timeout_other"] * hz
    assert pr.dp.ct_gc() == 0 and len(list(pr.dp.ct_map.items())) == 1
    # the periodic trace of a busy connection: due once the interval (5 s) has passed since the last one
    again = udp_packet(FRONTEND.ipv4, BACKEND.ipv4, 40000, 53)
    assert pr.run(again, egress=False)[1] == []
    ct = abi.CtValue.from_buffer_copy(pr.dp.ct_map.lookup(key) or b"")
    ct.last_report = pr.dp.ct_clock() - 5 * hz - 2
    pr.dp.ct_map.update(key, bytes(ct))
    ret, flows = pr.run(again, egress=False)
    assert [(f.kind, f.ct_state) for f in flows] == [(MSG_TRACE, CT_ESTABLISHED)]
    assert pr.run(again, egress=False)[1] == []
    # expiry: gone for ct_gc once its clock passes expires, and a packet after that is a new connection
    ct = abi.CtValue.from_buffer_copy(pr.dp.ct_map.lookup(key) or b"")
    assert pr.dp.ct_gc(now=ct.expires) == 0
    ct.expires = pr.dp.ct_clock() - 1
    pr.dp.ct_map.update(key, bytes(ct))
    ret, flows = pr.run(again, egress=False)
    assert flows[0].ct_state == CT_NEW
    ct = abi.CtValue.from_buffer_copy(pr.dp.ct_map.lookup(key) or b"")
    assert pr.dp.ct_gc(now=ct.expires + 1) == 1 and list(pr.dp.ct_map.items()) == []
