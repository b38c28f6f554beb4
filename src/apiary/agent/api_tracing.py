"""API routes for TracingPolicy."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiohttp import web

from apiary.loader import BpfError
from apiary.policy.models import PolicyError

if TYPE_CHECKING:
    from .daemon import Agent


def add_routes(app: web.Application, agent: Agent) -> None:
    def tr() -> Any:
        if agent.tracing is None:
            raise web.HTTPServiceUnavailable(
                text='{"error": "the tracing sensor is not running in this agent"}', content_type="application/json"
            )
        return agent.tracing

    async def call(fn: Any, *a: Any) -> web.Response:
        try:
            res = await asyncio.get_running_loop().run_in_executor(agent.net_pool, fn, *a)
            return web.json_response(res)
        except PolicyError as e:
            problems = [{"field": p.path, "reason": p.reason, "unsupported": p.unsupported} for p in e.problems]
            n = len(problems)
            return web.json_response(
                {
                    "error": f"tracing policy rejected ({n} problem{'s' if n != 1 else ''}; nothing was changed)",
                    "problems": problems,
                },
                status=400,
            )
        except BpfError as e:
            return web.json_response({"error": str(e)}, status=409 if e.errno == 28 else 500)

    async def listing(_: web.Request) -> web.Response:
        t = tr()
        return await call(t.rows)

    async def apply(request: web.Request) -> web.Response:
        t = tr()
        text = await request.text()
        return await call(t.apply, text)

    async def delete(request: web.Request) -> web.Response:
        t = tr()
        return await call(t.delete, request.match_info["name"], request.query.get("namespace", ""))

    async def state(request: web.Request) -> web.Response:
        t = tr()
        name, ns, op = request.match_info["name"], request.query.get("namespace", ""), request.match_info["op"]
        if op in ("enable", "disable"):
            return await call(t.set_enabled, name, ns, op == "enable")
        if op == "mode":
            return await call(t.set_mode, name, ns, request.query.get("mode", ""))
        return web.json_response({"error": f"unknown operation {op!r}"}, status=404)

    r = app.router
    r.add_get("/v1/tracingpolicies", listing)
    r.add_post("/v1/tracingpolicies", apply)
    r.add_delete("/v1/tracingpolicies/{name}", delete)
    r.add_post("/v1/tracingpolicies/{name}/{op}", state)
