"""``apiary agent``'s export flags: Tetragon's ``--export-*`` / ``--field-filters`` and Cilium's
``--hubble-export-*`` (same names, same defaults), plus ``--export-otlp-endpoint``. One decorator adds them
all and hands the command a checked ``ExportSettings`` as ``export``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from apiary.observe.export.settings import ExportSettings


def _text(value: tuple[str, ...]) -> str:
    """Repeated flags joined; ``@FILE`` reads the filters from a file."""
    parts = []
    for v in value:
        if v.startswith("@"):
            try:
                v = Path(v[1:]).read_text()
            except OSError as e:
                raise click.BadParameter(f"cannot read {v[1:]}: {e.strerror}") from None
        parts.append(v)
    return "\n".join(parts)


_OPTIONS = [
    click.option(
        "--export-filename",
        default="",
        help="Write runtime events (Tetragon JSON) to this file, one per "
        "line, rotated (Tetragon's flag). Off when empty.",
    ),
    click.option(
        "--export-file-max-size-mb",
        default=10,
        show_default=True,
        type=click.IntRange(min=1),
        help="Rotate the events file at this size.",
    ),
    click.option(
        "--export-file-rotation-interval",
        default=0.0,
        show_default=True,
        type=click.FloatRange(min=0),
        help="Also rotate the events file every this many seconds (0: by size only).",
    ),
    click.option(
        "--export-file-max-backups",
        default=5,
        show_default=True,
        type=click.IntRange(min=0),
        help="Rotated events files kept (0: all).",
    ),
    click.option("--export-file-compress", is_flag=True, help="gzip rotated events files."),
    click.option("--export-file-perm", default="600", show_default=True, help="Mode of the export files (octal)."),
    click.option(
        "--export-rate-limit",
        default=-1,
        show_default=True,
        type=click.IntRange(min=-1),
        help="Events exported per minute (-1: no limit, 0: none); what is dropped is reported in a "
        "rate_limit_info record every minute and counted.",
    ),
    click.option(
        "--export-allowlist",
        multiple=True,
        help="Tetragon Filter JSON objects (one per line; "
        "repeatable; @FILE reads a file): export only events one of them matches.",
    ),
    click.option(
        "--export-denylist",
        multiple=True,
        help="Tetragon Filter JSON objects: never export events one of them matches.",
    ),
    click.option(
        "--field-filters",
        multiple=True,
        help="Tetragon FieldFilter JSON objects, e.g. "
        '{"event_set":["PROCESS_EXEC"],"fields":"process.binary,process.pid","action":"INCLUDE"}.',
    ),
    click.option(
        "--hubble-export-file-path",
        default="",
        help="Write flows (Hubble JSON) to this file, rotated (Cilium's flag). Off when empty.",
    ),
    click.option("--hubble-export-file-max-size-mb", default=10, show_default=True, type=click.IntRange(min=1)),
    click.option("--hubble-export-file-max-backups", default=5, show_default=True, type=click.IntRange(min=0)),
    click.option("--hubble-export-file-compress", is_flag=True, help="gzip rotated flow files."),
    click.option(
        "--hubble-export-allowlist",
        multiple=True,
        help="Hubble FlowFilter JSON objects (what "
        "`apiary observe --print-raw-filters` prints): export only flows one of them matches.",
    ),
    click.option(
        "--hubble-export-denylist",
        multiple=True,
        help="Hubble FlowFilter JSON objects: never export flows one of them matches.",
    ),
    click.option(
        "--hubble-export-fieldmask",
        multiple=True,
        help="Flow fields kept (space or comma separated, "
        "e.g. 'time source.pod_name destination verdict'); all when not given.",
    ),
    click.option(
        "--export-rate-limit-report-interval",
        "rate_limit_report_interval",
        default=60.0,
        type=click.FloatRange(min=0.1),
        show_default=True,
        help="Seconds between rate_limit_info records (Tetragon's interval: one minute).",
    ),
    click.option(
        "--export-otlp-endpoint",
        default="",
        help="Also send events and flows as OpenTelemetry log "
        "records (OTLP/HTTP) to this collector, e.g. http://127.0.0.1:4318.",
    ),
    click.option(
        "--export-otlp-traces",
        is_flag=True,
        help="Also send each L7 HTTP request and DNS query through the agent's proxies as an OpenTelemetry span "
        "(OTLP/HTTP, to the --export-otlp-endpoint collector's /v1/traces).",
    ),
]
_NAMES = [
    "export_filename",
    "export_file_max_size_mb",
    "export_file_rotation_interval",
    "export_file_max_backups",
    "export_file_compress",
    "export_file_perm",
    "export_rate_limit",
    "export_allowlist",
    "export_denylist",
    "field_filters",
    "hubble_export_file_path",
    "hubble_export_file_max_size_mb",
    "hubble_export_file_max_backups",
    "hubble_export_file_compress",
    "hubble_export_allowlist",
    "hubble_export_denylist",
    "hubble_export_fieldmask",
    "export_otlp_endpoint",
    "export_otlp_traces",
    "rate_limit_report_interval",
]
_JOINED = {"export_allowlist", "export_denylist", "field_filters", "hubble_export_allowlist", "hubble_export_denylist"}


def settings_from(values: dict[str, Any]) -> ExportSettings:
    """The flags' values -> checked settings; ``click.UsageError`` names the flag."""
    kw: dict[str, Any] = {}
    for name in _NAMES:
        v = values[name]
        if name in _JOINED:
            try:
                v = _text(v)
            except click.BadParameter as e:
                raise click.UsageError(f"--{name.replace('_', '-')}: {e.message}") from None
        kw[name] = v
    s = ExportSettings(**kw)
    try:
        s.check()
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    return s


def export_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Adds the export flags to a click command, which receives ``export: ExportSettings``."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kw: Any) -> Any:
        values = {n: kw.pop(n) for n in _NAMES}
        kw["export"] = settings_from(values)
        return f(*args, **kw)

    cmd: Callable[..., Any] = wrapper
    for opt in reversed(_OPTIONS):
        cmd = opt(cmd)
    return cmd


def status_lines(ex: dict[str, Any] | None) -> list[str]:
    """``apiary status``'s export section (nothing when export is off)."""
    if not ex:
        return []
    out = ["export:"]
    for name in ("events", "flows"):
        st = ex.get(name)
        if not st:
            continue
        f = st.get("file")
        where = f["path"] if f else "OTLP only"
        state = "" if not f else (" OK," if f["healthy"] else " DEGRADED,")
        line = (
            f"  {name} -> {where}:{state} {st['exported']:,} exported, {st['filtered']:,} filtered out, "
            f"{st['rate_limited']:,} rate-limited, {st['queue_drops']:,} dropped (queue full)"
        )
        if f:
            line += f"; {f['bytes']:,} bytes, {f['rotations']} rotations"
        out.append(line)
        if f and (f["write_errors"] or f["failed_lines"]):
            errs = ", ".join(f"{k} {v:,}" for k, v in f["errors"].items())
            out.append(f"    write errors {f['write_errors']:,} ({errs}), {f['failed_lines']:,} lines lost")
            out.append(f"    last error: {f['last_error']}")
    for key, what in (("otlp", "otlp"), ("otlp_traces", "otlp spans")):
        o = ex.get(key)
        if o:
            out.append(
                f"  {what} -> {o['endpoint']}: {o['exported']:,} exported, {o['failed']:,} failed, "
                f"{o['in_flight']:,} in flight, {o['dropped']:,} dropped"
                + (f"; last error: {o['last_error']}" if o["last_error"] else "")
            )
    return out
