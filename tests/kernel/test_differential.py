"""Differential tests of the realisation table: a kprobe/BPF-LSM hook and its tracepoint realisation see the same.

For each row (a kernel function or LSM hook apiary realises on syscall tracepoints where the kernel has no kprobes
or BPF-LSM), the same TracingPolicy is compiled twice on this kernel: with the kernel's real features (the kprobe
or LSM hook itself) and with kprobes/BPF-LSM forced off (the tracepoint realisation). Each is loaded into the
tracing sensor, scoped to the standard workload's process tree (matchPIDs followForks), the workload runs, and the
events, normalised to (workload step, row, the args both realisations report), must be the same multiset — except
for the gaps in GAPS, each of which the realisation states in its `misses` text (shown at apply time and in
`tp list`). Runs where the kernel has kprobes and BPF-LSM (the 6.1 and 6.12 VMs); skipped elsewhere.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import ipaddress
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from apiary.kernel.features import KernelFeatures, kernel_features
from apiary.loader.errors import VerifierError
from apiary.policy.models import PolicyError
from apiary.sensors.process.sensor import ProcessSensor
from apiary.sensors.tracing import abi as tabi
from apiary.sensors.tracing.sensor import TracingSensor
from apiary.testing.agent import IN_VM
from apiary.testing.sensors import tracing_events
from apiary.testing.workload import Workload, WorkloadResult
from apiary.tracing.compile import compile_tracing_policy
from apiary.tracing.load import load_tracing_policies
from apiary.tracing.types import (
    ARG_BPRM,
    ARG_CONNSOCK,
    ARG_CRED,
    ARG_FD,
    ARG_FILEPTR,
    ARG_KSOCKADDR,
    ARG_SOCK,
    ARG_SOCKADDR,
    ARG_SOCKETPTR,
    ARG_STRING,
    CompiledTracingPolicy,
    Hook,
)

# (step, row, ((arg label, normalised value), ...)): what both realisations are compared on
Norm = tuple[str, str, tuple[tuple[str, Any], ...]]


@dataclass(frozen=True)
class Row:
    name: str  # the row of the realisation table
    section: str  # kprobes | lsmhooks
    call: str
    args: tuple[tuple[int, str], ...]  # (index, Tetragon type)
    # where the tracepoint realisation is that of another row (file_permission has no LSM_SYSCALL_REALISATIONS
    # entry: the kprobe security_file_permission is the same kernel check)
    fallback: tuple[str, str] | None = None


ROWS = (
    Row("vfs_write", "kprobes", "vfs_write", ((0, "file"), (2, "size_t"))),
    Row("vfs_read", "kprobes", "vfs_read", ((0, "file"), (2, "size_t"))),
    Row("security_file_permission", "kprobes", "security_file_permission", ((0, "file"), (1, "int"))),
    Row("fd_install", "kprobes", "fd_install", ((0, "int"), (1, "file"))),
    Row("security_file_open", "kprobes", "security_file_open", ((0, "file"),)),
    Row("tcp_connect", "kprobes", "tcp_connect", ((0, "sock"),)),
    Row("security_socket_connect", "kprobes", "security_socket_connect", ((0, "socket"), (1, "sockaddr"), (2, "int"))),
    Row("commit_creds", "kprobes", "commit_creds", ((0, "cred"),)),
    Row("security_bprm_check", "kprobes", "security_bprm_check", ((0, "linux_binprm"),)),
    Row("lsm file_open", "lsmhooks", "file_open", ((0, "file"),)),
    Row(
        "lsm file_permission",
        "lsmhooks",
        "file_permission",
        ((0, "file"), (1, "int")),
        fallback=("kprobes", "security_file_permission"),
    ),
    Row("lsm bprm_check_security", "lsmhooks", "bprm_check_security", ((0, "linux_binprm"),)),
)


@dataclass(frozen=True)
class Gap:
    """Events one realisation reports and the other does not, as the tracepoint realisation's text states."""

    row: str
    only_in: str  # "real" (the kprobe/LSM hook sees it, the tracepoint realisation not) or "tracepoint"
    steps: frozenset[str] | None  # None: any step
    match: Callable[[dict[str, Any]], bool]  # on the event's args {label: value}
    states: str  # the words of the realisation's misses text that state the gap


