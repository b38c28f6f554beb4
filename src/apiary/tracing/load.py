"""Load TracingPolicy / TracingPolicyNamespaced YAML the way Tetragon does: all documents apply or none.

Strict YAML (duplicate keys rejected), CRD defaults, strict fields (unknown keys are errors), then
Tetragon's load-time checks (:func:`apiary.tracing.checks.semantic_problems`). Every problem is
reported with its field path, e.g. ``spec.kprobes[0].selectors[0].matchArgs[0].operator``.

The seed article that started apiary shows TracingPolicies with fields Tetragon never had (a
``policy:`` block with ``path``/``matchAction``, ``action: Deny`` on a hook, ``return: {type: …}``,
``listTracepoints``, ``selectors: - matchSelectors: - podSelector``, ``call: setuid``…; FORMATS.md §6).
Such a document is rejected with one problem per invented field, each naming the real equivalent,
followed by the equivalent real policy that :func:`convert_seed` (``apiary tp convert -f FILE``) writes.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import yaml
from pydantic import ValidationError

from apiary.kernel.features import X86_64_SYSCALLS
from apiary.policy.models import PolicyError, Problem
from apiary.policy.yamlutil import load_documents, parse_documents
from apiary.policy.yamlutil import sub as _sub
from apiary.policy.yamlutil import validation_problems as _validation_problems

from .checks import semantic_problems
from .crd import API_VERSION, KIND_TP, KIND_TPN
from .models import POLICY_KINDS, Policy
from .realisations import KERNEL_FUNCTION_NAMES
from .types import MAX_SELECTORS, MAX_VALUES

__all__ = ["PolicyError", "Problem", "convert_seed", "load_tracing_policies", "seed_problems"]

CONVERT_HINT = "apiary tp convert -f FILE"
_HOOK_KINDS = ("kprobes", "tracepoints", "lsmhooks", "uprobes", "usdts", "fentries", "listTracepoints")
_DENY = ("deny", "block", "kill", "sigkill")
_ALERT = ("alert", "log", "audit", "post")


def _load_document(doc: Any, default_namespace: str) -> tuple[Policy | None, list[Problem]]:
    if not isinstance(doc, dict):
        return None, [Problem("", f"a policy document must be a mapping, not {type(doc).__name__}")]
    kind = doc.get("kind")
    if kind is None:
        return None, [Problem("kind", "required field missing")]
    if kind not in POLICY_KINDS:
        return None, [Problem("kind", f"{kind}: apiary tp applies only {KIND_TP} and {KIND_TPN} (apply other "
                              "objects with their own tool)", unsupported=True)]
    try:
        policy = POLICY_KINDS[kind].model_validate(doc)
    except ValidationError as e:
        return None, _validation_problems(e)
    if kind == KIND_TPN and policy.metadata.namespace is None:
        policy.metadata.namespace = default_namespace
    return policy, semantic_problems(policy)


def load_tracing_policies(text: str, *, default_namespace: str = "default") -> list[Policy]:
    """Parse one or several YAML documents into tracing policies, or raise :class:`PolicyError` listing every
    problem (paths are prefixed with ``document[i].`` when the text holds several documents).

    A TracingPolicyNamespaced without ``metadata.namespace`` gets ``default_namespace`` (as kubectl does).
    Documents written in the seed article's invented syntax are rejected with every invented field named,
    its real equivalent, and the converted policy (see :func:`convert_seed`)."""
    docs = parse_documents(text)
    many = len(docs) > 1
    seed: list[Problem] = []
    for i, doc in enumerate(docs):
        prefix = f"document[{i}]" if many else ""
        seed += [Problem(_sub(prefix, p.path), p.reason) for p in seed_problems(doc)]
    if seed:
        raise PolicyError(seed + [_conversion_problem(docs, default_namespace)])
    return load_documents(docs, _load_document, default_namespace)


# --- the seed article's syntax ---------------------------------------------------------------------

_PATH_EQ = "selectors[].matchArgs: [{index: <the file arg>, operator: Prefix, values: [\"/etc/\"]}] (Equal for " \
    "a whole path; no globs)"


def _is_syscall_name(name: str) -> bool:
    return name in X86_64_SYSCALLS


def _strong_markers(doc: dict[str, Any]) -> bool:
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return False
    if any(k in spec for k in ("selectors", "listTracepoints", "responseActions")):
        return True
    for kind in _HOOK_KINDS:
        for hook in _hook_list(spec, kind):
            if isinstance(hook, dict) and ("policy" in hook or "action" in hook or isinstance(hook.get("return"),
                                                                                                  dict)):
                return True
    return _has_key(doc, ("matchAction", "matchSelectors"))


def _hook_list(spec: dict[str, Any], kind: str) -> list[Any]:
    """The hooks of one kind, or none when the field is not a list (validation then says so with its path)."""
    hooks = spec.get(kind)
    return hooks if isinstance(hooks, list) else []


def _has_key(obj: Any, keys: tuple[str, ...]) -> bool:
    if isinstance(obj, dict):
        return any(k in keys or _has_key(v, keys) for k, v in obj.items())
    if isinstance(obj, list):
        return any(_has_key(v, keys) for v in obj)
    return False


def _hook_problems(kind: str, i: int, hook: dict[str, Any]) -> list[Problem]:
    hp = f"spec.{kind}[{i}]"
    out: list[Problem] = []
    call = hook.get("call")
    syscall = hook.get("syscall", True)
    if kind == "kprobes" and isinstance(call, str):
        if call == "do_execve":
            out.append(Problem(f"{hp}.call", "do_execve is not a syscall (and not Tetragon's name for exec): use "
                               "sys_execve with syscall: true, or lsmhook bprm_check_security; for exec events no "
                               "policy is needed: apiary reports process_exec for every exec"))
        elif syscall is True and _is_syscall_name(call):
            out.append(Problem(f"{hp}.call", f"{call!r} with syscall: true is not a syscall symbol: Tetragon's name "
                               f"is sys_{call} (the arch prefix __x64_ is added automatically)"))
        elif syscall is True and call in KERNEL_FUNCTION_NAMES:
            out.append(Problem(f"{hp}.syscall", f"{call} is a kernel function, not a syscall, and syscall defaults to "
                               "true in Tetragon: set syscall: false"))
    ret = hook.get("return")
    if isinstance(ret, dict):
        rtype = ret.get("type", "int")
        out.append(Problem(f"{hp}.return", "not a Tetragon field as a mapping: return is a boolean; real: "
                           f"return: true + returnArg: {{index: 0, type: {rtype}}}"))
        if "action" in ret:
            out.append(_action_problem(f"{hp}.return.action", ret["action"]))
    if hook.get("returnArgAction") == "Post":
        out.append(Problem(f"{hp}.returnArgAction", "Post is not accepted at Tetragon HEAD (only TrackSock/"
                           "UntrackSock, for socket tracking); an event is posted by default: remove it"))
    if "action" in hook:
        out.append(_action_problem(f"{hp}.action", hook["action"]))
    pol = hook.get("policy")
    if pol is not None:
        if not isinstance(pol, dict) or not pol:
            out.append(Problem(f"{hp}.policy", f"not a Tetragon field: there is no policy: block; real: {_PATH_EQ} "
                               "plus selectors[].matchActions"))
        for key in pol if isinstance(pol, dict) else []:
            kp = f"{hp}.policy.{key}"
            if key == "path":
                filters: dict[str, list[str]] = {}
                for g in _as_list(pol[key]):
                    op, value, _ = _glob_to_filter(g)
                    filters.setdefault(op, []).append(value)
                real = " or ".join(f"{{index: <the file arg>, operator: {op}, values: {vals}}}".replace("'", '"')
                                   for op, vals in filters.items()) or _PATH_EQ
                out.append(Problem(kp, f"not a Tetragon field (no policy: block, no globs): real: selectors[]."
                                   f"matchArgs: [{real}] (one selector each, at most {MAX_VALUES} values per filter)"))
            elif key == "matchAction":
                out.append(_action_problem(kp, pol[key], field="matchAction"))
            elif key == "uid":
                out.append(Problem(kp, "not a Tetragon field: real: selectors[].matchArgs: [{index: 0, operator: "
                                   "Equal, values: [\"0\"]}] on the int uid arg of sys_setuid"))
            elif key in ("dstIP", "dstIPs", "daddr"):
                out.append(Problem(kp, "not a Tetragon field: real: kprobe tcp_connect (syscall: false) with args "
                                   "[{index: 0, type: sock}] and selectors[].matchArgs: [{index: 0, operator: DAddr, "
                                   "values: [CIDRs]}]"))
            else:
                out.append(Problem(kp, "not a Tetragon field (there is no policy: block): filters are "
                                   "selectors[].matchArgs/matchBinaries/matchPIDs"))
    return out


def _action_problem(path: str, action: Any, field: str = "action") -> Problem:
    where = "actions live in selectors[].matchActions[].action"
    a = str(action)
    if a.lower() in _DENY:
        real = "there is no Deny action: use Sigkill (kills the caller before the call returns), Override (argError, " \
            "on LSM/error-injectable hooks) or Signal"
    elif a.lower() in _ALERT:
        real = "there is no Alert action: an event (Post, the default) is the alert: nothing to write"
    elif a in ("TrackSock", "UntrackSock"):
        real = "socket tracking is returnArgAction: TrackSock on kprobe sk_alloc (returnArg type sock) and " \
            "UntrackSock on __sk_free; events need no tracking"
    else:
        real = f"action {a} belongs in matchActions"
    return Problem(path, f"not a Tetragon field ({field}: {a}): {where}; {real}")


def seed_problems(doc: Any) -> list[Problem]:
    """One problem per field of the seed article's invented syntax in one document (empty when it has none)."""
    if not isinstance(doc, dict) or not _strong_markers(doc):
        return []
    spec = doc["spec"]
    out: list[Problem] = []
    sels = spec.get("selectors")
    if sels is not None:
        out.append(Problem("spec.selectors", "not a Tetragon field at spec level: real: spec.podSelector: "
                           "{matchLabels: …} (and spec.containerSelector); per-selector workload filters are "
                           "selectors[].matchWorkloads"))
        for i, s in enumerate(sels if isinstance(sels, list) else []):
            if isinstance(s, dict) and "matchSelectors" in s:
                out.append(Problem(f"spec.selectors[{i}].matchSelectors", "not a Tetragon field: move its "
                                   "podSelector to spec.podSelector"))
    if "listTracepoints" in spec:
        out.append(Problem("spec.listTracepoints", "not a Tetragon field: real: tracepoints: [{subsystem: sched, "
                           "event: sched_process_exec}] (raw: true for raw tracepoints); for exec events no policy "
                           "is needed: apiary reports process_exec for every exec"))
    for kind in _HOOK_KINDS:
        for i, hook in enumerate(_hook_list(spec, kind)):
            if isinstance(hook, dict):
                out += _hook_problems(kind, i, hook)
    if "responseActions" in spec:
        out.append(Problem("spec.responseActions", "not a Tetragon field (the seed article's future idea): nearest "
                           "real actions are Sigkill, Signal, Override and NotifyEnforcer in selectors[].matchActions"))
    return out


