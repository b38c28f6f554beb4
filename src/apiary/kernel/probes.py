"""Kernel probes: each program type loaded and attached for real, to learn what this kernel allows.

Nothing here reads a version number to decide. Every program type is loaded from
``build/probes.bpf.o`` ONE AT A TIME (the object is re-opened for each probe, autoload off for
every other program), then attached to a real target, and tracing probes must also be seen to run.
Networking hooks are tried in a private network namespace that only a worker thread enters (a veth
pair inside it), cgroup hooks on a temporary cgroup under the cgroup v2 root. Everything created is
removed before :func:`probe_all` returns, also on failure. :mod:`apiary.kernel.preflight` turns the
results into the report.
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
import secrets
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

# The loader needs libbpf.so.1; without it preflight still reports (one required failure).
try:
    from apiary.loader import (
        BpfError,
        BpfObject,
        CgroupLink,
        KprobeLink,
        LsmLink,
        RawTracepointLink,
        TcFilter,
        TcxLink,
        TracepointLink,
        TracingLink,
        UprobeLink,
        VerifierError,
    )
    from apiary.loader import _libbpf as L
    from apiary.loader.links import NetnsLink

    LOADER_ERROR: str | None = None
except OSError as _e:  # pragma: no cover - only on a machine without libbpf
    LOADER_ERROR = str(_e)

__all__ = [
    "LOADER_ERROR",
    "PROBES",
    "NotTried",
    "default_probe_object",
    "error_text",
    "probe_all",
    "tracepoint_record_loads",
]


# -------------------------------------------------------------------------------- error wording
class NotTried(Exception):
    """A probe could not be tried because something it needs is missing."""


def error_text(e: BaseException) -> str:
    """The exact error, short: "Operation not permitted", "Invalid argument: verifier: …"."""
    if LOADER_ERROR is None and isinstance(e, VerifierError):
        reason = e.summary.splitlines()[0].removeprefix("reason: ")
        return f"{os.strerror(e.errno)}: verifier: {reason}" if e.errno else f"verifier: {reason}"
    if LOADER_ERROR is None and isinstance(e, BpfError):
        text = os.strerror(e.errno) if e.errno else e.context
        if e.detail and not e.detail.startswith("libbpf:"):
            text += f": {e.detail}"
        return text
    if isinstance(e, subprocess.CalledProcessError):
        lines = (e.stderr or "").strip().splitlines()
        return lines[-1] if lines else f"{e.cmd[0]} exited with {e.returncode}"
    if isinstance(e, OSError) and e.errno:
        return os.strerror(e.errno)
    return str(e) or type(e).__name__


# ---------------------------------------------------------------------------------- probe engine
class _Detachable(Protocol):
    def destroy(self) -> None: ...


class _FdLink:
    """A kernel link held only by its fd (bpf_link_create); closing the fd detaches."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def destroy(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _Call:
    """Runs a clean-up function once."""

    def __init__(self, fn: Callable[[], object]) -> None:
        self.fn: Callable[[], object] | None = fn

    def destroy(self) -> None:
        if self.fn is not None:
            fn, self.fn = self.fn, None
            fn()


@dataclass
class _Env:
    """What probes attach to. Missing pieces carry the reason they are missing."""

    libc: str | None = None
    cgroup: str | None = None
    cgroup_error: str = "no cgroup v2 mount"
    netns: str | None = None
    dev_a: int = 0  # veth, primary side
    dev_b: int = 0  # veth peer
    lo: int = 0
    veth_error: str = ""


AttachFn = Callable[["BpfObject", _Env], list[_Detachable]]


@dataclass(frozen=True)
class _Probe:
    name: str
    programs: tuple[str, ...]
    maps: tuple[str, ...] = ()
    attach: AttachFn | None = None  # None: load only
    target: str = ""  # said in the detail when it worked
    trigger: Callable[[], None] | None = None
    hit: int | None = None  # index in the `hits` map the program bumps


# indices of `hits` in probes.bpf.c
HIT_TRACEPOINT, HIT_TP_BTF, HIT_RAW_TP, HIT_KPROBE, HIT_FENTRY, HIT_LSM, HIT_UPROBE = range(7)