def _path(pred: Callable[[str], bool]) -> Callable[[dict[str, Any]], bool]:
    """The event's file or path arg (k0, or k1 for fd_install) satisfies pred."""
    return lambda a: any(isinstance(v, str) and pred(v) for v in a.values())


def _any(_a: dict[str, Any]) -> bool:
    return True


def _gaps(
    rows: tuple[str, ...], only_in: str, steps: set[str] | None, match: Callable[..., bool], states: str
) -> tuple[Gap, ...]:
    return tuple(Gap(r, only_in, frozenset(steps) if steps else None, match, states) for r in rows)


_EXECS = {"exec", "exec-script"}
_OPENS = ("security_file_open", "lsm file_open", "fd_install")
_PERMS = ("security_file_permission", "lsm file_permission")
_EXECS_ROWS = ("security_bprm_check", "lsm bprm_check_security")
# THE table of allowed differences (one place). Each `states` must be in the tracepoint realisation's text.
GAPS: tuple[Gap, ...] = (
    # the kernel's own opens and reads while it execs (the binary, its interpreter ld.so, ld.so.cache…)
    *_gaps(_OPENS[:2], "real", _EXECS, _any, "opens by the kernel, by exec"),
    *_gaps(_PERMS, "real", _EXECS, _any, "kernel-internal accesses and other permission checks"),
    # fd_install of pipes and sockets (their path reads "/"), and dash's dup of the script's fd
    *_gaps(("fd_install",), "real", None, _path(lambda p: p == "/"), "not those of socket, accept, pipe, dup"),
    *_gaps(("fd_install",), "real", {"exec-script"}, _path(lambda p: p == "$W/script.sh"), "dup"),
    # the kernel checks the script, then its interpreter; at execve's exit only the interpreter is there
    *_gaps(
        _EXECS_ROWS,
        "real",
        {"exec-script"},
        _path(lambda p: p == "$W/script.sh"),
        "a script is seen as its interpreter only",
    ),
)

# args the tracepoint realisation does not report, with the words that state it at apply time
UNREPORTED = {
    ("fd_install", "k0"): "arg 0 not reported",
    ("commit_creds", "k0"): "arg 0 not reported",
    # the mask is a constant per syscall (used by filters) and not in the events: the test puts it back from the
    # event's syscall, so the constant table is checked too
    ("security_file_permission", "k1"): "the mask is implied by the syscall, not read",
    ("lsm file_permission", "k1"): "the mask is implied by the syscall, not read",
}
_MAY_WRITE, _MAY_READ = 2, 4
_WRITES = {"write", "pwrite64", "writev", "pwritev", "pwritev2"}


def _policy(row: Row, section: str, call: str, pid: int) -> str:
    key = "call" if section == "kprobes" else "hook"
    extra = "\n    syscall: false" if section == "kprobes" else ""
    args = ", ".join(f"{{index: {i}, type: {t}, label: k{i}}}" for i, t in row.args)
    return f"""
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {{name: diff}}
spec:
  {section}:
  - {key}: {call}{extra}
    args: [{args}]
    selectors: [{{matchPIDs: [{{operator: In, followForks: true, values: [{pid}]}}]}}]
"""


@functools.cache
def _real_features() -> KernelFeatures:
    """What this kernel lets apiary attach, found by trying (apiary preflight's probes), as the agent does."""
    return kernel_features()


def _compile(row: Row, real: bool, pid: int) -> CompiledTracingPolicy:
    base = _real_features()
    if real:
        return compile_tracing_policy(load_tracing_policies(_policy(row, row.section, row.call, pid))[0], base)
    section, call = row.fallback or (row.section, row.call)
    forced = dataclasses.replace(base, kprobes=False, lsm=False)
    return compile_tracing_policy(load_tracing_policies(_policy(row, section, call, pid))[0], forced)


def _is_real(c: CompiledTracingPolicy) -> bool:
    return all(s.startswith(("__kprobe_", "__lsm_")) for h in c.hooks for s in h.attach_points)


def _text(c: CompiledTracingPolicy) -> str:
    return " ".join([h.realisation for h in c.hooks] + list(c.notes))


