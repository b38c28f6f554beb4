"""The prefilter's deny lists without the kernel: CIDRs parsed and checked, which map each goes to, the
counter slot each holds, the revision. A change is planned here in full (and refused whole, naming the
bad value) before the sensor writes a single map entry.

As Cilium's prefilter: a /32 (IPv4) or /128 (IPv6) is an exact entry (hash maps ``cidr_v4_fix`` /
``cidr_v6_fix``), any other prefix an LPM entry (``cidr_v4_dyn`` / ``cidr_v6_dyn``). Every change that
alters the lists increments the revision; a caller may pass the revision it last saw and is refused when
the lists changed since (Cilium's ``prefilter update --revision``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAP_NAMES = ("cidr_v4_dyn", "cidr_v4_fix", "cidr_v6_dyn", "cidr_v6_fix")
MAX_CIDRS_PER_REQUEST = 1 << 20


class PrefilterError(ValueError):
    """A request refused before anything changed; ``field`` names the value at fault."""

    def __init__(self, msg: str, field: str = "cidrs", status: int = 400) -> None:
        super().__init__(msg)
        self.field = field
        self.status = status


def map_of(net: Network) -> str:
    """The deny map a prefix lives in."""
    fam = "v4" if net.version == 4 else "v6"
    return f"cidr_{fam}_{'fix' if net.prefixlen == net.max_prefixlen else 'dyn'}"


def parse_cidr(text: object, where: str) -> Network:
    """One CIDR (``10.0.0.0/24``, ``2001:db8::/64``; a bare address is its /32 or /128). Host bits set
    are refused (with the network they probably meant), as are zone ids and anything that is not text."""
    if not isinstance(text, str):
        raise PrefilterError(f"{where}: expected a CIDR string, not {type(text).__name__}", where)
    s = text.strip()
    if not s or "%" in s:
        raise PrefilterError(f"{where}: {text!r} is not a CIDR (like 10.0.0.0/24 or 2001:db8::/64)", where)
    try:
        return ipaddress.ip_network(s)
    except ValueError:
        pass
    try:
        net = ipaddress.ip_network(s, strict=False)
    except ValueError:
        raise PrefilterError(f"{where}: {text!r} is not a CIDR (like 10.0.0.0/24 or 2001:db8::/64)", where) from None
    raise PrefilterError(f"{where}: {text!r} has host bits set (the network is {net})", where)


def parse_cidrs(values: object, name: str = "cidrs") -> list[Network]:
    """A request's CIDRs in order, duplicates dropped (``10.0.0.1`` and ``10.0.0.1/32`` are one)."""
    if not isinstance(values, list) or not values:
        raise PrefilterError(f"{name}: expected a non-empty list of CIDRs", name)
    if len(values) > MAX_CIDRS_PER_REQUEST:
        raise PrefilterError(f"{name}: {len(values)} CIDRs in one request (at most {MAX_CIDRS_PER_REQUEST})", name)
    out: dict[Network, None] = {}
    for i, v in enumerate(values):
        out.setdefault(parse_cidr(v, f"{name}[{i}]"), None)
    return list(out)


@dataclass
class Plan:
    """What one change writes: entries to insert (with their counter slots) and entries to remove."""

    add: dict[Network, int] = field(default_factory=dict)
    remove: dict[Network, int] = field(default_factory=dict)
    unchanged: list[Network] = field(default_factory=list)  # asked to add, already there


@dataclass
class DenyLists:
    """The entries in force: prefix -> counter slot; the revision; free counter slots."""

    capacity: int  # entries per map (each of the four maps has this many)
    entries: dict[Network, int] = field(default_factory=dict)
    revision: int = 1
    _next: int = 0
    _free: list[int] = field(default_factory=list)
    dirty: int = 0  # counter slots below this may hold an earlier agent's counts (zeroed before reuse)

    def count(self, map_name: str) -> int:
        return sum(1 for n in self.entries if map_of(n) == map_name)

    def used_slots(self) -> int:
        """Counter slots below this have been used (and may hold counts); the ones above never were."""
        return max(self._next, self.dirty)

    def restore(self, entries: dict[Network, int], revision: int, dirty: int) -> None:
        """The entries adopted maps hold (prefix -> its counter slot, counts kept) at ``revision``; every slot
        below ``dirty`` may hold counts of an earlier agent's entries, so a new entry's slot is zeroed first."""
        self.entries = dict(entries)
        self.revision = revision
        self._next = max(entries.values(), default=-1) + 1
        used = set(entries.values())
        self._free = [s for s in range(self._next - 1, -1, -1) if s not in used]
        self.dirty = dirty

    def check_revision(self, expected: int | None) -> None:
        if expected is not None and expected != self.revision:
            raise PrefilterError(
                f"revision: the deny lists are at revision {self.revision}, not {expected} (list them again)",
                "revision",
                409,
            )

    def plan_add(self, nets: list[Network], expected: int | None = None) -> Plan:
        self.check_revision(expected)
        plan = Plan()
        new = [n for n in nets if n not in self.entries]
        plan.unchanged = [n for n in nets if n in self.entries]
        for m in MAP_NAMES:
            want = self.count(m) + sum(1 for n in new if map_of(n) == m)
            if want > self.capacity:
                raise PrefilterError(
                    f"cidrs: map {m} would hold {want} entries, its capacity is {self.capacity} (nothing was changed)",
                    "cidrs",
                    409,
                )
        free = list(self._free)
        nxt = self._next
        for n in new:
            if free:
                plan.add[n] = free.pop()
            else:
                plan.add[n] = nxt
                nxt += 1
        return plan

    def plan_delete(self, nets: list[Network], expected: int | None = None) -> Plan:
        self.check_revision(expected)
        for i, n in enumerate(nets):
            if n not in self.entries:
                raise PrefilterError(f"cidrs[{i}]: {n} is not in the deny lists (nothing was changed)", f"cidrs[{i}]",
                                     404)
        return Plan(remove={n: self.entries[n] for n in nets})

    def commit(self, plan: Plan) -> None:
        """The plan is in the maps: record it, and move to the next revision when anything changed."""
        for n, slot in plan.add.items():
            if slot in self._free:
                self._free.remove(slot)
            self._next = max(self._next, slot + 1)
            self.entries[n] = slot
        for n, slot in plan.remove.items():
            del self.entries[n]
            self._free.append(slot)
        if plan.add or plan.remove:
            self.revision += 1
