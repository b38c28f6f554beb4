"""Attachments. One class per attach type; each owns a kernel link (or TC filter) and detaches it."""

from __future__ import annotations

import ctypes
import errno
import os
from typing import Self

from . import _libbpf as L
from .errors import BpfError, from_errno
from .fs import TRACEFS, is_mounted
from .object import Program, prog_info

BPF_TCX_INGRESS, BPF_TCX_EGRESS = 46, 47
TC_INGRESS, TC_EGRESS = 1 << 0, 1 << 1


class Link:
    """A bpf_link created by libbpf. ``destroy()`` detaches; the object is also a context manager."""

    kind = "link"

    def __init__(self, prog: Program, ptr: int, target: str) -> None:
        self.prog = prog
        self.ptr: int | None = ptr
        self.target = target
        self.pin_path: str | None = None

    @property
    def fd(self) -> int:
        return L.lib.bpf_link__fd(self.ptr) if self.ptr else -1

    @property
    def id(self) -> int:
        return _link_info(self.fd).id if self.ptr else 0

    def pin(self, path: str) -> None:
        if L.lib.bpf_link__pin(self.ptr, path.encode()) != 0:
            raise BpfError(f"pin link of {self.prog.name} at {path}", L.errno())
        self.pin_path = path

    def destroy(self) -> None:
        if self.ptr:
            if self.pin_path:
                L.lib.bpf_link__unpin(self.ptr)
                self.pin_path = None
            L.lib.bpf_link__destroy(self.ptr)
            self.ptr = None

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def describe(self) -> str:
        return f"{self.kind} {self.target}"

    @classmethod
    def _make(cls, prog: Program, ptr: int | None, target: str, feature: str) -> Self:
        if not ptr:
            raise from_errno(f"attach {prog.name} to {cls.kind} {target}", L.errno(), feature)
        return cls(prog, ptr, target)


class TracepointLink(Link):
    kind = "tracepoint"

    @classmethod
    def attach(cls, prog: Program, category: str, name: str, cookie: int = 0) -> TracepointLink:
        if cookie:
            opts = L.BpfTracepointOpts(sz=ctypes.sizeof(L.BpfTracepointOpts), bpf_cookie=cookie)
            ptr = L.lib.bpf_program__attach_tracepoint_opts(
                prog.ptr, category.encode(), name.encode(), ctypes.byref(opts)
            )
        else:
            ptr = L.lib.bpf_program__attach_tracepoint(prog.ptr, category.encode(), name.encode())
        if not ptr and L.errno() == 2 and not is_mounted(TRACEFS, "tracefs"):
            raise BpfError(
                f"attach {prog.name} to tracepoint {category}/{name}",
                2,
                f"tracefs is not mounted at {TRACEFS} (run `apiary preflight --fix`)",
            )
        return cls._make(prog, ptr, f"{category}/{name}", f"tracepoint {category}/{name}")


class RawTracepointLink(Link):
    kind = "raw_tp"

    @classmethod
    def attach(cls, prog: Program, name: str) -> RawTracepointLink:
        ptr = L.lib.bpf_program__attach_raw_tracepoint(prog.ptr, name.encode())
        return cls._make(prog, ptr, name, f"raw tracepoint {name}")


class TracingLink(Link):
    """tp_btf / fentry / fexit / fmod_ret: the target is in the program's section name."""

    kind = "tracing"

    @classmethod
    def attach(cls, prog: Program) -> TracingLink:
        ptr = L.lib.bpf_program__attach_trace(prog.ptr)
        return cls._make(prog, ptr, prog.section, prog.section.split("/")[0])


class LsmLink(Link):
    kind = "lsm"

    @classmethod
    def attach(cls, prog: Program) -> LsmLink:
        ptr = L.lib.bpf_program__attach_lsm(prog.ptr)
        return cls._make(prog, ptr, prog.section, "BPF-LSM")


