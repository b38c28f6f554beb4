"""Reading one ring buffer: each record is decoded by the handler its sensor registered for its type byte,
then given to the consumer of that kind. The reader counts what it read, decoded and failed on; it knows
no record layout.
"""

from __future__ import annotations

import collections
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from apiary.loader import RingBuffer
from apiary.sensors.base import RecordHandler, Sensor

Consumer = Callable[[Any], None]


class CorruptRecord(Exception):
    """Raised by a consumer for a record that decoded but makes no sense (counted as a decode error)."""


@dataclass
class ReadCounters:
    received: int = 0  # records read
    received_by_byte: list[int] = field(default_factory=lambda: [0] * 256)  # by the record's type byte
    by_type: collections.Counter[str] = field(default_factory=collections.Counter)  # decoded, by kind
    decode_errors: int = 0
    handler_errors: int = 0  # exceptions while handling a record (logged once per kind)


class RingReader:
    def __init__(
        self,
        ring: RingBuffer | None,
        handlers: Mapping[int, RecordHandler],
        consumers: Mapping[str, Consumer],
        log_errors: bool = True,
    ) -> None:
        self.ring = ring
        self.handlers = dict(handlers)  # fixed once the reader is made (routes are looked up once per type)
        self.consumers = dict(consumers)
        self._routes: dict[int, tuple[RecordHandler | None, Consumer | None]] = {}
        self.counters = ReadCounters()
        self.log_errors = log_errors
        self._logged: set[str] = set()

    @classmethod
    def of(cls, ring: RingBuffer | None, sensors: Iterable[Sensor], consumers: Mapping[str, Consumer]) -> RingReader:
        """A reader of ``ring`` with the handlers of every sensor whose records arrive on it."""
        handlers: dict[int, RecordHandler] = {}
        for s in sensors:
            if s.records_into() is ring:
                handlers.update(s.handlers())
        return cls(ring, handlers, consumers)

    def fileno(self) -> int:
        return self.ring.fileno() if self.ring else -1

    def record(self, buf: memoryview) -> None:
        c = self.counters
        c.received += 1
        t = buf[0]
        c.received_by_byte[t] += 1
        route = self._routes.get(t)
        if route is None:
            route = self._routes[t] = self._route(t)
        h, consume = route
        if h is None:
            c.decode_errors += 1
            return
        try:
            msg = h.decode(buf)
        except Exception:  # noqa: BLE001 - a corrupt record is counted, never fatal
            c.decode_errors += 1
            return
        c.by_type[h.kind] += 1
        if consume is None:  # records nobody here wants (a sensor this agent does not drive)
            return
        try:
            consume(msg)
        except CorruptRecord:
            c.decode_errors += 1

    def _route(self, t: int) -> tuple[RecordHandler | None, Consumer | None]:
        """The handler of records of type byte t and the consumer of their kind (looked up once per type)."""
        h = self.handlers.get(t)
        return h, self.consumers.get(h.kind) if h is not None else None

    def _safe_record(self, buf: memoryview) -> None:
        """A failure on one record is counted and logged (once per kind); the ring keeps draining."""
        try:
            self.record(buf)
        except Exception as e:  # noqa: BLE001
            self.counters.handler_errors += 1
            key = f"{type(e).__name__}: {e}"
            if self.log_errors and key not in self._logged:
                self._logged.add(key)
                traceback.print_exc()

    def drain(self) -> int:
        return self.ring.consume(self._safe_record) if self.ring else 0

    def peek(self, handle: Callable[[memoryview], None]) -> bool:
        """Walk the records waiting in the ring without consuming them (True: the walk reached the end)."""
        return self.ring.peek(handle) if self.ring else True
