"""What happens to each event or flow on its way to an export sink: filters, field filters, rate limit.

``EventPipeline`` is Tetragon's exporter: allow/deny ``Filter``s, then field filters, then the rate limit
(with its ``rate_limit_info`` record); ``FlowPipeline`` is Hubble's: allow/deny ``FlowFilter``s, then the
field mask on the flow. Both return new objects (the bus's events are shared) and count what they dropped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from apiary.observe.export import fieldmask
from apiary.observe.export.ratelimit import RateLimiter
from apiary.observe.export.settings import EventRules, FlowRules
from apiary.observe.tetragon.events import event_kind

Event = dict[str, Any]


@dataclass
class PipelineStats:
    received: int = 0
    filtered: int = 0  # refused by the allow/deny lists
    rate_limited: int = 0
    passed: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "received": self.received,
            "filtered": self.filtered,
            "rate_limited": self.rate_limited,
            "passed": self.passed,
        }


class EventPipeline:
    def __init__(self, rules: EventRules, limiter: RateLimiter | None, node: str) -> None:
        self.rules, self.limiter, self.node = rules, limiter, node
        self.stats = PipelineStats()

    def process(self, evs: list[Event], now: float) -> list[Event]:
        out = []
        flt, ffs, lim = self.rules.filter, self.rules.field_filters, self.limiter
        for ev in evs:
            self.stats.received += 1
            if flt and not flt.matches(ev):
                self.stats.filtered += 1
                continue
            kind = event_kind(ev)
            if kind is not None:
                for ff in ffs:
                    ev = ff.apply(ev, kind)
            if lim is not None and not lim.allow(now):
                self.stats.rate_limited += 1
                continue
            out.append(ev)
        self.stats.passed += len(out)
        return out

    def rate_limit_info(self, now: float, wall_ns: int, final: bool = False) -> Event | None:
        """Tetragon's ``rate_limit_info`` record when a report is due and something was dropped."""
        if self.limiter is None:
            return None
        n = self.limiter.report(now, final)
        if not n:
            return None
        return {
            "rate_limit_info": {"number_of_dropped_process_events": str(n)},  # uint64: a string in protojson
            "node_name": self.node,
            "time": _rfc3339(wall_ns),
        }


def _rfc3339(ns: int) -> str:
    """Unix ns -> RFC3339 UTC with 9 fractional digits (thread-safe: no shared cache)."""
    sec, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:09d}Z"


class FlowPipeline:
    def __init__(self, rules: FlowRules) -> None:
        self.rules = rules
        self.stats = PipelineStats()

    def process(self, resps: list[Event], now: float) -> list[Event]:
        out = []
        flt, mask = self.rules.filter, self.rules.mask
        for r in resps:
            self.stats.received += 1
            if flt and not flt.matches(r):
                self.stats.filtered += 1
                continue
            if mask and isinstance(r.get("flow"), dict):
                r = {**r, "flow": fieldmask.include(r["flow"], mask)}
            out.append(r)
        self.stats.passed += len(out)
        return out
