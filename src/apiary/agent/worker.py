"""One daemon worker thread for the agent's blocking control-plane work (netlink, BPF map writes, compiling).

concurrent.futures.ThreadPoolExecutor joins its threads when the interpreter exits, so one request stuck in a
worker keeps a stopped agent alive forever. This worker's thread is a daemon: the agent stops on SIGTERM
whatever the worker is doing (its kernel objects are released by the agent's own shutdown, not by the worker).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

_STOP = object()


class DaemonWorker(Executor):
    """Runs submitted calls one at a time, in order, on a single daemon thread."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._busy_since: float | None = None
        self._busy_with = ""
        self._shutdown = False
        self._thread.start()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        if self._shutdown:
            raise RuntimeError("the worker is shut down")
        fut: Future[Any] = Future()
        self._queue.put((fut, fn, args, kwargs))
        return fut

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            fut, fn, args, kwargs = item
            if not fut.set_running_or_notify_cancel():
                continue  # cancelled while queued (its caller gave up waiting)
            self._busy_with, self._busy_since = getattr(fn, "__qualname__", repr(fn)), time.monotonic()
            try:
                fut.set_result(fn(*args, **kwargs))
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                fut.set_exception(e)
            finally:
                self._busy_since = None

    def busy(self) -> tuple[str, float] | None:
        """What the worker is running and for how many seconds, or None when idle."""
        since = self._busy_since
        return None if since is None else (self._busy_with, time.monotonic() - since)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._shutdown = True
        while cancel_futures:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                item[0].cancel()
        self._queue.put(_STOP)
        if wait:
            self._thread.join()
