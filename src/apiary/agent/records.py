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
# a run of raw records of one kind -> (records decoded, records counted as decode errors)
BatchFn = Callable[[list[bytes]], tuple[int, int]]


class Batched:
    """A consumer of one decoded record at a time that also takes a run of raw records of its kind at once
    (``batch``: it decodes them itself, as its handler would, with the same counts as one at a time). The
    reader hands it every run of consecutive records of its type byte that one wake-up read: one call per run,
    not several per record."""

    __slots__ = ("one", "batch")

    def __init__(self, one: Consumer, batch: BatchFn) -> None:
        self.one, self.batch = one, batch

    def __call__(self, msg: Any) -> None:
        self.one(msg)


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

    def record(self, buf: memoryview | bytes) -> None:
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

    def _safe_record(self, buf: memoryview | bytes) -> None:
        """A failure on one record is counted and logged (once per kind); the ring keeps draining."""
        try:
            self.record(buf)
        except Exception as e:  # noqa: BLE001
            self._log_failure(e)

    def _log_failure(self, e: Exception) -> None:
        """A handler failed (counted; logged once per kind of failure)."""
        self.counters.handler_errors += 1
        key = f"{type(e).__name__}: {e}"
        if self.log_errors and key not in self._logged:
            self._logged.add(key)
            traceback.print_exc()

    def drain(self) -> int:
        return self.ring.consume_batch(self.records) if self.ring else 0

    def records(self, recs: list[bytes]) -> None:
        """Records as read at one wake-up: each run of one type byte whose consumer is ``Batched`` in one call,
        the others one by one (``record``)."""
        c = self.counters
        i, n = 0, len(recs)
        while i < n:
            t = recs[i][0]
            j = i + 1
            while j < n and recs[j][0] == t:
                j += 1
            route = self._routes.get(t)
            if route is None:
                route = self._routes[t] = self._route(t)
            h, consume = route
            if h is None or not isinstance(consume, Batched):
                for k in range(i, j):
                    self._safe_record(recs[k])
                i = j
                continue
            c.received += j - i
            c.received_by_byte[t] += j - i
            try:
                decoded, bad = consume.batch(recs[i:j] if i or j < n else recs)
            except Exception as e:  # noqa: BLE001 - as one record's failure: counted, logged, the ring drains
                decoded, bad = 0, 0
                self._log_failure(e)
            c.by_type[h.kind] += decoded
            c.decode_errors += bad
            i = j

    def peek(self, handle: Callable[[memoryview], None]) -> bool:
        """Walk the records waiting in the ring without consuming them (True: the walk reached the end)."""
        return self.ring.peek(handle) if self.ring else True
