"""`apiary` command line: a thin client of the agent, plus `agent` and `preflight`."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table

from apiary import __version__
from apiary.agent import accounting
from apiary.observe.tetragon.filters import EVENT_TYPES

from .client import DEFAULT_TIMEOUT, AgentUnreachable, ApiError
from .connectivity import connectivity
from .export_opts import export_options, status_lines
from .network_cmds import _client, _fail, endpoint, fqdn, identity, observe, policy
from .ops_cmds import sysdump, uninstall
from .output import console
from .prefilter_cmds import prefilter
from .preflight_cmd import preflight
from .service_cmds import apply, service
from .tracing_cmds import tracingpolicy

if TYPE_CHECKING:
    from apiary.observe.export.settings import ExportSettings
    from apiary.policy.compile import Enforcement


def _call(fn: Any, *a: Any, **kw: Any) -> Any:
    try:
        return fn(*a, **kw)
    except AgentUnreachable as e:
        _fail(str(e))
    except ApiError as e:
        _fail(f"agent refused the request: {e.text()}", 2)


class _Cli(click.Group):
    """The top-level group: an option of its own given after a command (``apiary agent --socket X``) is told
    where it goes, not only that the command has no such option."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except click.NoSuchOption as e:
            if e.option_name not in {o for p in self.params for o in p.opts}:  # the group's own: --socket, …
                raise
            hint = (f"{e.message} ({e.option_name} is apiary's own option: it goes before the command, as in "
                    f"`apiary {e.option_name} VALUE COMMAND …`)")
            raise click.NoSuchOption(e.option_name, hint, e.possibilities, e.ctx) from None


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--socket", "socket_path", envvar="APIARY_SOCKET", default=None, help="Agent API socket.")
@click.option(
    "--timeout",
    envvar="APIARY_TIMEOUT",
    type=click.FloatRange(min=0.1),
    default=DEFAULT_TIMEOUT,
    show_default=True,
    help="Seconds to wait for the agent's answer (streams: for the first one).",
)
@click.version_option(__version__, prog_name="apiary")
@click.pass_context
def cli(ctx: click.Context, socket_path: str | None, timeout: float) -> None:
    """apiary: eBPF networking, flow observability and runtime security for one node."""
    ctx.ensure_object(dict)
    ctx.obj["socket"] = socket_path
    ctx.obj["timeout"] = timeout


# ---------------------------------------------------------------------------- agent
@cli.command()
@click.option("--state-dir", default="/var/lib/apiary", show_default=True)
@click.option("--pin-root", default="/sys/fs/bpf/apiary", show_default=True)
@click.option("--node-name", default=None, help="Node name in events (default: hostname).")
@click.option(
    "--ringbuf-size",
    default=8 << 20,
    show_default=True,
    type=int,
    help="Event ring buffer bytes (power of two, >= 4096).",
)
@click.option("--process-cache-size", default=65536, show_default=True, type=click.IntRange(min=64))
@click.option("--event-history", default=4096, show_default=True, type=click.IntRange(min=0))
@click.option(
    "--bpf-stats/--no-bpf-stats",
    default=False,
    show_default=True,
    help="Count every BPF program's runs and run time while the agent runs (BPF_ENABLE_STATS, for `apiary status` "
    "and the apiary_bpf_program_* metrics). It adds two clock reads to every BPF program run on the node, "
    "everyone's, so it is off unless asked for (the kernel's advice for production).",
)
@click.option("--no-network", is_flag=True, help="Process events only: no endpoints, policy or flows.")
@click.option("--pod-cidr", default="10.200.0.0/16", show_default=True, help="IPv4 range for endpoints.")
@click.option(
    "--instance",
    default="default",
    show_default=True,
    help="Tag in kernel object names (netns, cgroups), unique per agent on a node.",
)
@click.option(
    "--enable-policy", type=click.Choice(["default", "always", "never"]), default="default", show_default=True
)
@click.option("--policy-audit-mode", is_flag=True, help="Report would-be drops as AUDIT and forward them.")
@click.option("--tofqdns-min-ttl", default=0, show_default=True, type=click.IntRange(min=0),
              help="Seconds an IP learned by the DNS proxy stays allowed at least (toFQDNs).")
