"""Kernel filesystems apiary needs (bpffs, tracefs, cgroup2) and pin paths."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

BPFFS = "/sys/fs/bpf"
TRACEFS = "/sys/kernel/tracing"
DEFAULT_PIN_ROOT = "/sys/fs/bpf/apiary"


def mounts() -> dict[str, str]:
    """{mount point: filesystem type}"""
    out: dict[str, str] = {}
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                out[parts[1]] = parts[2]
    return out


def is_mounted(path: str, fstype: str) -> bool:
    return mounts().get(path) == fstype


def cgroup2_root() -> str | None:
    for point, fstype in mounts().items():
        if fstype == "cgroup2":
            return point
    return None


def mount(fstype: str, path: str) -> None:
    os.makedirs(path, exist_ok=True)
    subprocess.run(["mount", "-t", fstype, fstype, path], check=True, capture_output=True, text=True)


def ensure_mounts() -> list[str]:
    """Mount bpffs and tracefs where missing. Returns what was mounted."""
    done = []
    if not is_mounted(BPFFS, "bpf"):
        mount("bpf", BPFFS)
        done.append(f"bpffs at {BPFFS}")
    if not is_mounted(TRACEFS, "tracefs"):
        mount("tracefs", TRACEFS)
        done.append(f"tracefs at {TRACEFS}")
    return done


def remove_pin_tree(path: str | Path) -> None:
    """Remove a pin directory and all pins below it (unlinking a pin drops its reference)."""
    p = Path(path)
    if p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists():
        p.unlink()
