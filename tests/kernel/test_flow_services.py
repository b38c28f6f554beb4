"""Flows show the service, from real datapath records: the endpoint TC programs run on crafted packets
(BPF_PROG_TEST_RUN), their ring records are decoded as the agent decodes them, and FlowBuilder with a
ServiceTable of real service frontends (apiary.services) fills source_service / destination_service; the
--service filters select them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from apiary.observe.clock import KtimeClock
from apiary.observe.hubble.builder import EndpointInfo, FlowBuilder
from apiary.observe.hubble.filters import FlowFilter
from apiary.observe.hubble.printers import compact
from apiary.observe.hubble.services import ServiceTable
from apiary.services.backends import Backend, BackendState, Frontend
from apiary.testing.flows import StaticDirectory
from apiary.testing.progrun import TC_ACT_OK, TCP_ACK, TCP_SYN, Peer, ProgRun, tcp_packet, udp_packet

pytestmark = pytest.mark.kernel
NS = "test-namespace"
BACKEND = Peer("backend", NS, {"app": "backend"}, "10.200.0.3", 3)
FRONTEND = Peer("frontend", NS, {"app": "frontend"}, "10.200.0.2", 2)
VIP = "10.96.0.10"


@pytest.fixture
def pr() -> Iterator[ProgRun]:
    with ProgRun(BACKEND, [FRONTEND]) as r:
        yield r


def test_flows_from_the_datapath_carry_the_service(pr: ProgRun) -> None:
    pr.apply()
    be = Backend(BACKEND.ipv4, 5678, "TCP", BackendState.ACTIVE)
    table = ServiceTable([Frontend(f"{NS}/backend-svc", "http", VIP, 80, "TCP", "ClusterIP", (be,))])
    eps = {
        p.ep_id: EndpointInfo(p.ep_id, p.name, p.namespace, [f"k8s:app={p.labels['app']}"], pr.identity(p), p.ipv4)
        for p in (BACKEND, FRONTEND)
    }
    b = FlowBuilder("node", StaticDirectory(eps), KtimeClock(), services=table)

    # the request reaches the backend's address (socket LB rewrote the VIP at connect)
    ret, req_msgs = pr.run(tcp_packet(FRONTEND.ipv4, BACKEND.ipv4, 40000, 5678, TCP_SYN), egress=False)
    assert ret == TC_ACT_OK and req_msgs
    req = [b.build(m) for m in req_msgs]
    assert all(r["flow"]["destination_service"] == {"name": "backend-svc", "namespace": NS} for r in req)
    assert all("source_service" not in r["flow"] for r in req)
    # the backend's reply
    ret, msgs = pr.run(tcp_packet(BACKEND.ipv4, FRONTEND.ipv4, 5678, 40000, TCP_SYN | TCP_ACK), egress=True)
    assert ret == TC_ACT_OK and msgs
    rep = [b.build(m) for m in msgs]
    assert all(r["flow"]["source_service"] == {"name": "backend-svc", "namespace": NS} for r in rep)
    # another port of the backend is no service
    ret, msgs = pr.run(udp_packet(FRONTEND.ipv4, BACKEND.ipv4, 40001, 5678), egress=False)
    other = [b.build(m) for m in msgs]
    assert other and all("destination_service" not in r["flow"] for r in other)

    everything = req + rep + other
    assert [r for r in everything if FlowFilter.from_args([("--to-service", f"{NS}/backend")]).matches(r)] == req
    assert [r for r in everything if FlowFilter.from_args([("--service", f"{NS}/backend-svc")]).matches(r)] == (
        req + rep
    )
    assert f"-> {NS}/backend:5678" in compact(req[0])  # the pod name wins in the compact line, as in hubble

    # without a look-up the fields stay absent (the agent before any service exists)
    b.services = None
    assert "destination_service" not in b.build(req_msgs[0])["flow"]
