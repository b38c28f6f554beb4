"""Thin client of the agent's unix-socket API."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx

from apiary.agent.config import default_socket


class AgentUnreachable(Exception):
    pass


class ApiError(Exception):
    pass


class Client:
    def __init__(self, socket_path: str | None = None, timeout: float | None = 10.0) -> None:
        self.socket_path = socket_path or default_socket()
        self.http = httpx.Client(
            transport=httpx.HTTPTransport(uds=self.socket_path),
            base_url="http://apiary",
            timeout=httpx.Timeout(timeout, read=None),
        )

    def _unreachable(self) -> AgentUnreachable:
        return AgentUnreachable(
            f"agent not running: start it with `make run` or `apiary agent` (no agent on {self.socket_path})"
        )

    def get(self, path: str, **params: Any) -> Any:
        try:
            r = self.http.get(path, params=params)
        except (httpx.ConnectError, httpx.RemoteProtocolError, FileNotFoundError, PermissionError) as e:
            if isinstance(e, PermissionError):
                raise AgentUnreachable(f"permission denied on {self.socket_path}: the API is root-only") from e
            raise self._unreachable() from e
        if r.status_code >= 400:
            raise ApiError(r.json().get("error", r.text))
        return r.json()

    def stream(self, path: str, params: list[tuple[str, str]]) -> Iterator[dict[str, Any]]:
        try:
            with self.http.stream("GET", path, params=params) as r:
                if r.status_code >= 400:
                    r.read()
                    raise ApiError(r.json().get("error", r.text))
                for line in r.iter_lines():
                    if line:
                        yield json.loads(line)
        except (httpx.ConnectError, FileNotFoundError) as e:
            raise self._unreachable() from e
        except httpx.RemoteProtocolError:
            return  # agent went away mid-stream
