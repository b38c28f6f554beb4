"""bench/connect_client.c (the services bench's connect client), compiled as the bench compiles it and run
against loopback listeners; and the translation cost per new connection the bench derives from its figures."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator

import pytest
from bench.services import build_client, translation
from bench.svcreport import translation_line


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> str:
    if not any(shutil.which(c) for c in ("cc", "gcc", "clang")):
        pytest.skip("no C compiler (scripts/setup.sh installs gcc)")
    path, what = build_client(str(tmp_path_factory.mktemp("cc")))
    assert path is not None, what
    assert what.startswith("C (")
    return path


@pytest.fixture
def listener() -> Iterator[int]:
    """A loopback server accepting (and closing) every connection: its port."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1024)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except OSError:
                return
            c.close()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        srv.close()
        t.join(timeout=10)


def run(client: str, stdin: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([client, *argv], input=stdin, capture_output=True, text=True, timeout=120)


def test_counts_latencies_and_rate_in_the_benchs_shape(client: str, listener: int) -> None:
    r = run(client, f"127.0.0.1 {listener}\n", "300", "7", "2")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["errors"] == 0 and len(d["lat_ns"]) == 600  # 2 processes x 300 measured connects
    assert all(x > 0 for x in d["lat_ns"])
    assert d["seconds"] > 0 and d["cpu_seconds"] > 0 and d["procs"] == 2 and d["client"] == "c"


def test_refused_connects_are_errors_not_latencies(client: str) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))  # bound, never listening: connect() is refused
    try:
        r = run(client, f"127.0.0.1 {s.getsockname()[1]}\n", "20", "1")
    finally:
        s.close()
    d = json.loads(r.stdout)
    assert d["errors"] == 20 and d["lat_ns"] == []


def test_random_targets_reach_every_listed_address(client: str, listener: int) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))  # not listening: refused; about half the seeded random picks land on it
        r = run(client, f"127.0.0.1 {listener}\n127.0.0.1 {other.getsockname()[1]}\n", "400", "3")
    d = json.loads(r.stdout)
    assert 100 < d["errors"] < 300 and d["errors"] + len(d["lat_ns"]) == 400


def test_paired_targets_alternate_between_the_classes(client: str, listener: int) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))  # class 1: refused every time, so each error is a class-1 pick
        r = run(client, f"127.0.0.1 {listener} 0\n127.0.0.1 {other.getsockname()[1]} 1\n", "200", "5", "2")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    # strictly alternating: half of each worker's 200 connects per class (random picks would not split evenly)
    assert d["errors"] == 200 and len(d["lat_ns"]) == 200 and d["cls"] == [0] * 200


def test_paired_latencies_carry_their_class(client: str, listener: int) -> None:
    r = run(client, f"127.0.0.1 {listener} 0\n127.0.0.1 {listener} 1\n", "101", "9")
    d = json.loads(r.stdout)
    assert d["errors"] == 0 and len(d["cls"]) == len(d["lat_ns"]) == 101
    assert d["cls"] == [i & 1 for i in range(101)]
    assert "cls" not in json.loads(run(client, f"127.0.0.1 {listener}\n", "5", "1").stdout)


@pytest.mark.parametrize(
    "stdin", ["", "10.0.0.x 80\n", "10.0.0.1 70000\n", "10.0.0.1 80 2\n", "10.0.0.1 80 0\n10.0.0.2 80\n"]
)
def test_bad_targets_are_refused(client: str, stdin: str) -> None:
    r = run(client, stdin, "10", "1")
    assert r.returncode == 2 and r.stderr.strip()


@pytest.mark.parametrize("argv", [("0", "1"), ("10", "1", "0"), ("10", "1", "65"), ("10",)])
def test_bad_arguments_are_refused(client: str, argv: tuple[str, ...]) -> None:
    r = run(client, "127.0.0.1 80\n", *argv)
    assert r.returncode == 2 and ("COUNT" in r.stderr or "usage" in r.stderr)


def test_translation_cost_and_its_ratio() -> None:
    clean = {"p50_us": 60.0, "p99_us": 100.0}
    ipt = {"vip": {"p50_us": 260.0, "p99_us": 500.0}, "baseline": {"p50_us": 300.0, "p99_us": 600.0}}
    api = {"vip": {"p50_us": 64.0, "p99_us": 104.0}, "baseline": {"p50_us": 61.0, "p99_us": 100.0}}
    ipt["translation_us"] = translation(ipt, clean)
    api["translation_us"] = translation(api, clean)
    assert ipt["translation_us"] == {"vip_p50": 200.0, "vip_p99": 400.0, "other_traffic_p50": 240.0}
    api["connect4_ns_per_call"] = 2000.0
    line = translation_line(10000, "iptables", api, ipt)
    assert line is not None and "iptables 200.0 us, apiary 4.0 us (iptables/apiary 50.0x)" in line
    assert "connect4 program 2.0 us (iptables/it 100x)" in line
    api["translation_us"]["vip_p50"] = -1.0
    assert "within the noise" in (translation_line(10, "iptables", api, ipt) or "")
    assert translation_line(10, "iptables", {}, ipt) is None

