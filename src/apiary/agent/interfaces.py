"""The narrow interfaces between the agent's halves: what one capability needs of another, nothing more.

The network half implements them (agent/network.py); the tracing half and the process events use them,
without importing the network half.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


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
