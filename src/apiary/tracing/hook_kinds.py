"""The per-hook-kind compilers: ``kprobes``, ``tracepoints``, ``uprobes`` and ``lsmhooks`` of a TracingPolicy.

Each picks the realisation of its hook on this kernel (a syscall's entry, a kprobe or BPF-LSM program, a
kernel function approximated on the syscalls that call it, a tracepoint record read by offset, a raw tracepoint,
a uprobe) and hands it to :func:`apiary.tracing.build.build`, which realises the args and selectors on each of
its variants. What has no faithful realisation raises :class:`~apiary.tracing.compilation.Refuse` with the
field path.
"""

from __future__ import annotations

import re

from apiary.kernel.features import TP_NAME

from .build import build, return_spec
from .checks import resolve_arg
from .compilation import Compilation, Refuse
from .counters import SIGNALS
from .crd import INT_TYPES
from .models import KProbeSpec, LsmHookSpec, TracepointSpec, UProbeSpec
from .realisations import (
    AC_ANY,
    AC_KREG,
    AC_UREG,
    KPROBE_REALISATIONS,
    LSM_REALISATIONS,
    LSM_SYSCALL_REALISATIONS,
    SYSCALL_REALISATIONS,
    Realisation,
    Variant,
)
from .selector_specs import ArgSelector, KProbeSelector

SYSCALL_SYMBOL = re.compile(r"^(__x64_|__ia32_|__arm64_|__riscv_|__s390x_)?sys_([a-z0-9_]+)$")
UPROBE_REGS = 5  # uprobe args: the first five argument registers (gs_kprobe reads PARM1-5)
_KRET = "the function's return value (kretprobe)"


def kprobe(comp: Compilation, path: str, kp: KProbeSpec) -> None:
    """spec.kprobes[i]: one hook per call (a ``list:`` call expands to its values)."""
    hp = f"spec.{path}"
    calls: list[tuple[str, str]] = [(kp.call, "")]
    if kp.call.startswith("list:"):
        calls = expand_list(comp, hp, kp)
    kprobe_common(comp, hp, kp)
    for call, origin in calls:
        source = f"{path} {call}" + (f" ({origin})" if origin else "")
        try:
            kprobe_call(comp, hp, source, kp, call)
        except Refuse as r:
            comp.problems.append(r.problem)


def expand_list(comp: Compilation, hp: str, kp: KProbeSpec) -> list[tuple[str, str]]:
    """The calls a ``call: list:NAME`` names, each with its origin (for the notes)."""
    name = kp.call.removeprefix("list:")
    ls = next((x for x in comp.policy.spec.lists or [] if x.name == name), None)
    if ls is None:
        comp.refuse(f"{hp}.call", f"list {name!r} is not defined")
        return []
    origin = f"list:{name}"
    if ls.type_ == "generated_ftrace":
        comp.refuse(f"{hp}.call", f"list {name} (generated_ftrace) names kernel functions: {comp.needs_kprobe()}")
        return []
    if ls.type_ == "generated_syscalls":
        if not comp.features.syscalls:
            comp.refuse(
                f"{hp}.call", f"list {name} (generated_syscalls) is empty: this kernel lists no syscall tracepoints"
            )
            return []
        comp.notes.append(f"{hp.removeprefix('spec.')} {origin}: {len(comp.features.syscalls)} syscalls")
        return [(f"sys_{s}", origin) for s in sorted(comp.features.syscalls)]
    return [(v, origin) for v in ls.values or []]


def kprobe_common(comp: Compilation, hp: str, kp: KProbeSpec) -> None:
    """Refuse the kprobe fields apiary does not realise on any call."""
    if kp.data:
        comp.refuse(f"{hp}.data", "data (extra values read from the task or registers) is not supported yet")
    if kp.return_arg_action:
        comp.refuse(
            f"{hp}.returnArgAction",
            f"returnArgAction {kp.return_arg_action} (socket tracking) is not supported yet",
        )


