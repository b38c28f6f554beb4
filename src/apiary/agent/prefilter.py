"""The agent's XDP prefilter: the sensor loaded on first use (or at start, for --prefilter-device or a
stored state), its devices and deny lists kept in the state directory. Its maps and XDP links are pinned
under ``<pin-root>/prefilter``: a killed or stopped agent's prefilter keeps dropping (as the datapath's
endpoints keep their programs), and the next agent adopts the pins, reconciles the deny lists and the devices
to the stored state (logging the diff) and keeps the revision and the per-CIDR drop counters.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from apiary.loader import BpfError, PinnedLink
from apiary.loader.fs import remove_pin_tree
from apiary.sensors.prefilter.cidrs import PrefilterError, parse_cidrs
from apiary.sensors.prefilter.sensor import MODES, Prefilter
from apiary.store import Store, describe

from .config import AgentConfig
from .statedir import read_json, write_json

STATE_FILE = "prefilter.json"


class PrefilterControl:
    def __init__(self, cfg: AgentConfig, on_load: Callable[[Prefilter], None], *, store: Store) -> None:
        self.cfg = cfg
        self.store = store
        self.pin_dir = Path(cfg.pin_root) / "prefilter"
        self.on_load = on_load
        self.sensor: Prefilter | None = None

    def _sensor(self) -> Prefilter:
        if self.sensor is None:
            s = Prefilter(capacity=self.cfg.prefilter_map_size, pin_dir=self.pin_dir)
            s.load()
            self.sensor = s
            self.on_load(s)
        return self.sensor

    def close(self) -> None:
        """The devices keep their XDP links and the maps stay pinned (a stopped agent's prefilter keeps
        dropping, as the datapath's endpoints keep their programs): the next agent adopts them. With no
        device and no entry left, the pins go (as the datapath's do with no endpoint left)."""
        if self.sensor is not None:
            s = self.sensor
            s.close(keep_pins=bool(s.devs or s.lists.entries))
            self.sensor = None

    def start(self) -> tuple[list[str], list[str]]:
        """Restore the stored state, then attach --prefilter-device: lines for the start-up summary (what
        holds, what does not: a stored device that is gone is reported, not fatal)."""
        stored = read_json(self.store, STATE_FILE) or {}
        devices = {**{d: m for d, m in stored.get("devices", {}).items()},
                   **{d: self.cfg.prefilter_mode for d in self.cfg.prefilter_devices}}
        cidrs = stored.get("cidrs", [])
        if not devices and not cidrs:
            remove_pin_tree(self.pin_dir)  # links a killed agent left with nothing to filter
            return [], []
        nets = parse_cidrs(cidrs, "cidrs (in the state file)") if cidrs else []
        s = self._sensor()
        adopted = s.adopted
        diff = s.restore(nets, max(1, int(stored.get("revision", 1))))
        out, missing, kept = [], [], []
        for name, mode in devices.items():
            try:
                d = s.attach(name, mode)
            except (PrefilterError, BpfError) as e:
                missing.append(f"prefilter on {name}: not attached: {e}")
                continue
            if isinstance(d.link, PinnedLink):
                kept.append(name)
            out.append(f"prefilter on {name}: XDP {d.mode}" + (f" ({d.note})" if d.note else ""))
        stale = s.release_stale()
        if cidrs:
            out.append(f"prefilter: {len(cidrs)} CIDRs restored from {describe(self.store, STATE_FILE)} "
                       f"(revision {s.lists.revision})")
        if s.pinset is not None and s.pinset.discarded:  # e.g. another --prefilter-map-size: not adoptable
            out.append(f"prefilter: pins of the previous agent in {s.pinset.discarded}")
        if adopted:
            attached = [d for d in s.devs if d not in kept]
            out += [f"adopted pinned prefilter maps and XDP links, reconciled: {line}" for line in diff]
            out.append("adopted pinned prefilter maps and XDP links, reconciled: devices: "
                       f"kept {_names(kept)}, attached {_names(attached)}, detached {_names(stale)}")
        self._save()
        return out, missing

    def _save(self) -> None:
        s = self.sensor
        if s is None:
            return
        write_json(self.store, STATE_FILE, {
            "revision": s.lists.revision,
            "devices": {d.name: d.mode for d in s.devs.values()},
            "cidrs": [str(n) for n in s.lists.entries],
        })

    # ------------------------------------------------------------------ API operations (on the worker)
    def listing(self) -> dict[str, Any]:
        if self.sensor is None:
            return {"revision": 1, "devices": [], "capacity_per_map": self.cfg.prefilter_map_size, "entries": []}
        return self.sensor.listing()

    def add(self, body: dict[str, Any]) -> dict[str, Any]:
        """Attach to the devices named (if any) and add the CIDRs, all or nothing."""
        devices, mode, revision = _devices(body), body.get("mode", "auto"), _revision(body)
        if mode not in MODES:
            raise PrefilterError(f"mode: {mode!r} is not one of {', '.join(MODES)}", "mode")
        parse_cidrs(body.get("cidrs"))  # refused before anything is loaded or attached
        s = self._sensor()
        s.lists.check_revision(revision)
        attached = []
        try:
            for name in devices:  # a device held keeps its link; one deleted and made again is attached anew
                held = s.devs.get(name)
                if s.attach(name, mode) is not held:
                    attached.append(name)
            res = s.add(body.get("cidrs"), revision)
        except BaseException:
            for name in attached:
                s.detach(name)
            raise
        self._save()
        return {**res, "devices": s.devices()}

    def delete(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.sensor is None:
            raise PrefilterError("cidrs: the deny lists are empty", "cidrs", 404)
        res = self.sensor.delete(body.get("cidrs"), _revision(body))
        self._save()
        return res

    def detach(self, name: str) -> dict[str, Any]:
        if self.sensor is None:
            raise PrefilterError(f"devices: the prefilter is not attached to {name!r}", "devices", 404)
        self.sensor.detach(name)
        self._save()
        return {"devices": self.sensor.devices()}


def _names(names: list[str]) -> str:
    return ", ".join(names) if names else "none"


def _devices(body: dict[str, Any]) -> list[str]:
    devs = body.get("devices", [])
    if not isinstance(devs, list) or not all(isinstance(d, str) and d for d in devs):
        raise PrefilterError("devices: expected a list of interface names", "devices")
    return devs


def _revision(body: dict[str, Any]) -> int | None:
    rev = body.get("revision")
    if rev is not None and (not isinstance(rev, int) or isinstance(rev, bool) or rev < 1):
        raise PrefilterError(f"revision: expected a positive integer, not {rev!r}", "revision")
    return rev
