"""Operator commands: `apiary sysdump` and `apiary uninstall`."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import click

from .network_cmds import _client, _fail


@click.command()
@click.option("--output", "output", type=click.Path(dir_okay=False), default=None,
              help="Tarball to write (default: ./apiary-sysdump-NODE-TIME.tar.gz).")
@click.option("--state-dir", default="/var/lib/apiary", show_default=True, help="The agent's --state-dir.")
@click.option("--pin-root", default="/sys/fs/bpf/apiary", show_default=True, help="The agent's --pin-root.")
@click.option("--agent-log", type=click.Path(exists=True, dir_okay=False), default=None,
              help="The agent's log file (default: the journal of apiary.service, when there is one).")
@click.option("--flows", type=click.IntRange(min=0), default=4095, show_default=True, help="Recent flows to include.")
@click.option("--events", type=click.IntRange(min=0), default=4096, show_default=True,
              help="Recent events to include.")
@click.pass_context
def sysdump(ctx: click.Context, output: str | None, state_dir: str, pin_root: str, agent_log: str | None,
            flows: int, events: int) -> None:
    """One tarball with status, config, BPF objects and pinned maps, recent flows and events, state, kernel facts
    and the agent's log; works with the agent down too (then collects what the node shows)."""
    from .sysdump import Dump, from_agent, from_node, write

    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    top = f"apiary-sysdump-{socket.gethostname()}-{stamp}"
    out = Path(output) if output else Path.cwd() / f"{top}.tar.gz"
    d = Dump()
    up = from_agent(d, _client(ctx), flows, events)
    if not up:
        click.echo("apiary sysdump: the agent is not running: collecting what the node shows without it", err=True)
    from_node(d, Path(pin_root), Path(state_dir), Path(agent_log) if agent_log else None)
    try:
        write(d, out, top, up)
    except OSError as e:
        _fail(f"sysdump: cannot write {out}: {e}")
    click.echo(f"{out}")
    click.echo(f"  {len(d.collected)} items collected, {len(d.failed)} not (see summary.txt)", err=True)


@click.command()
@click.option("--state-dir", default="/var/lib/apiary", show_default=True, help="The agent's --state-dir.")
@click.option("--pin-root", default="/sys/fs/bpf/apiary", show_default=True, help="The agent's --pin-root.")
@click.option("--instance", default="default", show_default=True, help="The agent's --instance.")
@click.option("--pod-cidr", default="10.200.0.0/16", show_default=True, help="The agent's --pod-cidr.")
@click.option("--service-cidr", default="10.96.0.0/16", show_default=True, help="The agent's --service-cidr.")
@click.option("--devices", "devices", multiple=True, help="The agent's --devices (its NodePort TC filters).")
@click.option("--hubble-socket-path", default="", help="The agent's --hubble-socket-path (default: hubble.sock "
              "next to --socket).")
@click.option("--tetragon-server-address", default="", help="The agent's --tetragon-server-address (default: "
              "unix://.../tetragon.sock next to --socket).")
@click.option("--force", is_flag=True, help="Stop a running agent first (SIGTERM; SIGKILL after 30 s).")
@click.pass_context
def uninstall(ctx: click.Context, state_dir: str, pin_root: str, instance: str, pod_cidr: str, service_cidr: str,
              devices: tuple[str, ...], hubble_socket_path: str, tetragon_server_address: str, force: bool) -> None:
    """Remove every trace an agent instance left on this node (pins, endpoint namespaces, veths and cgroups,
    routes, NodePort TC filters, state dir, socket) and say what was removed. Pass the agent's options."""
    import ipaddress
    import re

    from apiary.agent.config import AgentConfig, default_socket
    from apiary.agent.grpc_common import hubble_addresses, tetragon_address
    from apiary.agent.uninstall import AgentRunning, Plan, running_agent, stop_agent
    from apiary.agent.uninstall import uninstall as run

    if not re.fullmatch(r"[a-z0-9]{1,12}", instance):
        _fail(f"--instance {instance!r}: 1-12 lower-case letters or digits", 2)
    for opt, cidr in (("--pod-cidr", pod_cidr), ("--service-cidr", service_cidr)):
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError as e:
            _fail(f"{opt} {cidr!r}: {e}", 2)
    sock = ctx.find_root().obj.get("socket") or default_socket()
    grpc = AgentConfig(socket_path=sock, hubble_socket_path=hubble_socket_path,
                       tetragon_server_address=tetragon_server_address)
    try:  # the gRPC APIs' unix sockets (a killed agent leaves them)
        grpc_socks = tuple(a.unix for a in [*hubble_addresses(grpc), tetragon_address(grpc)] if a.unix)
    except ValueError as e:
        _fail(str(e), 2)
    if os.geteuid() != 0:
        _fail("apiary uninstall must run as root (it removes pins, namespaces, cgroups and routes)")
    pid = running_agent(state_dir)
    if pid is not None:
        if not force:
            _fail(f"an apiary agent (pid {pid}) is running on {state_dir}: stop it first, or pass --force to stop "
                  "it; nothing was removed")
        try:
            click.echo(f"stopped: {stop_agent(pid, state_dir)}")
        except (AgentRunning, ProcessLookupError, PermissionError) as e:
            _fail(f"cannot stop the agent (pid {pid}): {e}; nothing was removed")
    rep = run(Plan(state_dir, pin_root, instance, pod_cidr, service_cidr, sock, devices, grpc_socks))
    for r in rep.removed:
        click.echo(f"removed: {r}")
    for f in rep.failed:
        click.echo(f"NOT removed: {f}", err=True)
    if not rep.removed and not rep.failed:
        click.echo(f"nothing to remove: no trace of instance {instance!r} on this node")
    if rep.failed:
        sys.exit(1)
