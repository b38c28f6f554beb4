"""L7 flows -> OpenTelemetry spans (``span_of``), over flows the agent's own builder makes."""

from __future__ import annotations

from opentelemetry.trace import SpanKind

from apiary.agent.otlp import span_of, traces_url
from apiary.observe.clock import KtimeClock, parse_rfc3339_ns
from apiary.observe.hubble.builder import EndpointInfo, FlowBuilder, dns_response, l7_response
from apiary.observe.hubble.l7 import DnsExchange, HttpExchange
from apiary.testing.flows import StaticDirectory

EPS = {
    11: EndpointInfo(11, "frontend", "shop", ["k8s:app=frontend"], 256, "10.200.0.10"),
    12: EndpointInfo(12, "backend", "shop", ["k8s:app=backend"], 257, "10.200.0.11"),
}
B = FlowBuilder("node", StaticDirectory(EPS), KtimeClock(offset_ns=0))
T0 = 1_700_000_000_123_456_789
RULE = "CiliumNetworkPolicy shop/l7 ingress[0].toPorts[0].rules.http[0]"


def http(allowed: bool = True, status: int = 200, ingress: bool = True) -> HttpExchange:
    return HttpExchange(
        client="10.200.0.11", client_port=40000, server="10.200.0.10", server_port=8080, method="GET",
        url="http://10.200.0.10:8080/api/items?x=1", protocol="HTTP/1.1", headers=(("host", "x"),),
        status=status if allowed else 0, latency_ns=3_000_000, time_ns=T0, allowed=allowed, ingress=ingress,
        decided_by=RULE if allowed else "no HTTP rule matched", client_identity=257, server_identity=256,
    )


def test_a_forwarded_request_is_one_span_from_its_response() -> None:
    x = http()
    assert span_of(l7_response(B, x, False)) is None  # the REQUEST: its RESPONSE makes the span
    s = span_of(l7_response(B, x, True))
    assert s is not None
    assert s.start_ns == T0 and s.end_ns == T0 + 3_000_000  # start = the request, end = + latency
    assert s.name == "GET" and s.kind == SpanKind.SERVER and not s.error
    a = s.attributes
    assert a["http.request.method"] == "GET" and a["http.response.status_code"] == 200
    assert a["url.full"] == "http://10.200.0.10:8080/api/items?x=1" and a["url.path"] == "/api/items"
    assert a["url.query"] == "x=1" and a["network.protocol.version"] == "1.1"
    assert a["apiary.verdict"] == "FORWARDED" and a["apiary.decided_by"] == RULE
    # the request's direction, although the RESPONSE flow's source is the server
    assert a["apiary.source.pod_name"] == "backend" and a["apiary.destination.pod_name"] == "frontend"
    assert a["client.address"] == "10.200.0.11" and a["server.address"] == "10.200.0.10"
    assert a["client.port"] == 40000 and a["server.port"] == 8080 and a["network.transport"] == "tcp"


def test_a_denied_request_is_a_zero_length_error_span_with_the_proxys_403() -> None:
    s = span_of(l7_response(B, http(allowed=False), False))
    assert s is not None and s.start_ns == s.end_ns == T0
    assert s.attributes["http.response.status_code"] == 403 and s.attributes["apiary.verdict"] == "DROPPED"
    assert s.error == "denied by the proxy: no HTTP rule matched"


def test_server_errors_are_errors_client_errors_only_for_clients() -> None:
    s5 = span_of(l7_response(B, http(status=503), True))
    s4 = span_of(l7_response(B, http(status=404), True))
    c4 = span_of(l7_response(B, http(status=404, ingress=False), True))
    assert s5 and s5.error == "HTTP 503" and s4 and not s4.error and c4 and c4.kind == SpanKind.CLIENT
    assert c4.error == "HTTP 404"


def dns(allowed: bool = True, rcode: int = 0) -> DnsExchange:
    x = DnsExchange("10.200.0.11", 5353, "198.18.1.10", 53, "UDP", "allowed.example.test.", ("A",), allowed,
                    "rules.dns[0]" if allowed else "no DNS rule matched", T0, rcode=rcode)
    if allowed:
        x.ips, x.ttl, x.rrtypes, x.latency_ns = ("198.18.1.10",), 60, ("A",), 1_500_000
    return x


def test_a_dns_query_and_its_answer_are_one_span() -> None:
    x = dns()
    assert span_of(dns_response(B, x, False, 257, 2)) is None
    s = span_of(dns_response(B, x, True, 257, 2))
    assert s is not None and s.start_ns == T0 and s.end_ns == T0 + 1_500_000 and s.name == "DNS A"
    a = s.attributes
    assert a["dns.question.name"] == "allowed.example.test" and a["dns.question.type"] == "A"
    assert a["dns.answers"] == ["198.18.1.10"] and a["dns.response_code"] == 0 and a["apiary.dns.ttl"] == 60
    assert a["network.transport"] == "udp" and a["apiary.source.pod_name"] == "backend"
    assert a["apiary.decided_by"] == "rules.dns[0]" and not s.error
    refused = span_of(dns_response(B, dns(allowed=False, rcode=5), False, 257, 2))
    assert refused is not None and refused.error == "denied by the proxy: no DNS rule matched"
    assert refused.attributes["apiary.verdict"] == "DROPPED"


def test_other_flows_make_no_span_and_times_parse() -> None:
    assert span_of({"flow": {"Type": "L3_L4", "verdict": "DROPPED"}}) is None
    assert span_of({"lost_events": {}}) is None
    assert span_of({"flow": {"Type": "L7", "l7": {"type": "RESPONSE", "http": {}}, "time": "garbage"}}) is None
    t = l7_response(B, http(), True)["flow"]["time"]
    assert parse_rfc3339_ns(t) == T0 + 3_000_000


def test_traces_url() -> None:
    assert traces_url("http://127.0.0.1:4318") == "http://127.0.0.1:4318/v1/traces"
    assert traces_url("http://c:4318/v1/logs") == "http://c:4318/v1/traces"
    assert traces_url("http://c:4318/v1/traces/") == "http://c:4318/v1/traces"
