"""The CLI never prints a Python traceback: every failure is one line and a non-zero exit, every call to the
agent is bounded in time (--timeout) and says so when the bound fires. Real sockets, real CLI processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from apiary.testing.agent import one_line_error


def run(*args: str, timeout: float = 60, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "apiary", *args], capture_output=True, text=True, timeout=timeout, **kw  # type: ignore[call-overload]
    )


@pytest.fixture
def silent_agent() -> Iterator[str]:
    """A unix socket that accepts connections and reads requests but never answers (a stuck agent)."""
    d = tempfile.mkdtemp(prefix="apiary-silent-")
    path = os.path.join(d, "apiary.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(16)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except TimeoutError:
                continue

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield path
    stop.set()
    t.join()
    for c in conns:
        c.close()
    srv.close()
    os.unlink(path)
    os.rmdir(d)


@pytest.mark.parametrize("args", [("status",), ("tp", "list"), ("events",), ("observe", "-f")])
def test_timeout_fires_and_says_so(silent_agent: str, args: tuple[str, ...]) -> None:
    t = time.monotonic()
    r = run("--socket", silent_agent, "--timeout", "1", *args)
    line = one_line_error(r)
    assert "no answer from the agent within 1 s" in line and "--timeout" in line
    assert time.monotonic() - t < 20


def test_default_timeout_from_the_environment(silent_agent: str) -> None:
    r = run("--socket", silent_agent, "status", env={**os.environ, "APIARY_TIMEOUT": "0.5"})
    assert "within 0.5 s" in one_line_error(r)


def test_no_agent_is_one_line(tmp_path: Path) -> None:
    line = one_line_error(run("--socket", str(tmp_path / "none.sock"), "status"))
    assert "agent not running" in line


def test_non_utf8_file(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_bytes(b"kind: TracingPolicy\nmetadata: {name: \xff\xfe}\n")
    for cmd in (("tp", "apply"), ("policy", "apply"), ("tp", "convert")):
        r = run("--socket", str(tmp_path / "none.sock"), *cmd, "-f", str(f))
        assert r.returncode == 2
        assert "not UTF-8 text (byte 0xff at offset 37)" in one_line_error(r)
    r = run("--socket", str(tmp_path / "none.sock"), "tp", "apply", "-f", "-", input=None,
            stdin=open(f, "rb"))  # noqa: SIM115
    assert "-f -: not UTF-8" in one_line_error(r)


def test_since_out_of_range_is_refused_before_connecting(tmp_path: Path) -> None:
    r = run("--socket", str(tmp_path / "none.sock"), "events", "--since", "99999999999h")
    assert r.returncode == 2
    assert "--since: 99999999999h reaches back before the year 1" in one_line_error(r)


def test_unknown_observe_filter_is_cut_and_points_to_help(tmp_path: Path) -> None:
    r = run("--socket", str(tmp_path / "none.sock"), "observe", "--" + "x" * 300)
    line = one_line_error(r)
    assert "see apiary observe -h" in line and len(line) < 200


@pytest.mark.parametrize("argv", [["agent", "--socket", "/tmp/x.sock"], ["policy", "list", "--timeout", "3"]])
def test_an_own_option_after_the_command_says_where_it_goes(argv: list[str]) -> None:
    r = run(*argv)
    assert r.returncode == 2, r.stderr
    assert "No such option" in r.stderr and argv[-2] in r.stderr, r.stderr
    assert f"it goes before the command, as in `apiary {argv[-2]} VALUE COMMAND" in r.stderr, r.stderr
    # any other unknown option keeps click's own message
    r = run("agent", "--no-such-flag")
    assert r.returncode == 2 and "No such option" in r.stderr and "goes before" not in r.stderr, r.stderr