def kprobe_call(comp: Compilation, hp: str, source: str, kp: KProbeSpec, call: str) -> None:
    """One kprobe call: a syscall's entry, a kprobe on the function, or the function on the syscalls that call it."""
    if kp.syscall:
        m = SYSCALL_SYMBOL.match(call)
        if not m:
            hint = f"; {call} is a kernel function: set syscall: false" if call in SYSCALL_REALISATIONS else ""
            if call.startswith("__sys_"):
                hint = "; __sys_* helpers are kernel functions: set syscall: false"
            raise Refuse(
                f"{hp}.call",
                f"{call} is not a syscall symbol: with syscall: true the call is sys_<name> (e.g. sys_write){hint}",
            )
        arch, name = m.group(1) or "", m.group(2)
        if arch == "__ia32_":
            raise Refuse(f"{hp}.call", f"{call}: 32-bit compat syscalls are not supported yet")
        if arch and arch != comp.features.arch_prefix:
            raise Refuse(
                f"{hp}.call", f"{call}: not a syscall of this architecture ({comp.features.arch_prefix}sys_{name})"
            )
        if not comp.syscall_known(name):
            if kp.ignore and kp.ignore.call_not_found:
                comp.notes.append(f"{source}: skipped (ignore.callNotFound): no syscall {name} on this kernel")
                return
            raise Refuse(f"{hp}.call", f"no syscall {name} on this kernel (no syscalls/sys_enter_{name} tracepoint)")
        variant = Variant((name,), {i: (i, AC_ANY) for i in range(6)})
        entry = Realisation((variant,), "", ret=f"the syscall's return value, read at its exit (sys_exit_{name})")
        ret = return_spec(comp, hp, source, kp, entry)
        realisation = f"syscall entry of {name}" + (f", decided at its exit (sys_exit_{name})" if ret else "")
        build(
            comp,
            hp,
            source,
            kp,
            "process_kprobe",
            f"{comp.features.arch_prefix}sys_{name}",
            entry,
            realisation,
            ret=ret,
        )
        if not ret and any(a.action in SIGNALS for sel in kp.selectors or []
                           for a in sel.match_actions or []):
            comp.note(f"{source}: Sigkill/Signal are sent at the entry of {name} and delivered as it returns: the "
                      "process never sees the result, but the syscall may have done its work (a write stops "
                      "early on the pending kill, most syscalls, e.g. mkdir, do not), as with Tetragon; Override "
                      "on an LSM hook (a kernel with BPF-LSM) refuses the operation itself")
        return
    real = KPROBE_REALISATIONS.get(call) if comp.features.kprobes else None
    if real is not None:
        ret = return_spec(comp, hp, source, kp, real)
        probe = "kprobe and kretprobe" if ret else "kprobe"
        build(comp, hp, source, kp, "process_kprobe", call, real, f"{probe} on {call}: {real.misses}", ret=ret)
        return
    mapping = SYSCALL_REALISATIONS.get(call)
    if mapping is None and call.startswith("__sys_") and comp.syscall_known(call.removeprefix("__sys_")):
        name = call.removeprefix("__sys_")
        mapping = Realisation(
            (Variant((name,), {i: (i, AC_ANY) for i in range(6)}),),
            f"the kernel helper's own syscall; in-kernel callers of {call} not seen",
            ret=f"the return value of syscall {name} (which is {call}'s), read at its exit",
        )
    if mapping is None and comp.features.kprobes:
        # any other kernel function: a kprobe there, its args read as the types the policy gives
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", call):
            raise Refuse(f"{hp}.call", f"{call!r} is not a kernel function name")
        generic = Realisation(
            (Variant((f"__kprobe_{call}",), {i: (i, AC_KREG) for i in range(5)}),),
            "args read from the registers as the types the policy gives (not checked against the function's "
            "BTF); a function that does not exist or cannot be probed fails the apply",
            ret=_KRET,
            no_index="arg {index}: apiary reads the first 5 arguments of a kernel function",
        )
        ret = return_spec(comp, hp, source, kp, generic)
        probe = "kprobe and kretprobe" if ret else "kprobe"
        if kp.ignore and kp.ignore.call_not_found:
            comp.note(f"{source}: ignore.callNotFound: a missing {call} fails the apply instead of being skipped")
        build(comp, hp, source, kp, "process_kprobe", call, generic, f"{probe} on {call}: {generic.misses}", ret=ret)
        return
    if mapping is None:
        raise Refuse(f"{hp}.call", f"{call}: {comp.needs_kprobe()}")
    ret = return_spec(comp, hp, source, kp, mapping)
    build(comp, hp, source, kp, "process_kprobe", call, mapping, "", ret=ret)