def _need(value: Any, why: str) -> Any:
    if not value:
        raise NotTried(why)
    return value


def _try_probe(path: Path, probe: _Probe, env: _Env) -> tuple[bool, str]:
    """Open the object, load only this probe's programs, attach, trigger; always clean up."""
    try:
        obj = BpfObject(path, name="probes")
    except Exception as e:  # noqa: BLE001 - any failure is the finding
        return False, f"open: {error_text(e)}"
    links: list[_Detachable] = []
    try:
        for p in obj.programs.values():
            p.autoload = p.name in probe.programs
        m = L.lib.bpf_object__next_map(obj.ptr, None)
        while m:
            mname = L.lib.bpf_map__name(m).decode()
            if not mname.startswith("."):
                L.lib.bpf_map__set_autocreate(m, mname in probe.maps)
            m = L.lib.bpf_object__next_map(obj.ptr, m)
        try:
            obj.load()
        except Exception as e:  # noqa: BLE001
            return False, f"load: {error_text(e)}"
        if probe.attach is None:
            return True, "loaded: the verifier accepts it"
        try:
            links.extend(probe.attach(obj, env))
        except NotTried as e:
            return False, f"loaded; attach not tried: {e}"
        except Exception as e:  # noqa: BLE001
            return False, f"attach: {error_text(e)}"
        if probe.trigger is None or probe.hit is None:
            return True, f"attached to {probe.target}"
        try:
            probe.trigger()
            raw = obj.map("hits").lookup(struct.pack("<I", probe.hit))
        except Exception as e:  # noqa: BLE001
            return False, f"attached to {probe.target}; trigger: {error_text(e)}"
        runs = struct.unpack("<Q", raw)[0] if raw else 0
        if not runs:
            return False, f"attached to {probe.target}, but it never ran when triggered"
        return True, f"attached to {probe.target}; ran"
    finally:
        for link in reversed(links):
            with suppress(Exception):
                link.destroy()
        obj.close()


# ---- attach functions ---------------------------------------------------------------------------
def _attach_tracepoint(obj: BpfObject, env: _Env) -> list[_Detachable]:
    return [TracepointLink.attach(obj.program("probe_tracepoint"), "syscalls", "sys_enter_getpid")]


def _attach_tracing(prog: str) -> AttachFn:
    return lambda obj, env: [TracingLink.attach(obj.program(prog))]


def _attach_raw_tp(obj: BpfObject, env: _Env) -> list[_Detachable]:
    return [RawTracepointLink.attach(obj.program("probe_raw_tp"), "sys_enter")]


def _attach_kprobe(obj: BpfObject, env: _Env) -> list[_Detachable]:
    return [KprobeLink.attach(obj.program("probe_kprobe"), "do_sys_openat2")]


def _attach_lsm(obj: BpfObject, env: _Env) -> list[_Detachable]:
    return [LsmLink.attach(obj.program("probe_lsm"))]


def _attach_uprobe(obj: BpfObject, env: _Env) -> list[_Detachable]:
    libc = _need(env.libc, "libc not found in /proc/self/maps")
    return [UprobeLink.attach(obj.program("probe_uprobe"), libc, "getpid")]


def _attach_cgroup(*progs: str) -> AttachFn:
    def attach(obj: BpfObject, env: _Env) -> list[_Detachable]:
        cg = _need(env.cgroup, env.cgroup_error)
        out: list[_Detachable] = []
        try:
            for p in progs:
                out.append(CgroupLink.attach(obj.program(p), cg))
        except Exception:
            for link in out:
                link.destroy()
            raise
        return out

    return attach


def _attach_sk_msg(obj: BpfObject, env: _Env) -> list[_Detachable]:
    prog, sockhash = obj.program("probe_sk_msg"), obj.map("probe_sockhash")
    if L.lib.bpf_prog_attach(prog.fd, sockhash.fd, 7, 0) != 0:  # BPF_SK_MSG_VERDICT
        err = L.errno()
        raise OSError(err, os.strerror(err))
    return [_Call(lambda: L.lib.bpf_prog_detach2(prog.fd, sockhash.fd, 7))]


