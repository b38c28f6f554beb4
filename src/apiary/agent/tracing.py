"""Runtime-security half of the agent: TracingPolicy repository, the generic syscall sensor, events.

Apply is all-or-nothing: parse (strict) -> compile for this kernel (refusing what it cannot realise)
-> write the sensor maps -> commit to the repository and to disk.
"""

from __future__ import annotations

import base64
import errno
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apiary.kernel.features import KernelFeatures
from apiary.loader import BpfError
from apiary.observe.clock import KtimeClock
from apiary.observe.process import Process, ProcessCache, make_exec_id
from apiary.observe.tetragon import events as tetragon
from apiary.policy.models import PolicyError, Problem
from apiary.sensors.process.sensor import ProcessSensor
from apiary.sensors.tracing import abi
from apiary.sensors.tracing.sensor import TracingSensor
from apiary.store import Store
from apiary.textutil import default_scope, not_found
from apiary.tracing.compile import compile_tracing_policy
from apiary.tracing.counters import action_counters
from apiary.tracing.load import load_tracing_policies
from apiary.tracing.lockout import lockout_warnings
from apiary.tracing.types import (
    ARG_BPRM,
    ARG_BUF,
    ARG_CHARS,
    ARG_CONNSOCK,
    ARG_CRED,
    ARG_DATALOC,
    ARG_FD,
    ARG_FILEPTR,
    ARG_INT,
    ARG_KSOCKADDR,
    ARG_KSTRING,
    ARG_PATHPTR,
    ARG_SKB,
    ARG_SOCK,
    ARG_SOCKADDR,
    ARG_SOCKETPTR,
    ARG_STRING,
    ARG_UINT,
    ArgSpec,
    CompiledTracingPolicy,
    Hook,
)

from . import statedir
from .interfaces import EndpointSource, HookEntry, ProcessParts

ACTION_ENUM = {
    "Post": "KPROBE_ACTION_POST",
    "NoPost": "KPROBE_ACTION_NOPOST",
    "Sigkill": "KPROBE_ACTION_SIGKILL",
    "Signal": "KPROBE_ACTION_SIGNAL",
    "Override": "KPROBE_ACTION_OVERRIDE",
    "DenyConnect": "KPROBE_ACTION_POST",
}




@dataclass
class Stored:
    key: str
    source: str
    compiled: CompiledTracingPolicy
    enabled: bool = True
    mode_override: str | None = None


def _key(p: CompiledTracingPolicy) -> str:
    return f"{p.namespace}/{p.name}"


def _failed_hook(p: CompiledTracingPolicy, error: str) -> str:
    """The field of the hook an attach error is about (``spec.uprobes[0]``), or ``spec``."""
    for hook in p.hooks:
        field = hook.source.split(" ", 1)[0]
        targets = [name.split("_", 3)[-1] if name.startswith("__") else name for name in hook.attach_points]
        if f"hook {field}" in error or any(t and t in error for t in targets):
            return f"spec.{field}"
    return "spec"


