"""Kernel messages to Tetragon events: the consumers of the process and tracing sensors' records.

Each consumer takes decoded messages (by kind, as the sensors' handlers name them), keeps the process cache
current, and publishes Tetragon-shaped events on the bus, with their Prometheus counters.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily

from apiary.observe.clock import KtimeClock, format_rfc3339_ns
from apiary.observe.process import ProcessCache
from apiary.observe.raw import ExecMsg, ExitMsg, ForkMsg
from apiary.observe.tetragon import events as tetragon
from apiary.sensors.tracing import abi as tracing_abi
from apiary.tracing.types import Hook

from .bus import Deferred, Event, EventBus
from .interfaces import HookEntry, PodDirectory, ProcessParts, TracingEventSource
from .records import Batched, Consumer, CorruptRecord

# Tetragon's process labels of its event metrics, and --metrics-label-filter (Tetragon's flag): the ones kept;
# a label left out stays on the metric with an empty value (Tetragon's semantics), so its series collapse
PROCESS_LABELS = ("namespace", "workload", "pod", "binary")


def parse_metrics_label_filter(text: str) -> frozenset[str]:
    """``namespace,workload,pod,binary`` (Tetragon's default: all): the process labels kept; an unknown name is
    refused (Tetragon would log and ignore it)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in PROCESS_LABELS]
    if bad:
        raise ValueError(f"--metrics-label-filter {text!r}: unknown label {bad[0]!r} "
                         f"(a comma-separated list of {', '.join(PROCESS_LABELS)})")
    return frozenset(names)


