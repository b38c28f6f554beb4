"""The syscall entry program in both its variants, for real: gs_sys_enter (reads the tracepoint record through
bpf_rdonly_cast, where the kernel allows it) and gs_sys_enter_pr (probe reads, for kernels without). Each must
give the same events: the quick reject (one hook on the syscall, straight from the record) passes what a Prefix
or a short Equal can match and drops the rest, several hooks on one syscall are each decided, arguments past
the compared one are read right, and a syscall of one argument attaches."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

import apiary.sensors.tracing.sensor as tsensor
from apiary.kernel.probes import tracepoint_record_loads
from apiary.sensors.process.sensor import ProcessSensor
from apiary.sensors.tracing import abi as tabi
from apiary.sensors.tracing.sensor import TracingSensor
from apiary.testing.sensors import tracing_events
from apiary.tracing.types import ARG_INT, ARG_STRING, ArgFilter, ArgSpec, CompiledTracingPolicy, Hook, Selector


@pytest.fixture(params=["gs_sys_enter", "gs_sys_enter_pr"])
def sensors(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[ProcessSensor, TracingSensor]]:
    fast = request.param == "gs_sys_enter"
    if fast and not tracepoint_record_loads():
        pytest.skip("this kernel does not let tracepoint programs call bpf_rdonly_cast")
    monkeypatch.setattr(tsensor, "tracepoint_record_loads", lambda: fast)
    ps = ProcessSensor(ringbuf_bytes=1 << 22)
    ps.load()
    ts = TracingSensor(ps)
    try:
        ts.load()
        assert ts.enter_prog == request.param
        tracing_events(ps)
        yield ps, ts
    finally:
        for key in list(ts.policies):
            ts.delete(key)
        ts.close()
        ps.close()


def _s(ev: tabi.Event, i: int) -> str:
    return bytes(ev.str[i])[: ev.slen[i]].decode()


def _hook(call: str, args: tuple[ArgSpec, ...], flt: ArgFilter) -> Hook:
    return Hook(
        source=f"kprobes[0] sys_{call}",
        event="process_kprobe",
        function_name=f"__x64_sys_{call}",
        attach_points=(call,),
        args=args,
        selectors=(Selector(args=(flt,)),),
        realisation=f"syscall entry of {call}",
    )


def _apply(ts: TracingSensor, name: str, *hooks: Hook) -> None:
    ts.apply(f"/{name}", CompiledTracingPolicy(name, "", "TracingPolicy", "enforce", None, list(hooks)), None)


SYS_OPENAT, SYS_CHDIR = 257, 80  # x86_64
OPEN_ARGS = (ArgSpec(1, ARG_STRING, tetragon_type="string"), ArgSpec(2, ARG_INT, tetragon_type="int"))


def test_quick_reject_and_the_arguments_after_it(sensors, workdir) -> None:
    ps, ts = sensors
    d = workdir
    # one hook on openat (the quick reject from the record), one on chdir (one argument: register 0)
    _apply(ts, "entry-a", _hook("openat", OPEN_ARGS, ArgFilter(0, "Prefix", (f"{d}/a",))))
    cd_args = (ArgSpec(0, ARG_STRING, tetragon_type="string"),)
    _apply(ts, "entry-cd", _hook("chdir", cd_args, ArgFilter(0, "Equal", (d,))))
    assert ts.sys_links.keys() >= {"openat", "chdir"}
    flags = os.O_WRONLY | os.O_CREAT  # (Python adds O_CLOEXEC: masked out below)
    for name in ("a1", "b1", "a", "xa1"):
        os.close(os.open(f"{d}/{name}", flags, 0o600))
    os.mkdir(f"{d}/sub")
    cwd = os.getcwd()
    try:
        os.chdir(d)
        os.chdir(f"{d}/sub")
    finally:
        os.chdir(cwd)
    evs = [e for e in tracing_events(ps) if _s(e, 0).startswith(d)]
    opens = sorted((_s(e, 0), e.ints[1] & ~os.O_CLOEXEC) for e in evs if e.syscall_nr == SYS_OPENAT)
    assert opens == [(f"{d}/a", flags), (f"{d}/a1", flags)]
    assert [_s(e, 0) for e in evs if e.syscall_nr == SYS_CHDIR] == [d]  # chdir to d, not to d/sub


def test_several_hooks_on_one_syscall_are_each_decided(sensors, workdir) -> None:
    ps, ts = sensors
    d = workdir
    _apply(
        ts,
        "entry-two",
        _hook("openat", OPEN_ARGS, ArgFilter(0, "Prefix", (f"{d}/a",))),
        _hook("openat", OPEN_ARGS, ArgFilter(0, "Equal", (f"{d}/b",))),
    )
    for name in ("a1", "b", "b1", "c"):
        os.close(os.open(f"{d}/{name}", os.O_RDONLY | os.O_CREAT, 0o600))
    evs = [e for e in tracing_events(ps) if _s(e, 0).startswith(d)]
    got = sorted((_s(e, 0), e.ints[1] & ~os.O_CLOEXEC) for e in evs)
    assert got == [(f"{d}/a1", os.O_CREAT), (f"{d}/b", os.O_CREAT)]
