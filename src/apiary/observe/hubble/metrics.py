"""Hubble's flow metrics (FORMATS.md §5.1) for apiary's flows, on a caller-provided registry.

Names, label names and label values are Hubble's (``pkg/hubble/metrics/{flow,drop,policy}``):

* ``hubble_flows_processed_total{protocol,type,subtype,verdict}`` — every flow; ``type`` is ``Trace``,
  ``Drop``, ``PolicyVerdict``, ``Capture``, ``L7`` or ``Unknown``; ``subtype`` the trace point name
  (``to-endpoint`` ...) for traces, ``DNS``/``HTTP``/``Kafka`` for L7, the type number for unknown types,
  else empty; ``verdict`` the enum name; ``protocol`` as Hubble's ``FlowProtocol`` (``TCP``, ``UDP``,
  ``ICMPv4`` ..., ``Unknown L4``, ``Unknown L7``, ``Unknown flow``).
* ``hubble_drop_total{reason,protocol}`` — flows with verdict DROPPED; ``reason`` is the
  ``drop_reason_desc`` enum name (``POLICY_DENIED``, ``POLICY_DENY`` ...).
* ``hubble_policy_verdicts_total{direction,match,action}`` — policy-verdict events whose source is not the
  host (identity 1): ``direction`` ``ingress``/``egress``, ``match`` the lower-cased match type
  (``l3-l4``, ``l4-only``, ``none`` ...), ``action`` the lower-cased verdict (``forwarded``, ``dropped``,
  ``audit``, ``redirected``).
* ``hubble_lost_events_total{source}`` — ``perf_event_ring_buffer``, ``observer_events_queue`` or
  ``hubble_ring_buffer``; and apiary's own ``l7_proxy_access_log`` (records HAProxy could not write to the
  agent: their L7 flows are missing; Hubble has no source for the proxy's losses).

* ``hubble_tcp_flags_total{flag,family}`` — forwarded TCP flows by flag (``SYN``, ``SYN-ACK``, ``FIN``,
  ``RST``); ``family`` ``IPv4``/``IPv6``.
* ``hubble_port_distribution_total{protocol,port}`` — forwarded, non-reply TCP/UDP/SCTP flows by destination
  port (ICMP: port ``0``).
* ``http`` (``pkg/hubble/metrics/http``, deprecated upstream): ``hubble_http_requests_total{method,protocol,
  reporter}`` per L7 HTTP REQUEST flow, ``hubble_http_responses_total{method,protocol,status,reporter}`` and
  the histogram ``hubble_http_request_duration_seconds{method,reporter}`` (``latency_ns``) per RESPONSE flow.
  ``httpV2``: ``hubble_http_requests_total{method,protocol,status,reporter}`` and the histogram, both per
  RESPONSE flow, whose source/destination context is the client's/server's (inverted, as Hubble's).
  ``reporter`` is ``client`` for egress flows, ``server`` for ingress ones, else ``unknown``.
* ``dns`` (``pkg/hubble/metrics/dns``): ``hubble_dns_queries_total{rcode,qtypes,ips_returned}`` per DNS query
  (``rcode`` empty, or ``Policy denied`` when the proxy dropped it), ``hubble_dns_responses_total`` (same
  labels, ``rcode`` Hubble's name of the code, e.g. ``Non-Existent Domain``) per answer and
  ``hubble_dns_response_types_total{type,qtypes}`` per answer record type; option ``ignoreAAAA``. They count
  the L7 DNS flows of the agent's DNS proxy.

Which of them are on, and their context labels, is Hubble's ``--hubble-metrics`` list
(:func:`parse_hubble_metrics`): ``name[:option=value;option=value]`` items, e.g.
``drop:sourceContext=namespace;destinationContext=pod|identity``. Context labels (``source``,
``destination``, or the ``labelsContext`` names) come first, as in Hubble. Their values are bounded by the
node's endpoints and identities: the unbounded contexts (``ip``, ``dns``) are refused.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.metrics_core import Metric

from apiary.observe.hubble.enums import (
    LOST_EVENT_SOURCE,
    MSG_ACCESS_LOG,
    MSG_CAPTURE,
    POLICY_MATCH_TYPES,
    RESERVED_IDENTITIES,
    TRACE_POINT_NAMES,
)
from apiary.observe.hubble.l7 import DnsExchange
from apiary.observe.hubble.raw import CT_REPLY, MSG_DROP, MSG_POLICY_VERDICT, MSG_TRACE, FlowMsg

_L4_PROTOCOLS = ("TCP", "UDP", "ICMPv4", "ICMPv6", "SCTP", "VRRP", "IGMP")


def flow_protocol(flow: Mapping[str, Any]) -> str:
    """Hubble's ``v1.FlowProtocol``."""
    t = int((flow.get("event_type") or {}).get("type", 0))
    if t == MSG_ACCESS_LOG:
        l7 = flow.get("l7")
        if isinstance(l7, dict):
            for key, name in (("dns", "DNS"), ("http", "HTTP"), ("kafka", "Kafka")):
                if key in l7:
                    return name
        return "Unknown L7"
    if t in (MSG_DROP, MSG_TRACE, MSG_POLICY_VERDICT, MSG_CAPTURE):
        l4 = flow.get("l4")
        if isinstance(l4, dict):
            for name in _L4_PROTOCOLS:
                if name in l4:
                    return name
        return "Unknown L4"
    return "Unknown flow"


