"""The prefilter drop-rate bench's machinery on real packets: a UDP flood from a denied source through a veth
between two namespaces is dropped by apiary's XDP prefilter and by iptables raw rules, each counted by its own
counters, and nothing of the bench is left afterwards."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from bench import prefilter_drop


@pytest.mark.skipif(shutil.which("iptables-restore") is None, reason="iptables is not installed")
def test_flood_from_a_denied_source_is_dropped_and_counted() -> None:
    rows = prefilter_drop.measure(sizes=(10,), modes=("apiary", "iptables"), seconds=0.5, rounds=1)
    by = {r.mode: r for r in rows}
    assert set(by) == {"apiary", "iptables"}
    for r in rows:
        assert r.sent_per_s > 100, r
        # every datagram that got out was dropped by the filter under test and counted there
        assert r.drops_per_s >= 0.9 * r.sent_per_s, r
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "pfdtx" not in left and "pfdrx" not in left
