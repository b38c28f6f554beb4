"""Event and flow export: a subscriber of the event bus (events) and of the flow bus, writing JSON lines to
rotated files (Tetragon's ``--export-*``, Cilium's ``--hubble-export-*``) and, optionally, OTLP log records.

The event loop never touches a file: each bus subscription has a bounded queue (a full one counts drops, as
for any streaming client), a pump task moves batches from it to the writer thread, which filters, encodes
and writes (``apiary.observe.export``). Write failures (disk full, a deleted directory) are counted, shown in
``apiary status`` and as metrics, and writing resumes by itself (``RotatingFile``).
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from apiary.observe.export.pipeline import EventPipeline, FlowPipeline
from apiary.observe.export.ratelimit import RateLimiter
from apiary.observe.export.rotate import RotatingFile
from apiary.observe.export.settings import ExportSettings, compile_events, compile_flows

from .bus import Event, EventBus, Subscriber

BATCH = 1024  # events moved to the writer at once
_STOP = object()


@dataclass
class Stream:
    """One exported stream (``events`` or ``flows``): its bus subscription, pipeline and sinks."""

    name: str
    pipeline: EventPipeline | FlowPipeline
    file: RotatingFile | None
    bus: EventBus | None = None
    sub: Subscriber | None = None
    encode_errors: int = 0
    exported: int = 0  # records written to the file (or handed to OTLP when there is no file)
    last_exported: float = 0.0  # wall time of the last record's write
    pending: list[Event] = field(default_factory=list, repr=False)  # taken from the queue, not yet handed over
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def queue_drops(self) -> int:
        return self.sub.dropped if self.sub else 0


def encode(ev: Event) -> bytes:
    return json.dumps(ev, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "backslashreplace") + b"\n"


class Exporter:
    def __init__(self, settings: ExportSettings, node: str, registry: CollectorRegistry | None = None) -> None:
        settings.check()
        self.s = settings
        self.node = node
        self.streams: dict[str, Stream] = {}
        now = time.monotonic()
        perm = settings.perm()
        if settings.events_on:
            limiter = (
                RateLimiter(settings.export_rate_limit, now, settings.rate_limit_report_interval)
                if settings.export_rate_limit >= 0
                else None
            )
            f = None
            if settings.export_filename:
                f = RotatingFile(
                    settings.export_filename,
                    settings.export_file_max_size_mb << 20,
                    settings.export_file_max_backups,
                    settings.export_file_compress,
                    settings.export_file_rotation_interval,
                    perm,
                )
            self.streams["events"] = Stream("events", EventPipeline(compile_events(settings), limiter, node), f)
        if settings.flows_on:
            f = None
            if settings.hubble_export_file_path:
                f = RotatingFile(
                    settings.hubble_export_file_path,
                    settings.hubble_export_file_max_size_mb << 20,
                    settings.hubble_export_file_max_backups,
                    settings.hubble_export_file_compress,
                    0.0,
                    perm,
                )
            self.streams["flows"] = Stream("flows", FlowPipeline(compile_flows(settings)), f)
        self.otlp: Any = None  # OtlpSink once started
        self.traces: Any = None  # OtlpTraceSink once started (--export-otlp-traces)
        self.handoff: queue.Queue[Any] = queue.Queue(maxsize=16)
        self.thread: threading.Thread | None = None
        self.closed = False
        if registry is not None:
            registry.register(self)

    # ------------------------------------------------------------------ life cycle
    def start(self) -> list[str]:
        """Open the files (OSError: the user's to fix), start the OTLP sink and the writer thread."""
        notes = []
        for st in self.streams.values():
            if st.file is not None:
                st.file.start()
                notes.append(f"exporting {st.name} to {st.file.path}")
        if self.s.export_otlp_endpoint:
            from .otlp import OtlpSink

            self.otlp = OtlpSink(self.s.export_otlp_endpoint, self.node, self.s.export_queue)
            notes.append(f"exporting events and flows as OTLP logs to {self.otlp.url}")
        if self.s.export_otlp_traces:
            from .otlp import OtlpTraceSink

            self.traces = OtlpTraceSink(self.s.export_otlp_endpoint, self.node, self.s.export_queue)
            notes.append(f"exporting L7 HTTP requests and DNS queries as OTLP spans to {self.traces.url}")
        self.thread = threading.Thread(target=self._writer, name="export-writer", daemon=True)
        self.thread.start()
        return notes

    def attach(self, events: EventBus, flows: EventBus | None) -> None:
        """Subscribe to the buses (before the event loop runs: nothing published after is missed)."""
        for name, bus in (("events", events), ("flows", flows)):
            st = self.streams.get(name)
            if st is None or bus is None:
                continue
            st.bus = bus
            st.sub = Subscriber(asyncio.Queue(maxsize=self.s.export_queue))
            bus.subscribers.append(st.sub)

    async def run(self) -> None:
        """The pump tasks, until cancelled."""
        tasks = [asyncio.create_task(self._pump(st)) for st in self.streams.values() if st.sub is not None]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()

    async def _pump(self, st: Stream) -> None:
        assert st.sub is not None
        q = st.sub.queue
        while True:
            batch = [await q.get()]
            while len(batch) < BATCH and not q.empty():
                batch.append(q.get_nowait())
            st.pending = batch
            while True:
                try:
                    self.handoff.put_nowait((st.name, batch))
                    st.pending = []
                    break
                except queue.Full:  # the writer is behind: the subscription's queue fills (and counts drops)
                    await asyncio.sleep(0.01)

    def close(self) -> None:
        """Hand over what the subscriptions still hold, stop the writer (it writes what it has), close sinks."""
        if self.closed:
            return
        self.closed = True
        for st in self.streams.values():
            if st.sub is None:
                continue
            batch, st.pending = st.pending, []  # a pump cancelled while the writer was behind
            while not st.sub.queue.empty():
                batch.append(st.sub.queue.get_nowait())
            if st.bus is not None:
                st.bus.unsubscribe(st.sub)
            if batch and self.thread is not None:
                self._put((st.name, batch))
        if self.thread is not None:
            self._put(_STOP)
            self.thread.join(60)
        for st in self.streams.values():
            if st.file is not None:
                st.file.close()
        if self.otlp is not None:
            self.otlp.close()
        if self.traces is not None:
            self.traces.close()

    def _put(self, item: Any) -> None:
        try:
            self.handoff.put(item, timeout=30)
        except queue.Full:  # a writer stuck for 30 s: the batch is lost, and counted
            if isinstance(item, tuple):
                st = self.streams[item[0]]
                if st.sub is not None:
                    st.sub.dropped += len(item[1])

    # ------------------------------------------------------------------ the writer thread
    def _writer(self) -> None:
        while True:
            try:
                item = self.handoff.get(timeout=1.0)
            except queue.Empty:
                item = None
            now = time.monotonic()
            if item is _STOP:
                self._report(now, final=True)
                return
            if item is not None:
                name, batch = item
                try:
                    self._write(self.streams[name], batch, now)
                except Exception:  # noqa: BLE001 - the writer never dies; what it lost is counted
                    self.streams[name].encode_errors += len(batch)
            self._report(now)

    def _write(self, st: Stream, batch: list[Event], now: float) -> None:
        if self.traces is not None and st.name == "flows":  # every L7 flow: the lists and mask shape files/logs
            self.traces.emit(batch)
        evs = st.pipeline.process(batch, now)
        self._emit(st, evs)

    def _emit(self, st: Stream, evs: list[Event]) -> None:
        if not evs:
            return
        if st.file is not None:
            lines = []
            for ev in evs:
                try:
                    lines.append(encode(ev))
                except (TypeError, ValueError):
                    st.encode_errors += 1
            n = st.file.write_lines(lines)
        else:
            n = len(evs)
        if n:
            st.exported += n
            st.last_exported = time.time()
        if self.otlp is not None:
            self.otlp.emit(st.name, evs)

    def _report(self, now: float, final: bool = False) -> None:
        st = self.streams.get("events")
        if st is None or not isinstance(st.pipeline, EventPipeline):
            return
        info = st.pipeline.rate_limit_info(now, time.time_ns(), final)
        if info is not None:
            self._emit(st, [info])

    # ------------------------------------------------------------------ views
    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for st in self.streams.values():
            row: dict[str, Any] = {
                **st.pipeline.stats.as_dict(),
                "exported": st.exported,
                "queue_drops": st.queue_drops,
                "encode_errors": st.encode_errors,
                "last_exported_time": st.last_exported,
            }
            if isinstance(st.pipeline, EventPipeline) and st.pipeline.limiter is not None:
                row["rate_limit_per_minute"] = st.pipeline.limiter.limit
            if st.file is not None:
                row["file"] = {"path": st.file.path, "healthy": st.file.healthy, **st.file.stats.as_dict()}
            out[st.name] = row
        if self.otlp is not None:
            out["otlp"] = self.otlp.status()
        if self.traces is not None:
            out["otlp_traces"] = self.traces.status()
        return out

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> list[Any]:
        """Tetragon's export metrics (events stream) and apiary's per stream."""
        fams: list[Any] = []
        ev = self.streams.get("events")
        if ev is not None:
            exported = CounterMetricFamily("tetragon_events_exported", "Total number of events exported")
            exported.add_metric([], ev.exported)
            nbytes = CounterMetricFamily("tetragon_events_exported_bytes", "Number of bytes exported for events")
            nbytes.add_metric([], ev.file.stats.bytes if ev.file else 0)
            last = GaugeMetricFamily(
                "tetragon_events_last_exported_timestamp", "Timestamp of the most recent event to be exported"
            )
            last.add_metric([], ev.last_exported)
            rl = CounterMetricFamily(
                "tetragon_export_ratelimit_events_dropped", "Number of events dropped on export due to rate limiting"
            )
            rl.add_metric([], ev.pipeline.stats.rate_limited)
            fams += [exported, nbytes, last, rl]
        written = CounterMetricFamily("apiary_export_records", "Records written to export files", labels=["stream"])
        lost = CounterMetricFamily("apiary_export_lost", "Records not exported, by reason", labels=["stream", "reason"])
        errors = CounterMetricFamily(
            "apiary_export_write_errors", "Failed opens and writes of export files", labels=["stream"]
        )
        filtered = CounterMetricFamily(
            "apiary_export_filtered", "Records left out by the export allow/deny lists", labels=["stream"]
        )
        for st in self.streams.values():
            written.add_metric([st.name], st.file.stats.lines if st.file else 0)
            lost.add_metric([st.name, "queue_full"], st.queue_drops)
            lost.add_metric([st.name, "write_failed"], st.file.stats.failed_lines if st.file else 0)
            lost.add_metric([st.name, "encode_error"], st.encode_errors)
            lost.add_metric([st.name, "rate_limited"], st.pipeline.stats.rate_limited)
            errors.add_metric([st.name], st.file.stats.write_errors if st.file else 0)
            filtered.add_metric([st.name], st.pipeline.stats.filtered)
        fams += [written, lost, errors, filtered]
        for sink, name, what in ((self.otlp, "apiary_export_otlp_records", "OTLP log records"),
                                 (self.traces, "apiary_export_otlp_spans", "OTLP spans")):
            if sink is not None:
                o = sink.status()
                fam = CounterMetricFamily(name, f"{what} by outcome at the collector", labels=["outcome"])
                for outcome in ("exported", "failed", "dropped"):
                    fam.add_metric([outcome], o[outcome])
                fams.append(fam)
        return fams