def flow_type_labels(flow: Mapping[str, Any]) -> tuple[str, str]:
    """(type, subtype) labels of ``hubble_flows_processed_total``."""
    et = flow.get("event_type") or {}
    t, sub = int(et.get("type", 0)), int(et.get("sub_type", 0))
    if t == MSG_ACCESS_LOG:
        l7 = flow.get("l7")
        l7 = l7 if isinstance(l7, dict) else {}
        subtype = next((n for k, n in (("dns", "DNS"), ("http", "HTTP"), ("kafka", "Kafka")) if k in l7), "")
        return "L7", subtype
    if t == MSG_DROP:
        return "Drop", ""
    if t == MSG_CAPTURE:
        return "Capture", ""
    if t == MSG_TRACE:
        return "Trace", TRACE_POINT_NAMES.get(sub & 0xFF, "")
    if t == MSG_POLICY_VERDICT:
        return "PolicyVerdict", ""
    return "Unknown", str(t)


# ---------------------------------------------------------------------------- --hubble-metrics
# Hubble's handler names apiary serves; the default list is the packet-level ones (Hubble's default: none)
HANDLERS = ("flow", "drop", "tcp", "port-distribution", "policy", "http", "httpV2", "dns")
DEFAULT_METRICS = ("flow", "drop", "tcp", "port-distribution", "policy")
# sourceContext / destinationContext values (first non-empty of `a|b` wins): each bounded by endpoints/identities
CONTEXTS = ("identity", "namespace", "pod", "pod-name", "reserved-identity", "app")
UNBOUNDED_CONTEXTS = ("ip", "dns", "workload", "workload-name")
LABELS_CONTEXT = tuple(
    f"{side}_{what}" for side in ("source", "destination") for what in ("namespace", "pod", "app")
) + ("traffic_direction",)
_NOT_HERE = {"kafka", "icmp", "flows-to-world"}
# handler-specific flag options (Hubble's option keys are case-insensitive)
_CONTEXT_OPTIONS = ("sourceContext", "destinationContext", "labelsContext")
_FLAG_OPTIONS = {"dns": ("ignoreAAAA",)}
_UNBOUNDED_OPTIONS = {"dns": ("query",), "http": ("exemplars",), "httpV2": ("exemplars",)}


@dataclass(frozen=True)
class MetricSpec:
    """One item of ``--hubble-metrics``: a handler and its context options."""

    name: str
    source_context: tuple[str, ...] = ()
    destination_context: tuple[str, ...] = ()
    labels_context: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()  # handler options without a value that are on (dns: ignoreAAAA)

    def context_labels(self) -> list[str]:
        out = ["source"] if self.source_context else []
        out += ["destination"] if self.destination_context else []
        return out + list(self.labels_context)


def _context(item: str, opt: str, value: str) -> tuple[str, ...]:
    alts = tuple(value.split("|"))
    for a in alts:
        if a in UNBOUNDED_CONTEXTS:
            raise ValueError(
                f"--hubble-metrics {item!r}: {opt}={a} is not served (its label values are not bounded here); "
                f"use one of {'|'.join(CONTEXTS)}"
            )
        if a not in CONTEXTS:
            raise ValueError(f"--hubble-metrics {item!r}: {opt}: unknown context {a!r} (one of {'|'.join(CONTEXTS)})")
    return alts


