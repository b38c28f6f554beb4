"""The agent's readers of rings and logs (``Pump``): woken by the event loop when their fd is readable, then
drained a moment later, so that one read takes a batch."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol


class Pump(Protocol):
    """A ring buffer someone reads: the agent wakes it when the ring has records, and on a timer."""

    def fileno(self) -> int: ...

    def drain(self) -> int: ...


# the L7 proxy's access log: once woken, the agent waits this long before reading, so one read takes a batch
# of records instead of one per request (the pipe holds 1-4 MiB meanwhile; its flows come that much later)
L7_LOG_BATCH_S = 0.005
# the BPF rings likewise: their fds are level-triggered (readable while a record waits), so a reader that drained
# on every wake-up was woken again at once by the next record and read a few records a time, paying a pass of
# the event loop, a drain and a batch per few records (at 270,000 tracing events/s: 1.9-2.6 us of agent CPU per
# event, against ~1 us read in batches); 8 MiB of ring holds ~150 ms of that rate
RING_BATCH_S = 0.005


def coalesced_reader(loop: asyncio.AbstractEventLoop, p: Pump, delay: float) -> Callable[[], None]:
    """Wake ``p`` when its fd is readable, but drain it ``delay`` seconds later (records pile up meanwhile). The fd
    is the one ``p`` has at each drain (a restarted proxy's log is a new one); none (-1): the timer drains it.
    Returns what stops it (the fd unwatched, a drain still to come cancelled)."""
    fd = p.fileno()
    pending: list[asyncio.TimerHandle] = []
    stopped = False

    def woken() -> None:
        loop.remove_reader(fd)
        pending[:] = [loop.call_later(delay, drain)]

    def drain() -> None:
        nonlocal fd
        pending.clear()
        try:
            p.drain()
        finally:
            fd = p.fileno()
            if not stopped and fd >= 0:
                loop.add_reader(fd, woken)

    def stop() -> None:
        nonlocal stopped
        stopped = True
        if fd >= 0:
            loop.remove_reader(fd)
        for h in pending:
            h.cancel()

    loop.add_reader(fd, woken)
    return stop
