"""What every API route shares: request bodies decoded strictly, worker calls bounded in time, and user
mistakes answered with 400 and the field at fault (never 500)."""

from __future__ import annotations

import asyncio
import errno
import json
from typing import Any

from aiohttp import web

from apiary.loader import BpfError
from apiary.policy.models import PolicyError
from apiary.sensors.network.endpoints import EndpointError
from apiary.sensors.network.sensor import CapacityError
from apiary.sensors.network.validate import ValidationError
from apiary.sensors.prefilter.cidrs import PrefilterError
from apiary.textutil import clip, clip_quoted

from .services import LBCapacityError, ServiceError
from .view import AgentView

UTF8 = ("utf-8", "utf8", "us-ascii", "ascii")


NOT_FOUND = ("no policy ", "no tracing policy ")  # a get/delete/mode change of what is not there


def error(msg: str, status: int = 400, **extra: Any) -> web.Response:
    """An error answer; values the user sent that the message quotes are cut to 80 characters."""
    return web.json_response({"error": clip_quoted(msg), **extra}, status=status)


def http_error(cls: type[web.HTTPException], msg: str) -> web.HTTPException:
    """An exception a route can raise from anywhere; the client gets ``{"error": msg}``."""
    return cls(text=json.dumps({"error": msg}), content_type="application/json")


def policy_rejected(e: PolicyError, what: str = "policy") -> web.Response:
    problems = [
        {"field": clip(p.path, 200), "reason": clip_quoted(p.reason), "unsupported": p.unsupported} for p in e.problems
    ]
    n = len(problems)
    return error(f"{what} rejected ({n} problem{'s' if n != 1 else ''}; nothing was changed)", problems=problems)


async def body_text(request: web.Request) -> str:
    """The request body as UTF-8 text (the size is bounded by the application's client_max_size: 413)."""
    charset = (request.charset or "utf-8").lower()
    if charset not in UTF8:
        raise http_error(web.HTTPBadRequest, f"Content-Type: charset {clip(charset)} is not supported; send UTF-8")
    raw = await request.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise http_error(
            web.HTTPBadRequest, f"body: not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start})"
        ) from None


def _bad_string(value: Any, path: str) -> str | None:
    """The path of the first string (key or value) in decoded JSON that is not Unicode text (lone surrogate)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "body"
    elif isinstance(value, dict):
        for k, v in value.items():
            sub = f"{path}.{k}" if path else str(k)
            bad = _bad_string(k, sub) or _bad_string(v, sub)
            if bad:
                return bad
    elif isinstance(value, list):
        for i, v in enumerate(value):
            bad = _bad_string(v, f"{path}[{i}]")
            if bad:
                return bad
    return None


async def body_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or 400 saying why it is not one."""
    text = await body_text(request)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise http_error(
            web.HTTPBadRequest, f"body: invalid JSON: {e.msg} (line {e.lineno}, column {e.colno})"
        ) from None
    except RecursionError:
        raise http_error(web.HTTPBadRequest, "body: JSON nested too deeply") from None
    if not isinstance(value, dict):
        raise http_error(web.HTTPBadRequest, f"body: expected a JSON object, not {type(value).__name__}")
    bad = _bad_string(value, "")
    if bad:
        raise http_error(web.HTTPBadRequest, f"{clip(bad)}: holds a lone surrogate (not valid Unicode text)")
    return value


async def in_worker(agent: AgentView, fn: Any, *args: Any, what: str = "policy") -> web.Response:
    """Run ``fn`` on the agent's control-plane worker, bounded in time, and answer with its result as JSON;
    the errors a user can cause become 4xx with their reason."""
    loop = asyncio.get_running_loop()
    limit = agent.cfg.api_request_timeout
    try:
        res = await asyncio.wait_for(loop.run_in_executor(agent.net_pool, fn, *args), limit)
    except TimeoutError:
        busy = agent.net_pool.busy()
        doing = f" (busy with {busy[0]} for {busy[1]:.0f} s)" if busy else ""
        return error(
            f"the agent's control-plane worker did not answer within {limit:g} s{doing}; the request may still "
            "take effect: check its outcome before retrying",
            503,
        )
    except PolicyError as e:
        if e.problems and all(p.path == "metadata.name" and p.reason.startswith(NOT_FOUND) for p in e.problems):
            return error("; ".join(p.reason for p in e.problems), 404)  # nothing was rejected: it is not there
        return policy_rejected(e, what)
    except ServiceError as e:
        return error(str(e), e.status)
    except LBCapacityError as e:
        return error(str(e), 409)
    except PrefilterError as e:
        return error(str(e), e.status, field=e.field)
    except ValidationError as e:
        return error(str(e), 400, field=e.field)
    except CapacityError as e:
        return error(str(e), 409)
    except EndpointError as e:
        return error(str(e), 404 if str(e).startswith("no endpoint") else 400)
    except BpfError as e:
        return error(str(e), 409 if e.errno == errno.ENOSPC else 500)
    return web.json_response(res)
