"""Every command's -h shows every option and argument it accepts (nothing hidden), and `observe -h` lists the
hubble filters it parses itself."""

from __future__ import annotations

from collections.abc import Iterator

import click

from apiary.cli.main import cli
from apiary.cli.network_cmds import FILTER_HELP, SHORT
from apiary.observe.hubble.filter_flags import FILTER_FLAGS, FLAG_ALIASES


def _commands(cmd: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, cmd
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            yield from _commands(sub, (*path, name))


def _help(path: tuple[str, ...], cmd: click.Command) -> str:
    # the root group's help option names, as a real invocation inherits them (click caches a command's help
    # option: a context without them would leave later invocations with --help only)
    ctx = click.Context(cmd, info_name=" ".join(("apiary", *path)), help_option_names=["-h", "--help"])
    return cmd.get_help(ctx)


def test_every_parameter_of_every_command_is_in_its_help() -> None:
    missing = []
    seen = 0
    for path, cmd in _commands(cli):
        text = _help(path, cmd)
        for p in cmd.params:
            seen += 1
            if isinstance(p, click.Option):
                assert not p.hidden, f"apiary {' '.join(path)}: option {p.name} is hidden"
                missing += [(path, o) for o in (*p.opts, *p.secondary_opts) if o not in text]
            else:
                usage = text.splitlines()[0]
                if p.human_readable_name.upper() not in usage.upper():
                    missing.append((path, p.human_readable_name))
    assert seen > 60  # the walk really reached the subcommands
    assert not missing, f"not in their command's -h: {missing}"


def test_observe_help_lists_every_filter_it_parses() -> None:
    cmd = cli.commands["observe"]
    text = _help(("observe",), cmd)
    assert "Filters" in text
    assert set(FILTER_HELP) == set(FILTER_FLAGS)  # the help and the parser cannot drift apart
    for flag in FILTER_FLAGS:
        assert f"--{flag}" in text, flag
    for short, long in FLAG_ALIASES.items():
        assert f"-{short}, --{long}" in text
    assert SHORT == {"-n": "--namespace", "-l": "--label", "-t": "--type"}