class Cell:
    """One labelled count of a ``CountFamily``: a plain int, incremented on the hot path."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


class CountFamily:
    """A Prometheus counter family whose counts are plain ints (``Cell``), read only when scraped.

    A ``prometheus_client.Counter`` takes a lock and checks its labels on every ``inc``: per event that
    costs more than the rest of reading a record. Exposed like one (``<name>_total``, same help and
    labels), without the ``_created`` series.
    """

    def __init__(self, name: str, doc: str, labels: list[str], registry: CollectorRegistry) -> None:
        self.name, self.doc, self.labels = name, doc, labels
        self.cells: dict[tuple[str, ...], Cell] = {}
        registry.register(self)

    def cell(self, *values: str) -> Cell:
        c = self.cells.get(values)
        if c is None:
            c = self.cells[values] = Cell()
        return c

    def describe(self) -> list[CounterMetricFamily]:
        return [CounterMetricFamily(self.name, self.doc, labels=self.labels)]

    def collect(self) -> list[CounterMetricFamily]:
        fam = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        for values, c in list(self.cells.items()):
            fam.add_metric(list(values), c.n)
        return [fam]


@dataclass
class EmitCounters:
    events: collections.Counter[str] = field(default_factory=collections.Counter)  # events emitted by kind
    missing_process_info: int = 0  # tracing events whose process the cache did not know (still emitted)
    build_errors: int = 0  # tracing events whose JSON failed to build when read (emitted as apiary_build_error)


class Publisher:
    """Puts events on the bus, counted by kind (status) and by Tetragon type and process (metrics).

    ``tetragon_events_total`` carries Tetragon's labels: ``type``, the process's ``namespace``, ``workload``,
    ``pod`` and ``binary`` (those --metrics-label-filter keeps; the others stay empty) and ``node_name``.
    """

    def __init__(
        self,
        bus: EventBus,
        registry: CollectorRegistry,
        node: str = "",
        label_filter: frozenset[str] = frozenset(PROCESS_LABELS),
    ) -> None:
        self.bus, self.node = bus, node
        self.keep = tuple(label in label_filter for label in PROCESS_LABELS)
        self.counters = EmitCounters()
        self.m_events = CountFamily(
            "tetragon_events", "Events by type and process", ["type", *PROCESS_LABELS, "node_name"], registry
        )
        self._types: dict[str, str] = {}  # kind -> Tetragon's type (exec -> PROCESS_EXEC)
        # bumped on every change of the process cache (exec, fork, exit): process JSON taken before is stale
        self.process_generation = 0

    def process_labels(self, pod: dict[str, Any] | None, binary: str) -> tuple[str, str, str, str]:
        """The process labels of the event metrics: namespace, workload, pod, binary; a label the filter
        leaves out is empty."""
        p = pod or {}
        ns, wl, name, b = self.keep
        return (
            p.get("namespace", "") if ns else "",
            p.get("workload", "") if wl else "",
            p.get("name", "") if name else "",
            binary if b else "",
        )

    def cell(self, kind: str, labels: tuple[str, str, str, str]) -> Cell:
        """The count in tetragon_events_total of the events of one kind and process labels."""
        t = self._types.get(kind)
        if t is None:
            t = self._types[kind] = "PROCESS_" + kind.upper()
        return self.m_events.cell(t, *labels, self.node)

    def publish(self, kind: str, ev: Event | Deferred, cell: Cell) -> None:
        """One event, counted in ``cell`` (``Publisher.cell``)."""
        self.counters.events[kind] += 1
        cell.n += 1
        self.bus.publish(ev)

    def publish_many(self, kinds: dict[str, int], evs: list[Event | Deferred]) -> None:
        """Events in order, with how many there are of each kind; the caller counted each in its metric cell."""
        for kind, k in kinds.items():
            self.counters.events[kind] += k
        self.bus.publish_many(evs)


class ProcessEvents:
    """exec, fork and exit messages: the process cache, and exec/exit events."""

    def __init__(
        self, cache: ProcessCache, clock: KtimeClock, node: str, out: Publisher, pods: PodDirectory | None = None
    ) -> None:
        self.cache, self.clock, self.node, self.out = cache, clock, node, out
        self.pods = pods

    def consumers(self) -> dict[str, Consumer]:
        return {"exec": self.exec, "fork": self.fork, "exit": self.exit, "bench": _ignore}

    def exec(self, msg: ExecMsg) -> None:
        self.out.process_generation += 1
        p = self.cache.on_exec(msg)
        if self.pods is not None:
            p.pod = self.pods.pod_of_cgroup(msg.cgroup_id)
        ev = tetragon.exec_event(
            p, self.cache.parent(p), self.cache.ancestors(p), self.node, self.clock.to_rfc3339(msg.ktime)
        )
        self.out.publish("exec", ev, self.out.cell("exec", self.out.process_labels(p.pod, p.binary)))

    def fork(self, msg: ForkMsg) -> None:
        self.out.process_generation += 1
        child = self.cache.on_fork(msg)
        parent = self.cache.parent(child)
        if parent is not None:
            child.pod = parent.pod

    def exit(self, msg: ExitMsg) -> None:
        self.out.process_generation += 1
        p = self.cache.on_exit(msg)
        if p is None:
            return
        ev = tetragon.exit_event(
            p,
            self.cache.parent(p),
            self.cache.ancestors(p),
            self.node,
            self.clock.to_rfc3339(msg.ktime),
            msg.status,
            msg.signal,
        )
        self.out.publish("exit", ev, self.out.cell("exit", self.out.process_labels(p.pod, p.binary)))


class TracingEvents:
    """Generic (TracingPolicy) records: their Tetragon events, counted per policy and hook.

    A record is read at the ring's pace, its event built only when read (``TracingRecord``): what the event
    says of the process (its refcnt, its ancestors) is taken when the record is read, shared between the
    records of one process while the process cache does not change; the rest (arguments, time) is built
    from the record itself.
    """

    MEMO_MAX = 4096  # (hook, process) entries kept between changes of the process cache

    def __init__(
        self,
        tracing: TracingEventSource | None,
        cache: ProcessCache,
        clock: KtimeClock,
        node: str,
        out: Publisher,
        registry: CollectorRegistry,
    ) -> None:
        self.tracing, self.cache, self.clock, self.node, self.out = tracing, cache, clock, node, out
        self.m_missing_process = Counter(
            "events_missing_process_info",
            "Tracing events emitted without their process's info (the process was unknown)",
            namespace="tetragon",
            registry=registry,
        )
        self.m_policy_events = CountFamily(
            "tetragon_policy_events",
            "TracingPolicy events by policy and hook",
            ["policy", "hook", "namespace", "workload", "pod", "binary", "node_name"],
            registry,
        )
        # (hook id, pid, start ktime) -> (hook entry, process parts, its counts in policy_events_total and in
        # events_total, its kind), valid for _memo_gen
        self._memo: dict[tuple[int, int, int], tuple[HookEntry, ProcessParts, Cell, Cell, str]] = {}
        self._memo_gen: tuple[int, int, int] = (-1, -1, -1)

    def consumers(self) -> dict[str, Consumer]:
        return {"generic": Batched(self.generic, self.generic_batch)}

    def generic(self, ev: tracing_abi.EventRecord) -> None:
        tracing = self.tracing
        if tracing is None:
            raise CorruptRecord("no tracing sensor")
        try:
            entry = tracing.hook_entry(ev.hook_id)
            if entry is None:  # a hook id no policy ever had: a corrupt record
                raise CorruptRecord("unknown hook")
            parts, kind, cell = self._parts(ev, entry, tracing)
        except CorruptRecord:
            raise
        except Exception as e:  # noqa: BLE001 - counted, never fatal
            raise CorruptRecord(str(e)) from e
        wall_ns = ev.ktime + self.clock.offset_ns  # the clock's offset now, as if the event were built now
        self.out.publish(kind, TracingRecord(ev.raw).settle(self, entry, parts, wall_ns), cell)

    def generic_batch(self, raws: list[bytes]) -> tuple[int, int]:
        """A run of generic records read at one wake-up, as ``generic`` one by one, in one loop: the same events,
        counts and memo; each record decoded straight into its event (``TracingRecord``). Returns (decoded,
        decode errors)."""
        tracing = self.tracing
        entries: dict[int, Any] = {}  # hook id -> its entry (None: unknown), looked up once per run
        memo = self._memo_valid()
        offset = self.clock.offset_ns
        recs: list[Event | Deferred] = []
        kinds: dict[str, int] = {}
        decoded = bad = 0
        for raw in raws:
            try:
                ev = TracingRecord(raw)  # the record's head (struct.error when it is too short)
            except Exception:  # noqa: BLE001 - a corrupt record is counted, never fatal
                bad += 1
                continue
            decoded += 1
            hid = ev.hook_id
            entry = entries.get(hid, False)
            if entry is False:
                try:
                    entry = entries[hid] = tracing.hook_entry(hid) if tracing is not None else None
                except Exception:  # noqa: BLE001 - counted, never fatal
                    entry = entries[hid] = None
            hit = memo.get((hid, ev.pid, ev.proc_ktime))
            if hit is not None and hit[0] is entry:  # the memo's answer, as in _parts
                hit[2].n += 1
                hit[3].n += 1
                parts, kind = hit[1], hit[4]
            else:
                try:
                    if tracing is None or entry is None:  # no tracing sensor, or a hook id never given out
                        raise CorruptRecord("unknown hook")
                    parts, kind, cell = self._parts(ev, entry, tracing)
                except Exception:  # noqa: BLE001 - counted, never fatal
                    bad += 1
                    continue
                cell.n += 1
                memo = self._memo_valid()  # reading the process cache may have changed it
            kinds[kind] = kinds.get(kind, 0) + 1
            recs.append(ev.settle(self, entry, parts, ev.ktime + offset))
        self.out.publish_many(kinds, recs)
        return decoded, bad

    def _memo_valid(self) -> dict[tuple[int, int, int], tuple[HookEntry, ProcessParts, Cell, Cell, str]]:
        """The memo, emptied if the process cache changed since it was filled (or it is full)."""
        cache = self.cache
        gen = (self.out.process_generation, cache.expired, cache.evictions)
        if gen != self._memo_gen or len(self._memo) >= self.MEMO_MAX:
            self._memo.clear()
            self._memo_gen = gen
        return self._memo

    def _parts(
        self, ev: tracing_abi.EventRecord, entry: HookEntry, tracing: TracingEventSource
    ) -> tuple[ProcessParts, str, Cell]:
        """The process side of an event, the event's kind, and its count in events_total (the caller counts
        it there); counted in policy_events_total. Memoised per (hook, process image) while the process cache
        does not change (the same image gives the same answer)."""
        cache = self.cache
        memo = self._memo_valid()
        key = (ev.hook_id, ev.pid, ev.proc_ktime)
        hit = memo.get(key)
        if hit is not None and hit[0] is entry:
            hit[2].n += 1
            return hit[1], hit[4], hit[3]
        p = cache.get_by_key(ev.pid, ev.proc_ktime)
        parts = tracing.process_parts(ev, p, cache, self.node)
        kind = entry[1].event.removeprefix("process_")
        labels = self._labels(parts.process)
        counter = self._policy_counter(entry, labels)
        counter.n += 1
        cell = self.out.cell(kind, labels)
        if p is None:  # emitted all the same, with what the record says of the process (each time: never memoised)
            self.out.counters.missing_process_info += 1
            self.m_missing_process.inc()
        else:
            memo[key] = (entry, parts, counter, cell, kind)
        return parts, kind, cell

    def _labels(self, proc: dict[str, Any]) -> tuple[str, str, str, str]:
        """The event metrics' process labels of an event's ``process`` JSON (--metrics-label-filter applied)."""
        return self.out.process_labels(proc.get("pod"), proc.get("binary", ""))

    def _policy_counter(self, entry: HookEntry, labels: tuple[str, str, str, str]) -> Cell:
        lp, hook = entry
        return self.m_policy_events.cell(lp.policy.name, hook_label(hook), *labels, self.node)


class TracingRecord(tracing_abi.EventRecord):
    """A tracing event as read from the ring (the record, whose head is decoded), built into its Tetragon JSON
    on first read (``Deferred``). One object per event: the record is the event until it is built."""

    __slots__ = ("source", "entry", "parts", "wall_ns", "built")

    def settle(self, source: TracingEvents, entry: HookEntry, parts: ProcessParts, wall_ns: int) -> TracingRecord:
        """What the event is built from besides the record: its hook, its process side, its wall time."""
        self.source, self.entry, self.wall_ns = source, entry, wall_ns
        self.parts: ProcessParts | None = parts
        self.built: Event | None = None
        return self

    def materialize(self) -> Event:
        if self.built is None:
            src, parts = self.source, self.parts
            assert parts is not None  # kept until the event is built
            time = format_rfc3339_ns(self.wall_ns)
            try:
                tracing = src.tracing
                if tracing is None:  # never: a record is only read with a tracing sensor
                    raise RuntimeError("no tracing sensor")
                self.built = tracing.build(self, self.entry, parts, src.node, time)
            except Exception as e:  # noqa: BLE001 - the event is still emitted, saying what failed
                src.out.counters.build_errors += 1
                lp, hook = self.entry
                self.built = {
                    "apiary_build_error": {
                        "error": f"{type(e).__name__}: {e}",
                        "policy_name": lp.policy.name,
                        "hook": hook_label(hook),
                        "process": parts.process,
                    },
                    "node_name": src.node,
                    "time": time,
                }
            self.parts, self.raw = None, b""  # built: what it was built from is no longer needed
        return self.built


def hook_label(hook: Hook) -> str:
    """The ``hook`` label of tetragon_policy_events_total: the function, or subsys/event of a tracepoint."""
    if hook.event == "process_tracepoint":
        subsys, _, event = hook.function_name.partition("/")
        return f"{subsys}/{event}"
    if hook.event == "process_uprobe":
        return "/"  # an uprobe's event names neither a function nor subsys/event
    return hook.function_name or "/"


def _ignore(_: Any) -> None:
    """Records only counted (the bench producer's)."""