def parse_hubble_metrics(items: Iterable[str]) -> dict[str, MetricSpec]:
    """Hubble's metric list (``hubble.metrics.enabled``): whitespace-separated ``name[:opt=value;opt=value]``.

    Raises ValueError naming the item and the reason for an unknown handler or option, or a repeated one."""
    out: dict[str, MetricSpec] = {}
    for item in (w for text in items for w in text.split()):
        name, _, opts = item.partition(":")
        if name not in HANDLERS:
            why = "not served by apiary yet" if name in _NOT_HERE else "unknown metric"
            raise ValueError(f"--hubble-metrics {item!r}: {why}; apiary serves {', '.join(HANDLERS)}")
        if name in out:
            raise ValueError(f"--hubble-metrics {item!r}: {name} is listed twice")
        src: tuple[str, ...] = ()
        dst: tuple[str, ...] = ()
        lbl: tuple[str, ...] = ()
        flags: list[str] = []
        for opt in filter(None, opts.split(";")):
            key, eq, value = opt.partition("=")
            flag = next((f for f in _FLAG_OPTIONS.get(name, ()) if f.lower() == key.lower()), None)
            if flag is not None:
                if eq and value.lower() not in ("true", "false"):
                    raise ValueError(f"--hubble-metrics {item!r}: option {key!r} is a flag (no value, or true/false)")
                if not eq or value.lower() == "true":
                    flags.append(flag)
                continue
            if key.lower() in (o.lower() for o in _UNBOUNDED_OPTIONS.get(name, ())):
                raise ValueError(
                    f"--hubble-metrics {item!r}: option {key!r} is not served "
                    "(its label values are not bounded here, or apiary's flows carry no trace context)"
                )
            if not eq or not value:
                raise ValueError(f"--hubble-metrics {item!r}: option {opt!r} needs a value (option=value)")
            if key == "sourceContext":
                src = _context(item, key, value)
            elif key == "destinationContext":
                dst = _context(item, key, value)
            elif key == "labelsContext":
                lbl = tuple(value.split(","))
                bad = [x for x in lbl if x not in LABELS_CONTEXT]
                if bad:
                    raise ValueError(
                        f"--hubble-metrics {item!r}: labelsContext: unknown label {bad[0]!r} "
                        f"(one of {', '.join(LABELS_CONTEXT)})"
                    )
            else:
                known = ", ".join((*_CONTEXT_OPTIONS, *_FLAG_OPTIONS.get(name, ())))
                raise ValueError(f"--hubble-metrics {item!r}: unknown option {key!r} ({known})")
        if lbl and (src or dst):
            raise ValueError(
                f"--hubble-metrics {item!r}: labelsContext cannot be combined with source/destinationContext"
            )
        out[name] = MetricSpec(name, src, dst, lbl, tuple(flags))
    if "http" in out and "httpV2" in out:
        raise ValueError("--hubble-metrics: http and httpV2 serve the same metric names; list one of them")
    return out


def _endpoint_value(ep: Mapping[str, Any], ctx: str) -> str:
    ns, pod = str(ep.get("namespace") or ""), str(ep.get("pod_name") or "")
    if ctx == "namespace":
        return ns
    if ctx == "pod":
        return f"{ns}/{pod}" if pod else ""
    if ctx == "pod-name":
        return pod
    ident = int(ep.get("identity") or 0)
    if ctx == "identity":
        return str(ident) if ident else ""
    if ctx == "reserved-identity":
        name = RESERVED_IDENTITIES.get(ident)
        return f"reserved:{name}" if name else ""
    # app: the k8s app label
    for lab in ep.get("labels") or ():
        k, _, v = str(lab).partition("=")
        if k.rpartition(":")[2] in ("app", "app.kubernetes.io/name"):
            return v
    return ""


