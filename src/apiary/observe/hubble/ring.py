"""The flow ring: a bounded, thread-safe history of ``GetFlowsResponse`` dicts with sequence numbers."""

from __future__ import annotations

import threading
from typing import Any


class FlowRing:
    """Bounded ring of responses with a monotonically increasing sequence number.

    The n-th appended item (from 0) has sequence ``n``. A follower keeps a cursor (the next sequence it
    wants, start with :attr:`next_seq`) and calls :meth:`since`; its new cursor is
    ``cursor + lost + len(items)``. Thread-safe.
    """

    def __init__(self, capacity: int = 4095) -> None:
        if capacity < 1:
            raise ValueError(f"flow ring capacity must be >= 1, got {capacity}")
        self._cap = capacity
        self._buf: list[Any] = [None] * capacity
        self._next = 0
        self._lock = threading.Lock()

    @property
    def capacity(self) -> int:
        return self._cap

    @property
    def next_seq(self) -> int:
        """Sequence number the next appended item gets (= number of items ever appended)."""
        return self._next

    @property
    def oldest_seq(self) -> int:
        """Sequence number of the oldest item still held."""
        return max(0, self._next - self._cap)

    @property
    def overwritten(self) -> int:
        """How many items were pushed out of the ring since it was created."""
        return self.oldest_seq

    def __len__(self) -> int:
        return min(self._next, self._cap)

    def append(self, item: Any) -> int:
        """Add an item (overwriting the oldest when full); returns its sequence number."""
        with self._lock:
            seq = self._next
            self._buf[seq % self._cap] = item
            self._next = seq + 1
            return seq

    def _range(self, start: int, end: int) -> list[Any]:
        return [self._buf[s % self._cap] for s in range(start, end)]

    def last(self, n: int) -> list[Any]:
        """The newest ``n`` items, oldest first."""
        with self._lock:
            end = self._next
            start = max(end - max(n, 0), max(0, end - self._cap))
            return self._range(start, end)

    def first(self, n: int) -> list[Any]:
        """The oldest ``n`` items still held, oldest first."""
        with self._lock:
            start = max(0, self._next - self._cap)
            return self._range(start, min(self._next, start + max(n, 0)))

    def since(self, seq: int) -> tuple[list[Any], int]:
        """Items with sequence >= ``seq`` and how many of those were overwritten before this call."""
        with self._lock:
            end = self._next
            seq = max(seq, 0)
            if seq >= end:
                return [], 0
            oldest = max(0, end - self._cap)
            lost = max(0, oldest - seq)
            return self._range(max(seq, oldest), end), lost

