"""The standard workload (apiary.testing.workload) runs every step, and each failing step fails as intended."""

from __future__ import annotations

import os
import tempfile

import pytest

from apiary.testing.workload import STEPS, Workload, WorkloadResult


def test_step_at_puts_a_time_in_the_step_running_then() -> None:
    r = WorkloadResult([("a", 100), ("b", 200)], end=300, ports={})
    assert [r.step_at(t) for t in (99, 100, 199, 200, 300, 301)] == [None, "a", "a", "b", "b", None]


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
    assert set(r.ports.values()) == {"tcp4", "udp4", "udp4-client", "tcp6", "udp6", "udp6-client", "tcp4-refused"}
