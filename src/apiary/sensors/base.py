"""The shape every sensor shows the agent: what it loaded, what it owns, how its records decode.

A sensor is the unit of load and unload (Tetragon's ``pkg/sensors``). The agent only loops over sensors:
it reports their programs, links and maps (``apiary status``, ``apiary bpf list``) with the rows below,
reads each ring buffer with the decoders the sensors writing into it registered, and closes them. It knows
no map name and no record layout of any sensor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from apiary.loader import Map, RingBuffer


@dataclass(frozen=True)
class ProgramRow:
    """One loaded program: its name, its fd (to read its kernel info), where it is attached."""

    name: str
    fd: int
    attach: str
    link_id: int = 0  # the link holding it, where the sensor has exactly one (shown by status)


@dataclass(frozen=True)
class LinkRow:
    """One attachment of a program (a bpf_link, or a TC filter: id 0)."""

    id: int
    program: str
    attach: str
    pin: str = ""


@dataclass(frozen=True)
class OwnedMap:
    """A map a sensor owns (a map it shares with another sensor is reported by its owner only)."""

    name: str
    map: Map
    pin: str | None = None
    in_status: bool = True  # shown by `apiary status` (bpf list shows every owned map)
    count_entries: bool = True  # status counts its entries (False for maps too large to walk)


@dataclass(frozen=True)
class RecordHandler:
    """How the records of one message type decode. ``decode`` raises on a corrupt record."""

    kind: str  # the consumer's name for these records ("exec", "generic", "flow"); counted under it
    decode: Callable[[memoryview | bytes], Any]


@dataclass(frozen=True)
class RingCounts:
    """What a sensor's producers wrote to its ring and lost (ring full), per message type name (the names
    of agent/accounting.py), and its other kernel counters."""

    written: Mapping[str, int]
    lost: Mapping[str, int]
    other: Mapping[str, int] = field(default_factory=dict)


class Sensor(Protocol):
    """What the agent sees of a sensor."""

    @property
    def name(self) -> str: ...

    def program_rows(self) -> list[ProgramRow]:
        """Loaded programs (empty when not loaded)."""
        ...

    def link_rows(self) -> list[LinkRow]:
        """Attachments (empty when not loaded)."""
        ...

    def owned_maps(self) -> list[OwnedMap]:
        """Maps this sensor owns (empty when not loaded)."""
        ...

    def records_into(self) -> RingBuffer | None:
        """The ring buffer this sensor's records arrive on (possibly another sensor's, shared)."""
        ...

    def handlers(self) -> Mapping[int, RecordHandler]:
        """Message type (a record's first byte) -> its decoder."""
        ...

    def ring_counts(self) -> RingCounts:
        """The kernel's counts of this sensor's records (for the accounting of the ring they arrive on)."""
        ...

    def close(self) -> None: ...


def link_rows(links: Iterable[Any]) -> list[LinkRow]:
    """Rows of bpf_links (anything with id, prog, describe() and pin_path)."""
    return [LinkRow(lk.id, lk.prog.name, lk.describe(), lk.pin_path or "") for lk in links]
