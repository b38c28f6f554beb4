"""Tracing events read at the ring's pace and built on first read: the same JSON as built at once, the process
side as it was when the record was read, counted in the Prometheus families, every event kept."""

from __future__ import annotations

import asyncio
import ctypes
import struct
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from apiary.agent.bus import EventBus
from apiary.agent.events import ProcessEvents, Publisher, TracingEvents
from apiary.agent.records import RingReader
from apiary.agent.tracing import Tracing
from apiary.kernel.features import X86_64_SYSCALLS, KernelFeatures
from apiary.observe.clock import KtimeClock
from apiary.observe.process import ProcessCache
from apiary.observe.raw import EXEC_F_CLONE, ExecMsg, ForkMsg
from apiary.sensors.base import RecordHandler
from apiary.sensors.tracing import abi
from apiary.sensors.tracing.sensor import LoadedPolicy
from apiary.store import FileStore
from apiary.tracing.compile import compile_tracing_policy
from apiary.tracing.load import load_tracing_policies

NODE = "n1"
OFFSET = 1_700_000_000 * 10**9  # the clock's REALTIME - MONOTONIC offset
POLICY = """
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: watch-etc}
spec:
  kprobes:
  - call: sys_openat
    syscall: true
    args: [{index: 1, type: string}]
    selectors:
    - matchArgs: [{index: 1, operator: Prefix, values: ["/etc/"]}]
"""


def _exec(pid: int, ktime: int, ppid: int, parent_ktime: int, binary: str) -> ExecMsg:
    return ExecMsg(
        ktime=ktime, pid=pid, tid=pid, ppid=ppid, parent_ktime=parent_ktime, flags=EXEC_F_CLONE, uid=0, euid=0,
        gid=0, egid=0, auid=0, cgroup_id=7, binary=binary, cwd="/", argv=[binary],
    )


class Pipeline:
    """The agent's reading side for one ring: reader -> tracing/process consumers -> publisher -> bus."""

    def __init__(self) -> None:
        features = KernelFeatures(kprobes=False, fentry=False, lsm=False, override=False, syscalls=X86_64_SYSCALLS)
        self.tracing = Tracing(FileStore("/nonexistent"), None, features)  # type: ignore[arg-type] - never loaded
        compiled = compile_tracing_policy(load_tracing_policies(POLICY)[0], features)
        self.tracing.sensor.hooks[3] = (LoadedPolicy(compiled, 1, [3]), compiled.hooks[0])
        self.clock = KtimeClock(OFFSET)
        self.cache = ProcessCache(NODE, self.clock)
        self.registry = CollectorRegistry()
        self.bus = EventBus(100, 10)
        self.out = Publisher(self.bus, self.registry, NODE)
        self.procs = ProcessEvents(self.cache, self.clock, NODE, self.out)
        self.events = TracingEvents(self.tracing, self.cache, self.clock, NODE, self.out, self.registry)
        handlers = {abi.MSG_GENERIC: RecordHandler("generic", abi.decode_record)}
        self.reader = RingReader(None, handlers, self.events.consumers())
        # a chain: init(1) -> shell(10) -> tool(20)
        for pid, ktime, ppid, pk, binary in ((1, 100, 0, 0, "/sbin/init"), (10, 200, 1, 100, "/bin/sh"),
                                             (20, 300, 10, 200, "/usr/bin/tool")):
            self.procs.exec(_exec(pid, ktime, ppid, pk, binary))
        self.bus.history.clear()  # their exec events: only tracing events below


def _record(pid: int, proc_ktime: int, path: bytes, hook_id: int = 3, ktime: int = 5_000) -> tuple[abi.Event, bytes]:
    """An event, and its record as the kernel sends it: up to the last byte of its last string."""
    ev = abi.Event(type=abi.MSG_GENERIC, ktime=ktime, pid=pid, tid=pid, proc_ktime=proc_ktime, cgroup_id=7,
                   hook_id=hook_id, action=abi.ACTIONS["Post"], nargs=1)
    ev.slen[0] = len(path)
    ctypes.memmove(ctypes.addressof(ev) + abi.Event.str.offset, path, len(path))
    return ev, bytes(ev)[: abi.Event.str.offset + len(path)]


