"""API routes of the XDP prefilter (`apiary prefilter`)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .api_common import body_object, in_worker
from .view import AgentView


def add_routes(app: web.Application, agent: AgentView) -> None:
    async def call(fn: Any, *a: Any) -> web.Response:
        return await in_worker(agent, fn, *a, what="prefilter change")

    async def listing(_: web.Request) -> web.Response:
        return await call(agent.prefilter.listing)

    async def add(request: web.Request) -> web.Response:
        return await call(agent.prefilter.add, await body_object(request))

    async def delete(request: web.Request) -> web.Response:
        return await call(agent.prefilter.delete, await body_object(request))

    async def detach(request: web.Request) -> web.Response:
        return await call(agent.prefilter.detach, request.match_info["name"])

    r = app.router
    r.add_get("/v1/prefilter", listing)
    r.add_post("/v1/prefilter", add)
    r.add_post("/v1/prefilter/delete", delete)
    r.add_delete("/v1/prefilter/devices/{name}", detach)
