"""Test support for the sensors used without the agent."""

from __future__ import annotations

from apiary.sensors.process.sensor import ProcessSensor
from apiary.sensors.tracing import abi as tabi


def tracing_events(ps: ProcessSensor) -> list[tabi.Event]:
    """The tracing sensor's events in the process sensor's ring, drained now (exec/exit records skipped)."""
    evs: list[tabi.Event] = []
    assert ps.ring is not None
    ps.ring.consume(lambda b: evs.append(tabi.decode_event(b)) if b[0] == tabi.MSG_GENERIC else None)
    return evs
