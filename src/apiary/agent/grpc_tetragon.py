"""Tetragon's gRPC API (``tetragon.FineGuidanceSensors``, ``tetragon/sensors.proto``) over the agent's events and
tracing policies.

GetEvents streams the process and tracing events of the agent's event bus (already in Tetragon's JSON shape)
as ``GetEventsResponse`` messages (``json_format.ParseDict``, strict), chosen by the request's allow and deny
lists (``apiary.observe.tetragon.allowdeny``). Policies go through the same control-plane worker as
``apiary tp``. A client that falls behind is told how many events it missed with a ``rate_limit_info``
response; an event that does not convert is counted, logged and reported the same way (never silently).
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import grpc
import yaml
from google.protobuf import json_format
from google.protobuf.message import Message

from apiary import __version__
from apiary.observe.tetragon.allowdeny import AllowDeny
from apiary.tracing.load import load_tracing_policies

from .grpc_common import Context, abort, fill_unimplemented, from_json, in_worker, to_json
from .tracing import Tracing
from .view import AgentView

log = logging.getLogger("apiary.grpc.tetragon")
_HOOK = re.compile(r"^(\w+)\[(\d+)\]")
_SENSORS = {  # Tetragon's sensor per policy section
    "kprobes": "generic_kprobe",
    "tracepoints": "generic_tracepoint",
    "uprobes": "generic_uprobe",
    "lsmhooks": "generic_lsm",
}
_MODES = {"TP_MODE_ENFORCE": "enforce", "TP_MODE_MONITOR": "monitor"}


def _names(text: str) -> list[tuple[str, str]]:
    """(namespace, name) of each document of a TracingPolicy YAML, as far as it parses (the loader reports the
    rest)."""
    out = []
    try:
        for doc in yaml.safe_load_all(text):
            meta = doc.get("metadata") if isinstance(doc, dict) else None
            if isinstance(meta, dict) and isinstance(meta.get("name"), str):
                out.append((str(meta.get("namespace") or ""), meta["name"]))
    except yaml.YAMLError:
        pass
    return out


class Sensors:
    """``tetragon.FineGuidanceSensors``: GetEvents, GetHealth, GetVersion, List/Add/Delete/Configure/Enable/
    DisableTracingPolicy (the rest: UNIMPLEMENTED)."""

    def __init__(self, agent: AgentView) -> None:
        from . import protos

        self.tetragon_pb2, self.events_pb2, self.sensors_pb2, self.sensors_grpc = protos.tetragon()
        self.agent = agent
        self.conversion_errors = 0  # events that did not convert (each reported in rate_limit_info)
        service = self.sensors_pb2.DESCRIPTOR.services_by_name["FineGuidanceSensors"]
        fill_unimplemented(self, service, "Tetragon FineGuidanceSensors")

    def register(self, server: grpc.aio.Server) -> None:
        self.sensors_grpc.add_FineGuidanceSensorsServicer_to_server(self, server)

    def _missed(self, count: int) -> Message:
        return self.events_pb2.GetEventsResponse(
            rate_limit_info={"number_of_dropped_process_events": count}, node_name=self.agent.cfg.node_name
        )

    async def _tracing(self, context: Context) -> Tracing:
        if self.agent.tracing is None:
            await abort(context, grpc.StatusCode.FAILED_PRECONDITION, "the tracing sensor is not running in this agent")
        return self.agent.tracing

    @staticmethod
    async def _no_domain(request: Any, context: Context) -> None:
        if request.domain:
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"domain: {request.domain!r}: apiary has no policy domains (leave it empty)",
            )

    # ------------------------------------------------------------------ events
    async def GetEvents(self, request: Any, context: Context) -> AsyncIterator[Message]:  # noqa: N802 - gRPC name
        if request.HasField("aggregation_options"):
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "aggregation_options: not supported by apiary")
        if len(request.field_filters):
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "field_filters: not supported by apiary")
        try:
            flt = AllowDeny([to_json(f) for f in request.allow_list], [to_json(f) for f in request.deny_list])
        except ValueError as e:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(e))
        bus = self.agent.events
        sub = bus.subscribe(flt.matches)  # filtered before its queue: only what it keeps can be missed
        reported = 0
        failed = 0
        try:
            while True:
                ev = await sub.queue.get()
                if sub.dropped > reported or failed:
                    yield self._missed(sub.dropped - reported + failed)
                    reported, failed = sub.dropped, 0
                if not flt.matches(ev):
                    continue
                try:
                    msg = from_json(ev, self.events_pb2.GetEventsResponse())
                except json_format.ParseError as e:
                    self.conversion_errors += 1
                    failed += 1
                    log.warning("an event did not convert to tetragon.GetEventsResponse (reported as missed): %s", e)
                    continue
                yield msg
        finally:
            bus.unsubscribe(sub)

    # ------------------------------------------------------------------ health and version
    async def GetHealth(self, request: Any, context: Context) -> Message:  # noqa: N802
        status = {"event": "HEALTH_STATUS_TYPE_STATUS", "status": "HEALTH_STATUS_RUNNING", "details": "running"}
        return self.tetragon_pb2.GetHealthStatusResponse(health_status=[status])

    async def GetVersion(self, request: Any, context: Context) -> Message:  # noqa: N802
        return self.sensors_pb2.GetVersionResponse(version=__version__)

    # ------------------------------------------------------------------ tracing policies
    def _status(self, row: dict[str, Any]) -> dict[str, Any]:
        hooks = []
        for h in row.get("hooks", []):
            m = _HOOK.match(h["source"])
            hooks.append(
                {
                    "section": m.group(1) if m else h["source"],
                    "hook_idx": int(m.group(2)) if m else 0,
                    "state": "STATUS_LOADED",
                    "hook_description": f"{h['source']}: {h['realisation']}",
                }
            )
        enabled = row.get("state") == "enabled"
        return {
            "name": row["name"],
            "namespace": row.get("namespace") or "",
            "info": "; ".join(row.get("notes") or []),
            "sensors": sorted({_SENSORS[h["section"]] for h in hooks if h["section"] in _SENSORS}),
            "enabled": enabled,
            "state": "TP_STATE_ENABLED" if enabled else "TP_STATE_DISABLED",
            "kernel_memory_bytes": str(int(row.get("kernel_memory") or 0)),
            "mode": "TP_MODE_MONITOR" if row.get("mode") == "monitor" else "TP_MODE_ENFORCE",
            "stats": {"action_counters": {k: str(v) for k, v in row["action_counters"].items()}},
            "hook_statuses": hooks,
        }

    async def ListTracingPolicies(self, request: Any, context: Context) -> Message:  # noqa: N802
        await self._no_domain(request, context)
        t = await self._tracing(context)
        rows = await in_worker(self.agent, context, t.rows)
        resp = self.sensors_pb2.ListTracingPoliciesResponse()
        return from_json({"policies": [self._status(r) for r in rows]}, resp)

    async def AddTracingPolicy(self, request: Any, context: Context) -> Message:  # noqa: N802
        await self._no_domain(request, context)
        t = await self._tracing(context)
        await in_worker(self.agent, context, load_tracing_policies, request.yaml)  # a bad field first, as Tetragon
        have = {(r.get("namespace") or "", r["name"]) for r in await in_worker(self.agent, context, t.rows)}
        for ns, name in _names(request.yaml):
            if (ns, name) in have:
                where = f" in namespace {ns}" if ns else ""
                await abort(
                    context,
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"tracing policy {name!r}{where} already exists: delete it first (`apiary tp apply` replaces)",
                )
        await in_worker(self.agent, context, t.apply, request.yaml)
        return self.sensors_pb2.AddTracingPolicyResponse()

    async def DeleteTracingPolicy(self, request: Any, context: Context) -> Message:  # noqa: N802
        await self._no_domain(request, context)
        t = await self._tracing(context)
        await in_worker(self.agent, context, t.delete, request.name, request.namespace)
        return self.sensors_pb2.DeleteTracingPolicyResponse()

    async def ConfigureTracingPolicy(self, request: Any, context: Context) -> Message:  # noqa: N802
        await self._no_domain(request, context)
        t = await self._tracing(context)
        mode = None
        if request.HasField("mode"):
            name = self.sensors_pb2.TracingPolicyMode.Name(request.mode)
            if name not in _MODES:
                await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"mode: {name} (apiary has {', '.join(_MODES)})")
            mode = _MODES[name]
        if request.HasField("enable"):
            await in_worker(self.agent, context, t.set_enabled, request.name, request.namespace, request.enable)
        if mode is not None:
            await in_worker(self.agent, context, t.set_mode, request.name, request.namespace, mode)
        return self.sensors_pb2.ConfigureTracingPolicyResponse()

    async def EnableTracingPolicy(self, request: Any, context: Context) -> Message:  # noqa: N802
        await self._no_domain(request, context)
        t = await self._tracing(context)
        await in_worker(self.agent, context, t.set_enabled, request.name, request.namespace, True)
        return self.sensors_pb2.EnableTracingPolicyResponse()

    async def DisableTracingPolicy(self, request: Any, context: Context) -> Message:  # noqa: N802
        await self._no_domain(request, context)
        t = await self._tracing(context)
        await in_worker(self.agent, context, t.set_enabled, request.name, request.namespace, False)
        return self.sensors_pb2.DisableTracingPolicyResponse()
