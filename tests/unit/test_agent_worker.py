"""The agent's control-plane worker: results and errors reach the caller, queued calls can be cancelled, and a
call that never ends does not keep the process from exiting (SIGTERM must always stop the agent)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from apiary.agent.worker import DaemonWorker


def test_results_errors_and_order() -> None:
    w = DaemonWorker("t")
    order: list[int] = []
    futs = [w.submit(order.append, i) for i in range(5)]
    assert [f.result(5) for f in futs] == [None] * 5 and order == [0, 1, 2, 3, 4]
    bad = w.submit(int, "x")
    with pytest.raises(ValueError):
        bad.result(5)
    assert w.busy() is None
    w.shutdown()


def test_busy_reports_the_running_call_and_queued_calls_can_be_cancelled() -> None:
    w = DaemonWorker("t")
    gate = threading.Event()
    running = w.submit(gate.wait, 10)
    queued = w.submit(lambda: 1)
    time.sleep(0.1)
    what, secs = w.busy() or ("", -1.0)
    assert "wait" in what and secs >= 0
    assert queued.cancel()
    gate.set()
    assert running.result(5) is True
    w.shutdown()
    assert queued.cancelled()


def test_a_stuck_call_does_not_block_interpreter_exit() -> None:
    code = (
        "import time\n"
        "from apiary.agent.worker import DaemonWorker\n"
        "w = DaemonWorker('stuck')\n"
        "w.submit(time.sleep, 3600)\n"
        "time.sleep(0.2)\n"
        "print('exiting', flush=True)\n"
    )
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "exiting" in r.stdout
    assert time.monotonic() - t < 10


def test_a_thread_pool_executor_would_have_blocked_exit() -> None:
    """The defect this worker replaces: ThreadPoolExecutor joins its threads at exit."""
    code = (
        "import time\n"
        "from concurrent.futures import ThreadPoolExecutor\n"
        "p = ThreadPoolExecutor(1)\n"
        "p.submit(time.sleep, 3600)\n"
    )
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=3)
