"""A streaming client's filter is applied before its queue: the events it does not want never fill it, so it is
never told it lost events it would not have printed; the ones it wants are counted when missed."""

from __future__ import annotations

from typing import Any

from apiary.agent.bus import EventBus


class _Lazy:
    def __init__(self, ev: dict[str, Any]) -> None:
        self.ev, self.built = ev, 0

    def materialize(self) -> dict[str, Any]:
        self.built += 1
        return self.ev


def test_a_filtered_client_is_not_crowded_out_by_events_it_does_not_want() -> None:
    bus = EventBus(history=100, queue_size=10)
    mine = bus.subscribe(lambda ev: ev["pid"] == 1)
    everything = bus.subscribe()
    bus.publish_many([{"pid": 2, "n": n} for n in range(1000)] + [{"pid": 1, "n": "a"}, {"pid": 1, "n": "b"}])
    assert mine.dropped == 0 and [mine.queue.get_nowait()["n"] for _ in range(2)] == ["a", "b"]
    assert mine.queue.empty()
    assert everything.queue.qsize() == 10 and everything.dropped == 992  # unfiltered: the rest is lost, counted
    assert bus.drops == 992 and bus.published == 1002


def test_the_events_a_client_wants_are_still_counted_when_its_queue_is_full() -> None:
    bus = EventBus(history=100, queue_size=3)
    odd = bus.subscribe(lambda ev: ev["n"] % 2 == 1)
    for n in range(20):
        bus.publish(_Lazy({"n": n}))
    assert odd.queue.qsize() == 3 and odd.dropped == 7  # 10 odd ones: 3 queued, 7 missed


def test_a_filter_that_fails_hands_the_event_over() -> None:
    bus = EventBus(history=10, queue_size=10)
    sub = bus.subscribe(lambda ev: ev["missing"] == 1)
    bus.publish({"pid": 1})
    assert sub.queue.get_nowait() == {"pid": 1} and sub.dropped == 0