class Tracing:
    def __init__(
        self,
        store: Store,
        process: ProcessSensor,
        features: KernelFeatures,
        network: EndpointSource | None = None,
        agent_exemption: bool = True,
        restore: bool = True,
        pin_dir: str | Path | None = None,
        helpers_cgroup: Callable[[], int] = lambda: 0,
    ) -> None:
        self.store = store
        self.helpers_cgroup = helpers_cgroup  # the cgroup id of the agent's helpers (its proxy): exempt too
        self.sensor = TracingSensor(process, lsm=features.lsm, kprobes=features.kprobes, pin_dir=pin_dir)
        self.features = features
        self.network = network
        self.stored: dict[str, Stored] = {}
        self.unrestored: list[dict[str, Any]] = []  # stored records this kernel could not load: kept on disk
        self.agent_exemption = agent_exemption  # the agent's own process is exempt from enforcement
        self.restore = restore  # re-apply stored policies as they were (False: load them disabled)
        # the processes apply warns about: the interpreter the agent (and, as installed, the CLI) runs on
        self.tools = {os.path.realpath(sys.executable): "the interpreter the apiary agent and CLI run on"}

    def start(self) -> list[str]:
        """Loads the sensor now when there is something to enforce (stored policies, or pins a killed agent
        left); otherwise with the first TracingPolicy (as Tetragon loads a policy's programs with it): its
        programs cost seconds of verifier time that an agent without tracing policies does not spend."""
        stored = statedir.read_json(self.store, statedir.TRACING_FILE) or []
        pinned = self.sensor.pin_dir is not None and self.sensor.pin_dir.exists()
        notes = [
            f"agent exemption: this agent (pid {os.getpid()}) is exempt from Sigkill/Signal/Override/DenyConnect"
            if self.agent_exemption
            else "agent exemption OFF (--no-agent-exemption): tracing policies can kill or block this agent"
        ]
        if stored or pinned:
            self._load()
        else:
            notes.append("tracing: no TracingPolicy yet; its programs load with the first one")
        if stored:
            for rec in stored:
                try:
                    enabled = rec.get("enabled", True) and self.restore
                    self._apply_text(rec["source"], mode=rec.get("mode"), enabled=enabled)
                except (PolicyError, OSError, ValueError, BpfError) as e:  # the others are still restored
                    notes.append(f"tracing policy {rec.get('key')} could not be restored: {e}")
                    self.unrestored.append(rec if self.restore else rec | {"enabled": False})
            if not self.restore:
                self._save()  # they stay disabled until `apiary tp enable NAME`
                notes.append(
                    f"--no-restore: {len(self.stored)} stored tracing policies loaded disabled "
                    "(`apiary tp enable NAME` enables one)"
                )
        if self.loaded:
            notes += self.sensor.finish_adoption()
        notes.append(
            f"tracing: {len(self.stored)} policies; hooks on syscall tracepoints, tracepoints, uprobes"
            f"{', kprobes' if self.features.kprobes else ''}{', BPF-LSM' if self.features.lsm else ''}"
            f"{', raw tracepoints' if self.features.raw_tp_cookie else ''} ({self.features.describe()})"
        )
        return notes

    @property
    def loaded(self) -> bool:
        return self.sensor.obj is not None

    def _load(self) -> None:
        self.sensor.load()
        self.sensor.exempt_agent(os.getpid() if self.agent_exemption else None, self.helpers_cgroup())

    def _ensure_loaded(self) -> None:
        if not self.loaded:
            self._load()

    def close(self, keep_pins: bool = False) -> None:
        """``keep_pins`` (--keep-sensors-on-exit): policies keep enforcing from their pins until the next agent."""
        self.sensor.close(keep_pins=keep_pins)

    def _save(self) -> None:
        data = [
            {"key": s.key, "source": s.source, "mode": s.mode_override, "enabled": s.enabled}
            for s in self.stored.values()
        ]
        data += [r for r in self.unrestored if r.get("key") not in self.stored]
        statedir.write_json(self.store, statedir.TRACING_FILE, data)

    # ------------------------------------------------------------------ scope
    def cgroups_for(self, p: CompiledTracingPolicy) -> set[int] | None:
        if p.pod_selector is None and p.kind != "TracingPolicyNamespaced":
            return None
        if self.network is None:
            return set()
        from apiary.policy.selectors import Requirement, Selector, parse_key

        sel = None
        if p.pod_selector:
            ps: dict[str, Any] = dict(p.pod_selector)
            exprs = [
                Requirement(*parse_key(e["key"]), e["operator"], frozenset(e.get("values") or ()))
                for e in ps.get("matchExpressions") or ()
            ]
            sel = Selector.of(ps.get("matchLabels") or {}, *exprs)
        out = set()
        for ep in self.network.scoped_endpoints():
            if p.kind == "TracingPolicyNamespaced" and ep.namespace != p.namespace:
                continue
            if ep.cgroup_id is not None and (sel is None or sel.matches(ep.labels)):
                out.add(ep.cgroup_id)
        return out

    def refresh_scopes(self) -> None:
        """Endpoints changed: recompute which cgroups each pod-scoped policy covers."""
        for st in self.stored.values():
            cg = self.cgroups_for(st.compiled)
            if cg is not None:
                self.sensor.set_cgroups(st.key, cg)

    # ------------------------------------------------------------------ repository
    def _apply_text(self, text: str, mode: str | None = None, enabled: bool = True) -> list[dict[str, Any]]:
        """Every document of ``text``, all or nothing: when one fails (a hook that cannot attach), the
        ones already applied by this call are undone, and a policy a document replaced is restored."""
        policies = load_tracing_policies(text)
        compiled = [compile_tracing_policy(p, self.features) for p in policies]
        self._ensure_loaded()  # after the checks: a refused document loads nothing
        out = []
        replaced: dict[str, Stored | None] = {}  # key -> what it was before this call (None: new)
        try:
            for c, src in zip(compiled, _split(text, len(compiled)), strict=True):
                if mode:
                    c.mode = mode
                key = _key(c)
                action = "configured" if key in self.stored else "created"
                replaced.setdefault(key, self.stored.get(key))
                self.sensor.apply(key, c, self.cgroups_for(c), enabled)
                self.stored[key] = Stored(key, src, c, enabled, mode)
                out.append(
                    {
                        "name": c.name,
                        "namespace": c.namespace,
                        "kind": c.kind,
                        "mode": c.mode,
                        "action": action,
                        "hooks": [{"source": h.source, "realisation": h.realisation} for h in c.hooks],
                        "notes": c.notes,
                        "warnings": lockout_warnings(c, self.tools, self.agent_exemption),
                    }
                )
        except BaseException as e:
            undone = self._undo(replaced)
            if not isinstance(e, BpfError) or e.errno == errno.ENOSPC:
                raise  # out of hooks or slots: a capacity problem (409), not the policy's
            i = len(out)  # the document that failed
            prefix = f"document[{i}]." if len(compiled) > 1 else ""
            what = f"{e} (nothing of the file was applied: {undone})" if len(compiled) > 1 else str(e)
            raise PolicyError([Problem(prefix + _failed_hook(compiled[i], str(e)), what)]) from e
        return out

    def _undo(self, replaced: dict[str, Stored | None]) -> str:
        """Put back what an apply changed, last first: a new policy goes, a replaced one returns."""
        done = []
        for key, prev in reversed(replaced.items()):
            if prev is None:
                if key in self.sensor.policies:
                    self.sensor.delete(key)
                self.stored.pop(key, None)
                done.append(f"{key} removed")
            else:
                try:
                    self.sensor.apply(key, prev.compiled, self.cgroups_for(prev.compiled), prev.enabled)
                except (BpfError, OSError) as e:  # e.g. its uprobe target is gone since: not left half-done
                    if key in self.sensor.policies:
                        self.sensor.delete(key)
                    self.stored.pop(key, None)
                    done.append(f"{key} could not be restored and is removed ({e})")
                    continue
                self.stored[key] = prev
                done.append(f"{key} restored")
        return ", ".join(done) or "nothing to undo"

    def apply(self, text: str) -> list[dict[str, Any]]:
        res = self._apply_text(text)
        self._save()
        return res

    def _get(self, name: str, namespace: str | None) -> Stored:
        defaulted = namespace is None
        namespace = default_scope(name, namespace, ((s.compiled.namespace, s.compiled.name)
                                                    for s in self.stored.values()))
        st = self.stored.get(f"{namespace}/{name}")
        if st is None:
            others = sorted(s.compiled.namespace for s in self.stored.values()
                            if s.compiled.name == name and s.compiled.namespace != namespace)
            raise PolicyError([Problem("metadata.name", not_found("tracing policy", name, namespace, others,
                                                                          defaulted))])
        return st

    def delete(self, name: str, namespace: str | None) -> dict[str, Any]:
        st = self._get(name, namespace)
        self.sensor.delete(st.key)
        del self.stored[st.key]
        self._save()
        return {"deleted": st.key}

    def set_enabled(self, name: str, namespace: str | None, on: bool) -> dict[str, Any]:
        st = self._get(name, namespace)
        self.sensor.set_enabled(st.key, on)
        st.enabled = on
        self._save()
        return {"name": name, "state": "enabled" if on else "disabled"}

    def set_mode(self, name: str, namespace: str | None, mode: str) -> dict[str, Any]:
        if mode not in ("enforce", "monitor"):
            raise PolicyError([Problem("mode", f"{mode!r}: must be enforce or monitor")])
        st = self._get(name, namespace)
        st.compiled.mode = mode
        st.mode_override = mode
        self.sensor.apply(st.key, st.compiled, self.cgroups_for(st.compiled), st.enabled)
        self._save()
        return {"name": name, "mode": mode}

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for st in self.stored.values():
            lp = self.sensor.policies[st.key]
            counts = self.sensor.policy_counters(lp)
            out.append(
                {
                    "name": st.compiled.name,
                    "namespace": st.compiled.namespace,
                    "kind": st.compiled.kind,
                    "state": "enabled" if st.enabled else "disabled",
                    "mode": st.compiled.mode,
                    "hooks": [{"source": h.source, "realisation": h.realisation} for h in st.compiled.hooks],
                    "events": counts["posted"],
                    "matched": counts["matched"],
                    "enforced": counts["enforced"],
                    "agent_exempt": counts["exempted"],  # actions not taken because they hit the agent
                    "lost": counts["lost"],
                    "kernel_memory": self.sensor.kernel_memory(lp),
                    "scope": None if lp.cgroups is None else len(lp.cgroups),
                    # pinned: a killed agent leaves the hooks attached and enforcing
                    "enforced_while_agent_down": self.sensor.pins is not None,
                    "notes": st.compiled.notes,
                    "action_counters": action_counters(st.compiled, counts),
                }
            )
        return out

    # ------------------------------------------------------------------ events
    def hook_entry(self, hid: int) -> HookEntry | None:
        """The policy and hook of an event's hook id (live, or deleted or replaced since); None: never known."""
        return self.sensor.hook_of(hid)

    def process_parts(
        self, ev: abi.Event | abi.EventRecord, p: Process | None, cache: ProcessCache, node: str
    ) -> ProcessParts:
        """The process, parent and ancestors of an event as JSON, taken now (their refcnt is the one at this
        event). An unknown process (None) gets what the record says of it (``unknown_process_json``)."""
        if p is None:
            pod = self.network.pod_of_cgroup(ev.cgroup_id) if self.network is not None else None
            return ProcessParts(unknown_process_json(ev, node, cache.clock, pod), None, [], False)
        parent = cache.parent(p)
        return ProcessParts(
            tetragon.process_json(p),
            tetragon.process_json(parent) if parent is not None else None,
            [tetragon.process_json(a) for a in cache.ancestors(p)],
            True,
        )

    def event(self, ev: abi.Event, cache: ProcessCache, node: str, time: str) -> tuple[dict[str, Any], bool] | None:
        """The Tetragon event of a kernel record, and whether its process was known.

        The process is the image the kernel named by (pid, start ktime): never another process that
        reused the pid. An unknown process still gives the event, with what the record says of it
        (``unknown_process_json``). None only for a hook that was never known (counted by the caller).
        """
        entry = self.hook_entry(ev.hook_id)
        if entry is None:
            return None
        parts = self.process_parts(ev, cache.get_by_key(ev.pid, ev.proc_ktime), cache, node)
        return build_event(ev, entry, parts, node, time), parts.known

    def build(
        self, ev: abi.Event | abi.EventRecord, entry: HookEntry, parts: ProcessParts, node: str, time: str
    ) -> dict[str, Any]:
        return build_event(ev, entry, parts, node, time)