def _conversion_problem(docs: list[Any], default_namespace: str) -> Problem:
    try:
        converted = _convert_docs(docs)
    except PolicyError as e:
        return Problem("", f"this is the seed article's syntax, not Tetragon's; no automatic conversion: {e}")
    head = f"this is the seed article's syntax, not Tetragon's. The equivalent real TracingPolicy ({CONVERT_HINT} " \
        "writes it):\n"
    try:
        load_tracing_policies(converted, default_namespace=default_namespace)
    except PolicyError as e:
        return Problem("", head + converted + "\n(after conversion it still has problems: "
                       + "; ".join(e.messages) + ")")
    return Problem("", head + converted)


def _glob_to_filter(pattern: str) -> tuple[str, str, str]:
    """A seed path glob -> (operator, value, note). ``/etc/*`` -> Prefix ``/etc/``; ``*.conf`` -> Postfix."""
    if "*" not in pattern and "?" not in pattern and "[" not in pattern:
        return "Equal", pattern, ""
    if re.fullmatch(r"[^*?\[]*\*+", pattern):
        return "Prefix", pattern.rstrip("*"), ""
    if re.fullmatch(r"\*+[^*?\[]*", pattern):
        return "Postfix", pattern.lstrip("*"), ""
    cut = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
    return "Prefix", cut, f"glob {pattern!r} approximated by the prefix {cut!r}"


