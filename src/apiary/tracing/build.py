"""Build one hook spec into :class:`~apiary.tracing.types.Hook` rows on each variant of its realisation.

For each :class:`~apiary.tracing.realisations.Variant` the declared args are realised (an arg kind the sensor
reads, from a syscall argument, a register, a tracepoint record field or a kernel struct; a constant the
syscall implies; or not available, with why), then the selectors; variants with identical results are merged
into one hook. A variant an arg cannot be realised on is dropped with a note for a monitoring policy and
refuses an enforcing one (it would be a bypass).
"""

from __future__ import annotations

from collections.abc import Mapping

from apiary.kernel.features import TpField

from .actions import ENFORCING
from .compilation import Compilation, Refuse
from .crd import INT_TYPES, UNSIGNED_TYPES
from .models import HookSpec, KProbeArg, KProbeSpec, UProbeSpec
from .realisations import (
    AC_ANY,
    AC_CONNSOCK,
    AC_FDSOCK,
    AC_INT,
    AC_KREG,
    AC_UREG,
    ARG_CLASS_KIND,
    ARG_CLASS_TEXT,
    ARG_CLASS_TYPES,
    Realisation,
    RealisedArg,
    Variant,
)
from .selectors import check_selector, selectors
from .types import (
    ARG_BPRM,
    ARG_BUF,
    ARG_CHARS,
    ARG_CRED,
    ARG_DATALOC,
    ARG_FD,
    ARG_FILEPTR,
    ARG_INT,
    ARG_KSTRING,
    ARG_PATHPTR,
    ARG_SKB,
    ARG_SOCK,
    ARG_SOCKADDR,
    ARG_STRING,
    ARG_UINT,
    MAX_ARGS,
    MAX_STRING,
    ArgSpec,
    Hook,
    Selector,
)

MAX_ARG_SIZE = 255  # gs_hook.arg_size is a u8
_ARG_DETAILS = (
    ("resolve", "resolve"),
    ("btf_type", "btfType"),
    ("source", "source"),
    ("btf_type_module", "btfTypeModule"),
)


def _syscall_arg_kind(ty: str, path: str) -> str:
    """ArgSpec kind for a Tetragon arg type read directly from a syscall argument."""
    if ty in INT_TYPES:
        return ARG_UINT if ty in UNSIGNED_TYPES else ARG_INT
    if ty in ("string", "char_buf", "filename", "path"):
        return ARG_STRING
    if ty in ("fd", "file"):
        return ARG_FD
    if ty in ("sock", "sockaddr"):
        return ARG_SOCKADDR
    if ty == "auto":
        raise Refuse(
            path,
            "arg type auto needs BTF resolution, which apiary does not do yet: write the type "
            "(int, string, fd, sockaddr…)",
        )
    raise Refuse(path, f"arg type {ty} not supported at syscall entry")


def _uprobe_kind(ty: str, path: str) -> str:
    """ArgSpec kind for a Tetragon arg type read from a uprobe's argument register (user-space values)."""
    if ty in INT_TYPES:
        return ARG_UINT if ty in UNSIGNED_TYPES else ARG_INT
    if ty in ("string", "char_buf"):
        return ARG_STRING
    if ty == "fd":
        return ARG_FD
    if ty == "auto":
        raise Refuse(
            path, "arg type auto needs debug information, which apiary does not read: write the type (int, string, fd…)"
        )
    raise Refuse(path, f"arg type {ty} not supported on uprobes (integer types, string, char_buf and fd are)")


def _kprobe_kind(ty: str, path: str) -> str:
    """ArgSpec kind for a Tetragon arg type read from a kprobed kernel function's argument register."""
    if ty in INT_TYPES:
        return ARG_UINT if ty in UNSIGNED_TYPES else ARG_INT
    kinds = {
        "string": ARG_KSTRING,
        "file": ARG_FILEPTR,
        "path": ARG_PATHPTR,
        "sock": ARG_SOCK,
        "skb": ARG_SKB,
        "cred": ARG_CRED,
        "linux_binprm": ARG_BPRM,
        "fd": ARG_FD,
    }
    if ty in kinds:
        return kinds[ty]
    if ty == "auto":
        raise Refuse(
            path,
            "arg type auto needs the function's BTF, which apiary does not read yet: write the type (int, "
            "string, file, sock, cred, fd…)",
        )
    raise Refuse(
        path,
        f"arg type {ty} is not supported on a kprobe of a kernel function (integer types, string (a kernel char *), "
        "file, path, sock, skb, cred, linux_binprm (pointers to those kernel structs) and fd are)",
    )


