"""`apiary observe` and `apiary service` options as hubble's and kubectl's users type them (the CLI alone: the
agent's stream is a stand-in that records what it was asked; the flows come from the real builder)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import click
import pytest
from click.testing import CliRunner

from apiary.cli import network_cmds
from apiary.cli.main import cli
from apiary.cli.service_cmds import _ref
from apiary.observe.clock import KtimeClock
from apiary.observe.hubble.builder import EndpointInfo, FlowBuilder
from apiary.observe.hubble.raw import CT_NEW, MSG_TRACE, VERDICT_FORWARDED, FlowMsg
from apiary.testing.flows import StaticDirectory

FLOW = FlowBuilder("node", StaticDirectory({1: EndpointInfo(1, "cli", "shop", [], 256, "10.200.0.2")}),
                   KtimeClock(offset_ns=0)).build(FlowMsg(
    ktime=1, kind=MSG_TRACE, sub_type=5, ep_id=1, ifindex=0, egress=True, verdict=VERDICT_FORWARDED,
    src_ip="10.200.0.2", dst_ip="10.200.0.3", proto=17, sport=40000, dport=53, tcp_flags=0, src_identity=256,
    dst_identity=257, ct_state=CT_NEW, rule_id=0, match_type=0, length=60))


class _Stream:
    def __init__(self) -> None:
        self.asked: list[tuple[str, list[tuple[str, str]]]] = []

    def stream(self, path: str, params: list[tuple[str, str]]) -> Iterator[dict[str, Any]]:
        self.asked.append((path, params))
        yield FLOW


@pytest.fixture
def agent(monkeypatch: pytest.MonkeyPatch) -> _Stream:
    s = _Stream()
    monkeypatch.setattr(network_cmds, "_client", lambda ctx: s)
    return s


def test_print_raw_filters_prints_hubbles_flowfilters_and_asks_the_agent_nothing(agent: _Stream) -> None:
    r = CliRunner().invoke(cli, ["observe", "--print-raw-filters", "--verdict", "DROPPED", "--from-pod", "shop/cli"])
    assert r.exit_code == 0, r.output
    assert r.output == """allowlist:\n    - '{"source_pod":["shop/cli"],"verdict":["DROPPED"]}'\n"""
    assert agent.asked == []


def test_last_is_20_without_follow_and_0_with_it_as_in_hubble(agent: _Stream) -> None:
    assert CliRunner().invoke(cli, ["observe"]).exit_code == 0
    r = CliRunner().invoke(cli, ["observe", "--follow"])
    assert r.exit_code == 1 and "ended the flow stream" in r.output  # the stand-in's stream ends
    CliRunner().invoke(cli, ["observe", "--follow", "--last", "5"])
    asked = [dict(p) for _, p in agent.asked]
    assert [(a["last"], a["follow"]) for a in asked] == [("20", "0"), ("0", "1"), ("5", "1")]


def test_first_all_since_until_as_hubble(agent: _Stream) -> None:
    run = CliRunner().invoke
    assert run(cli, ["observe", "--first", "3"]).exit_code == 0
    assert run(cli, ["observe", "--all"]).exit_code == 0
    assert run(cli, ["observe", "--since", "5m", "--until", "2024-01-02T03:04:05Z"]).exit_code == 0
    asked = [dict(p) for _, p in agent.asked]
    assert asked[0]["first"] == "3" and "last" not in asked[0]
    assert asked[1]["all"] == "1" and "last" not in asked[1]
    assert "last" not in asked[2] and asked[2]["until"] == "2024-01-02T03:04:05.000000Z"
    assert asked[2]["since"].startswith("20") and asked[2]["since"].endswith("Z")
    for bad, why in ((["--first", "2", "--last", "3"], "mutually exclusive"), (["--all", "--first", "1"],
                     "mutually exclusive"), (["--first", "1", "--follow"], "--first cannot be used with --follow"),
                     (["--until", "yesterday"], "--until: 'yesterday' is neither a duration")):
        r = run(cli, ["observe", *bad])
        assert r.exit_code == 2 and why in r.output, (bad, r.output)
    assert len(agent.asked) == 3  # a refused command asks nothing


def test_color_always_keeps_the_escapes_in_a_pipe(agent: _Stream) -> None:
    always = CliRunner().invoke(cli, ["observe", "--color", "always"]).output
    auto = CliRunner().invoke(cli, ["observe"]).output
    assert "\x1b[" in always and "\x1b[" not in auto
    assert "shop/cli:40000" in auto


def test_service_names_take_the_namespace_of_dash_n() -> None:
    assert _ref("web") == ("default", "web")
    assert _ref("web", "shop") == ("shop", "web")
    assert _ref("shop/web", "shop") == ("shop", "web")
    with pytest.raises(click.BadParameter, match="-n says 'other'"):
        _ref("shop/web", "other")