def lsmhook(comp: Compilation, path: str, lsm: LsmHookSpec) -> None:
    """spec.lsmhooks[i]: a BPF-LSM program where the kernel has BPF-LSM, else the hook on its syscalls."""
    hp = f"spec.{path}"
    real = LSM_REALISATIONS.get(lsm.hook) if comp.features.lsm else None
    mapping = real or LSM_SYSCALL_REALISATIONS.get(lsm.hook)
    try:
        if mapping is None:
            raise Refuse(f"{hp}.hook", f"lsm hook {lsm.hook}: {comp.needs_lsm()}")
        text = f"BPF-LSM hook {lsm.hook}: {real.misses}" if real else ""
        build(comp, hp, f"{path} {lsm.hook}", lsm, "process_lsm", lsm.hook, mapping, text)
    except Refuse as r:
        comp.problems.append(r.problem)


def tracepoint(comp: Compilation, path: str, tp: TracepointSpec) -> None:
    """spec.tracepoints[i]: a syscall's entry, raw_syscalls/sys_enter, a raw tracepoint or any other record."""
    hp = f"spec.{path}"
    source = f"{path} {tp.subsystem}/{tp.event}"
    try:
        if tp.raw:
            raw_tracepoint(comp, hp, source, tp)
            return
        if tp.subsystem == "raw_syscalls" and tp.event == "sys_enter":
            raw_syscalls(comp, hp, source, tp)
            return
        if tp.subsystem != "syscalls" or not tp.event.startswith("sys_enter_"):
            generic_tracepoint(comp, hp, source, tp)
            return
        name = tp.event.removeprefix("sys_enter_")
        if not comp.syscall_known(name):
            raise Refuse(f"{hp}.event", f"no tracepoint syscalls/{tp.event} on this kernel")
        variant = Variant((name,), {i + 5: (i, AC_ANY) for i in range(6)})
        build(
            comp,
            hp,
            source,
            tp,
            "process_tracepoint",
            f"syscalls/{tp.event}",
            Realisation((variant,), ""),
            f"syscall entry of {name}",
            missing={
                0: "common field",
                1: "common field",
                2: "common field",
                3: "common field",
                4: "the syscall number (__syscall_nr): the hook's syscall is fixed",
            },
            index_text="field",
        )
    except Refuse as r:
        comp.problems.append(r.problem)


def generic_tracepoint(comp: Compilation, hp: str, source: str, tp: TracepointSpec) -> None:
    """Any tracepoint but syscalls/sys_enter_* and raw_syscalls/sys_enter: fields read by offset."""
    label = f"{tp.subsystem}/{tp.event}"
    for what, name in (("subsystem", tp.subsystem), ("event", tp.event)):
        if not TP_NAME.match(name) or ".." in name:
            raise Refuse(f"{hp}.{what}", f"{name!r} is not a tracepoint {what} name")
    if not comp.features.tracefs:
        raise Refuse(f"{hp}.event", f"tracepoint {label}: tracefs was not found, so the record's format cannot be read")
    fields = comp.features.tracepoint_fields(tp.subsystem, tp.event)
    if fields is None:
        raise Refuse(f"{hp}.event", f"no tracepoint {label} on this kernel")
    mapping = Realisation((Variant((f"__tp_{label}",), {}),), "", fields=tuple(fields))
    build(
        comp,
        hp,
        source,
        tp,
        "process_tracepoint",
        label,
        mapping,
        f"tracepoint {label}: fields read from the record by offset",
        index_text="field",
    )


