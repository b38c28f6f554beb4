"""Event filters for the Tetragon-style event stream (CLI options -> predicate on event dicts)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from apiary.observe.clock import datetime_to_ns, parse_rfc3339_ns
from apiary.observe.tetragon.events import event_kind
from apiary.textutil import clip

# CLI event type -> JSON event key. Hook sensors register theirs, e.g. "kprobe": "process_kprobe".
EVENT_TYPES: dict[str, str] = {
    "exec": "process_exec",
    "exit": "process_exit",
    "kprobe": "process_kprobe",
    "tracepoint": "process_tracepoint",
    "lsm": "process_lsm",
    "uprobe": "process_uprobe",
}

PID_MAX = 1 << 22  # the kernel's PID_MAX_LIMIT
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``--since``: a duration back from now (``30s``, ``5m``, ``1h30m``, ``250ms``, ``2d``) or an
    RFC3339 timestamp. Returns an aware UTC datetime."""
    s = text.strip()
    if _DURATION.fullmatch(s):
        secs = sum(float(n) * _UNIT_S[u] for n, u in _DURATION_PART.findall(s))
        try:
            return (now or datetime.now(UTC)) - timedelta(seconds=secs)
        except OverflowError:
            raise ValueError(f"--since: {clip(text)} reaches back before the year 1") from None
    try:
        ns = parse_rfc3339_ns(s)
        return datetime.fromtimestamp(ns // 1_000_000_000, UTC) + timedelta(microseconds=ns % 1_000_000_000 // 1000)
    except (ValueError, OverflowError, OSError):
        raise ValueError(
            f"--since: {clip(repr(text))} is neither a duration (e.g. 30s, 5m, 1h30m) "
            "nor an RFC3339 timestamp (e.g. 2024-05-01T12:00:00Z)"
        ) from None


def event_type_key(name: str) -> str:
    """``exec`` / ``process_exec`` / ``PROCESS_EXEC`` -> ``process_exec``; ValueError if unknown."""
    n = name.strip().lower()
    if n in EVENT_TYPES:
        return EVENT_TYPES[n]
    if n in EVENT_TYPES.values():
        return n
    known = ", ".join(sorted(EVENT_TYPES))
    raise ValueError(f"--event-type: unknown event type {name!r} (known: {known})")


@dataclass(frozen=True, slots=True)
class EventFilter:
    """All set criteria must hold (AND); an empty criterion matches everything."""

    pids: frozenset[int] = frozenset()
    binary: re.Pattern[str] | None = None
    types: frozenset[str] = frozenset()  # JSON event keys
    since_ns: int | None = None

    @classmethod
    def from_options(
        cls,
        pids: Iterable[int] | None = None,
        binary: str | None = None,
        event_types: Iterable[str] | None = None,
        since: datetime | str | None = None,
    ) -> EventFilter:
        """Build from CLI options; ``ValueError`` names the offending option."""
        pattern = None
        if binary:
            try:
                pattern = re.compile(binary)
            except re.error as e:
                raise ValueError(f"--binary: invalid regular expression {clip(repr(binary))}: {e}") from None
        bad = [p for p in pids or () if not 0 <= int(p) <= PID_MAX]
        if bad:
            raise ValueError(f"--pid: {clip(bad[0])} is not a pid (0 to {PID_MAX:,})")
        if isinstance(since, str):
            since = parse_since(since)
        return cls(
            pids=frozenset(int(p) for p in pids or ()),
            binary=pattern,
            types=frozenset(event_type_key(t) for t in event_types or ()),
            since_ns=datetime_to_ns(since) if since is not None else None,
        )

    def matches(self, event: dict[str, Any]) -> bool:
        kind = event_kind(event)
        if self.types and kind not in self.types:
            return False
        if self.pids or self.binary is not None:
            body = event.get(kind) if kind else None
            proc = body.get("process") if isinstance(body, dict) else None
            if not isinstance(proc, dict):
                return False
            if self.pids and proc.get("pid") not in self.pids:
                return False
            if self.binary is not None and not self.binary.search(proc.get("binary", "")):
                return False
        if self.since_ns is not None:
            t = event.get("time")
            try:
                if not t or parse_rfc3339_ns(t) < self.since_ns:
                    return False
            except ValueError:
                return False
        return True
