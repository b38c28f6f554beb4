"""OTLP trace export with a real agent: HTTP requests from one endpoint to another through the agent's L7 proxy
(a real HAProxy the datapath redirects to) become spans, sent by the official SDK's OTLP/HTTP span exporter to a
receiver of this test's own on loopback, which decodes the ExportTraceServiceRequest protobuf."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from apiary.sensors.l7proxy.haproxy import haproxy_binary
from apiary.testing.agent import AgentProcess, is_root
from apiary.testing.net import Net

pytestmark = [
    pytest.mark.skipif(not is_root(), reason="needs root"),
    pytest.mark.skipif(haproxy_binary() is None, reason="haproxy not installed (scripts/setup.sh installs it)"),
]

NS = "traces"
POLICY = f"""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: l7-traces, namespace: {NS}}}
spec:
  endpointSelector: {{matchLabels: {{app: server}}}}
  ingress:
  - fromEndpoints: [{{matchLabels: {{app: client}}}}]
    toPorts:
    - ports: [{{port: "8080", protocol: TCP}}]
      rules: {{http: [{{method: GET, path: /allowed}}]}}
"""


class Collector(BaseHTTPRequestHandler):
    """OTLP/HTTP on loopback: keeps the spans of /v1/traces (with their resource), accepts /v1/logs."""

    spans: list[tuple[Any, Any]] = []
    paths: set[str] = set()

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).paths.add(self.path)
        if self.path == "/v1/traces":
            for rs in ExportTraceServiceRequest.FromString(body).resource_spans:
                for ss in rs.scope_spans:
                    type(self).spans += [(rs.resource, sp) for sp in ss.spans]
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *a: Any) -> None:
        pass


def attrs(kvs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in kvs:
        kind = kv.value.WhichOneof("value")
        v = getattr(kv.value, kind)
        out[kv.key] = [getattr(x, x.WhichOneof("value")) for x in v.values] if kind == "array_value" else v
    return out


@pytest.fixture(scope="module")
def env() -> Iterator[dict[str, Any]]:
    Collector.spans, Collector.paths = [], set()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    agent = AgentProcess("--export-otlp-endpoint", url, "--export-otlp-traces")
    n = Net(agent)
    try:
        agent.start()
        client = n.endpoint("client", NS, app="client")
        server = n.endpoint("server", NS, app="server")
        n.serve(f"{NS}/server", "serve-http11", "8080")
        n.apply_ok(POLICY)
        yield {"net": n, "agent": agent, "url": url, "client": client, "server": server}
    finally:
        n.close()
        agent.cleanup()
        srv.shutdown()
        srv.server_close()


def span(path: str) -> tuple[Any, Any, dict[str, Any]] | None:
    for res, sp in list(Collector.spans):
        a = attrs(sp.attributes)
        if a.get("url.path") == path:
            return res, sp, a
    return None


def test_http_requests_through_the_proxy_are_spans(env: dict[str, Any]) -> None:
    n: Net = env["net"]
    server_ip = env["server"]["ipv4"]
    reqs = [["GET", "/allowed", {}, ""], ["GET", "/denied", {}, ""]]
    p = subprocess.run(n._exec(f"{NS}/client", "requests", server_ip, "8080", json.dumps(reqs)), capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert [s for s, _ in json.loads(p.stdout.strip().splitlines()[-1])["responses"]] == [200, 403]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (span("/allowed") and span("/denied")):
        time.sleep(0.2)
    got, denied = span("/allowed"), span("/denied")
    assert got and denied, [attrs(s.attributes) for _, s in Collector.spans]
    res, sp, a = got
    assert sp.name == "GET" and sp.kind == sp.SPAN_KIND_SERVER and len(sp.trace_id) == 16 and len(sp.span_id) == 8
    assert 0 < sp.start_time_unix_nano < sp.end_time_unix_nano  # end = start + the proxy's measured latency
    assert a["http.request.method"] == "GET" and a["http.response.status_code"] == 200
    assert a["url.full"] == f"http://{server_ip}:8080/allowed" and a["network.protocol.version"] == "1.1"
    assert a["apiary.verdict"] == "FORWARDED"
    assert a["apiary.source.pod_name"] == "client" and a["apiary.destination.pod_name"] == "server"
    assert a["apiary.source.namespace"] == NS and a["client.address"] == env["client"]["ipv4"]
    assert "CiliumNetworkPolicy traces/l7-traces ingress[0].toPorts[0].rules.http[0]" in a["apiary.decided_by"]
    assert sp.status.code == sp.status.STATUS_CODE_UNSET
    r = attrs(res.attributes)
    assert r["service.name"] == "apiary" and r["host.name"] == "testnode"
    _, dsp, d = denied
    assert d["apiary.verdict"] == "DROPPED" and d["http.response.status_code"] == 403
    assert dsp.status.code == dsp.status.STATUS_CODE_ERROR and "no HTTP rule matched" in dsp.status.message
    assert dsp.start_time_unix_nano == dsp.end_time_unix_nano
    st = env["agent"].client().get("/v1/status")["export"]["otlp_traces"]
    assert st["endpoint"] == env["url"] + "/v1/traces" and st["exported"] >= 2 and st["failed"] == 0
    metrics = env["agent"].client().http.get("/metrics").text
    exported = 'apiary_export_otlp_spans_total{outcome="exported"}'
    line = next(ln for ln in metrics.splitlines() if ln.startswith(exported))
    assert float(line.split()[-1]) >= 2
    text = env["agent"].cli("status").stdout
    assert f"otlp spans -> {env['url']}/v1/traces:" in text, text
    assert "/v1/logs" in Collector.paths  # the log records still go to the same collector
