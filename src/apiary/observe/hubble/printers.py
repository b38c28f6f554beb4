"""Hubble's text printers: ``hubble observe -o compact|table|dict`` lines for ``GetFlowsResponse`` dicts."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from apiary.observe.clock import parse_rfc3339_ns
from apiary.observe.colour import paint
from apiary.observe.hubble.enums import (
    MSG_CAPTURE,
    MSG_TRACE_SOCK,
    drop_reason_text,
    fmt_identity,
    policy_match_name,
    trace_point_name,
)
from apiary.observe.hubble.raw import MSG_DROP, MSG_POLICY_VERDICT, MSG_TRACE

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")

TIME_FORMATS = (
    "StampMilli",
    "YearMonthDay",
    "YearMonthDayHour",
    "YearMonthDayHourMinute",
    "RFC3339",
    "RFC3339Milli",
    "RFC3339Micro",
    "RFC3339Nano",
    "RFC1123Z",
)


def format_time(ns: int | None, time_format: str = "StampMilli") -> str:
    """Format Unix ns (UTC) with one of Hubble's ``--time-format`` layouts; ``N/A`` when ``ns`` is None."""
    if time_format not in TIME_FORMATS:
        raise ValueError(f"--time-format: unknown layout {time_format!r} (known: {', '.join(TIME_FORMATS)})")
    if ns is None:
        return "N/A"
    sec, frac = divmod(ns, 1_000_000_000)
    t = datetime.fromtimestamp(sec, UTC)
    hms = f"{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
    ymd = f"{t.year:04d}-{t.month:02d}-{t.day:02d}"
    if time_format == "StampMilli":
        return f"{_MONTHS[t.month - 1]} {t.day:>2} {hms}.{frac // 1_000_000:03d}"
    if time_format == "YearMonthDay":
        return ymd
    if time_format == "YearMonthDayHour":
        return f"{ymd}T{t.hour:02d}Z"
    if time_format == "YearMonthDayHourMinute":
        return f"{ymd}T{t.hour:02d}:{t.minute:02d}Z"
    if time_format == "RFC3339":
        return f"{ymd}T{hms}Z"
    if time_format == "RFC3339Milli":
        return f"{ymd}T{hms}.{frac // 1_000_000:03d}Z"
    if time_format == "RFC3339Micro":
        return f"{ymd}T{hms}.{frac // 1_000:06d}Z"
    if time_format == "RFC3339Nano":
        digits = f"{frac:09d}".rstrip("0")
        return f"{ymd}T{hms}{'.' + digits if digits else ''}Z"
    # RFC1123Z
    return f"{_DAYS[t.weekday()]}, {t.day:02d} {_MONTHS[t.month - 1]} {t.year:04d} {hms} +0000"


def _time_ns(value: Any) -> int | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return parse_rfc3339_ns(value)
    except ValueError:
        return None


def _flow_of(resp: Mapping[str, Any]) -> dict[str, Any]:
    f = resp.get("flow")
    return f if isinstance(f, dict) else {}


def _ports(f: Mapping[str, Any]) -> tuple[str, str]:
    l4 = f.get("l4") or {}
    for key in ("TCP", "UDP", "SCTP"):
        body = l4.get(key)
        if isinstance(body, dict):
            return str(body.get("source_port", 0)), str(body.get("destination_port", 0))
    return "", ""


def _join_path(ns: str, name: str) -> str:
    return f"{ns}/{name}" if ns else name


def _hostname(ip: str, port: str, ns: str, pod: str, svc: str, names: list[str], translate: bool, color: bool) -> str:
    host = ip
    if translate:
        if pod:
            host = _join_path(ns, pod)
        elif svc:
            host = _join_path(ns, svc)
        elif names:
            host = ",".join(names)
    if port and port != "0":
        if ":" in host:
            host = f"[{host}]"
        return f"{host}:{paint(port, 'yellow', color)}"
    return host


def host_names(f: Mapping[str, Any], color: bool = False, ip_translation: bool = True) -> tuple[str, str]:
    """Hubble's SOURCE/DESTINATION: ``namespace/pod[:port]``, service, DNS names or the IP."""
    ip = f.get("IP")
    if not isinstance(ip, dict):
        eth = f.get("ethernet")
        if isinstance(eth, dict):
            return paint(eth.get("source", ""), "cyan", color), paint(eth.get("destination", ""), "cyan", color)
        return "", ""
    src_ep, dst_ep = f.get("source") or {}, f.get("destination") or {}
    src_ns, src_pod = src_ep.get("namespace", ""), src_ep.get("pod_name", "")
    dst_ns, dst_pod = dst_ep.get("namespace", ""), dst_ep.get("pod_name", "")
    src_svc = dst_svc = ""
    if isinstance(f.get("source_service"), dict):
        src_ns, src_svc = f["source_service"].get("namespace", ""), f["source_service"].get("name", "")
    if isinstance(f.get("destination_service"), dict):
        dst_ns, dst_svc = f["destination_service"].get("namespace", ""), f["destination_service"].get("name", "")
    sport, dport = _ports(f)
    src = _hostname(
        ip.get("source", ""), sport, src_ns, src_pod, src_svc, list(f.get("source_names") or ()), ip_translation, color
    )
    dst = _hostname(
        ip.get("destination", ""),
        dport,
        dst_ns,
        dst_pod,
        dst_svc,
        list(f.get("destination_names") or ()),
        ip_translation,
        color,
    )
    return paint(src, "cyan", color), paint(dst, "cyan", color)


