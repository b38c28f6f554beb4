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

The flags are turned into FlowFilters in :mod:`.filter_flags`, their values parsed in :mod:`.filter_values`;
this module matches them. ``FlowFilter.raw_filters()`` returns the FlowFilter dicts (protojson field names),
which is what ``--print-raw-filters`` prints (:meth:`FlowFilter.print_raw_filters`); :meth:`FlowFilter.from_raw`
builds a filter from such dicts (``--allowlist`` / ``--denylist``).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from apiary.observe.hubble.filter_flags import flow_filters_from_args
from apiary.observe.hubble.filter_values import (
    L7_PROTOCOLS,
    compile_label_selector,
    direction_name,
    drop_reason_name,
    fqdn_regex,
    parse_http_status,
    parse_ip,
    parse_label,
    parse_name_filters,
    parse_port,
    parse_regex,
    protocol_name,
    verdict_name,
)

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


def _name_matches(filters: Sequence[tuple[str, str]], ns: str, name: str) -> bool:
    """Hubble's ``filterByNamespacedName``: the namespace equal and the name starting with the prefix."""
    if not ns and not name:
        return False
    return any((not p or name.startswith(p)) and fns == ns for fns, p in filters)


def _compile_field(key: str, values: Sequence[Any]) -> FlowPredicate:
    """One FlowFilter field -> predicate (values ORed)."""
    if key in ("source_ip", "destination_ip"):
        nets = [parse_ip(str(v)) for v in values]
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
        pods = parse_name_filters(list(values))

        def match_pod(f: Mapping[str, Any]) -> bool:
            ep = _endpoint(f, side)
            return _name_matches(pods, ep.get("namespace", ""), ep.get("pod_name", ""))

        return match_pod
    if key in ("source_service", "destination_service"):
        side = "source" if key == "source_service" else "destination"
        try:
            services = parse_name_filters(list(values))
        except ValueError as e:
            raise ValueError(f"invalid {side} service filter: {e}") from None
        svc_key = key

        def match_service(f: Mapping[str, Any]) -> bool:
            svc = f.get(svc_key)
            if not isinstance(svc, Mapping):
                return False
            return _name_matches(services, svc.get("namespace", ""), svc.get("name", ""))

        return match_service
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
        ports = frozenset(parse_port(str(v)) for v in values)

        def match_port(f: Mapping[str, Any]) -> bool:
            p = _port_of(f, which)
            return p is not None and p in ports

        return match_port
    if key == "verdict":
        verdicts = frozenset(verdict_name(v) for v in values)
        return lambda f: f.get("verdict", "VERDICT_UNKNOWN") in verdicts
    if key == "drop_reason_desc":
        reasons = frozenset(drop_reason_name(v) for v in values)
        return lambda f: f.get("drop_reason_desc", "DROP_REASON_UNKNOWN") in reasons
    if key == "traffic_direction":
        dirs = frozenset(direction_name(v) for v in values)
        return lambda f: f.get("traffic_direction", "TRAFFIC_DIRECTION_UNKNOWN") in dirs
    if key == "reply":
        replies = frozenset(bool(v) for v in values)
        return lambda f: f.get("is_reply") is not None and bool(f.get("is_reply")) in replies
    if key == "protocol":
        protos = [protocol_name(str(v)).lower() for v in values]

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
    if key in ("source_fqdn", "destination_fqdn"):
        rxs = [fqdn_regex(str(v)) for v in values]
        side = "source_names" if key == "source_fqdn" else "destination_names"
        return lambda f: any(rx.match(str(n).lower().removesuffix(".")) for n in f.get(side) or () for rx in rxs)
    if key in ("http_status_code", "http_method", "http_path", "http_url"):
        return _http_field(key, [str(v) for v in values])
    raise ValueError(f"unsupported FlowFilter field {key!r}")


def _http(f: Mapping[str, Any]) -> Mapping[str, Any] | None:
    l7 = f.get("l7")
    http = l7.get("http") if isinstance(l7, Mapping) else None
    return http if isinstance(http, Mapping) else None


def _http_field(key: str, values: list[str]) -> FlowPredicate:
    """Hubble's HTTP filters: status by code or prefix (``5+``, responses only), method (case-insensitive),
    path and URL by regex (search)."""
    if key == "http_status_code":
        codes = [parse_http_status(v) for v in values]

        def match_status(f: Mapping[str, Any]) -> bool:
            http = _http(f)
            code = str(http.get("code", "")) if http else ""
            return bool(code) and code != "0" and any(
                code.startswith(c[:-1]) if c.endswith("+") else code == c for c in codes)

        return match_status
    if key == "http_method":
        methods = {v.upper() for v in values}

        def match_method(f: Mapping[str, Any]) -> bool:
            http = _http(f)
            return http is not None and str(http.get("method", "")).upper() in methods

        return match_method
    patterns = [parse_regex(v) for v in values]
    path_only = key == "http_path"

    def match_url(f: Mapping[str, Any]) -> bool:
        http = _http(f)
        if http is None:
            return False
        url = str(http.get("url", ""))
        if path_only:
            url = urlsplit(url).path
        return any(p.search(url) for p in patterns)

    return match_url


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
        return cls(*flow_filters_from_args(pairs))

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
