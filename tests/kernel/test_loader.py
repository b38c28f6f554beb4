"""The loader against the real kernel: layouts vs BTF, verifier errors, ring-buffer losses."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from apiary.loader import BpfObject, Map, RingBuffer, VerifierError
from apiary.loader.paths import bpf_dir, bpf_object
from apiary.sensors.process import abi
from apiary.sensors.process.sensor import ProcessSensor

REPO = Path(__file__).resolve().parents[2]


def _compile(tmp_path: Path, source: str) -> Path:
    src = tmp_path / "bad.bpf.c"
    src.write_text(textwrap.dedent(source))
    out = tmp_path / "bad.bpf.o"
    arch = {"x86_64": "x86", "aarch64": "arm64"}[os.uname().machine]
    subprocess.run(
        [
            "clang",
            "-O2",
            "-g",
            "-target",
            "bpf",
            f"-D__TARGET_ARCH_{arch}",
            f"-I{bpf_dir()}",
            f"-I/usr/include/{os.uname().machine}-linux-gnu",
            "-c",
            str(src),
            "-o",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    return out


def test_verifier_rejection_names_reason_and_source_line(tmp_path: Path) -> None:
    obj_path = _compile(
        tmp_path,
        """
        #include "vmlinux.h"
        #include <bpf/bpf_helpers.h>
        char LICENSE[] SEC("license") = "GPL";
        struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 1);
                 __type(key, __u32); __type(value, __u64); } vals SEC(".maps");
        SEC("tracepoint/syscalls/sys_enter_getpid")
        int deliberately_bad(void *ctx)
        {
            __u32 k = 0;
            __u64 *v = bpf_map_lookup_elem(&vals, &k);
            return *v == 7; /* no NULL check: the verifier must refuse this */
        }
    """,
    )
    obj = BpfObject(obj_path)
    try:
        with pytest.raises(VerifierError) as ei:
            obj.load()
    finally:
        obj.close()
    err = ei.value
    text = str(err)
    assert "load program deliberately_bad" in text
    assert "map_value_or_null" in err.summary  # the verifier's own reason
    assert "return *v == 7" in err.summary  # the failing source line
    if " @ " in err.log:  # newer verifiers also name file:line (6.1's does not)
        assert "bad.bpf.c:" in err.summary
    assert "processed" not in err.summary


def test_ring_buffer_loss_is_counted_exactly(tmp_path: Path) -> None:
    """A 4 KiB ring nobody reads: every message is either written or counted lost, none vanish."""
    n_calls = 2000
    child = subprocess.Popen(
        [sys.executable, "-c", f"import os,sys; sys.stdin.readline(); [os.getppid() for _ in range({n_calls})]"],
        stdin=subprocess.PIPE,
        text=True,
    )
    sensor = ProcessSensor(ringbuf_bytes=4096, bench_tgid=child.pid)
    try:
        sensor.load()
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.wait(timeout=30) == 0
        c = sensor.counters()
        assert c["lost_bench"] > 0, c
        assert c["bench"] + c["lost_bench"] == n_calls, c
        # what was written is really in the ring: read it back
        assert sensor.ring is not None
        seen = []
        sensor.ring.consume(lambda b: seen.append(abi.decode(b)))
        assert seen.count(abi.MSG_BENCH) == c["bench"]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        sensor.close()


# Run in a process of its own (a thread would wait for the GIL while the consumer writes): samples the consumer
# position of the ring whose fd is argv[1] until stdin closes, then prints samples, moves back, the first move back.
_POSITION_WATCHER = """
import mmap, select, sys
pos = memoryview(mmap.mmap(int(sys.argv[1]), mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ, offset=0))[:8].cast("Q")
print("ready", flush=True)
n = back = 0
first = None
last = pos[0]
while True:
    for _ in range(2000):
        v = pos[0]
        if v < last:
            back += 1
            first = first or (last, v)
        last = v
        n += 1
    if select.select([sys.stdin], [], [], 0)[0]:
        break
