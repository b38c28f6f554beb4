"""A sensor's pins in bpffs, kept across agent restarts so enforcement survives a killed agent.

Layout of one sensor's pin directory (``<pin_root>/process`` or ``<pin_root>/tracing``)::

    manifest        an array map of one entry: JSON (NUL-padded) with the pins' identity and the sensor's state
    <map name>      each map the sensor keeps (its kernel state)
    links/<file>    each attachment (a bpf_link); the manifest's "links" maps attach names to these files

The manifest is written last when the pins are created, so a directory without a readable manifest whose
identity (the BPF object's digest and the sizes it was loaded with) matches is stale and is removed whole.
A clean stop removes the directory (unless told to keep it: :func:`keep_links`, then ``PinSet.close``); a killed
agent leaves it, and the next agent adopts it.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from apiary.loader import BpfError, BpfObject, Map, PinnedLink
from apiary.loader.fs import remove_pin_tree

MANIFEST = "manifest"
MANIFEST_BYTES = 1 << 17
BPF_MAP_TYPE_ARRAY = 2


class PinnableLink(Protocol):
    pin_path: str | None

    def destroy(self) -> None: ...


def keep_links(links: Iterable[PinnableLink]) -> None:
    """Close our handles of ``links`` without detaching the pinned ones: their pins hold them attached for the
    next agent (as after a kill). A link that was never pinned is detached."""
    for lk in links:
        lk.pin_path = None  # forget the pin, do not remove it
        lk.destroy()


def object_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def link_file(name: str) -> str:
    """A bpffs file name for an attach name (attach names may hold '/' and be long)."""
    quoted = urllib.parse.quote(name, safe="")
    if len(quoted) <= 200:
        return quoted
    return "h-" + hashlib.sha256(name.encode()).hexdigest()[:40]


class PinSet:
    def __init__(self, root: Path, identity: dict[str, Any]) -> None:
        self.root = root
        self.identity = identity
        self.manifest_map: Map | None = None
        self.adopted = False
        self.discarded = ""  # why pins found at open() were removed instead of adopted

    def open(self) -> dict[str, Any] | None:
        """The manifest of pins an earlier agent left, if they can be adopted; otherwise None, and whatever
        was there is removed."""
        if not self.root.exists():
            return None
        try:
            m = Map.from_pin(str(self.root / MANIFEST))
        except BpfError:
            self.discarded = f"{self.root}: no manifest (left by an interrupted start): removed"
            remove_pin_tree(self.root)
            return None
        data = read_manifest(m)
        if data is None or data.get("identity") != self.identity:
            m.close()
            self.discarded = f"{self.root}: pinned for another BPF object or configuration: replaced"
            remove_pin_tree(self.root)
            return None
        self.manifest_map = m
        self.adopted = True
        return data

    def create(self) -> None:
        """A fresh, empty pin directory with its manifest map (written by ``write``)."""
        remove_pin_tree(self.root)
        os.makedirs(self.root / "links", mode=0o700, exist_ok=True)
        m = Map.create(BPF_MAP_TYPE_ARRAY, "apiary_manifest", 4, MANIFEST_BYTES, 1)
        m.pin(str(self.root / MANIFEST))
        self.manifest_map = m

    def write(self, state: dict[str, Any]) -> None:
        assert self.manifest_map is not None
        write_manifest(self.manifest_map, {"identity": self.identity} | state)

    def map_path(self, name: str) -> str:
        return str(self.root / name)

    def pinned_map(self, name: str) -> Map:
        return Map.from_pin(self.map_path(name))

    def load(self, obj: BpfObject, names: Iterable[str], adopt: bool) -> None:
        """Load ``obj``: with the maps ``names`` taken from these pins when adopting, else pinned here after."""
        pinned: list[Map] = []
        try:
            if adopt:
                for n in names:
                    pinned.append(self.pinned_map(n))
                    obj.reuse_map(n, pinned[-1].fd)
            obj.load()
        finally:
            for pm in pinned:
                pm.close()
        if not adopt:
            for n in names:
                obj.map(n).pin(self.map_path(n))

    def link_path(self, name: str) -> str:
        return str(self.root / "links" / link_file(name))

    def adopt_link(self, name: str, target: str) -> PinnedLink | None:
        path = self.link_path(name)
        if not os.path.exists(path):
            return None
        try:
            return PinnedLink.open(path, target)
        except BpfError:
            os.unlink(path)
            return None

    def link_names(self) -> set[str]:
        d = self.root / "links"
        return set(os.listdir(d)) if d.is_dir() else set()

    def close(self) -> None:
        if self.manifest_map is not None:
            self.manifest_map.close()
            self.manifest_map = None

    def remove(self) -> None:
        self.close()
        remove_pin_tree(self.root)

    def release(self, keep: bool) -> None:
        """The sensor's close: ``keep`` leaves the pins for the next agent (as a kill does), else they go."""
        if keep:
            self.close()
        else:
            self.remove()


def read_manifest(m: Map) -> dict[str, Any] | None:
    raw = m.lookup(b"\0" * 4) or b""
    try:
        data = json.loads(raw.rstrip(b"\0") or b"null")
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def write_manifest(m: Map, data: dict[str, Any]) -> None:
    raw = json.dumps(data, separators=(",", ":")).encode()
    if len(raw) > MANIFEST_BYTES:
        raise BpfError(f"pin manifest (map {m.name})", 28, f"{len(raw)} bytes, room for {MANIFEST_BYTES}")
    m.update(b"\0" * 4, raw.ljust(MANIFEST_BYTES, b"\0"))
