"""The TracingPolicy compiler on matchNamespaces / matchCapabilities and followChildren / followForks."""

from __future__ import annotations

from tracing_compile_helpers import HERE, build, refusal

from apiary.kernel.features import X86_64_SYSCALLS, KernelFeatures
from apiary.tracing.crd import CAPABILITIES
from apiary.tracing.types import MAX_FOLLOW, BinaryFilter, CapabilityFilter, NamespaceFilter, PidFilter, Selector

# --- matchNamespaces / matchCapabilities -------------------------------------------------------------


def one_selector(selector: str, f: KernelFeatures = HERE) -> Selector:
    [h] = build(f"kprobes:\n- call: sys_write\n  selectors:\n  - {selector}", f).hooks
    [s] = h.selectors
    return s


def test_match_namespaces() -> None:
    s = one_selector("matchNamespaces: [{namespace: Pid, operator: NotIn, values: [host_ns]}, "
                     "{namespace: Mnt, operator: In, values: ['4026531841', '4026531840']}]")
    assert s.namespaces == (NamespaceFilter("Pid", "NotIn", ("host_ns",)),
                            NamespaceFilter("Mnt", "In", ("4026531841", "4026531840")))
    entries = ", ".join(f"{{namespace: {n}, operator: In, values: ['1']}}" for n in ("Uts", "Ipc", "Mnt", "Pid", "Net"))
    assert refusal(f"kprobes: [{{call: sys_write, selectors: [{{matchNamespaces: [{entries}]}}]}}]") == (
        "unsupported: spec.kprobes[0].selectors[0].matchNamespaces (at most 4 matchNamespaces entries per selector "
        "(5 given))")
    assert refusal("kprobes: [{call: sys_write, selectors: [{matchNamespaces: [{namespace: Net, operator: In, "
                   "values: []}]}]}]") == ("unsupported: spec.kprobes[0].selectors[0].matchNamespaces[0].values "
                                           "(matchNamespaces needs at least one value (an inode number or host_ns))")


def test_capability_bits_are_the_kernels() -> None:
    # include/uapi/linux/capability.h
    assert (CAPABILITIES.index("CAP_CHOWN"), CAPABILITIES.index("CAP_NET_RAW"), CAPABILITIES.index("CAP_SYS_ADMIN"),
            CAPABILITIES.index("CAP_BPF"), CAPABILITIES.index("CAP_CHECKPOINT_RESTORE")) == (0, 13, 21, 39, 40)


def test_match_capabilities() -> None:
    s = one_selector("matchCapabilities: [{operator: In, values: [CAP_SYS_ADMIN, CAP_CHOWN]}]")
    assert s.capabilities == CapabilityFilter("Effective", "In", (1 << 21) | 1)
    s = one_selector("matchCapabilities: [{type: Permitted, operator: NotIn, values: [cap_net_raw]}]")
    assert s.capabilities == CapabilityFilter("Permitted", "NotIn", 1 << 13)
    assert refusal("kprobes: [{call: sys_write, selectors: [{matchCapabilities: [{operator: In, values: [CAP_BPF]}, "
                   "{operator: In, values: [CAP_KILL]}]}]}]") == (
        "unsupported: spec.kprobes[0].selectors[0].matchCapabilities (at most one matchCapabilities entry per "
        "selector (2 given))")
    assert refusal("kprobes: [{call: sys_write, selectors: [{matchCapabilities: [{operator: In, values: [CAP_BPF], "
                   "isNamespaceCapability: true}]}]}]").startswith(
        "unsupported: spec.kprobes[0].selectors[0].matchCapabilities[0].isNamespaceCapability (isNamespaceCapability "
        "is not supported yet")


# --- followChildren / followForks --------------------------------------------------------------------


def test_follow_children_and_forks_reach_the_filters() -> None:
    c = build("""
        kprobes:
        - call: sys_write
          selectors:
          - matchBinaries: [{operator: In, values: [/usr/sbin/sshd], followChildren: true}]
            matchPIDs: [{operator: NotIn, values: [1], followForks: true}]
        """)
    [s] = c.hooks[0].selectors
    assert s.binaries == BinaryFilter("In", ("/usr/sbin/sshd",), True)
    assert s.pids == PidFilter("NotIn", (1,), True)
    assert any(n.startswith("followChildren/followForks: descendants are tracked in the kernel") for n in c.notes)


def test_follow_slots_are_counted() -> None:
    sel = "{matchBinaries: [{operator: In, values: [/bin/sh], followChildren: true}]}"
    hooks = "\n".join(f"- {{call: sys_{s}, selectors: [{sel}, {sel}, {sel}]}}" for s in sorted(X86_64_SYSCALLS)[:22])
    assert 22 * 3 > MAX_FOLLOW
    assert refusal(f"kprobes:\n{hooks}") == (
        "unsupported: spec (this policy needs 66 followChildren/followForks slots (one per such filter of each "
        "hook's selectors); the sensor holds at most 64 across all policies)")
    hooks = "\n".join(f"- {{call: sys_{s}, selectors: [{sel}, {sel}]}}" for s in sorted(X86_64_SYSCALLS)[:32])
    assert len(build(f"kprobes:\n{hooks}").hooks) == 32