def _file_arg(kp: dict[str, Any]) -> int:
    for a in kp.get("args") or []:
        if isinstance(a, dict) and a.get("type") in ("file", "path", "fd", "filename", "string"):
            return int(a.get("index", 0))
    kp.setdefault("args", []).insert(0, {"index": 0, "type": "file"})
    return 0


def _int_arg(kp: dict[str, Any]) -> int:
    for a in kp.get("args") or []:
        if isinstance(a, dict) and a.get("type") in ("int", "uint32", "int32", "sint32", "long", "uint64", "int64"):
            return int(a.get("index", 0))
    kp.setdefault("args", []).insert(0, {"index": 0, "type": "int"})
    return 0


def _chunks(values: list[str], n: int = 4) -> list[list[str]]:
    return [values[i:i + n] for i in range(0, len(values), n)]


def _as_list(v: Any) -> list[str]:
    if v is None:
        return []
    return [str(x) for x in v] if isinstance(v, list) else [str(v)]


def _convert_hook(kind: str, i: int, kp: dict[str, Any], notes: list[str]) -> None:
    hp = f"spec.{kind}[{i}]"
    call = kp.get("call")
    if kind == "kprobes" and isinstance(call, str):
        if call == "do_execve":
            kp["call"], kp["syscall"] = "sys_execve", True
            kp["args"] = [{"index": 0, "type": "string"}] + [
                a for a in kp.get("args") or [] if isinstance(a, dict) and a.get("index") != 0]
            notes.append(f"{hp}.call: do_execve -> sys_execve (syscall: true), arg 0 is the filename string")
        elif kp.get("syscall", True) is True and _is_syscall_name(call):
            kp["call"] = f"sys_{call}"
            notes.append(f"{hp}.call: {call} -> sys_{call}")
        elif kp.get("syscall", True) is True and call in KERNEL_FUNCTION_NAMES:
            kp["syscall"] = False
            notes.append(f"{hp}.syscall: false ({call} is a kernel function)")
    deny = False
    ret = kp.get("return")
    if isinstance(ret, dict):
        deny |= str(ret.get("action", "")).lower() in _DENY
        kp["return"] = True
        kp.setdefault("returnArg", {"index": 0, "type": ret.get("type", "int")})
        notes.append(f"{hp}.return: {{type: …}} -> return: true + returnArg")
    if kp.get("returnArgAction") == "Post":
        del kp["returnArgAction"]
        notes.append(f"{hp}.returnArgAction: Post removed (Post is the default)")
    if "action" in kp:
        a = str(kp.pop("action"))
        deny |= a.lower() in _DENY
        if a in ("TrackSock", "UntrackSock"):
            notes.append(f"{hp}.action: {a} removed (socket tracking is not needed for these events)")
    pol = kp.pop("policy", None)
    groups: list[tuple[str, list[str], int]] = []  # (operator, values, arg index): one selector per group
    if isinstance(pol, dict):
        deny |= str(pol.get("matchAction", "")).lower() in _DENY
        paths = _as_list(pol.get("path"))
        if paths:
            idx = _file_arg(kp)
            by_op: dict[str, list[str]] = {}
            for p in paths:
                op, value, note = _glob_to_filter(p)
                by_op.setdefault(op, []).append(value)
                if note:
                    notes.append(f"{hp}.policy.path: {note}")
            groups += [(op, chunk, idx) for op, vals in by_op.items() for chunk in _chunks(vals)]
        uids = _as_list(pol.get("uid"))
        if uids:
            idx = _int_arg(kp)
            groups += [("Equal", chunk, idx) for chunk in _chunks(uids)]
        ips = _as_list(pol.get("dstIP") or pol.get("dstIPs") or pol.get("daddr"))
        if ips:
            if kp.get("call") in ("sys_connect", "connect", "__x64_sys_connect", "tcp_connect"):
                kp["call"], kp["syscall"] = "tcp_connect", False
                kp["args"] = [{"index": 0, "type": "sock"}]
                notes.append(f"{hp}: connect with dstIP -> kprobe tcp_connect (sock arg 0) with DAddr")
            sock_idx = next((int(a.get("index", 0)) for a in kp.get("args") or []
                        if isinstance(a, dict) and a.get("type") in ("sock", "sockaddr")), None)
            if sock_idx is None:
                raise PolicyError([Problem(f"{hp}.policy.dstIP", "no sock/sockaddr arg to filter on")])
            groups += [("DAddr", chunk, sock_idx) for chunk in _chunks(ips)]
    actions = [{"action": "Sigkill"}] if deny else []
    if groups:
        new_sels = []
        for op, values, idx in groups:
            sel: dict[str, Any] = {"matchArgs": [{"index": idx, "operator": op, "values": values}]}
            if actions:
                sel["matchActions"] = copy.deepcopy(actions)
            new_sels.append(sel)
        old = [s for s in kp.get("selectors") or [] if isinstance(s, dict)]
        if old:  # AND the seed's filter into each existing selector (only possible for a single group)
            if len(new_sels) > 1:
                raise PolicyError([Problem(f"{hp}.policy", "several filter groups cannot be merged into the "
                                           "existing selectors: write the selectors by hand")])
            for s in old:
                s.setdefault("matchArgs", []).extend(new_sels[0]["matchArgs"])
                if actions:
                    s.setdefault("matchActions", []).extend(copy.deepcopy(actions))
        else:
            kp["selectors"] = new_sels
        notes.append(f"{hp}.policy -> {len(new_sels)} selector(s) with matchArgs"
                     + (" and matchActions Sigkill" if actions else ""))
    elif actions:
        for s in kp.setdefault("selectors", [{}]) or [{}]:
            s.setdefault("matchActions", []).extend(copy.deepcopy(actions))
        notes.append(f"{hp}: Deny -> matchActions Sigkill")
    if deny and isinstance(ret, dict):
        # a return probe acts when the call returns: the write would already have happened
        kp.pop("return", None)
        kp.pop("returnArg", None)
        notes.append(f"{hp}.return: dropped: the hook enforces (Sigkill), which must act at entry, before the "
                     "call; a return probe would act after it")
    if len(kp.get("selectors") or []) > MAX_SELECTORS:
        raise PolicyError([Problem(f"{hp}.policy", f"the converted filters need more than {MAX_SELECTORS} selectors")])