def _field_kind(f: TpField, ty: str) -> tuple[str, int, str] | str:
    """(kind, size, type) of tracepoint field ``f`` read as policy type ``ty``; or the types that can read it
    ("" when none can)."""
    elem = f.element
    integer = (
        not (f.is_pointer or f.is_array or f.is_data_loc)
        and f.size in (1, 2, 4, 8)
        and not elem.startswith(("struct ", "union "))
    )
    auto = ty == "auto"
    if integer:
        if ty in INT_TYPES or auto:
            if auto:
                ty = ("long" if f.size == 8 else "int") if f.signed else ("uint64" if f.size == 8 else "uint32")
            return (ARG_INT if f.signed else ARG_UINT), f.size, ty
        return "an integer type (int, long, uint32, uint64…)"
    if f.is_data_loc and elem == "char":
        if ty in ("string", "data_loc") or auto:
            return ARG_DATALOC, f.size, "string" if auto else ty
        return "string or data_loc"
    if f.is_array and elem == "char" and f.size > 0:
        if ty in ("string", "char_buf") or auto:
            return ARG_CHARS, min(f.size, MAX_ARG_SIZE), "string" if auto else ty
        return "string or char_buf"
    if f.is_pointer:
        char_ptr = f.type_.count("*") == 1 and elem == "char"
        if char_ptr and (ty == "string" or auto):
            return ARG_KSTRING, f.size, "string"
        if ty in INT_TYPES:
            return ARG_UINT, 8, ty
        return ("string or " if char_ptr else "") + "an integer type such as uint64 (the pointer's value)"
    return ""


def return_spec(
    comp: Compilation, hp: str, source: str, spec: KProbeSpec | UProbeSpec, mapping: Realisation
) -> ArgSpec | None:
    """Hook.ret of a hook with ``return: true`` on this realisation (None without it)."""
    if not spec.return_:
        if spec.return_arg is not None:
            comp.note(f"{source}: returnArg has no effect without return: true")
        return None
    if mapping.no_ret or not mapping.ret:
        raise Refuse(f"{hp}.return", f"return: true cannot be realised: {mapping.no_ret or 'no return probe'}")
    ra = spec.return_arg
    rp = f"{hp}.returnArg"
    if ra is None:
        raise Refuse(rp, "return: true needs returnArg (e.g. {index: 0, type: int})")
    arg_details(rp, ra)
    if ra.type_ not in INT_TYPES:
        raise Refuse(
            f"{rp}.type",
            f"returnArg type {ra.type_} is not supported: the sensor reads the return value as an integer "
            "(int, long, size_t, uint64…)",
        )
    text = f"{source}: return value: {mapping.ret}"
    if mapping.ret_differs:
        text += f"; it is not the hook's own return value ({mapping.ret_differs}): matchReturnArgs is refused"
    comp.note(text)
    return ArgSpec(0, ARG_UINT if ra.type_ in UNSIGNED_TYPES else ARG_INT, ra.label, ra.type_)


