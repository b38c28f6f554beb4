"""Tetragon's load-time checks of a TracingPolicy that need several fields at once.

An arg filter's ``index`` against the hook's ``args`` (:func:`resolve_arg`), the operators each arg type
allows and their values, lists and selector macros that must be defined, Tetragon's limits. Each problem is
returned with its field path instead of stopping at the first (:func:`semantic_problems`); what apiary can
*realise* on a given kernel is a separate concern (:mod:`apiary.tracing.compile`).
"""

from __future__ import annotations

from apiary.policy.models import PolicyError, Problem

from .crd import (
    ADDR_OPS,
    INT_TYPES,
    INT_VALUE_OPS,
    MAX_MATCH_VALUES,
    MAX_POSTFIX,
    MAX_PREFIX,
    PORT_OPS,
    PRIV_OPS,
    SOCK_OPS,
    SOCK_TYPES,
    SOCKADDR_OPS,
    STRING_TYPES,
    parse_addr,
    parse_int,
    parse_port_range,
)
from .models import (
    HookSpec,
    KProbeArg,
    KProbeSpec,
    ListSpec,
    TracepointSpec,
    TracingPolicyBase,
    TracingPolicySpec,
)
from .selector_specs import ArgSelector

__all__ = ["ensure_valid", "resolve_arg", "semantic_problems"]


def resolve_arg(hook: HookSpec, sel: ArgSelector) -> tuple[int, KProbeArg] | str:
    """The (position in ``hook.args``, arg) an arg filter refers to, or why it refers to none.

    For kprobes, LSM hooks, uprobes and USDTs ``index`` is the argument's position in the function
    prototype, i.e. it names the ``args`` entry with that ``index`` (Tetragon's argIndexType); for
    tracepoints it is the position in the ``args`` list. A non-empty ``args`` list (the filter's own
    field) always names positions in the hook's ``args`` list."""
    args = hook.args or []
    if sel.args:
        pos = sel.args[0]
        if pos >= len(args):
            return f"args[0] = {pos} names no entry of the hook's args (it has {len(args)})"
        return pos, args[pos]
    if hook.INDEX_BY_PROTOTYPE:
        for pos, a in enumerate(args):
            if a.index == sel.index:
                return pos, a
        declared = ", ".join(str(a.index) for a in args) or "none"
        return (f"argFilter for unknown index {sel.index}: the hook declares no arg with index: {sel.index} "
                f"(declared: {declared})")
    if sel.index >= len(args):
        return f"index {sel.index} names no entry of the tracepoint's args (it has {len(args)})"
    return sel.index, args[sel.index]


def _value_problems(path: str, sel: ArgSelector, ty: str) -> list[Problem]:
    """Tetragon's per-type operator and value checks for one arg filter (pkg/selectors/kernel.go)."""
    op, values = sel.operator, sel.values or []
    out: list[Problem] = []
    if ty == "auto":  # resolved from BTF at load time: nothing to check here
        return out
    if op in SOCK_OPS:
        if ty not in SOCK_TYPES:
            return [Problem(f"{path}.operator", f"{op} is a socket operator: it needs an arg of type sock, socket, "
                            f"skb or sockaddr (this arg is {ty})")]
        if ty == "sockaddr" and op not in SOCKADDR_OPS:
            return [Problem(f"{path}.operator", f"a sockaddr arg supports only SAddr, NotSAddr, SPort, NotSPort, "
                            f"SPortPriv, NotSportPriv and Family (not {op}): the sockaddr's own address is its SAddr "
                            "(for a connect() destination use SAddr here, or DAddr on kprobe tcp_connect's sock arg)")]
    elif op in ("FileType", "NotFileType") and ty not in ("file", "path"):
        return [Problem(f"{path}.operator", f"{op} needs an arg of type file or path (this arg is {ty})")]
    elif op == "CapabilitiesGained":
        if len(sel.args or []) != 2:
            return [Problem(f"{path}.args", "CapabilitiesGained needs two args: the new and the old capabilities")]
    elif op in ("Prefix", "NotPrefix", "Postfix", "NotPostfix", "SubString", "SubStringIgnCase"):
        if ty not in STRING_TYPES:
            return [Problem(f"{path}.operator", f"{op} compares strings: it needs a string, char_buf, file, fd, path "
                            f"or filename arg (this arg is {ty})")]
    elif op in INT_VALUE_OPS and ty in SOCK_TYPES | {"char_iovec", "nop"}:
        return [Problem(f"{path}.operator", f"an arg of type {ty} does not support operator {op}")]
    for i, v in enumerate(values):
        vp = f"{path}.values[{i}]"
        n = len(v.encode())
        if op in ("Prefix", "NotPrefix") and n > MAX_PREFIX:
            out.append(Problem(vp, f"prefix longer than {MAX_PREFIX} bytes ({n})"))
        elif op in ("Postfix", "NotPostfix") and n > MAX_POSTFIX:
            out.append(Problem(vp, f"postfix longer than {MAX_POSTFIX} bytes ({n})"))
        elif op in ADDR_OPS:
            try:
                parse_addr(v)
            except ValueError:
                out.append(Problem(vp, f"{v!r} is not an IP address or CIDR"
                                   + (" (an unexpanded template placeholder?)" if "$" in v else "")))
        elif op in PORT_OPS:
            try:
                parse_port_range(v)
            except ValueError:
                out.append(Problem(vp, f"{v!r} is not a port or a min:max port range"))
        elif ty in INT_TYPES and op in INT_VALUE_OPS:
            try:
                parse_int(v)
            except ValueError:
                out.append(Problem(vp, f"{v!r} is not an integer (arg type {ty})"))
        elif ty in INT_TYPES and op in ("InRange", "NotInRange"):
            lo, sep, hi = v.partition(":")
            try:
                parse_int(lo), parse_int(hi)
                if not sep:
                    raise ValueError
            except ValueError:
                out.append(Problem(vp, f"{v!r} is not a min:max range"))
        elif ty in INT_TYPES and op in ("InMap", "NotInMap") and not v.startswith("list:"):
            try:
                for part in v.split(":", 1):
                    parse_int(part)
            except ValueError:
                out.append(Problem(vp, f"{v!r} is not an integer, a min:max range or list:NAME"))
    inline = (op in INT_VALUE_OPS and ty not in STRING_TYPES) or op in ("InRange", "NotInRange")
    if inline and len(values) > MAX_MATCH_VALUES:
        out.append(Problem(f"{path}.values", f"at most {MAX_MATCH_VALUES} values for operator {op} "
                           f"({len(values)} given): use InMap/NotInMap for more"))
    if op not in PRIV_OPS and op != "CapabilitiesGained" and not values:
        out.append(Problem(f"{path}.values", f"operator {op} needs at least one value"))
    return out


