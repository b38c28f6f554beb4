"""Rule changes the running HAProxy takes without a reload: the configuration's text is a layout of filter and
rule slots in two buffers; a change that fits the layout only rewrites the idle buffer's pattern files and
flips which buffer judges (``gen.map``), so every client connection stays open."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from test_l7_http_policy import EPS, SEED, compiled  # noqa: I001

from apiary.sensors.l7proxy.config import ProxyConfig, build
from apiary.sensors.l7proxy.haproxy import HAProxy, ProxyError, cli_escape

ADDRS = {e.ep_id: e.ipv4 for e in EPS}


def cfg_of(doc: str, tmp: Path, previous: ProxyConfig | None = None) -> ProxyConfig:
    return build(compiled(doc).l7 if doc else {}, ADDRS, port=15001, state_dir=str(tmp), previous=previous)


def test_a_regex_edit_keeps_the_text_and_flips_the_buffer(tmp_path: Path) -> None:
    first = cfg_of(SEED, tmp_path)
    assert first.active == 0 and first.files["gen.map"] == "active 0\n"
    edited = cfg_of(SEED.replace("/api/v1/.*", "/api/v2/.*"), tmp_path, first)
    assert edited.text == first.text and edited.active == 1 and edited.files["gen.map"] == "active 1\n"
    assert "^(?:/api/v2/.*)$\n" in edited.buffer_files(1).values()
    assert edited.buffer_files(0) == first.buffer_files(0)  # the old buffer stays as HAProxy has it
    # numbers of both buffers name their rules: records of requests judged just before the flip still resolve
    old_rule = next(n for n, r in first.rules.items() if r.path == "/api/v1/.*")
    new_rule = next(n for n, r in edited.buffer_rules().items() if r.path == "/api/v2/.*")
    assert edited.rules[old_rule].path == "/api/v1/.*" and new_rule != old_rule
    assert len(edited.buffer_rules()) == 2 and len(edited.buffer_filters()) == 1
    # the same rules again: nothing to load, no flip
    again = cfg_of(SEED.replace("/api/v1/.*", "/api/v2/.*"), tmp_path, edited)
    assert again.active == 1 and again.files == edited.files
    # and back: into buffer 0 again, its stale numbers replaced
    back = cfg_of(SEED, tmp_path, again)
    assert back.active == 0 and back.text == first.text
    assert {r.path for r in back.buffer_rules().values()} == {"/api/v1/.*", "/api/v1/orders"}


def test_one_rule_more_or_another_endpoint_fits_a_new_shape_does_not(tmp_path: Path) -> None:
    first = cfg_of(SEED, tmp_path)
    more = SEED.replace('        - method: "GET"\n', '        - method: "GET"\n          path: "/healthz"\n'
                        '        - method: "GET"\n', 1)
    assert more != SEED
    grown = cfg_of(more, tmp_path, first)
    assert grown.text == first.text and len(grown.buffer_rules()) == 3
    # an L7 rule for a second endpoint takes the spare filter slot
    other = SEED.replace("app: frontend", "app: other", 1)
    both = cfg_of(SEED + "---\n" + other.replace("name: l7-http-policy", "name: other"), tmp_path, first)
    assert both.text == first.text and len(both.buffer_filters()) == 2
    assert {f.address for f in both.buffer_filters().values()} == {"10.200.0.10", "10.200.0.30"}
    # a rule with a host: a new rule shape, a new layout (a reload), its first buffer active
    host = cfg_of(SEED.replace('          path: "/api/v1/.*"\n',
                               '          path: "/api/v1/.*"\n          host: "a.b"\n'),
                  tmp_path, first)
    assert host.text != first.text and host.active == 0
    # no rules left: the slots are emptied, the text stays
    none = cfg_of("", tmp_path, first)
    assert none.text == first.text and not none.buffer_filters()
    assert all(v == "" for k, v in none.buffer_files(none.active).items())


def test_runtime_api_arguments_are_escaped() -> None:
    assert cli_escape(r"^(?:/a\.b c;d)$") == r"^(?:/a\\.b\ c\;d)$"


class _Recorder(HAProxy):
    """HAProxy's runtime API replaced by a recorder that answers as HAProxy 2.6 does (``reply``)."""

    def __init__(self, tmp: Path, reply: Callable[[str], str]) -> None:
        super().__init__(tmp, "unit-hot", tmp / "cg", port=15001)
        self.sent: list[str] = []
        self.reply = reply

    def runtime(self, command: str) -> str:
        self.sent.append(command)
        return self.reply(command)