def _convert_doc(doc: dict[str, Any], index: int) -> tuple[dict[str, Any], list[str]]:
    notes: list[str] = []
    new = copy.deepcopy(doc)
    new.setdefault("apiVersion", API_VERSION)
    spec = new.get("spec") or {}
    pod: dict[str, Any] | None = None
    container: dict[str, Any] | None = None
    for s in spec.pop("selectors", None) or []:
        for ms in (s.get("matchSelectors") or []) if isinstance(s, dict) else []:
            if isinstance(ms, dict) and isinstance(ms.get("podSelector"), dict):
                pod = _merge_selectors(pod, ms["podSelector"])
            if isinstance(ms, dict) and isinstance(ms.get("containerSelector"), dict):
                container = _merge_selectors(container, ms["containerSelector"])
    if pod is not None:
        notes.append("spec.selectors[].matchSelectors[].podSelector -> spec.podSelector")
    tracepoints = list(spec.get("tracepoints") or [])
    for i, tp in enumerate(spec.pop("listTracepoints", None) or []):
        ev = str(tp.get("event", "")) if isinstance(tp, dict) else ""
        subsys, _, name = ev.partition("/")
        if (subsys, name) == ("sched", "sched_process_exec"):
            notes.append(f"spec.listTracepoints[{i}] sched/sched_process_exec removed: apiary reports process_exec "
                         "for every exec (no policy needed)")
            continue
        entry: dict[str, Any] = {"subsystem": subsys, "event": name}
        for k in ("args", "selectors"):
            if isinstance(tp, dict) and k in tp:
                entry[k] = tp[k]
        tracepoints.append(entry)
        notes.append(f"spec.listTracepoints[{i}] -> tracepoints (subsystem {subsys}, event {name})")
    if spec.pop("responseActions", None) is not None:
        notes.append("spec.responseActions removed (not a Tetragon field)")
    for kind in ("kprobes", "lsmhooks", "tracepoints", "uprobes"):
        for i, hook in enumerate(_hook_list(spec, kind)):
            if isinstance(hook, dict):
                _convert_hook(kind, i, hook, notes)
    out_spec: dict[str, Any] = {}
    if pod is not None:
        out_spec["podSelector"] = pod
    if container is not None:
        out_spec["containerSelector"] = container
    for k, v in spec.items():
        if k != "tracepoints":
            out_spec[k] = v
        if k == "kprobes" and tracepoints:
            out_spec["tracepoints"] = tracepoints
    if tracepoints and "tracepoints" not in out_spec:
        out_spec["tracepoints"] = tracepoints
    new["spec"] = out_spec
    ordered: dict[str, Any] = {k: new[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in new}
    ordered.update({k: v for k, v in new.items() if k not in ordered})
    return ordered, notes


def _merge_selectors(a: dict[str, Any] | None, b: dict[str, Any]) -> dict[str, Any]:
    if a is None:
        return copy.deepcopy(b)
    out = copy.deepcopy(a)
    out.setdefault("matchLabels", {}).update(b.get("matchLabels") or {})
    out.setdefault("matchExpressions", []).extend(b.get("matchExpressions") or [])
    return {k: v for k, v in out.items() if v}


def _convert_docs(docs: list[Any]) -> str:
    parts: list[str] = []
    for i, doc in enumerate(docs):
        if isinstance(doc, dict) and seed_problems(doc):
            new, notes = _convert_doc(doc, i)
            head = "# Converted by apiary from the seed article's syntax to Tetragon's:\n" + "".join(
                f"#  - {n}\n" for n in notes)
            parts.append(head + yaml.safe_dump(new, sort_keys=False, allow_unicode=True))
        else:
            parts.append(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return "---\n".join(parts)


def convert_seed(text: str) -> str:
    """The real TracingPolicy YAML equivalent to a policy written in the seed article's syntax.

    Documents without seed syntax are written back unchanged (as YAML, comments dropped). Raises
    :class:`PolicyError` when the text is not YAML or a seed construct has no automatic translation."""
    return _convert_docs(parse_documents(text))
