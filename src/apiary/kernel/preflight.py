"""`apiary preflight`: what this machine's kernel allows, found out by trying each thing for real.

The report: one :class:`Check` per feature, what a miss disables and what apiary does instead. The
system checks (privileges, BTF, bpffs, tracefs, cgroup2, LSM, lockdown ...) are here; the program and
attach probes are in :mod:`apiary.kernel.probes`. The CLI renders the report (``apiary.cli.preflight_cmd``).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from apiary.kernel.probes import LOADER_ERROR, PROBES, default_probe_object, error_text, probe_all

# The loader needs libbpf.so.1; without it preflight still reports (one required failure).
if LOADER_ERROR is None:
    from apiary.loader import Map
    from apiary.loader import _libbpf as L
    from apiary.loader import fs as _fs

__all__ = ["CHECK_NAMES", "Check", "Report", "default_probe_object", "run_preflight"]

BTF_PATH = "/sys/kernel/btf/vmlinux"
BPFFS = "/sys/fs/bpf"
TRACEFS = "/sys/kernel/tracing"
SECURITYFS = "/sys/kernel/security"

REQUIRED = ("privileges", "btf", "bpffs", "bpf_syscall", "tp_btf", "ringbuf")

# every check, in report order
CHECK_NAMES: tuple[str, ...] = (
    "kernel",
    "privileges",
    "btf",
    "bpf_syscall",
    "bpffs",
    "tracefs",
    "cgroup2",
    "tracepoint",
    "tp_btf",
    "raw_tp",
    "kprobe",
    "fentry",
    "lsm",
    "uprobe",
    "tc",
    "tcx",
    "xdp_native",
    "xdp_generic",
    "cgroup_skb",
    "cgroup_sock_addr",
    "sk_lookup",
    "sock_ops",
    "sk_msg",
    "ringbuf",
    "send_signal",
    "probe_write_user",
    "lsm_active",
    "lockdown",
    "bpf_stats",
    "memory",
    "vm_kernel",
)


# ---------------------------------------------------------------------------------------- report
@dataclass
class Check:
    """One line of the preflight report. ``detail`` is what was seen (the exact error when not ok)."""

    name: str
    category: str
    ok: bool
    required: bool = False
    detail: str = ""
    disables: str = ""
    fallback: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    kernel: str = ""
    fixed: list[str] = field(default_factory=list)
    duration_s: float = 0.0

    def get(self, name: str) -> Check:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return any(c.name == name for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    @property
    def required_failed(self) -> list[Check]:
        return [c for c in self.checks if c.required and not c.ok]

    @property
    def ok(self) -> bool:
        """True when every required check passed (optional ones may fail)."""
        return not self.required_failed

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def summary(self) -> dict[str, Any]:
        return {
            "kernel": self.kernel,
            "total": len(self.checks),
            "passed": sum(1 for c in self.checks if c.ok),
            "failed": [c.name for c in self.failed],
            "required_failed": [c.name for c in self.required_failed],
            "ok": self.ok,
            "exit_code": self.exit_code,
            "fixed": list(self.fixed),
            "duration_s": round(self.duration_s, 3),
        }

    def to_dict(self) -> dict[str, Any]:
        return {"checks": [c.to_dict() for c in self.checks], "summary": self.summary()}


# ------------------------------------------------------------------------------- what a miss costs
# name -> (category, disables, fallback)
_META: dict[str, tuple[str, str, str]] = {
    "kernel": ("system", "", ""),
    "privileges": (
        "system",
        "everything: the agent needs root (or CAP_BPF + CAP_PERFMON + CAP_NET_ADMIN + CAP_SYS_ADMIN)",
        "none: run as root",
    ),
    "btf": (
        "system",
        "CO-RE programs: the process sensor and everything built on it",
        "none: apiary needs a kernel built with CONFIG_DEBUG_INFO_BTF",
    ),
    "bpffs": (
        "filesystem",
        "pinned programs and maps (state that survives an agent restart)",
        "none: mount it (apiary preflight --fix)",
    ),
    "tracefs": (
        "filesystem",
        "tracepoint programs (libbpf resolves tracepoint ids through tracefs)",
        "tp_btf/raw_tp hooks, which need no tracefs; --fix mounts it",
    ),
    "cgroup2": (
        "filesystem",
        "cgroup hooks: socket-level LB and connect() policy, cgroup_skb, sock_ops",
        "policy and LB at TC only",
    ),
    "bpf_syscall": ("system", "everything", "none"),
    "tracepoint": (
        "program",
        "TracingPolicy tracepoint hooks and per-syscall tracepoints",
        "raw_tp/tp_btf where the event has a raw tracepoint",
    ),
    "tp_btf": ("program", "the process sensor (exec/fork/exit events)", "none: required"),
    "raw_tp": ("program", "raw tracepoint hooks (sys_enter/sys_exit for all syscalls)", "per-syscall tracepoints"),
    "kprobe": (
        "program",
        "kprobes in TracingPolicy",
        "kprobes in TracingPolicy realised on tracepoints where possible; other kernel functions refused",
    ),
    "fentry": (
        "program",
        "fentry/fexit hooks on kernel functions",
        "kprobes in TracingPolicy realised on tracepoints where possible; other kernel functions refused",
    ),
    "lsm": (
        "program",
        "in-kernel enforcement at LSM hooks (lsmhooks, Override)",
        "enforcement by Sigkill/Signal from tracepoints; connect() via cgroup hook",
    ),
    "uprobe": ("program", "uprobes in TracingPolicy", "uprobe policies refused"),
    "tc": (
        "program",
        "the TC datapath: per-packet policy, service LB, flow visibility",
        "connect()-time policy and LB through cgroup hooks; no per-packet flows",
    ),
    "tcx": ("program", "tcx links (TC without qdiscs)", "classic clsact qdisc + cls_bpf filter"),
    "xdp_native": ("program", "XDP prefilter at driver level", "generic XDP, else TC ingress"),
    "xdp_generic": ("program", "XDP prefilter on devices without native XDP", "TC ingress drop"),
    "cgroup_skb": ("program", "cgroup packet policy for host processes", "TC on the endpoint's device"),
    "cgroup_sock_addr": (
        "program",
        "socket-level service LB (connect4 rewrite) and connect() policy",
        "per-packet DNAT at TC",
    ),
    "sk_lookup": ("program", "steering to the L7 proxy with sk_lookup", "bpf_sk_assign at TC"),
    "sock_ops": ("program", "socket tracking into a sockhash (sk_msg acceleration)", "no socket acceleration"),
    "sk_msg": ("program", "sk_msg redirect between local sockets", "the normal TCP path"),
    "ringbuf": ("helper", "event delivery from the kernel", "none: required"),
    "send_signal": ("helper", "Sigkill/Signal actions", "alert-only policies (Post), no kill"),
    "probe_write_user": ("helper", "nothing (apiary does not use it)", "nothing needed"),
    "lsm_active": (
        "security",
        "BPF-LSM hooks ('bpf' must be in the lsm= boot list)",
        "enforcement by Sigkill/Signal from tracepoints; connect() via cgroup hook",
    ),
    "lockdown": (
        "security",
        "kernel memory reads in BPF (confidentiality mode): process sensor fields",
        "none",
    ),
    "bpf_stats": ("other", "run count and run time per program in apiary status", "sysctl kernel.bpf_stats_enabled=1"),
    "memory": ("other", "room for apiary's default maps (about 64 MiB)", "smaller maps (agent options)"),
    "vm_kernel": (
        "other",
        "tests of kprobe/fentry/BPF-LSM in Debian's 6.1 kernel under QEMU",
        "those tests skip (install qemu-system-x86 and virtme-ng)",
    ),
}


def _check(name: str, ok: bool, detail: str) -> Check:
    category, disables, fallback = _META[name]
    return Check(name, category, ok, name in REQUIRED, detail, disables, fallback)




# ----------------------------------------------------------------------------------- plain checks
def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def _check_kernel() -> Check:
    u = os.uname()
    return _check("kernel", True, f"Linux {u.release} {u.machine} (informational: features below are found by trying)")


def _cap_eff() -> int:
    for line in (_read("/proc/self/status") or "").splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def _check_privileges() -> Check:
    caps = _cap_eff()

    def has(bit: int) -> bool:
        return bool(caps >> bit & 1)

    # CAP_NET_ADMIN 12, CAP_SYS_ADMIN 21, CAP_PERFMON 38, CAP_BPF 39
    enough = has(21) or (has(39) and has(38) and has(12))
    who = "root (uid 0)" if os.geteuid() == 0 else f"uid {os.geteuid()}"
    if enough:
        return _check("privileges", True, f"{who}, CapEff {caps:#x}")
    return _check("privileges", False, f"{who}, CapEff {caps:#x}: lacks CAP_SYS_ADMIN or CAP_BPF+CAP_PERFMON")


def _check_btf() -> Check:
    if not os.path.exists(BTF_PATH):
        return _check("btf", False, f"{BTF_PATH} absent (kernel built without CONFIG_DEBUG_INFO_BTF)")
    btf = L.lib.btf__parse(BTF_PATH.encode(), None)
    if not btf:
        return _check("btf", False, f"parse {BTF_PATH}: {os.strerror(L.errno())}")
    try:
        n = L.lib.btf__type_cnt(btf)
    finally:
        L.lib.btf__free(btf)
    size = os.path.getsize(BTF_PATH) / (1 << 20)
    return _check("btf", True, f"{BTF_PATH}: {n:,} types, {size:.1f} MiB")


def _mount(fstype: str, path: str, fixed: list[str]) -> str:
    """Mount for --fix. Returns "" or the error."""
    try:
        _fs.mount(fstype, path)
    except (OSError, subprocess.CalledProcessError) as e:
        return f"--fix could not mount {fstype} at {path}: {error_text(e)}"
    fixed.append(f"{fstype} at {path}")
    return ""


def _check_bpffs(fix: bool, fixed: list[str]) -> Check:
    note = ""
    if not _fs.is_mounted(BPFFS, "bpf"):
        if not fix:
            return _check("bpffs", False, f"not mounted at {BPFFS} (apiary preflight --fix mounts it)")
        err = _mount("bpf", BPFFS, fixed)
        if err:
            return _check("bpffs", False, err)
        note = " (mounted now by --fix)"
    # prove it: pin a map and unpin it
    pin = f"{BPFFS}/apiary_preflight_{os.getpid()}_{secrets.token_hex(3)}"  # bpffs refuses names with a dot
    try:
        m = Map.create(2, "apiary_pf_pin", 4, 4, 1)
    except Exception as e:  # noqa: BLE001
        return _check("bpffs", False, f"mounted at {BPFFS}{note}; pin test: {error_text(e)}")
    try:
        m.pin(pin)
        os.unlink(pin)
    except Exception as e:  # noqa: BLE001
        return _check("bpffs", False, f"mounted at {BPFFS}{note}; pin: {error_text(e)}")
    finally:
        m.close()
        with suppress(OSError):
            os.unlink(pin)
    return _check("bpffs", True, f"mounted at {BPFFS}{note}; pin and unpin work")


def _tracefs_path() -> str | None:
    mounts = _fs.mounts()
    if mounts.get(TRACEFS) == "tracefs":
        return TRACEFS
    if os.path.isdir("/sys/kernel/debug/tracing/events"):
        return "/sys/kernel/debug/tracing"
    return None


def _check_tracefs(fix: bool, fixed: list[str]) -> Check:
    note = ""
    where = _tracefs_path()
    if where is None:
        if not fix:
            return _check("tracefs", False, f"not mounted at {TRACEFS} (apiary preflight --fix mounts it)")
        err = _mount("tracefs", TRACEFS, fixed)
        if err:
            return _check("tracefs", False, err)
        where, note = TRACEFS, " (mounted now by --fix)"
    events = os.path.join(where, "events")
    try:
        n = sum(1 for e in os.scandir(events) if e.is_dir())
    except OSError as e:
        return _check("tracefs", False, f"mounted at {where}{note}; {events}: {error_text(e)}")
    return _check("tracefs", True, f"mounted at {where}{note}; {n} event groups")


def _cgroup2_fix_point() -> str:
    # hybrid layout (tmpfs at /sys/fs/cgroup with v1 controllers): v2 goes to .../unified
    if _fs.mounts().get("/sys/fs/cgroup") == "tmpfs":
        return "/sys/fs/cgroup/unified"
    if os.path.isdir("/sys/fs/cgroup") and not os.listdir("/sys/fs/cgroup"):
        return "/sys/fs/cgroup"
    return "/run/apiary/cgroup2"


def _check_cgroup2(fix: bool, fixed: list[str]) -> tuple[Check, str | None]:
    root = _fs.cgroup2_root()
    note = ""
    if root is None:
        if not fix:
            return _check("cgroup2", False, "no cgroup2 mount in /proc/self/mounts (--fix mounts one)"), None
        point = _cgroup2_fix_point()
        err = _mount("cgroup2", point, fixed)
        if err:
            return _check("cgroup2", False, err), None
        root, note = point, " (mounted now by --fix)"
    layout = "hybrid: v1 controllers elsewhere" if _fs.mounts().get("/sys/fs/cgroup") == "tmpfs" else "unified"
    ctrl = (_read(os.path.join(root, "cgroup.controllers")) or "").split()
    ctrls = f"controllers: {' '.join(ctrl)}" if ctrl else "no controllers enabled on v2"
    return _check("cgroup2", True, f"{root}{note} ({layout}; {ctrls})"), root


def _check_bpf_syscall() -> Check:
    try:
        m = Map.create(2, "apiary_pf", 4, 8, 4)  # BPF_MAP_TYPE_ARRAY
    except Exception as e:  # noqa: BLE001
        return _check("bpf_syscall", False, f"map create: {error_text(e)}")
    try:
        m.update(struct.pack("<I", 1), struct.pack("<Q", 42))
        back = m.lookup(struct.pack("<I", 1))
    except Exception as e:  # noqa: BLE001
        return _check("bpf_syscall", False, f"map update/lookup: {error_text(e)}")
    finally:
        m.close()
    if back != struct.pack("<Q", 42):
        return _check("bpf_syscall", False, "map lookup returned the wrong value")
    return _check("bpf_syscall", True, "array map created, written, read back")


def _securityfs(fix: bool, fixed: list[str]) -> str:
    """Make sure securityfs is readable. Returns "" or why not."""
    if os.path.exists(os.path.join(SECURITYFS, "lsm")):
        return ""
    if _fs.mounts().get(SECURITYFS) == "securityfs":
        return ""
    if not fix:
        return f"securityfs not mounted at {SECURITYFS} (apiary preflight --fix mounts it)"
    return _mount("securityfs", SECURITYFS, fixed)


def _check_lsm_active(sec_err: str) -> Check:
    if sec_err:
        return _check("lsm_active", False, sec_err)
    text = _read(os.path.join(SECURITYFS, "lsm"))
    if text is None:
        return _check("lsm_active", False, f"{SECURITYFS}/lsm unreadable")
    lsms = text.strip().split(",")
    if "bpf" in lsms:
        return _check("lsm_active", True, f"{','.join(lsms)} ('bpf' is active)")
    return _check("lsm_active", False, f"{','.join(lsms)} ('bpf' is not in the list)")


def _check_lockdown(sec_err: str) -> Check:
    if sec_err:
        return _check("lockdown", True, f"unknown: {sec_err}")
    text = _read(os.path.join(SECURITYFS, "lockdown"))
    if text is None:
        return _check("lockdown", True, "no lockdown LSM (nothing blocked)")
    m = re.search(r"\[(\w+)\]", text)
    mode = m.group(1) if m else text.strip()
    effect = {
        "none": "nothing blocked",
        "integrity": "blocks bpf_probe_write_user; BPF reads of kernel memory allowed",
        "confidentiality": "also blocks kernel memory reads from BPF",
    }.get(mode, "")
    return _check("lockdown", mode != "confidentiality", f"{mode}" + (f" ({effect})" if effect else ""))


def _check_bpf_stats() -> Check:
    fd = L.lib.bpf_enable_stats(0)  # BPF_STATS_RUN_TIME
    sysctl = (_read("/proc/sys/kernel/bpf_stats_enabled") or "?").strip()
    if fd < 0:
        return _check("bpf_stats", False, f"BPF_ENABLE_STATS: {os.strerror(L.errno())} (sysctl now {sysctl})")
    os.close(fd)
    return _check("bpf_stats", True, f"BPF_ENABLE_STATS works (kernel.bpf_stats_enabled={sysctl} when nobody holds it)")


def _check_memory() -> Check:
    info: dict[str, int] = {}
    for line in (_read("/proc/meminfo") or "").splitlines():
        key, _, rest = line.partition(":")
        with suppress(ValueError, IndexError):
            info[key] = int(rest.split()[0])  # kB
    total, avail = info.get("MemTotal", 0) >> 10, info.get("MemAvailable", 0) >> 10
    if not total:
        return _check("memory", True, "/proc/meminfo unreadable")
    return _check("memory", avail >= 128, f"MemTotal {total:,} MiB, MemAvailable {avail:,} MiB")


def _check_vm_kernel() -> Check:
    qemu = shutil.which("qemu-system-x86_64")
    vng = shutil.which("vng") or (str(Path(sys.executable).parent / "vng") if _venv_has("vng") else None)
    kvm = "present" if os.path.exists("/dev/kvm") else "absent"
    vng_txt = f"virtme-ng at {vng}" if vng else "virtme-ng (vng) not installed"
    if not qemu:
        return _check("vm_kernel", False, f"qemu-system-x86_64 not installed; {vng_txt}; /dev/kvm {kvm}")
    version = ""
    with suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([qemu, "--version"], capture_output=True, text=True, timeout=2).stdout
        m = re.search(r"version (\S+)", out)
        version = f" {m.group(1)}" if m else ""
    return _check("vm_kernel", True, f"qemu-system-x86_64{version} at {qemu}; {vng_txt}; /dev/kvm {kvm} (not booted)")


def _venv_has(tool: str) -> bool:
    return (Path(sys.executable).parent / tool).exists()


# ------------------------------------------------------------------------------------------- run
def _guard(name: str, fn: Callable[[], Check]) -> Check:
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - a broken check is a finding, never a traceback
        return _check(name, False, f"preflight error: {error_text(e)}")


def run_preflight(fix: bool = False, probe_object: str | os.PathLike[str] | None = None) -> Report:
    """Check this machine by trying. ``fix`` mounts bpffs, tracefs, securityfs (and cgroup2) if missing."""
    t0 = time.monotonic()
    report = Report(kernel=os.uname().release)
    if LOADER_ERROR is not None:
        report.checks = [
            _check("kernel", True, f"Linux {os.uname().release}"),
            Check("libbpf", "system", False, True, LOADER_ERROR, "everything", "install libbpf1"),
        ]
        report.duration_s = time.monotonic() - t0
        return report

    fixed = report.fixed
    results: dict[str, Check] = {}
    results["kernel"] = _guard("kernel", _check_kernel)
    results["privileges"] = _guard("privileges", _check_privileges)
    results["btf"] = _guard("btf", _check_btf)
    results["bpffs"] = _guard("bpffs", lambda: _check_bpffs(fix, fixed))
    results["tracefs"] = _guard("tracefs", lambda: _check_tracefs(fix, fixed))
    cgroup_root: str | None = None

    def cg() -> Check:
        nonlocal cgroup_root
        check, cgroup_root = _check_cgroup2(fix, fixed)
        return check

    results["cgroup2"] = _guard("cgroup2", cg)
    results["bpf_syscall"] = _guard("bpf_syscall", _check_bpf_syscall)

    path = Path(probe_object) if probe_object else default_probe_object()
    if not path.exists():
        for n in PROBES:
            results[n] = _check(n, False, f"not tried: {path} missing (run `make build`)")
    else:
        try:
            probed = probe_all(path, cgroup_root)
        except Exception as e:  # noqa: BLE001
            probed = {n: (False, f"preflight error: {error_text(e)}") for n in PROBES}
        for n, (ok, detail) in probed.items():
            if n == "kprobe" and detail.startswith("attach:"):
                detail += _kprobe_hint()
            results[n] = _check(n, ok, detail)

    sec_err = _securityfs(fix, fixed)
    results["lsm_active"] = _guard("lsm_active", lambda: _check_lsm_active(sec_err))
    results["lockdown"] = _guard("lockdown", lambda: _check_lockdown(sec_err))
    results["bpf_stats"] = _guard("bpf_stats", _check_bpf_stats)
    results["memory"] = _guard("memory", _check_memory)
    results["vm_kernel"] = _guard("vm_kernel", _check_vm_kernel)

    report.checks = [results[n] for n in CHECK_NAMES if n in results]
    report.duration_s = time.monotonic() - t0
    return report


def _kprobe_hint() -> str:
    """Where a kprobe attach looks, and what is there (context for an ENOENT)."""
    pmu = os.path.exists("/sys/bus/event_source/devices/kprobe")
    tracefs = _tracefs_path()
    events = tracefs is not None and os.path.exists(os.path.join(tracefs, "kprobe_events"))
    if pmu or events:
        return ""
    return " (no kprobe PMU in /sys/bus/event_source/devices and no kprobe_events in tracefs)"
