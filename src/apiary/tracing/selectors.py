"""Selector parsing: one function per matcher, as Tetragon's ``pkg/selectors``.

``matchArgs`` (:func:`match_args`, each filter by :func:`arg_filter`), ``matchReturnArgs``
(:func:`match_return_args`), ``matchBinaries``, ``matchPIDs``, ``matchNamespaces`` and ``matchCapabilities``
become the sensor's :class:`~apiary.tracing.types.Selector`; the actions are parsed by
:mod:`apiary.tracing.actions`. Each refuses what the sensor cannot compare (an operator, a value beyond its
limits) with the field path, never truncating.
"""

from __future__ import annotations

import ipaddress

from .actions import check_return_actions, match_actions
from .checks import resolve_arg
from .compilation import Compilation, Refuse
from .crd import CAPABILITIES, UNSIGNED_TYPES, parse_int, parse_port_range
from .models import HookSpec
from .realisations import RealisedArg, Variant
from .selector_specs import ArgSelector, KProbeSelector
from .types import (
    ARG_CONNSOCK,
    ARG_INT,
    ARG_KSOCKADDR,
    ARG_SKB,
    ARG_SOCK,
    ARG_SOCKADDR,
    ARG_SOCKETPTR,
    ARG_UINT,
    MAX_ARG_FILTERS,
    MAX_BINARY,
    MAX_NAMESPACE_FILTERS,
    MAX_SELECTORS,
    MAX_STRING,
    MAX_VALUES,
    STRING_KINDS,
    ArgFilter,
    ArgSpec,
    BinaryFilter,
    CapabilityFilter,
    NamespaceFilter,
    PidFilter,
    Selector,
)

_FAMILIES = {
    "AF_UNSPEC": 0,
    "AF_UNIX": 1,
    "AF_LOCAL": 1,
    "AF_INET": 2,
    "AF_INET6": 10,
    "AF_NETLINK": 16,
    "AF_PACKET": 17,
}
_INT_OPS = {
    "Equal": "Equal",
    "NotEqual": "NotEqual",
    "GT": "GT",
    "GreaterThan": "GT",
    "LT": "LT",
    "LessThan": "LT",
    "Mask": "Mask",
    "InRange": "InRange",
    "NotInRange": "NotInRange",
    "InMap": "Equal",
    "NotInMap": "NotEqual",
}
_STRING_OPS = ("Equal", "NotEqual", "Prefix", "NotPrefix", "Postfix", "NotPostfix")
# sock (tcp_connect): the destination ops; sockaddr: Tetragon names the sockaddr's own address SAddr/SPort
_SOCK_OPS = {
    "DAddr": "DAddr",
    "NotDAddr": "NotDAddr",
    "DPort": "DPort",
    "NotDPort": "NotDPort",
    "DPortPriv": "DPort",
    "NotDPortPriv": "NotDPort",
    "Family": "Family",
}
_SOCKADDR_OPS = {
    "SAddr": "DAddr",
    "NotSAddr": "NotDAddr",
    "SPort": "DPort",
    "NotSPort": "NotDPort",
    "SPortPriv": "DPort",
    "NotSportPriv": "NotDPort",
    "Family": "Family",
}
# a struct sock read in the kernel (kprobes): both ends and the protocol are known
_KSOCK_OPS = {
    **_SOCK_OPS,
    "SAddr": "SAddr",
    "NotSAddr": "NotSAddr",
    "SPort": "SPort",
    "NotSPort": "NotSPort",
    "SPortPriv": "SPort",
    "NotSportPriv": "NotSPort",
    "Protocol": "Protocol",
}
# connect(): the socket's protocol is read, the source is not chosen yet
_CONNSOCK_OPS = {**_SOCK_OPS, "Protocol": "Protocol"}
_PROTOCOLS = {
    "IPPROTO_IP": 0,
    "IPPROTO_ICMP": 1,
    "IPPROTO_TCP": 6,
    "IPPROTO_UDP": 17,
    "IPPROTO_SCTP": 132,
    "IPPROTO_RAW": 255,
    "IPPROTO_MPTCP": 262,
}
_UNSUPPORTED_SELECTOR_FIELDS = (
    ("match_data", "matchData"),
    ("match_parent_binaries", "matchParentBinaries"),
    ("match_namespace_changes", "matchNamespaceChanges"),
    ("match_capability_changes", "matchCapabilityChanges"),
    ("match_workloads", "matchWorkloads"),
    ("macros", "macros"),
)
_CAP_BITS = {name: bit for bit, name in enumerate(CAPABILITIES)}  # kernel order: CAP_CHOWN = 0 …