@click.option("--tofqdns-dns-reject-response-code", default="refused", show_default=True,
              type=click.Choice(["refused", "nameError"]), help="The DNS proxy's answer to a name policy refuses.")
@click.option("--flow-buffer", default=4095, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--policy-map-size",
    default=65536,
    show_default=True,
    type=click.IntRange(min=16, max=1 << 24),
    help="Entries in the BPF policy map (all endpoints).",
)
@click.option(
    "--api-max-connections",
    default=256,
    show_default=True,
    type=click.IntRange(min=2, max=65536),
    help="Open API connections; past it the oldest idle one is closed (all busy: 503).",
)
@click.option(
    "--api-idle-timeout",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds an API connection may wait for a request before it is closed.",
)
@click.option(
    "--api-request-timeout",
    default=120.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds a request may wait for the agent's control-plane worker (then 503).",
)
@click.option(
    "--no-agent-exemption",
    is_flag=True,
    help="Let tracing policies Sigkill/Signal/Override/DenyConnect the agent itself. By default the agent's own "
    "process (its pid and threads, known to the kernel by pid and start time, never by binary name or path) is "
    "exempt: such events are still posted, marked [agent exempt: would ACTION], and counted. Nothing else is exempt.",
)
@click.option(
    "--no-restore",
    is_flag=True,
    help="Start without re-applying stored tracing policies: they stay listed, disabled, until "
    "`apiary tp enable NAME` (the way back from a policy that kills the CLI). Network policies are restored "
    "as usual: they act on endpoint interfaces only and cannot lock out the CLI.",
)
@click.option(
    "--keep-sensors-on-exit",
    is_flag=True,
    help="Keep the process and TracingPolicy BPF sensors loaded and pinned when the agent stops (Tetragon's "
    "flag): Sigkill/Override policies keep enforcing through a planned restart, and the next agent adopts them.",
)
@click.option(
    "--prefilter-device",
    "prefilter_devices",
    multiple=True,
    help="Attach the XDP prefilter to this device at start (repeatable; `apiary prefilter add --device` "
    "attaches at run time). Devices and CIDRs are kept in --state-dir and restored at start.",
)
@click.option(
    "--prefilter-mode",
    type=click.Choice(["auto", "native", "generic"]),
    default="auto",
    show_default=True,
    help="XDP mode of --prefilter-device: native (in the driver), generic (skb, any device), auto (native "
    "where the driver has it, else generic; `apiary prefilter list` says which).",
)
@click.option(
    "--prefilter-map-size",
    default=16384,
    show_default=True,
    type=click.IntRange(min=1, max=1 << 24),
    help="Entries in each of the four prefilter deny maps (exact and LPM, IPv4 and IPv6).",
)
@click.option(
    "--service-cidr",
    default="10.96.0.0/16",
    show_default=True,
    help="ClusterIPs are allocated from this IPv4 range (Kubernetes' --service-cluster-ip-range); it is routed "
    "unreachable on the host and in every endpoint while the agent runs.",
)
@click.option(
    "--lb-algorithm",
    type=click.Choice(["random", "maglev"]),
    default="random",
    show_default=True,
    help="Backend selection for new connections (Cilium's --bpf-lb-algorithm); a service may choose with the "
    "annotation service.cilium.io/lb-algorithm.",
)
@click.option(
    "--maglev-table-size",
    default=16381,
    show_default=True,
    type=click.Choice([str(p) for p in (251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071)]),
    help="Entries of each Maglev lookup table (Cilium's --bpf-lb-maglev-table-size; one of its primes).",
)
@click.option(
    "--devices",
    "devices",
    multiple=True,
    help="Node device facing clients on other hosts (repeatable; Cilium's --devices): NodePort and ExternalIP "
    "packets arriving on it are load-balanced on the TC path (DNAT in, reverse NAT out).",
)
@click.option(
    "--lb-map-size",
    default=65536,
    show_default=True,
    type=click.IntRange(min=16, max=1 << 24),
    help="Entries of the service, backend and reverse-NAT maps (Cilium's --bpf-lb-map-max).",
)
@click.option(
    "--metrics-addr",
    default=None,
    metavar="HOST:PORT",
    help="Serve Prometheus metrics at http://HOST:PORT/metrics (e.g. 127.0.0.1:9962, Cilium's agent port). "
    "Loopback only unless --metrics-allow-remote. The unix-socket API serves them at /metrics in any case.",
)
@click.option(
    "--metrics-allow-remote",
    is_flag=True,
    help="Let --metrics-addr be a non-loopback address (the metrics name endpoints, policies and programs).",
)
@click.option(
    "--hubble-metrics",
    "hubble_metrics",
    multiple=True,
    help="Hubble's metric list (its hubble.metrics.enabled): space-separated NAME[:OPTION=VALUE;...] with NAME "
    "in flow, drop, tcp, port-distribution, policy, http or httpV2 (L7 HTTP flows), dns (L7 DNS flows) and "
    "options sourceContext, destinationContext (identity|namespace|pod|pod-name|reserved-identity|app) or "
    "labelsContext (dns: also ignoreAAAA). Default: flow drop tcp port-distribution policy, no context.",
)
@click.option(
    "--metrics-label-filter",
    default="namespace,workload,pod,binary",
    show_default=True,
    help="Tetragon's flag: comma-separated process labels kept on tetragon_policy_events_total, among namespace, "
    "workload, pod and binary; a label left out stays with an empty value (bounds the series).",
)
@click.option(
    "--hubble-socket-path",
    default="",
    help="Unix socket of Hubble's Observer gRPC API (Cilium's flag; default: hubble.sock next to --socket).",
)
@click.option(
    "--hubble-listen-address",
    default="",
    help="Also serve Hubble's gRPC API on this loopback HOST:PORT (Cilium's flag, e.g. 127.0.0.1:4245).",
)
@click.option(
    "--tetragon-server-address",
    default="",
    help="Tetragon's gRPC API (Tetragon's --server-address): unix:///PATH or a loopback HOST:PORT "
    "(default: unix://.../tetragon.sock next to --socket).",
)
@click.pass_context
@export_options
def agent(
    ctx: click.Context,
    state_dir: str,
    pin_root: str,
    node_name: str | None,
    ringbuf_size: int,
    process_cache_size: int,
    event_history: int,
    bpf_stats: bool,
    no_network: bool,
    pod_cidr: str,
    instance: str,
    enable_policy: Enforcement,  # click.Choice holds it to these values
    policy_audit_mode: bool,
    tofqdns_min_ttl: int,
    tofqdns_dns_reject_response_code: str,
    flow_buffer: int,
    policy_map_size: int,
    api_max_connections: int,
    api_idle_timeout: float,
    api_request_timeout: float,
    no_agent_exemption: bool,
    no_restore: bool,
    keep_sensors_on_exit: bool,
    prefilter_devices: tuple[str, ...],
    prefilter_mode: str,
    prefilter_map_size: int,
    service_cidr: str,
    lb_algorithm: str,
    maglev_table_size: str,
    devices: tuple[str, ...],
    lb_map_size: int,
    metrics_addr: str | None,
    metrics_allow_remote: bool,
    hubble_metrics: tuple[str, ...],
    metrics_label_filter: str,
    export: ExportSettings,
    hubble_socket_path: str,
    hubble_listen_address: str,
    tetragon_server_address: str,
) -> None:
    """Run the agent in the foreground (owns all BPF objects; serves the API)."""
    from apiary.agent.config import AgentConfig, default_socket
    from apiary.agent.daemon import Agent, AgentError

    if ringbuf_size < 4096 or ringbuf_size & (ringbuf_size - 1):
        _fail(f"--ringbuf-size {ringbuf_size}: must be a power of two of at least 4096", 2)
    cfg = AgentConfig(
        socket_path=ctx.obj.get("socket") or default_socket(),
        state_dir=state_dir,
        pin_root=pin_root,
        ringbuf_bytes=ringbuf_size,
        process_cache_size=process_cache_size,
        event_history=event_history,
        bpf_stats=bpf_stats,
        network=not no_network,
        pod_cidr=pod_cidr,
        instance=instance,
        enable_policy=enable_policy,
        policy_audit_mode=policy_audit_mode,
        tofqdns_min_ttl=tofqdns_min_ttl,
        tofqdns_reject_response_code=tofqdns_dns_reject_response_code,
        flow_buffer=flow_buffer,
        policy_map_size=policy_map_size,
        api_max_connections=api_max_connections,
        api_idle_timeout=api_idle_timeout,
        api_request_timeout=api_request_timeout,
        agent_exemption=not no_agent_exemption,
        restore_tracing=not no_restore,
        keep_sensors_on_exit=keep_sensors_on_exit,
        prefilter_devices=prefilter_devices,
        prefilter_mode=prefilter_mode,
        prefilter_map_size=prefilter_map_size,
        service_cidr=service_cidr,
        lb_algorithm=lb_algorithm,
        maglev_table_size=int(maglev_table_size),
        lb_map_size=lb_map_size,
        devices=devices,
        export=export,
        hubble_socket_path=hubble_socket_path,
        hubble_listen_address=hubble_listen_address,
        tetragon_server_address=tetragon_server_address,
    )
    from apiary.agent.events import parse_metrics_label_filter
    from apiary.agent.grpc_common import hubble_addresses, tetragon_address
    from apiary.agent.metrics_server import MetricsError, parse_metrics_addr
    from apiary.observe.hubble.metrics import parse_hubble_metrics

    try:
        if metrics_addr is not None:
            cfg.metrics_addr = parse_metrics_addr(metrics_addr, metrics_allow_remote)
        elif metrics_allow_remote:
            raise MetricsError("--metrics-allow-remote: needs --metrics-addr")
        if hubble_metrics:
            parse_hubble_metrics(hubble_metrics)
            cfg.hubble_metrics = hubble_metrics
        parse_metrics_label_filter(metrics_label_filter)
        cfg.metrics_label_filter = metrics_label_filter
        hubble_addresses(cfg), tetragon_address(cfg)
    except ValueError as e:
        _fail(str(e), 2)
    import re

    from apiary.sensors.network.validate import check_pod_cidr_syntax

    try:
        check_pod_cidr_syntax(pod_cidr)  # the agent also refuses one that overlaps the host's addresses or routes
    except ValueError as e:
        _fail(str(e), 2)
    from apiary.services.allocate import AllocationError, service_network

    try:
        service_network(service_cidr)
    except AllocationError as e:
        _fail(f"--service-cidr: {e}", 2)
    if not re.fullmatch(r"[a-z0-9]{1,12}", instance):
        _fail(f"--instance {instance!r}: 1-12 lower-case letters or digits", 2)
    if node_name:
        cfg.node_name = node_name
    from apiary.agent.logs import setup_agent_logging

    setup_agent_logging()
    a = Agent(cfg)
    try:
        a.start()
        asyncio.run(a.run())
    except AgentError as e:
        a.close()
        _fail(str(e))
    except KeyboardInterrupt:
        pass
    finally:
        a.close()
    from pathlib import Path

    pins = Path(cfg.pin_root)
    kept = sorted(p.name for p in pins.iterdir()) if pins.is_dir() else []
    if kept:  # endpoints, services, the prefilter's entries, --keep-sensors-on-exit
        click.echo(f"apiary agent stopped; kept pinned for the next agent (enforcing meanwhile): {', '.join(kept)} "
                   f"under {pins}; the rest is detached.", err=True)
    else:
        click.echo("apiary agent stopped; everything it attached is detached.", err=True)


