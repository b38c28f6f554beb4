"""The state of one TracingPolicy compilation, shared by the per-hook-kind compilers and the selector parsers.

:class:`Compilation` holds the policy, the :class:`~apiary.kernel.features.KernelFeatures` it is compiled for
(a value: the compiler does no I/O), and what it produces: the hooks, the notes shown at apply time and the
problems that refuse the policy. :class:`Refuse` stops the realisation of one hook, selector or variant with the
field path and the reason; the caller records it and goes on, so that every problem is reported at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from apiary.kernel.features import KernelFeatures
from apiary.policy.models import Problem

from .models import TracingPolicyBase
from .realisations import KPROBE_REALISATIONS, LSM_REALISATIONS
from .types import Hook


class Refuse(Exception):
    """A field with no faithful realisation: ``problem`` names it and says why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(reason)
        self.problem = Problem(path, reason, unsupported=True)


@dataclass
class Compilation:
    """One policy being compiled for one kernel."""

    policy: TracingPolicyBase
    features: KernelFeatures
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    hooks: list[Hook] = field(default_factory=list)

    def refuse(self, path: str, reason: str) -> None:
        self.problems.append(Problem(path, reason, unsupported=True))

    def needs_kprobe(self) -> str:
        if not self.features.kprobes:
            return f"needs kprobe (or BPF-LSM); this kernel: {self.features.describe()}"
        return (
            "needs a kprobe on a function whose arguments apiary's sensor does not know yet (kprobes are realised "
            f"for {', '.join(KPROBE_REALISATIONS)})"
        )

    def needs_lsm(self) -> str:
        if not self.features.lsm:
            return f"needs BPF-LSM; this kernel: {self.features.describe()}"
        return f"apiary's sensor has no BPF-LSM program for this hook yet (it has {', '.join(LSM_REALISATIONS)})"

    def entry_only(self, event: str) -> str:
        if event == "process_lsm" and self.features.lsm:
            return " (this kernel has BPF-LSM, but apiary has no BPF-LSM program for this hook yet)"
        if event == "process_kprobe" and self.features.kprobes:
            return " (this kernel has kprobes, but apiary's kprobe realisation does not cover this function yet)"
        return ""

    def syscall_known(self, name: str) -> bool:
        return (
            name in self.features.syscalls
            or (name.startswith("__lsm_") and self.features.lsm)
            or (name.startswith("__kprobe_") and self.features.kprobes)
        )

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)