def check_selector(comp: Compilation, sp: str, sel: KProbeSelector, ret: ArgSpec | None, ret_differs: str = "") -> None:
    """Refuse what a selector asks that no realisation of its hook can carry out (checked once per hook)."""
    for attr, name in _UNSUPPORTED_SELECTOR_FIELDS:
        if getattr(sel, attr):
            comp.refuse(f"{sp}.{name}", f"{name} is not supported yet")
    rets = sel.match_return_args or []
    if rets and ret is None:
        comp.refuse(f"{sp}.matchReturnArgs", "matchReturnArgs applies only on hooks with return: true")
    elif rets and ret_differs:
        comp.refuse(
            f"{sp}.matchReturnArgs",
            f"the return value read is the syscall's, not the hook's own ({ret_differs}): a filter on it would not "
            "mean what it says",
        )
    elif len(rets) > 1:
        comp.refuse(
            f"{sp}.matchReturnArgs",
            f"at most one matchReturnArgs filter per selector ({len(rets)} given): the sensor compares the "
            "return value with one filter",
        )
    check_return_actions(comp, sp, sel, ret)


def selectors(
    comp: Compilation, hp: str, spec: HookSpec, args: list[RealisedArg], variant: Variant, ret: ArgSpec | None = None
) -> tuple[Selector, ...] | None:
    """Selectors for one variant; None when there were selectors but none can ever match here."""
    given = list(spec.selectors or [])
    if len(given) > MAX_SELECTORS:
        raise Refuse(f"{hp}.selectors", f"at most {MAX_SELECTORS} selectors per hook ({len(given)} given)")
    out: list[Selector] = []
    failed = False
    for si, sel in enumerate(given):
        try:
            s = selector(comp, f"{hp}.selectors[{si}]", spec, sel, args, variant, ret)
        except Refuse as r:  # keep going: every selector's problem is reported
            comp.problems.append(r.problem)
            failed = True
            continue
        if s is not None:
            out.append(s)
    if given and not out and not failed:
        return None
    return tuple(out)


def selector(
    comp: Compilation,
    sp: str,
    spec: HookSpec,
    sel: KProbeSelector,
    args: list[RealisedArg],
    variant: Variant,
    ret: ArgSpec | None = None,
) -> Selector | None:
    """One selector on one variant; None when it can never match there."""
    filters = match_args(sp, spec, sel, args)
    if filters is None:
        return None
    binaries = match_binaries(sp, sel)
    pids = match_pids(sp, sel)
    namespaces = match_namespaces(comp, sp, sel)
    capabilities = match_capabilities(sp, sel)
    ret_filter = match_return_args(sp, spec, sel, ret)
    action, signal, rate, post = match_actions(comp, sp, sel, variant, ret)
    return Selector(
        args=filters,
        binaries=binaries,
        pids=pids,
        action=action,
        signal=signal,
        rate_limit_ns=rate,
        rate_scope=next(
            (a.rate_limit_scope for a in sel.match_actions or [] if a.action == "Post" and a.rate_limit_scope),
            "thread",
        ),
        post=post,
        namespaces=namespaces,
        capabilities=capabilities,
        ret=ret_filter,
    )


def match_args(sp: str, spec: HookSpec, sel: KProbeSelector, args: list[RealisedArg]) -> tuple[ArgFilter, ...] | None:
    """matchArgs as the sensor's arg filters; None when a filter on a constant the variant implies never holds."""
    filters: list[ArgFilter] = []
    for ai, a in enumerate(sel.match_args or []):
        fp = f"{sp}.matchArgs[{ai}]"
        found = resolve_arg(spec, a)
        if isinstance(found, str):
            raise Refuse(f"{fp}.index", found)
        arg = args[found[0]]
        if arg.why_missing:
            raise Refuse(fp, f"filter on arg {arg.spec.index}, which is not available: {arg.why_missing}")
        if arg.const is not None:
            if not const_matches(fp, a, arg.const):
                return None  # can never match on these syscalls
            continue
        filters.append(arg_filter(fp, a, arg))
    if len(filters) > MAX_ARG_FILTERS:
        raise Refuse(f"{sp}.matchArgs", f"at most {MAX_ARG_FILTERS} arg filters per selector")
    return tuple(filters)


