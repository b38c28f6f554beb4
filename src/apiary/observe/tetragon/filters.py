"""Event filters for the Tetragon-style event stream (CLI options -> predicate on event dicts)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from apiary.observe.clock import datetime_to_ns, parse_rfc3339_ns
from apiary.observe.tetragon.events import event_kind
from apiary.textutil import clip

# CLI event type -> JSON event key. Hook sensors register theirs, e.g. "kprobe": "process_kprobe".
EVENT_TYPES: dict[str, str] = {
    "exec": "process_exec",
    "exit": "process_exit",
    "kprobe": "process_kprobe",
    "tracepoint": "process_tracepoint",
    "lsm": "process_lsm",
    "uprobe": "process_uprobe",
}

PID_MAX = 1 << 22  # the kernel's PID_MAX_LIMIT
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``--since``: a duration back from now (``30s``, ``5m``, ``1h30m``, ``250ms``, ``2d``) or an
    RFC3339 timestamp. Returns an aware UTC datetime."""
    s = text.strip()
    if _DURATION.fullmatch(s):
        secs = sum(float(n) * _UNIT_S[u] for n, u in _DURATION_PART.findall(s))
        try:
            return (now or datetime.now(UTC)) - timedelta(seconds=secs)
        except OverflowError:
            raise ValueError(f"--since: {clip(text)} reaches back before the year 1") from None
    try:
        ns = parse_rfc3339_ns(s)
        return datetime.fromtimestamp(ns // 1_000_000_000, UTC) + timedelta(microseconds=ns % 1_000_000_000 // 1000)
    except (ValueError, OverflowError, OSError):
        raise ValueError(
            f"--since: {clip(repr(text))} is neither a duration (e.g. 30s, 5m, 1h30m) "
            "nor an RFC3339 timestamp (e.g. 2024-05-01T12:00:00Z)"
        ) from None


def event_type_key(name: str) -> str:
    """``exec`` / ``process_exec`` / ``PROCESS_EXEC`` -> ``process_exec``; ValueError if unknown."""
    n = name.strip().lower()
    if n in EVENT_TYPES:
        return EVENT_TYPES[n]
    if n in EVENT_TYPES.values():
        return n
    known = ", ".join(sorted(EVENT_TYPES))
    raise ValueError(f"--event-type: unknown event type {name!r} (known: {known})")


@dataclass(frozen=True, slots=True)
class EventFilter:
    """All set criteria must hold (AND); an empty criterion matches everything."""

    pids: frozenset[int] = frozenset()
    binary: re.Pattern[str] | None = None
    types: frozenset[str] = frozenset()  # JSON event keys
    since_ns: int | None = None

    @classmethod
    def from_options(
        cls,
        pids: Iterable[int] | None = None,
        binary: str | None = None,
        event_types: Iterable[str] | None = None,
        since: datetime | str | None = None,
    ) -> EventFilter:
        """Build from CLI options; ``ValueError`` names the offending option."""
        pattern = None
        if binary:
            try:
                pattern = re.compile(binary)
            except re.error as e:
                raise ValueError(f"--binary: invalid regular expression {clip(repr(binary))}: {e}") from None
        bad = [p for p in pids or () if not 0 <= int(p) <= PID_MAX]
        if bad:
            raise ValueError(f"--pid: {clip(bad[0])} is not a pid (0 to {PID_MAX:,})")
        if isinstance(since, str):
            since = parse_since(since)
        return cls(
            pids=frozenset(int(p) for p in pids or ()),
            binary=pattern,
            types=frozenset(event_type_key(t) for t in event_types or ()),
            since_ns=datetime_to_ns(since) if since is not None else None,
        )

    def matches(self, event: dict[str, Any]) -> bool:
        kind = event_kind(event)
        if self.types and kind not in self.types:
            return False
        if self.pids or self.binary is not None:
            body = event.get(kind) if kind else None
            proc = body.get("process") if isinstance(body, dict) else None
            if not isinstance(proc, dict):
                return False
            if self.pids and proc.get("pid") not in self.pids:
                return False
            if self.binary is not None and not self.binary.search(proc.get("binary", "")):
                return False
        if self.since_ns is not None:
            t = event.get("time")
            try:
                if not t or parse_rfc3339_ns(t) < self.since_ns:
                    return False
            except ValueError:
                return False
        return True


# --- Tetragon's JSON ``Filter`` (events.proto): --export-allowlist / --export-denylist ------------------------

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
# Filter fields apiary refuses (named in the error rather than ignored)
UNSUPPORTED_FILTER_FIELDS = {
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

EventPredicate = Callable[[dict[str, Any]], bool]


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
        raise ValueError(f"{where}: unknown event type {v!r} (known: {', '.join(EVENT_TYPE_NAMES)})")
    return key


def _body(ev: dict[str, Any]) -> dict[str, Any]:
    kind = event_kind(ev)
    body = ev.get(kind) if kind else None
    return body if isinstance(body, dict) else {}


def _proc(ev: dict[str, Any], which: str = "process") -> dict[str, Any]:
    p = _body(ev).get(which)
    return p if isinstance(p, dict) else {}


def _regexes(values: list[Any], where: str) -> list[re.Pattern[str]]:
    out = []
    for v in values:
        if not isinstance(v, str):
            raise ValueError(f"{where}: {v!r} is not a string")
        try:
            out.append(re.compile(v))
        except re.error as e:
            raise ValueError(f"{where}: invalid regular expression {clip(repr(v))}: {e}") from None
    return out


def _any_search(pats: list[re.Pattern[str]], text: Any) -> bool:
    return isinstance(text, str) and any(p.search(text) for p in pats)


def _uints(values: list[Any], where: str) -> frozenset[int]:
    if any(isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 1 << 32 for v in values):
        raise ValueError(f"{where}: every value must be an unsigned 32-bit integer")
    return frozenset(values)


def _compile_filter_field(key: str, value: Any, where: str) -> EventPredicate:
    """One field of a Tetragon ``Filter`` -> predicate (the values of a repeated field are ORed)."""
    if key in ("health_check", "in_init_tree"):
        if not isinstance(value, bool):
            raise ValueError(f"{where}: must be true or false")
        if key == "health_check":
            # Tetragon's health check is its own gRPC probe process; apiary runs none, so no event is one
            return lambda ev: value is False
        return lambda ev: bool(_proc(ev).get("in_init_tree", False)) is value
    if not isinstance(value, list):
        raise ValueError(f"{where}: must be a list")
    if key == "event_set":
        kinds = frozenset(event_set_key(v, where) for v in value)
        return lambda ev: event_kind(ev) in kinds
    if key in ("pid", "pid_set"):
        pids = _uints(value, where)
        if key == "pid":
            return lambda ev: _proc(ev).get("pid") in pids

        def in_pid_set(ev: dict[str, Any]) -> bool:  # the process or any ancestor
            body = _body(ev)
            chain = [body.get("process"), body.get("parent"), *(body.get("ancestors") or [])]
            return any(isinstance(p, dict) and p.get("pid") in pids for p in chain)

        return in_pid_set
    if key == "namespace":
        if any(not isinstance(v, str) for v in value):
            raise ValueError(f"{where}: every value must be a string")
        names = frozenset(value)  # "" is a process outside any pod
        return lambda ev: ((_proc(ev).get("pod") or {}).get("namespace") or "") in names
    if key == "policy_names":
        if any(not isinstance(v, str) for v in value):
            raise ValueError(f"{where}: every value must be a string")
        pols = frozenset(value)
        return lambda ev: _body(ev).get("policy_name") in pols
    if key == "labels":
        from apiary.observe.hubble.filter_values import compile_label_selector

        try:
            sels = [compile_label_selector(str(v)) for v in value]
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None

        def match_labels(ev: dict[str, Any]) -> bool:  # never matches an event without a pod
            pod = _proc(ev).get("pod")
            if not isinstance(pod, dict):
                return False
            labels = [("k8s", k, str(v)) for k, v in (pod.get("pod_labels") or {}).items()]
            return any(s(labels) for s in sels)

        return match_labels
    pats = _regexes(value, where)
    if key == "binary_regex":
        return lambda ev: _any_search(pats, _proc(ev).get("binary"))
    if key == "arguments_regex":
        return lambda ev: _any_search(pats, _proc(ev).get("arguments"))
    if key == "parent_binary_regex":
        return lambda ev: _any_search(pats, _proc(ev, "parent").get("binary"))
    if key == "parent_arguments_regex":
        return lambda ev: _any_search(pats, _proc(ev, "parent").get("arguments"))
    if key == "ancestor_binary_regex":
        return lambda ev: any(
            isinstance(a, dict) and _any_search(pats, a.get("binary")) for a in _body(ev).get("ancestors") or []
        )
    if key == "pod_regex":
        return lambda ev: _any_search(pats, (_proc(ev).get("pod") or {}).get("name"))
    if key == "namespace_regex":
        return lambda ev: _any_search(pats, (_proc(ev).get("pod") or {}).get("namespace"))
    if key == "container_id":
        return lambda ev: _any_search(pats, _proc(ev).get("docker"))
    if key == "container_name_regex":
        return lambda ev: _any_search(pats, ((_proc(ev).get("pod") or {}).get("container") or {}).get("name"))
    raise ValueError(f"{where}: unknown filter field")  # never: keys are checked first


def compile_json_filter(f: Any, where: str) -> EventPredicate:
    """A Tetragon ``Filter`` in its JSON form (snake_case or camelCase keys) -> predicate; every set field must
    match (AND). ``ValueError`` names the field and the reason."""
    if not isinstance(f, dict):
        raise ValueError(f"{where}: a filter must be a JSON object")
    checks: list[EventPredicate] = []
    for raw_key, value in f.items():
        key = _CAMEL.sub("_", raw_key).lower()
        at = f"{where}: {raw_key}"
        if key in UNSUPPORTED_FILTER_FIELDS:
            raise ValueError(f"{at}: unsupported ({UNSUPPORTED_FILTER_FIELDS[key]})")
        if key not in FILTER_FIELDS:
            raise ValueError(f"{at}: unknown Filter field (known: {', '.join(sorted(FILTER_FIELDS))})")
        if value is None or value == []:
            continue
        checks.append(_compile_filter_field(key, value, at))
    return lambda ev: all(c(ev) for c in checks)


class JsonEventFilter:
    """Tetragon's allow/deny lists: an event passes when the allowlist is empty or one of its filters matches,
    and none of the denylist's does (``GetEventsRequest`` semantics)."""

    def __init__(
        self,
        allow: Iterable[Any] = (),
        deny: Iterable[Any] = (),
        *,
        flags: tuple[str, str] = ("allow_list", "deny_list"),
    ) -> None:
        self.allowlist, self.denylist = list(allow), list(deny)
        self._allow = [compile_json_filter(f, f"{flags[0]}[{i}]") for i, f in enumerate(self.allowlist)]
        self._deny = [compile_json_filter(f, f"{flags[1]}[{i}]") for i, f in enumerate(self.denylist)]

    def __bool__(self) -> bool:
        return bool(self._allow or self._deny)

    def matches(self, ev: dict[str, Any]) -> bool:
        if self._allow and not any(p(ev) for p in self._allow):
            return False
        return not any(p(ev) for p in self._deny)
