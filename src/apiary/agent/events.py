"""Kernel messages to Tetragon events: the consumers of the process and tracing sensors' records.

Each consumer takes decoded messages (by kind, as the sensors' handlers name them), keeps the process cache
current, and publishes Tetragon-shaped events on the bus, with their Prometheus counters.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter

from apiary.observe.clock import KtimeClock
from apiary.observe.process import ProcessCache
from apiary.observe.raw import ExecMsg, ExitMsg, ForkMsg
from apiary.observe.tetragon import events as tetragon

from .bus import Event, EventBus
from .interfaces import PodDirectory
from .records import Consumer, CorruptRecord


class TracingEventSource(Protocol):
    """What the tracing events need from the tracing half: the Tetragon event of a kernel record."""

    def event(self, ev: Any, cache: Any, node: str, time: str) -> tuple[dict[str, Any], bool] | None: ...


@dataclass
class EmitCounters:
    events: collections.Counter[str] = field(default_factory=collections.Counter)  # events emitted by kind
    missing_process_info: int = 0  # tracing events whose process the cache did not know (still emitted)


class Publisher:
    """Puts events on the bus, counted by kind (status) and by Tetragon type (metrics)."""

    def __init__(self, bus: EventBus, registry: CollectorRegistry) -> None:
        self.bus = bus
        self.counters = EmitCounters()
        self.m_events = Counter("events_total", "Events by type", ["type"], namespace="tetragon", registry=registry)

    def publish(self, kind: str, ev: Event) -> None:
        self.counters.events[kind] += 1
        self.m_events.labels("PROCESS_" + kind.upper()).inc()
        self.bus.publish(ev)


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
        p = self.cache.on_exec(msg)
        if self.pods is not None:
            p.pod = self.pods.pod_of_cgroup(msg.cgroup_id)
        ev = tetragon.exec_event(
            p, self.cache.parent(p), self.cache.ancestors(p), self.node, self.clock.to_rfc3339(msg.ktime)
        )
        self.out.publish("exec", ev)

    def fork(self, msg: ForkMsg) -> None:
        child = self.cache.on_fork(msg)
        parent = self.cache.parent(child)
        if parent is not None:
            child.pod = parent.pod

    def exit(self, msg: ExitMsg) -> None:
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
        self.out.publish("exit", ev)


class TracingEvents:
    """Generic (TracingPolicy) records: their Tetragon events, counted per policy and hook."""

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
        self.m_policy_events = Counter(
            "policy_events_total",
            "TracingPolicy events by policy and hook",
            ["policy", "hook", "namespace", "workload", "pod", "binary", "node_name"],
            namespace="tetragon",
            registry=registry,
        )

    def consumers(self) -> dict[str, Consumer]:
        return {"generic": self.generic}

    def generic(self, ev: Any) -> None:
        if self.tracing is None:
            raise CorruptRecord("no tracing sensor")
        try:
            res = self.tracing.event(ev, self.cache, self.node, self.clock.to_rfc3339(ev.ktime))
        except Exception as e:  # noqa: BLE001 - counted, never fatal
            raise CorruptRecord(str(e)) from e
        if res is None:  # a hook id no policy ever had: a corrupt record
            raise CorruptRecord("unknown hook")
        out, known = res
        if not known:  # emitted all the same, with what the record says of the process
            self.out.counters.missing_process_info += 1
            self.m_missing_process.inc()
        kind = next(iter(out))
        body = out[kind]
        proc = body.get("process", {})
        pod = proc.get("pod") or {}
        self.m_policy_events.labels(
            body.get("policy_name", ""),
            body.get("function_name") or f"{body.get('subsys', '')}/{body.get('event', '')}",
            pod.get("namespace", ""),
            pod.get("workload", ""),
            pod.get("name", ""),
            proc.get("binary", ""),
            self.node,
        ).inc()
        self.out.publish(kind.removeprefix("process_"), out)


def _ignore(_: Any) -> None:
    """Records only counted (the bench producer's)."""

