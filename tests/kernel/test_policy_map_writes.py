"""The datapath map writer (Datapath.sync) on the real lxc object: batched, diff-based writes leave exactly
the entries a full rewrite would, and a write the kernel refuses half-way leaves every map as it was."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest

from apiary.loader import BpfError
from apiary.policy.compile import EndpointSpec, compile_policies
from apiary.policy.load import load_policies
from apiary.policy.types import EGRESS, CompiledPolicy, PolicyEntry, PolicyKey
from apiary.sensors.network import abi
from apiary.sensors.network.endpoints import Endpoint
from apiary.sensors.network.sensor import Datapath

EP = Endpoint(7, "client", "bench", {"app": "bench"}, "10.250.0.2", "unused", "unused", 1, "/nonexistent")
SPEC = EndpointSpec(EP.ep_id, EP.name, EP.namespace, EP.labels, EP.ipv4)


def policy(n: int, port_base: int, first_ip: int = 0) -> str:
    rows = "".join(
        f"  - toCIDR: [10.100.{(first_ip + i) // 256}.{(first_ip + i) % 256}/32]\n"
        f'    toPorts: [{{ports: [{{port: "{port_base + i}", protocol: TCP}}]}}]\n'
        for i in range(n)
    )
    return (
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: bench}\nspec:\n"
        "  endpointSelector: {matchLabels: {app: bench}}\n  egress:\n" + rows
    )


def compiled(text: str) -> CompiledPolicy:
    return compile_policies(load_policies(text), [SPEC], host_ips=["127.0.0.1"], revision=1)


def sync(dp: Datapath, c: CompiledPolicy) -> None:
    dp.sync(c, {EP.ep_id: EP}, {EP.ep_id: c.ipcache[f"{EP.ipv4}/32"]})


def snapshot(dp: Datapath) -> tuple[list[tuple[bytes, bytes]], ...]:
    return tuple(sorted(m.lookup_batch()) for m in (dp.policy_map, dp.ranges_map, dp.ipcache_map, dp.endpoints_map))


def in_force(dp: Datapath) -> tuple[set[tuple[tuple[int, ...], bytes]], set[tuple[bytes, bytes]], int]:
    """The policy entries of the endpoint's current slot (slot-independent), the ipcache, the entry count."""
    info = dp.endpoints_map.lookup(EP.host_ifindex.to_bytes(4, "little"))
    assert info is not None
    slot = (EP.ep_id << 1) | dp.eps[EP.ep_id].gen
    rows = [(abi.policy_key_decode(k), v) for m in (dp.policy_map, dp.ranges_map) for k, v in m.lookup_batch()]
    return (
        {(k[1:], v) for k, v in rows if k[0] == slot},
        set(dp.ipcache_map.lookup_batch()),
        len(rows),
    )


@pytest.fixture
def datapath() -> Iterator[Datapath]:
    dp = Datapath(ringbuf_bytes=1 << 16)
    dp.load()
    try:
        yield dp
    finally:
        dp.close()


def test_changed_policy_leaves_exactly_the_entries_of_a_full_rewrite(datapath: Datapath) -> None:
    first, second = compiled(policy(300, 2000)), compiled(policy(300, 2100, first_ip=150))
    sync(datapath, first)
    sync(datapath, second)  # half the prefixes stay, half go, every port changes
    fresh = Datapath(ringbuf_bytes=1 << 16)
    fresh.load()
    try:
        sync(fresh, second)
        got, want = in_force(datapath), in_force(fresh)
    finally:
        fresh.close()
    assert got == want
    assert got[2] == len(second.endpoints[EP.ep_id].entries) == 300  # the old slot is gone
    assert len(got[1]) == len(second.ipcache)  # prefixes no policy names any more are gone too
    before = snapshot(datapath)
    sync(datapath, second)  # nothing changed: nothing is written
    assert snapshot(datapath) == before


def test_a_write_the_kernel_refuses_leaves_every_map_as_it_was(datapath: Datapath) -> None:
    sync(datapath, compiled(policy(200, 3000)))
    before, state = snapshot(datapath), (datapath.eps[EP.ep_id].gen, dict(datapath.ipcache_now))
    bad = compiled(policy(200, 4000, first_ip=100))  # new prefixes and new ports
    entries = dict(bad.endpoints[EP.ep_id].entries)
    # a port prefix longer than the key: the kernel's LPM trie refuses it (EINVAL) after the others were written
    entries[PolicyKey(EP.ep_id, EGRESS, 2, 6, 80, 40)] = PolicyEntry(False, 1)
    bad.endpoints[EP.ep_id] = replace(bad.endpoints[EP.ep_id], entries=entries)
    with pytest.raises(BpfError):
        sync(datapath, bad)
    assert snapshot(datapath) == before
    assert (datapath.eps[EP.ep_id].gen, datapath.ipcache_now) == state
    sync(datapath, compiled(policy(200, 4000, first_ip=100)))  # and the next good write goes through
    assert in_force(datapath)[2] == 200