# ---------------------------------------------------------------------------- events
@cli.command()
@click.option("-o", "--output", type=click.Choice(["compact", "json"]), default="compact", show_default=True)
@click.option("--pid", "pids", multiple=True, type=int, help="Only these pids (repeatable).")
@click.option("--binary", default=None, help="Only binaries matching this regular expression.")
@click.option(
    "--event-type",
    "types",
    multiple=True,
    type=click.Choice(sorted(EVENT_TYPES)),  # every kind the filter knows
    help="Repeatable.",
)
@click.option("--count", type=click.IntRange(min=1), default=None, help="Stop after N events.")
@click.option("--since", default=None, help="Replay recent events first: 30s, 5m, 1h or RFC 3339.")
@click.option("--timestamps", is_flag=True, help="Prefix compact lines with the event time.")
@click.option("--color", type=click.Choice(["auto", "always", "never"]), default="auto", show_default=True)
@click.pass_context
def events(
    ctx: click.Context,
    output: str,
    pids: tuple[int, ...],
    binary: str | None,
    types: tuple[str, ...],
    count: int | None,
    since: str | None,
    timestamps: bool,
    color: str,
) -> None:
    """Stream process events (Tetragon compact lines, or its JSON export shape with -o json)."""
    from apiary.observe.colour import wants_colour
    from apiary.observe.tetragon import compact as tetragon
    from apiary.observe.tetragon.filters import EventFilter

    try:  # validate here so a typo fails before we reach the agent
        EventFilter.from_options(pids=pids, binary=binary, event_types=types, since=since)
    except ValueError as e:
        _fail(str(e), 2)
    params: list[tuple[str, str]] = [("pid", str(p)) for p in pids] + [("type", t) for t in types]
    if binary:
        params.append(("binary", binary))
    if count:
        params.append(("count", str(count)))
    if since:
        params.append(("since", since))
    use_color = wants_colour(sys.stdout, color)
    out = sys.stdout
    seen = 0
    try:
        for ev in _client(ctx).stream("/v1/events", params):
            if "apiary_lost_events" in ev:
                click.echo(f"EVENTS LOST: {ev['apiary_lost_events']['count']} (this client read too slowly)", err=True)
                continue
            seen += 1
            if output == "json":
                out.write(json.dumps(ev, separators=(",", ":")) + "\n")
            else:
                line = tetragon.compact(ev, color=use_color)
                out.write((tetragon.with_timestamp(line, ev) if timestamps else line) + "\n")
            out.flush()
    except AgentUnreachable as e:
        _fail(str(e))
    except ApiError as e:
        _fail(f"agent refused the request: {e.text()}", 2)
    except (KeyboardInterrupt, BrokenPipeError):
        return
    if count is None or seen < count:  # a followed stream only ends when the agent ends it
        _fail("the agent ended the event stream (it is stopping or restarting)")