def build_event(
    ev: abi.Event | abi.EventRecord, entry: HookEntry, parts: ProcessParts, node: str, time: str
) -> dict[str, Any]:
    """The Tetragon event of a kernel record, from its hook and its process side taken when it was read."""
    if isinstance(ev, abi.EventRecord):
        ev = ev.decode()
    lp, hook = entry
    action = abi.ACTION_NAMES.get(ev.action, "Post")
    body: dict[str, Any] = {"process": parts.process}
    if parts.parent is not None:
        body["parent"] = parts.parent
    args = [_arg(hook, i, ev) for i in range(min(ev.nargs, len(hook.args)))]
    if hook.event == "process_tracepoint":
        subsys, _, event = hook.function_name.partition("/")
        body.update({"subsys": subsys, "event": event})
    elif hook.event == "process_uprobe":
        body.update({"path": hook.path, "symbol": hook.function_name})
    else:
        body["function_name"] = hook.function_name
    if args:
        body["args"] = args
    if hook.ret is not None:
        body["return"] = _value(hook.ret, ev.ret, "")
    body["action"] = ACTION_ENUM.get(action, "KPROBE_ACTION_POST")
    body["policy_name"] = lp.policy.name
    message = hook.message
    if ev.flags & abi.EV_EXEMPT:
        message = f"[agent exempt: would {action}] {message}".strip()
    elif ev.flags & abi.EV_MONITOR:
        message = f"[monitor mode: would {action}] {message}".strip()
    elif action == "DenyConnect" and ev.flags & abi.EV_ENFORCED:
        message = f"[DenyConnect: connect() failed with EPERM] {message}".strip()
    if message:
        body["message"] = message
    if hook.tags:
        body["tags"] = list(hook.tags)
    if parts.ancestors:
        body["ancestors"] = parts.ancestors
    return {hook.event: body, "node_name": node, "time": time}


