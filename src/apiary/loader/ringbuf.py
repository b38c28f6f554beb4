"""BPF ring-buffer consumer reading the shared memory directly (no per-record C callback).

Layout (kernel/bpf/ringbuf.c): page 0 is the consumer position (read-write), page 1 the producer
position, then the data area mapped twice so that a record crossing the end reads contiguously.
Each record has an 8-byte header: u32 length with BUSY (bit 31) and DISCARD (bit 30) flags, u32
page offset. Records are 8-byte aligned. The map fd is pollable: EPOLLIN when data is available.

The positions and headers are shared with producers on other CPUs, so each is read and written in one
aligned load or store (a native memoryview cast), never with ``struct``: ``struct.pack_into`` zeroes its
destination before it writes the value, and a producer reading the consumer position in between sees 0,
takes the ring for full and drops its record (counted as lost: 1 to 50 of 100,000 events at 270,000
events/s with the ring never more than 8% full, before this was found).
"""

from __future__ import annotations

import mmap
import select
from collections.abc import Callable

from .errors import BpfError
from .maps import Map

_BUSY = 1 << 31
_DISCARD = 1 << 30
_LEN = ~(_BUSY | _DISCARD) & 0xFFFFFFFF
_HDR = 8


class RingBuffer:
    """Consume records of one BPF_MAP_TYPE_RINGBUF map. Not thread-safe: one consumer."""

    def __init__(self, m: Map) -> None:
        if m.type_name != "ringbuf":
            raise BpfError(f"map {m.name} is {m.type_name}, not a ring buffer")
        self.map = m
        self.size = m.max_entries
        self.mask = self.size - 1
        page = mmap.PAGESIZE
        try:
            self._cons = mmap.mmap(m.fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
            self._prod = mmap.mmap(m.fd, page + 2 * self.size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        except OSError as e:
            raise BpfError(f"mmap ring buffer {m.name}", e.errno or 0) from e
        self._data = memoryview(self._prod)[page:]
        self._cons_pos = memoryview(self._cons)[:8].cast("Q")  # [0]: one 8-byte load or store
        self._prod_pos = memoryview(self._prod)[:8].cast("Q")
        self._hdrs = self._data.cast("I")  # [off >> 2]: a record's length word (records are 8-byte aligned)
        self.records = 0
        self.discarded = 0

    def fileno(self) -> int:
        return self.map.fd

    def available(self) -> int:
        return int(self._prod_pos[0] - self._cons_pos[0])

    def peek(self, handle: Callable[[memoryview], None]) -> bool:
        """Hand every committed, unconsumed record to ``handle`` without consuming it.

        Returns False when the walk stopped at a record a producer is still writing (later records
        were not seen), True when it reached the producer position.
        """
        cons = self._cons_pos[0]
        prod = self._prod_pos[0]
        data, hdrs, mask = self._data, self._hdrs, self.mask
        while cons < prod:
            off = cons & mask
            hdr = hdrs[off >> 2]
            if hdr & _BUSY:
                return False
            length = hdr & _LEN
            if not hdr & _DISCARD:
                handle(data[off + _HDR : off + _HDR + length])
            cons += (length + _HDR + 7) & ~7
        return True

    def consume(self, handle: Callable[[bytes], None], limit: int = 0) -> int:
        """Hand every committed record to ``handle``, one call per record (``consume_batch``; at most ``limit``
        records when it is set). Returns the number of records handled."""

        def each(recs: list[bytes]) -> None:
            for r in recs:
                handle(r)

        return self.consume_batch(each, limit=limit)

    def consume_batch(self, handle: Callable[[list[bytes]], None], batch: int = 4096, limit: int = 0) -> int:
        """Hand every committed record to ``handle``, one call per batch of up to ``batch`` records: the records
        as bytes (copies, kept as long as the caller wants), handed over when a batch is full or the walk caught
        up with the producers (not at each record still being written: a reader right behind busy producers
        would hand over a record or two at a time). The consumer position is published after each walk, so
        the kernel can reuse space while we keep reading. Stops after ``limit`` records when it is set.
        Returns the number of records handled."""
        cons_pos, prod_pos = self._cons_pos, self._prod_pos
        cons = cons_pos[0]
        n = 0
        hdrs, mask, mm = self._hdrs, self.mask, self._prod
        base = mmap.PAGESIZE + _HDR  # a record's bytes in the mapping: the data area is mapped twice, so they
        busy_bit, discard_bit, len_mask = _BUSY, _DISCARD, _LEN  # read contiguously even across its end
        if limit:
            batch = min(batch, limit)
        recs: list[bytes] = []
        while True:
            prod = prod_pos[0]
            busy = False
            room = batch - len(recs)
            append = recs.append
            while cons < prod and room:
                off = cons & mask
                hdr = hdrs[off >> 2]
                if hdr & busy_bit:  # a producer is still writing this one: wait for it
                    busy = True
                    break
                length = hdr & len_mask
                if hdr & discard_bit:
                    self.discarded += 1
                else:
                    start = base + off
                    append(mm[start : start + length])
                    room -= 1
                cons += (length + _HDR + 7) & ~7
            cons_pos[0] = cons  # what was read is copied: its space is the kernel's again
            done = not busy and cons >= prod and prod_pos[0] == cons
            if limit and n + len(recs) >= limit:
                done = True
            if recs and (done or len(recs) >= batch):
                handle(recs)
                n += len(recs)
                recs = []
                if limit:
                    batch = max(1, min(batch, limit - n))
            if done:
                break
        self.records += n
        return n

    def poll(self, handle: Callable[[bytes], None], timeout_ms: int = 100) -> int:
        """Wait (epoll) up to timeout_ms for data, then consume everything available."""
        if self.available() == 0:
            ep = select.epoll()
            try:
                ep.register(self.map.fd, select.EPOLLIN)
                ep.poll(timeout_ms / 1000)
            finally:
                ep.close()
        return self.consume(handle)

    def close(self) -> None:
        for v in (self._hdrs, self._cons_pos, self._prod_pos, self._data):
            v.release()
        self._prod.close()
        self._cons.close()