def context_values(spec: MetricSpec, flow: Mapping[str, Any]) -> list[str]:
    """The context label values of ``flow`` for ``spec`` (in :meth:`MetricSpec.context_labels` order)."""
    src = flow.get("source") or {}
    dst = flow.get("destination") or {}
    out: list[str] = []
    for ep, alts in ((src, spec.source_context), (dst, spec.destination_context)):
        if alts:
            out.append(next((v for v in (_endpoint_value(ep, a) for a in alts) if v), ""))
    for name in spec.labels_context:
        if name == "traffic_direction":
            out.append(str(flow.get("traffic_direction", "TRAFFIC_DIRECTION_UNKNOWN")).lower())
        else:
            side, _, what = name.partition("_")
            out.append(_endpoint_value(src if side == "source" else dst, "pod-name" if what == "pod" else what))
    return out


_TCP_FLAGS: tuple[tuple[str, Callable[[Mapping[str, Any]], bool]], ...] = (
    ("SYN", lambda f: bool(f.get("SYN")) and not f.get("ACK")),
    ("SYN-ACK", lambda f: bool(f.get("SYN")) and bool(f.get("ACK"))),
    ("FIN", lambda f: bool(f.get("FIN"))),
    ("RST", lambda f: bool(f.get("RST"))),
)


class _Family:
    """A Hubble counter (or histogram) and its context options. Its children are kept by label values:
    ``Counter.labels`` takes a lock and checks the labels on every call, which per flow costs more than the rest
    of counting."""

    __slots__ = ("counter", "spec", "children", "has_context")

    def __init__(self, counter: Counter | Histogram, spec: MetricSpec) -> None:
        self.counter, self.spec = counter, spec
        self.children: dict[tuple[str, ...], Any] = {}
        self.has_context = bool(spec.context_labels())

    def child(self, flow: Mapping[str, Any], values: tuple[str, ...]) -> Any:
        key = (*context_values(self.spec, flow), *values) if self.has_context else values
        child = self.children.get(key)
        if child is None:
            child = self.children[key] = self.counter.labels(*key)
        return child

    def remove_pod(self, namespace: str, name: str) -> int:
        """Remove the series whose pod context (``pod``, ``pod-name``, ``source_pod``/``destination_pod``) is
        that pod; how many went."""
        values = {f"{namespace}/{name}", name}
        spec, positions = self.spec, []
        for i, label in enumerate(spec.context_labels()):
            alts = spec.source_context if label == "source" else spec.destination_context if label == "destination" \
                else ("pod-name",) if label in ("source_pod", "destination_pod") else ()
            if "pod" in alts or "pod-name" in alts:
                positions.append(i)
        gone = [key for key in self.children if any(key[i] in values for i in positions)]
        for key in gone:
            del self.children[key]
            self.counter.remove(*key)
        return len(gone)

    def inc(self, flow: Mapping[str, Any], *values: str) -> None:
        self.child(flow, values).inc()

    def observe(self, flow: Mapping[str, Any], amount: float, *values: str) -> None:
        self.child(flow, values).observe(amount)


# Hubble's names of DNS response codes (pkg/hubble/metrics/dns)
DNS_RCODE_NAMES: dict[int, str] = {
    0: "No Error", 1: "Format Error", 2: "Server Failure", 3: "Non-Existent Domain", 4: "Not Implemented",
    5: "Query Refused", 6: "Name Exists when it should not", 7: "RR Set Exists when it should not",
    8: "RR Set that should exist does not", 9: "Not Authorized", 10: "Name not contained in zone",
    11: "DSO-TYPE Not Implemented", 16: "Bad OPT Version", 17: "Key not recognized",
    18: "Signature out of time window", 19: "Bad TKEY Mode", 20: "Duplicate key name",
    21: "Algorithm not supported", 22: "Bad Truncation", 23: "Bad/missing Server Cookie",
}
_REPORTER = {"EGRESS": "client", "INGRESS": "server"}


def _int(v: Any) -> int:
    try:
        return int(v or 0)
    except (TypeError, ValueError):
        return 0