def unknown_process_json(
    ev: abi.Event | abi.EventRecord, node: str, clock: KtimeClock, pod: dict[str, Any] | None
) -> dict[str, Any]:
    """A Tetragon ``Process`` object for a process the cache does not know, from what the record says.

    Its exec_id and start time when the kernel knew its start ktime, pid, tid, pod by cgroup, and the
    flag ``miss`` (Tetragon's "process not found"); nothing guessed (no uid: 0 would claim root).
    """
    d: dict[str, Any] = {}
    if ev.proc_ktime:
        d["exec_id"] = make_exec_id(node, ev.proc_ktime, ev.pid)
    d["pid"] = ev.pid
    d["flags"] = "miss"
    if ev.proc_ktime:
        d["start_time"] = clock.to_rfc3339(ev.proc_ktime)
    if pod:
        d["pod"] = pod
    d["tid"] = ev.tid
    return d


def _arg(hook: Hook, i: int, ev: abi.Event) -> dict[str, Any]:
    raw = bytes(ev.str[i])[: ev.slen[i]]
    return _value(hook.args[i], ev.ints[i], raw.decode("utf-8", errors="replace"), raw)


_SOCK_TYPES = {1: "SOCK_STREAM", 2: "SOCK_DGRAM", 3: "SOCK_RAW", 5: "SOCK_SEQPACKET"}
_PROTOS = {6: "IPPROTO_TCP", 17: "IPPROTO_UDP", 1: "IPPROTO_ICMP", 132: "IPPROTO_SCTP", 262: "IPPROTO_MPTCP"}
_TCP_STATES = {
    1: "TCP_ESTABLISHED",
    2: "TCP_SYN_SENT",
    3: "TCP_SYN_RECV",
    4: "TCP_FIN_WAIT1",
    5: "TCP_FIN_WAIT2",
    6: "TCP_TIME_WAIT",
    7: "TCP_CLOSE",
    8: "TCP_CLOSE_WAIT",
    9: "TCP_LAST_ACK",
    10: "TCP_LISTEN",
    11: "TCP_CLOSING",
}


