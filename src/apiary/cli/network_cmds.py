"""CLI for the network half: endpoints, identities, policies, explain, observe."""

from __future__ import annotations

import json
import os
import sys
from typing import Any
from urllib.parse import quote

import click
from rich.table import Table

from apiary.agent import statedir
from apiary.observe.hubble.filter_flags import FILTER_FLAGS, FLAG_ALIASES
from apiary.sensors.network.validate import ValidationError, check_port
from apiary.textutil import clip, clip_quoted

from .client import DEFAULT_TIMEOUT, AgentUnreachable, ApiError, Client
from .output import console

# hubble observe's filters as apiary takes them: flag -> (value, help). Parsed by hand (their order matters:
# --not negates the next one, and a flag may repeat), and listed in `apiary observe -h` by ObserveCommand.
FILTER_HELP: dict[str, tuple[str, str]] = {
    "not": ("", "Negate the next filter, e.g. --not --from-ip 10.0.0.1"),
    "verdict": ("VERDICT", "Flows with this verdict: FORWARDED, DROPPED, AUDIT, ..."),
    "pod": ("[NS/]POD", "Flows from or to this pod (name or prefix)"),
    "from-pod": ("[NS/]POD", "Flows from this pod"),
    "to-pod": ("[NS/]POD", "Flows to this pod"),
    "namespace": ("NS", "Flows from or to this namespace"),
    "from-namespace": ("NS", "Flows from this namespace"),
    "to-namespace": ("NS", "Flows to this namespace"),
    "label": ("SELECTOR", "Flows from or to endpoints with these labels (key=value,...)"),
    "from-label": ("SELECTOR", "Flows from endpoints with these labels"),
    "to-label": ("SELECTOR", "Flows to endpoints with these labels"),
    "service": ("[NS/]SVC", "Flows from or to this service (name or prefix; VIP or backend)"),
    "from-service": ("[NS/]SVC", "Flows from this service"),
    "to-service": ("[NS/]SVC", "Flows to this service"),
    "identity": ("ID", "Flows from or to this security identity"),
    "from-identity": ("ID", "Flows from this security identity"),
    "to-identity": ("ID", "Flows to this security identity"),
    "ip": ("IP|CIDR", "Flows from or to this address"),
    "from-ip": ("IP|CIDR", "Flows from this address"),
    "to-ip": ("IP|CIDR", "Flows to this address"),
    "port": ("PORT", "Flows from or to this L4 port"),
    "from-port": ("PORT", "Flows from this L4 port"),
    "to-port": ("PORT", "Flows to this L4 port"),
    "protocol": ("PROTO", "Flows of this protocol: tcp, udp, icmp, ..."),
    "type": ("TYPE", "Events of this type: trace, drop, policy-verdict, ..."),
    "traffic-direction": ("DIR", "ingress or egress"),
    "drop-reason-desc": ("REASON", "Drops for this reason, e.g. POLICY_DENIED"),
    "http-status": ("CODE", "L7 HTTP responses with this status: 404, or a prefix as 5+"),
    "http-method": ("METHOD", "L7 HTTP flows of this method"),
    "http-path": ("REGEX", "L7 HTTP flows whose URL path matches"),
    "http-url": ("REGEX", "L7 HTTP flows whose URL matches"),
    "fqdn": ("NAME", "Flows from or to this DNS name learned by the DNS proxy (* as wildcard)"),
    "from-fqdn": ("NAME", "Flows from this DNS name"),
    "to-fqdn": ("NAME", "Flows to this DNS name"),
}
SHORT = {f"-{k}": f"--{v}" for k, v in FLAG_ALIASES.items()}


