"""Hubble FlowFilter values: the fields, label selectors (Kubernetes syntax with Cilium source prefixes),
and the parsers both the CLI flags (:mod:`.filter_flags`) and the matcher (:mod:`.filters`) use."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
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
    "source_service",
    "destination_ip",
    "destination_pod",
    "destination_label",
    "destination_service",
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
    "http_status_code",
    "http_method",
    "http_path",
    "http_url",
)

def parse_http_status(value: str) -> str:
    """Hubble's ``--http-status``: three digits (``404``) or one or two digits and ``+`` (``5+``, ``40+``)."""
    if re.fullmatch(r"[1-5][0-9]{2}|[1-5][0-9]?\+", value) is None:
        raise ValueError(f"invalid status code {value!r}: use e.g. 404, 5+ or 40+")
    return value


def parse_regex(value: str) -> re.Pattern[str]:
    try:
        return re.compile(value)
    except re.error as e:
        raise ValueError(f"invalid regular expression {value!r}: {e}") from None


def fqdn_regex(value: str) -> re.Pattern[str]:
    """Hubble's ``--fqdn`` pattern: case-insensitive, the trailing dot ignored, ``*`` any DNS characters
    (dots included), matched against a whole name of ``source_names``/``destination_names``."""
    pattern = value.strip().lower().removesuffix(".")
    if not pattern or any(c in pattern for c in "[]+{},"):
        raise ValueError(f"invalid fqdn filter {value!r}: the characters []+{{}}, are not allowed")
    return re.compile("^" + pattern.replace(".", "[.]").replace("*", "[-.0-9a-z]*") + "$")


L4_PROTOCOLS = ("icmp", "icmpv4", "icmpv6", "tcp", "udp", "sctp", "vrrp", "igmp")
L7_PROTOCOLS = ("dns", "http", "kafka")

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


def parse_name_filters(values: list[Any]) -> list[tuple[str, str]]:
    """``source_pod`` / ``source_service`` ... values -> (namespace, name prefix) pairs, as the Hubble server
    reads them (``filterByNamespacedName``)."""
    out = []
    for v in values:
        ns, prefix = parse_namespaced_name(str(v))
        if not ns and not prefix:
            raise ValueError(f"invalid filter, must be [namespace/][<name>], got {str(v)!r}")
        out.append((ns, prefix))
    return out


_DNS_CHARS = re.compile(r"[a-z0-9.\-]*")


def check_service_flag(value: str) -> None:
    """A ``--service`` / ``--from-service`` / ``--to-service`` value: ``[namespace/][<name prefix>]``.

    Stricter than the hubble CLI (which passes anything on and lets the server ignore what follows a second
    ``/``): Kubernetes namespaces and service names are lowercase DNS names, so anything else is a typo."""
    if parse_namespaced_name(value) == ("", ""):
        raise ValueError(f"invalid filter, must be [namespace/][<name>], got {value!r}")
    parts = value.split("/")
    if len(parts) > 2 or not all(_DNS_CHARS.fullmatch(p) for p in parts):
        raise ValueError(
            f"invalid service {value!r}: must be [namespace/][<name>] (lowercase letters, digits, '-' and '.')"
        )


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


def parse_ip(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        if "/" in text:
            return ipaddress.ip_network(text, strict=False)
        return ipaddress.ip_network(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError(f"invalid IP address or CIDR {text!r}") from None


def parse_port(text: str) -> int:
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


def verdict_name(value: str | int) -> str:
    if isinstance(value, int):
        if value in VERDICT:
            return VERDICT[value]
    elif value.upper() in VERDICT.values():
        return value.upper()
    raise ValueError(f"invalid --verdict value: {value}")


def drop_reason_name(value: str | int) -> str:
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


def direction_name(value: str | int) -> str:
    if isinstance(value, int):
        if value in (1, 2):
            return TRAFFIC_DIRECTION[value]
    elif value.lower() in ("ingress", "egress"):
        return value.upper()
    raise ValueError(f"{str(value).lower()}: invalid traffic direction, expected ingress or egress")


def protocol_name(value: str) -> str:
    if value.lower() not in L4_PROTOCOLS + L7_PROTOCOLS:
        raise ValueError(f"unknown protocol: {value!r}")
    return value
