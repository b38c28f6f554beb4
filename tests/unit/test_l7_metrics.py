"""Hubble's L7 metrics (``http``, ``httpV2``, ``dns`` of --hubble-metrics) over L7 flows, checked by promtool."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from apiary.observe.clock import KtimeClock
from apiary.observe.hubble.builder import EndpointInfo, FlowBuilder, l7_response
from apiary.observe.hubble.l7 import HttpExchange
from apiary.observe.hubble.metrics import FlowMetrics, dns_kind, parse_hubble_metrics
from apiary.testing.flows import StaticDirectory

EPS = {
    11: EndpointInfo(11, "frontend", "shop", ["k8s:app=frontend"], 256, "10.200.0.10"),
    12: EndpointInfo(12, "backend", "shop", ["k8s:app=backend"], 257, "10.200.0.11"),
}
B = FlowBuilder("node", StaticDirectory(EPS), KtimeClock(offset_ns=0))


def exchange(method: str = "GET", status: int = 200, allowed: bool = True, ingress: bool = True) -> HttpExchange:
    # backend (client) -> frontend:8080 (server), through the proxy
    return HttpExchange(
        client="10.200.0.11", client_port=40000, server="10.200.0.10", server_port=8080, method=method,
        url="http://10.200.0.10:8080/api/v1/items", protocol="HTTP/1.1", headers=(("host", "x"),),
        status=status if allowed else 0, latency_ns=3_000_000, time_ns=1, allowed=allowed, ingress=ingress,
        decided_by="", client_identity=257, server_identity=256,
    )


def feed(m: FlowMetrics, x: HttpExchange) -> None:
    for response in (False, True) if x.allowed else (False,):
        m.observe(l7_response(B, x, response))


def metrics(items: str) -> tuple[CollectorRegistry, FlowMetrics]:
    reg = CollectorRegistry()
    return reg, FlowMetrics(reg, parse_hubble_metrics([items]))


def test_http_metrics_count_requests_responses_and_latency() -> None:
    reg, m = metrics("http flow")
    feed(m, exchange())
    feed(m, exchange())
    feed(m, exchange("DELETE", allowed=False))  # the proxy's 403: a DROPPED request, no response flow
    feed(m, exchange("POST", 201, ingress=False))
    v = reg.get_sample_value
    assert v("hubble_http_requests_total", {"method": "GET", "protocol": "HTTP/1.1", "reporter": "server"}) == 2
    assert v("hubble_http_requests_total", {"method": "DELETE", "protocol": "HTTP/1.1", "reporter": "server"}) == 1
    assert v("hubble_http_requests_total", {"method": "POST", "protocol": "HTTP/1.1", "reporter": "client"}) == 1
    resp = {"method": "GET", "protocol": "HTTP/1.1", "status": "200", "reporter": "server"}
    assert v("hubble_http_responses_total", resp) == 2
    assert v("hubble_http_responses_total", {**resp, "method": "DELETE", "status": "0"}) is None
    get = {"method": "GET", "reporter": "server"}
    assert v("hubble_http_request_duration_seconds_count", get) == 2
    assert v("hubble_http_request_duration_seconds_sum", get) == pytest.approx(0.006)
    assert v("hubble_http_request_duration_seconds_bucket", {**get, "le": "0.005"}) == 2
    assert v("hubble_http_request_duration_seconds_bucket", {**get, "le": "0.0025"}) is None  # Hubble's buckets
    assert v("hubble_http_request_duration_seconds_bucket", {**get, "le": "0.001"}) is None
    flows = {"protocol": "HTTP", "type": "L7", "subtype": "HTTP"}
    assert v("hubble_flows_processed_total", {**flows, "verdict": "FORWARDED"}) == 6
    assert v("hubble_flows_processed_total", {**flows, "verdict": "DROPPED"}) == 1


def test_http_v2_counts_responses_with_the_client_as_source() -> None:
    reg, m = metrics("httpV2:sourceContext=pod;destinationContext=pod")
    feed(m, exchange())
    feed(m, exchange("DELETE", allowed=False))
    text = generate_latest(reg).decode()
    assert "hubble_http_responses_total" not in text
    got = reg.get_sample_value(
        "hubble_http_requests_total",
        {"source": "shop/backend", "destination": "shop/frontend", "method": "GET", "protocol": "HTTP/1.1",
         "status": "200", "reporter": "server"},
    )
    assert got == 1
    assert 'method="DELETE"' not in text  # v2 counts responses only


def dns_flow(reply: bool, verdict: str = "FORWARDED", qtypes: list[str] | None = None, **dns: Any) -> dict[str, Any]:
    flow = {
        "verdict": verdict, "Type": "L7", "event_type": {"type": 129}, "is_reply": reply,
        "l7": {
            "type": "RESPONSE" if reply else "REQUEST",
            "dns": {"query": "example.test.", "qtypes": qtypes or ["A"], **dns},
        },
    }
    return {"flow": flow}


def test_dns_metrics() -> None:
    reg, m = metrics("dns:ignoreAAAA")
    m.observe(dns_flow(False))
    m.observe(dns_flow(False, "DROPPED"))
    m.observe(dns_flow(True, ips=["192.0.2.1", "192.0.2.2"], rcode=0, rrtypes=["A", "A"]))
    m.observe(dns_flow(True, rcode=3))
    m.observe(dns_flow(False, qtypes=["AAAA"]))  # ignored
    v = reg.get_sample_value
    assert v("hubble_dns_queries_total", {"rcode": "", "qtypes": "A", "ips_returned": "0"}) == 1
    assert v("hubble_dns_queries_total", {"rcode": "Policy denied", "qtypes": "A", "ips_returned": "0"}) == 1
    assert v("hubble_dns_responses_total", {"rcode": "No Error", "qtypes": "A", "ips_returned": "2"}) == 1
    assert v("hubble_dns_responses_total", {"rcode": "Non-Existent Domain", "qtypes": "A", "ips_returned": "0"}) == 1
    assert v("hubble_dns_response_types_total", {"type": "A", "qtypes": "A"}) == 2
    assert "AAAA" not in generate_latest(reg).decode()


@pytest.mark.skipif(shutil.which("promtool") is None, reason="prometheus not installed (scripts/setup.sh)")
def test_l7_exposition_passes_promtool() -> None:
    for items in ("http dns", "httpV2:labelsContext=source_namespace,traffic_direction"):
        reg, m = metrics(items)
        feed(m, exchange())
        feed(m, exchange("DELETE", allowed=False))
        m.observe(dns_flow(True, ips=["192.0.2.1"], rcode=0, rrtypes=["A"]))
        text = generate_latest(reg).decode()
        assert "hubble_http_request_duration_seconds_bucket" in text
        r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, (items, r.stdout, r.stderr)


def test_dns_flows_built_on_read_are_dns_responses_and_counted_alike() -> None:
    """The DNS proxy's flows (built when read) are dns_response's, and observe_l7 counts them with the context
    labels as observing each does."""
    from apiary.observe.hubble.builder import dns_response, l7_dns_deferred
    from apiary.observe.hubble.l7 import DnsExchange

    def dns_x(allowed: bool) -> DnsExchange:
        return DnsExchange("10.200.0.11", 40000, "10.200.0.10", 53, "UDP", "example.test.", ("A",), allowed, "r",
                           1, rcode=0 if allowed else 5, ips=("192.0.2.1",) if allowed else (), ttl=30,
                           rrtypes=("A",) if allowed else (), latency_ns=5)

    items = "flow drop dns:sourceContext=pod;destinationContext=identity"
    (reg_a, each), (reg_b, by_kind) = metrics(items), metrics(items)
    for allowed in (True, False):
        x = dns_x(allowed)
        want = [dns_response(B, x, r, 257, 256) for r in ((False, True) if allowed else (False,))]
        assert [f.materialize() for f in l7_dns_deferred(B, x, 257, 256)] == want
        for _ in range(3):
            for f in want:
                each.observe(f)
            for ev in l7_dns_deferred(B, x, 257, 256):
                by_kind.observe_l7(dns_kind(x, ev.response), ev)

    def samples(reg: CollectorRegistry) -> list[str]:
        return [line for line in generate_latest(reg).decode().splitlines() if "_created" not in line]

    assert samples(reg_a) == samples(reg_b) and len(samples(reg_a)) > 10
    assert reg_b.get_sample_value("hubble_dns_queries_total", {"source": "shop/backend", "destination": "256",
                                                               "rcode": "Policy denied", "qtypes": "A",
                                                               "ips_returned": "0"}) == 3
