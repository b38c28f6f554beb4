"""The standard workload (apiary.testing.workload) runs every step, and each failing step fails as intended."""

from __future__ import annotations

import os
import tempfile

import pytest

from apiary.testing.workload import STEPS, Workload, WorkloadResult


def test_step_at_puts_a_time_in_the_step_running_then() -> None:
    r = WorkloadResult([("a", 100), ("b", 200)], end=300, ports={})
    assert [r.step_at(t) for t in (99, 100, 199, 200, 300, 301)] == [None, "a", "a", "b", "b", None]


def test_a_port_used_again_in_a_later_step_is_named_by_the_step_that_used_it() -> None:
    # tcp4's listener closed, and udp4's client got the same ephemeral port (seen once in CI, on 6.1)
    r = WorkloadResult([("tcp4", 100), ("udp4", 200)], end=300, ports={4000: ("tcp4", "udp4-client"), 4001: ("udp4",)})
    assert r.port_name(4000, "tcp4") == "tcp4"
    assert r.port_name(4000, "udp4") == "udp4-client"
    assert r.port_name(4001, "tcp4") == "udp4"  # the port's one name, whatever the step
    assert r.port_name(4000, "exec") == 4000  # two names and neither is the step's: the number, not a guess
    assert r.port_name(9, None) == 9


@pytest.mark.skipif(os.geteuid() != 0, reason="the set*id step needs root")
def test_the_workload_runs_every_step_and_the_failing_ones_fail() -> None:
    with tempfile.TemporaryDirectory(prefix="apiary-wl-") as d, Workload(os.path.join(d, "w")) as w:
        assert w.pid > 0
        r = w.run()
    assert [s for s, _t in r.steps] == list(STEPS)
    assert all(a[1] <= b[1] for a, b in zip(r.steps, r.steps[1:], strict=False)) and r.steps[-1][1] <= r.end
    assert r.errors == {
        "open-missing": "No such file or directory",
        "pipe-pread-pwrite": "Illegal seek,Illegal seek",
        "bad-fd": "Bad file descriptor,Bad file descriptor",
        "tcp4-refused": "Connection refused",
        "setid": "Operation not permitted",
        "exec-noexec": "Permission denied",
        "exec-missing": "No such file or directory",
    }
    names = {n for ns in r.ports.values() for n in ns}
    assert names == {"tcp4", "udp4", "udp4-client", "tcp6", "udp6", "udp6-client", "tcp4-refused"}
