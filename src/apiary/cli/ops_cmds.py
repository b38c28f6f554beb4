"""Operator commands: `apiary sysdump` and `apiary uninstall`."""

from __future__ import annotations

import socket
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
