"""OpenTelemetry log export of events and flows (the official SDK: a LoggerProvider, its batch processor and
the OTLP/HTTP protobuf exporter), as an optional export sink (``--export-otlp-endpoint``).

Each event or flow becomes one log record: the body is the event's JSON object (an OTLP ``kvlist``), the
time is the event's, ``event_name`` its type (``process_exec``, ``flow`` ...), and a few attributes say what
it is about (``apiary.stream``, ``node_name``, ``process.binary``, ``process.pid``, ``verdict`` ...). What
the collector accepted and refused is counted (a counting wrapper around the exporter); records neither
accepted nor refused when the sink closes were dropped by the SDK's queue and are counted as such.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.resources import Resource

from apiary import __version__
from apiary.observe.clock import parse_rfc3339_ns
from apiary.observe.tetragon.events import event_kind


def logs_url(endpoint: str) -> str:
    """``http://host:4318`` -> ``http://host:4318/v1/logs`` (a URL that already names the path is kept)."""
    e = endpoint.rstrip("/")
    return e if e.endswith("/v1/logs") else e + "/v1/logs"


class _Counting(LogRecordExporter):
    def __init__(self, inner: LogRecordExporter) -> None:
        self.inner = inner
        self.lock = threading.Lock()
        self.exported = 0
        self.failed = 0
        self.last_error = ""

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        try:
            r = self.inner.export(batch)
        except Exception as e:  # noqa: BLE001 - counted; the SDK would only log it
            r = LogRecordExportResult.FAILURE
            self.last_error = f"{type(e).__name__}: {e}"
        with self.lock:
            if r == LogRecordExportResult.SUCCESS:
                self.exported += len(batch)
            else:
                self.failed += len(batch)
                self.last_error = self.last_error or "the collector refused or could not be reached"
        return r

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return bool(self.inner.force_flush(timeout_millis))


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


class OtlpSink:
    def __init__(self, endpoint: str, node: str, queue_size: int = 65536) -> None:
        self.url = logs_url(endpoint)
        self.counting = _Counting(OTLPLogExporter(endpoint=self.url, timeout=5))
        self.provider = LoggerProvider(
            resource=Resource.create({"service.name": "apiary", "service.version": __version__, "host.name": node})
        )
        self.processor = BatchLogRecordProcessor(self.counting, max_queue_size=queue_size, schedule_delay_millis=500)
        self.provider.add_log_record_processor(self.processor)
        self.logger = self.provider.get_logger("apiary.export", __version__)
        self.emitted = 0
        self.refused = 0  # records the SDK would not take (counted as lost)
        self.dropped = 0  # neither accepted nor refused when the sink closed (the SDK's queue was full)
        self.closed = False

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

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.provider.force_flush(10_000)  # what is queued, while the collector answers within the timeouts
        self.provider.shutdown()
        with self.counting.lock:
            self.dropped = max(0, self.emitted - self.counting.exported - self.counting.failed)

    def status(self) -> dict[str, Any]:
        c = self.counting
        with c.lock:
            exported, failed = c.exported, c.failed
        return {
            "endpoint": self.url,
            "emitted": self.emitted,
            "exported": exported,
            "failed": failed,
            "in_flight": max(0, self.emitted - exported - failed - self.dropped),  # emitted: what the SDK took
            "dropped": self.dropped + self.refused,
            "last_error": c.last_error,
        }
