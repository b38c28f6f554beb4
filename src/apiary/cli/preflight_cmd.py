"""`apiary preflight`: check this machine by trying each feature apiary uses; ✓/✗ table or JSON."""

from __future__ import annotations

import io
import json
import sys
from typing import IO

import click
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from apiary.kernel.preflight import Check, Report, run_preflight
from apiary.observe.colour import wants_colour

__all__ = ["preflight", "render_json", "render_table"]

_CATEGORY_TITLES = {
    "system": "system",
    "filesystem": "filesystems",
    "program": "program and attach types",
    "helper": "helpers",
    "security": "security",
    "other": "other",
}


def _result(c: Check) -> Text:
    if c.ok:
        return Text("✓ ok", style="green")
    if c.required:
        return Text("✗ REQUIRED", style="bold red")
    return Text("✗ missing", style="yellow")


def _if_missing(c: Check) -> str:
    if c.ok or not (c.disables or c.fallback):
        return ""
    parts = []
    if c.disables:
        parts.append(f"disables: {c.disables}")
    if c.fallback:
        parts.append(f"instead: {c.fallback}")
    return "\n".join(parts)


def build_table(report: Report) -> Table:
    """One row per check in report order, a section per category."""
    table = Table(title=f"apiary preflight: Linux {report.kernel}", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("CHECK", no_wrap=True)
    table.add_column("RESULT", no_wrap=True)
    table.add_column("DETAIL", overflow="fold")
    table.add_column("IF MISSING", overflow="fold")
    category = None
    for c in report.checks:
        if c.category != category:
            if category is not None:
                table.add_section()
            category = c.category
            table.add_row(Text(_CATEGORY_TITLES.get(category, category), style="dim italic"), "", "", "")
        table.add_row(Text(c.name, style="bold" if c.required else ""), _result(c), c.detail, _if_missing(c))
    return table


def _summary_line(report: Report) -> str:
    s = report.summary()
    line = f"{s['passed']}/{s['total']} checks passed in {s['duration_s']:.2f} s"
    if report.fixed:
        line += f"; --fix mounted {', '.join(report.fixed)}"
    if report.required_failed:
        line += f"; REQUIRED missing: {', '.join(s['required_failed'])} (apiary cannot run)"
    else:
        line += "; everything apiary requires is here"
        optional = [c.name for c in report.failed]
        if optional:
            line += f" (optional missing: {', '.join(optional)})"
    return line


def render_table(report: Report, stream: IO[str] | None = None, colour: bool | None = None) -> None:
    """Print the ✓/✗ table. Colour only on a TTY and when NO_COLOR is unset (unless ``colour`` says)."""
    out = stream or sys.stdout
    use_colour = wants_colour(out) if colour is None else colour
    if use_colour:
        con = Console(file=out, force_terminal=True, highlight=False)
        con.print(build_table(report))
        con.print(_summary_line(report))
        return
    # plain: render wide (no wrapping at 80 columns when piped), without trailing padding
    buf = io.StringIO()
    con = Console(file=buf, no_color=True, color_system=None, highlight=False, width=170)
    con.print(build_table(report))
    con.print(_summary_line(report))
    out.write("\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n")


def render_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2, ensure_ascii=False)


@click.command("preflight")
@click.option("--fix", is_flag=True, help="Mount bpffs, tracefs and securityfs (and cgroup2) where missing.")
@click.option(
    "-o",
    "--output",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Output format.",
)
def preflight(fix: bool, output: str) -> None:
    """Check this machine by trying each feature apiary uses.

    Exit code 1 only when a required feature is missing (BTF, bpffs, the BPF syscall, tp_btf,
    ring buffers, privileges); optional ones say what they disable and what apiary does instead.
    """
    try:
        report = run_preflight(fix=fix)
    except Exception as e:  # noqa: BLE001 - one clear line, never a traceback
        click.echo(f"apiary: preflight failed: {e}", err=True)
        sys.exit(2)
    if output == "json":
        click.echo(render_json(report))
    else:
        render_table(report)
    sys.exit(report.exit_code)
