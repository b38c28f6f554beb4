"""`apiary prefilter`: the XDP deny lists by source CIDR (Cilium's `cilium prefilter`)."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.table import Table

from .network_cmds import _req, seg
from .output import console


@click.group("prefilter")
def prefilter() -> None:
    """XDP prefilter: drop packets by SOURCE CIDR on chosen devices, before the stack sees them."""


def _print_change(res: dict[str, Any]) -> None:
    for key, word in (("added", "added"), ("deleted", "deleted"), ("unchanged", "already present")):
        for c in res.get(key, ()):
            click.echo(f"{word} {c}")
    for d in res.get("devices", ()):
        click.echo(f"device {d['device']}: XDP {d['mode']}" + (f" ({d['note']})" if d["note"] else ""))
    click.echo(f"revision {res['revision']}")


def _cidrs(args: tuple[str, ...], opts: tuple[str, ...]) -> list[str]:
    if not args and not opts:
        raise click.UsageError("give at least one CIDR (as arguments or --cidr)")
    return [*args, *opts]


_CIDR_OPT = click.option("--cidr", "cidr_opts", multiple=True, help="A CIDR, as Cilium spells it (repeatable).")


@prefilter.command("add")
@click.argument("cidrs", nargs=-1)
@_CIDR_OPT
@click.option("--device", "-d", "devices", multiple=True, help="Attach to this device first (repeatable).")
@click.option("--mode", type=click.Choice(["auto", "native", "generic"]), default="auto", show_default=True,
              help="XDP mode of new devices: native (driver), generic (skb), auto (native where the driver has it).")
@click.option("--revision", type=click.IntRange(min=1), default=None,
              help="Refuse unless the lists are at this revision (from `prefilter list`).")
@click.pass_context
def pf_add(ctx: click.Context, cidrs: tuple[str, ...], cidr_opts: tuple[str, ...], devices: tuple[str, ...],
           mode: str, revision: int | None) -> None:
    """Deny these source CIDRs (a /32 or /128 is an exact entry, others LPM), all or none."""
    body: dict[str, Any] = {"cidrs": _cidrs(cidrs, cidr_opts), "devices": list(devices), "mode": mode}
    if revision is not None:
        body["revision"] = revision
    _print_change(_req(ctx, "POST", "/v1/prefilter", json=body))


@prefilter.command("delete")
@click.argument("cidrs", nargs=-1)
@_CIDR_OPT
@click.option("--revision", type=click.IntRange(min=1), default=None,
              help="Refuse unless the lists are at this revision.")
@click.pass_context
def pf_delete(ctx: click.Context, cidrs: tuple[str, ...], cidr_opts: tuple[str, ...], revision: int | None) -> None:
    """Remove these CIDRs from the deny lists, all or none."""
    body: dict[str, Any] = {"cidrs": _cidrs(cidrs, cidr_opts)}
    if revision is not None:
        body["revision"] = revision
    _print_change(_req(ctx, "POST", "/v1/prefilter/delete", json=body))


prefilter.add_command(pf_add, name="update")  # Cilium's name: `cilium prefilter update --cidr ...`


@prefilter.command("list")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.pass_context
def pf_list(ctx: click.Context, output: str) -> None:
    """Revision, devices (with their XDP mode) and every CIDR with its map and drop count."""
    res = _req(ctx, "GET", "/v1/prefilter")
    if output == "json":
        click.echo(json.dumps(res, indent=2))
        return
    click.echo(f"Revision: {res['revision']}")
    devs = ", ".join(f"{d['device']} (XDP {d['mode']})" for d in res["devices"]) or "none"
    click.echo(f"Devices: {devs}")
    t = Table("CIDR", "MAP", "DROPS")
    for e in res["entries"]:
        t.add_row(e["cidr"], e["map"], f"{e['drops']:,}")
    console().print(t)


@prefilter.command("detach")
@click.argument("device")
@click.pass_context
def pf_detach(ctx: click.Context, device: str) -> None:
    """Take the prefilter off a device (the deny lists stay)."""
    res = _req(ctx, "DELETE", f"/v1/prefilter/devices/{seg(device)}")
    click.echo(f"detached from {device}; devices now: {', '.join(d['device'] for d in res['devices']) or 'none'}")
