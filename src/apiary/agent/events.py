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
        # (hook id, pid, start ktime) -> what records of that hook and process share, valid for _memo_gen
        self._memo: dict[tuple[int, int, int], tuple[HookEntry, ProcessParts, Cell, Cell, str]] = {}
        self._memo_gen: tuple[int, int, int] = (-1, -1, -1)

    def consumers(self) -> dict[str, Consumer]:
        return {"generic": Batched(self.generic, self.generic_batch)}

    def generic(self, ev: tracing_abi.EventRecord) -> None:
        run = self._run(ev, self.clock.offset_ns)  # the clock's offset now, as if the event were built now
        if not run.ok:
            raise CorruptRecord(run.why)
        run.n = 1
        self._count(run, kind=False)
        self.out.publish(run.kind, TracingRecord(ev.raw, run), run.kind_cell)  # counted in its kind's cell there

    def generic_batch(self, raws: list[bytes]) -> tuple[int, int]:
        """A run of generic records read at one wake-up, as ``generic`` one by one, in one loop: the same events,
        counts and memo. The records of one hook, thread and process image share what they have in common
        (``_Run``, made at its first record from its head) and are counted at the end, a run at a time; each
        record is kept as it came until its event is read (``TracingRecord``). (One case differs: one by one, a
        later record of a process image the cache let go of within the same batch would be reported as of an
        unknown process; here it shares its run's process.) Returns (decoded, decode errors)."""
        offset = self.clock.offset_ns
        runs: dict[bytes, _Run] = {}
        recs: list[Event | Deferred] = []
        append = recs.append
        for raw in raws:
            key = raw[_KEY_START:_KEY_END]  # pid, tid, proc_ktime, cgroup_id, hook_id (shorter: a record cut short)
            run = runs.get(key)
            if run is None:
                run = runs[key] = self._run_of(raw, offset)
            run.n += 1
            if run.ok:
                append(TracingRecord(raw, run))
        kinds: dict[str, int] = {}
        decoded = bad = 0
        for run in runs.values():
            if run.head:
                decoded += run.n
            if not run.ok:
                bad += run.n
                continue
            self._count(run)
            kinds[run.kind] = kinds.get(run.kind, 0) + run.n
        self.out.publish_many(kinds, recs)
        return decoded, bad

    def _run_of(self, raw: bytes, offset: int) -> _Run:
        """What the records with this record's head share (a corrupt or short one's ``ok`` is False)."""
        try:
            ev = tracing_abi.EventRecord(raw)  # its head (struct.error when it is too short)
        except Exception:  # noqa: BLE001 - a corrupt record is counted, never fatal
            return _Run.bad("record too short", head=False)
        return self._run(ev, offset)

    def _run(self, ev: tracing_abi.EventRecord, offset: int) -> _Run:
        """The hook, process side and counts of the records of ``ev``'s hook and process, as the process cache is
        now; memoised per (hook, process image) while the process cache does not change (the same image gives
        the same answer). An unknown process gets what the record says of it, each time (never memoised)."""
        tracing = self.tracing
        if tracing is None:
            return _Run.bad("no tracing sensor")
        try:
            entry = tracing.hook_entry(ev.hook_id)
            if entry is None:  # a hook id no policy ever had: a corrupt record
                return _Run.bad("unknown hook")
            memo = self._memo_valid()
            key = (ev.hook_id, ev.pid, ev.proc_ktime)
            hit = memo.get(key)
            if hit is not None and hit[0] is entry:
                return _Run(self, entry, hit[1], offset, hit[2], hit[3], hit[4], False)
            cache = self.cache
            p = cache.get_by_key(ev.pid, ev.proc_ktime)
            parts = tracing.process_parts(ev, p, cache, self.node)
            kind = entry[1].event.removeprefix("process_")
            labels = self._labels(parts.process)
            policy_cell = self._policy_counter(entry, labels)
            kind_cell = self.out.cell(kind, labels)
            if p is not None:
                self._memo_valid()[key] = (entry, parts, policy_cell, kind_cell, kind)  # (reading may clear it)
            return _Run(self, entry, parts, offset, policy_cell, kind_cell, kind, p is None)
        except Exception as e:  # noqa: BLE001 - counted, never fatal
            return _Run.bad(str(e))

    def _count(self, run: _Run, kind: bool = True) -> None:
        """A run's records in policy_events_total, events_total (kind) and the missing-process counts."""
        run.policy_cell.n += run.n
        if kind:
            run.kind_cell.n += run.n
        if run.missing:  # emitted all the same, with what the record says of the process
            self.out.counters.missing_process_info += run.n
            self.m_missing_process.inc(run.n)
            self.cache.misses["get"] += run.n - 1  # looked up once for the run, as often as one by one would

    def _memo_valid(self) -> dict[tuple[int, int, int], tuple[HookEntry, ProcessParts, Cell, Cell, str]]:
        """The memo, emptied if the process cache changed since it was filled (or it is full)."""
        cache = self.cache
        gen = (self.out.process_generation, cache.expired, cache.evictions)
        if gen != self._memo_gen or len(self._memo) >= self.MEMO_MAX:
            self._memo.clear()
            self._memo_gen = gen
        return self._memo

    def _labels(self, proc: dict[str, Any]) -> tuple[str, str, str, str]:
        """The event metrics' process labels of an event's ``process`` JSON (--metrics-label-filter applied)."""
        return self.out.process_labels(proc.get("pod"), proc.get("binary", ""))

    def _policy_counter(self, entry: HookEntry, labels: tuple[str, str, str, str]) -> Cell:
        lp, hook = entry
        return self.m_policy_events.cell(lp.policy.name, hook_label(hook), *labels, self.node)


