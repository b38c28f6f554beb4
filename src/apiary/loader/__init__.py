"""The only layer that talks to libbpf. Everything above it uses these classes."""

from .errors import BpfError, NotSupportedError, VerifierError
from .links import (
    CgroupLink,
    KprobeLink,
    Link,
    LsmLink,
    PinnedLink,
    RawTracepointCookieLink,
    RawTracepointLink,
    TcFilter,
    TcxLink,
    TracepointLink,
    TracingLink,
    UprobeLink,
    XdpLink,
    XdpModeLink,
)
from .maps import BPF_ANY, BPF_EXIST, BPF_NOEXIST, Map, TypedMap
from .object import BpfObject, Program
from .ringbuf import RingBuffer

__all__ = [
    "BPF_ANY",
    "BPF_EXIST",
    "BPF_NOEXIST",
    "BpfError",
    "BpfObject",
    "CgroupLink",
    "KprobeLink",
    "Link",
    "LsmLink",
    "Map",
    "NotSupportedError",
    "PinnedLink",
    "Program",
    "RawTracepointCookieLink",
    "RawTracepointLink",
    "RingBuffer",
    "TcFilter",
    "TcxLink",
    "TracepointLink",
    "TracingLink",
    "TypedMap",
    "UprobeLink",
    "VerifierError",
    "XdpLink",
    "XdpModeLink",
]