def _answer(active: list[int]) -> Callable[[str], str]:
    def reply(command: str) -> str:
        for c in command.split(";"):
            if c.startswith("set map ") and c.split()[-2] == "active":
                active[0] = int(c.split()[-1])
        return f"0x55aa00 active {active[0]}\n\n"
    return reply


def test_the_flip_is_sent_alone_after_every_load_was_proven(tmp_path: Path) -> None:
    first = cfg_of(SEED, tmp_path)
    edited = cfg_of(SEED.replace("/api/v1/.*", "/api/v2/.*"), tmp_path, first)
    proxy = _Recorder(tmp_path, _answer([0]))
    proxy._load(first, edited)
    *loads, flip = proxy.sent
    assert flip == f"set map {proxy.dir}/gen.map active 1;show map {proxy.dir}/gen.map"
    assert loads and all("set map" not in c and c.endswith(f"show map {proxy.dir}/gen.map") for c in loads)
    assert any("add acl" in c and "/api/v2/" in c for c in loads)


def test_a_refused_or_unread_load_never_flips(tmp_path: Path) -> None:
    first = cfg_of(SEED, tmp_path)
    edited = cfg_of(SEED.replace("/api/v1/.*", "/api/v2/.*"), tmp_path, first)
    refused = _Recorder(tmp_path, lambda c: "'add acl' failed: bad pattern\n0x55aa00 active 0\n")
    with pytest.raises(ProxyError, match="refused"):
        refused._load(first, edited)
    cut = _Recorder(tmp_path, lambda c: "")  # a session HAProxy ended without reading the batch to its end
    with pytest.raises(ProxyError, match="to its end"):
        cut._load(first, edited)
    assert not any("set map" in c for c in refused.sent + cut.sent)


def test_a_pattern_the_runtime_api_cannot_carry_as_the_file_does_is_left_to_a_reload(tmp_path: Path) -> None:
    """``str.splitlines`` would cut ``tok\\x1cen`` in two patterns ORed together (fail open): such a file is
    never sent through the runtime API; the caller reloads HAProxy from the file."""
    first = cfg_of(SEED, tmp_path)
    odd = cfg_of(SEED.replace("application/json", "tok\\x1cen"), tmp_path, first)  # YAML's escape
    assert odd.text == first.text and any("\x1c" in v for v in odd.buffer_files(odd.active).values())
    proxy = _Recorder(tmp_path, _answer([0]))
    with pytest.raises(ProxyError, match="printable"):
        proxy._load(first, odd)
    assert proxy.sent == []


def test_numbers_logged_before_two_flips_keep_their_meaning(tmp_path: Path) -> None:
    """gen.map holds an epoch (one more at each flip; its parity picks the backend) and every request logs
    it: a request judged by the first rules but logged after two edits (a long upload) is read in the first
    configuration, whose rule 1 is not the one the same number means now."""
    first = cfg_of(SEED, tmp_path)
    second = cfg_of(SEED.replace("/api/v1/.*", "/admin/.*"), tmp_path, first)
    third = cfg_of(SEED.replace("/api/v1/.*", "/other/.*"), tmp_path, second)
    assert (first.epoch, second.epoch, third.epoch) == (0, 1, 2) and third.files["gen.map"] == "active 2\n"
    assert third.active == 0 and third.rules[1].path == "/other/.*" != first.rules[1].path
    proxy = HAProxy(tmp_path, "unit-epoch", tmp_path / "cg", port=15001)
    for cfg in (first, second, third):
        proxy._keep(cfg)
    assert proxy.config_for("0").rules[1].path == "/api/v1/.*"
    assert proxy.config_for("2") is third and proxy.config_for("-") is third and proxy.config_for("") is third
    # a new layout starts at the next even epoch: buffer 0 judges
    host = cfg_of(SEED.replace('          path: "/api/v1/.*"\n', '          path: "/api/v1/.*"\n          host: "h"\n'),
                  tmp_path, third)
    assert host.text != third.text and host.epoch == 4 and host.active == 0