class KprobeLink(Link):
    kind = "kprobe"

    @classmethod
    def attach(cls, prog: Program, func: str, retprobe: bool = False, cookie: int = 0) -> KprobeLink:
        opts = L.BpfKprobeOpts(sz=ctypes.sizeof(L.BpfKprobeOpts), bpf_cookie=cookie, retprobe=retprobe)
        ptr = L.lib.bpf_program__attach_kprobe_opts(prog.ptr, func.encode(), ctypes.byref(opts))
        kind = "kretprobe" if retprobe else "kprobe"
        return cls._make(prog, ptr, f"{kind}:{func}", kind)


class UprobeLink(Link):
    kind = "uprobe"

    @classmethod
    def attach(
        cls,
        prog: Program,
        binary: str,
        symbol: str | None = None,
        offset: int = 0,
        pid: int = -1,
        retprobe: bool = False,
        cookie: int = 0,
    ) -> UprobeLink:
        opts = L.BpfUprobeOpts(
            sz=ctypes.sizeof(L.BpfUprobeOpts),
            retprobe=retprobe,
            func_name=symbol.encode() if symbol else None,
            bpf_cookie=cookie,
        )
        ptr = L.lib.bpf_program__attach_uprobe_opts(prog.ptr, pid, binary.encode(), offset, ctypes.byref(opts))
        return cls._make(prog, ptr, f"{binary}:{symbol or hex(offset)}", "uprobe")


class XdpLink(Link):
    kind = "xdp"

    @classmethod
    def attach(cls, prog: Program, ifindex: int) -> XdpLink:
        ptr = L.lib.bpf_program__attach_xdp(prog.ptr, ifindex)
        return cls._make(prog, ptr, f"ifindex {ifindex}", "XDP link")


class CgroupLink(Link):
    kind = "cgroup"

    @classmethod
    def attach(cls, prog: Program, cgroup_path: str) -> CgroupLink:
        fd = os.open(cgroup_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            ptr = L.lib.bpf_program__attach_cgroup(prog.ptr, fd)
        finally:
            os.close(fd)
        return cls._make(prog, ptr, f"{cgroup_path} ({prog.section})", f"cgroup hook {prog.section}")


class NetnsLink(Link):
    kind = "netns"

    @classmethod
    def attach(cls, prog: Program, netns_path: str) -> NetnsLink:
        fd = os.open(netns_path, os.O_RDONLY)
        try:
            ptr = L.lib.bpf_program__attach_netns(prog.ptr, fd)
        finally:
            os.close(fd)
        return cls._make(prog, ptr, netns_path, f"netns hook {prog.section}")


class TcxLink:
    """tcx attach through bpf_link_create (libbpf 1.1 has no wrapper)."""

    kind = "tcx"

    def __init__(self, prog: Program, fd: int, target: str) -> None:
        self.prog, self.link_fd, self.target = prog, fd, target
        self.pin_path: str | None = None

    @classmethod
    def attach(cls, prog: Program, ifindex: int, egress: bool) -> TcxLink:
        opts = L.BpfLinkCreateOpts(sz=ctypes.sizeof(L.BpfLinkCreateOpts))
        at = BPF_TCX_EGRESS if egress else BPF_TCX_INGRESS
        fd = L.lib.bpf_link_create(prog.fd, ifindex, at, ctypes.byref(opts))
        direction = "egress" if egress else "ingress"
        if fd < 0:
            raise from_errno(f"attach {prog.name} to tcx {direction} of ifindex {ifindex}", L.errno(), "tcx")
        return cls(prog, fd, f"ifindex {ifindex} {direction}")

    @property
    def fd(self) -> int:
        return self.link_fd

    @property
    def id(self) -> int:
        return _link_info(self.link_fd).id if self.link_fd >= 0 else 0

    def pin(self, path: str) -> None:
        if L.lib.bpf_obj_pin(self.link_fd, path.encode()) != 0:
            raise BpfError(f"pin link of {self.prog.name} at {path}", L.errno())
        self.pin_path = path

    def destroy(self) -> None:
        _release(self)

    def describe(self) -> str:
        return f"tcx {self.target}"


BPF_XDP = 37
XDP_FLAGS_SKB_MODE, XDP_FLAGS_DRV_MODE = 1 << 1, 1 << 2
XDP_MODES = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}