def _attach_sk_lookup(obj: BpfObject, env: _Env) -> list[_Detachable]:
    ns = _need(env.netns, "no private network namespace")
    return [NetnsLink.attach(obj.program("probe_sk_lookup"), ns)]


def _attach_tc(obj: BpfObject, env: _Env) -> list[_Detachable]:
    ifindex = _need(env.dev_a or env.lo, "no device in the private network namespace")
    filt = TcFilter.attach(obj.program("probe_tc"), ifindex, egress=False)

    def remove_qdisc() -> None:
        hook = L.BpfTcHook(sz=ctypes.sizeof(L.BpfTcHook), ifindex=ifindex, attach_point=1 | 2)
        L.lib.bpf_tc_hook_destroy(ctypes.byref(hook))

    return [_Call(remove_qdisc), filt]  # destroyed in reverse: filter first, then the clsact qdisc


def _attach_tcx(obj: BpfObject, env: _Env) -> list[_Detachable]:
    ifindex = _need(env.dev_a or env.lo, "no device in the private network namespace")
    return [TcxLink.attach(obj.program("probe_tc"), ifindex, egress=False)]


XDP_FLAGS_SKB_MODE, XDP_FLAGS_DRV_MODE, BPF_XDP = 2, 4, 37


def _xdp_link(obj: BpfObject, ifindex: int, flags: int) -> _FdLink:
    opts = L.BpfLinkCreateOpts(sz=ctypes.sizeof(L.BpfLinkCreateOpts), flags=flags)
    fd = L.lib.bpf_link_create(obj.program("probe_xdp").fd, ifindex, BPF_XDP, ctypes.byref(opts))
    if fd < 0:
        err = L.errno()
        raise OSError(err, os.strerror(err))
    return _FdLink(fd)


def _attach_xdp_native(obj: BpfObject, env: _Env) -> list[_Detachable]:
    ifindex = _need(env.dev_a, f"no veth pair ({env.veth_error or 'not created'})")
    return [_xdp_link(obj, ifindex, XDP_FLAGS_DRV_MODE)]


def _attach_xdp_generic(obj: BpfObject, env: _Env) -> list[_Detachable]:
    ifindex = _need(env.dev_b or env.lo, "no device in the private network namespace")
    return [_xdp_link(obj, ifindex, XDP_FLAGS_SKB_MODE)]


# ---- triggers -----------------------------------------------------------------------------------
def _getpid() -> None:
    os.getpid()  # the getpid syscall through libc's getpid


def _exec_true() -> None:
    subprocess.run([shutil.which("true") or "/bin/true"], check=False)


def _open_file() -> None:
    os.close(os.open("/proc/self/stat", os.O_RDONLY))


def _unlink_absent() -> None:
    with suppress(FileNotFoundError):
        os.unlink(f"/tmp/.apiary-preflight-absent-{os.getpid()}-{secrets.token_hex(4)}")


