"""Strict pydantic models of a TracingPolicy hook's selectors (``KProbeSelector`` and its matchers) and actions.

``matchArgs``/``matchReturnArgs``/``matchData`` (:class:`ArgSelector`), ``matchBinaries``, ``matchPIDs``,
``matchNamespaces``, ``matchNamespaceChanges``, ``matchCapabilities``, ``matchCapabilityChanges``,
``matchWorkloads`` and ``matchActions`` as Tetragon HEAD's CRD defines them: unknown keys are errors, enum
spellings are the CRD's (:mod:`apiary.tracing.crd`), per-field limits are checked here. :class:`StrictModel` is
the base of every TracingPolicy model (:mod:`apiary.tracing.models`).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    alias_generators,
    field_validator,
    model_validator,
)

from apiary.policy.models import LabelSelector, invalid

from .crd import (
    BINARY_OPERATORS,
    CAPABILITIES,
    CAPABILITY_TYPES,
    MAX_ACTIONS,
    MAX_BINARY_PATH,
    MAX_MATCH_ARGS,
    MAX_NAMESPACE_FILTERS,
    MAX_NAMESPACE_VALUES,
    MAX_PID_VALUES,
    MAX_POSTFIX,
    MAX_PREFIX,
    NAMESPACES,
    RATE_LIMIT_SCOPES,
    check_action,
    check_operator,
    choices,
    enum_value,
)

_RATE = re.compile(r"^[0-9]+[smhSMH]?$")


class StrictModel(BaseModel):
    """Unknown keys are errors; fields are read by their camelCase names (or Python names)."""

    model_config = ConfigDict(extra="forbid", alias_generator=alias_generators.to_camel, populate_by_name=True)



class ArgSelector(StrictModel):
    index: StrictInt = Field(0, ge=0, le=2**31 - 1)
    args: list[StrictInt] | None = None
    operator: StrictStr
    values: list[StrictStr] | None = None

    @field_validator("operator")
    @classmethod
    def _op(cls, v: str) -> str:
        return check_operator(v)

    @field_validator("values", mode="before")
    @classmethod
    def _strings(cls, v: Any) -> Any:
        if isinstance(v, list):
            for i, x in enumerate(v):
                if not isinstance(x, str):
                    raise invalid(f"values must be strings: quote {x!r} (\"{x}\")", f"[{i}]")
        return v


class BinarySelector(StrictModel):
    operator: StrictStr
    values: list[StrictStr]
    follow_children: StrictBool = False

    @field_validator("operator")
    @classmethod
    def _op(cls, v: str) -> str:
        return enum_value(v, BINARY_OPERATORS, "matchBinaries operator")

    @model_validator(mode="after")
    def _check(self) -> BinarySelector:
        if self.follow_children and self.operator not in ("In", "NotIn"):
            raise invalid(f"followChildren is only implemented for In and NotIn (not {self.operator})",
                          "followChildren")
        for i, v in enumerate(self.values):
            n = len(v.encode())
            if self.operator in ("In", "NotIn") and n > MAX_BINARY_PATH:
                raise invalid(f"binary paths longer than {MAX_BINARY_PATH} bytes are not supported ({n})",
                              f"values[{i}]")
            if self.operator in ("Prefix", "NotPrefix") and n > MAX_PREFIX:
                raise invalid(f"prefix longer than {MAX_PREFIX} bytes ({n})", f"values[{i}]")
            if self.operator in ("Postfix", "NotPostfix") and n > MAX_POSTFIX:
                raise invalid(f"postfix longer than {MAX_POSTFIX} bytes ({n})", f"values[{i}]")
        return self


class PIDSelector(StrictModel):
    operator: StrictStr
    values: list[StrictInt] = Field(max_length=MAX_PID_VALUES)
    is_namespace_pid: StrictBool = Field(False, alias="isNamespacePID")
    follow_forks: StrictBool = False

    @field_validator("operator")
    @classmethod
    def _op(cls, v: str) -> str:
        return enum_value(v, ("In", "NotIn"), "matchPIDs operator")

    @field_validator("values")
    @classmethod
    def _pids(cls, v: list[int]) -> list[int]:
        for i, pid in enumerate(v):
            if not 0 <= pid <= 2**32 - 1:
                raise invalid(f"PID {pid} is out of range 0-4294967295", f"[{i}]")
        return v


class NamespaceSelector(StrictModel):
    namespace: StrictStr
    operator: StrictStr
    values: list[StrictStr] = Field(max_length=MAX_NAMESPACE_VALUES)

    @field_validator("namespace")
    @classmethod
    def _ns(cls, v: str) -> str:
        return enum_value(v, NAMESPACES, "namespace")

    @field_validator("operator")
    @classmethod
    def _op(cls, v: str) -> str:
        return enum_value(v, ("In", "NotIn"), "matchNamespaces operator")

    @field_validator("values")
    @classmethod
    def _values(cls, v: list[str]) -> list[str]:
        for i, x in enumerate(v):
            if x != "host_ns" and not (x.isdigit() and int(x) <= 2**32 - 1):
                raise invalid(f'values for matchNamespaces can only be numeric (inode numbers) or "host_ns", not '
                              f"{x!r}", f"[{i}]")
        return v


class NamespaceChangesSelector(StrictModel):
    operator: StrictStr
    values: list[StrictStr]

    @field_validator("operator")
    @classmethod
    def _op(cls, v: str) -> str:
        return enum_value(v, ("In", "NotIn"), "matchNamespaceChanges operator")

    @field_validator("values")
    @classmethod
    def _values(cls, v: list[str]) -> list[str]:
        for i, x in enumerate(v):
            if x.lower() not in {n.lower() for n in NAMESPACES}:
                raise invalid(f"unknown namespace type {x!r} (one of: {choices(NAMESPACES)})", f"[{i}]")
        return v


class CapabilitiesSelector(StrictModel):
    type_: StrictStr = Field("Effective", alias="type")
    operator: StrictStr
    is_namespace_capability: StrictBool = False
    values: list[StrictStr]

    @field_validator("type_")
    @classmethod
    def _type(cls, v: str) -> str:
        return enum_value(v, CAPABILITY_TYPES, "capability type")

    @field_validator("operator")
    @classmethod
    def _op(cls, v: str) -> str:
        return enum_value(v, ("In", "NotIn"), "capabilities operator")

    @field_validator("values")
    @classmethod
    def _caps(cls, v: list[str]) -> list[str]:
        for i, x in enumerate(v):
            if x.strip().upper() not in CAPABILITIES:
                raise invalid(f"unknown capability {x!r} (CAP_CHOWN … CAP_CHECKPOINT_RESTORE)", f"[{i}]")
        return v


class ContainerSelector(LabelSelector):
    """containerSelector: a label selector whose only keys are ``name`` and ``repo``."""

    @model_validator(mode="after")
    def _container_keys(self) -> ContainerSelector:
        keys = list(self.match_labels or {}) + [e.key for e in self.match_expressions or []]
        for k in keys:
            if k not in ("name", "repo"):
                raise invalid(f"containerSelector supports only the keys name and repo, not {k!r}")
        return self


class WorkloadSelector(StrictModel):
    pod_selector: LabelSelector | None = None
    container_selector: ContainerSelector | None = None
    host_selector: LabelSelector | None = None


class ActionSelector(StrictModel):
    action: StrictStr
    arg_fd: StrictInt = Field(0, ge=0)
    arg_name: StrictInt = Field(0, ge=0)
    arg_url: StrictStr = ""
    arg_fqdn: StrictStr = ""
    arg_error: StrictInt = Field(0, ge=-(2**31), le=2**31 - 1)
    arg_sig: StrictInt = Field(0, ge=0, le=2**31 - 1)
    arg_sock: StrictInt = Field(0, ge=0)
    rate_limit: StrictStr = ""
    rate_limit_scope: StrictStr = ""
    kernel_stack_trace: StrictBool = False
    user_stack_trace: StrictBool = False
    ima_hash: StrictBool = False
    arg_regs: list[StrictStr] | None = None
    arg_new_symbol: StrictStr = ""
    arg_new_addr: StrictInt | None = None
    arg_new_offset: StrictInt | None = None
    arg_index: StrictInt = Field(0, ge=0)
    arg_value: StrictInt = 0
    enforcer_notify_action_arg_index: StrictInt | None = None

    @field_validator("action")
    @classmethod
    def _action(cls, v: str) -> str:
        return check_action(v)

    @field_validator("rate_limit")
    @classmethod
    def _rate(cls, v: str) -> str:
        if v and not _RATE.match(v):
            raise invalid(f"rateLimit {v!r} is invalid: a number of seconds, optionally with s, m or h (5, 5m, 1h)")
        return v

    @field_validator("rate_limit_scope")
    @classmethod
    def _scope(cls, v: str) -> str:
        if v and v not in RATE_LIMIT_SCOPES:
            raise invalid(f"rateLimitScope {v!r} is invalid (one of: {choices(RATE_LIMIT_SCOPES)})")
        return v

    @model_validator(mode="after")
    def _check(self) -> ActionSelector:
        if self.rate_limit and self.action != "Post":
            raise invalid(f"rate limiting can only be applied to the Post action (was applied to {self.action})",
                          "rateLimit")
        news = [n for n in ("arg_new_symbol", "arg_new_addr", "arg_new_offset") if getattr(self, n)]
        if len(news) > 1:
            raise invalid("at most one of argNewSymbol, argNewAddr and argNewOffset may be set")
        return self

    def rate_limit_seconds(self) -> int:
        """The rate limit in seconds (0: none)."""
        if not self.rate_limit:
            return 0
        mult = {"s": 1, "m": 60, "h": 3600}.get(self.rate_limit[-1].lower(), 0)
        return int(self.rate_limit[:-1]) * mult if mult else int(self.rate_limit)


class KProbeSelector(StrictModel):
    match_pids: list[PIDSelector] | None = Field(None, alias="matchPIDs")
    match_args: list[ArgSelector] | None = None
    match_data: list[ArgSelector] | None = None
    match_actions: list[ActionSelector] | None = Field(None, max_length=MAX_ACTIONS)
    match_return_args: list[ArgSelector] | None = Field(None, max_length=MAX_MATCH_ARGS)
    match_return_actions: list[ActionSelector] | None = Field(None, max_length=MAX_ACTIONS)
    match_binaries: list[BinarySelector] | None = Field(None, max_length=1)
    match_parent_binaries: list[BinarySelector] | None = Field(None, max_length=1)
    match_namespaces: list[NamespaceSelector] | None = Field(None, max_length=MAX_NAMESPACE_FILTERS)
    match_namespace_changes: list[NamespaceChangesSelector] | None = Field(None, max_length=1)
    match_capabilities: list[CapabilitiesSelector] | None = None
    match_capability_changes: list[CapabilitiesSelector] | None = None
    match_workloads: WorkloadSelector | None = None
    macros: list[StrictStr] | None = None

    @model_validator(mode="after")
    def _count(self) -> KProbeSelector:
        n = len(self.match_args or []) + len(self.match_data or [])
        if n > MAX_MATCH_ARGS:
            at = "matchArgs" if len(self.match_args or []) > MAX_MATCH_ARGS else "matchData"
            raise invalid(f"at most {MAX_MATCH_ARGS} arg filters (matchArgs + matchData) per selector "
                          f"({n} given)", at)
        return self