def match_return_args(sp: str, spec: HookSpec, sel: KProbeSelector, ret: ArgSpec | None) -> ArgFilter | None:
    """matchReturnArgs as Selector.ret (check_selector refused it on other hooks, and more than one)."""
    ra = getattr(spec, "return_arg", None)
    if ret is None or ra is None or not sel.match_return_args:
        return None
    a = sel.match_return_args[0]
    rp = f"{sp}.matchReturnArgs[0]"
    if a.args:
        raise Refuse(f"{rp}.args", "a matchReturnArgs filter compares the return value: args is not used there")
    if a.index != 0:
        raise Refuse(f"{rp}.index", f"index {a.index}: the return value is index 0")
    return arg_filter(rp, a, RealisedArg(-1, ra, kind=ret.kind, slot=0))


def const_matches(fp: str, a: ArgSelector, c: int) -> bool:
    """Whether filter ``a`` holds for the constant ``c`` a variant implies (decided at compile time)."""
    op = a.operator
    try:
        vals = [v for v in a.values or []]
        if op in ("InRange", "NotInRange"):
            hit = any(parse_int(v.split(":")[0]) <= c <= parse_int(v.split(":")[1]) for v in vals)
            return hit if op == "InRange" else not hit
        ints = [parse_int(v) for v in vals]
    except (ValueError, IndexError):
        raise Refuse(f"{fp}.values", "values must be integers") from None
    if op in ("Equal", "InMap"):
        return c in ints
    if op in ("NotEqual", "NotInMap"):
        return c not in ints
    if op in ("GT", "GreaterThan"):
        return any(c > v for v in ints)
    if op in ("LT", "LessThan"):
        return any(c < v for v in ints)
    if op == "Mask":
        return any(c & v for v in ints)
    raise Refuse(f"{fp}.operator", f"operator {op} does not apply to an integer")


def arg_filter(fp: str, a: ArgSelector, arg: RealisedArg) -> ArgFilter:
    """One matchArgs (or matchReturnArgs) filter on a realised arg: its operator and values for the sensor."""
    if arg.at_return:
        raise Refuse(
            fp,
            "filters on a returnCopy buffer are not supported: it is read when the call returns, "
            "after the selectors ran",
        )
    op, values, kind, ty = a.operator, list(a.values or []), arg.kind, arg.ty
    if len(values) > MAX_VALUES:
        raise Refuse(
            f"{fp}.values",
            f"at most {MAX_VALUES} values per filter ({len(values)} given): the sensor compares at most 4",
        )
    if kind in (ARG_INT, ARG_UINT):
        return _int_filter(fp, op, values, arg)
    if kind in STRING_KINDS:
        return _string_filter(fp, op, values, arg)
    if kind in (ARG_SOCKADDR, ARG_KSOCKADDR, ARG_SOCK, ARG_SKB, ARG_CONNSOCK, ARG_SOCKETPTR):
        return _sock_filter(fp, op, values, arg)
    raise Refuse(f"{fp}.index", f"filters on a {ty} arg are not supported")


def _int_filter(fp: str, op: str, values: list[str], arg: RealisedArg) -> ArgFilter:
    """An integer arg: Equal/NotEqual/GT/LT/Mask/InRange/NotInRange (InMap/NotInMap as Equal/NotEqual)."""
    kind, ty = arg.kind, arg.ty
    if op not in _INT_OPS:
        raise Refuse(
            f"{fp}.operator",
            f"operator {op} is not supported on an integer arg (use Equal, "
            "NotEqual, GT, LT, Mask, InRange or NotInRange)",
        )
    out: list[int | str] = []
    for vi, v in enumerate(values):
        vp = f"{fp}.values[{vi}]"
        if v.startswith("list:"):
            raise Refuse(vp, "list values are only supported for the raw_syscalls id")
        try:
            if op in ("InRange", "NotInRange") or ":" in v:
                lo, _, hi = v.partition(":")
                a_, b_ = parse_int(lo), parse_int(hi or lo)
                nums = [a_, b_]
                item: int | str = f"{min(a_, b_)}:{max(a_, b_)}"
            else:
                nums = [parse_int(v)]
                item = nums[0]
        except ValueError:
            raise Refuse(vp, f"{v!r} is not an integer") from None
        if kind == ARG_UINT and any(n < 0 for n in nums):
            what = f"arg type {ty}" if ty in UNSIGNED_TYPES else "the field read"
            raise Refuse(vp, f"{v!r} is negative but {what} is unsigned")
        if any(not -(2**63) <= n < 2**64 for n in nums):
            raise Refuse(vp, f"{v!r} does not fit in 64 bits")
        out.append(item)
    mop = _INT_OPS[op]
    if ":" in "".join(str(x) for x in out) and mop in ("Equal", "NotEqual"):
        mop = "InRange" if mop == "Equal" else "NotInRange"
        out = [x if isinstance(x, str) else f"{x}:{x}" for x in out]
    return ArgFilter(arg.slot, mop, tuple(out))