class ObserveCommand(click.Command):
    """`observe`, whose help also lists the filters it parses itself."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_options(ctx, formatter)
        short = {v: k for k, v in SHORT.items()}
        rows = []
        for flag, (value, text) in FILTER_HELP.items():
            name = f"{short[f'--{flag}']}, --{flag}" if f"--{flag}" in short else f"--{flag}"
            rows.append((f"{name} {value}".rstrip(), text))
        with formatter.section("Filters (as in hubble observe; repeatable)"):
            formatter.write_dl(rows)


def _client(ctx: click.Context) -> Client:
    obj = ctx.find_root().obj or {}
    return Client(obj.get("socket"), timeout=obj.get("timeout", DEFAULT_TIMEOUT))


def _fail(msg: str, code: int = 1) -> None:
    """One error line (a long one is cut: it may echo what the user sent) and a non-zero exit."""
    lines = [clip(clip_quoted(line), 1000) for line in msg.splitlines() or [""]]
    click.echo("apiary: " + "\n".join(lines), err=True)
    sys.exit(code)


def _req(ctx: click.Context, method: str, path: str, **kw: Any) -> Any:
    try:
        return _client(ctx).request(method, path, **kw)
    except AgentUnreachable as e:
        _fail(str(e))
    except ApiError as e:
        _fail(e.text(), 1)


def seg(name: str) -> str:
    """A name as one URL path segment (``/``, newlines and the like percent-encoded)."""
    return quote(name, safe="", errors="surrogateescape")  # bytes that are not UTF-8 stay what they were


def read_file_arg(path: str) -> str:
    """The text of `-f PATH` (`-` is standard input); one clear line when it cannot be read or is not UTF-8."""
    try:
        raw = sys.stdin.buffer.read() if path == "-" else open(path, "rb").read()
    except OSError as e:
        _fail(f"-f {path}: {e.strerror}", 2)
        return ""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        _fail(f"-f {path}: not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start})", 2)
    return ""


def one_file(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> str | None:
    """`-f` of a command that reads one file: given twice, it is refused (click would keep the last silently)."""
    if len(value) > 1:
        raise click.BadParameter(f"given {len(value)} times ({', '.join(value)}): this command reads one file; "
                                 "put the documents in one file, separated by ---", ctx=ctx, param=param)
    return value[0] if value else None


def post_yaml(ctx: click.Context, url: str, path: str) -> Any:
    """POST the YAML of `-f PATH` to the agent."""
    return _req(ctx, "POST", url, content=read_file_arg(path).encode(), headers={"Content-Type": "application/yaml"})


def _labels(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in values:
        for part in item.split(","):
            if not part:
                continue
            k, eq, v = part.partition("=")
            if not eq or not k:
                raise click.BadParameter(f"{part!r}: expected key=value", param_hint="--labels")
            out[k] = v
    return out


def _ports(values: tuple[str, ...]) -> dict[str, tuple[int, str]]:
    """`--port NAME=PORT[/PROTO]` (repeatable; the protocol defaults to TCP) as the API takes them."""
    out: dict[str, tuple[int, str]] = {}
    for item in values:
        name, eq, rest = item.partition("=")
        port_s, slash, proto = rest.partition("/")
        if not eq or not port_s or (slash and not proto):
            raise click.BadParameter(f"{item!r}: expected NAME=PORT[/PROTOCOL], e.g. http=8080/TCP",
                                     param_hint="--port")
        if not (port_s.isascii() and port_s.isdigit()):
            raise click.BadParameter(f"{item!r}: port {port_s!r} is not a number 1-65535", param_hint="--port")
        try:
            name, port, proto = check_port(name, int(port_s), (proto or "TCP").upper(), "--port")
        except ValidationError as e:
            raise click.BadParameter(e.reason, param_hint="--port") from None
        if name in out:
            raise click.BadParameter(f"port name {name!r} given twice (names are unique in an endpoint)",
                                     param_hint="--port")
        out[name] = (port, proto)
    return out


def _ports_text(ports: dict[str, list[Any]]) -> str:
    return ",".join(f"{name}={port}/{proto}" for name, (port, proto) in sorted(ports.items()))


# ------------------------------------------------------------------------------- endpoint
@click.group()
def endpoint() -> None:
    """Endpoints: a netns + veth + cgroup with labels (a "pod")."""


@endpoint.command("create")
@click.argument("name")
@click.option("--labels", "-l", multiple=True, help="key=value[,key=value] (repeatable)")
@click.option("--namespace", "-n", default="default", show_default=True)
@click.option("--port", "-p", "ports", multiple=True, metavar="NAME=PORT[/PROTO]",
              help="A named container port, e.g. http=8080/TCP (repeatable; protocol TCP, UDP or SCTP, default TCP)")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
@click.pass_context
def endpoint_create(ctx: click.Context, name: str, labels: tuple[str, ...], namespace: str, ports: tuple[str, ...],
                    output: str) -> None:
    """Create an endpoint."""
    body = {"name": name, "namespace": namespace, "labels": _labels(labels), "ports": _ports(ports)}
    row = _req(ctx, "POST", "/v1/endpoints", json=body)
    if output == "json":
        click.echo(json.dumps(row, indent=2))
    else:
        shown_ports = f", ports {_ports_text(row['ports'])}" if row.get("ports") else ""
        click.echo(
            f"endpoint {row['namespace']}/{row['name']} created: id {row['id']}, identity "
            f"{row['identity']}, IPv4 {row['ipv4']}, interface {row['interface']}{shown_ports}"
        )


@endpoint.command("list")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@click.pass_context
def endpoint_list(ctx: click.Context, output: str) -> None:
    """List endpoints with identity, IPv4, named ports and policy enforcement."""
    rows = _req(ctx, "GET", "/v1/endpoints")
    if output == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    with_ports = any(r.get("ports") for r in rows)  # the PORTS column only when an endpoint declares ports
    t = Table("ENDPOINT", "NAME", "IDENTITY", "LABELS", "IPv4", *(["PORTS"] if with_ports else []),
              "INGRESS ENFORCEMENT", "EGRESS ENFORCEMENT", "STATE")
    for r in rows:
        t.add_row(
            str(r["id"]),
            f"{r['namespace']}/{r['name']}",
            str(r["identity"]),
            ",".join(f"{k}={v}" for k, v in sorted(r["labels"].items())),
            r["ipv4"],
            *([_ports_text(r.get("ports") or {})] if with_ports else []),
            "Enabled" if r["ingress_enforcement"] else "Disabled",
            "Enabled" if r["egress_enforcement"] else "Disabled",
            r["state"],
        )
    console().print(t)


@endpoint.command("get")
@click.argument("ref")
@click.option("-o", "--output", type=click.Choice(["json"]), default="json",
              help="json (the only form; taken so `-o json` works as on create and list)")
@click.pass_context
def endpoint_get(ctx: click.Context, ref: str, output: str) -> None:
    """Show one endpoint (namespace/name or name), as JSON."""
    click.echo(json.dumps(_req(ctx, "GET", f"/v1/endpoints/{seg(ref)}"), indent=2))


@endpoint.command("delete")
@click.argument("refs", nargs=-1, required=True)
@click.pass_context
def endpoint_delete(ctx: click.Context, refs: tuple[str, ...]) -> None:
    """Delete endpoints and every kernel object they own."""
    for ref in refs:
        row = _req(ctx, "DELETE", f"/v1/endpoints/{seg(ref)}")
        click.echo(f"endpoint {row['namespace']}/{row['name']} deleted")


@endpoint.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("ref")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def endpoint_exec(ctx: click.Context, ref: str, command: tuple[str, ...]) -> None:
    """Run a command inside the endpoint's netns and cgroup: apiary endpoint exec NAME -- CMD..."""
    row = _req(ctx, "GET", f"/v1/endpoints/{seg(ref)}")
    try:
        with open(os.path.join(row["cgroup"], "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    except OSError as e:
        _fail(f"join the cgroup of {ref}: {e}")
    ns = os.path.basename(row["netns"])
    os.execvp("ip", ["ip", "netns", "exec", ns, *command])


# ------------------------------------------------------------------------------- identity
@click.group()
def identity() -> None:
    """Security identities."""


@identity.command("list")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@click.pass_context
def identity_list(ctx: click.Context, output: str) -> None:
    """Numeric identity <-> label set, reserved ones included."""
    rows = _req(ctx, "GET", "/v1/identities")
    if output == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    t = Table("ID", "LABELS", "ENDPOINTS")
    for r in rows:
        t.add_row(str(r["identity"]), "\n".join(r["labels"]), ", ".join(r["endpoints"]))
    console().print(t)


# ------------------------------------------------------------------------------- fqdn
@click.group()
def fqdn() -> None:
    """Names the DNS proxy learned for toFQDNs policy."""


@fqdn.group("cache")
def fqdn_cache() -> None:
    """The DNS proxy's cache of names and IPs."""


@fqdn_cache.command("list")
@click.option("-e", "--endpoint", "ep", type=click.IntRange(min=1), help="Only this endpoint id's entries.")
@click.option("-p", "--matchpattern", default=None, help="Only names matching this matchPattern.")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@click.pass_context
def fqdn_cache_list(ctx: click.Context, ep: int | None, matchpattern: str | None, output: str) -> None:
    """Learned names as `cilium fqdn cache list` shows them (an IP stays allowed until ExpirationTime)."""
    params = {k: str(v) for k, v in (("endpoint", ep), ("matchpattern", matchpattern)) if v}
    rows = _req(ctx, "GET", "/v1/fqdn/cache", params=params)
    if output == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    table = [("Endpoint", "Source", "FQDN", "TTL", "ExpirationTime", "IPs")]
    table += [(str(r["endpoint-id"]), r["source"], r["fqdn"], str(r["ttl"]), r["expiration-time"], ",".join(r["ips"]))
              for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        click.echo("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


# ------------------------------------------------------------------------------- policy
@click.group()
def policy() -> None:
    """CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy."""


@policy.command("apply")
@click.option("-f", "--file", "paths", required=True, multiple=True, type=click.Path(dir_okay=False, allow_dash=True),
              help="A YAML file (`-` is standard input); repeat it for several, applied together, all or nothing.")
@click.pass_context
def policy_apply(ctx: click.Context, paths: tuple[str, ...]) -> None:
    """Apply every policy in the YAML files, all or nothing (the files are one stream of documents, in order)."""
    text = "\n---\n".join(read_file_arg(p) for p in paths)
    res = _req(ctx, "POST", "/v1/policies", content=text.encode(), headers={"Content-Type": "application/yaml"})
    for a in res["applied"]:
        where = f"{a['namespace']}/" if a["namespace"] else ""
        click.echo(f"{a['kind'].lower()}.cilium.io/{where}{a['name']} {a['action']} (revision {a['revision']})")


NS_HELP = "Namespace (not given: the cluster-wide policy of that name if there is one, else namespace default)."


@policy.command("list")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@click.pass_context
def policy_list(ctx: click.Context, output: str) -> None:
    """Policies in force and the policy revision."""
    res = _req(ctx, "GET", "/v1/policies")
    if output == "json":
        click.echo(json.dumps(res, indent=2))
        return
    t = Table("KIND", "NAMESPACE", "NAME", "REVISION", title=f"policy revision {res['revision']}", title_justify="left")
    for p in res["policies"]:
        t.add_row(p["kind"], p["namespace"] or "-", p["name"], str(p["revision"]))
    console().print(t)


@policy.command("get")
@click.argument("name")
@click.option("--namespace", "-n", default=None, help=NS_HELP)
@click.option("-o", "--output", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True)
@click.pass_context
def policy_get(ctx: click.Context, name: str, namespace: str | None, output: str) -> None:
    """Print a policy as applied (NAME, or NAMESPACE/NAME as -n NAMESPACE NAME), with the namespace it is in
    (a CiliumNetworkPolicy applied without one is in default)."""
    name, namespace = _scoped(name, namespace)
    res = _req(ctx, "GET", f"/v1/policies/{seg(name)}", params=ns_param(namespace))
    text, doc = landed(res["yaml"], res["namespace"])
    if output == "json":
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo(text, nl=not text.endswith("\n"))


def landed(source: str, namespace: str) -> tuple[str, Any]:
    """A policy's YAML as applied, and as a document, with the namespace it landed in: the text as written when
    it names its namespace (or has none to name: cluster-wide), else re-written with ``metadata.namespace``."""
    import yaml

    doc = yaml.safe_load(source)
    meta = doc.get("metadata") if isinstance(doc, dict) else None
    if not namespace or not isinstance(meta, dict) or meta.get("namespace") == namespace:
        return source, doc
    doc["metadata"] = {"name": meta.get("name"), "namespace": namespace} | {
        k: v for k, v in meta.items() if k not in ("name", "namespace")
    }
    return yaml.safe_dump(doc, sort_keys=False), doc


DEFAULT_STATE_DIR = "/var/lib/apiary"


def delete_options(f: Any) -> Any:
    """NAME, -n, --offline and --state-dir of the delete commands."""
    f = click.pass_context(f)
    f = click.option(
        "--state-dir",
        default=DEFAULT_STATE_DIR,
        show_default=True,
        help="With --offline: the agent's state directory.",
    )(f)
    f = click.option(
        "--offline",
        is_flag=True,
        help="Edit the agent's state directory directly, with no agent running (refused while one runs on it).",
    )(f)
    f = click.option("--namespace", "-n", default=None, help=NS_HELP)(f)
    return click.argument("name")(f)


def ns_param(namespace: str | None) -> dict[str, str]:
    """The ``namespace`` query parameter, left out when -n was not given (the agent then picks, see -n's help)."""
    return {} if namespace is None else {"namespace": namespace}


def _scoped(name: str, namespace: str | None) -> tuple[str, str | None]:
    """NAMESPACE/NAME (kubectl's and `service get`'s form) as (NAME, NAMESPACE); with -n too, they must agree."""
    if "/" not in name:
        return name, namespace
    ns, _, bare = name.partition("/")
    if not ns or not bare or "/" in bare:
        raise click.BadParameter(f"{name!r}: expected NAME or NAMESPACE/NAME", param_hint="NAME")
    if namespace and namespace != ns:
        raise click.BadParameter(f"{name!r} is in namespace {ns!r}, but -n says {namespace!r}", param_hint="NAME")
    return bare, ns


def delete_policy(ctx: click.Context, args: dict[str, Any], offline_fn: Any, offline_say: Any, online_say: Any) -> None:
    """A delete command: through the agent's API (args["path"]), or --offline on its state directory, where
    problems become one line and exit 1 (an agent running on it, no such policy, an unreadable file)."""
    name, namespace = _scoped(args["name"], args["namespace"])
    state_dir = args["state_dir"]
    if not args["offline"]:
        click.echo(online_say(_req(ctx, "DELETE", f"{args['path']}/{seg(name)}", params=ns_param(namespace))))
        return
    try:
        click.echo(offline_say(offline_fn(state_dir, name, namespace)))
    except statedir.StateDirBusy as e:
        _fail(f"{e}: stop the agent first, or delete through it without --offline")
    except KeyError as e:
        _fail(str(e.args[0]))
    except (OSError, ValueError) as e:
        _fail(str(e))


@policy.command("delete")
@delete_options
def policy_delete(ctx: click.Context, **args: Any) -> None:
    """Delete a policy (--offline: from the state directory of a stopped agent; it takes effect when the agent
    next starts, as the endpoints' programs keep enforcing the policies they had)."""
    done = f"from {args['state_dir']} (the agent applies it when it next starts)"
    delete_policy(
        ctx,
        args | {"path": "/v1/policies"},
        statedir.delete_network_policy,
        lambda gone: f"deleted {', '.join(gone)} {done}",
        lambda res: f"deleted {', '.join(res['deleted'])} (revision {res['revision']})",
    )


@policy.command("explain")
@click.option("--from", "src", required=True, help="namespace/name of an endpoint, or an IPv4 address")
@click.option("--to", "dst", required=True, help="namespace/name of an endpoint, or an IPv4 address")
@click.option("--port", default="", help="PORT[/PROTOCOL], e.g. 5678/TCP; ICMP: TYPE/ICMP")
@click.option("--http", "http", nargs=2, metavar="METHOD PATH", default=None,
              help="An HTTP request on that connection, e.g. --http GET /api/v1/items: what the L7 proxy does with it.")
@click.option("--http-header", "http_headers", multiple=True, metavar="'NAME: VALUE'",
              help="A header of the --http request (repeatable), e.g. 'Content-Type: application/json'.")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
@click.pass_context
def policy_explain(ctx: click.Context, src: str, dst: str, port: str, http: tuple[str, str] | None,
                   http_headers: tuple[str, ...], output: str) -> None:
    """Would SRC reach DST:PORT (and would the L7 proxy let the --http request through)? Decided by the same
    code that writes the maps and the proxy's rules."""
    params: list[tuple[str, str]] = [("from", src), ("to", dst), ("port", port)]
    if http_headers and not http:
        raise click.UsageError("--http-header needs --http METHOD PATH")
    if http:
        if not port:
            raise click.UsageError("--http needs --port (the server's port, e.g. 8080/TCP)")
        params += [("http_method", http[0]), ("http_path", http[1])]
        params += [("http_header", h) for h in http_headers]
    res = _req(ctx, "GET", "/v1/policy/explain", params=params)
    if output == "json":
        click.echo(json.dumps(res, indent=2))
    else:
        click.echo(res.get("text") or json.dumps(res, indent=2))


# ------------------------------------------------------------------------------- observe
@click.command(cls=ObserveCommand, context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--last", type=click.IntRange(min=0), default=None,
              help="The last N flows of the agent's ring, oldest first (default 20; with --follow 0, as hubble).")
@click.option("--first", type=click.IntRange(min=1), default=None, help="The first N flows of the ring (or window).")
@click.option("--all", "all_flows", is_flag=True, help="Every flow in the agent's ring.")
@click.option("--since", default=None, help="Flows since: a duration back from now (30s, 5m, 1h30m) or RFC 3339.")
@click.option("--until", default=None, help="Flows until: a duration back from now (30s, 5m) or RFC 3339.")
@click.option("-f", "--follow", is_flag=True, help="Keep streaming new flows.")
@click.option(
    "-o",
    "--output",
    type=click.Choice(["compact", "json", "jsonpb", "table", "dict"]),
    default="compact",
    show_default=True,
)
@click.option("--print-policy-names", is_flag=True, help="Name the policies that decided each flow.")
@click.option("--color", type=click.Choice(["auto", "always", "never"]), default="auto", show_default=True)
@click.option("--print-raw-filters", is_flag=True,
              help="Print the filters as Hubble's FlowFilter JSON (for --hubble-export-allowlist) and exit.")
@click.pass_context
def observe(ctx: click.Context, last: int | None, first: int | None, all_flows: bool, since: str | None,
            until: str | None, follow: bool, output: str, print_policy_names: bool, color: str,
            print_raw_filters: bool) -> None:
    """Hubble flows, filtered as with `hubble observe` (the filters are listed below)."""
    from apiary.observe.colour import wants_colour
    from apiary.observe.hubble import printers as hubble

    pairs: list[tuple[str, str]] = []
    args = list(ctx.args)
    i = 0
    while i < len(args):
        a = args[i]
        flag, eq, val = a.partition("=")
        flag = SHORT.get(flag, flag)
        if flag == "--not":
            pairs.append(("--not", ""))
            i += 1
            continue
        if flag.removeprefix("--") not in FILTER_FLAGS:
            _fail(f"observe: no such option: {clip(a)} (see apiary observe -h)", 2)
        if not eq:
            if i + 1 >= len(args):
                _fail(f"observe: {flag} needs a value", 2)
            val = args[i + 1]
            i += 1
        pairs.append((flag, val))
        i += 1
    if output == "table" and follow:
        _fail("observe: -o table cannot be used with --follow (as in hubble)", 2)
    try:
        from apiary.observe.hubble.filters import FlowFilter

        flt = FlowFilter.from_args(pairs)
    except ValueError as e:
        _fail(str(e), 2)
    if print_raw_filters:  # as hubble: nothing is asked of the agent
        click.echo(flt.print_raw_filters(), nl=False)
        return
    params: list[tuple[str, str]] = [("filter", f"{k}={v}") for k, v in pairs]
    if sum(x is not None and x is not False for x in (last, first, all_flows or None)) > 1:
        _fail("observe: --last, --first and --all are mutually exclusive (as in hubble)", 2)
    if first is not None and follow:
        _fail("observe: --first cannot be used with --follow (as in hubble)", 2)
    from apiary.observe.tetragon.filters import parse_since

    for name, text in (("since", since), ("until", until)):
        if text is not None:
            try:
                when = parse_since(text)
            except ValueError as e:
                _fail(str(e).replace("--since", f"--{name}"), 2)
            params.append((name, when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")))
    if first is not None:
        params.append(("first", str(first)))
    elif all_flows:
        params.append(("all", "1"))
    elif last is not None:
        params.append(("last", str(last)))
    elif since is None and until is None:  # hubble: 20 flows, or none before the stream when following
        params.append(("last", "0" if follow else "20"))
    params.append(("follow", "1" if follow else "0"))
    use_color = wants_colour(sys.stdout, color)
    rows = []
    try:
        for resp in _client(ctx).stream("/v1/flows", params):
            if output in ("json", "jsonpb"):
                click.echo(json.dumps(resp, separators=(",", ":")))
            elif output == "table":
                rows.append(resp)
            elif output == "dict":
                click.echo(hubble.dict_format(resp))
            else:
                # color: click strips escapes when stdout is not a terminal; --color always means keep them
                click.echo(hubble.compact(resp, color=use_color, print_policy_names=print_policy_names),
                           color=use_color)
    except AgentUnreachable as e:
        _fail(str(e))
    except ApiError as e:
        _fail(e.text(), 2)
    except KeyboardInterrupt:
        return
    if follow:  # a followed stream only ends when the agent ends it
        _fail("the agent ended the flow stream (it is stopping or restarting)")
    if output == "table":
        click.echo(hubble.table(rows))