_FAMILIES = {socket.AF_INET: "AF_INET", socket.AF_INET6: "AF_INET6"}


def _sock_arg(si: abi.SockInfo) -> dict[str, Any]:
    """Tetragon's sock_arg (KprobeSock) from the socket the kernel read."""

    out: dict[str, Any] = {
        "family": _FAMILIES.get(si.family, str(si.family)),
        "type": _SOCK_TYPES.get(si.type, str(si.type)),
        "protocol": _PROTOS.get(si.protocol, str(si.protocol)),
        "saddr": _addr(si.family, si.saddr, bytes(si.saddr6)),
        "daddr": _addr(si.family, si.daddr, bytes(si.daddr6)),
        "sport": si.sport,
        "dport": si.dport,
    }
    if si.state in _TCP_STATES:
        out["state"] = _TCP_STATES[si.state]
    return {k: v for k, v in out.items() if v not in (0, "")}


def _addr(family: int, v4: int, v6: bytes) -> str:
    """An address as Tetragon writes it: IPv6 sockets in IPv6 form (unset: "::"), others as IPv4."""
    import ipaddress

    return str(ipaddress.IPv6Address(v6) if family == socket.AF_INET6 else ipaddress.IPv4Address(v4))


def _caps(mask: int) -> list[str]:
    from apiary.tracing.crd import CAPABILITIES

    return [name for n, name in enumerate(CAPABILITIES) if mask >> n & 1]