def _event_type(f: Mapping[str, Any]) -> tuple[int, int]:
    et = f.get("event_type") or {}
    return int(et.get("type", 0)), int(et.get("sub_type", 0))


def flow_type(f: Mapping[str, Any]) -> str:
    """Hubble's TYPE column (``to-endpoint``, ``Policy denied``, ``policy-verdict:L3-L4 INGRESS`` ...)."""
    l7 = f.get("l7")
    if isinstance(l7, dict):
        proto, kind = "l7", str(l7.get("type", "UNKNOWN_L7_TYPE")).lower()
        if "http" in l7:
            proto = "http"
        elif "dns" in l7:
            proto = "dns"
            kind += " " + str((l7.get("dns") or {}).get("observation_source", ""))
        elif "kafka" in l7:
            proto = "kafka"
        return f"{proto}-{kind}"
    t, sub = _event_type(f)
    if t == MSG_TRACE:
        return trace_point_name(sub & 0xFF)
    if t == MSG_DROP:
        return drop_reason_text(sub & 0xFF)
    if t == MSG_POLICY_VERDICT:
        match = policy_match_name(int(f.get("policy_match_type", 0)))
        return f"policy-verdict:{match} {f.get('traffic_direction', 'TRAFFIC_DIRECTION_UNKNOWN')}"
    if t == MSG_CAPTURE:
        return str(f.get("debug_capture_point", "DBG_CAPTURE_POINT_UNKNOWN"))
    if t == MSG_TRACE_SOCK:
        point = str(f.get("sock_xlate_point", "SOCK_XLATE_POINT_UNKNOWN"))
        return {
            "SOCK_XLATE_POINT_POST_DIRECTION_FWD": "post-xlate-fwd",
            "SOCK_XLATE_POINT_POST_DIRECTION_REV": "post-xlate-rev",
            "SOCK_XLATE_POINT_PRE_DIRECTION_FWD": "pre-xlate-fwd",
            "SOCK_XLATE_POINT_PRE_DIRECTION_REV": "pre-xlate-rev",
        }.get(point, point)
    return "UNKNOWN"


def _policy_names(f: Mapping[str, Any], denied: bool) -> str:
    keys = ("egress_denied_by", "ingress_denied_by") if denied else ("egress_allowed_by", "ingress_allowed_by")
    items = [p for k in keys for p in (f.get(k) or ()) if isinstance(p, dict)]
    if not items:
        return ""
    return " BY " + ", ".join(f"{p.get('name', '')} ({p.get('kind', '')})" for p in items)


def verdict_text(f: Mapping[str, Any], color: bool = False, print_policy_names: bool = False) -> str:
    """Hubble's VERDICT column (ALLOWED/DENIED/AUDITED for policy-verdict events)."""
    verdict = f.get("verdict", "VERDICT_UNKNOWN")
    pv = _event_type(f)[0] == MSG_POLICY_VERDICT
    msg = str(verdict)
    colour = ""
    if verdict in ("FORWARDED", "REDIRECTED"):
        msg, colour = ("ALLOWED" if pv else msg), "green"
    elif verdict in ("DROPPED", "ERROR"):
        msg, colour = ("DENIED" if pv else msg), "red"
    elif verdict == "AUDIT":
        msg, colour = ("AUDITED" if pv else msg), "yellow"
    elif verdict in ("TRACED", "TRANSLATED"):
        colour = "yellow"
    out = paint(msg, colour, color) if colour else msg
    if print_policy_names:
        out += _policy_names(f, verdict in ("DROPPED", "ERROR", "AUDIT"))
    return out


def summary_text(f: Mapping[str, Any], color: bool = False) -> str:
    """Hubble's SUMMARY: ``Summary`` with the IP trace id prefix and the auth suffix."""
    out = ""
    trace_id = (f.get("ip_trace_id") or {}).get("trace_id")
    if trace_id and int(trace_id) > 0:
        out = f"IP Trace ID: {int(trace_id)}; "
    out += str(f.get("Summary", ""))
    auth = f.get("auth_type", "DISABLED")
    if auth not in ("DISABLED", 0):
        out += "; " + paint(str(auth), "red" if auth == "TEST_ALWAYS_FAIL" else "green", color)
    return out


def decided_by(f: Mapping[str, Any]) -> str | None:
    """apiary's ``extensions.apiary.decided_by`` of a flow, if any."""
    ext = f.get("extensions")
    if isinstance(ext, dict) and isinstance(ext.get("apiary"), dict):
        v = ext["apiary"].get("decided_by")
        return str(v) if v else None
    return None


