"""OpenTelemetry log export of events and flows (the official SDK: a LoggerProvider, its batch processor and
the OTLP/HTTP protobuf exporter), as an optional export sink (``--export-otlp-endpoint``), and trace export
of the L7 flows (``--export-otlp-traces``: a TracerProvider, its batch processor and the OTLP/HTTP span
exporter, to the same collector).

Each event or flow becomes one log record: the body is the event's JSON object (an OTLP ``kvlist``), the
time is the event's, ``event_name`` its type (``process_exec``, ``flow`` ...), and a few attributes say what
it is about (``apiary.stream``, ``node_name``, ``process.binary``, ``process.pid``, ``verdict`` ...). What
the collector accepted and refused is counted (a counting wrapper around the exporter); records neither
accepted nor refused when the sink closes were dropped by the SDK's queue and are counted as such.

Each proxied HTTP request and each DNS query becomes one span (:func:`span_of`): from its RESPONSE flow
(whose time is the request's plus ``latency_ns``: start = the request, end = start + latency), or from its
REQUEST flow when the proxy denied it (no response follows: a zero-length span, status ERROR). Attributes
follow OpenTelemetry's HTTP and DNS semantic conventions, plus apiary's verdict, pods and deciding rule.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, Status, StatusCode

from apiary import __version__
from apiary.observe.clock import parse_rfc3339_ns
from apiary.observe.tetragon.events import event_kind


def logs_url(endpoint: str) -> str:
    """``http://host:4318`` -> ``http://host:4318/v1/logs`` (a URL that already names the path is kept)."""
    return _signal_url(endpoint, "logs")


def traces_url(endpoint: str) -> str:
    """``http://host:4318`` -> ``http://host:4318/v1/traces`` (the collector's base URL, or its logs URL)."""
    return _signal_url(endpoint, "traces")


def _signal_url(endpoint: str, signal: str) -> str:
    e = endpoint.rstrip("/").removesuffix("/v1/logs").removesuffix("/v1/traces")
    return f"{e}/v1/{signal}"