def _string_filter(fp: str, op: str, values: list[str], arg: RealisedArg) -> ArgFilter:
    """A string, path or buffer arg: Equal/NotEqual/Prefix/NotPrefix/Postfix/NotPostfix."""
    ty = arg.ty
    if op not in _STRING_OPS:
        raise Refuse(
            f"{fp}.operator",
            f"operator {op} is not supported on a {ty} arg (use Equal, NotEqual, "
            "Prefix, NotPrefix, Postfix or NotPostfix)",
        )
    strs: list[int | str] = []
    for vi, v in enumerate(values):
        s = v.rstrip("\x00") if ty == "string" else v
        n = len(s.encode())
        if n > MAX_STRING:
            raise Refuse(f"{fp}.values[{vi}]", f"string values are compared on at most {MAX_STRING} bytes ({n} given)")
        strs.append(s)
    return ArgFilter(arg.slot, op, tuple(strs))


def _sock_filter(fp: str, op: str, values: list[str], arg: RealisedArg) -> ArgFilter:
    """A socket or socket address arg: addresses, ports, family and protocol, as the realisation knows them."""
    kind, ty = arg.kind, arg.ty
    table = (
        _KSOCK_OPS
        if kind in (ARG_SOCK, ARG_SKB)
        else _CONNSOCK_OPS
        if kind in (ARG_CONNSOCK, ARG_SOCKETPTR)
        else _SOCKADDR_OPS
        if ty == "sockaddr"
        else _SOCK_OPS
    )
    if op not in table:
        if op in ("SAddr", "NotSAddr", "SPort", "NotSPort", "SPortPriv", "NotSportPriv"):
            why = "the source address and port are not known at connect() entry"
        elif op in ("Protocol", "State"):
            why = f"{op} is not known from the user's sockaddr at connect() entry"
        else:
            why = f"operator {op} does not apply to a socket address"
        raise Refuse(f"{fp}.operator", f"{op} not supported: {why}")
    mop = table[op]
    if op.endswith("Priv"):
        return ArgFilter(arg.slot, mop, ("0:1023",))
    items: list[int | str] = []
    for vi, v in enumerate(values):
        vp = f"{fp}.values[{vi}]"
        if mop in ("DAddr", "NotDAddr", "SAddr", "NotSAddr"):
            try:
                net = ipaddress.ip_network(v.strip(), strict=False)
            except ValueError:
                raise Refuse(vp, f"{v!r} is not an IP address or CIDR") from None
            if net.version != 4:
                raise Refuse(vp, f"IPv6 address {v}: not supported yet (the sensor reads IPv4 sockaddrs)")
            items.append(str(net))
        elif mop == "Protocol":
            proto = _PROTOCOLS.get(v.strip().upper()) if not v.strip().isdigit() else int(v)
            if proto is None:
                raise Refuse(vp, f"unknown protocol {v!r} (IPPROTO_TCP, IPPROTO_UDP, … or a number)")
            items.append(proto)
        elif mop in ("DPort", "NotDPort", "SPort", "NotSPort"):
            try:
                port_lo, port_hi = parse_port_range(v)
            except ValueError:
                raise Refuse(vp, f"{v!r} is not a port or a min:max port range") from None
            items.append(port_lo if port_lo == port_hi else f"{port_lo}:{port_hi}")
        else:
            fam = _FAMILIES.get(v.strip().upper()) if not v.strip().isdigit() else int(v)
            if fam is None:
                raise Refuse(vp, f"unknown address family {v!r} (AF_INET, AF_INET6, AF_UNIX or a number)")
            items.append(fam)
    return ArgFilter(arg.slot, mop, tuple(items))


