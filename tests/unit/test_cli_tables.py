"""The CLI's tables: box lines on a terminal, plain columns to a pipe or a file (as kubectl prints them)."""

from __future__ import annotations

import io

from rich.table import Table

from apiary.cli.output import _Console


def _table() -> Table:
    t = Table("KIND", "NAMESPACE", "NAME", title="policy revision 3", title_justify="left")
    t.add_row("CiliumNetworkPolicy", "default", "allow-frontend")
    t.add_row("CiliumClusterwideNetworkPolicy", "-", "x")
    return t


def test_a_table_to_a_pipe_is_plain_columns() -> None:
    out = io.StringIO()
    _Console(file=out, force_terminal=False, width=200).print(_table())
    lines = out.getvalue().splitlines()
    assert not any(c in out.getvalue() for c in "│┃━─┏└"), out.getvalue()
    assert lines[0].strip() == "policy revision 3"
    assert lines[1].split() == ["KIND", "NAMESPACE", "NAME"]
    assert lines[2].split() == ["CiliumNetworkPolicy", "default", "allow-frontend"]
    assert lines[3].split() == ["CiliumClusterwideNetworkPolicy", "-", "x"]
    assert lines[1].index("NAMESPACE") == lines[2].index("default") == lines[3].index("-")  # aligned columns
    assert not lines[1].startswith(" ")


def test_a_table_on_a_terminal_keeps_its_box() -> None:
    out = io.StringIO()
    _Console(file=out, force_terminal=True, width=200, no_color=True).print(_table())
    assert "┏━" in out.getvalue() and "│ CiliumNetworkPolicy" in out.getvalue()