class _Tally:
    """What the collector accepted and refused (records or spans), for status and metrics."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.exported = 0
        self.failed = 0
        self.last_error = ""

    def count(self, n: int, ok: bool, error: str) -> None:
        with self.lock:
            if ok:
                self.exported += n
            else:
                self.failed += n
                self.last_error = error or self.last_error or "the collector refused or could not be reached"


class _Counting(LogRecordExporter):
    def __init__(self, inner: LogRecordExporter) -> None:
        self.inner = inner
        self.tally = _Tally()

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        error = ""
        try:
            r = self.inner.export(batch)
        except Exception as e:  # noqa: BLE001 - counted; the SDK would only log it
            r, error = LogRecordExportResult.FAILURE, f"{type(e).__name__}: {e}"
        self.tally.count(len(batch), r == LogRecordExportResult.SUCCESS, error)
        return r

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return bool(self.inner.force_flush(timeout_millis))


class _CountingSpans(SpanExporter):
    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self.tally = _Tally()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        error = ""
        try:
            r = self.inner.export(spans)
        except Exception as e:  # noqa: BLE001 - counted; the SDK would only log it
            r, error = SpanExportResult.FAILURE, f"{type(e).__name__}: {e}"
        self.tally.count(len(spans), r == SpanExportResult.SUCCESS, error)
        return r

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return bool(self.inner.force_flush(timeout_millis))


def _resource(node: str) -> Resource:
    return Resource.create({"service.name": "apiary", "service.version": __version__, "host.name": node})


class _Provider(Protocol):
    def force_flush(self, timeout_millis: int = 30000) -> bool: ...

    def shutdown(self) -> None: ...


class _Sink:
    """What the log and the span sink share: their counts, status and close."""

    def __init__(self, url: str, tally: _Tally, provider: _Provider) -> None:
        self.url = url
        self.tally = tally
        self.provider = provider
        self.emitted = 0
        self.refused = 0  # records the SDK would not take (counted as lost)
        self.dropped = 0  # neither accepted nor refused when the sink closed (the SDK's queue was full)
        self.closed = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.provider.force_flush(10_000)  # what is queued, while the collector answers within the timeouts
        self.provider.shutdown()
        with self.tally.lock:
            self.dropped = max(0, self.emitted - self.tally.exported - self.tally.failed)

    def status(self) -> dict[str, Any]:
        t = self.tally
        with t.lock:
            exported, failed, last_error = t.exported, t.failed, t.last_error
        return {
            "endpoint": self.url,
            "emitted": self.emitted,
            "exported": exported,
            "failed": failed,
            "in_flight": max(0, self.emitted - exported - failed - self.dropped),  # emitted: what the SDK took
            "dropped": self.dropped + self.refused,
            "last_error": last_error,
        }


def _attributes(stream: str, kind: str, ev: dict[str, Any]) -> dict[str, Any]:
    attrs: dict[str, Any] = {"apiary.stream": stream, "apiary.event_type": kind}
    if isinstance(ev.get("node_name"), str):
        attrs["node_name"] = ev["node_name"]
    body = ev.get(kind)
    if not isinstance(body, dict):
        return attrs
    if stream == "flows":
        for k in ("verdict", "drop_reason_desc", "traffic_direction"):
            if isinstance(body.get(k), str):
                attrs[k] = body[k]
        for side in ("source", "destination"):
            ep = body.get(side) or {}
            for k in ("namespace", "pod_name", "identity"):
                if k in ep:
                    attrs[f"{side}.{k}"] = ep[k]
            ip = (body.get("IP") or {}).get(side)
            if ip:
                attrs[f"{side}.ip"] = ip
        return attrs
    proc = body.get("process") or {}
    for k in ("binary", "pid", "exec_id", "arguments"):
        if k in proc:
            attrs[f"process.{k}"] = proc[k]
    pod = proc.get("pod") or {}
    for k in ("namespace", "name"):
        if k in pod:
            attrs[f"pod.{k}"] = pod[k]
    if isinstance(body.get("policy_name"), str):
        attrs["policy_name"] = body["policy_name"]
    return attrs


class OtlpSink(_Sink):
    def __init__(self, endpoint: str, node: str, queue_size: int = 65536) -> None:
        url = logs_url(endpoint)
        self.counting = _Counting(OTLPLogExporter(endpoint=url, timeout=5))
        provider = LoggerProvider(resource=_resource(node))
        super().__init__(url, self.counting.tally, provider)
        self.processor = BatchLogRecordProcessor(self.counting, max_queue_size=queue_size, schedule_delay_millis=500)
        provider.add_log_record_processor(self.processor)
        self.logger = provider.get_logger("apiary.export", __version__)

    def emit(self, stream: str, evs: list[dict[str, Any]]) -> None:
        for ev in evs:
            kind = event_kind(ev) or "unknown"
            t = ev.get("time")
            try:
                ts = parse_rfc3339_ns(t) if isinstance(t, str) else None
            except ValueError:
                ts = None
            try:
                self.logger.emit(timestamp=ts, body=ev, attributes=_attributes(stream, kind, ev), event_name=kind)
            except Exception:  # noqa: BLE001 - a record the SDK refuses is counted, never fatal
                self.refused += 1
                continue
            self.emitted += 1


@dataclass
class SpanSpec:
    """One span to start and end (pure: built from a flow by :func:`span_of`)."""

    name: str
    kind: SpanKind
    start_ns: int
    end_ns: int
    attributes: dict[str, Any] = field(default_factory=dict)
    error: str = ""  # non-empty: status ERROR with this description


def _str(v: Any) -> str:
    return v if isinstance(v, str) else ""


def span_of(resp: dict[str, Any]) -> SpanSpec | None:
    """The span of one Hubble L7 flow (``GetFlowsResponse``): its RESPONSE, or a REQUEST the proxy denied.
    None for any other flow (a forwarded REQUEST: its RESPONSE makes the span)."""
    flow = resp.get("flow")
    if not isinstance(flow, dict) or flow.get("Type") != "L7" or not isinstance(flow.get("l7"), dict):
        return None
    l7 = flow["l7"]
    response = l7.get("type") == "RESPONSE"
    denied = flow.get("verdict") == "DROPPED"
    if not response and not (l7.get("type") == "REQUEST" and denied):
        return None
    try:
        t = parse_rfc3339_ns(_str(flow.get("time")))
        latency = int(l7.get("latency_ns") or 0) if response else 0
    except ValueError:
        return None
    # the request's direction: on a RESPONSE flow the source is the server
    client, server = (flow.get("destination"), flow.get("source")) if response else (flow.get("source"),
                                                                                      flow.get("destination"))
    ips = flow.get("IP") or {}
    cip, sip = (ips.get("destination"), ips.get("source")) if response else (ips.get("source"), ips.get("destination"))
    l4: tuple[str, Any] = next(iter((flow.get("l4") or {}).items()), ("", {}))
    ports = l4[1] if isinstance(l4[1], dict) else {}
    cport, sport = ((ports.get("destination_port"), ports.get("source_port")) if response
                    else (ports.get("source_port"), ports.get("destination_port")))
    attrs: dict[str, Any] = {"apiary.verdict": _str(flow.get("verdict")), "network.transport": l4[0].lower()}
    for k, v in (("client.address", cip), ("client.port", cport), ("server.address", sip), ("server.port", sport)):
        if v:
            attrs[k] = v
    for side, ep in (("source", client), ("destination", server)):
        if isinstance(ep, dict):
            for k in ("namespace", "pod_name", "identity"):
                if ep.get(k):
                    attrs[f"apiary.{side}.{k}"] = ep[k]
    decided = ((flow.get("extensions") or {}).get("apiary") or {}).get("decided_by")
    if decided:
        attrs["apiary.decided_by"] = decided
    if isinstance(flow.get("node_name"), str):
        attrs["apiary.node_name"] = flow["node_name"]
    error = f"denied by the proxy: {decided or 'policy'}" if denied else ""
    kind = SpanKind.SERVER if flow.get("traffic_direction") == "INGRESS" else SpanKind.CLIENT
    if isinstance(l7.get("http"), dict):
        h = l7["http"]
        method = _str(h.get("method")) or "_OTHER"
        attrs["http.request.method"] = method
        url = _str(h.get("url"))
        if url:
            u = urlsplit(url)
            attrs["url.full"] = url
            attrs["url.scheme"] = u.scheme
            attrs["url.path"] = u.path or "/"
            if u.query:
                attrs["url.query"] = u.query
        proto = _str(h.get("protocol"))
        if proto.startswith("HTTP/"):
            attrs["network.protocol.name"] = "http"
            version = proto.removeprefix("HTTP/")
            attrs["network.protocol.version"] = "1.0" if version == "1" else version  # Cilium's "HTTP/1" is 1.0
        code = h.get("code") or (403 if denied else 0)  # a denied request got the proxy's 403
        if code:
            attrs["http.response.status_code"] = int(code)
            limit = 500 if kind == SpanKind.SERVER else 400
            if not error and int(code) >= limit:
                error = f"HTTP {code}"
        name = method
    elif isinstance(l7.get("dns"), dict):
        d = l7["dns"]
        attrs["dns.question.name"] = _str(d.get("query")).rstrip(".")
        qtypes = [q for q in d.get("qtypes") or () if isinstance(q, str)]
        if qtypes:
            attrs["dns.question.type"] = qtypes[0] if len(qtypes) == 1 else ",".join(qtypes)
        if d.get("ips"):
            attrs["dns.answers"] = [str(ip) for ip in d["ips"]]
        if d.get("ttl"):
            attrs["apiary.dns.ttl"] = int(d["ttl"])
        if response:
            rcode = int(d.get("rcode") or 0)
            attrs["dns.response_code"] = rcode
            if rcode and not error:
                error = f"DNS rcode {rcode}"
        name = f"DNS {attrs.get('dns.question.type', 'query')}"
    else:
        return None
    return SpanSpec(name, kind, t - latency, t, attrs, error)


class OtlpTraceSink(_Sink):
    """Spans of the L7 flows (:func:`span_of`) to the collector's ``/v1/traces``."""

    def __init__(self, endpoint: str, node: str, queue_size: int = 65536) -> None:
        url = traces_url(endpoint)
        self.counting = _CountingSpans(OTLPSpanExporter(endpoint=url, timeout=5))
        provider = TracerProvider(resource=_resource(node))
        super().__init__(url, self.counting.tally, provider)
        self.processor = BatchSpanProcessor(self.counting, max_queue_size=queue_size, schedule_delay_millis=500)
        provider.add_span_processor(self.processor)
        self.tracer = provider.get_tracer("apiary.export", __version__)

    def emit(self, flows: list[dict[str, Any]]) -> None:
        for resp in flows:
            spec = span_of(resp)
            if spec is None:
                continue
            try:
                span = self.tracer.start_span(spec.name, kind=spec.kind, attributes=spec.attributes,
                                              start_time=spec.start_ns)
                if spec.error:
                    span.set_status(Status(StatusCode.ERROR, spec.error))
                span.end(end_time=spec.end_ns)
            except Exception:  # noqa: BLE001 - a span the SDK refuses is counted, never fatal
                self.refused += 1
                continue
            self.emitted += 1
