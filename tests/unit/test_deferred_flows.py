"""Flows built on first read (FlowBuilder.defer, L7 HTTP and DNS flows) and metrics counted by kind
(FlowMetrics.observe_msg, observe_l7): the same flows and the same counters as building every flow when it is
read."""

from __future__ import annotations

import dataclasses
import random
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from apiary.agent.bus import EventBus
from apiary.agent.flowdir import FlowDirectory
from apiary.agent.fqdn import DnsJudge
from apiary.agent.network import Network
from apiary.observe.clock import KtimeClock
from apiary.observe.hubble.builder import (
    DeferredFlow,
    EndpointInfo,
    FlowBuilder,
    L7DnsFlow,
    dns_response,
    l7_dns_deferred,
    l7_http_deferred,
)
from apiary.observe.hubble.l7 import DnsExchange, HttpExchange
from apiary.observe.hubble.metrics import FlowMetrics, http_kind, parse_hubble_metrics
from apiary.observe.hubble.raw import (
    CT_ESTABLISHED,
    CT_NEW,
    CT_REPLY,
    CT_UNKNOWN,
    MSG_DROP,
    MSG_POLICY_VERDICT,
    MSG_TRACE,
    VERDICT_AUDIT,
    VERDICT_DROPPED,
    VERDICT_FORWARDED,
    FlowMsg,
)
from apiary.observe.hubble.services import ServiceTable
from apiary.policy.identity import resolve
from apiary.policy.types import CompiledPolicy, RuleRef
from apiary.sensors.network.endpoints import Endpoint
from apiary.services.backends import Backend, BackendState, Frontend
from apiary.testing.flows import StaticDirectory

A, B = "10.200.0.10", "10.200.0.11"


def directory(name_a: str = "frontend") -> StaticDirectory:
    return StaticDirectory(
        eps={11: EndpointInfo(11, name_a, "ns", ["k8s:app=" + name_a], 256, A),
             12: EndpointInfo(12, "backend", "ns", ["k8s:app=backend"], 257, B)},
        labels={2: ["reserved:world"]},
        rules={3: RuleRef("allow", "ns", "CiliumNetworkPolicy", "ingress[0]", 1)},
        ifnames={21: "lxca", 22: "lxcb"},
    )


def message(**kw: Any) -> FlowMsg:
    base: dict[str, Any] = dict(ktime=5_000, kind=MSG_TRACE, sub_type=5, ep_id=11, ifindex=21, egress=True,
                                verdict=VERDICT_FORWARDED, src_ip=A, dst_ip=B, proto=6, sport=40000, dport=8080,
                                tcp_flags=0x12, src_identity=256, dst_identity=257, ct_state=CT_ESTABLISHED,
                                rule_id=0, match_type=0, length=60)
    base.update(kw)
    return FlowMsg(**base)


def builder(d: Any = None) -> FlowBuilder:
    return FlowBuilder("node", d or directory(), KtimeClock(offset_ns=1_700_000_000_000_000_000))


def test_a_forwarded_trace_is_built_when_read_and_as_build_gives_it() -> None:
    b = builder()
    m = message()
    ev = b.defer(m)
    assert isinstance(ev, DeferredFlow) and ev.built is None
    assert ev.materialize() == b.build(m)
    assert ev.materialize() is ev.materialize()  # built once


@pytest.mark.parametrize("kw", [
    {"kind": MSG_DROP, "sub_type": 133, "verdict": VERDICT_DROPPED},
    {"kind": MSG_POLICY_VERDICT, "verdict": VERDICT_FORWARDED, "ct_state": CT_NEW, "rule_id": 3},
    {"kind": MSG_TRACE, "verdict": VERDICT_AUDIT},  # its decided_by may ask the directory for the policies
])
def test_drops_verdicts_and_audits_are_built_at_once(kw: dict[str, Any]) -> None:
    b = builder()
    ev = b.defer(message(**kw))
    assert isinstance(ev, dict)
    assert ev == b.build(message(**kw))


def test_a_deferred_flow_names_the_endpoints_of_the_moment_it_was_read() -> None:
    b = builder()
    ev = b.defer(message())
    b.directory = directory("renamed")  # the agent replaces the directory after a change
    assert isinstance(ev, DeferredFlow)
    assert ev.materialize()["flow"]["source"]["pod_name"] == "frontend"
    later = b.defer(message())
    assert isinstance(later, DeferredFlow)
    assert later.materialize()["flow"]["source"]["pod_name"] == "renamed"


