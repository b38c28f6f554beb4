"""Writing TracingPolicies into the gsys maps: hook slots, scope, follow bits and the syscall table, as a whole
(an attach failure leaves nothing of the new version); switching them on and off, deleting, counting."""

from __future__ import annotations

from apiary.loader import BpfError
from apiary.sensors.tracing import abi
from apiary.sensors.tracing.adoption import PinAdoption
from apiary.sensors.tracing.follow import proc_tree
from apiary.sensors.tracing.state import LoadedPolicy, _digest, _scope_key
from apiary.tracing.types import CompiledTracingPolicy, Hook


class PolicyWrites(PinAdoption):
    """Policies in the kernel maps: apply, replace, enable, delete, count."""

    def apply(
        self, key: str, policy: CompiledTracingPolicy, cgroups: set[int] | None, enabled: bool = True
    ) -> LoadedPolicy:
        """Load (or replace) a policy as a whole: check everything, then write (disabled: never live)."""
        lp = self._apply(key, policy, cgroups, enabled)
        self._save()
        return lp

    def _keep(self, key: str, policy: CompiledTracingPolicy, cgroups: set[int] | None) -> LoadedPolicy | None:
        """A restored policy a previous agent left enforcing, unchanged: keep its hooks, bits and links."""
        ad = self.adopted.get(key)
        if ad is None or len(ad.hook_ids) != len(policy.hooks):
            return None
        bits = {(hid, si, w): b for b, (hid, si, w) in self.follow.items() if hid in ad.hook_ids}
        encoded = self._encode(policy, ad.policy_id, ad.hook_ids, bits)
        if _digest(policy, encoded) != ad.digest:
            return None
        del self.adopted[key]
        # the kernel holds these records already (the enabled flag as the last agent left it: the caller sets it)
        first = self.hooks_map.lookup(ad.hook_ids[0].to_bytes(4, "little")) if ad.hook_ids else None
        on = bool(first and first[abi.HookCfg.flags.offset] & abi.F_ENABLED)
        lp = LoadedPolicy(policy, ad.policy_id, list(ad.hook_ids), on, set(cgroups or ()), digest=ad.digest)
        self._write_scope(lp, LoadedPolicy(policy, ad.policy_id, [], True, ad.cgroups))
        for hid, hook in zip(lp.hook_ids, policy.hooks, strict=True):
            self.hooks[hid] = (lp, hook)
        self.policies[key] = lp
        self._write_syscalls()
        return lp

    def _encode(
        self,
        policy: CompiledTracingPolicy,
        policy_id: int,
        ids: list[int],
        bits: dict[tuple[int, int, str], int],
        enabled: bool = True,
    ) -> list[bytes]:
        """The gs_hooks records of a policy's hooks, given its ids and followChildren bits (the digest is always
        of the enabled records: enabling does not change what a policy is)."""
        scoped = policy.pod_selector is not None or policy.kind == "TracingPolicyNamespaced"
        flags = (abi.F_ENABLED if enabled else 0) | (abi.F_SCOPED if scoped else 0)
        flags |= abi.F_MONITOR if policy.mode == "monitor" else 0
        return [
            abi.encode_hook(hook, policy_id, hid, flags, {(si, w): b for (h, si, w), b in bits.items() if h == hid})
            for hid, hook in zip(ids, policy.hooks, strict=True)
        ]

    def _apply(
        self, key: str, policy: CompiledTracingPolicy, cgroups: set[int] | None, enabled: bool = True
    ) -> LoadedPolicy:
        kept = self._keep(key, policy, cgroups)
        if kept is not None:
            if kept.enabled != enabled:
                self.set_enabled(key, enabled)
            return kept
        if key in self.adopted:  # changed while the agent was down: replaced as a whole
            self._drop(self.adopted.pop(key))
        old = self.policies.get(key)
        nums = abi.syscall_numbers()
        for hook in policy.hooks:
            for name in hook.attach_points:
                if name not in nums and not name.startswith(("__tp_", "__uprobe_", "__kprobe_", "__rawtp_")):
                    raise BpfError(f"hook {hook.source}", 22, f"unknown syscall {name!r} on this architecture")
        drop = set(old.hook_ids) if old else set()
        in_use = {hid for hid in self.hooks if hid not in drop}
        in_use |= {hid for ad in self.adopted.values() for hid in ad.hook_ids}
        rank = {hid: n for n, hid in enumerate([*self.retired, *sorted(drop)], start=1)}
        free = sorted((i for i in range(abi.GS_HOOKS) if i not in in_use), key=lambda i: rank.get(i, 0))
        if len(free) < len(policy.hooks):
            raise BpfError(
                "tracing hooks",
                28,
                f"the policy needs {len(policy.hooks)} hooks, {len(free)} of {abi.GS_HOOKS} are free",
            )
        ids = free[: len(policy.hooks)]
        extra: dict[int, list[int]] = {}
        for hid, hook in zip(ids, policy.hooks, strict=True):
            for name in hook.attach_points:
                extra.setdefault(self._nr(name), []).append(hid)
        # followChildren / followForks bits: the old policy's are freed when the new one is written
        old_bits = {b for b, (hid, _si, _w) in self.follow.items() if hid in drop}
        free_bits = [b for b in range(abi.GS_FOLLOW) if b not in self.follow or b in old_bits]
        wanted = [(hid, si, w) for hid, hook in zip(ids, policy.hooks, strict=True)
                  for si, w in abi.follow_slots_needed(hook)]
        if len(wanted) > len(free_bits):
            raise BpfError(
                "tracing follow slots",
                28,
                f"the policy needs {len(wanted)} followChildren/followForks slots, {len(free_bits)} of "
                f"{abi.GS_FOLLOW} are free",
            )
        table = self._syscall_hooks(extra, drop)
        crowded = [nr for nr, h in table.items() if len(h) > abi.GS_PER_SYSCALL]
        if crowded:
            raise BpfError("tracing hooks", 28, f"more than {abi.GS_PER_SYSCALL} hooks on syscall numbers {crowded}")
        lp = LoadedPolicy(policy, old.policy_id if old else self._next_policy, ids, enabled, set(cgroups or ()))
        if not old:
            self._next_policy += 1
        else:
            lp.carried = self.policy_counters(old)
        # write: scope first, then follow bits, then hook configs, then the syscall table that makes them live
        self._write_scope(lp, old)
        for b in old_bits:
            self._free_bit(b)
        assign = dict(zip(wanted, free_bits, strict=False))
        tree = proc_tree() if assign else {}  # one /proc scan for all the policy's follow filters
        for (hid, si, w), b in assign.items():
            hook = policy.hooks[ids.index(hid)]
            self._claim_bit(b, hid, si, w, hook, tree)
        encoded = self._encode(policy, lp.policy_id, ids, assign)
        lp.digest = _digest(policy, encoded)
        if not enabled:
            encoded = self._encode(policy, lp.policy_id, ids, assign, enabled=False)
        for hid, raw in zip(ids, encoded, strict=True):
            self.baseline[hid] = self._raw_counters(hid)
            self.hooks_map.update(hid.to_bytes(4, "little"), raw)
        prev_hooks = dict(self.hooks)
        for hid in drop - set(ids):
            self.hooks.pop(hid, None)
        for hid, hook in zip(ids, policy.hooks, strict=True):
            self.hooks[hid] = (lp, hook)
        try:
            self._write_syscalls()
        except BaseException:
            # an attach failed (a missing uprobe target, no kprobes…): nothing of the new policy stays
            for b in assign.values():
                self._free_bit(b)
            self.hooks = {hid: v for hid, v in prev_hooks.items() if hid not in drop}
            for hid in ids:
                self.hooks_map.update(hid.to_bytes(4, "little"), b"\0" * self.hooks_map.value_size)
            self.policies.pop(key, None)
            self._write_syscalls()
            if old:
                self._apply(key, old.policy, old.cgroups, old.enabled).carried = lp.carried
            raise
        for hid in drop:
            if hid not in ids:
                self._retire(hid, prev_hooks.get(hid))
        for hid in ids:
            self.retired.pop(hid, None)
        self.policies[key] = lp
        return lp

    def _retire(self, hid: int, entry: tuple[LoadedPolicy, Hook] | None) -> None:
        self.retired.pop(hid, None)
        if entry is not None:
            self.retired[hid] = entry

    def hook_of(self, hid: int) -> tuple[LoadedPolicy, Hook] | None:
        """The policy and hook an event's hook id names: a live one, else one deleted or replaced since."""
        return self.hooks.get(hid) or self.retired.get(hid)

    def _write_scope(self, lp: LoadedPolicy, old: LoadedPolicy | None) -> None:
        for cg in lp.cgroups:
            self.scope_map.update(_scope_key(lp.policy_id, cg), b"\x01")
        if old:
            for cg in old.cgroups - lp.cgroups:
                self.scope_map.delete(_scope_key(old.policy_id, cg))

    def set_cgroups(self, key: str, cgroups: set[int]) -> None:
        lp = self.policies[key]
        new = LoadedPolicy(lp.policy, lp.policy_id, lp.hook_ids, lp.enabled, set(cgroups))
        self._write_scope(new, lp)
        lp.cgroups = new.cgroups
        self._save()

    def set_enabled(self, key: str, on: bool) -> None:
        lp = self.policies[key]
        for hid in lp.hook_ids:
            raw = bytearray(self.hooks_map.lookup(hid.to_bytes(4, "little")) or b"")
            flag_off = abi.HookCfg.flags.offset
            raw[flag_off] = (raw[flag_off] | abi.F_ENABLED) if on else (raw[flag_off] & ~abi.F_ENABLED)
            self.hooks_map.update(hid.to_bytes(4, "little"), bytes(raw))
        lp.enabled = on

    def delete(self, key: str) -> None:
        lp = self.policies.pop(key)
        for hid in lp.hook_ids:
            self._retire(hid, self.hooks.pop(hid, None))
        for b in [b for b, (hid, _si, _w) in self.follow.items() if hid in lp.hook_ids]:
            self._free_bit(b)
        self._write_syscalls()
        for hid in lp.hook_ids:
            self.hooks_map.update(hid.to_bytes(4, "little"), b"\0" * self.hooks_map.value_size)
        for cg in lp.cgroups:
            self.scope_map.delete(_scope_key(lp.policy_id, cg))
        self._save()

    def _raw_counters(self, hid: int) -> dict[str, int]:
        n = len(abi.CNT)
        return {name: sum(self.counters.get(hid * n + i) or [0]) for i, name in enumerate(abi.CNT)}

    def hook_counters(self, hid: int) -> dict[str, int]:
        """What a hook counted since it got its slot (a slot's earlier hooks' counts are not its own)."""
        base = self.baseline.get(hid, {})
        return {k: v - base.get(k, 0) for k, v in self._raw_counters(hid).items()}

    def policy_counters(self, lp: LoadedPolicy) -> dict[str, int]:
        """A policy's counts: its hooks', and those of the versions it replaced."""
        out = {name: lp.carried.get(name, 0) for name in abi.CNT}
        for hid in lp.hook_ids:
            for k, v in self.hook_counters(hid).items():
                out[k] += v
        return out

    def totals(self) -> dict[str, int]:
        """Events every hook slot ever posted to the ring and lost (ring full), policies gone included."""
        out = {"posted": 0, "lost": 0}
        for hid in range(abi.GS_HOOKS):
            raw = self._raw_counters(hid)
            for name in out:
                out[name] += raw[name]
        return out

    def kernel_memory(self, lp: LoadedPolicy) -> int:
        return len(lp.hook_ids) * self.hooks_map.value_size + len(lp.cgroups) * 24
