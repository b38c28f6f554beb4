"""``hubble observe`` filter flags -> Hubble FlowFilter dicts, the way the hubble CLI builds them
(``hubble/cmd/observe/flows_filter.go``; the rules are in :mod:`apiary.observe.hubble.filters`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from apiary.observe.hubble.filter_values import (
    FLOW_FILTER_FIELDS,
    check_service_flag,
    compile_label_selector,
    direction_name,
    drop_reason_name,
    fqdn_regex,
    parse_event_type,
    parse_http_status,
    parse_identity,
    parse_ip,
    parse_namespaced_name,
    parse_port,
    parse_regex,
    protocol_name,
    verdict_name,
)

# short flags of hubble observe
FLAG_ALIASES = {"n": "namespace", "l": "label", "t": "type"}

FILTER_FLAGS = frozenset(
    {
        "not",
        "verdict",
        "pod",
        "from-pod",
        "to-pod",
        "namespace",
        "from-namespace",
        "to-namespace",
        "label",
        "from-label",
        "to-label",
        "service",
        "from-service",
        "to-service",
        "identity",
        "from-identity",
        "to-identity",
        "ip",
        "from-ip",
        "to-ip",
        "port",
        "from-port",
        "to-port",
        "protocol",
        "type",
        "traffic-direction",
        "drop-reason-desc",
        "http-status",
        "http-method",
        "http-path",
        "http-url",
        "fqdn",
        "from-fqdn",
        "to-fqdn",
    }
)

# hubble CLI conflict groups, restricted to the flags above (order kept: it decides the error message)
_CONFLICTS: tuple[tuple[str, ...], ...] = (
    ("from-ip", "ip", "from-namespace", "namespace"),
    ("from-ip", "ip", "from-pod", "pod"),
    ("to-ip", "ip", "to-namespace", "namespace"),
    ("to-ip", "ip", "to-pod", "pod"),
    ("to-pod", "namespace"),
    ("from-pod", "namespace"),
    ("to-service", "namespace"),
    ("from-service", "namespace"),
    ("label", "from-label"),
    ("label", "to-label"),
    ("service", "from-service"),
    ("service", "to-service"),
    ("verdict",),
    ("drop-reason-desc",),
    ("type",),
    ("protocol",),
    ("port", "to-port"),
    ("port", "from-port"),
    ("identity", "to-identity"),
    ("identity", "from-identity"),
    ("traffic-direction",),
)


# --- the filter tracker (hubble CLI) ------------------------------------------------------------


@dataclass
class _Tracker:
    left: dict[str, list[Any]] | None = None
    right: dict[str, list[Any]] | None = None
    ns: list[str] = field(default_factory=list)
    src_ns: list[str] = field(default_factory=list)
    dst_ns: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)

    def add_left(self, key: str, value: Any) -> None:
        if self.left is None:
            self.left = {}
        self.left.setdefault(key, []).append(value)

    def add_right(self, key: str, value: Any) -> None:
        if self.right is None:
            self.right = {}
        self.right.setdefault(key, []).append(value)

    def add(self, key: str, value: Any) -> None:
        self.add_left(key, value)
        self.add_right(key, value)

    def check_conflicts(self) -> None:
        for group in _CONFLICTS:
            for flag in group:
                if flag in self.changed:
                    for other in group:
                        if other != flag and other in self.changed:
                            raise ValueError(f"filters --{flag} and --{other} cannot be combined")

    def check_namespace_conflicts(self) -> None:
        """hubble's ``checkNamespaceConflicts`` on left then right (the first conflict is reported)."""
        for ff in (self.left, self.right):
            if not ff:
                continue
            for nss, key in (
                (self.ns, "source_pod"),
                (self.ns, "source_service"),
                (self.ns, "destination_pod"),
                (self.ns, "destination_service"),
                (self.src_ns, "source_pod"),
                (self.src_ns, "source_service"),
                (self.dst_ns, "destination_pod"),
                (self.dst_ns, "destination_service"),
            ):
                for ns in nss:
                    for name in ff.get(key, ()):
                        parts = name.split("/")
                        if len(parts) > 1 and parts[0] and parts[0] != ns:
                            raise ValueError(f'namespace conflict: "{ns}" does not contain "{name}"')
            for pod_key, svc_key in (("source_pod", "source_service"), ("destination_pod", "destination_service")):
                # a pod in one namespace and a service in another (or in none) can never both match
                for pod in ff.get(pod_key, ()):
                    pod_ns = pod.split("/")[0] if "/" in pod else ""
                    if not pod_ns:
                        continue
                    for svc in ff.get(svc_key, ()):
                        svc_ns = svc.split("/")[0] if "/" in svc else ""
                        if svc_ns != pod_ns:
                            raise ValueError(f'namespace of service "{svc}" conflict with pod "{pod_ns}"')

    @staticmethod
    def _with_ns(ff: dict[str, list[Any]], pod_key: str, svc_key: str, nss: list[str]) -> None:
        """hubble's ``namespaceModifier.applySrc/applyDest``: a namespace flag without a pod or service filter
        on that side becomes ``<ns>/`` pod filters; names without a namespace get each namespace."""
        if not ff.get(pod_key) and not ff.get(svc_key):
            ff[pod_key] = [""]
        for key in (pod_key, svc_key):
            if not ff.get(key):
                continue
            out: list[str] = []
            for entry in ff[key]:
                if "/" in entry:
                    out.append(entry)
                else:
                    out.extend(f"{ns}/{entry}" for ns in nss)
            ff[key] = out

    def flow_filters(self) -> list[dict[str, list[Any]]]:
        if self.left is None and self.right is None and not (self.ns or self.src_ns or self.dst_ns):
            return []
        left = {k: list(v) for k, v in (self.left or {}).items()}
        right = {k: list(v) for k, v in (self.right or {}).items()}
        src, dst = ("source_pod", "source_service"), ("destination_pod", "destination_service")
        if self.dst_ns:
            self._with_ns(left, *dst, self.dst_ns)
            self._with_ns(right, *dst, self.dst_ns)
        if self.src_ns:
            self._with_ns(left, *src, self.src_ns)
            self._with_ns(right, *src, self.src_ns)
        if self.ns:
            self._with_ns(left, *src, self.ns)
            self._with_ns(right, *dst, self.ns)
        left, right = _ordered(left), _ordered(right)
        return [left] if left == right else [left, right]


