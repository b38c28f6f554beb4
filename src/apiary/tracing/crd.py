"""The vocabulary of Tetragon's TracingPolicy CRD (cilium.io/v1alpha1) and the parsers of its scalar values.

The enums at Tetragon HEAD (arg types, operators, actions, namespaces, capabilities, list types, options;
FORMATS.md §4.2-4.4), Tetragon's load-time limits (pkg/selectors/kernel.go), the type and operator families the
checks group them into, and the value parsers (integers as Go's strconv reads them, addresses, port ranges).
An enum value that is misspelled is an error naming the CRD's spelling. Shared by the models
(:mod:`apiary.tracing.models`), the semantic checks (:mod:`apiary.tracing.checks`) and the compiler.
"""

from __future__ import annotations

import ipaddress

from apiary.policy.models import invalid

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


def choices(values: tuple[str, ...] | list[str]) -> str:
    return ", ".join(values)


def enum_value(value: str, allowed: tuple[str, ...] | list[str], what: str) -> str:
    if value in allowed:
        return value
    folded = {a.lower(): a for a in allowed}
    if value.lower() in folded:
        raise invalid(f'"{value}" is not a valid {what}: the CRD spelling is {folded[value.lower()]} '
                      "(enum values are case-sensitive)")
    raise invalid(f'"{value}" is not a valid {what} (one of: {choices(allowed)})')


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
    return enum_value(value, OPERATORS, "operator")


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
    return enum_value(value, ACTIONS + list(APIARY_ACTIONS), "action")


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
