"""Tetragon's export rate limit (``--export-rate-limit``, events per minute).

A token bucket of ``per_minute`` tokens refilled at ``per_minute``/60 per second (golang.org/x/time/rate with
burst = the limit, as Tetragon configures it); 0 lets nothing through, a negative limit is no limit. What
it refuses is counted; once per report interval (a minute), if anything was dropped, the caller writes a
``rate_limit_info`` event with the number (``report``). Times are seconds from any monotonic clock.
"""

from __future__ import annotations


class RateLimiter:
    def __init__(self, per_minute: int, now: float, interval: float = 60.0) -> None:
        self.limit = per_minute
        self.interval = interval
        self.rate = per_minute / interval if per_minute > 0 else 0.0
        self.tokens = float(max(per_minute, 0))
        self.last = now
        self.next_report = now + interval
        self.pending = 0  # dropped since the last report
        self.dropped = 0  # dropped in all

    @property
    def unlimited(self) -> bool:
        return self.limit < 0

    def allow(self, now: float) -> bool:
        if self.limit < 0:
            return True
        if self.rate:
            self.tokens = min(float(self.limit), self.tokens + (now - self.last) * self.rate)
        self.last = max(self.last, now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        self.pending += 1
        self.dropped += 1
        return False

    def report(self, now: float, final: bool = False) -> int:
        """The number dropped since the last report, when a report is due (or ``final``); else 0."""
        if not final and now < self.next_report:
            return 0
        if not final:
            self.next_report = now + self.interval
        n, self.pending = self.pending, 0
        return n