def test_a_deferred_flow_names_the_services_of_the_moment_it_was_read() -> None:
    b = builder()
    b.services = ServiceTable([Frontend("shop/web", "", "10.96.0.7", 80, "TCP", "ClusterIP",
                                        (Backend(B, 8080, "TCP", BackendState.ACTIVE),))])
    ev = b.defer(message())  # A -> B:8080, the web service's backend
    b.services = ServiceTable([])  # the agent replaces the table after a change (the service was deleted)
    assert isinstance(ev, DeferredFlow)
    assert ev.materialize()["flow"]["destination_service"] == {"name": "web", "namespace": "shop"}
    later = b.defer(message())
    assert isinstance(later, DeferredFlow) and "destination_service" not in later.materialize()["flow"]


def dns_exchange(rnd: random.Random) -> DnsExchange:
    """A query through the DNS proxy; its fields drawn each on its own (so that a counter reading one the kinds
    leave out counts wrong)."""
    allowed = rnd.random() < 0.7
    return DnsExchange(
        client=rnd.choice([A, B]), client_port=rnd.randrange(30000, 60000), server=rnd.choice([A, B, "192.0.2.53"]),
        server_port=53, transport=rnd.choice(["UDP", "TCP"]), query="example.test.",
        qtypes=rnd.choice([("A",), ("AAAA",), ("A", "AAAA")]), allowed=allowed, decided_by="", time_ns=1,
        rcode=rnd.choice([0, 2, 3, 5]), ips=rnd.choice([(), ("192.0.2.1",), ("192.0.2.1", "192.0.2.2")]), ttl=30,
        rrtypes=rnd.choice([(), ("A",), ("A", "A"), ("CNAME", "A")]), latency_ns=rnd.randrange(1, 10**6))


def test_a_dns_flow_names_the_endpoints_of_the_moment_the_query_was_seen() -> None:
    b = builder()
    x = dataclasses.replace(dns_exchange(random.Random(1)), client=A, allowed=True)
    flows = l7_dns_deferred(b, x, 256, 2)
    want = [dns_response(b, x, response, 256, 2) for response in (False, True)]
    b.directory = directory("renamed")  # the agent replaces the directory after a change
    assert all(isinstance(f, L7DnsFlow) and f.built is None for f in flows)
    assert [f.materialize() for f in flows] == want
    assert want[0]["flow"]["source"]["pod_name"] == "frontend"
    assert l7_dns_deferred(b, x, 256, 2)[0].materialize()["flow"]["source"]["pod_name"] == "renamed"


def test_the_agent_directory_is_a_snapshot() -> None:
    ep = Endpoint(name="a", namespace="ns", labels={"app": "a"}, ep_id=11, ipv4=A, host_if="lxca", host_ifindex=21,
                  netns="/run/netns/x", cgroup="/sys/fs/cgroup/x")
    compiled = CompiledPolicy(1)
    compiled.ipcache[f"{A}/32"] = 300
    compiled.identities[300] = ("k8s:app=a",)
    d = FlowDirectory(compiled, [ep], {B: ["example.com"]})
    info = d.endpoint_by_ip(A)
    assert info is not None and (info.identity, info.labels, info.name) == (300, ["k8s:app=a"], "a")
    assert d.endpoint(11) is info  # one EndpointInfo per endpoint and directory
    assert d.ifname(21) == "lxca" and d.names_of(B) == ["example.com"] and d.names_of(A) == []
    assert d.rule(0) is None and d.identity_labels(300) == ["k8s:app=a"]


