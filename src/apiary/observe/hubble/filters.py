"""``apiary observe`` / ``hubble observe`` flow filters (FORMATS.md §1.7).

The CLI flags are turned into Hubble ``FlowFilter`` objects exactly the way the hubble CLI does it
(``hubble/cmd/observe/flows_filter.go``), then those are matched against flows the way the Hubble server
does it (``pkg/hubble/filters``):

* Two trackers collect filters: the allowlist and the denylist. ``--not`` sends the *next* flag to the
  denylist (two ``--not`` in a row is an error).
* Each tracker builds two FlowFilters, ``left`` and ``right``; the tracker matches a flow when ``left`` OR
  ``right`` matches. One-sided flags (``--from-pod``, ``--to-port``, ``--verdict`` ...) are added to both;
  two-sided flags add the source variant to ``left`` and the destination variant to ``right``
  (``--pod`` -> ``source_pod`` | ``destination_pod``; likewise ``--ip``, ``--label``, ``--port``,
  ``--identity``). ``--namespace``/``--from-namespace``/``--to-namespace`` are applied last: they prefix
  pod filters without a namespace and add ``<ns>/`` pod filters where there are none. If ``left`` equals
  ``right`` only one FlowFilter is kept.
* Inside one FlowFilter different fields are ANDed and the values of one field ORed — hence "same flag
  repeated = OR, different flags = AND".
* A flow passes when the allowlist is empty or one of its FlowFilters matches, and none of the denylist's
  FlowFilters matches. Responses that are not flows (lost events) always pass.
* Some flag pairs cannot be combined (``--port`` with ``--to-port``, ``--from-ip`` with ``--from-pod`` ...),
  exactly the hubble CLI's conflict groups.

``FlowFilter.raw_filters()`` returns the FlowFilter dicts (protojson field names), which is what
``--print-raw-filters`` prints (:meth:`FlowFilter.print_raw_filters`); :meth:`FlowFilter.from_raw` builds
a filter from such dicts (``--allowlist`` / ``--denylist``).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from apiary.observe.hubble.enums import (
    DROP_REASON_VALUE,
    MESSAGE_TYPE_NAMES,
    RESERVED_IDENTITIES,
    TRACE_POINT_NAMES,
    TRAFFIC_DIRECTION,
    VERDICT,
)

# FlowFilter fields apiary understands, in flow.proto declaration order (the order protojson prints)
FLOW_FILTER_FIELDS = (
    "source_ip",
    "source_pod",
    "source_label",
    "destination_ip",
    "destination_pod",
    "destination_label",
    "traffic_direction",
    "verdict",
    "drop_reason_desc",
    "event_type",
    "protocol",
    "source_port",
    "destination_port",
    "reply",
    "source_identity",
    "destination_identity",
)

L4_PROTOCOLS = ("icmp", "icmpv4", "icmpv6", "tcp", "udp", "sctp", "vrrp", "igmp")
L7_PROTOCOLS = ("dns", "http", "kafka")

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
    ("label", "from-label"),
    ("label", "to-label"),
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


# --- label selectors (Kubernetes selector syntax with Cilium source prefixes) ---------------------

_LABEL_KEY = r"[A-Za-z0-9]([A-Za-z0-9_.\-/:]*[A-Za-z0-9])?"
_REQ = re.compile(
    rf"""^\s*(?:
        (?P<notkey>!\s*{_LABEL_KEY})
      | (?P<setkey>{_LABEL_KEY})\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\)
      | (?P<cmpkey>{_LABEL_KEY})\s*(?P<op>==|=|!=)\s*(?P<value>[A-Za-z0-9_.\-]*)
      | (?P<key>{_LABEL_KEY})
    )\s*$""",
    re.VERBOSE,
)

Labels = list[tuple[str, str, str]]  # (source, key, value)


def parse_label(text: str) -> tuple[str, str, str]:
    """``k8s:app=frontend`` -> (``k8s``, ``app``, ``frontend``); no source -> ``any``."""
    kv, _, value = text.partition("=")
    source, sep, key = kv.partition(":")
    if not sep:
        source, key = "any", kv
    return source, key, value


def _split_requirements(selector: str) -> list[str]:
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def _key_source(key: str) -> tuple[str, str]:
    source, sep, rest = key.partition(":")
    if not sep or source == "any":
        return "any", (rest if sep else key)
    return source, rest


def _requirement(src: str, key: str, op: str, vals: frozenset[str] = frozenset()) -> Callable[[Labels], bool]:
    """One selector requirement: ``op`` is ``exists``, ``!exists``, ``in`` or ``notin`` (over ``vals``)."""

    def match(labels: Labels) -> bool:
        found = [v for (s, k, v) in labels if k == key and (src == "any" or s == src)]
        if op == "exists":
            return bool(found)
        if op == "!exists":
            return not found
        hit = any(v in vals for v in found)
        return hit if op == "in" else not hit

    return match


def compile_label_selector(selector: str) -> Callable[[Labels], bool]:
    """A Kubernetes label selector (``app=x,tier in (a,b),!debug``, keys may carry a Cilium source prefix
    like ``k8s:app``) -> predicate over parsed labels. ``ValueError`` on a malformed selector."""
    reqs: list[Callable[[Labels], bool]] = []
    for raw in _split_requirements(selector):
        m = _REQ.match(raw)
        if not m or not raw.strip():
            raise ValueError(f"invalid label selector {selector!r}: cannot parse {raw.strip()!r}")
        if m.group("notkey"):
            reqs.append(_requirement(*_key_source(m.group("notkey")[1:].strip()), "!exists"))
        elif m.group("setkey"):
            vals = frozenset(v.strip() for v in m.group("values").split(",") if v.strip())
            op = "in" if m.group("setop") == "in" else "notin"
            reqs.append(_requirement(*_key_source(m.group("setkey")), op, vals))
        elif m.group("cmpkey"):
            op = "notin" if m.group("op") == "!=" else "in"
            reqs.append(_requirement(*_key_source(m.group("cmpkey")), op, frozenset({m.group("value")})))
        else:
            reqs.append(_requirement(*_key_source(m.group("key")), "exists"))
    return lambda labels: all(r(labels) for r in reqs)


# --- value parsing -------------------------------------------------------------------------------


def parse_namespaced_name(name: str) -> tuple[str, str]:
    """Hubble's ``ParseNamespaceName``: ``ns/prefix`` -> (ns, prefix); ``prefix`` -> (``default``, prefix)."""
    parts = name.split("/")
    if len(parts) > 1:
        return parts[0], parts[1]
    if parts[0] == "":
        return "", ""
    return "default", parts[0]