def _ordered(ff: Mapping[str, Any]) -> dict[str, Any]:
    order = {k: i for i, k in enumerate(FLOW_FILTER_FIELDS)}
    return {k: ff[k] for k in sorted(ff, key=lambda k: order.get(k, len(order)))}


def _set(t: _Tracker, flag: str, value: str) -> None:
    """One CLI filter flag into a tracker (hubble's ``flowFilter.set``)."""
    if flag not in t.changed:
        t.changed.append(flag)
    t.check_conflicts()
    if flag in ("pod", "from-pod", "to-pod"):
        if not value or parse_namespaced_name(value) == ("", ""):
            raise ValueError(f"invalid filter, must be [namespace/][<name>], got {value!r}")
        if flag == "pod":
            t.add_left("source_pod", value)
            t.add_right("destination_pod", value)
        else:
            t.add("source_pod" if flag == "from-pod" else "destination_pod", value)
    elif flag in ("service", "from-service", "to-service"):
        check_service_flag(value)
        _two_sided(t, flag, "source_service", "destination_service", value)
    elif flag in ("namespace", "from-namespace", "to-namespace"):
        if not value or "/" in value:
            raise ValueError(f"invalid namespace {value!r}")
        {"namespace": t.ns, "from-namespace": t.src_ns, "to-namespace": t.dst_ns}[flag].append(value)
    elif flag in ("ip", "from-ip", "to-ip"):
        parse_ip(value)
        _two_sided(t, flag, "source_ip", "destination_ip", value)
    elif flag in ("label", "from-label", "to-label"):
        compile_label_selector(value)
        _two_sided(t, flag, "source_label", "destination_label", value)
    elif flag in ("port", "from-port", "to-port"):
        parse_port(value)
        _two_sided(t, flag, "source_port", "destination_port", value)
    elif flag in ("identity", "from-identity", "to-identity"):
        _two_sided(t, flag, "source_identity", "destination_identity", parse_identity(value))
    elif flag in ("fqdn", "from-fqdn", "to-fqdn"):
        fqdn_regex(value)
        _two_sided(t, flag, "source_fqdn", "destination_fqdn", value)
    elif flag == "verdict":
        t.add("verdict", verdict_name(value))
    elif flag == "drop-reason-desc":
        t.add("drop_reason_desc", drop_reason_name(value))
    elif flag == "traffic-direction":
        t.add("traffic_direction", direction_name(value))
    elif flag == "protocol":
        t.add("protocol", protocol_name(value))
    elif flag == "type":
        t.add("event_type", parse_event_type(value))
    elif flag == "http-status":
        t.add("http_status_code", parse_http_status(value))
    elif flag == "http-method":
        t.add("http_method", value)
    elif flag in ("http-path", "http-url"):
        parse_regex(value)
        t.add(flag.replace("-", "_"), value)
    else:  # pragma: no cover - guarded by FILTER_FLAGS
        raise ValueError(f"unknown filter flag --{flag}")
    t.check_namespace_conflicts()


def _two_sided(t: _Tracker, flag: str, src_key: str, dst_key: str, value: Any) -> None:
    if flag.startswith("from-"):
        t.add(src_key, value)
    elif flag.startswith("to-"):
        t.add(dst_key, value)
    else:
        t.add_left(src_key, value)
        t.add_right(dst_key, value)


def flow_filters_from_args(pairs: Iterable[tuple[str, str]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(allowlist, denylist) FlowFilter dicts from the ordered ``(flag, value)`` pairs of a command line."""
    allow, deny = _Tracker(), _Tracker()
    negate = False
    for raw_flag, value in pairs:
        flag = raw_flag.lstrip("-")
        flag = FLAG_ALIASES.get(flag, flag)
        if flag not in FILTER_FLAGS:
            raise ValueError(f"--{flag}: not a flow filter flag")
        if flag == "not":
            if negate:
                raise ValueError("--not: consecutive --not statements")
            negate = True
            continue
        target = deny if negate else allow
        negate = False
        try:
            _set(target, flag, str(value))
        except ValueError as e:
            msg = str(e)
            named = f"--{flag}" in msg or msg.startswith("filters --")
            raise ValueError(msg if named else f"--{flag}: {msg}") from None
    if negate:
        raise ValueError("--not: must be followed by a filter flag")
    return allow.flow_filters(), deny.flow_filters()
