"""API routes of the network half: endpoints, identities, policies, explain, flows."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web

from apiary.observe.clock import parse_rfc3339_ns
from apiary.observe.hubble.builder import flow_time_ns, lost_events_response
from apiary.policy.explain import parse_http_request
from apiary.policy.fqdn import pattern_problem
from apiary.sensors.network.validate import (
    ValidationError,
    check_endpoint_name,
    check_labels,
    check_namespace,
    check_ports,
)

from .api_common import body_object, body_text, error, in_worker
from .network import Network
from .view import AgentView


def add_routes(app: web.Application, agent: AgentView) -> None:
    def net() -> Network:
        if agent.network is None:
            raise web.HTTPServiceUnavailable(
                text='{"error": "the network datapath is not running in this agent (started with --no-network)"}',
                content_type="application/json",
            )
        return agent.network

    async def call(fn: Any, *a: Any) -> web.Response:
        """Network changes run one at a time on the control-plane worker thread (netlink calls block)."""
        return await in_worker(agent, fn, *a)

    async def endpoints(_: web.Request) -> web.Response:
        n = net()
        return await call(lambda: [n.endpoint_row(e) for e in n.em.endpoints.values()])

    async def endpoint_get(request: web.Request) -> web.Response:
        n = net()
        return await call(lambda: n.endpoint_row(n.em.get(request.match_info["ref"])))

    async def endpoint_create(request: web.Request) -> web.Response:
        n = net()
        body = await body_object(request)
        try:  # checked here too so that a bad request never waits behind the network worker
            name = check_endpoint_name(body.get("name"))
            namespace = check_namespace(body.get("namespace", "default"))
            labels = check_labels(body.get("labels", {}))
            ports = check_ports(body.get("ports", {}))  # {"http": [8080, "TCP"]}
        except ValidationError as e:
            return error(str(e), 400, field=e.field)
        return await call(lambda: n.endpoint_row(n.create_endpoint(name, namespace, labels, ports)))

    async def endpoint_delete(request: web.Request) -> web.Response:
        n = net()
        return await call(lambda: n.endpoint_row(n.delete_endpoint(request.match_info["ref"])))

    async def identities(_: web.Request) -> web.Response:
        n = net()
        users: dict[int, list[str]] = {}
        for e in n.em.endpoints.values():
            users.setdefault(n.identity_of(e), []).append(e.key)
        rows = [
            {"identity": i, "labels": list(lbls), "endpoints": users.get(i, [])}
            for i, lbls in sorted(n.compiled.identities.items())
        ]
        return web.json_response(rows)

    async def policies(_: web.Request) -> web.Response:
        n = net()
        return web.json_response({"revision": n.revision, "policies": n.policy_rows()})

    async def policy_apply(request: web.Request) -> web.Response:
        t0 = time.perf_counter()
        n = net()
        text = await body_text(request)

        def apply() -> dict[str, Any]:
            before = n.revision
            applied = n.apply(text)
            # agent time from the request to the policy in force in the kernel (bench/apply.py reports it)
            elapsed_ms = round(1e3 * (time.perf_counter() - t0), 2)
            return {"revision_before": before, "applied": applied, "elapsed_ms": elapsed_ms}

        return await call(apply)

    async def policy_get(request: web.Request) -> web.Response:
        n = net()
        name, given = request.match_info["name"], request.query.get("namespace")
        ns = n.policy_scope(name, given)
        for p in n.policies.values():
            if p.name == name and p.namespace == ns:
                return web.json_response(
                    {"kind": p.kind, "namespace": p.namespace, "name": p.name, "revision": p.revision, "yaml": p.source}
                )
        return error(n.policy_not_found(name, ns, given is None), 404)

    async def policy_delete(request: web.Request) -> web.Response:
        n = net()
        return await call(n.delete_policy, request.match_info["name"], request.query.get("namespace"))

    async def explain(request: web.Request) -> web.Response:
        n = net()
        q = request.query
        try:
            port_s, _, proto = q.get("port", "").partition("/")
            if port_s and not (port_s.isascii() and port_s.isdigit()):
                raise ValueError
            port = int(port_s) if port_s else 0
            if not 0 <= port <= 65535:
                raise ValueError
        except ValueError:
            return error("port: expected PORT[/PROTOCOL] with PORT 0-65535, e.g. 5678/TCP", field="port")
        if "from" not in q or "to" not in q:
            return error("from and to are required (namespace/name of an endpoint, or an IPv4 address)")
        http = None
        if "http_method" in q or "http_path" in q or "http_header" in q:
            if not port_s:
                return error("port: an HTTP request needs the server's port, e.g. 8080/TCP", field="port")
            try:
                http = parse_http_request(q.get("http_method", "GET"), q.get("http_path", "/"),
                                          tuple(q.getall("http_header", [])))
            except ValueError as e:
                return error(str(e), field="http")
        proto = (proto or q.get("protocol") or "TCP").upper()
        sv = agent.services
        if sv is not None:  # a service address: its backends decide, after translation (or it is unreachable)
            return await call(sv.explain_to, q["from"], q["to"], port, proto, http)
        return await call(n.explain, q["from"], q["to"], port, proto, http)

    async def flows(request: web.Request) -> web.StreamResponse:
        n = net()
        q = request.query
        pairs: list[tuple[str, str]] = []
        for item in q.getall("filter", []):
            flag, _, value = item.partition("=")
            pairs.append((flag, value))
        try:
            flt = n.flow_filter(pairs)
            last, first = int(q.get("last", "20")), int(q.get("first", "0"))
            if last < 0 or first < 0:
                raise ValueError("last, first: must be >= 0")
            window = [parse_rfc3339_ns(q[k]) if q.get(k) else None for k in ("since", "until")]
        except ValueError as e:
            return error(str(e))
        since_ns, until_ns = window

        def keep(f: dict[str, Any]) -> bool:
            if since_ns is not None or until_ns is not None:
                t = flow_time_ns(f)
                if (since_ns is not None and t < since_ns) or (until_ns is not None and t > until_ns):
                    return False
            return flt.matches(f)
        follow = q.get("follow", "0") in ("1", "true", "yes")
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        fol = n.flows.subscribe(flt.matches) if follow else None  # filtered before its queue
        try:
            if first:  # the oldest in the window; --all, or a window without --last: every flow in it
                backlog = n.flows.first_matching(keep, first)
            elif q.get("all") == "1" or ((since_ns is not None or until_ns is not None) and "last" not in q):
                backlog = n.flows.first_matching(keep)
            else:
                backlog = n.flows.last_matching(keep, last)
            for f in backlog:
                await resp.write(json.dumps(f, separators=(",", ":")).encode() + b"\n")
            if fol is None:
                return resp
            reported = 0
            while True:
                f = await fol.queue.get()
                if fol.dropped > reported:  # never silently: this reader fell behind
                    lost = lost_events_response("OBSERVER_EVENTS_QUEUE", fol.dropped - reported, agent.cfg.node_name)
                    reported = fol.dropped
                    if n.metrics is not None:  # hubble_lost_events_total{source="observer_events_queue"}
                        n.metrics.observe(lost)
                    await resp.write(json.dumps(lost, separators=(",", ":")).encode() + b"\n")
                if flt.matches(f):
                    await resp.write(json.dumps(f, separators=(",", ":")).encode() + b"\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            if fol is not None:
                n.flows.unsubscribe(fol)
        return resp

    async def fqdn_cache(request: web.Request) -> web.Response:
        """The DNS proxy's learned names (``cilium fqdn cache list``); ?endpoint=ID&matchpattern=PATTERN."""
        n = net()
        ep_text, pattern = request.query.get("endpoint"), request.query.get("matchpattern")
        try:
            ep = int(ep_text) if ep_text else None
        except ValueError:
            return error(f"endpoint: {ep_text!r} is not an endpoint id", 400)
        if pattern and (why := pattern_problem(pattern)):
            return error(f"matchpattern: {why}", 400)
        return web.json_response(n.fqdn.rows(ep, pattern))

    r = app.router
    r.add_get("/v1/fqdn/cache", fqdn_cache)
    r.add_get("/v1/endpoints", endpoints)
    r.add_post("/v1/endpoints", endpoint_create)
    r.add_get("/v1/endpoints/{ref:.+}", endpoint_get)
    r.add_delete("/v1/endpoints/{ref:.+}", endpoint_delete)
    r.add_get("/v1/identities", identities)
    r.add_get("/v1/policies", policies)
    r.add_post("/v1/policies", policy_apply)
    r.add_get("/v1/policies/{name}", policy_get)
    r.add_delete("/v1/policies/{name}", policy_delete)
    r.add_get("/v1/policy/explain", explain)
    r.add_get("/v1/flows", flows)
