"""API routes of the services (`apiary service`, `apiary apply -f` for Service/EndpointSlice documents)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from .api_common import body_text, error, in_worker
from .services import ServicesControl
from .view import AgentView


def add_routes(app: web.Application, agent: AgentView) -> None:
    def svc() -> ServicesControl:
        if agent.services is None:
            raise web.HTTPServiceUnavailable(
                text='{"error": "services need the network datapath (this agent runs with --no-network)"}',
                content_type="application/json",
            )
        return agent.services

    async def call(fn: Any, *a: Any) -> web.Response:
        return await in_worker(agent, fn, *a, what="services")

    async def listing(_: web.Request) -> web.Response:
        return await call(svc().listing)

    async def get(request: web.Request) -> web.Response:
        s = svc()
        return await call(s.get, f"{request.match_info['ns']}/{request.match_info['name']}")

    async def apply(request: web.Request) -> web.Response:
        s = svc()
        text = await body_text(request)
        if request.content_type == "application/json":  # {"yaml": "..."} as well as the YAML itself
            try:
                body = json.loads(text)
            except json.JSONDecodeError as e:
                return error(f"body: invalid JSON: {e.msg} (line {e.lineno}, column {e.colno})")
            if not isinstance(body, dict) or not isinstance(body.get("yaml"), str):
                return error('body: expected {"yaml": "<Service/EndpointSlice documents>"}', field="yaml")
            text = body["yaml"]
        return await call(s.apply, text)

    async def delete(request: web.Request) -> web.Response:
        s = svc()
        kind = request.query.get("kind", "Service")
        return await call(s.delete, kind, f"{request.match_info['ns']}/{request.match_info['name']}")

    async def delete_many(request: web.Request) -> web.Response:
        s = svc()
        try:
            body = json.loads(await body_text(request))
        except json.JSONDecodeError as e:
            return error(f"body: invalid JSON: {e.msg} (line {e.lineno}, column {e.colno})")
        items = body.get("items") if isinstance(body, dict) else None
        if not isinstance(items, list):
            return error('body: expected {"items": [{"kind": "Service", "name": "namespace/name"}, ...]}',
                         field="items")
        pairs = []
        for i, it in enumerate(items):
            if not isinstance(it, dict) or not isinstance(it.get("name"), str) \
                    or not isinstance(it.get("kind", "Service"), str):
                return error(f'items[{i}]: expected {{"kind": "Service", "name": "namespace/name"}}',
                             field=f"items[{i}]")
            pairs.append((it.get("kind", "Service"), it["name"]))
        return await call(s.delete_many, pairs)

    r = app.router
    r.add_get("/v1/services", listing)
    r.add_post("/v1/services", apply)
    r.add_get("/v1/services/{ns}/{name}", get)
    r.add_delete("/v1/services/{ns}/{name}", delete)
    r.add_post("/v1/services/delete", delete_many)  # many in one change (`apiary service delete A B`, `-f`)
