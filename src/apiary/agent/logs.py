"""The agent's log: Python logging (asyncio, aiohttp, apiary) to stderr, with repeated lines rate-limited.

A condition that repeats in a tight loop (an accept() failing for lack of file descriptors, a request that
fails the same way thousands of times) is logged a few times, then counted: once per window the log says how
many similar lines were suppressed. The log stays readable and its size bounded, and nothing is hidden."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable


class RepeatLimit(logging.Filter):
    """Let through at most ``burst`` records per (logger, message template) in each ``window`` seconds."""

    def __init__(self, burst: int = 5, window: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.burst, self.window, self.clock = burst, window, clock
        self.seen: dict[tuple[str, str], tuple[float, int]] = {}  # key -> (window start, records in it)
        self.suppressed_total = 0

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = self.clock()
        start, n = self.seen.get(key, (now, 0))
        if now - start >= self.window:
            if n > self.burst:  # say how many were held back in the window that ended
                record.msg = f"{record.msg} [{n - self.burst} similar lines suppressed in the last {self.window:g} s]"
            start, n = now, 0
        n += 1
        self.seen[key] = (start, n)
        if n <= self.burst:
            if n == self.burst:
                record.msg = f"{record.msg} [repeated {self.burst} times: similar lines are now suppressed for " \
                    f"up to {self.window:g} s]"
            return True
        self.suppressed_total += 1
        if len(self.seen) > 10_000:  # never grows without bound either
            self.seen.clear()
        return False


def setup_agent_logging(level: int = logging.INFO) -> RepeatLimit:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    limit = RepeatLimit()
    handler.addFilter(limit)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    return limit