# ---------------------------------------------------------------------------- status
def _fmt_ns(ns: float) -> str:
    return f"{ns:,.0f} ns" if ns else "-"


@cli.command()
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--verbose", is_flag=True, help="Also each subsystem's details, programs, maps and services.")
@click.pass_context
def status(ctx: click.Context, output: str, verbose: bool) -> None:
    """Agent health like `cilium status`: each subsystem OK / degraded / disabled with the reason, flows/s and
    events/s over a recent window, losses, map pressure; --verbose adds programs (runs, avg time) and maps."""
    st = _call(_client(ctx).get, "/v1/status")
    if output == "json":
        click.echo(json.dumps(st, indent=2))
        return
    from .status_view import brief_lines, detail_lines

    con = console()
    for line in brief_lines(st):
        con.print(line, highlight=False)
    ev = st["events"]
    for line in accounting.text_lines(ev):
        con.print("  " + line, highlight=False)
    con.print(
        "    emitted: "
        + (", ".join(f"{k} {v}" for k, v in ev["emitted"].items()) or "none")
        + f"; dropped for slow clients {ev['client_drops']}; decode errors {ev['decode_errors']}"
        + f"; events_missing_process_info {ev['events_missing_process_info']}"
        + f"; event build errors {ev.get('event_build_errors', 0)}",
        highlight=False,
    )
    for line in status_lines(st.get("export")):  # export health (write errors) shows without --verbose
        con.print(line, highlight=False, markup=False)
    if not verbose:
        return
    for line in detail_lines(st):
        con.print(line, highlight=False)
    t = Table("PROGRAM", "ATTACH", "RUNS", "AVG", "ID", title="programs", title_justify="left")
    for p in st["programs"]:
        t.add_row(p["name"], p["attach"], f"{p['run_count']:,}", _fmt_ns(p["avg_ns"]), str(p["id"]))
    con.print(t)
    if not st["bpf_stats"]:
        con.print("  (BPF run-time statistics are off: RUNS/AVG stay 0; `apiary agent --bpf-stats` counts them)")
    t = Table("MAP", "OWNER", "TYPE", "ENTRIES", "MAX", "FILL", title="maps", title_justify="left")
    for m in st["maps"]:
        fill = "-" if m.get("fill_pct") is None else f"{m['fill_pct']:.1f}%"
        t.add_row(
            m["name"],
            m.get("owner", ""),
            m["type"],
            "-" if m.get("entries") is None else f"{m['entries']:,}",
            f"{m['max_entries']:,}",
            fill,
        )
    con.print(t)
    pc = st["process_cache"]
    con.print("process cache: " + ", ".join(f"{k} {v}" for k, v in pc.items()))
    sv = st.get("services")
    if sv:
        con.print(
            f"services: {sv['mode']}; algorithm {sv['algorithm']}; {sv['services']} services, {sv['frontends']} "
            f"frontends, {sv['backends']} backends; service CIDR {sv['service_cidr']}"
        )
        if sv["counters"]:
            con.print("  " + ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in sv["counters"].items()))