def _samples(reg: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in reg.collect():
        for s in fam.samples:
            if s.name.endswith("_created"):
                continue
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _two_metrics(items: str) -> list[tuple[CollectorRegistry, FlowMetrics]]:
    """Two FlowMetrics of the ``--hubble-metrics`` list, each on its own registry: one fed built flows, one not."""
    enabled = parse_hubble_metrics(items.split(","))
    regs = CollectorRegistry(), CollectorRegistry()
    return [(r, FlowMetrics(r, enabled)) for r in regs]


def _random_message(rnd: random.Random) -> FlowMsg:
    kind = rnd.choice([MSG_TRACE, MSG_TRACE, MSG_TRACE, MSG_DROP, MSG_POLICY_VERDICT])
    verdict = {MSG_DROP: VERDICT_DROPPED}.get(kind) or rnd.choice([VERDICT_FORWARDED, VERDICT_FORWARDED,
                                                                  VERDICT_AUDIT, VERDICT_DROPPED])
    src, dst = rnd.choice([(A, B), (B, A), (A, "192.0.2.7"), ("192.0.2.7", B), ("fd00::1", "fd00::2")])
    return message(
        kind=kind, verdict=verdict, src_ip=src, dst_ip=dst, egress=rnd.random() < 0.5,
        sub_type=rnd.choice([0, 3, 5, 133, 181]) if kind != MSG_POLICY_VERDICT else 0,
        proto=rnd.choice([6, 6, 17, 1, 132]), sport=rnd.randrange(1, 65536), dport=rnd.choice([53, 80, 8080, 40001]),
        tcp_flags=rnd.choice([0x02, 0x12, 0x10, 0x18, 0x11, 0x04, 0x01]),
        src_identity=rnd.choice([0, 1, 2, 256]), dst_identity=rnd.choice([0, 2, 257]),
        ct_state=rnd.choice([CT_UNKNOWN, CT_NEW, CT_ESTABLISHED, CT_REPLY]), rule_id=rnd.choice([0, 0, 3, 9]),
        match_type=rnd.choice([0, 1, 2, 3]),
    )


@pytest.mark.parametrize("metrics", [
    "flow,drop,tcp,port-distribution,policy",
    "flow:sourceContext=pod;destinationContext=namespace,drop,tcp,port-distribution:labelsContext=source_pod,policy",
])
def test_counting_by_message_fields_moves_the_same_counters_as_counting_each_built_flow(metrics: str) -> None:
    (eager_reg, eager), (memo_reg, memo) = _two_metrics(metrics)
    b = builder()
    rnd = random.Random(7)
    fields = [f.name for f in dataclasses.fields(FlowMsg)]
    for i in range(2000):
        # a message, then one that differs from it in one field: a field the counters read but the kept kinds
        # leave out would count the second as the first
        m = _random_message(rnd)
        f = rnd.choice(fields)
        for x in (m, dataclasses.replace(m, **{f: getattr(_random_message(rnd), f)})):
            eager.observe(b.build(x))
            memo.observe_msg(x, b.defer(x))
        if i % 499 == 0:  # read midway: the counts kept so far are added to the children when the registry is read
            assert _samples(memo_reg) == _samples(eager_reg)
    got, want = _samples(memo_reg), _samples(eager_reg)
    assert got == want
    assert sum(v for (name, _), v in want.items() if name == "hubble_flows_processed_total") == 4000


@pytest.mark.parametrize("metrics", [
    "flow,drop,tcp,port-distribution,policy",  # the default: the L7 flows' kinds are kept
    "flow,drop,tcp,port-distribution,policy,dns",  # the dns handler's kinds too
    "flow,drop,dns:ignoreAAAA,http",  # HTTP flows each built (the http handler's latency histogram)
    "flow,drop,httpV2",
    "flow,drop,dns:sourceContext=pod",  # DNS flows each built (the dns handler's context labels)
    "flow:sourceContext=identity;destinationContext=pod,drop,dns:ignoreAAAA;sourceContext=pod",
    "flow,drop:labelsContext=source_pod",
])
def test_counting_l7_exchanges_by_kind_moves_the_same_counters(metrics: str) -> None:
    """HTTP exchanges as the agent's on_http counts them, DNS queries through the agent's on_dns, against
    observing each built flow; meanwhile the directory and the identities change, as after a policy change."""
    (eager_reg, eager), (memo_reg, memo) = _two_metrics(metrics)
    b = builder()
    rnd = random.Random(11)

    def ipcache(client_identity: int) -> dict[str, int]:
        return {f"{A}/32": client_identity, f"{B}/32": 257, "192.0.2.0/24": 300}

    agent = SimpleNamespace(builder=b, metrics=memo, flows=EventBus(16, 4))
    for i in range(1200):
        if i % 400 == 0:  # what a policy or endpoint change replaces
            b.directory = directory(f"frontend{i}")
            ips = ipcache(256 + i)
            agent.compiled, agent.dns_judge = SimpleNamespace(ipcache=ips), DnsJudge({}, {}, ips, [])
        if rnd.random() < 0.5:
            allowed = rnd.random() < 0.7
            x = HttpExchange(
                client=rnd.choice([A, B]), client_port=rnd.randrange(30000, 60000),
                server=rnd.choice([A, B, "192.0.2.7"]), server_port=rnd.choice([80, 8080]),
                method=rnd.choice(["GET", "POST", "PATCH"]), url="http://x/y", protocol="HTTP/1.1", headers=(),
                status=rnd.choice([200, 404, 503]) if allowed else 403, latency_ns=rnd.randrange(1, 10**7), time_ns=1,
                allowed=allowed, ingress=rnd.random() < 0.5, decided_by="", client_identity=rnd.choice([0, 256]),
                server_identity=rnd.choice([0, 2, 257]))
            for ev in l7_http_deferred(b, x):
                eager.observe(ev.materialize())
            evs = l7_http_deferred(b, x)
            if rnd.random() < 0.5:  # as Network.on_http: a batch's flows of one kind at once
                memo.observe_l7_many(http_kind(x.allowed), evs)
            else:
                for ev in evs:
                    memo.observe_l7(http_kind(x.allowed), ev)
        else:
            d = dns_exchange(rnd)
            for response in (False, True) if d.allowed else (False,):
                eager.observe(dns_response(b, d, response, ips.get(f"{d.client}/32", 0), resolve(ips, d.server)))
            Network.on_dns(agent, d)  # type: ignore[arg-type]
    assert _samples(memo_reg) == _samples(eager_reg)
    flows = sum(v for (name, _), v in _samples(eager_reg).items() if name == "hubble_flows_processed_total")
    assert flows > 1500


class _Counted:
    """A deferred event that counts its builds."""

    builds = 0

    def __init__(self, n: int) -> None:
        self.n, self.built = n, None

    def materialize(self) -> dict[str, Any]:
        if self.built is None:
            _Counted.builds += 1
            self.built = {"n": self.n}
        return self.built


def test_the_last_matching_flows_are_built_newest_first_only_as_far_as_needed() -> None:
    bus = EventBus(100, 4)
    for i in range(100):
        bus.publish(_Counted(i))  # type: ignore[arg-type]
    _Counted.builds = 0
    assert bus.last_matching(lambda ev: ev["n"] % 2 == 0, 3) == [{"n": 94}, {"n": 96}, {"n": 98}]
    assert _Counted.builds == 6  # 99 down to 94: not the 94 older ones
    assert bus.last_matching(lambda ev: True, 0) == []
    assert [ev["n"] for ev in bus.last_matching(lambda ev: ev["n"] < 2, 10)] == [0, 1]  # fewer than asked
    fresh = EventBus(100, 4)
    for i in range(100):
        fresh.publish(_Counted(i))  # type: ignore[arg-type]
    _Counted.builds = 0
    assert fresh.first_matching(lambda ev: ev["n"] % 3 == 1, 2) == [{"n": 1}, {"n": 4}]
    assert _Counted.builds == 5  # 0 up to 4
    assert len(fresh.first_matching(lambda ev: ev["n"] >= 90)) == 10  # 0: all of them


def test_a_deleted_pods_series_go_a_minute_later_as_hubbles() -> None:
    reg, m = _two_metrics("flow:sourceContext=pod;destinationContext=namespace,drop,tcp:labelsContext=source_pod")[0]
    b = builder()
    for src in (A, B):
        m.observe(b.build(message(src_ip=src, dst_ip=B if src == A else A)))

    def pods() -> set[str]:
        return {s.labels.get("source") or s.labels.get("source_pod", "") for f in reg.collect() for s in f.samples
                if s.name in ("hubble_flows_processed_total", "hubble_tcp_flags_total")}

    assert pods() == {"ns/frontend", "ns/backend", "frontend", "backend"}
    m.forget_pod("ns", "frontend", now=100.0)
    assert m.sweep(159.0) == 0 and "ns/frontend" in pods()
    assert m.sweep(160.0) == 2 and pods() == {"ns/backend", "backend"}
    m.observe(b.build(message()))  # a pod of that name again: its series come back
    assert "ns/frontend" in pods()


def test_counts_kept_for_the_registry_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from apiary.observe.hubble import metrics as hm

    monkeypatch.setattr(hm, "_MEMO_MAX", 8)
    (eager_reg, eager), (memo_reg, memo) = _two_metrics("flow,port-distribution")
    b = builder()
    for port in range(1, 60):  # a port scan: a kind per port
        x = message(dport=port)
        eager.observe(b.build(x))
        memo.observe_msg(x, b.defer(x))
        assert len(memo._memo) <= 8
    assert _samples(memo_reg) == _samples(eager_reg)
    assert memo_reg.get_sample_value("hubble_port_distribution_total", {"protocol": "TCP", "port": "59"}) == 1
