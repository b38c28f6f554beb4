"""Tetragon's event ``Filter`` (``tetragon/events.proto``): the allow list and deny list of ``GetEvents`` and of
the export's ``--export-allowlist``/``--export-denylist`` (one implementation for both).

A filter is given as the JSON form of a ``Filter`` message (proto field names, or protojson's camelCase names).
Within one ``Filter`` every set field must match (AND) and the values of one field are alternatives (OR); an
event passes when the allow list is empty or one of its filters matches, and none of the deny list's filters
matches (Tetragon's ``pkg/filters``). Regular expressions search (unanchored), as Go's ``regexp.MatchString``.
A field apiary cannot evaluate, or a bad value, raises ``ValueError`` naming the list, the filter and the field:
nothing a client asks for is silently ignored.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from apiary.observe.hubble.filter_values import compile_label_selector
from apiary.observe.tetragon.events import event_kind
from apiary.textutil import clip

Event = dict[str, Any]
Predicate = Callable[[Event], bool]

# EventType enum names -> JSON event keys (events.proto); numbers are accepted as protojson accepts them
EVENT_TYPE_NAMES: dict[str, str] = {
    "PROCESS_EXEC": "process_exec",
    "PROCESS_EXIT": "process_exit",
    "PROCESS_KPROBE": "process_kprobe",
    "PROCESS_TRACEPOINT": "process_tracepoint",
    "PROCESS_LOADER": "process_loader",
    "PROCESS_UPROBE": "process_uprobe",
    "PROCESS_THROTTLE": "process_throttle",
    "PROCESS_LSM": "process_lsm",
    "PROCESS_USDT": "process_usdt",
    "TEST": "test",
    "RATE_LIMIT_INFO": "rate_limit_info",
}
EVENT_TYPE_NUMBERS: dict[int, str] = {
    1: "process_exec", 5: "process_exit", 9: "process_kprobe", 10: "process_tracepoint", 11: "process_loader",
    12: "process_uprobe", 27: "process_throttle", 28: "process_lsm", 29: "process_usdt", 40000: "test",
    40001: "rate_limit_info",
}
# fields of tetragon.Filter apiary refuses, and why (named in the error rather than ignored)
UNSUPPORTED: dict[str, str] = {
    "cel_expression": "CEL expressions are not evaluated by apiary",
    "capabilities": "capability filters are not evaluated by apiary",
}
FILTER_FIELDS = frozenset(
    {
        "binary_regex", "namespace", "health_check", "pid", "pid_set", "event_set", "pod_regex", "arguments_regex",
        "labels", "policy_names", "parent_binary_regex", "parent_arguments_regex", "container_id", "in_init_tree",
        "ancestor_binary_regex", "container_name_regex", "namespace_regex",
    }
)
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def event_set_key(v: Any, where: str) -> str:
    """One ``event_set`` value (enum name or number) -> JSON event key."""
    if isinstance(v, bool):
        raise ValueError(f"{where}: {v!r} is not an event type")
    if isinstance(v, int):
        key = EVENT_TYPE_NUMBERS.get(v)
    elif isinstance(v, str):
        key = EVENT_TYPE_NAMES.get(v.upper())
    else:
        key = None
    if key is None:
        raise ValueError(f"{where}: unknown event type {clip(repr(v))} (known: {', '.join(EVENT_TYPE_NAMES)})")
    return key


def _body(ev: Event) -> Mapping[str, Any]:
    kind = event_kind(ev)
    body = ev.get(kind) if kind else None
    return body if isinstance(body, Mapping) else {}


def _process(ev: Event, key: str = "process") -> Mapping[str, Any]:
    p = _body(ev).get(key)
    return p if isinstance(p, Mapping) else {}


def _pod(ev: Event) -> Mapping[str, Any] | None:
    pod = _process(ev).get("pod")
    return pod if isinstance(pod, Mapping) else None


def _regexes(where: str, values: list[Any]) -> list[re.Pattern[str]]:
    out = []
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise ValueError(f"{where}[{i}]: {clip(repr(v))} is not a string")
        try:
            out.append(re.compile(v))
        except re.error as e:
            raise ValueError(f"{where}[{i}]: invalid regular expression {clip(repr(v))}: {e}") from None
    return out


def _search(pats: list[re.Pattern[str]], value: Any) -> bool:
    return isinstance(value, str) and any(p.search(value) for p in pats)


def _strings(where: str, values: list[Any]) -> frozenset[str]:
    if any(not isinstance(v, str) for v in values):
        raise ValueError(f"{where}: every value must be a string")
    return frozenset(values)


def _uints(where: str, values: list[Any]) -> frozenset[int]:
    if any(isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 1 << 32 for v in values):
        raise ValueError(f"{where}: every value must be an unsigned 32-bit integer")
    return frozenset(values)


# regex fields: where the searched string is (a process key, then the field of it)
_PROCESS_REGEX: dict[str, tuple[str, str]] = {
    "binary_regex": ("process", "binary"),
    "parent_binary_regex": ("parent", "binary"),
    "parent_arguments_regex": ("parent", "arguments"),
    "container_id": ("process", "docker"),
}
_POD_REGEX = {"pod_regex": "name", "namespace_regex": "namespace"}


def _compile_field(where: str, key: str, value: Any) -> Predicate:  # noqa: C901 - one branch per Filter field
    if key in ("health_check", "in_init_tree"):
        if not isinstance(value, bool):
            raise ValueError(f"{where}: must be true or false")
        if key == "health_check":
            # Tetragon's health check is its own gRPC probe process; apiary runs none, so no event is one
            return lambda ev: value is False
        return lambda ev: bool(_process(ev).get("in_init_tree", False)) is value
    if not isinstance(value, list):
        raise ValueError(f"{where}: must be a list")
    if key in _PROCESS_REGEX:
        pats = _regexes(where, value)
        which, field = _PROCESS_REGEX[key]
        return lambda ev: _search(pats, _process(ev, which).get(field))
    if key == "arguments_regex":
        pats = _regexes(where, value)
        return lambda ev: _search(pats, _process(ev).get("arguments", ""))  # absent is "", as a Go string
    if key == "ancestor_binary_regex":
        pats = _regexes(where, value)

        def ancestors(ev: Event) -> bool:
            anc = _body(ev).get("ancestors")
            return isinstance(anc, list) and any(isinstance(a, Mapping) and _search(pats, a.get("binary")) for a in anc)

        return ancestors
    if key in _POD_REGEX:
        pats = _regexes(where, value)
        pod_field = _POD_REGEX[key]
        return lambda ev: _search(pats, (_pod(ev) or {}).get(pod_field, ""))
    if key == "container_name_regex":
        pats = _regexes(where, value)
        return lambda ev: _search(pats, ((_pod(ev) or {}).get("container") or {}).get("name"))
    if key == "namespace":
        namespaces = _strings(where, value)

        def namespace(ev: Event) -> bool:
            if not _process(ev):
                return False
            pod = _pod(ev)
            return (pod.get("namespace", "") if pod is not None else "") in namespaces  # "" = host processes

        return namespace
    if key == "pid":
        pids = _uints(where, value)
        return lambda ev: _process(ev).get("pid") in pids
    if key == "pid_set":
        pid_set = _uints(where, value)

        def in_pid_set(ev: Event) -> bool:  # the process or any ancestor
            body = _body(ev)
            chain = [body.get("process"), body.get("parent"), *(body.get("ancestors") or [])]
            return any(isinstance(p, Mapping) and p.get("pid") in pid_set for p in chain)

        return in_pid_set
    if key == "event_set":
        kinds = frozenset(event_set_key(v, f"{where}[{i}]") for i, v in enumerate(value))
        return lambda ev: event_kind(ev) in kinds
    if key == "policy_names":
        names = _strings(where, value)
        return lambda ev: _body(ev).get("policy_name") in names
    if key == "labels":
        try:
            selectors = [compile_label_selector(str(v)) for v in value]
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None

        def labels(ev: Event) -> bool:
            pod = _pod(ev)
            if pod is None:
                return False  # as Tetragon's: never matches host processes
            have = [("k8s", str(k), str(v)) for k, v in (pod.get("pod_labels") or {}).items()]
            return any(s(have) for s in selectors)

        return labels
    raise ValueError(f"{where}: unknown Filter field")  # never: keys are checked first


def compile_filter(where: str, flt: Any, sep: str = ".") -> Predicate:
    """One ``Filter`` (a JSON object) -> predicate (all its set fields must match). Errors read
    ``{where}{sep}{field}: reason``."""
    if not isinstance(flt, Mapping):
        raise ValueError(f"{where}: a filter must be a JSON object")
    checks: list[Predicate] = []
    for raw_key, value in flt.items():
        key = _CAMEL.sub("_", str(raw_key)).lower()
        at = f"{where}{sep}{raw_key}"
        if key in UNSUPPORTED:
            raise ValueError(f"{at}: unsupported ({UNSUPPORTED[key]})")
        if key not in FILTER_FIELDS:
            raise ValueError(f"{at}: unknown Filter field (known: {', '.join(sorted(FILTER_FIELDS))})")
        if value is None or value == [] or value == {}:
            continue
        checks.append(_compile_field(at, key, value))
    return lambda ev: all(c(ev) for c in checks)


class AllowDeny:
    """Tetragon's allow list and deny list over event dicts (``GetEventsResponse`` JSON).

    ``names`` are what errors call the two lists (the gRPC request's fields by default; the export passes its
    flags, and its errors then read ``--export-allowlist[0]: binary_regex[1]: …``)."""

    __slots__ = ("_allow", "_deny")

    def __init__(
        self,
        allow_list: Iterable[Any] = (),
        deny_list: Iterable[Any] = (),
        *,
        names: tuple[str, str] = ("allow_list", "deny_list"),
    ) -> None:
        sep = ": " if names[0].startswith("--") else "."
        self._allow = [compile_filter(f"{names[0]}[{i}]", f, sep) for i, f in enumerate(allow_list)]
        self._deny = [compile_filter(f"{names[1]}[{i}]", f, sep) for i, f in enumerate(deny_list)]

    def __bool__(self) -> bool:
        """True when any filter is set (an empty AllowDeny passes every event)."""
        return bool(self._allow or self._deny)

    def matches(self, ev: Event) -> bool:
        if self._allow and not any(p(ev) for p in self._allow):
            return False
        return not any(p(ev) for p in self._deny)
