"""Reconciling a BPF map to its desired contents: the diff is pure (desired vs actual -> what to write and
delete), applying it is thin map I/O. A restarted agent adopts the maps an earlier agent pinned, reads what
they hold, and logs the diff it applied, e.g. ``policy map ep 3: +2 ~0 -1 entries``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol


class BatchMap(Protocol):
    def update_batch(self, entries: list[tuple[bytes, bytes]]) -> None: ...

    def delete_batch(self, keys: list[bytes]) -> int: ...


@dataclass(frozen=True)
class MapDiff:
    add: dict[bytes, bytes] = field(default_factory=dict)  # keys missing from the map
    change: dict[bytes, bytes] = field(default_factory=dict)  # keys whose value is not the desired one
    remove: list[bytes] = field(default_factory=list)  # stale keys

    @property
    def empty(self) -> bool:
        return not (self.add or self.change or self.remove)

    def writes(self) -> list[tuple[bytes, bytes]]:
        return list(self.add.items()) + list(self.change.items())

    def summary(self, what: str) -> str:
        return f"{what}: +{len(self.add)} ~{len(self.change)} -{len(self.remove)} entries"

    def __add__(self, other: MapDiff) -> MapDiff:
        return MapDiff(self.add | other.add, self.change | other.change, self.remove + other.remove)


def diff(desired: Mapping[bytes, bytes], actual: Mapping[bytes, bytes]) -> MapDiff:
    """What turns ``actual`` into ``desired``."""
    add: dict[bytes, bytes] = {}
    change: dict[bytes, bytes] = {}
    for k, v in desired.items():
        have = actual.get(k)
        if have is None:
            add[k] = v
        elif have != v:
            change[k] = v
    return MapDiff(add, change, [k for k in actual if k not in desired])


def apply(m: BatchMap, d: MapDiff) -> None:
    """Write, then delete: a key is never missing in between (its stale neighbours go last)."""
    writes = d.writes()
    if writes:
        m.update_batch(writes)
    if d.remove:
        m.delete_batch(list(d.remove))