# ---------------------------------------------------------------------------- bpf
@cli.group()
def bpf() -> None:
    """apiary's own BPF objects."""


@bpf.command("list")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.pass_context
def bpf_list(ctx: click.Context, output: str) -> None:
    """Programs, links and maps apiary loaded (ids, types, attach points, pins)."""
    data = _call(_client(ctx).get, "/v1/bpf")
    if output == "json":
        click.echo(json.dumps(data, indent=2))
        return
    con = console()
    t = Table("ID", "PROGRAM", "TYPE", "ATTACH", title="programs", title_justify="left")
    for p in data["programs"]:
        t.add_row(str(p["id"]), p["name"], p["type"], p["attach"])
    con.print(t)
    t = Table("ID", "PROGRAM", "ATTACHED TO", "PIN", title="links", title_justify="left")
    for lk in data["links"]:
        t.add_row(str(lk["id"]), lk["program"], lk["attach"], lk["pin"] or "-")
    con.print(t)
    t = Table("ID", "MAP", "TYPE", "KEY/VALUE", "MAX", "PIN", title="maps", title_justify="left")
    for m in data["maps"]:
        t.add_row(
            str(m["id"]),
            m["name"],
            m["type"],
            f"{m['key_size']}/{m['value_size']}",
            f"{m['max_entries']:,}",
            m["pin"] or "-",
        )
    con.print(t)


cli.add_command(preflight)
for _cmd in (endpoint, fqdn, identity, policy, observe, tracingpolicy, prefilter, service, apply, sysdump, uninstall,
             connectivity):
    cli.add_command(_cmd)
cli.add_command(tracingpolicy, name="tp")


def main() -> None:
    try:
        cli(obj={}, standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:  # never a traceback for the user: one line, the details on request
        if os.environ.get("APIARY_DEBUG"):
            raise
        from apiary.textutil import clip

        _fail(f"internal error: {type(e).__name__}: {clip(str(e), 200)} (APIARY_DEBUG=1 shows the traceback)")
