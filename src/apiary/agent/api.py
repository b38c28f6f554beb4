"""The agent's local API: HTTP over a root-only unix socket, JSON, events as JSON lines."""

from __future__ import annotations

import asyncio
import json
import os
import traceback
from typing import TYPE_CHECKING, Any

from aiohttp import web

from apiary import __version__
from apiary.observe.filters import EventFilter, parse_since

if TYPE_CHECKING:
    from .daemon import Agent

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "apiary agent API", "version": __version__},
    "paths": {
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics: hubble_flows_processed_total, hubble_drop_total, "
                "hubble_policy_verdicts_total, hubble_lost_events_total, tetragon_events_total",
                "responses": {"200": {"description": "text exposition format"}},
            }
        },
        "/v1/health": {"get": {"summary": "Liveness", "responses": {"200": {"description": "agent is up"}}}},
        "/v1/status": {
            "get": {
                "summary": "Programs with run count and time, maps with fill, process cache, event accounting",
                "responses": {"200": {"description": "status object"}},
            }
        },
        "/v1/bpf": {
            "get": {"summary": "apiary's own programs, links and maps", "responses": {"200": {"description": "lists"}}}
        },
        "/v1/events": {
            "get": {
                "summary": "Process events in Tetragon's JSON export shape, one object per line",
                "parameters": [
                    {"name": "pid", "in": "query", "schema": {"type": "array", "items": {"type": "integer"}}},
                    {"name": "binary", "in": "query", "schema": {"type": "string", "format": "regex"}},
                    {"name": "type", "in": "query", "schema": {"type": "array", "items": {"type": "string"}}},
                    {
                        "name": "since",
                        "in": "query",
                        "schema": {"type": "string"},
                        "description": "relative (30s, 5m, 1h) or RFC 3339; replays recent events first",
                    },
                    {"name": "count", "in": "query", "schema": {"type": "integer", "minimum": 1}},
                    {"name": "follow", "in": "query", "schema": {"type": "boolean", "default": True}},
                ],
                "responses": {
                    "200": {"description": "application/x-ndjson stream"},
                    "400": {"description": "bad parameter; body {error}"},
                },
            }
        },
    },
}


def _line(ev: dict[str, Any]) -> bytes:
    return json.dumps(ev, separators=(",", ":")).encode() + b"\n"


def _bad(msg: str) -> web.Response:
    return web.json_response({"error": msg}, status=400)


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """An unexpected failure is one JSON line for the client and a traceback in the agent's log."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        return web.json_response({"error": f"internal error in the agent: {type(e).__name__}: {e}"}, status=500)


def build_app(agent: Agent) -> web.Application:
    app = web.Application(middlewares=[_errors])

    async def health(_: web.Request) -> web.Response:
        return web.json_response(
            {"ok": True, "version": __version__, "node_name": agent.cfg.node_name, "pid": os.getpid()}
        )

    async def status(_: web.Request) -> web.Response:
        return web.json_response(agent.status())

    async def bpf(_: web.Request) -> web.Response:
        return web.json_response(agent.bpf_list())

    async def metrics(_: web.Request) -> web.Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return web.Response(body=generate_latest(agent.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def openapi(_: web.Request) -> web.Response:
        return web.json_response(OPENAPI)

    async def events(request: web.Request) -> web.StreamResponse:
        q = request.query
        try:
            pids = {int(p) for p in q.getall("pid", [])}
        except ValueError:
            return _bad("pid: must be an integer")
        count = 0
        if "count" in q:
            try:
                count = int(q["count"])
            except ValueError:
                return _bad("count: must be an integer")
            if count < 1:
                return _bad("count: must be at least 1")
        try:
            since = parse_since(q["since"]) if "since" in q else None
            flt = EventFilter.from_options(
                pids=pids, binary=q.get("binary"), event_types=q.getall("type", []), since=since
            )
        except ValueError as e:
            return _bad(str(e))
        follow = q.get("follow", "1") not in ("0", "false", "no")

        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        sent = 0
        backlog = list(agent.history) if (since is not None or not follow) else []
        from .daemon import Subscriber

        sub = Subscriber(asyncio.Queue(maxsize=agent.cfg.client_queue), flt)
        if follow:
            agent.subscribers.append(sub)
        try:
            for ev in backlog:
                if flt.matches(ev):
                    await resp.write(_line(ev))
                    sent += 1
                    if count and sent >= count:
                        return resp
            if not follow:
                return resp
            reported = 0
            while True:
                ev = await sub.queue.get()
                if sub.dropped > reported:
                    lost = sub.dropped - reported
                    reported = sub.dropped
                    await resp.write(b'{"apiary_lost_events":{"count":%d,"source":"client_queue"}}\n' % lost)
                if flt.matches(ev):
                    await resp.write(_line(ev))
                    sent += 1
                    if count and sent >= count:
                        break
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            if sub in agent.subscribers:
                agent.subscribers.remove(sub)
        return resp

    app.router.add_get("/v1/health", health)
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/bpf", bpf)
    app.router.add_get("/v1/events", events)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/metrics", metrics)
    from . import api_network, api_tracing

    api_network.add_routes(app, agent)
    api_tracing.add_routes(app, agent)
    return app


async def serve(agent: Agent) -> web.AppRunner:
    path = agent.cfg.socket_path
    if os.path.exists(path):
        os.unlink(path)  # stale: we hold the lock, so nobody else serves it
    runner = web.AppRunner(build_app(agent), handle_signals=False, access_log=None)
    await runner.setup()
    old = os.umask(0o177)
    try:
        site = web.UnixSite(runner, path)
        await site.start()
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    return runner
