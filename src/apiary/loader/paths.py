"""Where apiary finds its built BPF objects."""

from __future__ import annotations

import os
from pathlib import Path


def bpf_dir() -> Path:
    """The build folder with *.bpf.o: $APIARY_BPF_DIR, else <repo>/build next to src/."""
    env = os.environ.get("APIARY_BPF_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "build"


def bpf_object(name: str) -> Path:
    return bpf_dir() / f"{name}.bpf.o"