def match_binaries(sp: str, sel: KProbeSelector) -> BinaryFilter | None:
    """matchBinaries (one entry per selector) as the sensor's binary filter."""
    if not sel.match_binaries:
        return None
    b = sel.match_binaries[0]
    bp = f"{sp}.matchBinaries[0]"
    if b.operator not in ("In", "NotIn", "Prefix", "NotPrefix"):
        raise Refuse(
            f"{bp}.operator", f"matchBinaries {b.operator} is not supported yet (In, NotIn, Prefix, NotPrefix)"
        )
    if len(b.values) > MAX_VALUES:
        raise Refuse(f"{bp}.values", f"at most {MAX_VALUES} binaries per selector ({len(b.values)} given)")
    for vi, v in enumerate(b.values):
        if len(v.encode()) > MAX_BINARY - 1:
            raise Refuse(f"{bp}.values[{vi}]", f"binary paths are compared on at most {MAX_BINARY - 1} bytes")
    if not b.values:
        return None
    return BinaryFilter(b.operator, tuple(b.values), b.follow_children)


def match_pids(sp: str, sel: KProbeSelector) -> PidFilter | None:
    """matchPIDs as the sensor's PID filter (several NotIn entries with the same followForks are merged)."""
    entries = sel.match_pids or []
    if not entries:
        return None
    if len(entries) > 1:
        if any(
            p.operator != "NotIn"
            or p.follow_forks != entries[0].follow_forks
            or p.is_namespace_pid != entries[0].is_namespace_pid
            for p in entries
        ):
            raise Refuse(
                f"{sp}.matchPIDs",
                "only one matchPIDs filter per selector (several NotIn filters with the same followForks are merged)",
            )
    values: list[int] = []
    for p in entries:
        values += [v for v in p.values if v not in values]
    if len(values) > MAX_VALUES:
        raise Refuse(f"{sp}.matchPIDs", f"at most {MAX_VALUES} PIDs per selector ({len(values)} given)")
    return PidFilter(entries[0].operator, tuple(values), entries[0].follow_forks, entries[0].is_namespace_pid)


def match_namespaces(comp: Compilation, sp: str, sel: KProbeSelector) -> tuple[NamespaceFilter, ...]:
    """matchNamespaces as the sensor's namespace filters (host_ns is resolved when the policy is applied)."""
    entries = sel.match_namespaces or []
    if len(entries) > MAX_NAMESPACE_FILTERS:
        raise Refuse(
            f"{sp}.matchNamespaces",
            f"at most {MAX_NAMESPACE_FILTERS} matchNamespaces entries per selector ({len(entries)} given)",
        )
    out: list[NamespaceFilter] = []
    for i, e in enumerate(entries):
        np_ = f"{sp}.matchNamespaces[{i}]"
        if not e.values:
            raise Refuse(f"{np_}.values", "matchNamespaces needs at least one value (an inode number or host_ns)")
        if len(e.values) > MAX_VALUES:
            raise Refuse(f"{np_}.values", f"at most {MAX_VALUES} namespaces per entry ({len(e.values)} given)")
        if "host_ns" in e.values:
            comp.note(
                "matchNamespaces host_ns: the namespace of pid 1 on the node, resolved when the policy is applied"
            )
        out.append(NamespaceFilter(e.namespace, e.operator, tuple(e.values)))
    return tuple(out)


def match_capabilities(sp: str, sel: KProbeSelector) -> CapabilityFilter | None:
    """matchCapabilities (one entry per selector) as a capability mask."""
    entries = sel.match_capabilities or []
    if not entries:
        return None
    if len(entries) > 1:
        raise Refuse(
            f"{sp}.matchCapabilities", f"at most one matchCapabilities entry per selector ({len(entries)} given)"
        )
    c = entries[0]
    cp = f"{sp}.matchCapabilities[0]"
    if c.is_namespace_capability:
        raise Refuse(
            f"{cp}.isNamespaceCapability",
            "isNamespaceCapability is not supported yet (the sensor checks the capability set, not whether the "
            "process is in the host user namespace)",
        )
    if not c.values:
        raise Refuse(f"{cp}.values", "matchCapabilities needs at least one capability")
    mask = 0
    for v in c.values:
        mask |= 1 << _CAP_BITS[v.strip().upper()]
    return CapabilityFilter(c.type_, c.operator, mask)
