"""Thin client of the agent's unix-socket API: every call bounded in time, every failure one clear line."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import httpx

from apiary.agent.config import default_socket

DEFAULT_TIMEOUT = 60.0  # seconds to wait for an answer (a large policy can take a while to apply)


class AgentUnreachable(Exception):
    """The agent cannot be reached, stopped answering or went away."""


class ApiError(Exception):
    """The agent refused the request; ``problems`` lists ``{field, reason, unsupported}`` when it said which."""

    def __init__(self, msg: str, problems: list[dict[str, Any]] | None = None, status: int = 0) -> None:
        super().__init__(msg)
        self.problems = problems or []
        self.status = status

    def text(self) -> str:
        """The message with one line per problem."""
        out = str(self)
        for p in self.problems:
            field, reason = p.get("field") or "", p.get("reason", "")
            if p.get("unsupported"):
                out += f"\n  unsupported: {field} ({reason})"
            else:
                out += f"\n  {field}: {reason}" if field else f"\n  {reason}"
        return out


class Client:
    def __init__(self, socket_path: str | None = None, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        self.socket_path = socket_path or default_socket()
        self.timeout = timeout
        self.http = httpx.Client(
            transport=httpx.HTTPTransport(uds=self.socket_path),
            base_url="http://apiary",
            timeout=httpx.Timeout(timeout),
        )

    def _unreachable(self) -> AgentUnreachable:
        """Why connecting failed: no agent, or a socket this user may not use (the API is root-only)."""
        try:
            os.stat(self.socket_path)
            usable = os.access(self.socket_path, os.R_OK | os.W_OK)
        except PermissionError:
            usable = False
        except OSError:
            usable = True
        if not usable:
            return AgentUnreachable(
                f"permission denied: the API is root-only (socket {self.socket_path}); run apiary as root, "
                "e.g. with sudo"
            )
        return AgentUnreachable(
            f"agent not running: start it with `make run` or `apiary agent` (no agent on {self.socket_path})"
        )

    def _timed_out(self) -> AgentUnreachable:
        return AgentUnreachable(
            f"no answer from the agent within {self.timeout:g} s (it may be busy or stuck; "
            "`apiary --timeout SECONDS ...` waits longer)"
        )

    def _send(self, method: str, path: str, stream: bool = False, **kw: Any) -> httpx.Response:
        try:
            req = self.http.build_request(method, path, **kw)
            r = self.http.send(req, stream=stream)
            if stream and r.status_code >= 400:
                r.read()
            elif stream:  # the agent answered; a stream may then stay quiet for ever: no read bound from here
                req.extensions["timeout"]["read"] = None  # httpcore reads this dict before every receive
            return r
        except httpx.TimeoutException:
            raise self._timed_out() from None
        except (httpx.ConnectError, FileNotFoundError, PermissionError, ConnectionRefusedError):
            raise self._unreachable() from None
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
            raise AgentUnreachable("the agent closed the connection before answering (did it stop?)") from None
        except (httpx.InvalidURL, UnicodeEncodeError) as e:
            raise ApiError(f"cannot send this request: {e}") from None

    @staticmethod
    def _check(r: httpx.Response) -> Any:
        try:
            body = r.json()
        except ValueError:
            body = {"error": r.text.strip() or r.reason_phrase}
        if r.status_code >= 400:
            if not isinstance(body, dict):
                body = {"error": str(body)}
            raise ApiError(str(body.get("error", r.text)), body.get("problems"), r.status_code)
        return body

    def request(self, method: str, path: str, **kw: Any) -> Any:
        """The agent's JSON answer; AgentUnreachable or ApiError (with the problems) otherwise."""
        return self._check(self._send(method, path, **kw))

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params)

    def stream(self, path: str, params: list[tuple[str, str]]) -> Iterator[dict[str, Any]]:
        """The JSON lines of a stream; AgentUnreachable when the agent goes away in the middle."""
        r = self._send("GET", path, stream=True, params=params)
        try:
            if r.status_code >= 400:
                self._check(r)
            for line in r.iter_lines():
                if line:
                    yield json.loads(line)
        except (httpx.RemoteProtocolError, httpx.ReadError):
            raise AgentUnreachable("the agent closed the stream (it stopped or crashed)") from None
        finally:
            r.close()