def _decimal(text: str) -> int:
    """An unsigned decimal as Go's strconv.ParseUint reads it: ASCII digits only (``int`` also takes
    fullwidth digits, ``_`` and surrounding spaces); -1 when it is not one."""
    return int(text) if text.isascii() and text.isdigit() else -1


def parse_identity(text: str) -> int:
    """A numeric identity or a reserved identity name (``host``, ``world`` ...)."""
    t = text.strip()
    for num, name in RESERVED_IDENTITIES.items():
        if t == name:
            return num
    v = _decimal(t)
    if not 0 <= v <= 0xFFFFFFFF:
        names = sorted(RESERVED_IDENTITIES.values())
        raise ValueError(f"invalid security identity, expected one of {names} or a numeric value")
    return v


def _parse_ip(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        if "/" in text:
            return ipaddress.ip_network(text, strict=False)
        return ipaddress.ip_network(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError(f"invalid IP address or CIDR {text!r}") from None


def _parse_port(text: str) -> int:
    v = _decimal(text)
    if not 0 <= v <= 65535:
        raise ValueError(f"invalid port {text!r}")
    return v


def parse_event_type(value: str) -> dict[str, Any]:
    """``trace``, ``trace:to-endpoint``, ``drop:133``, ``4`` -> an EventTypeFilter dict."""
    head, sep, tail = value.partition(":")
    if head in MESSAGE_TYPE_NAMES:
        t = MESSAGE_TYPE_NAMES[head]
    else:
        try:
            t = int(head, 10)
        except ValueError:
            raise ValueError(
                f"unable to parse type '{head}', not a known type name and unable to parse as numeric value"
            ) from None
    d: dict[str, Any] = {}
    if t:
        d["type"] = t
    if sep:
        sub: int | None = None
        if t == MESSAGE_TYPE_NAMES["trace"]:
            sub = next((k for k, v in TRACE_POINT_NAMES.items() if v == tail), None)
        if sub is None:
            try:
                sub = int(tail, 10)
            except ValueError:
                raise ValueError(
                    f"unable to parse event sub-type '{tail}', not a known sub-type name and unable to parse "
                    "as numeric value"
                ) from None
        d["match_sub_type"] = True
        if sub:
            d["sub_type"] = sub
    return d


def _verdict_name(value: str | int) -> str:
    if isinstance(value, int):
        if value in VERDICT:
            return VERDICT[value]
    elif value.upper() in VERDICT.values():
        return value.upper()
    raise ValueError(f"invalid --verdict value: {value}")


def _drop_reason_name(value: str | int) -> str:
    if isinstance(value, int):
        for name, code in DROP_REASON_VALUE.items():
            if code == value:
                return name
    else:
        if value == "":
            raise ValueError("empty --drop-reason-desc value")
        if value.upper() in DROP_REASON_VALUE:
            return value.upper()
    raise ValueError(f"invalid --drop-reason-desc value: {value}")


def _direction_name(value: str | int) -> str:
    if isinstance(value, int):
        if value in (1, 2):
            return TRAFFIC_DIRECTION[value]
    elif value.lower() in ("ingress", "egress"):
        return value.upper()
    raise ValueError(f"{str(value).lower()}: invalid traffic direction, expected ingress or egress")


def _protocol(value: str) -> str:
    if value.lower() not in L4_PROTOCOLS + L7_PROTOCOLS:
        raise ValueError(f"unknown protocol: {value!r}")
    return value


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
        for ff in (self.left, self.right):
            if not ff:
                continue
            for nss, key in (
                (self.ns, "source_pod"),
                (self.ns, "destination_pod"),
                (self.src_ns, "source_pod"),
                (self.dst_ns, "destination_pod"),
            ):
                for ns in nss:
                    for name in ff.get(key, ()):
                        parts = name.split("/")
                        if len(parts) > 1 and parts[0] and parts[0] != ns:
                            raise ValueError(f'namespace conflict: "{ns}" does not contain "{name}"')

    @staticmethod
    def _with_ns(ff: dict[str, list[Any]], key: str, nss: list[str]) -> None:
        if not ff.get(key):
            ff[key] = [""]
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
        if self.dst_ns:
            self._with_ns(left, "destination_pod", self.dst_ns)
            self._with_ns(right, "destination_pod", self.dst_ns)
        if self.src_ns:
            self._with_ns(left, "source_pod", self.src_ns)
            self._with_ns(right, "source_pod", self.src_ns)
        if self.ns:
            self._with_ns(left, "source_pod", self.ns)
            self._with_ns(right, "destination_pod", self.ns)
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
    elif flag in ("namespace", "from-namespace", "to-namespace"):
        if not value or "/" in value:
            raise ValueError(f"invalid namespace {value!r}")
        {"namespace": t.ns, "from-namespace": t.src_ns, "to-namespace": t.dst_ns}[flag].append(value)
    elif flag in ("ip", "from-ip", "to-ip"):
        _parse_ip(value)
        _two_sided(t, flag, "source_ip", "destination_ip", value)
    elif flag in ("label", "from-label", "to-label"):
        compile_label_selector(value)
        _two_sided(t, flag, "source_label", "destination_label", value)
    elif flag in ("port", "from-port", "to-port"):
        _parse_port(value)
        _two_sided(t, flag, "source_port", "destination_port", value)
    elif flag in ("identity", "from-identity", "to-identity"):
        _two_sided(t, flag, "source_identity", "destination_identity", parse_identity(value))
    elif flag == "verdict":
        t.add("verdict", _verdict_name(value))
    elif flag == "drop-reason-desc":
        t.add("drop_reason_desc", _drop_reason_name(value))
    elif flag == "traffic-direction":
        t.add("traffic_direction", _direction_name(value))
    elif flag == "protocol":
        t.add("protocol", _protocol(value))
    elif flag == "type":
        t.add("event_type", parse_event_type(value))
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


# --- matching (Hubble server filters) -----------------------------------------------------------

FlowPredicate = Callable[[Mapping[str, Any]], bool]


def _endpoint(flow: Mapping[str, Any], side: str) -> Mapping[str, Any]:
    ep = flow.get(side)
    return ep if isinstance(ep, dict) else {}


def _port_of(flow: Mapping[str, Any], which: str) -> int | None:
    l4 = flow.get("l4") or {}
    for key in ("TCP", "UDP", "SCTP"):
        body = l4.get(key)
        if isinstance(body, dict):
            return int(body.get(which, 0))
    return None


def _compile_field(key: str, values: Sequence[Any]) -> FlowPredicate:
    """One FlowFilter field -> predicate (values ORed)."""
    if key in ("source_ip", "destination_ip"):
        nets = [_parse_ip(str(v)) for v in values]
        ip_key = "source" if key == "source_ip" else "destination"

        def match_ip(f: Mapping[str, Any]) -> bool:
            raw = (f.get("IP") or {}).get(ip_key)
            if not raw:
                return False
            try:
                addr = ipaddress.ip_address(raw)
            except ValueError:
                return False
            return any(addr.version == n.version and addr in n for n in nets)

        return match_ip
    if key in ("source_pod", "destination_pod"):
        side = "source" if key == "source_pod" else "destination"
        pods = []
        for v in values:
            ns, prefix = parse_namespaced_name(str(v))
            if not ns and not prefix:
                raise ValueError(f"invalid filter, must be [namespace/][<name>], got {v!r}")
            pods.append((ns, prefix))

        def match_pod(f: Mapping[str, Any]) -> bool:
            ep = _endpoint(f, side)
            ens, name = ep.get("namespace", ""), ep.get("pod_name", "")
            if not ens and not name:
                return False
            return any((not p or name.startswith(p)) and ns == ens for ns, p in pods)

        return match_pod
    if key in ("source_label", "destination_label"):
        side = "source" if key == "source_label" else "destination"
        selectors = [compile_label_selector(str(v)) for v in values]

        def match_label(f: Mapping[str, Any]) -> bool:
            labels = [parse_label(lbl) for lbl in _endpoint(f, side).get("labels", ())]
            return any(s(labels) for s in selectors)

        return match_label
    if key in ("source_identity", "destination_identity"):
        side = "source" if key == "source_identity" else "destination"
        ids = frozenset(int(v) for v in values)
        return lambda f: int(_endpoint(f, side).get("identity", 0)) in ids
    if key in ("source_port", "destination_port"):
        which = "source_port" if key == "source_port" else "destination_port"
        ports = frozenset(_parse_port(str(v)) for v in values)

        def match_port(f: Mapping[str, Any]) -> bool:
            p = _port_of(f, which)
            return p is not None and p in ports

        return match_port
    if key == "verdict":
        verdicts = frozenset(_verdict_name(v) for v in values)
        return lambda f: f.get("verdict", "VERDICT_UNKNOWN") in verdicts
    if key == "drop_reason_desc":
        reasons = frozenset(_drop_reason_name(v) for v in values)
        return lambda f: f.get("drop_reason_desc", "DROP_REASON_UNKNOWN") in reasons
    if key == "traffic_direction":
        dirs = frozenset(_direction_name(v) for v in values)
        return lambda f: f.get("traffic_direction", "TRAFFIC_DIRECTION_UNKNOWN") in dirs
    if key == "reply":
        replies = frozenset(bool(v) for v in values)
        return lambda f: f.get("is_reply") is not None and bool(f.get("is_reply")) in replies
    if key == "protocol":
        protos = [_protocol(str(v)).lower() for v in values]

        def match_proto(f: Mapping[str, Any]) -> bool:
            l4 = f.get("l4") or {}
            l7 = f.get("l7") or {}
            for p in protos:
                if p == "icmp" and ("ICMPv4" in l4 or "ICMPv6" in l4):
                    return True
                if p in ("icmpv4", "icmpv6", "tcp", "udp", "sctp", "vrrp", "igmp"):
                    name = {"icmpv4": "ICMPv4", "icmpv6": "ICMPv6"}.get(p, p.upper())
                    if name in l4:
                        return True
                if p in L7_PROTOCOLS and p in l7:
                    return True
            return False

        return match_proto
    if key == "event_type":
        types = []
        for v in values:
            if not isinstance(v, Mapping):
                raise ValueError(f"invalid event_type filter {v!r}")
            types.append((int(v.get("type", 0)), bool(v.get("match_sub_type", False)), int(v.get("sub_type", 0))))

        def match_type(f: Mapping[str, Any]) -> bool:
            et = f.get("event_type")
            if not isinstance(et, dict):
                return False
            t, sub = int(et.get("type", 0)), int(et.get("sub_type", 0))
            return any((not ft or ft == t) and (not msub or fsub == sub) for ft, msub, fsub in types)

        return match_type
    raise ValueError(f"unsupported FlowFilter field {key!r}")


def compile_flow_filter(ff: Mapping[str, Any]) -> FlowPredicate:
    """A FlowFilter dict -> predicate on the flow object (all set fields must match)."""
    checks = []
    for key, values in ff.items():
        if values is None or values == []:
            continue
        if not isinstance(values, list):
            raise ValueError(f"FlowFilter field {key!r} must be a list")
        checks.append(_compile_field(key, values))
    return lambda f: all(c(f) for c in checks)


def _yaml_quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


class FlowFilter:
    """Allowlist/denylist of Hubble FlowFilters; :meth:`matches` applies them to response dicts."""

    __slots__ = ("allowlist", "denylist", "_allow", "_deny")

    def __init__(self, allowlist: Iterable[Mapping[str, Any]] = (), denylist: Iterable[Mapping[str, Any]] = ()):
        self.allowlist: list[dict[str, Any]] = [dict(f) for f in allowlist]
        self.denylist: list[dict[str, Any]] = [dict(f) for f in denylist]
        self._allow = [compile_flow_filter(f) for f in self.allowlist]
        self._deny = [compile_flow_filter(f) for f in self.denylist]

    @classmethod
    def from_args(cls, pairs: Iterable[tuple[str, str]]) -> FlowFilter:
        """Build from the ordered ``(flag, value)`` pairs of the command line, e.g.
        ``[("not", ""), ("namespace", "kube-system"), ("verdict", "DROPPED")]``. Flags may carry their dashes
        (``--from-pod``, ``-n``). ``ValueError`` names the offending flag."""
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
        return cls(allow.flow_filters(), deny.flow_filters())

    @classmethod
    def from_raw(
        cls, allowlist: Iterable[Mapping[str, Any] | str] = (), denylist: Iterable[Mapping[str, Any] | str] = ()
    ) -> FlowFilter:
        """From FlowFilter objects or their JSON text (``--allowlist`` / ``--denylist``)."""

        def load(items: Iterable[Mapping[str, Any] | str], what: str) -> list[dict[str, Any]]:
            out = []
            for it in items:
                if isinstance(it, str):
                    try:
                        it = json.loads(it)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"--{what}: invalid JSON FlowFilter: {e}") from None
                if not isinstance(it, Mapping):
                    raise ValueError(f"--{what}: a FlowFilter must be a JSON object")
                out.append(dict(it))
            return out

        allow, deny = load(allowlist, "allowlist"), load(denylist, "denylist")
        try:
            return cls(allow, deny)
        except ValueError as e:
            raise ValueError(f"--allowlist/--denylist: {e}") from None

    def __bool__(self) -> bool:
        return bool(self.allowlist or self.denylist)

    def raw_filters(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(allowlist, denylist) as FlowFilter dicts with protojson field names."""
        return [dict(f) for f in self.allowlist], [dict(f) for f in self.denylist]

    def print_raw_filters(self) -> str:
        """What ``--print-raw-filters`` prints: YAML with one JSON FlowFilter per list item."""
        out = []
        for name, items in (("allowlist", self.allowlist), ("denylist", self.denylist)):
            if items:
                out.append(f"{name}:")
                out.extend(f"    - {_yaml_quote(json.dumps(f, separators=(',', ':')))}" for f in items)
        return "\n".join(out) + ("\n" if out else "")

    def matches_flow(self, flow: Mapping[str, Any]) -> bool:
        """Apply to a bare Flow object."""
        if self._allow and not any(p(flow) for p in self._allow):
            return False
        return not any(p(flow) for p in self._deny)

    def matches(self, resp: Mapping[str, Any]) -> bool:
        """Apply to a ``GetFlowsResponse`` dict; non-flow responses (lost events) always pass."""
        flow = resp.get("flow")
        if not isinstance(flow, Mapping):
            return True
        return self.matches_flow(flow)
