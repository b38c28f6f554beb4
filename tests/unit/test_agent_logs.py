"""Repeated log lines are rate-limited and counted, never silently dropped."""

from __future__ import annotations

import io
import logging

from apiary.agent.logs import RepeatLimit


def _logger(limit: RepeatLimit) -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    h = logging.StreamHandler(out)
    h.addFilter(limit)
    lg = logging.getLogger(f"test-repeat-{id(limit)}")
    lg.propagate = False
    lg.addHandler(h)
    return lg, out


def test_a_tight_loop_of_the_same_error_is_bounded_and_counted() -> None:
    now = [0.0]
    limit = RepeatLimit(burst=3, window=60, clock=lambda: now[0])
    lg, out = _logger(limit)
    for i in range(10_000):
        try:
            raise OSError(24, "Too many open files")
        except OSError:
            lg.exception("socket.accept() out of system resource: %s", i)
    lines = out.getvalue()
    assert lines.count("socket.accept() out of system resource") == 3
    assert "similar lines are now suppressed" in lines
    assert len(lines) < 5_000
    assert limit.suppressed_total == 9_997
    now[0] = 61.0
    lg.error("socket.accept() out of system resource: %s", "again")
    assert "9997 similar lines suppressed in the last 60 s" in out.getvalue()


def test_different_messages_are_limited_separately() -> None:
    limit = RepeatLimit(burst=2, window=60, clock=lambda: 0.0)
    lg, out = _logger(limit)
    for _ in range(5):
        lg.warning("a")
        lg.warning("b")
    lines = out.getvalue().splitlines()
    assert [ln[0] for ln in lines] == ["a", "b", "a", "b"]