print(n, back, first, flush=True)
"""


def test_ring_consumer_position_only_moves_forward() -> None:
    """While records stream through a ring from another CPU, the consumer position another process sees never
    moves back, and a ring that never filled up lost nothing. (Written with ``struct.pack_into``, which zeroes
    the 8 bytes before writing them, it read 0 for an instant every few hundred writes, and the kernel, which
    reads it on every record, dropped records as if the ring were full.)"""
    n_calls = 200_000
    ring_bytes = 16 << 20  # holds every record (200,000 x 32 bytes): none may be refused as if it were full
    child = subprocess.Popen(
        [sys.executable, "-c", f"import os,sys; sys.stdin.readline(); [os.getppid() for _ in range({n_calls})]"],
        stdin=subprocess.PIPE,
        text=True,
    )
    sensor = ProcessSensor(ringbuf_bytes=ring_bytes, bench_tgid=child.pid)
    watcher = None
    try:
        sensor.load()
        ring = sensor.ring
        assert ring is not None and child.stdin is not None
        watcher = subprocess.Popen(
            [sys.executable, "-c", _POSITION_WATCHER, str(ring.fileno())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            pass_fds=(ring.fileno(),),
        )
        assert watcher.stdout is not None and watcher.stdin is not None
        assert watcher.stdout.readline().strip() == "ready"
        child.stdin.write("go\n")
        child.stdin.flush()
        seen = [0]
        fullest = 0

        def count(recs: list[bytes]) -> None:
            seen[0] += sum(1 for r in recs if r[0] == abi.MSG_BENCH)

        while child.poll() is None or ring.available():
            fullest = max(fullest, ring.available())
            # at most 16 records a call, the position written after each: thousands of writes, the fill seen between
            ring.consume_batch(count, batch=16, limit=16)
        watcher.stdin.close()
        samples, back, first = watcher.stdout.readline().split(maxsplit=2)
        assert watcher.wait(timeout=30) == 0
        c = sensor.counters()
        assert seen[0] == c["bench"], c
        assert int(samples) > 10_000  # it watched while the records streamed
        assert int(back) == 0, f"the consumer position moved back {back} times (first: {first})"
        assert c["lost_bench"] == 0, (c, fullest)
        assert child.wait(timeout=30) == 0
    finally:
        for p in (child, watcher):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        sensor.close()


def test_map_typed_ops_and_batch() -> None:
    m = Map.create(1, "apiary_t_hash", 4, 8, 1024)  # BPF_MAP_TYPE_HASH
    try:
        from apiary.loader import TypedMap

        t = TypedMap(m, "<I", "<Q")
        for i in range(300):
            t.put(i, i * 3)
        assert t.get(7) == 21 and t.get(5000) is None
        assert m.count() == 300
        rows = m.lookup_batch(chunk=64)
        assert len(rows) == 300
        assert {int.from_bytes(k, "little"): int.from_bytes(v, "little") for k, v in rows}[299] == 897
        assert t.delete(7) and not t.delete(7)
        m.update_batch([(i.to_bytes(4, "little"), (1).to_bytes(8, "little")) for i in range(1000, 1100)])
        assert m.count() == 399
    finally:
        m.close()


def test_ringbuf_refuses_non_ringbuf_map() -> None:
    m = Map.create(2, "apiary_t_arr", 4, 4, 4)
    try:
        with pytest.raises(Exception, match="not a ring buffer"):
            RingBuffer(m)
    finally:
        m.close()


def test_missing_kernel_feature_is_reported_as_not_supported() -> None:
    """fentry is refused on this kernel family only where it is missing: the error must say so plainly."""
    from apiary.kernel.preflight import run_preflight
    from apiary.loader import NotSupportedError

    fentry_ok = run_preflight().get("fentry").ok
    obj = BpfObject(bpf_object("probes"))
    try:
        for name, prog in obj.programs.items():
            prog.autoload = name == "probe_fentry"
        if fentry_ok:
            obj.load()  # where the kernel has fentry, loading works (the VM kernel)
            return
        with pytest.raises(NotSupportedError) as ei:
            obj.load()
    finally:
        obj.close()
    assert "load program probe_fentry" in str(ei.value)
    assert "not supported on this kernel" in str(ei.value) and "tracing (fentry/do_unlinkat)" in str(ei.value)
