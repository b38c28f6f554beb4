"""`apiary tracingpolicy` (alias `tp`): TracingPolicy in Tetragon's format."""

from __future__ import annotations

import functools
import json
from typing import Any

import click
from rich.table import Table

from apiary.agent import statedir

from .network_cmds import (
    NS_HELP,
    _fail,
    _req,
    delete_options,
    delete_policy,
    ns_param,
    one_file,
    post_yaml,
    read_file_arg,
    seg,
)
from .output import console


@click.group("tracingpolicy")
def tracingpolicy() -> None:
    """TracingPolicy / TracingPolicyNamespaced (Tetragon's YAML), decided in the kernel."""


@tracingpolicy.command("apply")
@click.option("-f", "--file", "path", required=True, multiple=True, callback=one_file,
              type=click.Path(dir_okay=False, allow_dash=True))
@click.pass_context
def tp_apply(ctx: click.Context, path: str) -> None:
    """Apply every policy in a file, all or nothing; prints how each hook is realised on this kernel."""
    res = post_yaml(ctx, "/v1/tracingpolicies", path)
    for p in res:
        where = f"{p['namespace']}/" if p["namespace"] else ""
        click.echo(f"tracingpolicy {where}{p['name']} {p['action']} (mode {p['mode']})")
        shown = {f"{h['source']}: {h['realisation']}" for h in p["hooks"]}
        for line in sorted(shown):
            click.echo(f"  {line}")
        for n in p["notes"]:
            if n not in shown:  # the compiler also lists each realisation among its notes
                click.echo(f"  note: {n}")
        for w in p.get("warnings", ()):
            click.echo(f"  warning: {w}")


@tracingpolicy.command("list")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@click.pass_context
def tp_list(ctx: click.Context, output: str) -> None:
    """NAME STATE MODE HOOKS EVENTS ENFORCED KERNEL-MEMORY."""
    rows = _req(ctx, "GET", "/v1/tracingpolicies")
    if output == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    t = Table("NAME", "STATE", "MODE", "HOOKS (how each is realised)", "EVENTS", "ENFORCED", "KERNEL-MEMORY")
    for r in rows:
        name = f"{r['namespace']}/{r['name']}" if r["namespace"] else r["name"]
        hooks = "\n".join(f"{h['source']}: {h['realisation']}" for h in r["hooks"])
        enforced = str(r["enforced"]) + (f" (+{r['agent_exempt']} agent exempt)" if r.get("agent_exempt") else "")
        t.add_row(name, r["state"], r["mode"], hooks, str(r["events"]), enforced, f"{r['kernel_memory']:,} B")
    console().print(t)
    if rows:
        down = all(r.get("enforced_while_agent_down") for r in rows)
        click.echo(
            "enforced while the agent is down: "
            + ("yes (hooks and maps are pinned; a clean stop removes them)" if down else "no (not pinned)")
        )


def _name_cmd(op: str, help_text: str) -> click.Command:
    @click.command(op, help=help_text)
    @click.argument("name")
    @click.option("--namespace", "-n", default=None, help=NS_HELP)
    @click.pass_context
    def cmd(ctx: click.Context, name: str, namespace: str | None) -> None:
        res = _req(ctx, "POST", f"/v1/tracingpolicies/{seg(name)}/{op}", params=ns_param(namespace))
        click.echo(f"tracingpolicy {name} {res['state']}")

    return cmd


for _op, _help in (
    ("enable", "Enable a policy."),
    ("disable", "Disable a policy (hooks stay loaded, inactive)."),
):
    tracingpolicy.add_command(_name_cmd(_op, _help))


@tracingpolicy.command("delete")
@delete_options
@click.option(
    "--pin-root",
    default="/sys/fs/bpf/apiary",
    show_default=True,
    help="With --offline: the agent's pin root; the policy's pinned hooks there are switched off.",
)
def tp_delete(ctx: click.Context, pin_root: str, **args: Any) -> None:
    """Delete a policy (--offline: from the state directory of a stopped agent, the way back when a policy
    kills the CLI; its pinned hooks stop enforcing at once, and the next agent start does not restore it)."""
    delete_policy(
        ctx,
        args | {"path": "/v1/tracingpolicies"},
        functools.partial(statedir.delete_tracing_policy, pin_root=pin_root),
        str,
        lambda res: f"tracingpolicy {res['deleted'].lstrip('/')} deleted",
    )


@tracingpolicy.command("set-mode")
@click.argument("name")
@click.argument("mode", type=click.Choice(["enforce", "monitor"]))
@click.option("--namespace", "-n", default=None, help=NS_HELP)
@click.pass_context
def tp_set_mode(ctx: click.Context, name: str, mode: str, namespace: str | None) -> None:
    """enforce: act (Sigkill, Signal, DenyConnect); monitor: report the would-be action only."""
    res = _req(ctx, "POST", f"/v1/tracingpolicies/{seg(name)}/mode", params=ns_param(namespace) | {"mode": mode})
    click.echo(f"tracingpolicy {name} mode {res['mode']}")


@tracingpolicy.command("convert")
@click.option("-f", "--file", "path", required=True, multiple=True, callback=one_file,
              type=click.Path(dir_okay=False, allow_dash=True))
def tp_convert(path: str) -> None:
    """Write the real TracingPolicy equivalent of the seed article's invented syntax."""
    from apiary.policy.models import PolicyError
    from apiary.tracing.load import convert_seed

    try:
        click.echo(convert_seed(read_file_arg(path)), nl=False)
    except PolicyError as e:
        _fail(str(e), 1)
