"""`apiary service` (Kubernetes Services and EndpointSlices, load-balanced in BPF) and `apiary apply -f`, which
sends each document of a file to the part of the agent that takes its kind."""

from __future__ import annotations

import json
import re
from typing import Any, NoReturn

import click
import yaml

from .network_cmds import _fail, _req, one_file, read_file_arg, seg

POLICY_KINDS = {"CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy"}
SERVICE_KINDS = {"Service", "EndpointSlice"}
TRACING_KINDS = {"TracingPolicy", "TracingPolicyNamespaced"}


def fail(msg: str, code: int = 1) -> NoReturn:
    _fail(msg, code)
    raise SystemExit(code)


@click.group("service")
def service() -> None:
    """Kubernetes Services (ClusterIP, NodePort, externalIPs) load-balanced at the socket (kube-proxy
    replacement), with their EndpointSlices."""


def _ref(ref: str, namespace: str | None = None) -> tuple[str, str]:
    """NAMESPACE/NAME, or NAME in ``namespace`` (-n; default ``default``)."""
    ns, _, name = ref.rpartition("/")
    if not name:
        raise click.BadParameter(f"{ref!r}: expected NAMESPACE/NAME or NAME (namespace from -n, else default)")
    if ns and namespace and ns != namespace:
        raise click.BadParameter(f"{ref!r} is in namespace {ns!r}, but -n says {namespace!r}")
    return ns or namespace or "default", name


_NAMESPACE = click.option("-n", "--namespace", default=None,
                          help="the namespace of a NAME given without one (default: default)")


def _print_applied(res: dict[str, Any]) -> None:
    for a in res["applied"]:
        what = "created" if a["created"] else "configured"
        ip = f" (clusterIP {a['clusterIP']})" if a.get("clusterIP") else ""
        click.echo(f"{a['kind'].lower()}/{a['name']} {what}{ip}")


def apply_services(ctx: click.Context, text: str) -> dict[str, Any]:
    res: dict[str, Any] = _req(ctx, "POST", "/v1/services", content=text.encode(),
                               headers={"Content-Type": "application/yaml"})
    return res


@service.command("apply")
@click.option("-f", "--file", "path", required=True, multiple=True, callback=one_file,
              type=click.Path(dir_okay=False, allow_dash=True))
@click.pass_context
def service_apply(ctx: click.Context, path: str) -> None:
    """Apply every Service and EndpointSlice in a YAML file, all or nothing."""
    _print_applied(apply_services(ctx, read_file_arg(path)))


@service.command("list")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.pass_context
def service_list(ctx: click.Context, output: str) -> None:
    """Frontends with their backends and states, as `cilium service list` prints them."""
    res = _req(ctx, "GET", "/v1/services")
    if output == "json":
        click.echo(json.dumps(res, indent=2))
        return
    click.echo(res["table"], nl=False)


@service.command("get")
@click.argument("ref")
@_NAMESPACE
@click.option("-o", "--output", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True)
@click.pass_context
def service_get(ctx: click.Context, ref: str, namespace: str | None, output: str) -> None:
    """A service as applied (clusterIP and nodePorts as allocated) and its frontends."""
    ns, name = _ref(ref, namespace)
    res = _req(ctx, "GET", f"/v1/services/{seg(ns)}/{seg(name)}")
    if output == "json":
        click.echo(json.dumps(res, indent=2))
    else:  # the Service as YAML (applies again as it is), its frontends as comments after it
        click.echo(yaml.safe_dump(res["service"], sort_keys=False), nl=False)
        click.echo("\n".join(frontend_comments(res.get("frontends") or [])))


def frontend_comments(rows: list[dict[str, Any]]) -> list[str]:
    """``service get``'s frontends as YAML comments: one line per frontend, its backends and how it picks."""
    if not rows:
        return ["# frontends: none (headless, or not allocated)"]
    out = ["# frontends (as the datapath balances them):"]
    for r in rows:
        bes = ", ".join(f"{b['address']}:{b['port']}" + ("" if b["state"] == "active" else f" ({b['state']})")
                        for b in r["backends"]) or "no backend (connections are refused)"
        how = f"algorithm {r['algorithm']}" + (f", ClientIP affinity {r['affinity_timeout']} s"
                                               if r["affinity_timeout"] else "")
        out.append(f"#   {r['type']} {r['frontend']} -> {bes} ({how})")
    return out


@service.command("delete")
@click.argument("refs", nargs=-1)
@click.option("-f", "--file", "path", multiple=True, callback=one_file,
              type=click.Path(dir_okay=False, allow_dash=True),
              help="delete the Services and EndpointSlices named in this YAML file")
@click.option("--kind", type=click.Choice(sorted(SERVICE_KINDS)), default="Service", show_default=True,
              help="the kind of the REFS given on the command line")