def test_a_record_is_decoded_from_its_head_and_in_full_alike() -> None:
    ev, raw = _record(20, 300, b"/etc/hostname", ktime=123_456)
    rec = abi.decode_record(memoryview(raw))
    assert (rec.hook_id, rec.pid, rec.tid, rec.proc_ktime, rec.ktime, rec.cgroup_id) == (3, 20, 20, 300, 123_456, 7)
    full = rec.decode()
    assert bytes(full) == bytes(ev) and full.str[0].value == b"/etc/hostname"
    with pytest.raises(struct.error):  # too short for its head: a decode error
        abi.decode_record(memoryview(raw[:20]))


def test_an_event_built_on_read_is_the_event_built_at_once() -> None:
    pl = Pipeline()
    ev, raw = _record(20, 300, b"/etc/hostname")
    expected = pl.tracing.event(ev, pl.cache, NODE, pl.clock.to_rfc3339(ev.ktime))
    pl.reader.record(memoryview(raw))
    assert pl.reader.counters.decode_errors == 0 and len(pl.bus) == 1
    assert expected is not None and pl.bus.recent() == [expected[0]]
    body = expected[0]["process_kprobe"]
    assert body["args"] == [{"string_arg": "/etc/hostname"}] and body["process"]["binary"] == "/usr/bin/tool"
    assert [a["binary"] for a in body["ancestors"]] == ["/sbin/init"] and body["parent"]["binary"] == "/bin/sh"


def test_the_process_side_is_the_one_when_the_record_was_read() -> None:
    pl = Pipeline()
    pl.reader.record(memoryview(_record(20, 300, b"/etc/a")[1]))
    pl.procs.fork(ForkMsg(ktime=400, pid=21, tid=21, ppid=20, parent_ktime=300))  # the tool gets a child
    pl.reader.record(memoryview(_record(20, 300, b"/etc/b")[1]))
    pl.reader.record(memoryview(_record(20, 300, b"/etc/c")[1]))
    first, second, third = (e["process_kprobe"] for e in pl.bus.recent())  # built only now
    assert first["process"]["refcnt"] == 1, "the child held the tool after this record was read"
    assert second["process"]["refcnt"] == third["process"]["refcnt"] == 2
    assert [e["args"][0]["string_arg"] for e in (first, second, third)] == ["/etc/a", "/etc/b", "/etc/c"]


def test_records_are_counted_when_read_and_built_only_once_when_read() -> None:
    pl = Pipeline()
    for n in range(3):
        pl.reader.record(memoryview(_record(20, 300, b"/etc/%d" % n)[1]))
    pl.reader.record(memoryview(_record(999, 1, b"/etc/unknown")[1]))  # a process the cache does not know
    pl.reader.record(memoryview(_record(20, 300, b"/etc/x", hook_id=9)[1]))  # a hook never given out
    assert pl.reader.counters.decode_errors == 1 and len(pl.bus) == 4
    assert pl.out.counters.events["kprobe"] == 4 and pl.out.counters.missing_process_info == 1
    text = generate_latest(pl.registry).decode()
    assert ('tetragon_events_total{binary="/usr/bin/tool",namespace="",node_name="n1",pod="",type="PROCESS_KPROBE",'
            'workload=""} 3.0') in text
    assert ('tetragon_events_total{binary="",namespace="",node_name="n1",pod="",type="PROCESS_KPROBE",'
            'workload=""} 1.0') in text  # the unknown process's event
    assert ('tetragon_events_total{binary="/bin/sh",namespace="",node_name="n1",pod="",type="PROCESS_EXEC",'
            'workload=""} 1.0') in text
    assert ('tetragon_policy_events_total{binary="/usr/bin/tool",hook="__x64_sys_openat",namespace="",'
            'node_name="n1",pod="",policy="watch-etc",workload=""} 3.0') in text
    assert 'binary="",hook="__x64_sys_openat"' in text  # the unknown process's event, counted too
    built = pl.bus.recent()
    assert built[3]["process_kprobe"]["process"]["flags"] == "miss"
    assert all(a is b for a, b in zip(built, pl.bus.recent(), strict=True))  # built once, then kept