def uprobe(comp: Compilation, path: str, up: UProbeSpec) -> None:
    """spec.uprobes[i]: one uprobe (and uretprobe with return: true) per symbol of the binary."""
    hp = f"spec.{path}"
    for fld, name in (
        ("offsets", "offsets"),
        ("addrs", "addrs"),
        ("ref_ctr_offsets", "refCtrOffsets"),
        ("btf_path", "btfPath"),
        ("data", "data"),
        ("binary_digests", "binaryDigests"),
    ):
        if getattr(up, fld):
            comp.refuse(f"{hp}.{name}", f"{name} is not supported yet")
    if up.ignore and up.ignore.digest_verification_failure and not up.binary_digests:
        comp.note(f"{path}: ignore.digestVerificationFailure has no effect without binaryDigests")
    if not up.path.startswith("/"):
        comp.refuse(f"{hp}.path", f"{up.path!r} is not an absolute path: a uprobe attaches to a binary by its path")
        return
    no_index = (
        f"arg {{index}} is not read: uprobe args are the first {UPROBE_REGS} argument registers "
        f"(index 0-{UPROBE_REGS - 1})"
    )
    for si, sym in enumerate(up.symbols or []):
        source = f"{path} {up.path}:{sym}"
        try:
            if not sym or ":" in sym or any(c.isspace() for c in sym):
                raise Refuse(f"{hp}.symbols[{si}]", f"{sym!r} is not a symbol name")
            variant = Variant((f"__uprobe_{up.path}:{sym}",), {i: (i, AC_UREG) for i in range(UPROBE_REGS)})
            mapping = Realisation((variant,), "", ret="the function's return value (uretprobe)", no_index=no_index)
            ret = return_spec(comp, hp, source, up, mapping)
            text = f"uprobe on {up.path}:{sym}" + (" and its return (uretprobe)" if ret else "")
            build(comp, hp, source, up, "process_uprobe", sym, mapping, text, ret=ret, path=up.path)
        except Refuse as r:
            comp.problems.append(r.problem)


def raw_tracepoint(comp: Compilation, hp: str, source: str, tp: TracepointSpec) -> None:
    """``raw: true``: the tracepoint's own arguments (as its TP_PROTO lists them), read by the policy's types."""
    if not comp.features.raw_tp_cookie:
        raise Refuse(
            f"{hp}.raw",
            "raw tracepoints need attach cookies for raw_tp programs (Linux 6.10+), which this kernel does not "
            "have: use raw: false (the record's fields by index)",
        )
    if not re.fullmatch(r"[A-Za-z0-9_]+", tp.event):
        raise Refuse(f"{hp}.event", f"{tp.event!r} is not a tracepoint name")
    mapping = Realisation(
        (Variant((f"__rawtp_{tp.event}",), {i: (i, AC_KREG) for i in range(5)}),),
        "the tracepoint's own arguments read as the types the policy gives (not checked against its BTF)",
        no_index="arg {index}: apiary reads the first 5 arguments of a raw tracepoint",
    )
    build(
        comp,
        hp,
        source,
        tp,
        "process_tracepoint",
        f"{tp.subsystem}/{tp.event}",
        mapping,
        f"raw tracepoint {tp.event}: {mapping.misses}",
    )