# the bytes of a record's head that say whose it is: pid, tid, proc_ktime, cgroup_id, hook_id (struct gs_event)
_KEY_START, _KEY_END = 16, 42
# The key ends where the head does, so a record with a whole key has a whole head (every record of a run decodes).
if (tracing_abi.Event.pid.offset, tracing_abi.Event.hook_id.offset + 2) != (_KEY_START, _KEY_END) or [
    tracing_abi.Event.tid.offset, tracing_abi.Event.proc_ktime.offset, tracing_abi.Event.cgroup_id.offset
] != [20, 24, 32] or _KEY_END != tracing_abi.HEAD_SIZE:
    raise ImportError("struct gs_event's head moved: update _KEY_START/_KEY_END with it")


class _Run:
    """What the records of one hook, thread and process image read at one wake-up share: their hook entry, their
    process side (taken at the first of them), the clock's offset then, their counts and how many there are."""

    __slots__ = ("source", "entry", "parts", "offset", "policy_cell", "kind_cell", "kind", "missing", "n", "ok",
                 "head", "why")

    def __init__(
        self, source: TracingEvents | None, entry: HookEntry | None, parts: ProcessParts | None, offset: int,
        policy_cell: Cell, kind_cell: Cell, kind: str, missing: bool,
    ) -> None:
        self.source, self.entry, self.parts, self.offset = source, entry, parts, offset
        self.policy_cell, self.kind_cell, self.kind, self.missing = policy_cell, kind_cell, kind, missing
        self.n, self.ok, self.head, self.why = 0, True, True, ""

    @classmethod
    def bad(cls, why: str, head: bool = True) -> _Run:
        """Records counted as decode errors (head: their head decoded, so they count as decoded too)."""
        r = cls(None, None, None, 0, _NO_CELL, _NO_CELL, "", False)
        r.ok, r.head, r.why = False, head, why
        return r


_NO_CELL = Cell()


class TracingRecord(tracing_abi.EventRecord):
    """A tracing event as read from the ring: its bytes and what it shares with the records of its hook and
    process (``_Run``), built into its Tetragon JSON on first read (``Deferred``). Its head is decoded then,
    not before: one small object per event until it is read."""

    __slots__ = ("run", "built")

    def __init__(self, raw: bytes, run: _Run) -> None:  # the head is decoded when the event is built
        self.raw, self.run = raw, run
        self.built: Event | None = None

    def materialize(self) -> Event:
        if self.built is None:
            run = self.run
            src, entry, parts = run.source, run.entry, run.parts
            assert src is not None and entry is not None and parts is not None  # only good runs' records are kept
            tracing_abi.EventRecord.__init__(self, self.raw)  # its head (as long as the run's first, which decoded)
            time = format_rfc3339_ns(self.ktime + run.offset)
            try:
                tracing = src.tracing
                if tracing is None:  # never: a record is only read with a tracing sensor
                    raise RuntimeError("no tracing sensor")
                self.built = tracing.build(self, entry, parts, src.node, time)
            except Exception as e:  # noqa: BLE001 - the event is still emitted, saying what failed
                src.out.counters.build_errors += 1
                lp, hook = entry
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
            self.raw = b""  # built: what it was built from is no longer needed
            del self.run
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

