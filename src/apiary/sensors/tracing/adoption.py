"""The tracing sensor's pins: the manifest it writes, adopting what a previous agent left (links kept attached,
policies enforcing until restored) and removing what nothing claimed; ``disable_pinned_policy`` without an agent.
The pin layout is in sensor.py's docstring."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from apiary.loader import Map
from apiary.sensors.pins import MANIFEST, link_file, read_manifest, write_manifest
from apiary.sensors.tracing import abi
from apiary.sensors.tracing.follow import FollowBits
from apiary.sensors.tracing.state import CONNECT_LINKS, FOLLOW_PROGS, AdoptedPolicy, _attach_point, _scope_key


class PinAdoption(FollowBits):
    """The manifest, and the adoption of a previous agent's pins."""

    def _adopt(self, manifest: dict[str, Any]) -> None:
        """Take over what a previous agent left: its links (kept attached), ids and policies (until restored)."""
        assert self.pins is not None
        self._next_policy = int(manifest.get("next_policy", 1))
        self._dyn = {str(k): int(v) for k, v in manifest.get("dyn", {}).items()}
        self.follow = {int(b): (int(h), int(si), str(w)) for b, (h, si, w) in manifest.get("follow", {}).items()}
        for key, rec in manifest.get("policies", {}).items():
            self.adopted[key] = AdoptedPolicy(
                int(rec["id"]),
                [int(h) for h in rec["hooks"]],
                {int(c) for c in rec["cgroups"]},
                str(rec["digest"]),
                {int(h): ([str(n) for n in names], bool(ret)) for h, (names, ret) in rec["attach"].items()},
            )
        for name, (_path, point) in manifest.get("links", {}).items():
            link = self.pins.adopt_link(name, str(point))
            if link is None:
                continue
            self.adopted_links += 1
            if name in CONNECT_LINKS:
                self.links.append(link)
            elif name.startswith("@follow_"):
                self.follow_links.append(link)
            else:
                self.sys_links[name] = link
        if self.follow and len(self.follow_links) != len(FOLLOW_PROGS):  # lost pins: attach them anew
            for lk in self.follow_links:
                lk.destroy()
            self.follow_links = [self._follow_link(p) for p in FOLLOW_PROGS]

    def _save(self) -> None:
        """Write the manifest: what the next agent needs to adopt these pins."""
        if not self.pins:
            return
        policies: dict[str, Any] = {}
        for key, ad in self.adopted.items():
            policies[key] = {
                "id": ad.policy_id,
                "hooks": ad.hook_ids,
                "cgroups": sorted(ad.cgroups),
                "digest": ad.digest,
                "attach": {h: [n, r] for h, (n, r) in ad.attach.items()},
            }
        for key, lp in self.policies.items():
            attach = {
                hid: [list(hook.attach_points), hook.ret is not None]
                for hid, (_lp, hook) in self.hooks.items()
                if hid in lp.hook_ids
            }
            policies[key] = {
                "id": lp.policy_id,
                "hooks": lp.hook_ids,
                "cgroups": sorted(lp.cgroups),
                "digest": lp.digest,
                "attach": attach,
            }
        self.pins.write(
            {
                "next_policy": self._next_policy,
                "dyn": self._dyn,
                "policies": policies,
                "follow": {b: list(v) for b, v in self.follow.items()},
                "links": {n: [lk.pin_path, _attach_point(lk)] for n, lk in self._link_names().items()},
            }
        )

    def finish_adoption(self) -> list[str]:
        """After the agent restored its stored policies: remove what a previous agent left and nothing claimed
        (policies, hooks, follow bits, scope entries, links)."""
        notes = []
        for ps in (self.process.pins, self.pins):
            if ps and ps.discarded:
                notes.append(f"pins of the previous agent in {ps.discarded}")
        if self.pins and self.pins.adopted:
            notes.append(
                f"tracing: adopted {self.adopted_links} pinned links, "
                f"{len(self.policies)} policies kept enforcing while the agent was down"
            )
        for key, ad in list(self.adopted.items()):
            self._drop(ad)
            notes.append(f"tracing: removed policy {key} left in the kernel by the previous agent (not stored)")
        self.adopted.clear()
        self._write_syscalls()
        diff: Counter[str] = Counter()  # entries removed (or rewritten) per map: what no stored policy claims
        zero = b"\0" * self.hooks_map.value_size
        for hid in range(abi.GS_HOOKS):
            if hid not in self.hooks and (self.hooks_map.lookup(hid.to_bytes(4, "little")) or zero) != zero:
                self.hooks_map.update(hid.to_bytes(4, "little"), zero)
                diff["gs_hooks -"] += 1
        fzero = b"\0" * self.follow_map.value_size
        for b in range(abi.GS_FOLLOW):
            if b not in self.follow and (self.follow_map.lookup(b.to_bytes(4, "little")) or fzero) != fzero:
                self.follow_map.update(b.to_bytes(4, "little"), fzero)
                diff["gs_follow -"] += 1
        live = 0
        for b in self.follow:
            live |= 1 << b
        for pid, bits in list(self.mb_map.items()):
            if bits & ~live:
                self.mb_map.put(pid, bits & live)
                diff["gs_mb ~"] += 1
        ids = {lp.policy_id for lp in self.policies.values()}
        for raw in list(self.scope_map.keys()):
            if int.from_bytes(raw[:4], "little") not in ids:
                self.scope_map.delete(raw)
                diff["gs_scope -"] += 1
        if self.pins:
            held = {link_file(n) for n in self._link_names()}
            for f in self.pins.link_names() - held:
                os.unlink(self.pins.root / "links" / f)
                diff["links -"] += 1
        if self.pins and self.pins.adopted:
            notes.append("tracing: reconciled: " + (", ".join(f"{k}{n}" for k, n in diff.items())
                                                    or "hooks, follow bits, scope entries and links already matched"))
        self._save()
        return notes

    def _drop(self, ad: AdoptedPolicy) -> None:
        """Remove an adopted policy's map entries (its links go with the next syscall-table write)."""
        for b in [b for b, (hid, _si, _w) in self.follow.items() if hid in ad.hook_ids]:
            self._free_bit(b)
        for hid in ad.hook_ids:
            self.hooks_map.update(hid.to_bytes(4, "little"), b"\0" * self.hooks_map.value_size)
        for cg in ad.cgroups:
            self.scope_map.delete(_scope_key(ad.policy_id, cg))


