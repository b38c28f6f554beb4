from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from apiary.observe.tetragon.filters import EVENT_TYPES, EventFilter, parse_since


def ev(kind: str, pid: int, binary: str, time: str | None = "2024-05-01T12:00:00.500000000Z") -> dict[str, Any]:
    e: dict[str, Any] = {kind: {"process": {"pid": pid, "binary": binary}}, "node_name": "n"}
    if time is not None:
        e["time"] = time
    return e


EXEC = ev("process_exec", 10, "/usr/bin/curl")
EXIT = ev("process_exit", 11, "/bin/bash")


def test_empty_filter_matches_everything() -> None:
    f = EventFilter.from_options()
    assert f.matches(EXEC) and f.matches(EXIT) and f.matches({"node_name": "n"})


def test_event_types() -> None:
    f = EventFilter.from_options(event_types=["exec"])
    assert f.types == {"process_exec"}
    assert f.matches(EXEC) and not f.matches(EXIT)
    both = EventFilter.from_options(event_types=["PROCESS_EXIT", "process_exec"])
    assert both.matches(EXEC) and both.matches(EXIT)
    with pytest.raises(ValueError, match="--event-type: .*'bogus'"):
        EventFilter.from_options(event_types=["bogus"])
    f = EventFilter.from_options(event_types=["kprobe"])
    assert f.matches(ev("process_kprobe", 1, "/x")) and not f.matches(EXEC)


def test_event_types_are_extensible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(EVENT_TYPES, "usdt", "process_usdt")
    f = EventFilter.from_options(event_types=["usdt"])
    assert f.matches(ev("process_usdt", 1, "/x")) and not f.matches(EXEC)


def test_pids_and_binary_regex() -> None:
    f = EventFilter.from_options(pids=[10, 12])
    assert f.matches(EXEC) and not f.matches(EXIT)
    assert not f.matches({"node_name": "n"})  # no process: cannot match a pid
    g = EventFilter.from_options(binary=r"curl$")
    assert g.matches(EXEC) and not g.matches(EXIT)
    h = EventFilter.from_options(binary="bash", pids=[10])
    assert not h.matches(EXEC) and not h.matches(EXIT)  # criteria are ANDed
    with pytest.raises(ValueError, match="--binary"):
        EventFilter.from_options(binary="(unclosed")


def test_since() -> None:
    t = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    f = EventFilter.from_options(since=t)
    assert f.matches(EXEC)  # 12:00:00.5 >= 12:00:00
    assert not f.matches(ev("process_exec", 1, "/x", "2024-05-01T11:59:59.999999999Z"))
    assert f.matches(ev("process_exec", 1, "/x", "2024-05-01T12:00:00Z"))  # inclusive
    assert not f.matches(ev("process_exec", 1, "/x", None))
    assert not f.matches(ev("process_exec", 1, "/x", "garbage"))
    later = EventFilter.from_options(since=t + timedelta(seconds=1))
    assert not later.matches(EXEC)
    naive = EventFilter.from_options(since=datetime(2024, 5, 1, 12, 0, 1))  # naive = UTC
    assert not naive.matches(EXEC)
    as_text = EventFilter.from_options(since="2024-05-01T14:00:00+02:00")
    assert as_text.since_ns == f.since_ns


def test_parse_since_durations_and_timestamps() -> None:
    now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_since("30s", now) == now - timedelta(seconds=30)
    assert parse_since("5m", now) == now - timedelta(minutes=5)
    assert parse_since("1h30m", now) == now - timedelta(minutes=90)
    assert parse_since("250ms", now) == now - timedelta(milliseconds=250)
    assert parse_since("2d", now) == now - timedelta(days=2)
    assert parse_since("1.5h", now) == now - timedelta(minutes=90)
    assert parse_since("2024-05-01T10:00:00.123456Z") == datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)
    got = parse_since("2024-05-01T12:00:00+02:00")
    assert got == datetime(2024, 5, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    recent = parse_since("10s")
    assert timedelta(seconds=9) < datetime.now(UTC) - recent < timedelta(seconds=20)


@pytest.mark.parametrize("bad", ["", "5", "5x", "-5m", "yesterday", "1h 30m", "2024-05-01", "12:00:00Z"])
def test_parse_since_errors(bad: str) -> None:
    with pytest.raises(ValueError, match="--since"):
        parse_since(bad)
    with pytest.raises(ValueError, match="--since"):
        EventFilter.from_options(since=bad)