class _L7Metrics:
    """Hubble's ``http``/``httpV2`` and ``dns`` handlers over L7 flows."""

    def __init__(self, registry: CollectorRegistry, enabled: Mapping[str, MetricSpec]) -> None:
        def family(
            handler: str, cls: type[Counter] | type[Histogram], name: str, doc: str, labels: list[str]
        ) -> _Family:
            spec = enabled[handler]
            return _Family(cls(name, doc, spec.context_labels() + labels, namespace="hubble", registry=registry), spec)

        self.http_v2 = "httpV2" in enabled
        self.http_requests: _Family | None = None
        self.http_responses: _Family | None = None
        self.http_duration: _Family | None = None
        http = "httpV2" if self.http_v2 else "http"
        if http in enabled:
            req_labels = ["method", "protocol", *(["status"] if self.http_v2 else []), "reporter"]
            self.http_requests = family(http, Counter, "http_requests_total", "Count of HTTP requests", req_labels)
            if not self.http_v2:
                self.http_responses = family(
                    http, Counter, "http_responses_total", "Count of HTTP responses",
                    ["method", "protocol", "status", "reporter"],
                )
            self.http_duration = family(
                http, Histogram, "http_request_duration_seconds", "Quantiles of HTTP request duration in seconds",
                ["method", "reporter"],
            )
        self.dns_queries: _Family | None = None
        self.dns_responses: _Family | None = None
        self.dns_types: _Family | None = None
        self.dns_ignore_aaaa = False
        if "dns" in enabled:
            labels = ["rcode", "qtypes", "ips_returned"]
            self.dns_queries = family("dns", Counter, "dns_queries_total", "Number of DNS queries observed", labels)
            self.dns_responses = family("dns", Counter, "dns_responses_total", "Number of DNS queries observed", labels)
            self.dns_types = family(
                "dns", Counter, "dns_response_types_total", "Number of DNS queries observed", ["type", "qtypes"]
            )
            self.dns_ignore_aaaa = "ignoreAAAA" in enabled["dns"].flags

    def observe_http(self, flow: Mapping[str, Any]) -> None:
        """The ``http``/``httpV2`` handler's counters and histogram for an L7 flow (none but HTTP's)."""
        l7 = flow.get("l7")
        if not isinstance(l7, Mapping) or self.http_requests is None:
            return
        http = l7.get("http")
        if isinstance(http, Mapping):
            self._http(flow, str(l7.get("type", "")), http, _int(l7.get("latency_ns")))

    def dns_children(self, flow: Mapping[str, Any]) -> list[Any]:
        """The ``dns`` handler's counter children an L7 flow increments by one (none but DNS's)."""
        l7 = flow.get("l7")
        dns = l7.get("dns") if isinstance(l7, Mapping) else None
        if not isinstance(dns, Mapping) or self.dns_queries is None:
            return []
        assert self.dns_responses is not None and self.dns_types is not None
        qtypes_l = [str(q) for q in dns.get("qtypes") or ()]
        if self.dns_ignore_aaaa and qtypes_l == ["AAAA"]:
            return []
        qtypes, ips = ",".join(qtypes_l), str(len(dns.get("ips") or ()))
        if flow.get("verdict") == "DROPPED":
            return [self.dns_queries.child(flow, ("Policy denied", qtypes, ips))]
        if not flow.get("is_reply"):
            return [self.dns_queries.child(flow, ("", qtypes, ips))]
        out = [self.dns_responses.child(flow, (DNS_RCODE_NAMES.get(_int(dns.get("rcode")), ""), qtypes, ips))]
        out += (self.dns_types.child(flow, (str(rrtype), qtypes)) for rrtype in dns.get("rrtypes") or ())
        return out

    def _http(self, flow: Mapping[str, Any], typ: str, http: Mapping[str, Any], latency_ns: int) -> None:
        assert self.http_requests is not None and self.http_duration is not None
        reporter = _REPORTER.get(str(flow.get("traffic_direction", "")), "unknown")
        method, protocol = str(http.get("method", "")), str(http.get("protocol", ""))
        if typ == "REQUEST" and not self.http_v2:
            self.http_requests.inc(flow, method, protocol, reporter)
        if typ != "RESPONSE":
            return
        status = str(_int(http.get("code")))
        if self.http_v2:  # the response's context labels are the request's: source = client
            flow = {**flow, "source": flow.get("destination") or {}, "destination": flow.get("source") or {}}
            self.http_requests.inc(flow, method, protocol, status, reporter)
        elif self.http_responses is not None:
            self.http_responses.inc(flow, method, protocol, status, reporter)
        self.http_duration.observe(flow, latency_ns / 1e9, method, reporter)