class XdpModeLink(TcxLink):
    """An XDP bpf_link in a chosen mode (bpf_link_create with XDP_FLAGS_*): "native" (the driver runs the
    program) or "generic" (the stack runs it on the skb, any device); ``mode`` says which one holds."""

    kind = "xdp"

    def __init__(self, prog: Program, fd: int, target: str, mode: str) -> None:
        super().__init__(prog, fd, target)
        self.mode = mode

    @classmethod
    def attach_mode(cls, prog: Program, ifindex: int, mode: str) -> XdpModeLink:
        opts = L.BpfLinkCreateOpts(sz=ctypes.sizeof(L.BpfLinkCreateOpts), flags=XDP_MODES[mode])
        fd = L.lib.bpf_link_create(prog.fd, ifindex, BPF_XDP, ctypes.byref(opts))
        if fd < 0:
            raise from_errno(f"attach {prog.name} to XDP ({mode}) of ifindex {ifindex}", L.errno(), f"XDP {mode}")
        return cls(prog, fd, f"ifindex {ifindex}", mode)

    def xdp_ifindex(self) -> int:
        """The device this link holds (0 once that device is gone)."""
        return int(_link_info(self.link_fd).u[0]) & 0xFFFFFFFF

    def describe(self) -> str:
        return f"xdp {self.mode} {self.target}"


class RawTracepointCookieLink(TcxLink):
    """A raw tracepoint with an attach cookie: BPF_RAW_TRACEPOINT_OPEN's cookie field (Linux 6.10+); libbpf 1.1
    has no wrapper, so this is the bpf() syscall itself."""

    kind = "raw_tp"

    @classmethod
    def attach_raw(cls, prog: Program, name: str, cookie: int) -> RawTracepointCookieLink:
        libc = L.libc
        buf = ctypes.create_string_buffer(name.encode())
        # union bpf_attr.raw_tracepoint: __u64 name; __u32 prog_fd; __u32 pad; __u64 cookie
        attr = ctypes.create_string_buffer(24)
        ctypes.memmove(attr, ctypes.byref(ctypes.c_uint64(ctypes.addressof(buf))), 8)
        ctypes.memmove(ctypes.addressof(attr) + 8, ctypes.byref(ctypes.c_uint32(prog.fd)), 4)
        ctypes.memmove(ctypes.addressof(attr) + 16, ctypes.byref(ctypes.c_uint64(cookie)), 8)
        sys_bpf, bpf_raw_tracepoint_open = 321, 17  # x86_64
        fd = libc.syscall(sys_bpf, bpf_raw_tracepoint_open, attr, 24)
        if fd < 0:
            raise from_errno(f"attach {prog.name} to raw tracepoint {name}", ctypes.get_errno(), "raw tracepoint")
        return cls(prog, fd, name)

    def describe(self) -> str:
        return f"raw tracepoint {self.target}"


class ProgRef:
    """The program of an adopted link, held open by fd (its name and id from the kernel)."""

    def __init__(self, name: str, prog_id: int, fd: int) -> None:
        self.name, self.id, self.fd = name, prog_id, fd