def _skb_arg(si: abi.SkbInfo) -> dict[str, Any]:
    """Tetragon's skb_arg (KprobeSkb) from the packet headers the kernel read."""
    import ipaddress

    s = si.s
    out: dict[str, Any] = {"hash": si.hash, "len": si.len, "priority": si.priority, "mark": si.mark}
    if s.family == socket.AF_INET:
        out.update(
            {
                "saddr": str(ipaddress.IPv4Address(s.saddr)),
                "daddr": str(ipaddress.IPv4Address(s.daddr)),
                "sport": s.sport,
                "dport": s.dport,
                "proto": s.protocol,
                "family": "AF_INET",
            }
        )
    return {k: v for k, v in out.items() if v not in (0, "")}


def _cred_arg(ci: abi.CredInfo) -> dict[str, Any]:
    """Tetragon's process_credentials_arg (ProcessCredentials) from the credentials the kernel read."""
    out: dict[str, Any] = {k: getattr(ci, k) for k in ("uid", "gid", "euid", "egid", "suid", "sgid", "fsuid", "fsgid")}
    caps = {k: _caps(getattr(ci, f"cap_{k}")) for k in ("permitted", "effective", "inheritable")}
    out["caps"] = {k: v for k, v in caps.items() if v}
    out["user_ns"] = {"ns": {"inum": ci.user_ns}}
    return out


def _value(spec: ArgSpec, v: int, s: str, raw: bytes = b"") -> dict[str, Any]:
    """One typed argument (or return value) in Tetragon's JSON shape."""
    if spec.kind in (ARG_STRING, ARG_DATALOC, ARG_CHARS, ARG_KSTRING):
        out: dict[str, Any] = {"string_arg": s}
    elif spec.kind in (ARG_FD, ARG_FILEPTR, ARG_BPRM) and spec.tetragon_type == "linux_binprm":
        out = {"linux_binprm_arg": {"path": s}}
    elif spec.kind in (ARG_FD, ARG_FILEPTR):
        out = {"file_arg": {"path": s}}
    elif spec.kind == ARG_BUF:
        out = {"bytes_arg": base64.b64encode(raw).decode()}
    elif spec.kind == ARG_CRED:
        out = {"process_credentials_arg": _cred_arg(abi.credinfo(raw))}
    elif spec.kind == ARG_SKB:
        out = {"skb_arg": _skb_arg(abi.skbinfo(raw))}
    elif spec.kind == ARG_PATHPTR:
        out = {"path_arg": {"path": s}}
    elif spec.kind in (ARG_SOCK, ARG_CONNSOCK, ARG_SOCKETPTR):
        out = {"sock_arg": _sock_arg(abi.sockinfo(raw))}
    elif spec.kind in (ARG_SOCKADDR, ARG_KSOCKADDR):
        fam, addr, port = abi.sockaddr(v)
        out = {"sockaddr_arg": {"family": "AF_INET" if fam == 2 else str(fam), "addr": addr, "port": port}}
    elif spec.tetragon_type in ("size_t", "uint64", "ulong"):
        out = {"size_arg": str(v & 0xFFFFFFFFFFFFFFFF)}
    elif spec.kind == ARG_UINT:
        out = {"uint_arg": v & 0xFFFFFFFF}
    elif spec.kind == ARG_INT and spec.tetragon_type in ("long", "sint64", "int64"):
        out = {"long_arg": str(v)}
    else:
        out = {"int_arg": _i32(v)}
    if spec.label:
        out["label"] = spec.label
    return out


def _i32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def _split(text: str, n: int) -> list[str]:
    import yaml

    docs = [yaml.safe_dump(d, sort_keys=False) for d in yaml.safe_load_all(text) if d is not None]
    return docs if len(docs) == n else [text] * n
