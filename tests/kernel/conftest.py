from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

from apiary.loader.paths import bpf_object
from apiary.sensors.process.sensor import ProcessSensor
from apiary.sensors.tracing.sensor import TracingSensor
from apiary.testing.agent import AgentProcess


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = None
    if os.geteuid() != 0:
        reason = "kernel tests need root"
    elif not bpf_object("process").exists():
        reason = "BPF objects not built (run `make build`)"
    for item in items:
        if "tests/kernel" in str(item.fspath):
            item.add_marker(pytest.mark.kernel)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session", autouse=True)
def kernel_filesystems() -> None:
    """bpffs and tracefs, as the agent would mount them (a fresh machine has neither)."""
    if os.geteuid() == 0:
        from apiary.loader.fs import ensure_mounts

        ensure_mounts()


@pytest.fixture
def agent() -> Iterator[AgentProcess]:
    a = AgentProcess()
    try:
        a.start()
        yield a
    finally:
        a.cleanup()


@pytest.fixture
def sensors() -> Iterator[tuple[ProcessSensor, TracingSensor]]:
    """The process and tracing sensors loaded directly (no agent), closed afterwards."""
    ps = ProcessSensor(ringbuf_bytes=1 << 22)
    ps.load()
    ts = TracingSensor(ps)
    try:
        ts.load()
        yield ps, ts
    finally:
        ts.close()
        ps.close()


@pytest.fixture
def workdir() -> Iterator[str]:
    """A scratch directory on tmpfs where there is one (a write there is checked for a pending fatal signal;
    in the VM the temp dir is a 9p share)."""
    d = tempfile.mkdtemp(prefix="apiary-test-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