def _list_names(spec: TracingPolicySpec) -> dict[str, ListSpec]:
    return {ls.name: ls for ls in spec.lists or []}


def semantic_problems(policy: TracingPolicyBase) -> list[Problem]:
    """Every cross-field problem Tetragon would refuse at load time, each with its field path."""
    out: list[Problem] = []
    spec = policy.spec
    lists = _list_names(spec)
    seen: set[str] = set()
    for i, ls in enumerate(spec.lists or []):
        if ls.name in seen:
            out.append(Problem(f"spec.lists[{i}].name", f"list {ls.name!r} is defined twice"))
        seen.add(ls.name)
    macros = spec.selectors_macros or {}
    for path, hook in spec.hooks():
        hp = f"spec.{path}"
        if isinstance(hook, KProbeSpec) and hook.call.startswith("list:"):
            name = hook.call.removeprefix("list:")
            if name not in lists:
                out.append(Problem(f"{hp}.call", f"list {name!r} is not defined in spec.lists"))
        for si, sel in enumerate(hook.selectors or []):
            sp = f"{hp}.selectors[{si}]"
            for mi, m in enumerate(sel.macros or []):
                if m not in macros:
                    out.append(Problem(f"{sp}.macros[{mi}]", f"selector macro {m!r} is not defined in "
                                       "spec.selectorsMacros"))
            for ai, a in enumerate(sel.match_args or []):
                ap = f"{sp}.matchArgs[{ai}]"
                found = resolve_arg(hook, a)
                if isinstance(found, str):
                    out.append(Problem(f"{ap}.args" if a.args else f"{ap}.index", found))
                    continue
                out.extend(_value_problems(ap, a, found[1].type_))
                for vi, v in enumerate(a.values or []):
                    if v.startswith("list:") and a.operator in ("InMap", "NotInMap") \
                            and v.removeprefix("list:") not in lists:
                        out.append(Problem(f"{ap}.values[{vi}]", f"list {v.removeprefix('list:')!r} is not "
                                           "defined in spec.lists"))
            rets = sel.match_return_args or []
            ret_arg = getattr(hook, "return_arg", None)
            for ai, a in enumerate(rets):
                ap = f"{sp}.matchReturnArgs[{ai}]"
                if ret_arg is None:
                    out.append(Problem(ap, "matchReturnArgs needs a returnArg"))
                else:
                    out.extend(_value_problems(ap, a, ret_arg.type_))
            for ai, a in enumerate(sel.match_data or []):
                data = getattr(hook, "data", None) or []
                if not a.args and a.index >= len(data):
                    out.append(Problem(f"{sp}.matchData[{ai}].index", f"matchData index out of bounds (0,{len(data)})"))
            for ai, act in enumerate(sel.match_actions or []):
                if act.action == "Override" and isinstance(hook, TracepointSpec):
                    out.append(Problem(f"{sp}.matchActions[{ai}].action", "Override is not available on tracepoints"))
    return out


def ensure_valid(policy: TracingPolicyBase) -> None:
    """Raise :class:`PolicyError` when :func:`semantic_problems` finds anything."""
    problems = semantic_problems(policy)
    if problems:
        raise PolicyError(problems)