PROBES: dict[str, _Probe] = {
    p.name: p
    for p in (
        _Probe(
            "tracepoint",
            ("probe_tracepoint",),
            ("hits",),
            _attach_tracepoint,
            "tracepoint syscalls/sys_enter_getpid",
            _getpid,
            HIT_TRACEPOINT,
        ),
        _Probe(
            "tp_btf",
            ("probe_tp_btf",),
            ("hits",),
            _attach_tracing("probe_tp_btf"),
            "tp_btf/sched_process_exec",
            _exec_true,
            HIT_TP_BTF,
        ),
        _Probe("raw_tp", ("probe_raw_tp",), ("hits",), _attach_raw_tp, "raw_tp/sys_enter", _getpid, HIT_RAW_TP),
        _Probe(
            "kprobe",
            ("probe_kprobe",),
            ("hits",),
            _attach_kprobe,
            "kprobe:do_sys_openat2",
            _open_file,
            HIT_KPROBE,
        ),
        _Probe(
            "fentry",
            ("probe_fentry",),
            ("hits",),
            _attach_tracing("probe_fentry"),
            "fentry/do_unlinkat",
            _unlink_absent,
            HIT_FENTRY,
        ),
        _Probe("lsm", ("probe_lsm",), ("hits",), _attach_lsm, "lsm/file_open", _open_file, HIT_LSM),
        _Probe("uprobe", ("probe_uprobe",), ("hits",), _attach_uprobe, "libc getpid", _getpid, HIT_UPROBE),
        _Probe("tc", ("probe_tc",), (), _attach_tc, "clsact ingress of a veth in a private netns"),
        _Probe("tcx", ("probe_tc",), (), _attach_tcx, "tcx ingress of a veth in a private netns"),
        _Probe("xdp_native", ("probe_xdp",), (), _attach_xdp_native, "a veth in driver mode (bpf_link)"),
        _Probe("xdp_generic", ("probe_xdp",), (), _attach_xdp_generic, "a veth in generic mode (bpf_link)"),
        _Probe(
            "cgroup_skb",
            ("probe_cgroup_skb_ingress", "probe_cgroup_skb_egress"),
            (),
            _attach_cgroup("probe_cgroup_skb_ingress", "probe_cgroup_skb_egress"),
            "ingress+egress of a temporary cgroup",
        ),
        _Probe(
            "cgroup_sock_addr",
            ("probe_connect4",),
            (),
            _attach_cgroup("probe_connect4"),
            "cgroup/connect4 of a temporary cgroup",
        ),
        _Probe("sk_lookup", ("probe_sk_lookup",), (), _attach_sk_lookup, "a private netns"),
        _Probe(
            "sock_ops",
            ("probe_sock_ops",),
            (),
            _attach_cgroup("probe_sock_ops"),
            "sockops of a temporary cgroup",
        ),
        _Probe("sk_msg", ("probe_sk_msg",), ("probe_sockhash",), _attach_sk_msg, "a sockhash (msg verdict)"),
        _Probe("ringbuf", ("probe_ringbuf",), ("probe_rb",)),
        _Probe("send_signal", ("probe_send_signal",)),
        _Probe("probe_write_user", ("probe_write_user",)),
    )
}
_NETPROBES = ("tc", "tcx", "xdp_native", "xdp_generic", "sk_lookup")
_CGROUPPROBES = ("cgroup_skb", "cgroup_sock_addr", "sock_ops")


def default_probe_object() -> Path:
    from apiary.loader.paths import bpf_object

    return bpf_object("probes")


# ---------------------------------------------------------------------- private netns, temp cgroup
CLONE_NEWNET = 0x40000000
T = TypeVar("T")
_libc = ctypes.CDLL(None, use_errno=True)  # unshare/setns: Python 3.11 has no os.unshare/os.setns
_libc.unshare.argtypes, _libc.unshare.restype = [ctypes.c_int], ctypes.c_int
_libc.setns.argtypes, _libc.setns.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int


