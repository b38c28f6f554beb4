"""Preflight report logic without a kernel: exit-code rule, JSON shape, table rendering, CLI wiring."""

from __future__ import annotations

import io
import json

import pytest
from click.testing import CliRunner

from apiary.cli import preflight_cmd
from apiary.kernel import preflight as pf
from apiary.kernel.preflight import CHECK_NAMES, REQUIRED, Check, Report
from apiary.observe.colour import wants_colour

FIELDS = {"name", "category", "ok", "required", "detail", "disables", "fallback"}


def _report(*checks: Check) -> Report:
    return Report(checks=list(checks), kernel="6.18.0-test", duration_s=0.25)


def _ok(name: str, required: bool = False) -> Check:
    return Check(name, "program", True, required, "attached; ran")


def _missing(name: str, required: bool = False) -> Check:
    return Check(name, "program", False, required, "load: Operation not permitted", "kprobes", "tracepoints")


def test_all_ok_exits_zero() -> None:
    r = _report(_ok("btf", True), _ok("tp_btf", True), _ok("kprobe"))
    assert r.ok and r.exit_code == 0
    assert r.failed == [] and r.required_failed == []


def test_optional_failures_still_exit_zero() -> None:
    r = _report(_ok("btf", True), _missing("kprobe"), _missing("fentry"), _missing("lsm"))
    assert r.exit_code == 0
    assert [c.name for c in r.failed] == ["kprobe", "fentry", "lsm"]
    assert r.summary()["required_failed"] == []


def test_a_required_failure_exits_one() -> None:
    r = _report(_ok("btf", True), _missing("ringbuf", True), _missing("kprobe"))
    assert not r.ok and r.exit_code == 1
    assert [c.name for c in r.required_failed] == ["ringbuf"]
    assert r.summary()["required_failed"] == ["ringbuf"]


def test_empty_report_is_ok() -> None:
    assert _report().exit_code == 0


def test_get_and_contains() -> None:
    r = _report(_ok("tc"))
    assert r.get("tc").ok
    assert "tc" in r and "xdp_native" not in r
    with pytest.raises(KeyError):
        r.get("xdp_native")


def test_json_shape() -> None:
    r = _report(_ok("btf", True), _missing("kprobe"))
    r.fixed.append("bpf at /sys/fs/bpf")
    d = json.loads(preflight_cmd.render_json(r))
    assert set(d) == {"checks", "summary"}
    assert [c["name"] for c in d["checks"]] == ["btf", "kprobe"]
    for c in d["checks"]:
        assert set(c) == FIELDS
        assert isinstance(c["ok"], bool) and isinstance(c["required"], bool)
    s = d["summary"]
    assert s["total"] == 2 and s["passed"] == 1
    assert s["failed"] == ["kprobe"] and s["required_failed"] == []
    assert s["ok"] is True and s["exit_code"] == 0
    assert s["fixed"] == ["bpf at /sys/fs/bpf"]
    assert s["kernel"] == "6.18.0-test"


def test_every_check_has_wording_and_required_set_is_the_sensor_minimum() -> None:
    assert len(set(CHECK_NAMES)) == len(CHECK_NAMES)
    for name in CHECK_NAMES:
        category, disables, fallback = pf._META[name]
        assert category
        if name not in ("kernel",):
            assert disables and fallback, name
    assert {"btf", "bpffs", "tp_btf", "ringbuf"} <= set(REQUIRED) <= set(CHECK_NAMES)
    for optional in ("kprobe", "fentry", "lsm", "uprobe", "tc", "xdp_native", "probe_write_user"):
        assert pf._check(optional, False, "x").required is False
    assert pf._check("tp_btf", False, "x").required is True


def test_fallback_texts_say_what_apiary_does_instead() -> None:
    assert "tracepoints where possible" in pf._check("kprobe", False, "").fallback
    assert pf._check("fentry", False, "").fallback == pf._check("kprobe", False, "").fallback
    assert "Sigkill" in pf._check("lsm", False, "").fallback
    assert pf._check("probe_write_user", False, "").disables.startswith("nothing")


def _table_text(r: Report, colour: bool = False) -> str:
    buf = io.StringIO()
    preflight_cmd.render_table(r, stream=buf, colour=colour)
    return buf.getvalue()


def test_table_plain_has_marks_columns_and_no_escape_codes() -> None:
    r = _report(_ok("tp_btf", True), _missing("kprobe"))
    text = _table_text(r)
    assert "\x1b[" not in text
    for col in ("CHECK", "RESULT", "DETAIL", "IF MISSING"):
        assert col in text
    assert "✓" in text and "✗" in text
    assert "load: Operation not permitted" in text
    assert "disables: kprobes" in text and "instead: tracepoints" in text
    assert "1/2 checks passed" in text


def test_table_shows_required_failures() -> None:
    text = _table_text(_report(_missing("bpffs", True)))
    assert "REQUIRED" in text and "apiary cannot run" in text


def test_table_colour_only_when_asked() -> None:
    assert "\x1b[" in _table_text(_report(_ok("tc"), _missing("kprobe")), colour=True)


def test_no_color_env_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setenv("NO_COLOR", "1")
    assert wants_colour(Tty()) is False
    monkeypatch.delenv("NO_COLOR")
    assert wants_colour(Tty()) is True
    assert wants_colour(io.StringIO()) is False


@pytest.mark.parametrize(
    ("checks", "code"),
    [
        ((_ok("btf", True), _missing("kprobe")), 0),
        ((_missing("btf", True), _ok("kprobe")), 1),
    ],
)
def test_cli_exit_code_follows_required_checks(
    monkeypatch: pytest.MonkeyPatch, checks: tuple[Check, ...], code: int
) -> None:
    seen: dict[str, bool] = {}

    def fake(fix: bool = False) -> Report:
        seen["fix"] = fix
        return _report(*checks)

    monkeypatch.setattr(preflight_cmd, "run_preflight", fake)
    runner = CliRunner()
    res = runner.invoke(preflight_cmd.preflight, ["-o", "json", "--fix"])
    assert res.exit_code == code, res.output
    assert seen["fix"] is True
    assert json.loads(res.output)["summary"]["exit_code"] == code
    res = runner.invoke(preflight_cmd.preflight, [])
    assert res.exit_code == code
    assert "CHECK" in res.output and "\x1b[" not in res.output
    assert seen["fix"] is False


def test_cli_rejects_unknown_output() -> None:
    res = CliRunner().invoke(preflight_cmd.preflight, ["-o", "yaml"])
    assert res.exit_code == 2


def test_cli_turns_a_crash_into_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(fix: bool = False) -> Report:
        raise RuntimeError("no luck")

    monkeypatch.setattr(preflight_cmd, "run_preflight", boom)
    res = CliRunner().invoke(preflight_cmd.preflight, [])
    assert res.exit_code == 2
    assert "preflight failed: no luck" in res.output
    assert "Traceback" not in res.output


def test_every_probe_is_a_check_with_wording() -> None:
    from apiary.kernel.probes import PROBES

    assert PROBES and set(PROBES) <= set(CHECK_NAMES)
    for name in PROBES:
        assert pf._check(name, False, "x").category in ("program", "helper"), name
