"""The event bus: a bounded history of recent events and the streaming clients that follow new ones.

One class serves process and tracing events (``/v1/events``) and flows (``/v1/flows``). Publishing never
blocks: a client whose queue is full misses the event, and the miss is counted (for that client, which is
told how many it lost, and in total). A client that streams with a filter gives it when it subscribes: only the
events it keeps take room in its queue, so a busy node's other events never crowd out (or count as lost) the
few it asked for. Events are kept as objects; clients encode them when they read.
A producer may publish a ``Deferred`` event (what it needs to build the event, kept when it was read):
it is built only when something reads it (a streaming client, or a read of the history), once.
Used from the event-loop thread only.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

Event = dict[str, Any]


class Deferred(Protocol):
    """An event built on first read (and then kept)."""

    def materialize(self) -> Event: ...


def materialize(ev: Event | Deferred) -> Event:
    return ev if isinstance(ev, dict) else ev.materialize()


@dataclass(eq=False)
class Subscriber:
    """One streaming client: its queue, the events it keeps (None: all), and how many events it kept but missed
    because the queue was full."""

    queue: asyncio.Queue[Event]
    dropped: int = 0
    keep: Callable[[Event], bool] | None = None

    def wants(self, ev: Event) -> bool:
        if self.keep is None:
            return True
        try:
            return self.keep(ev)
        except Exception:  # noqa: BLE001 - a filter that fails on an event: the client gets it, and judges it itself
            return True


class EventBus:
    def __init__(self, history: int, queue_size: int) -> None:
        self.history: collections.deque[Event | Deferred] = collections.deque(maxlen=history)
        self.queue_size = queue_size  # events buffered per client before it counts drops
        self.subscribers: list[Subscriber] = []
        self.published = 0
        self.drops = 0  # events some client missed, all clients together

    @property
    def capacity(self) -> int:
        return self.history.maxlen or 0

    def __len__(self) -> int:
        return len(self.history)

    def __iter__(self) -> Iterator[Event]:
        return iter(self.recent())

    def recent(self) -> list[Event]:
        """The history, oldest first (a copy: publishing may go on while a client replays it)."""
        return [materialize(ev) for ev in self.history]

    def first_matching(self, keep: Callable[[Event], bool], n: int = 0) -> list[Event]:
        """The oldest ``n`` events of the history that ``keep`` accepts (``n`` 0: all of them), oldest first:
        built oldest first, only as far as it takes to find them."""
        out: list[Event] = []
        for ev in list(self.history):  # a copy: publishing may go on meanwhile
            built = materialize(ev)
            if keep(built):
                out.append(built)
                if n and len(out) >= n:
                    break
        return out

    def last_matching(self, keep: Callable[[Event], bool], n: int) -> list[Event]:
        """The newest ``n`` events of the history that ``keep`` accepts, oldest first: built newest first, only
        as far back as it takes to find them."""
        out: list[Event] = []
        if n <= 0:
            return out
        for ev in reversed(list(self.history)):  # a copy: publishing may go on meanwhile
            built = materialize(ev)
            if keep(built):
                out.append(built)
                if len(out) >= n:
                    break
        out.reverse()
        return out

    def publish(self, ev: Event | Deferred) -> None:
        self.published += 1
        if not self.subscribers:
            self.history.append(ev)
            return
        built = materialize(ev)  # streamed now: built now
        self.history.append(built)
        for sub in self.subscribers:
            if not sub.wants(built):
                continue
            try:
                sub.queue.put_nowait(built)
            except asyncio.QueueFull:
                sub.dropped += 1
                self.drops += 1

    def publish_many(self, evs: Sequence[Event | Deferred]) -> None:
        """``publish`` each, in order."""
        if self.subscribers:
            for ev in evs:
                self.publish(ev)
            return
        self.published += len(evs)
        self.history.extend(evs)

    def subscribe(self, keep: Callable[[Event], bool] | None = None) -> Subscriber:
        """A new streaming client; ``keep``: the events it wants (its filter, applied before its queue)."""
        sub = Subscriber(asyncio.Queue(maxsize=self.queue_size), keep=keep)
        self.subscribers.append(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        if sub in self.subscribers:
            self.subscribers.remove(sub)