def _in_netns_thread(enter: Callable[[], None], fn: Callable[[], T], name: str) -> T:
    """Run ``fn`` in a worker thread that ``enter`` moves into another network namespace; the thread goes
    back to the original one before it ends, and the caller's threads never move."""
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            box["error"] = e
            return
        try:
            enter()
            try:
                box["value"] = fn()
            finally:
                _libc.setns(orig, CLONE_NEWNET)
        except BaseException as e:  # noqa: BLE001 - reported by the caller
            box["error"] = e
        finally:
            os.close(orig)

    t = threading.Thread(target=work, name=name, daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return cast(T, box["value"])


def _in_private_netns(fn: Callable[[], dict[str, tuple[bool, str]]]) -> dict[str, tuple[bool, str]]:
    """Run ``fn`` in a worker thread that has its own, fresh network namespace.

    Only that thread enters it; it goes back to the original namespace before it ends, so the
    private one (and any device in it) disappears with its last reference. Nothing is named in
    /run/netns, nothing is left behind.
    """

    def enter() -> None:
        if _libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")

    return _in_netns_thread(enter, fn, "apiary-preflight-netns")


def in_named_netns(name: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` inside the named network namespace /run/netns/NAME (e.g. to attach XDP to a device
    there: the ifindex and the link belong to that namespace), from a worker thread."""

    def enter() -> None:
        fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns({name}): {os.strerror(err)}")
        finally:
            os.close(fd)

    return _in_netns_thread(enter, fn, "apiary-netns")


_VETH_A, _VETH_B = "apf0", "apf1"


def _net_env(env: _Env) -> _Env:
    """Inside the private netns: lo up, and a veth pair (names are private to this netns)."""
    net = _Env(libc=env.libc, cgroup=env.cgroup, cgroup_error=env.cgroup_error)
    net.netns = "/proc/thread-self/ns/net"
    script = f"link set lo up\nlink add {_VETH_A} type veth peer name {_VETH_B}\nlink set {_VETH_A} up\n"
    script += f"link set {_VETH_B} up\n"
    try:
        subprocess.run(["ip", "-batch", "-"], input=script, text=True, check=True, capture_output=True, timeout=5)
    except (OSError, subprocess.SubprocessError) as e:
        net.veth_error = f"ip link add veth: {error_text(e)}"
    with suppress(OSError):
        net.lo = socket.if_nametoindex("lo")
    with suppress(OSError):
        net.dev_a = socket.if_nametoindex(_VETH_A)
        net.dev_b = socket.if_nametoindex(_VETH_B)
    return net


@contextmanager
def _temp_cgroup(root: str | None) -> Iterator[tuple[str | None, str]]:
    """A fresh cgroup under the v2 root, removed afterwards: (path or None, why not)."""
    if not root:
        yield None, "no cgroup v2 mount"
        return
    path = os.path.join(root, f"apiary-preflight-{os.getpid()}-{secrets.token_hex(3)}")
    try:
        os.mkdir(path)
    except OSError as e:
        yield None, f"mkdir {path}: {error_text(e)}"
        return
    try:
        yield path, ""
    finally:
        for _ in range(50):
            try:
                os.rmdir(path)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.01)


def _find_libc() -> str | None:
    with suppress(OSError), open("/proc/self/maps") as f:
        for line in f:
            path = line.split(maxsplit=5)[-1].strip() if line.count(" ") >= 5 else ""
            if re.search(r"/libc(\.so\.6|-[\d.]+\.so)$", path):
                return path
    return None


def _run_probes(path: Path, env: _Env, names: tuple[str, ...]) -> dict[str, tuple[bool, str]]:
    return {n: _try_probe(path, PROBES[n], env) for n in names}


def probe_all(path: Path, cgroup_root: str | None) -> dict[str, tuple[bool, str]]:
    env = _Env(libc=_find_libc())
    out: dict[str, tuple[bool, str]] = {}
    plain = tuple(n for n in PROBES if n not in _NETPROBES and n not in _CGROUPPROBES)
    out.update(_run_probes(path, env, plain))
    with _temp_cgroup(cgroup_root) as (cg, why):
        env.cgroup, env.cgroup_error = cg, why
        out.update(_run_probes(path, env, _CGROUPPROBES))
    try:
        out.update(_in_private_netns(lambda: _run_probes(path, _net_env(env), _NETPROBES)))
    except Exception as e:  # noqa: BLE001
        for n in _NETPROBES:
            out[n] = (False, f"not tried: private network namespace: {error_text(e)}")
    return out


_RDONLY_CAST = _Probe("rdonly_cast", ("probe_rdonly_cast",))


def tracepoint_record_loads(path: Path | None = None) -> bool:
    """Whether a tracepoint program may read its record with plain loads through ``bpf_rdonly_cast`` (a kfunc
    this kernel may lack, or not allow tracepoint programs): the tracing sensor then loads ``gs_sys_enter``,
    which reads the syscall's arguments without a helper call, else ``gs_sys_enter_pr``. Loaded once per
    object, never attached; False when the probe object is missing."""
    return _record_loads(path or default_probe_object())


@functools.cache
def _record_loads(path: Path) -> bool:
    return path.exists() and _try_probe(path, _RDONLY_CAST, _Env())[0]