def _value(kind: str, tetragon_type: str, v: int, raw: bytes, wdir: str, res: WorkloadResult, step: str | None) -> Any:
    if kind in (ARG_FD, ARG_FILEPTR, ARG_BPRM, ARG_STRING):
        s = raw.decode("utf-8", errors="replace").replace(wdir, "$W")
        return re.sub(r"^(pipe|socket):\[\d+\]$", r"\1:", s)
    if kind in (
        ARG_SOCK,
        ARG_CONNSOCK,
        ARG_SOCKETPTR,
    ):  # the socket read in the kernel: the destination side (the source
        si = tabi.sockinfo(raw)  # port and address are not chosen yet at connect()'s entry, as stated)
        daddr = ipaddress.IPv6Address(bytes(si.daddr6)) if si.family == 10 else ipaddress.IPv4Address(si.daddr)
        return (si.family, si.type, si.protocol, str(daddr), res.port_name(si.dport, step))
    if kind in (ARG_SOCKADDR, ARG_KSOCKADDR):
        fam, addr, port = tabi.sockaddr(v)
        if fam == 2:
            return ("AF_INET", addr, res.port_name(port, step))
        if fam == 10:
            return ("AF_INET6", res.port_name(port, step))
        return (f"family {fam}",)
    if kind == ARG_CRED:
        ci = tabi.credinfo(raw)
        return ("uid", ci.uid, "euid", ci.euid, "gid", ci.gid, "egid", ci.egid)
    if tetragon_type == "int":
        v &= 0xFFFFFFFF
        return v - (1 << 32) if v >= 1 << 31 else v
    return v & 0xFFFFFFFFFFFFFFFF


@functools.cache
def _syscall_name(nr: int) -> str:
    return {n: name for name, n in tabi.syscall_numbers().items()}.get(nr, str(nr))


def _normalise(row: str, hooks: dict[int, Hook], evs: list[tabi.Event], wdir: str, res: WorkloadResult) -> list[Norm]:
    out: list[Norm] = []
    for ev in evs:
        hook = hooks.get(ev.hook_id)
        if hook is None:
            continue
        args = []
        step = res.step_at(ev.ktime)
        for i, spec in enumerate(hook.args[: ev.nargs]):
            raw = bytes(ev.str[i])[: ev.slen[i]]
            args.append((spec.label, _value(spec.kind, spec.tetragon_type, ev.ints[i], raw, wdir, res, step)))
        if row.endswith("file_permission") and not hook.attach_points[0].startswith(("__kprobe_", "__lsm_")):
            args.append(("k1", _MAY_WRITE if _syscall_name(ev.syscall_nr) in _WRITES else _MAY_READ))
        out.append((step or "outside the workload", row, tuple(sorted(args))))
    return out


_LSM_REJECTED: list[str] = []  # why the kernel refused the sensor's BPF-LSM programs, if it did


@pytest.fixture(scope="module")
def sensors() -> Iterator[tuple[ProcessSensor, TracingSensor]]:
    ps = ProcessSensor(ringbuf_bytes=1 << 24)
    ps.load()
    f = _real_features()
    ts = TracingSensor(ps, lsm=f.lsm, kprobes=f.kprobes)
    try:
        try:
            ts.load()
        except VerifierError as e:
            if not f.lsm:
                raise
            # the LSM programs are rejected (6.12 checks their return range): the kprobe rows still run, the LSM
            # rows fail with the verifier's reason
            _LSM_REJECTED.append(str(e).splitlines()[0] + " " + " ".join(str(e).splitlines()[1:3]))
            ts = TracingSensor(ps, lsm=False, kprobes=f.kprobes)
            ts.load()
        yield ps, ts
    finally:
        ts.close()
        ps.close()


