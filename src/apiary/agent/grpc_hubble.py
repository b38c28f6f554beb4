"""Hubble's Observer gRPC API (``observer/observer.proto``) over the agent's flows.

The flows are the ``GetFlowsResponse`` dicts the network half already keeps (its ring, ``Network.flows``) and
streams; here they become protobuf messages (``json_format.ParseDict``, strict) and are chosen with the same
FlowFilter matcher ``apiary observe`` uses (``apiary.observe.hubble.filters``). apiary's own ``extensions`` field
of a flow is left out (``Flow.extensions`` is a ``google.protobuf.Any``). A FlowFilter field apiary cannot
evaluate is refused with INVALID_ARGUMENT naming it; a client that falls behind, or a flow that does not
convert, is told with a ``lost_events`` response (never silently).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from apiary import __version__
from apiary.observe.hubble.builder import flow_time_ns, lost_events_response
from apiary.observe.hubble.filters import FlowFilter

from .bus import EventBus
from .grpc_common import Context, abort, fill_unimplemented, from_json, to_json
from .view import AgentView

log = logging.getLogger("apiary.grpc.hubble")
VERSION = f"{__version__}+apiary"




@dataclass
class FlowsQuery:
    """A checked ``GetFlowsRequest``."""

    number: int
    first: bool
    follow: bool
    since_ns: int | None
    until_ns: int | None
    filter: FlowFilter
    mask: Any  # google.protobuf.FieldMask or None

    @classmethod
    def of(cls, req: Any, flow_pb2: ModuleType) -> FlowsQuery:
        """``ValueError`` names the request field at fault."""
        if req.first and req.follow:
            raise ValueError("first: cannot be combined with follow")
        if req.HasField("extensions"):
            raise ValueError("extensions: not supported by apiary")
        allow = [to_json(f) for f in req.whitelist]
        deny = [to_json(f) for f in req.blacklist]
        for name, items in (("whitelist", allow), ("blacklist", deny)):
            for i, f in enumerate(items):
                try:
                    FlowFilter([f])
                except (ValueError, TypeError) as e:
                    raise ValueError(f"{name}[{i}]: {e}") from None
        mask = None
        if req.HasField("field_mask") and req.field_mask.paths:
            if not req.field_mask.IsValidForDescriptor(flow_pb2.Flow.DESCRIPTOR):
                raise ValueError(f"field_mask: {list(req.field_mask.paths)} names a field flow.Flow does not have")
            mask = req.field_mask
        since = req.since.ToNanoseconds() if req.HasField("since") else None
        until = req.until.ToNanoseconds() if req.HasField("until") else None
        if since is not None and until is not None and since > until:
            raise ValueError("since: is after until")
        return cls(req.number, req.first, req.follow, since, until, FlowFilter(allow, deny), mask)

    def in_window(self, t: int) -> bool:
        return (self.since_ns is None or t >= self.since_ns) and (self.until_ns is None or t <= self.until_ns)

    def backlog(self, recent: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """What the ring gives before following: the window and filters, then the first/last ``number``.
        ``number`` 0: everything, except when following from now (no ``since``)."""
        if self.number == 0 and self.follow and self.since_ns is None:
            return []
        picked = [r for r in recent if self.in_window(flow_time_ns(r)) and self.filter.matches(r)]
        if self.number:
            picked = picked[: self.number] if self.first else picked[-self.number :]
        return picked


class Observer:
    """``observer.Observer``: GetFlows, ServerStatus, GetNodes, GetNamespaces (the rest: UNIMPLEMENTED)."""

    def __init__(self, agent: AgentView, where: str) -> None:
        from . import protos

        self.flow_pb2, self.observer_pb2, self.observer_grpc = protos.hubble()
        self.agent = agent
        self.where = where  # the address GetNodes reports
        self.started = time.time()
        self.conversion_errors = 0  # flows that did not convert (each sent as a lost event)
        fill_unimplemented(self, self.observer_pb2.DESCRIPTOR.services_by_name["Observer"], "Hubble Observer")

    def register(self, server: grpc.aio.Server) -> None:
        self.observer_grpc.add_ObserverServicer_to_server(self, server)

    # ------------------------------------------------------------------ helpers
    def _flows(self) -> EventBus | None:
        net = self.agent.network
        return net.flows if net is not None else None

    def _lost(self, source: str, count: int) -> Message:
        msg = self.observer_pb2.GetFlowsResponse()
        return from_json(lost_events_response(source, count, self.agent.cfg.node_name), msg)

    def _message(self, resp: dict[str, Any], mask: Any) -> Message:
        flow = resp.get("flow")
        if isinstance(flow, dict) and "extensions" in flow:  # apiary's (an Any upstream): not carried over gRPC
            resp = {**resp, "flow": {k: v for k, v in flow.items() if k != "extensions"}}
        try:
            msg = from_json(resp, self.observer_pb2.GetFlowsResponse())
        except json_format.ParseError as e:
            self.conversion_errors += 1
            log.warning("a flow did not convert to flow.Flow (sent as a lost event): %s", e)
            return self._lost("UNKNOWN_LOST_EVENT_SOURCE", 1)
        if mask is not None and msg.HasField("flow"):
            kept = self.flow_pb2.Flow()
            mask.MergeMessage(msg.flow, kept)
            msg.flow.CopyFrom(kept)
        return msg

    def _counts(self, bus: EventBus | None) -> tuple[int, int, int]:
        if bus is None:
            return 0, 0, 0
        return len(bus), bus.capacity, bus.published

    # ------------------------------------------------------------------ RPCs
    async def GetFlows(self, request: Any, context: Context) -> AsyncIterator[Message]:  # noqa: N802 - gRPC name
        bus = self._flows()
        if bus is None:
            await abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                "the network datapath is not running in this agent (started with --no-network): no flows",
            )
        try:
            q = FlowsQuery.of(request, self.flow_pb2)
        except ValueError as e:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(e))
        follow = q.follow and (q.until_ns is None or q.until_ns > time.time_ns())
        def keep(resp: dict[str, Any]) -> bool:  # before its queue: its filter, and what ends the stream (--until)
            return q.filter.matches(resp) or (q.until_ns is not None and flow_time_ns(resp) > q.until_ns)

        sub = bus.subscribe(keep) if follow else None  # before the backlog: nothing falls between the two
        try:
            for resp in q.backlog(bus.recent()):
                yield self._message(resp, q.mask)
            if sub is None:
                return
            reported = 0
            while True:
                resp = await sub.queue.get()
                if sub.dropped > reported:  # this client fell behind: say how many it missed
                    yield self._lost("OBSERVER_EVENTS_QUEUE", sub.dropped - reported)
                    reported = sub.dropped
                t = flow_time_ns(resp)
                if q.until_ns is not None and t > q.until_ns:
                    return
                if q.in_window(t) and q.filter.matches(resp):
                    yield self._message(resp, q.mask)
        finally:
            if sub is not None:
                bus.unsubscribe(sub)

    async def ServerStatus(self, request: Any, context: Context) -> Message:  # noqa: N802
        bus = self._flows()
        num, cap, seen = self._counts(bus)
        rate = 0.0
        if bus is not None:
            horizon = time.time_ns() - 60 * 1_000_000_000
            rate = sum(1 for r in bus.recent() if flow_time_ns(r) >= horizon) / 60.0
        return self.observer_pb2.ServerStatusResponse(
            num_flows=num,
            max_flows=cap,
            seen_flows=seen,
            uptime_ns=int((time.time() - self.started) * 1e9),
            num_connected_nodes={"value": 1},
            num_unavailable_nodes={"value": 0},
            version=VERSION,
            flows_rate=rate,
        )

    async def GetNodes(self, request: Any, context: Context) -> Message:  # noqa: N802
        num, cap, seen = self._counts(self._flows())
        node = self.observer_pb2.Node(
            name=self.agent.cfg.node_name,
            version=VERSION,
            address=self.where,
            state="NODE_CONNECTED",
            tls={"enabled": False},
            uptime_ns=int((time.time() - self.started) * 1e9),
            num_flows=num,
            max_flows=cap,
            seen_flows=seen,
        )
        return self.observer_pb2.GetNodesResponse(nodes=[node])

    async def GetNamespaces(self, request: Any, context: Context) -> Message:  # noqa: N802
        net = self.agent.network
        names = sorted({e.namespace for e in net.em.endpoints.values()}) if net is not None else []
        return self.observer_pb2.GetNamespacesResponse(namespaces=[{"namespace": n} for n in names])