def raw_syscalls(comp: Compilation, hp: str, source: str, tp: TracepointSpec) -> None:
    """raw_syscalls/sys_enter: the syscall-id filter becomes the set of syscalls watched."""
    id_pos: set[int] = set()
    for i, a in enumerate(tp.args or []):
        if a.index == 4 and a.type_ in INT_TYPES:
            id_pos.add(i)
        elif a.index == 4:
            raise Refuse(f"{hp}.args[{i}].type", f"the id field (index 4) is an integer, not {a.type_}")
        else:
            raise Refuse(
                f"{hp}.args[{i}].index",
                "raw_syscalls/sys_enter: only the id (index 4) can be read; "
                "the args array is not supported yet (use syscalls/sys_enter_<name>)",
            )
    wanted: list[frozenset[str] | None] = []
    selectors = list(tp.selectors or [])
    stripped: list[KProbeSelector] = []
    for si, sel in enumerate(selectors):
        sp = f"{hp}.selectors[{si}]"
        ids: frozenset[str] | None = None
        rest = []
        for ai, flt in enumerate(sel.match_args or []):
            found = resolve_arg(tp, flt)
            if isinstance(found, str) or found[0] not in id_pos:
                rest.append(flt)
                continue
            if ids is not None:
                raise Refuse(f"{sp}.matchArgs[{ai}]", "one syscall-id filter per selector")
            ids = syscall_id_filter(comp, f"{sp}.matchArgs[{ai}]", flt)
        wanted.append(ids)
        stripped.append(sel.model_copy(update={"match_args": rest or None}))
    distinct = {w for w in wanted if w is not None}
    if len(distinct) > 1 or (distinct and None in wanted):
        raise Refuse(
            f"{hp}.selectors",
            "selectors with different syscall-id filters are not supported yet "
            "(the filter becomes the set of syscalls watched): write one tracepoint per set",
        )
    watched = sorted(distinct.pop()) if distinct else sorted(comp.features.syscalls)
    if not watched:
        raise Refuse(f"{hp}", "no syscall to watch: this kernel lists no syscall tracepoints")
    variant = Variant(tuple(watched), {})
    spec = tp.model_copy(update={"selectors": stripped or None, "args": None})
    what = ", ".join(watched) if len(watched) <= 8 else f"{len(watched)} syscalls"
    realisation = f"syscall entry of {what}"
    if distinct or any(w is not None for w in wanted):
        realisation += " (the id filter is the set of syscalls watched)"
    if id_pos:
        realisation += "; the id arg (index 4) is the event's syscall number"
    build(
        comp, hp, source, spec, "process_tracepoint", "raw_syscalls/sys_enter", Realisation((variant,), ""), realisation
    )


def syscall_id_filter(comp: Compilation, path: str, a: ArgSelector) -> frozenset[str]:
    """The syscalls a filter on raw_syscalls' id names (through ``list:NAME`` values)."""
    names: set[str] = set()
    for vi, v in enumerate(a.values or []):
        if not v.startswith("list:"):
            raise Refuse(
                f"{path}.values[{vi}]",
                "syscall numbers are architecture-specific: name the syscalls "
                "through a list (spec.lists, type: syscalls) and use list:NAME",
            )
        ls = next((x for x in comp.policy.spec.lists or [] if x.name == v.removeprefix("list:")), None)
        if ls is None or ls.type_ not in ("syscalls", "generated_syscalls"):
            raise Refuse(f"{path}.values[{vi}]", f"{v} must name a list of type syscalls")
        if ls.type_ == "generated_syscalls":
            names |= comp.features.syscalls
            continue
        for s in ls.values or []:
            m = SYSCALL_SYMBOL.match(s)
            if not m or (m.group(1) or "") == "__ia32_":
                raise Refuse(
                    f"{path}.values[{vi}]",
                    f"list {ls.name}: {s!r} is not a 64-bit syscall name "
                    "(sys_<name>; 32-bit compat syscalls are not supported yet)",
                )
            if not comp.syscall_known(m.group(2)):
                raise Refuse(f"{path}.values[{vi}]", f"list {ls.name}: no syscall {m.group(2)} on this kernel")
            names.add(m.group(2))
    if a.operator in ("Equal", "InMap"):
        return frozenset(names)
    if a.operator in ("NotEqual", "NotInMap"):
        return frozenset(comp.features.syscalls - names)
    raise Refuse(
        f"{path}.operator",
        f"the syscall id can be filtered with InMap/NotInMap (or Equal/NotEqual), not {a.operator}",
    )