def build(
    comp: Compilation,
    hp: str,
    source: str,
    spec: HookSpec,
    event: str,
    function_name: str,
    mapping: Realisation,
    realisation: str,
    missing: Mapping[int, str] | None = None,
    index_text: str = "arg",
    ret: ArgSpec | None = None,
    path: str = "",
) -> None:
    """Realise one hook spec on each variant of ``mapping`` (identical results are merged)."""
    missing = {**(missing or {}), **mapping.missing}
    for si, sel in enumerate(spec.selectors or []):
        check_selector(comp, f"{hp}.selectors[{si}]", sel, ret, mapping.ret_differs)
    enforcing = any(a.action in ENFORCING for s in spec.selectors or [] for a in s.match_actions or [])
    built: list[tuple[Variant, tuple[ArgSpec, ...], tuple[Selector, ...] | None]] = []
    dropped: list[str] = []
    for variant in mapping.variants:
        args = variant_args(comp, hp, source, spec, mapping, variant, missing, index_text)
        if isinstance(args, str):
            if enforcing:
                raise Refuse(
                    hp,
                    f"{args}: an enforcing policy cannot skip {'/'.join(variant.attach_points)} (that "
                    "would be a bypass)",
                )
            dropped.append(f"{'/'.join(variant.attach_points)} not watched: {args}")
            continue
        argspecs = tuple(
            ArgSpec(
                index=a.sys_index,
                kind=a.kind,
                label=a.spec.label,
                tetragon_type=a.ty,
                offset=a.offset,
                size=a.size,
                size_index=a.size_index,
                at_return=a.at_return,
            )
            for a in args
            if a.slot >= 0
        )
        if len(argspecs) > MAX_ARGS:
            raise Refuse(f"{hp}.args", f"at most {MAX_ARGS} arguments per hook ({len(argspecs)} given)")
        sels = selectors(comp, hp, spec, args, variant, ret)
        built.append((variant, argspecs, sels))
    if not built:
        raise Refuse(hp, "; ".join(dropped) or "no realisation")
    merged: list[tuple[list[str], tuple[ArgSpec, ...], tuple[Selector, ...] | None, Variant]] = []
    for variant, argspecs, sels in built:
        for m in merged:
            if (
                m[1] == argspecs
                and m[2] == sels
                and (m[3].guard, m[3].at_exit)
                == (
                    variant.guard,
                    variant.at_exit,
                )
            ):
                m[0].extend(variant.attach_points)
                break
        else:
            merged.append((list(variant.attach_points), argspecs, sels, variant))
    for calls, argspecs, sels, variant in merged:
        text = realisation
        if not text:  # a kernel function or LSM hook approximated on syscalls
            where = "sys_exit" if variant.at_exit else "sys_enter"
            text = f"via {where}_{'/'.join(calls)}: {mapping.misses}" + comp.entry_only(event)
        if sels is None:
            comp.notes.append(f"{source}: no selector can match at {'/'.join(calls)}: not watched")
            continue
        comp.hooks.append(
            Hook(
                source=source,
                event=event,
                function_name=function_name,
                attach_points=tuple(calls),
                args=argspecs,
                selectors=sels,
                realisation=text,
                message=spec.message,
                tags=tuple(spec.tags or ()),
                ret=ret,
                path=path,
                guard=variant.guard,
                at_exit=variant.at_exit,
            )
        )
        comp.notes.append(f"{source}: {text}")
    for d in dropped:
        comp.notes.append(f"{source}: {d}")


def arg_details(ap: str, a: KProbeArg) -> None:
    """Refuse the arg fields apiary does not realise."""
    for fld, what in _ARG_DETAILS:
        if getattr(a, fld):
            raise Refuse(f"{ap}.{what}", f"{what} is not supported yet")


