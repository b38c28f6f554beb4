"""Reconciling a map: desired vs actual -> the diff, and applying it (writes before deletes)."""

from __future__ import annotations

from apiary.sensors.reconcile import MapDiff, apply, diff


def test_diff_finds_missing_changed_and_stale_entries() -> None:
    d = diff({b"a": b"1", b"b": b"2", b"c": b"3"}, {b"a": b"1", b"b": b"x", b"z": b"9"})
    assert d.add == {b"c": b"3"} and d.change == {b"b": b"2"} and d.remove == [b"z"]
    assert d.summary("policy map ep 3") == "policy map ep 3: +1 ~1 -1 entries"
    assert not d.empty


def test_equal_contents_diff_to_nothing() -> None:
    d = diff({b"a": b"1"}, {b"a": b"1"})
    assert d.empty and d.writes() == [] and d.summary("x") == "x: +0 ~0 -0 entries"
    assert diff({}, {}).empty


def test_diffs_add_up() -> None:
    d = MapDiff({b"a": b"1"}, {}, [b"x"]) + MapDiff({}, {b"b": b"2"}, [b"y"])
    assert d.summary("m") == "m: +1 ~1 -2 entries"


class FakeMap:
    def __init__(self, held: dict[bytes, bytes]) -> None:
        self.held = dict(held)
        self.ops: list[str] = []

    def update_batch(self, entries: list[tuple[bytes, bytes]]) -> None:
        self.ops.append("update")
        self.held.update(entries)

    def delete_batch(self, keys: list[bytes]) -> int:
        self.ops.append("delete")
        for k in keys:
            self.held.pop(k, None)
        return len(keys)


def test_apply_makes_the_map_hold_the_desired_contents_writing_first() -> None:
    want = {b"a": b"1", b"b": b"2"}
    m = FakeMap({b"b": b"old", b"z": b"9"})
    apply(m, diff(want, m.held))
    assert m.held == want and m.ops == ["update", "delete"]
    m.ops.clear()
    apply(m, diff(want, m.held))
    assert m.ops == []  # nothing to do: no map call at all