def _lost_parts(resp: Mapping[str, Any]) -> tuple[str, int, int, dict[str, Any]]:
    le = resp.get("lost_events") or {}
    return (
        str(le.get("source", "UNKNOWN_LOST_EVENT_SOURCE")),
        int(le.get("cpu", 0)),
        int(le.get("num_events_lost", 0)),
        le,
    )


def compact(
    resp: Mapping[str, Any],
    color: bool = False,
    print_policy_names: bool = False,
    time_format: str = "StampMilli",
    print_node_name: bool = False,
    ip_translation: bool = True,
) -> str:
    """One ``hubble observe -o compact`` line (no trailing newline) for a response dict.

    apiary addition: DROPPED/AUDIT flows with ``extensions.apiary.decided_by`` end with `` [<decided_by>]``.
    """
    if "lost_events" in resp:
        source, cpu, n, le = _lost_parts(resp)
        line = f"EVENTS LOST: {source} CPU({cpu}) {n}"
        first, last = _time_ns(le.get("first")), _time_ns(le.get("last"))
        if first is not None and last is not None:
            line += f" (first: {format_time(first, time_format)}, last: {format_time(last, time_format)})"
        t = _time_ns(resp.get("time"))
        return f"{format_time(t, time_format)} {line}" if t is not None else line
    f = _flow_of(resp)
    src, dst = host_names(f, color, ip_translation)
    src_id = paint(fmt_identity(int((f.get("source") or {}).get("identity", 0))), "magenta", color)
    dst_id = paint(fmt_identity(int((f.get("destination") or {}).get("identity", 0))), "magenta", color)
    node = f" [{f.get('node_name', '')}]" if print_node_name else ""
    arrow = "->"
    is_reply = f.get("is_reply")
    if is_reply is None:
        arrow = "<>"
    elif is_reply:
        src, dst, src_id, dst_id, arrow = dst, src, dst_id, src_id, "<-"
    ts = format_time(_time_ns(f.get("time")), time_format)
    line = (
        f"{ts}{node}: {src} {src_id} {arrow} {dst} {dst_id} {flow_type(f)} "
        f"{verdict_text(f, color, print_policy_names)} ({summary_text(f, color)})"
    )
    why = decided_by(f)
    if why and f.get("verdict") in ("DROPPED", "AUDIT"):
        line += f" [{why}]"
    return line


def _row(resp: Mapping[str, Any], print_node_name: bool, time_format: str) -> list[str]:
    if "lost_events" in resp:
        source, cpu, n, _ = _lost_parts(resp)
        cells = [""] + ([""] if print_node_name else []) + [source, "", "EVENTS LOST", "", f"CPU({cpu}) - {n}"]
        return cells
    f = _flow_of(resp)
    src, dst = host_names(f)
    cells = [format_time(_time_ns(f.get("time")), time_format)]
    if print_node_name:
        cells.append(str(f.get("node_name", "")))
    return cells + [src, dst, flow_type(f), verdict_text(f), summary_text(f)]


def table(resps: Iterable[Mapping[str, Any]], print_node_name: bool = False, time_format: str = "StampMilli") -> str:
    """``hubble observe -o table``: header once, columns aligned like Go's tabwriter (padding 3)."""
    rows = [_row(r, print_node_name, time_format) for r in resps]
    if not rows:
        return ""
    header = (
        ["TIMESTAMP"] + (["NODE"] if print_node_name else []) + ["SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"]
    )
    rows.insert(0, header)
    ncols = len(header)
    widths = [max(2, max(len(r[i]) for r in rows) + 3) for i in range(ncols - 1)]
    return "\n".join("".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + r[-1] for r in rows)


def dict_format(
    resps: Iterable[Mapping[str, Any]] | Mapping[str, Any],
    print_node_name: bool = False,
    time_format: str = "StampMilli",
    leading_separator: bool = False,
) -> str:
    """``hubble observe -o dict``: right-aligned keys, flows separated by a line of 12 dashes.

    Accepts one response or several. A caller streaming one response per call passes
    ``leading_separator=True`` for every response but the first to get Hubble's separator line.
    """
    if isinstance(resps, Mapping):
        resps = [resps]
    blocks: list[str] = []
    for r in resps:
        if "lost_events" in r:
            source, cpu, n, _ = _lost_parts(r)
            lines = ["  TIMESTAMP: "]
            if print_node_name:
                lines.append("       NODE: ")
            lines += [
                f"     SOURCE: {source}",
                "       TYPE: EVENTS LOST",
                "    VERDICT: ",
                f"    SUMMARY: CPU({cpu}) - {n}",
            ]
        else:
            f = _flow_of(r)
            src, dst = host_names(f)
            lines = [f"  TIMESTAMP: {format_time(_time_ns(f.get('time')), time_format)}"]
            if print_node_name:
                lines.append(f"       NODE: {f.get('node_name', '')}")
            lines += [
                f"     SOURCE: {src}",
                f"DESTINATION: {dst}",
                f"       TYPE: {flow_type(f)}",
                f"    VERDICT: {verdict_text(f)}",
                f"    SUMMARY: {summary_text(f)}",
            ]
        blocks.append("\n".join(lines))
    out = "\n------------\n".join(blocks)
    return f"------------\n{out}" if leading_separator and blocks else out

