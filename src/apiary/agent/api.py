"""The agent's local API: HTTP over a root-only unix socket, JSON, events as JSON lines."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
from typing import Any

from aiohttp import web

from apiary import __version__
from apiary.observe.tetragon.filters import EventFilter, parse_since
from apiary.textutil import clip

from . import api_network, api_prefilter, api_services, api_tracing
from .api_common import error
from .view import AgentView

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "apiary agent API", "version": __version__},
    "paths": {
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (the same as `--metrics-addr` serves): hubble_*, tetragon_*, apiary_*",
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
        "/v1/config": {
            "get": {"summary": "The agent's configuration", "responses": {"200": {"description": "object"}}}
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


log = logging.getLogger("apiary.api")
SHUTDOWN_GRACE = 3.0  # seconds requests in flight get to finish when the agent stops
MAX_BODY = 4 << 20  # bytes of a request body (413 beyond): YAML policies are bounded again by characters


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """An unexpected failure is one JSON line for the client and a traceback in the agent's log."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400 or e.content_type == "application/json":
            raise
        msg = clip(e.text or e.reason, 200)  # aiohttp's own (no route, 413): JSON like every other error
        if e.status in (404, 405):
            msg = f"no API route for {request.method} {clip(repr(request.path))}"
        return web.json_response({"error": msg}, status=e.status)
    except Exception as e:  # noqa: BLE001
        log.exception("%s %s failed", request.method, request.path)
        msg = f"internal error in the agent: {type(e).__name__}: {clip(str(e), 200)}"
        return web.json_response({"error": msg}, status=500)


def build_app(agent: AgentView) -> web.Application:
    app = web.Application(middlewares=[_errors], client_max_size=MAX_BODY)

    async def health(_: web.Request) -> web.Response:
        return web.json_response(
            {"ok": True, "version": __version__, "node_name": agent.cfg.node_name, "pid": os.getpid()}
        )

    async def status(_: web.Request) -> web.Response:
        return web.json_response(agent.status())

    async def bpf(_: web.Request) -> web.Response:
        return web.json_response(agent.bpf_list())

    async def config(_: web.Request) -> web.Response:  # what the agent runs with (for sysdump)
        return web.json_response(dataclasses.asdict(agent.cfg))

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
            return error("pid: must be an integer")
        count = 0
        if "count" in q:
            try:
                count = int(q["count"])
            except ValueError:
                return error("count: must be an integer")
            if count < 1:
                return error("count: must be at least 1")
        try:
            since = parse_since(q["since"]) if "since" in q else None
            flt = EventFilter.from_options(
                pids=pids, binary=q.get("binary"), event_types=q.getall("type", []), since=since
            )
        except ValueError as e:
            return error(str(e))
        follow = q.get("follow", "1") not in ("0", "false", "no")

        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        sent = 0
        backlog = agent.events.recent() if (since is not None or not follow) else []
        sub = agent.events.subscribe(flt.matches) if follow else None  # filtered before its queue
        try:
            for ev in backlog:
                if flt.matches(ev):
                    await resp.write(_line(ev))
                    sent += 1
                    if count and sent >= count:
                        return resp
            if sub is None:
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
            if sub is not None:
                agent.events.unsubscribe(sub)
        return resp

    app.router.add_get("/v1/health", health)
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/bpf", bpf)
    app.router.add_get("/v1/config", config)
    app.router.add_get("/v1/events", events)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/metrics", metrics)
    api_network.add_routes(app, agent)
    api_tracing.add_routes(app, agent)
    api_prefilter.add_routes(app, agent)
    api_services.add_routes(app, agent)
    return app


class ConnectionLimit:
    """At most ``limit`` API connections: past it, the oldest connection waiting for a request is closed to make
    room (so a flood of idle connections never locks out the CLI or the health route); when every connection is
    busy with a request, the new one gets a 503 and is closed. The file descriptors stay far below
    RLIMIT_NOFILE, so accept() never fails for lack of them."""

    REFUSED = (
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n%s"
    )

    def __init__(self, server: web.Server, limit: int) -> None:
        self.server, self.limit = server, limit
        self.accept = server.connection_made
        self.evicted = 0
        self.refused = 0

    def connection_made(self, handler: Any, transport: asyncio.Transport) -> None:
        conns = [h for h in self.server.connections if h.transport is not None]  # closed ones may linger
        if len(conns) >= self.limit:
            idle = [h for h in conns if not getattr(h, "_request_in_progress", True)]
            if not idle:
                self.refused += 1
                body = json.dumps({"error": f"too many API connections (limit {self.limit}), all busy"}).encode()
                transport.write(self.REFUSED % (len(body), body))
                handler.force_close()
                return
            self.evicted += 1
            idle[0].force_close()
        self.accept(handler, transport)

    def stats(self) -> dict[str, int]:
        return {
            "limit": self.limit,
            "open": len(self.server.connections),
            "evicted_idle": self.evicted,
            "refused_busy": self.refused,
        }


async def serve(agent: AgentView) -> web.AppRunner:
    path = agent.cfg.socket_path
    if os.path.exists(path):
        os.unlink(path)  # stale: we hold the lock, so nobody else serves it
    # keepalive_timeout also closes a connection that never sends a request (aiohttp arms it at accept)
    # handler_cancellation: a stream whose client went away ends at once (its subscriber with it)
    runner = web.AppRunner(
        build_app(agent),
        handle_signals=False,
        access_log=None,
        keepalive_timeout=agent.cfg.api_idle_timeout,
        handler_cancellation=True,
    )
    await runner.setup()
    assert runner.server is not None
    limit = ConnectionLimit(runner.server, agent.cfg.api_max_connections)
    runner.server.connection_made = limit.connection_made  # type: ignore[method-assign]
    agent.api_connections = limit
    old = os.umask(0o177)
    try:
        site = web.UnixSite(runner, path, shutdown_timeout=SHUTDOWN_GRACE)
        await site.start()
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    return runner
