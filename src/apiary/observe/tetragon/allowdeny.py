"""Tetragon's event ``Filter`` (``tetragon/events.proto``) as ``GetEvents`` applies it: allow list and deny list.

A filter is given as the protojson dict of a ``Filter`` message (proto field names). Within one ``Filter`` every
set field must match (AND) and the values of one field are alternatives (OR); an event passes when the allow
list is empty or one of its filters matches, and none of the deny list's filters matches (Tetragon's
``pkg/filters``). Regular expressions search (unanchored), as Go's ``regexp.MatchString``. A field apiary cannot
evaluate raises ``ValueError`` naming it: nothing a client asks for is silently ignored.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from apiary.observe.hubble.filter_values import compile_label_selector
from apiary.observe.tetragon.events import event_kind
from apiary.textutil import clip

Event = dict[str, Any]
Predicate = Callable[[Event], bool]

# fields of tetragon.Filter apiary does not evaluate, and why
UNSUPPORTED: dict[str, str] = {
    "health_check": "deprecated upstream; apiary emits no health-check events",
    "pid_set": "descendant tracking by pid is not implemented",
    "capabilities": "capability filters are not implemented",
    "cel_expression": "CEL expressions are not implemented",
    "container_id": "apiary's processes carry no container (process.docker)",
    "in_init_tree": "apiary's processes carry no container init tree",
    "container_name_regex": "apiary's processes carry no container (process.pod.container)",
}


def _body(ev: Event) -> Mapping[str, Any]:
    kind = event_kind(ev)
    body = ev.get(kind) if kind else None
    return body if isinstance(body, Mapping) else {}


def _process(ev: Event, key: str = "process") -> Mapping[str, Any]:
    p = _body(ev).get(key)
    return p if isinstance(p, Mapping) else {}


def _regexes(where: str, values: Sequence[Any]) -> list[re.Pattern[str]]:
    out = []
    for i, v in enumerate(values):
        try:
            out.append(re.compile(str(v)))
        except re.error as e:
            raise ValueError(f"{where}[{i}]: invalid regular expression {clip(repr(v))}: {e}") from None
    return out


def _search(pats: list[re.Pattern[str]], value: Any) -> bool:
    return isinstance(value, str) and any(p.search(value) for p in pats)


def _compile_field(where: str, key: str, values: Sequence[Any]) -> Predicate:
    if key == "binary_regex":
        pats = _regexes(where, values)
        return lambda ev: _search(pats, _process(ev).get("binary"))
    if key == "parent_binary_regex":
        pats = _regexes(where, values)
        return lambda ev: _search(pats, _process(ev, "parent").get("binary"))
    if key == "ancestor_binary_regex":
        pats = _regexes(where, values)

        def ancestors(ev: Event) -> bool:
            anc = _body(ev).get("ancestors")
            return isinstance(anc, list) and any(isinstance(a, Mapping) and _search(pats, a.get("binary")) for a in anc)

        return ancestors
    if key == "arguments_regex":
        pats = _regexes(where, values)
        return lambda ev: _search(pats, _process(ev).get("arguments", ""))
    if key in ("pod_regex", "namespace_regex"):
        pats = _regexes(where, values)
        field = "name" if key == "pod_regex" else "namespace"

        def pod_field(ev: Event) -> bool:
            pod = _process(ev).get("pod")
            return isinstance(pod, Mapping) and _search(pats, pod.get(field, ""))

        return pod_field
    if key == "namespace":
        namespaces = {str(v) for v in values}

        def namespace(ev: Event) -> bool:
            proc = _process(ev)
            if not proc:
                return False
            pod = proc.get("pod")
            if not isinstance(pod, Mapping):
                return "" in namespaces  # "" selects host processes, as Tetragon's
            return pod.get("namespace", "") in namespaces

        return namespace
    if key == "pid":
        pids = {int(v) for v in values}
        return lambda ev: _process(ev).get("pid") in pids
    if key == "event_set":
        kinds = set()
        for i, v in enumerate(values):
            name = str(v).lower()
            if not name.startswith("process_") and name not in ("test", "rate_limit_info"):
                raise ValueError(f"{where}[{i}]: unknown event type {clip(repr(v))}")
            kinds.add(name)
        return lambda ev: event_kind(ev) in kinds
    if key == "policy_names":
        names = {str(v) for v in values}
        return lambda ev: _body(ev).get("policy_name") in names
    if key == "labels":
        selectors = [compile_label_selector(str(v)) for v in values]

        def labels(ev: Event) -> bool:
            pod = _process(ev).get("pod")
            if not isinstance(pod, Mapping):
                return False  # as Tetragon's: never matches host processes
            have = [("k8s", str(k), str(v)) for k, v in (pod.get("pod_labels") or {}).items()]
            return any(s(have) for s in selectors)

        return labels
    if key in UNSUPPORTED:
        raise ValueError(f"{where}: not supported by apiary ({UNSUPPORTED[key]})")
    raise ValueError(f"{where}: unknown Filter field")


def compile_filter(where: str, flt: Mapping[str, Any]) -> Predicate:
    """One ``Filter`` dict -> predicate (all its set fields must match). ``where`` prefixes errors."""
    checks: list[Predicate] = []
    for key, values in flt.items():
        if values is None or values == [] or values == {}:
            continue
        vals = values if isinstance(values, list) else [values]
        try:
            checks.append(_compile_field(f"{where}.{key}", key, vals))
        except (TypeError, ValueError) as e:
            msg = str(e)
            raise ValueError(msg if msg.startswith(where) else f"{where}.{key}: {msg}") from None
    return lambda ev: all(c(ev) for c in checks)


class AllowDeny:
    """Tetragon's allow list and deny list over ``GetEventsResponse`` dicts."""

    __slots__ = ("_allow", "_deny")

    def __init__(self, allow_list: Iterable[Mapping[str, Any]] = (), deny_list: Iterable[Mapping[str, Any]] = ()):
        self._allow = [compile_filter(f"allow_list[{i}]", f) for i, f in enumerate(allow_list)]
        self._deny = [compile_filter(f"deny_list[{i}]", f) for i, f in enumerate(deny_list)]

    def matches(self, ev: Event) -> bool:
        if self._allow and not any(p(ev) for p in self._allow):
            return False
        return not any(p(ev) for p in self._deny)
