"""API routes for TracingPolicy."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from apiary.textutil import clip

from .api_common import body_text, error, in_worker
from .tracing import Tracing
from .view import AgentView


def add_routes(app: web.Application, agent: AgentView) -> None:
    def tr() -> Tracing:
        if agent.tracing is None:
            raise web.HTTPServiceUnavailable(
                text='{"error": "the tracing sensor is not running in this agent"}', content_type="application/json"
            )
        return agent.tracing

    async def call(fn: Any, *a: Any) -> web.Response:
        return await in_worker(agent, fn, *a, what="tracing policy")

    async def listing(_: web.Request) -> web.Response:
        t = tr()
        return await call(t.rows)

    async def apply(request: web.Request) -> web.Response:
        t = tr()
        text = await body_text(request)
        return await call(t.apply, text)

    async def delete(request: web.Request) -> web.Response:
        t = tr()
        return await call(t.delete, request.match_info["name"], request.query.get("namespace"))

    async def state(request: web.Request) -> web.Response:
        t = tr()
        name, ns, op = request.match_info["name"], request.query.get("namespace"), request.match_info["op"]
        if op in ("enable", "disable"):
            return await call(t.set_enabled, name, ns, op == "enable")
        if op == "mode":
            return await call(t.set_mode, name, ns, request.query.get("mode", ""))
        return error(f"unknown operation {clip(op)!r}", 404)

    r = app.router
    r.add_get("/v1/tracingpolicies", listing)
    r.add_post("/v1/tracingpolicies", apply)
    r.add_delete("/v1/tracingpolicies/{name}", delete)
    r.add_post("/v1/tracingpolicies/{name}/{op}", state)
