"""Kernel time (CLOCK_MONOTONIC ns, the ``ktime`` of the BPF programs) to wall-clock time.

Tetragon does the same (``DecodeKtime``): wall = ktime + (CLOCK_REALTIME - CLOCK_MONOTONIC). The
offset drifts when the wall clock is stepped (NTP, settimeofday), so long-running agents call
:meth:`KtimeClock.resync` now and then.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

_NS = 1_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RFC3339 = re.compile(r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})")


_last_sec = -1
_last_prefix = ""


def format_rfc3339_ns(ns: int) -> str:
    """Unix ns -> RFC3339 UTC with exactly 9 fractional digits and a ``Z``."""
    global _last_sec, _last_prefix
    sec, frac = divmod(ns, _NS)
    if sec != _last_sec:  # events come in bursts within one second: format the date part once
        _last_prefix = (_EPOCH + timedelta(seconds=sec)).strftime("%Y-%m-%dT%H:%M:%S")
        _last_sec = sec
    return f"{_last_prefix}.{frac:09d}Z"


def parse_rfc3339_ns(text: str) -> int:
    """RFC3339 timestamp (any number of fractional digits, ``Z`` or ``±hh:mm``) -> Unix ns.

    Digits past the 9th are truncated. Raises ``ValueError`` on anything else.
    """
    m = _RFC3339.fullmatch(text.strip())
    if not m:
        raise ValueError(f"not an RFC3339 timestamp: {text!r}")
    y, mo, d, h, mi, s = (int(g) for g in m.groups()[:6])
    frac, tz = m.group(7) or "", m.group(8)
    offset = 0
    if tz not in ("Z", "z"):
        sign = -1 if tz[0] == "-" else 1
        offset = sign * (int(tz[1:3]) * 3600 + int(tz[4:6]) * 60)
    dt = datetime(y, mo, d, h, mi, min(s, 59), tzinfo=UTC)  # a leap second 60 is folded into :59
    sec = (dt - _EPOCH) // timedelta(seconds=1) - offset
    return sec * _NS + int((frac + "000000000")[:9])


def datetime_to_ns(dt: datetime) -> int:
    """Aware or naive (taken as UTC) datetime -> Unix ns, exact to the microsecond."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // timedelta(microseconds=1) * 1000


class KtimeClock:
    """Converts kernel CLOCK_MONOTONIC nanoseconds to wall-clock time.

    ``offset_ns`` (CLOCK_REALTIME - CLOCK_MONOTONIC) is measured at construction unless given,
    which makes the conversion deterministic in tests.
    """

    __slots__ = ("offset_ns",)

    def __init__(self, offset_ns: int | None = None) -> None:
        self.offset_ns = 0
        if offset_ns is None:
            self.resync()
        else:
            self.offset_ns = offset_ns

    def resync(self) -> int:
        """Re-measure the REALTIME - MONOTONIC offset (bracketing the wall-clock read) and return it."""
        m1 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        r = time.clock_gettime_ns(time.CLOCK_REALTIME)
        m2 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        self.offset_ns = r - (m1 + m2) // 2
        return self.offset_ns

    def wall_ns(self, ktime: int) -> int:
        """Unix time in ns of the kernel CLOCK_MONOTONIC instant ``ktime``."""
        return ktime + self.offset_ns

    def to_rfc3339(self, ktime: int) -> str:
        """e.g. ``2023-10-06T22:03:57.700327580Z``."""
        return format_rfc3339_ns(self.wall_ns(ktime))