def variant_args(
    comp: Compilation,
    hp: str,
    source: str,
    spec: HookSpec,
    mapping: Realisation,
    variant: Variant,
    missing: Mapping[int, str],
    index_text: str,
) -> list[RealisedArg] | str:
    """The hook's args realised on one variant; a string saying why when one has no equivalent there."""
    """The hook's args realised on one variant; a string saying why when one has no equivalent there."""
    out: list[RealisedArg] = []
    slot = 0
    for pos, a in enumerate(spec.args or []):
        ap = f"{hp}.args[{pos}]"
        arg = RealisedArg(pos, a)
        out.append(arg)
        if a.type_ == "nop":
            arg.why_missing = "its type is nop (not read)"
            continue
        arg_details(ap, a)
        if a.index in missing:
            arg.why_missing = missing[a.index]
            comp.note(f"{source}: {index_text} {a.index} not reported: {arg.why_missing}")
            continue
        if a.index in variant.consts:
            arg.const = variant.consts[a.index]
            comp.note(
                f"{source}: {index_text} {a.index} not reported: a constant implied by the syscall (see the "
                "realisation); filters on it are decided when the policy is compiled"
            )
            continue
        if mapping.fields is not None:
            tp_arg(comp, ap, source, a, arg, mapping.fields, variant.attach_points[0].removeprefix("__tp_"))
        else:
            found = variant.args.get(a.index)
            if found is None:
                if mapping.no_index:
                    raise Refuse(f"{ap}.index", mapping.no_index.format(index=a.index))
                if variant.args and all(c == AC_ANY for _, c in variant.args.values()):
                    raise Refuse(
                        f"{ap}.index", f"{index_text} {a.index} does not exist: syscalls have at most 6 arguments"
                    )
                return f"{index_text} {a.index} has no equivalent at the entry of {'/'.join(variant.attach_points)}"
            arg.sys_index, cls = found
            if cls == AC_ANY:
                arg.kind = _syscall_arg_kind(a.type_, f"{ap}.type")
            elif cls == AC_UREG:
                arg.kind = _uprobe_kind(a.type_, f"{ap}.type")
            elif cls == AC_KREG:
                arg.kind = _kprobe_kind(a.type_, f"{ap}.type")
            else:
                if a.type_ not in ARG_CLASS_TYPES[cls]:
                    raise Refuse(
                        f"{ap}.type",
                        f"arg {a.index} is {ARG_CLASS_TEXT[cls]} here: type {a.type_} "
                        f"cannot be realised from it (use one of {', '.join(sorted(ARG_CLASS_TYPES[cls]))})",
                    )
                arg.kind = ARG_CLASS_KIND.get(cls) or _syscall_arg_kind(a.type_, f"{ap}.type")
                if cls in (AC_CONNSOCK, AC_FDSOCK):
                    arg.size_index = variant.guard.fd  # the socket is the fd's
        if a.return_copy:
            if not (
                a.type_ == "char_buf"
                and getattr(spec, "return_", False)
                and arg.kind == ARG_STRING
                and mapping.fields is None
                and index_text == "arg"
            ):
                raise Refuse(
                    f"{ap}.returnCopy",
                    "returnCopy needs a char_buf arg (a user buffer) of a kprobe or uprobe with return: true "
                    "(the buffer is read when the call returns)",
                )
            arg.kind = ARG_BUF
            arg.at_return = True
            comp.note(
                f"{source}: {index_text} {a.index} (char_buf, returnCopy): read when the call returns, as many "
                f"bytes as it returned (up to {MAX_STRING * 2 - 1}; longer is cut and flagged); filters on it "
                "are not supported"
            )
        elif (
            a.type_ == "char_buf"
            and a.size_arg_index
            and arg.kind == ARG_STRING
            and mapping.fields is None
            and index_text == "arg"
        ):
            # the buffer's bytes, as many as the size argument says (sizeArgIndex counts from 1)
            sized = variant.args.get(a.size_arg_index - 1)
            if sized is None or sized[1] not in (AC_ANY, AC_UREG, AC_INT):
                raise Refuse(
                    f"{ap}.sizeArgIndex",
                    f"sizeArgIndex {a.size_arg_index} (arg {a.size_arg_index - 1}) is not an integer argument "
                    f"available at {'/'.join(variant.attach_points)}",
                )
            arg.kind = ARG_BUF
            arg.size_index = sized[0]
            comp.note(
                f"{source}: {index_text} {a.index} (char_buf): up to {MAX_STRING * 2 - 1} bytes of the buffer, "
                f"as many as arg {a.size_arg_index - 1} says (longer is cut and flagged)"
            )
        elif a.type_ == "char_buf" or (a.size_arg_index and arg.kind == ARG_STRING):
            comp.note(
                f"{source}: {index_text} {a.index} ({a.type_}) is read as a "
                f"NUL-terminated string (at most {MAX_STRING} bytes compared; sizeArgIndex not "
                "used)"
            )
        if a.max_data:
            comp.note(f"{source}: maxData has no effect: strings are read up to 255 bytes")
        arg.slot = slot
        slot += 1
    return out


def tp_arg(
    comp: Compilation, ap: str, source: str, a: KProbeArg, arg: RealisedArg, fields: tuple[TpField, ...], label: str
) -> None:
    """Realise a tracepoint arg from the record's field number ``a.index``."""
    if a.index >= len(fields):
        raise Refuse(
            f"{ap}.index",
            f"field {a.index} does not exist: {label} has {len(fields)} fields (index 0-{len(fields) - 1}, "
            "common fields included)",
        )
    f = fields[a.index]
    got = _field_kind(f, a.type_)
    if isinstance(got, str):
        use = f"use {got}" if got else "apiary reads integer, string and pointer fields only"
        raise Refuse(
            f"{ap}.type",
            f"field {a.index} of {label} ({f.name}) is {f.type_}: type {a.type_} cannot be read from it ({use})",
        )
    arg.kind, arg.size, resolved = got
    arg.sys_index, arg.offset = a.index, f.offset
    if resolved != a.type_:
        arg.type_ = resolved
    if arg.kind == ARG_KSTRING:
        comp.note(f"{source}: field {a.index} ({f.name}, {f.type_}) is read as a string in kernel memory")
    if arg.kind == ARG_CHARS and f.size > MAX_ARG_SIZE:
        comp.note(
            f"{source}: field {a.index} ({f.name}, {f.type_}) is read up to {MAX_ARG_SIZE - 1} bytes (the "
            "sensor's limit)"
        )
