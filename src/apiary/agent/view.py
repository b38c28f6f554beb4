"""What the local API sees of the agent: a small view, so that apiary.agent.api* never import the daemon."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry

from .bus import EventBus
from .config import AgentConfig
from .worker import DaemonWorker

if TYPE_CHECKING:
    from .network import Network
    from .prefilter import PrefilterControl
    from .services import ServicesControl
    from .tracing import Tracing


class ConnectionStats(Protocol):
    def stats(self) -> dict[str, int]: ...


class AgentView(Protocol):
    api_connections: ConnectionStats | None  # set by the API server once it listens

    @property
    def cfg(self) -> AgentConfig: ...

    @property
    def registry(self) -> CollectorRegistry: ...

    @property
    def events(self) -> EventBus:
        """Process and tracing events."""
        ...

    @property
    def net_pool(self) -> DaemonWorker:
        """The control-plane worker every change runs on, one at a time."""
        ...

    @property
    def network(self) -> Network | None: ...

    @property
    def tracing(self) -> Tracing | None: ...

    @property
    def prefilter(self) -> PrefilterControl: ...

    @property
    def services(self) -> ServicesControl | None: ...

    def status(self) -> dict[str, Any]: ...

    def bpf_list(self) -> dict[str, Any]: ...
