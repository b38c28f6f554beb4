"""Strict pydantic models of Tetragon's ``TracingPolicy`` / ``TracingPolicyNamespaced`` (cilium.io/v1alpha1).

They mirror Tetragon HEAD's CRD (FORMATS.md §4.1-4.4) the way Tetragon loads a policy file: unknown
keys are errors (strict unmarshal), CRD defaults are applied (kprobe ``syscall`` true, arg ``type``
``auto``, ``return`` false, capability ``type`` Effective), enum spellings are the CRD's (an operator
the parser accepts but the CRD rejects, such as ``eq`` or ``NotSPortPriv``, is an error naming the
right spelling; the enums: :mod:`apiary.tracing.crd`), and scalars must have their schema type
(``values: [0]`` is an error: matchArgs values are strings). The selectors' models are
:mod:`apiary.tracing.selector_specs`; checks that need several fields at once are :mod:`apiary.tracing.checks`;
what apiary can *realise* on a given kernel is :mod:`apiary.tracing.compile`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, ClassVar

from pydantic import (
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

from apiary.policy.models import LabelSelector, invalid

from .crd import (
    API_VERSION,
    ARG_TYPES,
    KIND_TP,
    KIND_TPN,
    LIST_TYPES,
    MAX_MESSAGE,
    MAX_SELECTORS,
    MAX_TAGS,
    OPTIONS,
    choices,
    enum_value,
)
from .selector_specs import (
    ContainerSelector,
    KProbeSelector,
    StrictModel,
)

__all__ = [
    "HookSpec",
    "KProbeArg",
    "KProbeSpec",
    "LsmHookSpec",
    "Policy",
    "TracepointSpec",
    "TracingPolicy",
    "TracingPolicyBase",
    "TracingPolicyNamespaced",
    "UProbeSpec",
]

_K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


# --- models --------------------------------------------------------------------------------------


class KProbeArg(StrictModel):
    index: StrictInt = Field(ge=0, le=2**31 - 1)
    type_: StrictStr = Field("auto", alias="type")
    resolve: StrictStr = ""
    size_arg_index: StrictInt = Field(0, ge=0, le=2**31 - 1)
    return_copy: StrictBool = False
    max_data: StrictBool = False
    label: StrictStr = ""
    source: StrictStr = ""
    btf_type: StrictStr = ""
    btf_type_module: StrictStr = ""

    @field_validator("type_")
    @classmethod
    def _type(cls, v: str) -> str:
        return enum_value(v, ARG_TYPES, "arg type")


_Selectors = list[KProbeSelector] | None


class HookSpec(StrictModel):
    """Fields every hook kind shares."""

    message: StrictStr = Field("", max_length=MAX_MESSAGE)
    args: list[KProbeArg] | None = None
    selectors: _Selectors = Field(None, max_length=MAX_SELECTORS)
    tags: list[StrictStr] | None = Field(None, max_length=MAX_TAGS)

    KIND: ClassVar[str] = ""
    # True: matchArgs index names the arg's `index` (function prototype position); False: the position in
    # the args list (tracepoints).
    INDEX_BY_PROTOTYPE: ClassVar[bool] = True

    def label(self) -> str:
        return ""


class KProbeIgnore(StrictModel):
    call_not_found: StrictBool = False


class KProbeSpec(HookSpec):
    call: StrictStr = Field(min_length=1)
    return_: StrictBool = Field(False, alias="return")
    syscall: StrictBool = True
    data: list[KProbeArg] | None = None
    return_arg: KProbeArg | None = None
    return_arg_action: StrictStr = ""
    ignore: KProbeIgnore | None = None

    KIND: ClassVar[str] = "kprobes"

    @field_validator("return_arg_action")
    @classmethod
    def _ret_action(cls, v: str) -> str:
        if v and v not in ("TrackSock", "UntrackSock"):
            if v == "Post":
                raise invalid("returnArgAction accepts only TrackSock or UntrackSock at Tetragon HEAD (Post was "
                              "accepted up to v1.1); an event is posted by default: remove it")
            raise invalid(f"returnArgAction {v!r} is invalid: only TrackSock or UntrackSock")
        return v

    @model_validator(mode="after")
    def _check(self) -> KProbeSpec:
        if self.return_ and self.return_arg is None:
            raise invalid("return: true needs returnArg (e.g. {index: 0, type: int})", "returnArg")
        if self.return_arg_action and not self.return_:
            raise invalid("returnArgAction needs return: true and a returnArg of type sock", "returnArgAction")
        if self.return_arg_action and self.return_arg is not None and self.return_arg.type_ != "sock":
            raise invalid(f"returnArgAction {self.return_arg_action} needs a returnArg of type sock "
                          f"(not {self.return_arg.type_})", "returnArgAction")
        return self

    def label(self) -> str:
        return self.call


class TracepointSpec(HookSpec):
    subsystem: StrictStr = Field(min_length=1)
    event: StrictStr = Field(min_length=1)
    raw: StrictBool = False

    KIND: ClassVar[str] = "tracepoints"
    INDEX_BY_PROTOTYPE: ClassVar[bool] = False

    def label(self) -> str:
        return f"{self.subsystem}/{self.event}"


class UProbeIgnore(StrictModel):
    digest_verification_failure: StrictBool = False


class UProbeSpec(HookSpec):
    path: StrictStr = Field(min_length=1)
    symbols: list[StrictStr] | None = None
    offsets: list[StrictInt] | None = None
    addrs: list[StrictInt] | None = None
    ref_ctr_offsets: list[StrictInt] | None = None
    btf_path: StrictStr = ""
    data: list[KProbeArg] | None = None
    return_: StrictBool = Field(False, alias="return")
    return_arg: KProbeArg | None = None
    binary_digests: list[StrictStr] | None = None
    ignore: UProbeIgnore | None = None

    KIND: ClassVar[str] = "uprobes"

    @model_validator(mode="after")
    def _check(self) -> UProbeSpec:
        given = [n for n in ("symbols", "offsets", "addrs") if getattr(self, n)]
        if len(given) != 1:
            raise invalid("exactly one of symbols, offsets or addrs must be set")
        return self

    def label(self) -> str:
        return self.path


class LsmHookSpec(HookSpec):
    hook: StrictStr = Field(min_length=1)

    KIND: ClassVar[str] = "lsmhooks"

    @field_validator("hook")
    @classmethod
    def _hook(cls, v: str) -> str:
        if v.startswith("security_"):
            raise invalid(f"LSM hooks are named without the security_ prefix: {v.removeprefix('security_')}")
        return v

    def label(self) -> str:
        return self.hook


class UsdtSpec(HookSpec):
    path: StrictStr = Field(min_length=1)
    provider: StrictStr = Field(min_length=1)
    name: StrictStr = Field(min_length=1)
    btf_path: StrictStr = ""

    KIND: ClassVar[str] = "usdts"

    def label(self) -> str:
        return f"{self.path} {self.provider}:{self.name}"


class ListSpec(StrictModel):
    name: StrictStr = Field(min_length=1)
    values: list[StrictStr] | None = None
    type_: StrictStr = Field("", alias="type")
    pattern: StrictStr | None = None
    validated: StrictBool = False

    @field_validator("type_")
    @classmethod
    def _type(cls, v: str) -> str:
        return enum_value(v, LIST_TYPES, "list type") if v else v

    @model_validator(mode="after")
    def _check(self) -> ListSpec:
        if self.type_ in ("generated_syscalls", "generated_ftrace") and self.values:
            raise invalid(f"a {self.type_} list is generated: it takes no values", "values")
        if self.type_ == "generated_ftrace" and not self.pattern:
            raise invalid("a generated_ftrace list needs a pattern (a regular expression)", "pattern")
        if self.pattern:
            try:
                re.compile(self.pattern)
            except re.error as e:
                raise invalid(f"pattern is not a valid regular expression: {e}", "pattern") from None
        return self


class EnforcerSpec(StrictModel):
    calls: list[StrictStr]


class OptionSpec(StrictModel):
    name: StrictStr
    value: StrictStr = ""

    @model_validator(mode="after")
    def _check(self) -> OptionSpec:
        if self.name not in OPTIONS:
            raise invalid(f"unknown option {self.name!r} (known: {choices(list(OPTIONS))})", "name")
        allowed = OPTIONS[self.name]
        if allowed is not None and self.value not in allowed:
            shown = ("enforce", "monitor") if self.name == "policy-mode" else allowed[:3] + ("false",)
            raise invalid(f"invalid value {self.value!r} for option {self.name} (use {' or '.join(shown)})",
                          "value")
        if self.name == "sleepable-preload-size" and not self.value.isdigit():
            raise invalid(f"sleepable-preload-size must be a number of bytes, not {self.value!r}", "value")
        return self


class TracingPolicySpec(StrictModel):
    kprobes: list[KProbeSpec] | None = None
    tracepoints: list[TracepointSpec] | None = None
    loader: StrictBool = False
    uprobes: list[UProbeSpec] | None = None
    lsmhooks: list[LsmHookSpec] | None = None
    usdts: list[UsdtSpec] | None = None
    fentries: list[KProbeSpec] | None = None
    pod_selector: LabelSelector | None = None
    container_selector: ContainerSelector | None = None
    host_selector: LabelSelector | None = None
    node_selector: LabelSelector | None = None
    lists: list[ListSpec] | None = None
    enforcers: list[EnforcerSpec] | None = None
    options: list[OptionSpec] | None = None
    selectors_macros: dict[str, KProbeSelector] | None = None

    @field_validator("host_selector")
    @classmethod
    def _host(cls, v: LabelSelector | None) -> LabelSelector | None:
        if v is not None and (v.match_labels or v.match_expressions):
            raise invalid("hostSelector accepts only {} (select host processes) or null")
        return v

    def hooks(self) -> Iterator[tuple[str, HookSpec]]:
        """(path, hook) for every hook of every kind, e.g. ``("kprobes[0]", KProbeSpec)``."""
        for kind in ("kprobes", "tracepoints", "uprobes", "lsmhooks", "usdts", "fentries"):
            for i, h in enumerate(getattr(self, kind) or []):
                yield f"{kind}[{i}]", h

    def option(self, name: str) -> str | None:
        """The value of the last option called ``name`` (None when absent)."""
        found = [o.value for o in self.options or [] if o.name == name]
        return found[-1] if found else None


class ObjectMeta(StrictModel):
    name: StrictStr
    namespace: StrictStr | None = None
    labels: dict[str, StrictStr] | None = None
    annotations: dict[str, StrictStr] | None = None
    generate_name: StrictStr | None = None
    uid: StrictStr | None = None
    resource_version: StrictStr | None = None
    generation: StrictInt | None = None
    creation_timestamp: Any = None
    deletion_timestamp: Any = None
    deletion_grace_period_seconds: StrictInt | None = None
    owner_references: list[dict[str, Any]] | None = None
    finalizers: list[StrictStr] | None = None
    managed_fields: list[dict[str, Any]] | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or len(v) > 253 or not _K8S_NAME.match(v):
            raise invalid(f"metadata.name {v!r} is not a valid name (lower-case letters, digits, '-' and '.', "
                          "at most 253 characters, starting and ending with a letter or digit)")
        return v

    @field_validator("namespace")
    @classmethod
    def _ns(cls, v: str | None) -> str | None:
        if v is not None and (len(v) > 63 or not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", v)):
            raise invalid(f"namespace {v!r} is not a valid namespace name (RFC 1123 label)")
        return v


class TracingPolicyBase(StrictModel):
    api_version: StrictStr
    kind: StrictStr
    metadata: ObjectMeta
    spec: TracingPolicySpec

    KIND: ClassVar[str] = ""

    @field_validator("api_version")
    @classmethod
    def _api(cls, v: str) -> str:
        if v != API_VERSION:
            raise invalid(f"apiVersion must be {API_VERSION} (not {v!r})")
        return v

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v != cls.KIND:
            raise invalid(f"kind must be {cls.KIND}")
        return v

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        """The namespace of a TracingPolicyNamespaced; "" for a (cluster-scoped) TracingPolicy."""
        return ""


class TracingPolicy(TracingPolicyBase):
    KIND: ClassVar[str] = KIND_TP


class TracingPolicyNamespaced(TracingPolicyBase):
    KIND: ClassVar[str] = KIND_TPN

    @model_validator(mode="after")
    def _host(self) -> TracingPolicyNamespaced:
        if self.spec.host_selector is not None:
            raise invalid("a TracingPolicyNamespaced applies only to pods of its namespace: hostSelector must be "
                          "null", "spec.hostSelector")
        return self

    @property
    def namespace(self) -> str:
        return self.metadata.namespace or ""


Policy = TracingPolicyBase
POLICY_KINDS: dict[str, type[TracingPolicyBase]] = {KIND_TP: TracingPolicy, KIND_TPN: TracingPolicyNamespaced}
