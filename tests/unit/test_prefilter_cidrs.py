"""The prefilter's deny-list planning without the kernel: parsing, map choice, duplicates, counter slots,
capacity, revision."""

from __future__ import annotations

import ipaddress

import pytest

from apiary.sensors.prefilter import abi
from apiary.sensors.prefilter.cidrs import DenyLists, PrefilterError, map_of, parse_cidr, parse_cidrs


def net(s: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(s)


def test_parse_and_map_choice() -> None:
    assert parse_cidrs(["10.0.0.1", "10.0.0.1/32", " 10.1.0.0/16 ", "2001:DB8::/32", "2001:db8::1"]) == [
        net("10.0.0.1/32"), net("10.1.0.0/16"), net("2001:db8::/32"), net("2001:db8::1/128")]
    assert [map_of(n) for n in parse_cidrs(["10.0.0.1", "10.0.0.0/31", "::/0", "::1"])] == [
        "cidr_v4_fix", "cidr_v4_dyn", "cidr_v6_dyn", "cidr_v6_fix"]
    assert abi.key(net("10.1.0.0/16")) == b"\x10\0\0\0\x0a\x01\0\0"


@pytest.mark.parametrize("bad, why", [
    ("10.0.0.256/32", "is not a CIDR"), ("10.0.0.0/33", "is not a CIDR"), ("", "is not a CIDR"),
    ("fe80::1%eth0", "is not a CIDR"), ("10.0.0.1/24", "host bits set (the network is 10.0.0.0/24)"),
    ("2001:db8::1/64", "host bits set"), ("eth0", "is not a CIDR"),
])
def test_bad_values_are_named(bad: str, why: str) -> None:
    with pytest.raises(PrefilterError) as e:
        parse_cidrs(["10.0.0.0/8", bad])
    assert e.value.field == "cidrs[1]" and why in str(e.value) and e.value.status == 400
    with pytest.raises(PrefilterError, match="expected a CIDR string, not int"):
        parse_cidr(5, "cidrs[0]")
    for empty in ([], None, "10.0.0.0/8"):
        with pytest.raises(PrefilterError, match="non-empty list"):
            parse_cidrs(empty)


def test_plan_commit_slots_and_revision() -> None:
    lists = DenyLists(capacity=2)
    p = lists.plan_add(parse_cidrs(["10.0.0.1", "10.0.0.0/8"]))
    assert p.add == {net("10.0.0.1/32"): 0, net("10.0.0.0/8"): 1} and lists.revision == 1
    lists.commit(p)
    assert lists.revision == 2
    again = lists.plan_add(parse_cidrs(["10.0.0.1"]))
    assert not again.add and again.unchanged == [net("10.0.0.1/32")]
    lists.commit(again)
    assert lists.revision == 2  # nothing changed: same revision
    lists.commit(lists.plan_delete(parse_cidrs(["10.0.0.1"])))
    assert lists.revision == 3
    p = lists.plan_add(parse_cidrs(["2001:db8::1"]))
    assert p.add == {net("2001:db8::1/128"): 0}  # the freed counter slot is reused
    lists.commit(p)
    assert lists.plan_add(parse_cidrs(["10.0.0.2"])).add == {net("10.0.0.2/32"): 2}


def test_refusals_change_nothing() -> None:
    lists = DenyLists(capacity=2)
    lists.commit(lists.plan_add(parse_cidrs(["10.0.0.1", "10.0.0.2"])))
    with pytest.raises(PrefilterError) as e:
        lists.plan_add(parse_cidrs(["10.0.0.3", "10.9.0.0/16"]))
    assert "cidr_v4_fix would hold 3 entries, its capacity is 2" in str(e.value) and e.value.status == 409
    with pytest.raises(PrefilterError) as e:
        lists.plan_delete(parse_cidrs(["10.0.0.1", "10.0.0.9"]))
    assert e.value.field == "cidrs[1]" and e.value.status == 404
    with pytest.raises(PrefilterError) as e:
        lists.plan_add(parse_cidrs(["10.9.0.0/16"]), expected=1)
    assert e.value.field == "revision" and "at revision 2, not 1" in str(e.value)
    assert set(lists.entries) == {net("10.0.0.1/32"), net("10.0.0.2/32")} and lists.revision == 2


def test_restore_keeps_slots_and_revision_and_marks_old_slots_dirty() -> None:
    """Adopted maps: the entries keep their counter slots, the revision is the stored one, the gaps are
    reused first, and every slot below ``dirty`` counts as used (its counter is zeroed before reuse)."""
    lists = DenyLists(capacity=4)
    lists.restore({net("10.0.0.1/32"): 2, net("10.1.0.0/16"): 0}, revision=7, dirty=16)
    assert lists.revision == 7 and lists.used_slots() == 16
    p = lists.plan_add(parse_cidrs(["10.0.0.2", "10.0.0.3"]))
    assert p.add == {net("10.0.0.2/32"): 1, net("10.0.0.3/32"): 3}  # the gap first, then past the highest
    lists.commit(p)
    assert lists.revision == 8 and lists.entries[net("10.0.0.1/32")] == 2


def test_kept_slots_takes_what_adopted_maps_hold() -> None:
    from apiary.sensors.prefilter.sensor import kept_slots

    held: dict[str, dict[bytes, bytes]] = {m: {} for m in ("cidr_v4_dyn", "cidr_v4_fix", "cidr_v6_dyn", "cidr_v6_fix")}
    held["cidr_v4_fix"][abi.key(net("10.0.0.1/32"))] = abi.value(5)
    held["cidr_v4_fix"][abi.key(net("10.0.0.2/32"))] = abi.value(5)  # the same slot twice: written again
    held["cidr_v4_dyn"][abi.key(net("10.1.0.0/16"))] = abi.value(99)  # out of range: written again
    held["cidr_v6_dyn"][abi.key(net("2001:db8::/32"))] = abi.value(1)
    wanted = parse_cidrs(["10.0.0.1", "10.0.0.2", "10.1.0.0/16", "2001:db8::/32", "10.3.0.0/16"])
    assert kept_slots(wanted, held, 16) == {net("10.0.0.1/32"): 5, net("2001:db8::/32"): 1}
