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


def test_a_terminal_too_narrow_for_the_box_gets_whole_plain_lines() -> None:
    t = Table("NAME", "STATE", "MODE", "HOOKS (how each is realised)", "EVENTS", "ENFORCED", "KERNEL-MEMORY")
    name = "default/privilege-escalation-watch"
    hook = "kprobes[0] sys_setuid: tracepoint syscalls/sys_enter_setuid"
    t.add_row(name, "enabled", "enforce", hook, "12", "0", "1.2 KiB")
    out = io.StringIO()
    con = _Console(file=out, force_terminal=True, width=80, no_color=True)
    con.print(t)
    text = out.getvalue()
    assert "…" not in text and "┏" not in text, text  # nothing cut short: the terminal wraps the long lines
    row = next(line for line in text.splitlines() if line.startswith(name))
    assert row.split() == [name, "enabled", "enforce", *hook.split(), "12", "0", "1.2", "KiB"]
    assert con.width == 80  # the console keeps its width for what follows


def test_a_table_wider_than_a_pipes_default_width_is_whole() -> None:
    t = Table("NAME", "VALUE")
    t.add_row("n" * 150, "v" * 150)
    out = io.StringIO()
    _Console(file=out, force_terminal=False, width=200).print(t)
    assert out.getvalue().splitlines()[1] == "n" * 150 + "   " + "v" * 150
