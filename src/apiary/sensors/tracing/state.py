"""What the tracing sensor holds: its loaded and adopted policies, and the attributes its parts share.

The sensor is one class (sensor.py's TracingSensor) assembled from parts, each over the one before it:
state.TracingState (declarations) < links.HookLinks (attach names, links, the syscall table)
< follow.FollowBits (followChildren/followForks bits) < adoption.PinAdoption (the pins a previous agent left)
< policies.PolicyWrites (writing, switching and counting policies) < sensor.TracingSensor (load, close, rows).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apiary.loader import BpfObject, Map, PinnedLink, TypedMap
from apiary.sensors.pins import PinSet
from apiary.sensors.process.sensor import ProcessSensor
from apiary.sensors.tracing import abi
from apiary.tracing.types import CompiledTracingPolicy, Hook

SHARED = ("events", "procs", "binaries")  # the process sensor's maps, reused
FOLLOW_PROGS = ("gs_follow_exec", "gs_follow_fork", "gs_follow_exit")


CONNECT_LINKS = ("@connect4", "@connect6")  # DenyConnect: the cgroup connect programs, in self.links order


@dataclass
class LoadedPolicy:
    policy: CompiledTracingPolicy
    policy_id: int
    hook_ids: list[int] = field(default_factory=list)
    enabled: bool = True
    cgroups: set[int] = field(default_factory=set)
    carried: dict[str, int] = field(default_factory=dict)  # counts of the versions it replaced (set-mode…)
    digest: str = ""


@dataclass
class AdoptedPolicy:
    """A policy a previous agent left in the pinned maps, not yet claimed by a restored policy."""

    policy_id: int
    hook_ids: list[int]
    cgroups: set[int]
    digest: str
    attach: dict[int, tuple[list[str], bool]]  # hook id -> attach names, has a return hook


class TracingState:
    """The attributes TracingSensor.__init__ and load() set, declared for the parts that use them."""

    process: ProcessSensor
    lsm: bool
    kprobes: bool
    raw_tp: bool
    enter_prog: str  # the syscall entry program loaded (gs_sys_enter or gs_sys_enter_pr)
    obj_path: Path
    obj: BpfObject | None
    links: list[Any]
    policies: dict[str, LoadedPolicy]
    hooks: dict[int, tuple[LoadedPolicy, Hook]]
    retired: dict[int, tuple[LoadedPolicy, Hook]]
    baseline: dict[int, dict[str, int]]
    sys_links: dict[str, Any]
    _next_policy: int
    _dyn: dict[str, int]
    follow: dict[int, tuple[int, int, str]]
    follow_links: list[Any]
    pin_dir: Path | None
    pins: PinSet | None
    adopted: dict[str, AdoptedPolicy]
    adopted_links: int
    hooks_map: Map
    sys_map: Map
    _sys_keys: set[int] | None  # keys of sys_map with hooks (None: not read since the load)
    scope_map: Map
    counters: TypedMap
    follow_map: Map
    mb_map: TypedMap
    agent_map: Map


def _attach_point(link: Any) -> str:
    return link.target if isinstance(link, PinnedLink) else link.describe()


def _digest(policy: CompiledTracingPolicy, encoded: list[bytes]) -> str:
    """What a policy's hooks hold in the kernel: their records and attach points."""
    h = hashlib.sha256()
    for hook, raw in zip(policy.hooks, encoded, strict=True):
        h.update(raw)
        h.update(repr((hook.attach_points, hook.ret is not None)).encode())
    return h.hexdigest()


def _scope_key(policy_id: int, cgroup_id: int) -> bytes:
    return abi.scope_key(policy_id, cgroup_id)
