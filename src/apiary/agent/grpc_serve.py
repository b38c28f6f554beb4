"""Starts and stops the Hubble and Tetragon gRPC servers in the agent's event loop."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

# the agent forks helpers (HAProxy, endpoint commands) that never use gRPC: no fork handlers, and no
# "Other threads are currently calling into gRPC, skipping fork() handlers" line in its log per fork
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc  # noqa: E402 - after the setting above, which gRPC reads when it is first imported

from . import protos
from .grpc_common import Address, GrpcStartError, hubble_addresses, remove_sockets, start_server, tetragon_address
from .view import AgentView

__all__ = ["GrpcServers", "GrpcStartError", "start"]


@dataclass
class GrpcServers:
    servers: list[grpc.aio.Server] = field(default_factory=list)
    addresses: list[Address] = field(default_factory=list)
    loaded: list[str] = field(default_factory=list)  # lines for the agent's start-up summary
    missing: list[str] = field(default_factory=list)
    serving: dict[str, str] = field(default_factory=dict)  # `apiary status`: server -> where it listens (or why not)

    async def stop(self, grace: float = 1.0) -> None:
        for s in self.servers:
            await s.stop(grace)
        remove_sockets(self.addresses)


async def start(agent: AgentView) -> GrpcServers:
    """Both servers; the generated modules missing (no `make build`) is reported, not fatal. A listen address
    that cannot be served raises GrpcStartError."""
    from .grpc_hubble import Observer
    from .grpc_tetragon import Sensors

    out = GrpcServers()
    try:
        hub_at = hubble_addresses(agent.cfg)
        tet_at = [tetragon_address(agent.cfg)]
    except ValueError as e:
        raise GrpcStartError(str(e)) from None
    try:
        observer = Observer(agent, hub_at[0].target())
        sensors = Sensors(agent)
    except protos.ProtosMissing as e:
        out.missing.append(f"Hubble and Tetragon gRPC APIs: {e}")
        out.serving = {"Hubble gRPC": f"not serving: {e}", "Tetragon gRPC": f"not serving: {e}"}
        return out
    for name, svc, at in (("Hubble Observer", observer, hub_at), ("Tetragon FineGuidanceSensors", sensors, tet_at)):
        try:
            out.servers.append(await start_server(svc.register, at))
        except GrpcStartError:
            await out.stop(0)
            raise
        out.addresses += at
        out.loaded.append(f"{name} gRPC API on " + ", ".join(str(a) for a in at))
        out.serving[f"{name.split()[0]} gRPC"] = ", ".join(str(a) for a in at)
    return out
