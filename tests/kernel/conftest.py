from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from apiary.runtime.paths import bpf_object
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
