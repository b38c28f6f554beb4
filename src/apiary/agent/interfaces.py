"""The narrow interfaces between the agent's halves: what one capability needs of another, nothing more.

The network half implements them (agent/network.py); the tracing half and the process events use them,
without importing the network half.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from apiary.observe.process import Process, ProcessCache
from apiary.sensors.tracing import abi as tracing_abi
from apiary.sensors.tracing.state import LoadedPolicy
from apiary.tracing.types import Hook

HookEntry = tuple[LoadedPolicy, Hook]  # the tracing sensor's record of a hook id


@dataclass(frozen=True)
class ScopedEndpoint:
    """An endpoint as a pod-scoped tracing policy sees it."""

    namespace: str
    labels: tuple[str, ...]  # its identity labels (policy.identity.endpoint_labels)
    cgroup_id: int | None  # None: its cgroup is gone


class PodDirectory(Protocol):
    """The pod a cgroup belongs to (Tetragon's ``pod`` object), for process events."""

    def pod_of_cgroup(self, cgroup_id: int) -> dict[str, Any] | None: ...


class EndpointSource(PodDirectory, Protocol):
    """What tracing needs from the network side: the endpoints, their labels and cgroup ids."""

    def scoped_endpoints(self) -> list[ScopedEndpoint]: ...


class ProcessParts(NamedTuple):
    """The process side of a tracing event, as JSON (shared dicts: never mutated, only serialised)."""

    process: dict[str, Any]
    parent: dict[str, Any] | None
    ancestors: list[dict[str, Any]]
    known: bool  # the cache knew the process (else: what the record says of it)


class TracingEventSource(Protocol):
    """What the tracing events need from the tracing half: a record's hook, its process side, its event."""

    def hook_entry(self, hid: int) -> HookEntry | None: ...

    def process_parts(
        self, ev: tracing_abi.EventRecord, p: Process | None, cache: ProcessCache, node: str
    ) -> ProcessParts: ...

    def build(
        self, ev: tracing_abi.EventRecord, entry: HookEntry, parts: ProcessParts, node: str, time: str
    ) -> dict[str, Any]: ...