def disable_pinned_policy(pin_dir: str | Path, key: str) -> int:
    """Without a running agent: stop a pinned policy ("<namespace>/<name>") from acting at once (its gs_hooks
    and gs_follow entries zeroed) and forget it in the manifest. The caller also drops it from the stored
    state (tracingpolicies.json); the next agent start detaches its links and removes what is left of it.
    Returns how many hooks were switched off (0 when the pins hold no such policy)."""
    d = Path(pin_dir)
    if not (d / MANIFEST).exists():
        return 0
    maps: dict[str, Map] = {}
    try:
        for n in (MANIFEST, "gs_hooks", "gs_follow"):
            maps[n] = Map.from_pin(str(d / n))
        data = read_manifest(maps[MANIFEST])
        rec = (data or {}).get("policies", {}).pop(key, None)
        if data is None or rec is None:
            return 0
        hooks = {int(h) for h in rec["hooks"]}
        for hid in hooks:
            maps["gs_hooks"].update(hid.to_bytes(4, "little"), b"\0" * maps["gs_hooks"].value_size)
        follow = data.get("follow", {})
        for bit in [b for b, (hid, _si, _w) in follow.items() if int(hid) in hooks]:
            maps["gs_follow"].update(int(bit).to_bytes(4, "little"), b"\0" * maps["gs_follow"].value_size)
            del follow[bit]
        write_manifest(maps[MANIFEST], data)
        return len(hooks)
    finally:
        for m in maps.values():
            m.close()