@_NAMESPACE
@click.pass_context
def service_delete(ctx: click.Context, refs: tuple[str, ...], path: str | None, kind: str,
                   namespace: str | None) -> None:
    """Delete Services (their frontends go at once) or EndpointSlices: all those named, in one change, or
    none if one is unknown."""
    items = [{"kind": kind, "name": "/".join(_ref(r, namespace))} for r in refs]
    if path:
        items += _named_in(read_file_arg(path))
    if not items:
        raise click.UsageError("name at least one service (NAMESPACE/NAME) or give -f FILE")
    res = _req(ctx, "POST", "/v1/services/delete", json={"items": items})
    for d in res["deleted"]:
        click.echo(f"{d['kind'].lower()}/{d['name']} deleted")


def _named_in(text: str) -> list[dict[str, str]]:
    """{kind, name} of every Service/EndpointSlice document of a YAML stream (the way `kubectl delete -f`
    reads a file: by kind and metadata; nothing else in the document matters)."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        fail(f"invalid YAML: {e}", 2)
    out = []
    for i, d in enumerate(docs):
        kind = d.get("kind") if isinstance(d, dict) else None
        meta = d.get("metadata") if isinstance(d, dict) else None
        if kind not in SERVICE_KINDS:
            fail(f"document[{i}].kind: {kind!r} is not one of {', '.join(sorted(SERVICE_KINDS))}", 2)
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
            fail(f"document[{i}].metadata.name: required", 2)
        out.append({"kind": str(kind), "name": f"{meta.get('namespace') or 'default'}/{meta['name']}"})
    return out


def split_documents(text: str) -> list[tuple[str, str]]:
    """(kind, text) of each document of a YAML stream, each with the text the user wrote."""
    try:
        docs = [d for d in yaml.safe_load_all(text)]
    except yaml.YAMLError as e:
        fail(f"-f: not valid YAML: {e}".replace("\n", " "), 1)
    chunks = [c for c in re.split(r"^---[ \t]*(?:#.*)?$", text, flags=re.M) if c.strip() and
              any(ln.strip() and not ln.lstrip().startswith("#") for ln in c.splitlines())]
    kept = [d for d in docs if d is not None]
    if len(chunks) != len(kept):  # separators inside block scalars and the like: the parsed form
        chunks = [yaml.safe_dump(d, sort_keys=False) for d in kept]
    out = []
    for i, (d, c) in enumerate(zip(kept, chunks, strict=True)):
        kind = d.get("kind") if isinstance(d, dict) else None
        if not isinstance(kind, str):
            fail(f"document[{i}].kind: required field missing", 1)
        out.append((str(kind), c))
    return out


@click.command("apply")
@click.option("-f", "--file", "path", required=True, multiple=True, callback=one_file,
              type=click.Path(dir_okay=False, allow_dash=True))
@click.pass_context
def apply(ctx: click.Context, path: str) -> None:
    """Apply a file of Kubernetes objects: CiliumNetworkPolicy/CiliumClusterwideNetworkPolicy, Service and
    EndpointSlice, TracingPolicy/TracingPolicyNamespaced. Each kind is applied whole or not at all, policies
    first; a file mixing kinds is checked kind by kind (a later kind refused leaves the earlier applied: the
    message says which)."""
    docs = split_documents(read_file_arg(path))
    unknown = sorted({k for k, _ in docs} - POLICY_KINDS - SERVICE_KINDS - TRACING_KINDS)
    if unknown:
        known = ", ".join(sorted(POLICY_KINDS | SERVICE_KINDS | TRACING_KINDS))
        fail(f"kind: {', '.join(unknown)}: apiary applies {known}", 1)
    groups = [(kinds, "\n---\n".join(t for k, t in docs if k in kinds)) for kinds in (POLICY_KINDS, SERVICE_KINDS,
                                                                                     TRACING_KINDS)]
    done: list[str] = []
    for kinds, text in groups:
        if not text:
            continue
        if done:
            click.echo(f"({', '.join(done)} applied; now {'/'.join(sorted(kinds))})", err=True)
        try:
            _apply_group(ctx, kinds, text, done)
        except SystemExit:
            if done:  # "nothing was changed" is said of this kind: the earlier kinds are in force
                click.echo(f"apiary: the {' and '.join(done)} above stay applied", err=True)
            raise


def _apply_group(ctx: click.Context, kinds: set[str], text: str, done: list[str]) -> None:
    """One kind of a file applied whole through the agent (``done`` gets its name)."""
    if kinds is POLICY_KINDS:
        res = _req(ctx, "POST", "/v1/policies", content=text.encode(), headers={"Content-Type": "application/yaml"})
        for a in res["applied"]:
            where = f"{a['namespace']}/" if a["namespace"] else ""
            click.echo(f"{a['kind'].lower()}.cilium.io/{where}{a['name']} {a['action']} (revision {a['revision']})")
        done.append("policies")
    elif kinds is SERVICE_KINDS:
        _print_applied(apply_services(ctx, text))
        done.append("services")
    else:
        res = _req(ctx, "POST", "/v1/tracingpolicies", content=text.encode(),
                   headers={"Content-Type": "application/yaml"})
        for p in res:
            where = f"{p['namespace']}/" if p["namespace"] else ""
            click.echo(f"tracingpolicy {where}{p['name']} {p['action']} (mode {p['mode']})")
        done.append("tracing policies")
