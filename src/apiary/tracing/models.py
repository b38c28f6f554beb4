"""Strict pydantic models of Tetragon's ``TracingPolicy`` / ``TracingPolicyNamespaced`` (cilium.io/v1alpha1).

They mirror Tetragon HEAD's CRD (FORMATS.md §4.1-4.4) the way Tetragon loads a policy file: unknown
keys are errors (strict unmarshal), CRD defaults are applied (kprobe ``syscall`` true, arg ``type``
``auto``, ``return`` false, capability ``type`` Effective), enum spellings are the CRD's (an operator
the parser accepts but the CRD rejects, such as ``eq`` or ``NotSPortPriv``, is an error naming the
right spelling), and scalars must have their schema type (``values: [0]`` is an error: matchArgs
values are strings).

Checks that need several fields at once (an arg filter's ``index`` against the hook's ``args``, the
operators an arg type allows, Tetragon's load-time limits) are made by :func:`semantic_problems`,
which returns every problem with its field path instead of stopping at the first. What apiary can
*realise* on a given kernel is a separate concern: :mod:`apiary.tracing.compile`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from typing import Any, ClassVar

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

from apiary.policy.models import LabelSelector, PolicyError, Problem, invalid

__all__ = [
    "ACTIONS",
    "API_VERSION",
    "ARG_TYPES",
    "KIND_TP",
    "KIND_TPN",
    "OPERATORS",
    "ActionSelector",
    "ArgSelector",
    "KProbeArg",
    "KProbeSelector",
    "KProbeSpec",
    "LsmHookSpec",
    "Policy",
    "PolicyError",
    "Problem",
    "TracepointSpec",
    "TracingPolicy",
    "TracingPolicyBase",
    "TracingPolicyNamespaced",
    "semantic_problems",
]

API_VERSION = "cilium.io/v1alpha1"
KIND_TP = "TracingPolicy"
KIND_TPN = "TracingPolicyNamespaced"

# --- enums (CRD at Tetragon HEAD, FORMATS.md §4.2-4.4) ------------------------------------------

ARG_TYPES = (
    "auto int sint8 int8 uint8 sint16 int16 uint16 uint32 sint32 int32 ulong uint64 size_t long sint64 int64 "
    "char_buf char_iovec skb sock sockaddr socket sockaddr_un string fd file filename path nop bpf_attr "
    "perf_event bpf_map user_namespace capability kiocb iov_iter cred const_buf load_info module syscall64 "
    "kernel_cap_t cap_inheritable cap_permitted cap_effective linux_binprm data_loc net_device bpf_cmd dentry "
    "bpf_prog"
).split()

OPERATORS = (
    "Equal NotEqual Prefix NotPrefix Postfix NotPostfix GreaterThan LessThan GT LT Mask SPort NotSPort SPortPriv "
    "NotSportPriv DPort NotDPort DPortPriv NotDPortPriv SAddr NotSAddr DAddr NotDAddr Protocol Family State InMap "
    "NotInMap CapabilitiesGained InRange NotInRange SubString SubStringIgnCase CelExpr FileType NotFileType"
).split()

ACTIONS = (
    "Post Sigkill Override GetUrl DnsLookup NoPost Signal TrackSock UntrackSock NotifyEnforcer "
    "CleanupEnforcerNotification Set"
).split()
# apiary's own action (not in Tetragon's CRD): fail connect() with EPERM through the endpoint's cgroup hook.
APIARY_ACTIONS = ("DenyConnect",)

BINARY_OPERATORS = ("In", "NotIn", "Prefix", "NotPrefix", "Postfix", "NotPostfix")
NAMESPACES = ("Uts", "Ipc", "Mnt", "Pid", "PidForChildren", "Net", "Time", "TimeForChildren", "Cgroup", "User")
CAPABILITY_TYPES = ("Effective", "Inheritable", "Permitted")
LIST_TYPES = ("syscalls", "generated_syscalls", "generated_ftrace")
RATE_LIMIT_SCOPES = ("thread", "process", "global")
# option name -> accepted values (None: any); Tetragon pkg/sensors/tracing/options.go
OPTIONS: dict[str, tuple[str, ...] | None] = {
    "disable-kprobe-multi": ("1", "t", "T", "true", "TRUE", "True", "0", "f", "F", "false", "FALSE", "False"),
    "disable-uprobe-multi": ("1", "t", "T", "true", "TRUE", "True", "0", "f", "F", "false", "FALSE", "False"),
    "override-method": ("fmod-ret", "override-return"),
    "policy-mode": ("enforce", "monitor"),
    "sleepable-preload-size": None,
}

CAPABILITIES = (
    "CAP_CHOWN CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH CAP_FOWNER CAP_FSETID CAP_KILL CAP_SETGID CAP_SETUID "
    "CAP_SETPCAP CAP_LINUX_IMMUTABLE CAP_NET_BIND_SERVICE CAP_NET_BROADCAST CAP_NET_ADMIN CAP_NET_RAW CAP_IPC_LOCK "
    "CAP_IPC_OWNER CAP_SYS_MODULE CAP_SYS_RAWIO CAP_SYS_CHROOT CAP_SYS_PTRACE CAP_SYS_PACCT CAP_SYS_ADMIN "
    "CAP_SYS_BOOT CAP_SYS_NICE CAP_SYS_RESOURCE CAP_SYS_TIME CAP_SYS_TTY_CONFIG CAP_MKNOD CAP_LEASE CAP_AUDIT_WRITE "
    "CAP_AUDIT_CONTROL CAP_SETFCAP CAP_MAC_OVERRIDE CAP_MAC_ADMIN CAP_SYSLOG CAP_WAKE_ALARM CAP_BLOCK_SUSPEND "
    "CAP_AUDIT_READ CAP_PERFMON CAP_BPF CAP_CHECKPOINT_RESTORE"
).split()

# --- Tetragon's load-time limits (pkg/selectors/kernel.go; FORMATS.md §4.3) ----------------------

MAX_SELECTORS = 5  # selectors per hook
MAX_MATCH_ARGS = 5  # matchArgs + matchData per selector (kernels >= 5.3)
MAX_MATCH_VALUES = 4  # values of an inline value operator (ints; InRange); more: InMap/NotInMap
MAX_ACTIONS = 3  # matchActions per selector
MAX_NAMESPACE_FILTERS = 10
MAX_NAMESPACE_VALUES = 4
MAX_PID_VALUES = 4
MAX_PREFIX = 256  # bytes of a Prefix value
MAX_POSTFIX = 127  # bytes of a Postfix value
MAX_BINARY_PATH = 255  # bytes of an In/NotIn binary path
MAX_MESSAGE = 256
MAX_TAGS = 16

INT_TYPES = frozenset(
    "int sint8 int8 uint8 sint16 int16 uint16 uint32 sint32 int32 ulong uint64 size_t long sint64 int64 "
    "syscall64".split())
UNSIGNED_TYPES = frozenset("uint8 uint16 uint32 uint64 ulong".split())
STRING_TYPES = frozenset("fd file path string char_buf linux_binprm data_loc net_device filename dentry".split())
SOCK_TYPES = frozenset("sock skb sockaddr socket".split())
CAP_TYPES = frozenset("kernel_cap_t cap_inheritable cap_permitted cap_effective".split())

SOCK_OPS = frozenset(
    "SPort NotSPort SPortPriv NotSportPriv DPort NotDPort DPortPriv NotDPortPriv SAddr NotSAddr DAddr NotDAddr "
    "Protocol Family State".split())
SOCKADDR_OPS = frozenset("SAddr NotSAddr SPort NotSPort SPortPriv NotSportPriv Family".split())
PORT_OPS = frozenset("SPort NotSPort DPort NotDPort".split())
ADDR_OPS = frozenset("SAddr NotSAddr DAddr NotDAddr".split())
PRIV_OPS = frozenset("SPortPriv NotSportPriv DPortPriv NotDPortPriv".split())
INT_VALUE_OPS = frozenset("Equal NotEqual GreaterThan LessThan GT LT Mask".split())
STRING_OPS = frozenset("Equal NotEqual Prefix NotPrefix Postfix NotPostfix SubString SubStringIgnCase".split())

_K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_RATE = re.compile(r"^[0-9]+[smhSMH]?$")

# Spellings Tetragon's parser accepts but the CRD rejects (or the docs use), -> the CRD spelling.
_OPERATOR_ALIASES = {
    "eq": "Equal", "neq": "NotEqual", "gt": "GT", "lt": "LT", "prefix": "Prefix", "notprefix": "NotPrefix",
    "postfix": "Postfix", "notpostfix": "NotPostfix", "mask": "Mask", "saddr": "SAddr", "Saddr": "SAddr",
    "daddr": "DAddr", "Daddr": "DAddr", "notsaddr": "NotSAddr", "NotSaddr": "NotSAddr", "notdaddr": "NotDAddr",
    "NotDaddr": "NotDAddr", "sport": "SPort", "Sport": "SPort", "dport": "DPort", "Dport": "DPort",
    "protocol": "Protocol", "notsport": "NotSPort", "NotSport": "NotSPort", "notdport": "NotDPort",
    "NotDport": "NotDPort", "sportpriv": "SPortPriv", "SportPriv": "SPortPriv", "dportpriv": "DPortPriv",
    "DportPriv": "DPortPriv", "notsportpriv": "NotSportPriv", "NotSPortPriv": "NotSportPriv",
    "notdportpriv": "NotDPortPriv", "NotDportPriv": "NotDPortPriv", "family": "Family", "state": "State",
    "SubStringIgnoreCase": "SubStringIgnCase",
}


def _choices(values: tuple[str, ...] | list[str]) -> str:
    return ", ".join(values)


def _enum(value: str, allowed: tuple[str, ...] | list[str], what: str) -> str:
    if value in allowed:
        return value
    folded = {a.lower(): a for a in allowed}
    if value.lower() in folded:
        raise invalid(f'"{value}" is not a valid {what}: the CRD spelling is {folded[value.lower()]} '
                      "(enum values are case-sensitive)")
    raise invalid(f'"{value}" is not a valid {what} (one of: {_choices(allowed)})')


def check_operator(value: str) -> str:
    """Validate an arg-filter operator against the CRD enum, naming the right spelling of near misses."""
    if value in OPERATORS:
        return value
    if value in _OPERATOR_ALIASES:
        right = _OPERATOR_ALIASES[value]
        if value == "NotSPortPriv":
            raise invalid('"NotSPortPriv" is not in the CRD enum: it is spelled NotSportPriv (the docs write '
                          "NotSPortPriv, which CRD validation rejects)")
        if value == "SubStringIgnoreCase":
            raise invalid('"SubStringIgnoreCase" is not in the CRD enum: it is spelled SubStringIgnCase (the docs '
                          "write SubStringIgnoreCase, which CRD validation rejects)")
        raise invalid(f'"{value}" is not in the CRD enum: use {right} (Tetragon\'s parser accepts "{value}" but '
                      "CRD validation rejects it)")
    return _enum(value, OPERATORS, "operator")


def check_action(value: str) -> str:
    """Validate an action name (CRD enum at HEAD plus apiary's DenyConnect)."""
    if value in ACTIONS or value in APIARY_ACTIONS:
        return value
    if value in ("FollowFD", "UnfollowFD", "CopyFD"):
        raise invalid(f"action {value} was removed from Tetragon (in the CRD up to v1.7.0, gone on main); "
                      "file descriptors are resolved to paths by the fd/file arg types")
    if value.lower() in ("deny", "block", "kill"):
        raise invalid(f'there is no "{value}" action: use Sigkill (kill the caller), Signal (argSig), Override '
                      "(argError, on LSM or error-injectable hooks) or apiary's DenyConnect (connect() only)")
    if value.lower() in ("alert", "log", "audit"):
        raise invalid(f'there is no "{value}" action: an event is the alert (Post, the default); remove it')
    return _enum(value, ACTIONS + list(APIARY_ACTIONS), "action")


def parse_int(text: str) -> int:
    """An integer the way Go's strconv.ParseInt(s, 0, 64) reads it (0x.., 0o.., 0b.., leading 0 = octal)."""
    t = text.strip()
    neg = t.startswith("-")
    body = t[1:] if t[:1] in ("+", "-") else t
    if len(body) > 1 and body[0] == "0" and body[1].isdigit():
        v = int(body, 8)
    else:
        v = int(body, 0)
    return -v if neg else v


def parse_addr(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An SAddr/DAddr value: an address or a CIDR (host bits may be set, as Tetragon allows)."""
    return ipaddress.ip_network(text.strip(), strict=False)


def parse_port_range(text: str) -> tuple[int, int]:
    """A port value: ``N`` or ``min:max``."""
    lo, sep, hi = text.partition(":")
    a = int(lo)
    b = int(hi) if sep else a
    if not (0 <= a <= 65535 and 0 <= b <= 65535):
        raise ValueError(f"port {text} is out of range 0-65535")
    return (min(a, b), max(a, b))


# --- models --------------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=alias_generators.to_camel, populate_by_name=True)


class KProbeArg(_Strict):
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
        return _enum(v, ARG_TYPES, "arg type")


class ArgSelector(_Strict):
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


class BinarySelector(_Strict):
    operator: StrictStr
    values: list[StrictStr]
    follow_children: StrictBool = False

    @field_validator("operator")
    @classmethod
    def _op(cls, v: str) -> str:
        return _enum(v, BINARY_OPERATORS, "matchBinaries operator")

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


class PIDSelector(_Strict):
    operator: StrictStr
    values: list[StrictInt] = Field(max_length=MAX_PID_VALUES)
    is_namespace_pid: StrictBool = Field(False, alias="isNamespacePID")
    follow_forks: StrictBool = False

    @field_validator("operator")
    @classmethod
    def _op(cls, v: str) -> str:
        return _enum(v, ("In", "NotIn"), "matchPIDs operator")

    @field_validator("values")
    @classmethod
    def _pids(cls, v: list[int]) -> list[int]:
        for i, pid in enumerate(v):
            if not 0 <= pid <= 2**32 - 1:
                raise invalid(f"PID {pid} is out of range 0-4294967295", f"[{i}]")
        return v


class NamespaceSelector(_Strict):
    namespace: StrictStr
    operator: StrictStr
    values: list[StrictStr] = Field(max_length=MAX_NAMESPACE_VALUES)

    @field_validator("namespace")
    @classmethod
    def _ns(cls, v: str) -> str:
        return _enum(v, NAMESPACES, "namespace")

    @field_validator("operator")
    @classmethod
    def _op(cls, v: str) -> str:
        return _enum(v, ("In", "NotIn"), "matchNamespaces operator")

    @field_validator("values")
    @classmethod
    def _values(cls, v: list[str]) -> list[str]:
        for i, x in enumerate(v):
            if x != "host_ns" and not (x.isdigit() and int(x) <= 2**32 - 1):
                raise invalid(f'values for matchNamespaces can only be numeric (inode numbers) or "host_ns", not '
                              f"{x!r}", f"[{i}]")
        return v


class NamespaceChangesSelector(_Strict):
    operator: StrictStr
    values: list[StrictStr]

    @field_validator("operator")
    @classmethod
    def _op(cls, v: str) -> str:
        return _enum(v, ("In", "NotIn"), "matchNamespaceChanges operator")

    @field_validator("values")
    @classmethod
    def _values(cls, v: list[str]) -> list[str]:
        for i, x in enumerate(v):
            if x.lower() not in {n.lower() for n in NAMESPACES}:
                raise invalid(f"unknown namespace type {x!r} (one of: {_choices(NAMESPACES)})", f"[{i}]")
        return v


class CapabilitiesSelector(_Strict):
    type_: StrictStr = Field("Effective", alias="type")
    operator: StrictStr
    is_namespace_capability: StrictBool = False
    values: list[StrictStr]

    @field_validator("type_")
    @classmethod
    def _type(cls, v: str) -> str:
        return _enum(v, CAPABILITY_TYPES, "capability type")

    @field_validator("operator")
    @classmethod
    def _op(cls, v: str) -> str:
        return _enum(v, ("In", "NotIn"), "capabilities operator")

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


class WorkloadSelector(_Strict):
    pod_selector: LabelSelector | None = None
    container_selector: ContainerSelector | None = None
    host_selector: LabelSelector | None = None


class ActionSelector(_Strict):
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
            raise invalid(f"rateLimitScope {v!r} is invalid (one of: {_choices(RATE_LIMIT_SCOPES)})")
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


class KProbeSelector(_Strict):
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


_Selectors = list[KProbeSelector] | None


class HookSpec(_Strict):
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


class KProbeIgnore(_Strict):
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


class UProbeIgnore(_Strict):
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


class ListSpec(_Strict):
    name: StrictStr = Field(min_length=1)
    values: list[StrictStr] | None = None
    type_: StrictStr = Field("", alias="type")
    pattern: StrictStr | None = None
    validated: StrictBool = False

    @field_validator("type_")
    @classmethod
    def _type(cls, v: str) -> str:
        return _enum(v, LIST_TYPES, "list type") if v else v

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


class EnforcerSpec(_Strict):
    calls: list[StrictStr]


class OptionSpec(_Strict):
    name: StrictStr
    value: StrictStr = ""

    @model_validator(mode="after")
    def _check(self) -> OptionSpec:
        if self.name not in OPTIONS:
            raise invalid(f"unknown option {self.name!r} (known: {_choices(list(OPTIONS))})", "name")
        allowed = OPTIONS[self.name]
        if allowed is not None and self.value not in allowed:
            shown = ("enforce", "monitor") if self.name == "policy-mode" else allowed[:3] + ("false",)
            raise invalid(f"invalid value {self.value!r} for option {self.name} (use {' or '.join(shown)})",
                          "value")
        if self.name == "sleepable-preload-size" and not self.value.isdigit():
            raise invalid(f"sleepable-preload-size must be a number of bytes, not {self.value!r}", "value")
        return self


class TracingPolicySpec(_Strict):
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


class ObjectMeta(_Strict):
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


class TracingPolicyBase(_Strict):
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


# --- cross-field checks (Tetragon's load-time validation) ----------------------------------------


def resolve_arg(hook: HookSpec, sel: ArgSelector) -> tuple[int, KProbeArg] | str:
    """The (position in ``hook.args``, arg) an arg filter refers to, or why it refers to none.

    For kprobes, LSM hooks, uprobes and USDTs ``index`` is the argument's position in the function
    prototype, i.e. it names the ``args`` entry with that ``index`` (Tetragon's argIndexType); for
    tracepoints it is the position in the ``args`` list. A non-empty ``args`` list (the filter's own
    field) always names positions in the hook's ``args`` list."""
    args = hook.args or []
    if sel.args:
        pos = sel.args[0]
        if pos >= len(args):
            return f"args[0] = {pos} names no entry of the hook's args (it has {len(args)})"
        return pos, args[pos]
    if hook.INDEX_BY_PROTOTYPE:
        for pos, a in enumerate(args):
            if a.index == sel.index:
                return pos, a
        declared = ", ".join(str(a.index) for a in args) or "none"
        return (f"argFilter for unknown index {sel.index}: the hook declares no arg with index: {sel.index} "
                f"(declared: {declared})")
    if sel.index >= len(args):
        return f"index {sel.index} names no entry of the tracepoint's args (it has {len(args)})"
    return sel.index, args[sel.index]


def _value_problems(path: str, sel: ArgSelector, ty: str) -> list[Problem]:
    """Tetragon's per-type operator and value checks for one arg filter (pkg/selectors/kernel.go)."""
    op, values, out = sel.operator, sel.values or [], []
    if ty == "auto":  # resolved from BTF at load time: nothing to check here
        return out
    if op in SOCK_OPS:
        if ty not in SOCK_TYPES:
            return [Problem(f"{path}.operator", f"{op} is a socket operator: it needs an arg of type sock, socket, "
                            f"skb or sockaddr (this arg is {ty})")]
        if ty == "sockaddr" and op not in SOCKADDR_OPS:
            return [Problem(f"{path}.operator", f"a sockaddr arg supports only SAddr, NotSAddr, SPort, NotSPort, "
                            f"SPortPriv, NotSportPriv and Family (not {op}): the sockaddr's own address is its SAddr "
                            "(for a connect() destination use SAddr here, or DAddr on kprobe tcp_connect's sock arg)")]
    elif op in ("FileType", "NotFileType") and ty not in ("file", "path"):
        return [Problem(f"{path}.operator", f"{op} needs an arg of type file or path (this arg is {ty})")]
    elif op == "CapabilitiesGained":
        if len(sel.args or []) != 2:
            return [Problem(f"{path}.args", "CapabilitiesGained needs two args: the new and the old capabilities")]
    elif op in ("Prefix", "NotPrefix", "Postfix", "NotPostfix", "SubString", "SubStringIgnCase"):
        if ty not in STRING_TYPES:
            return [Problem(f"{path}.operator", f"{op} compares strings: it needs a string, char_buf, file, fd, path "
                            f"or filename arg (this arg is {ty})")]
    elif op in INT_VALUE_OPS and ty in SOCK_TYPES | {"char_iovec", "nop"}:
        return [Problem(f"{path}.operator", f"an arg of type {ty} does not support operator {op}")]
    for i, v in enumerate(values):
        vp = f"{path}.values[{i}]"
        n = len(v.encode())
        if op in ("Prefix", "NotPrefix") and n > MAX_PREFIX:
            out.append(Problem(vp, f"prefix longer than {MAX_PREFIX} bytes ({n})"))
        elif op in ("Postfix", "NotPostfix") and n > MAX_POSTFIX:
            out.append(Problem(vp, f"postfix longer than {MAX_POSTFIX} bytes ({n})"))
        elif op in ADDR_OPS:
            try:
                parse_addr(v)
            except ValueError:
                out.append(Problem(vp, f"{v!r} is not an IP address or CIDR"
                                   + (" (an unexpanded template placeholder?)" if "$" in v else "")))
        elif op in PORT_OPS:
            try:
                parse_port_range(v)
            except ValueError:
                out.append(Problem(vp, f"{v!r} is not a port or a min:max port range"))
        elif ty in INT_TYPES and op in INT_VALUE_OPS:
            try:
                parse_int(v)
            except ValueError:
                out.append(Problem(vp, f"{v!r} is not an integer (arg type {ty})"))
        elif ty in INT_TYPES and op in ("InRange", "NotInRange"):
            lo, sep, hi = v.partition(":")
            try:
                parse_int(lo), parse_int(hi)
                if not sep:
                    raise ValueError
            except ValueError:
                out.append(Problem(vp, f"{v!r} is not a min:max range"))
        elif ty in INT_TYPES and op in ("InMap", "NotInMap") and not v.startswith("list:"):
            try:
                for part in v.split(":", 1):
                    parse_int(part)
            except ValueError:
                out.append(Problem(vp, f"{v!r} is not an integer, a min:max range or list:NAME"))
    inline = (op in INT_VALUE_OPS and ty not in STRING_TYPES) or op in ("InRange", "NotInRange")
    if inline and len(values) > MAX_MATCH_VALUES:
        out.append(Problem(f"{path}.values", f"at most {MAX_MATCH_VALUES} values for operator {op} "
                           f"({len(values)} given): use InMap/NotInMap for more"))
    if op not in PRIV_OPS and op != "CapabilitiesGained" and not values:
        out.append(Problem(f"{path}.values", f"operator {op} needs at least one value"))
    return out


def _list_names(spec: TracingPolicySpec) -> dict[str, ListSpec]:
    return {ls.name: ls for ls in spec.lists or []}


def semantic_problems(policy: TracingPolicyBase) -> list[Problem]:
    """Every cross-field problem Tetragon would refuse at load time, each with its field path."""
    out: list[Problem] = []
    spec = policy.spec
    lists = _list_names(spec)
    seen: set[str] = set()
    for i, ls in enumerate(spec.lists or []):
        if ls.name in seen:
            out.append(Problem(f"spec.lists[{i}].name", f"list {ls.name!r} is defined twice"))
        seen.add(ls.name)
    macros = spec.selectors_macros or {}
    for path, hook in spec.hooks():
        hp = f"spec.{path}"
        if isinstance(hook, KProbeSpec) and hook.call.startswith("list:"):
            name = hook.call.removeprefix("list:")
            if name not in lists:
                out.append(Problem(f"{hp}.call", f"list {name!r} is not defined in spec.lists"))
        for si, sel in enumerate(hook.selectors or []):
            sp = f"{hp}.selectors[{si}]"
            for mi, m in enumerate(sel.macros or []):
                if m not in macros:
                    out.append(Problem(f"{sp}.macros[{mi}]", f"selector macro {m!r} is not defined in "
                                       "spec.selectorsMacros"))
            for ai, a in enumerate(sel.match_args or []):
                ap = f"{sp}.matchArgs[{ai}]"
                found = resolve_arg(hook, a)
                if isinstance(found, str):
                    out.append(Problem(f"{ap}.args" if a.args else f"{ap}.index", found))
                    continue
                out.extend(_value_problems(ap, a, found[1].type_))
                for vi, v in enumerate(a.values or []):
                    if v.startswith("list:") and a.operator in ("InMap", "NotInMap") \
                            and v.removeprefix("list:") not in lists:
                        out.append(Problem(f"{ap}.values[{vi}]", f"list {v.removeprefix('list:')!r} is not "
                                           "defined in spec.lists"))
            rets = sel.match_return_args or []
            ret_arg = getattr(hook, "return_arg", None)
            for ai, a in enumerate(rets):
                ap = f"{sp}.matchReturnArgs[{ai}]"
                if ret_arg is None:
                    out.append(Problem(ap, "matchReturnArgs needs a returnArg"))
                else:
                    out.extend(_value_problems(ap, a, ret_arg.type_))
            for ai, a in enumerate(sel.match_data or []):
                data = getattr(hook, "data", None) or []
                if not a.args and a.index >= len(data):
                    out.append(Problem(f"{sp}.matchData[{ai}].index", f"matchData index out of bounds (0,{len(data)})"))
            for ai, act in enumerate(sel.match_actions or []):
                if act.action == "Override" and isinstance(hook, TracepointSpec):
                    out.append(Problem(f"{sp}.matchActions[{ai}].action", "Override is not available on tracepoints"))
    return out


def ensure_valid(policy: TracingPolicyBase) -> None:
    """Raise :class:`PolicyError` when :func:`semantic_problems` finds anything."""
    problems = semantic_problems(policy)
    if problems:
        raise PolicyError(problems)