_MEMO_MAX = 4096  # FlowMetrics.observe_msg's and observe_l7's kinds of flows kept


class Materializable(Protocol):
    """A flow built on first read (``observe/hubble/builder.DeferredFlow``, ``L7HttpFlow``, ``L7DnsFlow``)."""

    def materialize(self) -> Mapping[str, Any]: ...


def http_kind(allowed: bool) -> tuple[object, ...]:
    """:meth:`FlowMetrics.observe_l7`'s key of an HTTP exchange's flows: the counters but the ``http`` handler's
    read only their protocol and verdict (an L7 flow's drop reason is unknown; it has no TCP flags nor counted
    port, and is no policy verdict)."""
    return ("http", allowed)


def dns_kind(x: DnsExchange, response: bool) -> tuple[object, ...]:
    """:meth:`FlowMetrics.observe_l7`'s key of a DNS query's REQUEST or RESPONSE flow: its verdict, and what the
    ``dns`` handler reads (the query types, the rcode, how many IPs, the record types)."""
    return ("dns", x.allowed, response, x.qtypes, x.rcode, len(x.ips), x.rrtypes)


def _built(ev: Mapping[str, Any] | Materializable) -> Mapping[str, Any]:
    """The flow's ``GetFlowsResponse`` (built now if it was not yet)."""
    return ev if isinstance(ev, Mapping) else ev.materialize()


POD_SERIES_TTL_S = 60.0  # Hubble deletes the series of a pod a minute after the pod (FORMATS §11.2)

# apiary's own hubble_lost_events_total source: the access-log records HAProxy dropped
L7_LOST_SOURCE = "l7_proxy_access_log"


class _Flush:
    """A collector with no metrics whose collect() first adds what :class:`FlowMetrics` counted."""

    def __init__(self, flush: Callable[[], None]) -> None:
        self._flush = flush

    def collect(self) -> Iterator[Metric]:
        self._flush()
        return iter(())


