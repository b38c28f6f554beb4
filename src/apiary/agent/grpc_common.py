"""What the Hubble and Tetragon gRPC servers share: listen addresses, a grpc.aio server on them, JSON -> protobuf,
answers for the RPCs apiary does not implement, and control-plane calls with their errors as gRPC status codes."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Protocol

# the agent forks helpers (HAProxy, endpoint commands) that never use gRPC: no fork handlers, and no
# "Other threads are currently calling into gRPC, skipping fork() handlers" line in its log per fork
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc  # noqa: E402 - after the setting above, which gRPC reads when it is first imported
from google.protobuf import json_format
from google.protobuf.message import Message

from apiary.policy.models import PolicyError
from apiary.textutil import clip

from .config import AgentConfig
from .view import AgentView

log = logging.getLogger("apiary.grpc")


class Context(Protocol):
    """What the servers use of a grpc.aio servicer context."""

    async def abort(self, code: Any, details: str = "") -> NoReturn: ...


@dataclass(frozen=True)
class Address:
    """Where a gRPC server listens: a unix socket path, or a loopback ``host:port``."""

    unix: str = ""
    tcp: str = ""

    def target(self) -> str:
        """The address as gRPC writes it (``unix:///path`` or ``host:port``)."""
        return f"unix://{self.unix}" if self.unix else self.tcp

    def __str__(self) -> str:
        return f"unix socket {self.unix}" if self.unix else f"TCP {self.tcp}"


def parse_address(text: str, flag: str) -> Address:
    """``unix:///path``, ``unix:/path``, a bare absolute path, or ``HOST:PORT`` with a loopback HOST
    (``localhost``, 127.0.0.0/8, ``[::1]``). ``ValueError`` names ``flag`` and the reason."""
    s = text.strip()
    if s.startswith("unix:") or s.startswith("/"):
        path = s.removeprefix("unix://") if s.startswith("unix://") else s.removeprefix("unix:")
        if not path.startswith("/"):
            raise ValueError(f"{flag} {clip(repr(text))}: a unix socket needs an absolute path (unix:///run/x.sock)")
        return Address(unix=path)
    host, sep, port = s.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{flag} {clip(repr(text))}: expected unix:///PATH or HOST:PORT (port 1-65535)")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if bare != "localhost":
        try:
            loopback = ipaddress.ip_address(bare).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(
                f"{flag} {clip(repr(text))}: only loopback addresses (localhost, 127.0.0.1, [::1]) are served; "
                "the API has no authentication"
            )
    return Address(tcp=f"{host}:{port}")


def hubble_addresses(cfg: AgentConfig) -> list[Address]:
    """Hubble's unix socket (``--hubble-socket-path``; default ``hubble.sock`` next to the API socket) and the
    optional ``--hubble-listen-address``."""
    path = cfg.hubble_socket_path or str(Path(cfg.socket_path).parent / "hubble.sock")
    out = [parse_address(path, "--hubble-socket-path")]
    if cfg.hubble_listen_address:
        out.append(parse_address(cfg.hubble_listen_address, "--hubble-listen-address"))
    return out


def tetragon_address(cfg: AgentConfig) -> Address:
    """``--tetragon-server-address`` (Tetragon's ``--server-address``; default ``tetragon.sock`` next to the API
    socket)."""
    default = f"unix://{Path(cfg.socket_path).parent / 'tetragon.sock'}"
    return parse_address(cfg.tetragon_server_address or default, "--tetragon-server-address")


class GrpcStartError(Exception):
    """A gRPC server could not listen where it was told to."""


def _clear_stale(path: str) -> None:
    """Remove a socket file nobody serves; refuse one that is served (another agent)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise GrpcStartError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # stale: left by an agent that was killed
        return
    finally:
        probe.close()
    raise GrpcStartError(f"{path}: another process is serving this socket")


async def start_server(register: Callable[[grpc.aio.Server], None], addresses: list[Address]) -> grpc.aio.Server:
    """A grpc.aio server (on the running event loop) with its services registered, listening on every address
    (unix sockets root-only, mode 0600)."""
    server = grpc.aio.server()
    register(server)
    for a in addresses:
        if a.unix:
            os.makedirs(os.path.dirname(a.unix), mode=0o700, exist_ok=True)
            _clear_stale(a.unix)
        old = os.umask(0o177)
        try:
            server.add_insecure_port(a.target())
        except RuntimeError as e:
            raise GrpcStartError(f"cannot listen on {a}: {e}") from None
        finally:
            os.umask(old)
    await server.start()
    for a in addresses:
        if a.unix:
            os.chmod(a.unix, 0o600)
    return server


def remove_sockets(addresses: list[Address]) -> None:
    for a in addresses:
        if a.unix:
            try:
                os.unlink(a.unix)
            except FileNotFoundError:
                pass


# ---------------------------------------------------------------------------- messages
def from_json(d: dict[str, Any], msg: Message) -> Message:
    """A protojson dict into ``msg`` (strict: a field the proto does not know is an error, never dropped)."""
    json_format.ParseDict(d, msg)
    return msg


def to_json(msg: Message) -> dict[str, Any]:
    """A message as a dict with the proto's field names and enum names (what the filters read)."""
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def fill_unimplemented(servicer: object, service: Any, implemented_by: str) -> None:
    """Give ``servicer`` an answer for every RPC of ``service`` (a ServiceDescriptor) it does not define:
    UNIMPLEMENTED, naming the RPC and what apiary implements."""
    have = [m.name for m in service.methods if hasattr(servicer, m.name)]
    for m in service.methods:
        if hasattr(servicer, m.name):
            continue
        msg = f"apiary ({implemented_by}) does not implement {service.full_name}/{m.name}; it implements: " + (
            ", ".join(have)
        )

        async def unimplemented(_request: Any, context: Context, msg: str = msg) -> None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, msg)

        setattr(servicer, m.name, unimplemented)


async def abort(context: Context, code: grpc.StatusCode, msg: str) -> NoReturn:
    await context.abort(code, msg)


async def in_worker(agent: AgentView, context: Context, fn: Any, *args: Any) -> Any:
    """Run ``fn`` on the agent's control-plane worker (one change at a time, as the HTTP API does), bounded in
    time; the errors a user can cause become INVALID_ARGUMENT / NOT_FOUND with their reasons."""
    loop = asyncio.get_running_loop()
    limit = agent.cfg.api_request_timeout
    try:
        return await asyncio.wait_for(loop.run_in_executor(agent.net_pool, fn, *args), limit)
    except TimeoutError:
        await abort(
            context,
            grpc.StatusCode.UNAVAILABLE,
            f"the agent's control-plane worker did not answer within {limit:g} s; the request may still take "
            "effect: check its outcome before retrying",
        )
    except PolicyError as e:
        text = "; ".join(clip(str(p), 300) for p in e.problems[:20])
        missing = any(p.reason.startswith("no tracing policy") for p in e.problems)
        code = grpc.StatusCode.NOT_FOUND if missing else grpc.StatusCode.INVALID_ARGUMENT
        await abort(context, code, f"{text} (nothing was changed)" if not missing else text)
    except Exception as e:  # noqa: BLE001 - one line for the client, the traceback in the log
        log.exception("gRPC call %s failed", getattr(fn, "__name__", fn))
        await abort(context, grpc.StatusCode.INTERNAL, f"internal error in the agent: {type(e).__name__}: {e}")