def test_a_streaming_client_gets_the_built_event_at_once() -> None:
    async def run() -> dict[str, Any]:
        pl = Pipeline()
        sub = pl.bus.subscribe()
        pl.reader.record(memoryview(_record(20, 300, b"/etc/hostname")[1]))
        ev = sub.queue.get_nowait()
        assert isinstance(ev, dict) and pl.bus.recent()[0] is ev
        return ev

    ev = asyncio.run(run())
    assert ev["process_kprobe"]["args"] == [{"string_arg": "/etc/hostname"}]


def test_an_event_that_fails_to_build_is_emitted_saying_so() -> None:
    pl = Pipeline()
    pl.reader.record(memoryview(_record(20, 300, b"/etc/hostname")[1]))

    def broken(*_: Any) -> dict[str, Any]:
        raise ValueError("bad bytes")

    pl.tracing.build = broken  # type: ignore[method-assign]
    (ev,) = pl.bus.recent()
    assert ev["apiary_build_error"]["error"] == "ValueError: bad bytes"
    assert ev["apiary_build_error"]["policy_name"] == "watch-etc" and pl.out.counters.build_errors == 1


def test_a_run_of_records_read_at_once_gives_what_reading_them_one_by_one_gives() -> None:
    raws = [_record(20, 300, b"/etc/%d" % n)[1] for n in range(3)]
    raws.append(_record(999, 1, b"/etc/unknown")[1])  # a process the cache does not know
    raws.append(_record(20, 300, b"/etc/x", hook_id=9)[1])  # a hook never given out
    raws.append(_record(999, 1, b"/etc/unknown-again")[1])  # the unknown process again: looked up again
    raws.append(bytes([99]) + raws[0][1:])  # a type no sensor here decodes: splits the run
    raws.append(raws[0][:20])  # too short for its head
    raws.append(_record(20, 300, b"/etc/last")[1])
    one, batch = Pipeline(), Pipeline()
    for raw in raws:
        one.reader.record(memoryview(raw))
    batch.reader.records(raws)
    c1, c2 = one.reader.counters, batch.reader.counters
    assert (c2.received, c2.decode_errors, dict(c2.by_type)) == (9, 3, {"generic": 7})
    assert (c1.received, c1.decode_errors, dict(c1.by_type)) == (c2.received, c2.decode_errors, dict(c2.by_type))
    assert c1.received_by_byte == c2.received_by_byte and c2.received_by_byte[99] == 1
    assert batch.out.counters == one.out.counters and batch.out.counters.events["kprobe"] == 6
    assert batch.cache.misses == one.cache.misses and batch.cache.misses["get"] >= 2  # each unknown one looked up
    assert _metrics(batch.registry) == _metrics(one.registry)
    assert ('tetragon_events_total{binary="/usr/bin/tool",namespace="",node_name="n1",pod="",type="PROCESS_KPROBE",'
            'workload=""} 4.0') in _metrics(batch.registry)  # memo hits counted too
    assert batch.bus.recent() == one.bus.recent()
    paths = [e["process_kprobe"]["args"][0]["string_arg"] for e in batch.bus.recent()]
    assert paths == ["/etc/0", "/etc/1", "/etc/2", "/etc/unknown", "/etc/unknown-again", "/etc/last"]


def _metrics(registry: CollectorRegistry) -> list[str]:
    """The exposition's lines but the ``_created`` timestamps (when each pipeline was made)."""
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]