class FlowMetrics:
    """Hubble's counters on ``registry`` (never the global one); feed every response to :meth:`observe`.

    ``enabled`` is the parsed ``--hubble-metrics`` list (default: every handler, no context labels);
    ``hubble_lost_events_total`` is always on, as in Hubble when any metric is."""

    def __init__(self, registry: CollectorRegistry, enabled: Mapping[str, MetricSpec] | None = None) -> None:
        self.registry = registry
        self.enabled = dict(enabled) if enabled is not None else parse_hubble_metrics(DEFAULT_METRICS)
        # observe_msg, observe_l7: kind -> [the counter children its flows move, count not yet added to them]; the
        # counts are added when the registry is read (this collector is registered before the families, so its
        # collect() runs first), before the memo is emptied, and before a pod's series go
        self._memo: dict[tuple[object, ...], list[Any]] = {}
        registry.register(_Flush(self.flush))

        def counter(handler: str, name: str, doc: str, labels: list[str]) -> _Family | None:
            spec = self.enabled.get(handler)
            if spec is None:
                return None
            c = Counter(name, doc, spec.context_labels() + labels, namespace="hubble", registry=registry)
            return _Family(c, spec)

        self.flows_processed = counter(
            "flow", "flows_processed_total", "Total number of flows processed",
            ["protocol", "type", "subtype", "verdict"],
        )
        self.drops = counter("drop", "drop_total", "Number of drops", ["reason", "protocol"])
        self.policy_verdicts = counter(
            "policy", "policy_verdicts_total", "Total number of Cilium network policy verdicts",
            ["direction", "match", "action"],
        )
        self.tcp_flags = counter("tcp", "tcp_flags_total", "TCP flag occurrences", ["flag", "family"])
        self.ports = counter(
            "port-distribution", "port_distribution_total", "Numbers of packets distributed by destination port",
            ["protocol", "port"],
        )
        self.lost_events = Counter(
            "lost_events_total", "Number of lost events", ["source"], namespace="hubble", registry=registry
        )
        for src in ("perf_event_ring_buffer", "observer_events_queue", "hubble_ring_buffer", L7_LOST_SOURCE):
            self.lost_events.labels(source=src)  # every source shows, at 0 until something is lost
        self.l7 = _L7Metrics(registry, self.enabled) if {"http", "httpV2", "dns"} & set(self.enabled) else None
        # observe_msg, observe_l7: the counter children by the fields they follow from (none with context labels)
        self._has_context = any(spec.context_labels() for name, spec in self.enabled.items()
                                if name in ("flow", "drop", "tcp", "port-distribution", "policy"))
        # observe_l7: the L7 protocols whose flows are counted by kind: not HTTP with the http handler on (its
        # histogram observes each flow's latency), nor DNS with the dns handler's context labels
        http = self.enabled.get("httpV2") or self.enabled.get("http")
        dns = self.enabled.get("dns")
        self._l7_by_kind: dict[object, bool] = {
            "http": not self._has_context and http is None,
            "dns": not self._has_context and not (dns and dns.context_labels()),
        }
        # forget_pod: (when, namespace, name) of deleted pods whose series go then; appended from any thread
        self._doomed: collections.deque[tuple[float, str, str]] = collections.deque()

    def forget_pod(self, namespace: str, name: str, now: float) -> None:
        """The pod is gone: its series go :data:`POD_SERIES_TTL_S` later (``now``: ``time.monotonic()``), with
        :meth:`sweep`. Safe from any thread."""
        self._doomed.append((now + POD_SERIES_TTL_S, namespace, name))

    def flush(self) -> None:
        """Add the counts :meth:`_observe_kind` kept in the memo to their counter children. On the event-loop
        thread."""
        for entry in self._memo.values():
            children, n = entry
            if n:
                entry[1] = 0
                for child in children:
                    child.inc(n)

    def sweep(self, now: float) -> int:
        """Remove the series of the pods whose time came; how many series went. On the event-loop thread."""
        removed = 0
        if self._doomed and self._doomed[0][0] <= now:
            self.flush()  # what a pod's flows counted goes to its series before they are removed
        while self._doomed and self._doomed[0][0] <= now:
            _, namespace, name = self._doomed.popleft()
            fams = [self.flows_processed, self.drops, self.policy_verdicts, self.tcp_flags, self.ports,
                    *self._l7_families()]
            removed += sum(f.remove_pod(namespace, name) for f in fams if f is not None and f.has_context)
        if removed:
            self._memo.clear()
        return removed

    def lost(self, source: str | int, count: int) -> None:
        """Count ``count`` lost events from a LostEventSource (name or number)."""
        name = LOST_EVENT_SOURCE.get(source, str(source)) if isinstance(source, int) else source
        if count > 0:
            self.lost_events.labels(source=name.lower()).inc(count)

    def _l7_families(self) -> list[_Family]:
        """The L7 handlers' families (the packet-level ones are counted through :meth:`_children`)."""
        if self.l7 is None:
            return []
        fams = [self.l7.http_requests, self.l7.http_responses, self.l7.http_duration, self.l7.dns_queries,
                self.l7.dns_responses, self.l7.dns_types]
        return [f for f in fams if f is not None]

    def observe(self, resp: Mapping[str, Any]) -> None:
        """Account one ``GetFlowsResponse`` dict (a flow or a ``lost_events`` notice)."""
        le = resp.get("lost_events")
        if isinstance(le, dict):
            self.lost(str(le.get("source", "UNKNOWN_LOST_EVENT_SOURCE")), int(le.get("num_events_lost", 0)))
            return
        flow = resp.get("flow")
        if not isinstance(flow, dict):
            return
        for child in self._children(flow):
            child.inc()
        if self.l7 is not None and int((flow.get("event_type") or {}).get("type", 0)) == MSG_ACCESS_LOG:
            self.l7.observe_http(flow)

    def observe_msg(self, msg: FlowMsg, ev: Mapping[str, Any] | Materializable) -> None:
        """:meth:`observe` of a datapath message's flow (``ev``: the flow, or what builds it), building the flow
        only for the first message of its kind: what the counters read of a flow (type, verdict, protocol, drop
        reason, flags, direction, match, identity 1, destination port) follows from the message's fields, so the
        counters a flow moves are kept by those fields. Context labels read the endpoints, which change: with
        any on, each flow is built and counted."""
        if self._has_context:
            self.observe(_built(ev))
            return
        reply = msg.kind == MSG_TRACE and msg.ct_state == CT_REPLY  # a reply's port is the client's: not counted
        key = (msg.kind, msg.sub_type, msg.verdict, msg.proto, msg.tcp_flags, msg.ct_state, msg.egress,
               msg.match_type, msg.rule_id != 0, msg.src_identity, msg.dst_identity, 0 if reply else msg.dport,
               ":" in msg.src_ip or ":" in msg.dst_ip)
        self._observe_kind(key, ev)

    def observe_l7(self, key: tuple[object, ...], ev: Mapping[str, Any] | Materializable) -> None:
        """:meth:`observe` of an L7 flow (or what builds it), built only for the first of its kind: ``key`` holds
        the fields its counters read (:func:`http_kind`, :func:`dns_kind`; its first, the protocol). With the
        packet-level handlers' context labels on, the ``dns`` handler's for a DNS flow, or the ``http`` handler for
        an HTTP flow (a histogram of each one's latency), each flow is built and counted."""
        if not self._l7_by_kind[key[0]]:
            self.observe(_built(ev))
            return
        self._observe_kind(key, ev)  # its protocol's name first: no message's kind (observe_msg's, a number first)

    def observe_l7_many(self, key: tuple[object, ...], evs: Sequence[Mapping[str, Any] | Materializable]) -> None:
        """:meth:`observe_l7` of each of ``evs``, all of kind ``key``: once its kind is known, one addition."""
        if not evs:
            return
        if not self._l7_by_kind[key[0]]:
            for ev in evs:
                self.observe(_built(ev))
            return
        got = self._memo.get(key)
        if got is None:
            self._observe_kind(key, evs[0])
            got = self._memo[key]
            got[1] += len(evs) - 1
        else:
            got[1] += len(evs)

    def _observe_kind(self, key: tuple[object, ...], ev: Mapping[str, Any] | Materializable) -> None:
        got = self._memo.get(key)
        if got is not None:  # counted here, added later (a child's inc() takes a lock: ~1 µs a flow for 3-5)
            got[1] += 1
            return
        flow = _built(ev).get("flow")
        children = self._children(flow) if isinstance(flow, dict) else []
        if len(self._memo) >= _MEMO_MAX:  # a port scan must not grow it without bound
            self.flush()
            self._memo.clear()
        self._memo[key] = [children, 1]

    def _children(self, flow: Mapping[str, Any]) -> list[Any]:
        """The counter children one L3/L4 or L7 flow increments by one (the ``http`` handler's aside)."""
        out: list[Any] = self.l7.dns_children(flow) if self.l7 is not None else []
        protocol = flow_protocol(flow)
        verdict = str(flow.get("verdict", "VERDICT_UNKNOWN"))
        typ, subtype = flow_type_labels(flow)
        if self.flows_processed:
            out.append(self.flows_processed.child(flow, (protocol, typ, subtype, verdict)))
        if self.drops and verdict == "DROPPED":
            out.append(self.drops.child(flow, (str(flow.get("drop_reason_desc", "DROP_REASON_UNKNOWN")), protocol)))
        if self.policy_verdicts and typ == "PolicyVerdict" and int((flow.get("source") or {}).get("identity", 0)) != 1:
            direction = str(flow.get("traffic_direction", "TRAFFIC_DIRECTION_UNKNOWN")).lower()
            match = POLICY_MATCH_TYPES.get(int(flow.get("policy_match_type", 0)), "unknown").lower()
            out.append(self.policy_verdicts.child(flow, (direction, match, verdict.lower())))
        if verdict != "FORWARDED":
            return out
        l4 = flow.get("l4") or {}
        if self.tcp_flags and "TCP" in l4:
            flags = l4["TCP"].get("flags")
            if flags:  # L7 flows have none
                family = str((flow.get("IP") or {}).get("ipVersion", "IP_NOT_USED"))
                out.extend(self.tcp_flags.child(flow, (name, family)) for name, has in _TCP_FLAGS if has(flags))
        if self.ports and not flow.get("is_reply") and protocol in ("TCP", "UDP", "SCTP", "ICMPv4", "ICMPv6"):
            port = (l4.get(protocol) or {}).get("destination_port", 0)
            out.append(self.ports.child(flow, (protocol, str(port))))
        return out