def _observe(
    sensors: tuple[ProcessSensor, TracingSensor], row: Row, real: bool, workdir: str
) -> tuple[collections.Counter[Norm], CompiledTracingPolicy, WorkloadResult]:
    """The row's events from one run of the workload under one realisation."""
    ps, ts = sensors
    wdir = os.path.join(workdir, "w")
    shutil.rmtree(wdir, ignore_errors=True)
    tracing_events(ps)  # drain what earlier runs left
    with Workload(wdir) as w:
        compiled = _compile(row, real, w.pid)
        lp = ts.apply("/diff", compiled, None)
        hooks = {h: ts.hooks[h][1] for h in lp.hook_ids}
        try:
            res = w.run()
            time.sleep(1.0 if IN_VM else 0.2)
            evs = tracing_events(ps)
            lost = sum(ts.hook_counters(h)["lost"] for h in lp.hook_ids)
        finally:
            ts.delete("/diff")
    assert lost == 0, f"{row.name}: {lost} events lost in the ring"
    return collections.Counter(_normalise(row.name, hooks, evs, wdir, res)), compiled, res


def _common(events: collections.Counter[Norm], labels: set[str]) -> collections.Counter[Norm]:
    out: collections.Counter[Norm] = collections.Counter()
    for (step, row, args), n in events.items():
        out[(step, row, tuple((k, v) for k, v in args if k in labels))] += n
    return out


def _labels(c: CompiledTracingPolicy) -> set[str]:
    return {a.label for h in c.hooks for a in h.args}


def _allowed(gap: Gap, row: str, side: str, ev: Norm) -> bool:
    step, _row, args = ev
    return gap.row == row and gap.only_in == side and (gap.steps is None or step in gap.steps) and gap.match(dict(args))


def _show(evs: collections.Counter[Norm]) -> str:
    return "\n".join(f"    {n}x {step}: {args}" for (step, _r, args), n in sorted(evs.items(), key=str))


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_kprobe_and_lsm_realisations_see_what_the_tracepoint_realisation_sees(sensors, workdir, row: Row) -> None:
    try:
        real_c = _compile(row, True, os.getpid())
    except PolicyError as e:
        pytest.skip(f"{row.name}: refused on this kernel: {e}")
    if not _is_real(real_c):
        kind = "kprobes" if row.section == "kprobes" else "BPF-LSM"
        pytest.skip(f"{row.name}: not realised by {kind} here: {real_c.hooks[0].realisation[:160]}")
    if row.section == "lsmhooks" and _LSM_REJECTED:
        pytest.fail(f"{row.name}: this kernel has BPF-LSM but rejects the sensor's LSM programs: {_LSM_REJECTED[0]}")
    tp_c = _compile(row, False, os.getpid())
    assert not any(s.startswith(("__kprobe_", "__lsm_")) for h in tp_c.hooks for s in h.attach_points)
    tp_text = _text(tp_c)
    # every gap of this row is stated by the realisation; every arg it drops is said at apply time
    for gap in GAPS:
        if gap.row == row.name:
            assert gap.states in tp_text, f"gap not stated by the realisation: {gap.states!r} not in {tp_text!r}"
    labels = _labels(real_c) & (_labels(tp_c) | ({"k1"} if row.name.endswith("file_permission") else set()))
    for label in _labels(real_c) - _labels(tp_c):
        assert (row.name, label) in UNREPORTED, f"{row.name}: arg {label} silently dropped"
        assert UNREPORTED[(row.name, label)] in tp_text
    real_ev, _c, _res = _observe(sensors, row, True, workdir)
    tp_ev, _c2, _res2 = _observe(sensors, row, False, workdir)
    real_ev, tp_ev = _common(real_ev, labels), _common(tp_ev, labels)
    assert real_ev, f"{row.name}: the kprobe/LSM realisation saw nothing of the workload"
    assert tp_ev, f"{row.name}: the tracepoint realisation saw nothing of the workload"
    only_real = collections.Counter(
        {e: n for e, n in (real_ev - tp_ev).items() if not any(_allowed(g, row.name, "real", e) for g in GAPS)}
    )
    only_tp = collections.Counter(
        {e: n for e, n in (tp_ev - real_ev).items() if not any(_allowed(g, row.name, "tracepoint", e) for g in GAPS)}
    )
    assert not only_real and not only_tp, (
        f"{row.name}: the realisations differ beyond the stated gaps\n"
        f"  only the kprobe/LSM hook ({real_c.hooks[0].attach_points[0]}):\n{_show(only_real)}\n"
        f"  only the tracepoint realisation ({', '.join(h.attach_points[0] for h in tp_c.hooks)}):\n{_show(only_tp)}"
    )