class PinnedLink:
    """A link an earlier agent pinned in bpffs, adopted: the pin keeps it attached while no process holds it;
    ``destroy()`` removes the pin and closes this fd, which detaches it."""

    kind = "pinned"

    def __init__(self, fd: int, pin_path: str, target: str) -> None:
        self.link_fd, self.target = fd, target
        self.pin_path: str | None = pin_path
        info = _link_info(fd)
        self.link_id = info.id
        pfd = L.lib.bpf_prog_get_fd_by_id(info.prog_id)
        if pfd < 0:
            raise BpfError(f"open the program of pinned link {pin_path}", L.errno())
        try:
            name = prog_info(pfd).name.decode()
        except BaseException:
            os.close(pfd)
            raise
        self.prog = ProgRef(name, info.prog_id, pfd)

    @classmethod
    def open(cls, path: str, target: str) -> PinnedLink:
        fd = L.lib.bpf_obj_get(path.encode())
        if fd < 0:
            raise BpfError(f"open pinned link {path}", L.errno())
        try:
            return cls(fd, path, target)
        except BaseException:
            os.close(fd)
            raise

    @property
    def fd(self) -> int:
        return self.link_fd

    @property
    def id(self) -> int:
        return self.link_id

    def xdp_ifindex(self) -> int:
        """The device an XDP link holds (0 once that device is gone)."""
        return int(_link_info(self.link_fd).u[0]) & 0xFFFFFFFF

    def destroy(self) -> None:
        _release(self)
        if self.prog.fd >= 0:
            os.close(self.prog.fd)
            self.prog.fd = -1

    def describe(self) -> str:
        return f"{self.target} (adopted from the previous agent)"


def _link_info(fd: int) -> L.BpfLinkInfo:
    info = L.BpfLinkInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    if fd < 0 or L.lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)) != 0:
        return L.BpfLinkInfo()
    return info


def _release(link: TcxLink | PinnedLink) -> None:
    """Remove a link's pin and close its fd: the kernel detaches it once nothing else holds it."""
    if link.link_fd >= 0:
        _unpin(link.pin_path)
        link.pin_path = None
        os.close(link.link_fd)
        link.link_fd = -1


def _unpin(path: str | None) -> None:
    if path:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


class TcFilter:
    """Classic clsact + cls_bpf filter (bpf_tc_*). Destroying removes the filter, not the qdisc."""

    kind = "tc"

    def __init__(self, prog: Program, hook: L.BpfTcHook, opts: L.BpfTcOpts, target: str) -> None:
        self.prog, self.hook, self.opts, self.target = prog, hook, opts, target
        self.attached = True

    @classmethod
    def attach(cls, prog: Program, ifindex: int, egress: bool, handle: int = 1, priority: int = 1) -> TcFilter:
        hook = L.BpfTcHook(
            sz=ctypes.sizeof(L.BpfTcHook), ifindex=ifindex, attach_point=TC_EGRESS if egress else TC_INGRESS
        )
        rc = L.lib.bpf_tc_hook_create(ctypes.byref(hook))
        if rc != 0 and rc != -errno.EEXIST:  # the clsact qdisc is already there
            raise from_errno(f"create clsact qdisc on ifindex {ifindex}", -rc, "tc clsact")
        opts = L.BpfTcOpts(
            sz=ctypes.sizeof(L.BpfTcOpts), prog_fd=prog.fd, handle=handle, priority=priority, flags=1
        )  # BPF_TC_F_REPLACE
        rc = L.lib.bpf_tc_attach(ctypes.byref(hook), ctypes.byref(opts))
        direction = "egress" if egress else "ingress"
        if rc != 0:
            raise from_errno(f"attach {prog.name} to tc {direction} of ifindex {ifindex}", -rc, "tc cls_bpf")
        return cls(prog, hook, opts, f"ifindex {ifindex} {direction}")

    def destroy(self) -> None:
        if self.attached:
            o = L.BpfTcOpts(sz=ctypes.sizeof(L.BpfTcOpts), handle=self.opts.handle, priority=self.opts.priority)
            L.lib.bpf_tc_detach(ctypes.byref(self.hook), ctypes.byref(o))
            self.attached = False

    def describe(self) -> str:
        return f"tc {self.target}"


AnyLink = Link | TcxLink | TcFilter | PinnedLink
