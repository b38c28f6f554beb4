"""Export settings: the flags' values (Tetragon's ``--export-*``, Cilium's ``--hubble-export-*``), checked.

``check()`` compiles everything once so a bad value is refused at start with the flag named; the agent
compiles the same settings again (``compile_events`` / ``compile_flows``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from apiary.observe.export import fieldmask
from apiary.observe.hubble.filters import FlowFilter
from apiary.observe.tetragon.allowdeny import AllowDeny, event_set_key


@dataclass(frozen=True)
class ExportSettings:
    # Tetragon: runtime events
    export_filename: str = ""  # off when empty
    export_file_max_size_mb: int = 10
    export_file_rotation_interval: float = 0.0  # seconds; 0: by size only
    export_file_max_backups: int = 5
    export_file_compress: bool = False
    export_file_perm: str = "600"
    export_rate_limit: int = -1  # events per minute; -1: no limit, 0: nothing exported
    export_allowlist: str = ""  # JSON Filter objects, one per line
    export_denylist: str = ""
    field_filters: str = ""  # JSON FieldFilter objects, one per line
    # Hubble: flows
    hubble_export_file_path: str = ""  # off when empty
    hubble_export_file_max_size_mb: int = 10
    hubble_export_file_max_backups: int = 5
    hubble_export_file_compress: bool = False
    hubble_export_allowlist: str = ""  # JSON FlowFilter objects (comma, space or newline separated)
    hubble_export_denylist: str = ""
    hubble_export_fieldmask: tuple[str, ...] = ()
    # OpenTelemetry (apiary's): events and flows as OTLP log records
    export_otlp_endpoint: str = ""
    export_otlp_traces: bool = False  # also each L7 HTTP request and DNS query as a span, to the same collector
    export_queue: int = 65536  # events buffered for the writer before it counts drops
    rate_limit_report_interval: float = 60.0  # seconds between rate_limit_info records (Tetragon: 1 minute)

    @property
    def events_on(self) -> bool:
        return bool(self.export_filename or self.export_otlp_endpoint)

    @property
    def flows_on(self) -> bool:
        return bool(self.hubble_export_file_path or self.export_otlp_endpoint)

    def perm(self) -> int:
        try:
            p = int(self.export_file_perm, 8)
        except ValueError:
            p = -1
        if not 0 <= p <= 0o777:
            raise ValueError(f"--export-file-perm: {self.export_file_perm!r} is not an octal file mode (e.g. 600)")
        return p

    def check(self) -> None:
        """Every value compiled once; ``ValueError`` names the flag."""
        for flag, v in (
            ("--export-file-max-size-mb", self.export_file_max_size_mb),
            ("--hubble-export-file-max-size-mb", self.hubble_export_file_max_size_mb),
        ):
            if v <= 0:
                raise ValueError(f"{flag}: {v} must be at least 1")
        for flag, v in (
            ("--export-file-max-backups", self.export_file_max_backups),
            ("--hubble-export-file-max-backups", self.hubble_export_file_max_backups),
        ):
            if v < 0:
                raise ValueError(f"{flag}: {v} must not be negative (0 keeps every rotated file)")
        if self.export_file_rotation_interval < 0:
            raise ValueError(f"--export-file-rotation-interval: {self.export_file_rotation_interval} is negative")
        self.perm()
        if self.export_otlp_endpoint:
            u = urlsplit(self.export_otlp_endpoint)
            if u.scheme not in ("http", "https") or not u.hostname:
                raise ValueError(
                    f"--export-otlp-endpoint: {self.export_otlp_endpoint!r} is not an http(s) URL "
                    "(e.g. http://127.0.0.1:4318)"
                )
        if self.export_otlp_traces and not self.export_otlp_endpoint:
            raise ValueError("--export-otlp-traces: needs --export-otlp-endpoint (the collector to send spans to)")
        compile_events(self)
        compile_flows(self)


def json_objects(text: str, flag: str) -> list[Any]:
    """JSON values one after another, separated by whitespace or commas (Tetragon's newline-separated
    filters, Cilium's comma-separated ConfigMap form). ``ValueError`` names the flag and the position."""
    dec = json.JSONDecoder()
    out: list[Any] = []
    i, n = 0, len(text)
    while True:
        while i < n and (text[i].isspace() or text[i] == ","):
            i += 1
        if i >= n:
            return out
        try:
            obj, i = dec.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise ValueError(f"{flag}: invalid JSON at character {e.pos + 1}: {e.msg}") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{flag}: item {len(out) + 1} is not a JSON object")
        out.append(obj)


@dataclass(frozen=True)
class FieldFilter:
    """Tetragon's ``FieldFilter``: INCLUDE or EXCLUDE fields of the event's body, for some event types."""

    kinds: frozenset[str]  # JSON event keys; empty: every type
    invert: bool
    include: bool
    mask: fieldmask.Tree

    def applies(self, kind: str | None) -> bool:
        if not self.kinds:
            return True
        return (kind in self.kinds) != self.invert

    def apply(self, ev: dict[str, Any], kind: str) -> dict[str, Any]:
        body = ev.get(kind)
        if not isinstance(body, dict) or not self.applies(kind):
            return ev
        new = fieldmask.include(body, self.mask) if self.include else fieldmask.exclude(body, self.mask)
        return {**ev, kind: new}


def parse_field_filters(text: str, flag: str = "--field-filters") -> list[FieldFilter]:
    out = []
    for i, f in enumerate(json_objects(text, flag)):
        at = f"{flag}[{i}]"
        unknown = set(f) - {"event_set", "eventSet", "fields", "action", "invert_event_set", "invertEventSet"}
        if unknown:
            raise ValueError(f"{at}: unknown FieldFilter field {sorted(unknown)[0]!r}")
        action = f.get("action", "INCLUDE")
        if action not in ("INCLUDE", "EXCLUDE", 0, 1):
            raise ValueError(f"{at}: action {action!r} must be INCLUDE or EXCLUDE")
        fields = f.get("fields", "")
        if isinstance(fields, dict):  # a FieldMask written as an object
            fields = ",".join(fields.get("paths", []))
        if not isinstance(fields, str):
            raise ValueError(f"{at}: fields must be a string of comma-separated paths")
        events = f.get("event_set", f.get("eventSet", [])) or []
        if not isinstance(events, list):
            raise ValueError(f"{at}: event_set must be a list")
        invert = f.get("invert_event_set", f.get("invertEventSet", False))
        if not isinstance(invert, bool):
            raise ValueError(f"{at}: invert_event_set must be true or false")
        out.append(
            FieldFilter(
                kinds=frozenset(event_set_key(e, f"{at}: event_set") for e in events),
                invert=invert,
                include=action in ("INCLUDE", 0),
                mask=fieldmask.parse_paths(fields.split(","), f"{at}: fields"),
            )
        )
    return out


@dataclass(frozen=True)
class EventRules:
    filter: AllowDeny
    field_filters: list[FieldFilter]


@dataclass(frozen=True)
class FlowRules:
    filter: FlowFilter
    mask: fieldmask.Tree


def compile_events(s: ExportSettings) -> EventRules:
    allow = json_objects(s.export_allowlist, "--export-allowlist")
    deny = json_objects(s.export_denylist, "--export-denylist")
    flt = AllowDeny(allow, deny, names=("--export-allowlist", "--export-denylist"))
    return EventRules(flt, parse_field_filters(s.field_filters))


def compile_flows(s: ExportSettings) -> FlowRules:
    allow = json_objects(s.hubble_export_allowlist, "--hubble-export-allowlist")
    deny = json_objects(s.hubble_export_denylist, "--hubble-export-denylist")
    try:
        flt = FlowFilter(allow, deny)
    except ValueError as e:
        raise ValueError(f"--hubble-export-allowlist/--hubble-export-denylist: {e}") from None
    paths = [p for item in s.hubble_export_fieldmask for p in item.replace(",", " ").split()]
    return FlowRules(flt, fieldmask.parse_paths(paths, "--hubble-export-fieldmask"))
