"""Numeric security identities: reserved ones, label-set identities (stable across restarts), CIDR
identities in the local scope, and the ipcache (IPv4 prefix -> identity, longest prefix wins)."""

from __future__ import annotations

import bisect
import ipaddress
import json
from collections.abc import Iterable, Mapping
from ipaddress import IPv4Network

from apiary.store import Store

from .selectors import CLUSTER_KEY, CLUSTER_NAME, NAMESPACE_KEY
from .types import (
    ID_HEALTH,
    ID_HOST,
    ID_INGRESS,
    ID_INIT,
    ID_KUBE_APISERVER,
    ID_REMOTE_NODE,
    ID_UNMANAGED,
    ID_WORLD,
    LOCAL_SCOPE,
    MIN_CLUSTER_IDENTITY,
)

MAX_CLUSTER_IDENTITY = 0xFFFF  # cluster 0 allocates 256..65535
MAX_LOCAL_IDENTITY = LOCAL_SCOPE + 0xFFFFFF

RESERVED_IDENTITIES: dict[int, tuple[str, ...]] = {
    ID_HOST: ("reserved:host",),
    ID_WORLD: ("reserved:world",),
    ID_UNMANAGED: ("reserved:unmanaged",),
    ID_HEALTH: ("reserved:health",),
    ID_INIT: ("reserved:init",),
    ID_REMOTE_NODE: ("reserved:remote-node",),
    ID_KUBE_APISERVER: ("reserved:kube-apiserver", "reserved:remote-node"),
    ID_INGRESS: ("reserved:ingress",),
}
_RESERVED_BY_LABELS = {labels: ident for ident, labels in RESERVED_IDENTITIES.items()}


def endpoint_labels(labels: Mapping[str, str], namespace: str) -> tuple[str, ...]:
    """The identity label set of an endpoint: its labels as ``k8s:key=value`` plus namespace and cluster."""
    out = {f"k8s:{k}={v}" for k, v in labels.items()}
    out |= {f"k8s:{NAMESPACE_KEY}={namespace}", f"k8s:{CLUSTER_KEY}={CLUSTER_NAME}"}
    return tuple(sorted(out))


def cidr_labels(prefix: IPv4Network) -> tuple[str, ...]:
    return (f"cidr:{prefix}", "reserved:world")


STATE_KEY = "identities.json"  # the key of the table in the agent's state store


class IdentityAllocator:
    """Label set -> numeric identity. Identities for label sets with a ``cidr:`` label are allocated in
    the local scope (LOCAL_SCOPE + n), others from 256. With a ``store`` the table is persisted (JSON under
    ``key``, the agent's state store writes it atomically and durably) so numbers survive restarts.

    Allocation only changes memory; :meth:`flush` writes the table once (the agent flushes once per
    compile, before the datapath uses the numbers), and :meth:`retain` releases every identity that the
    committed state no longer references (an endpoint's label set once no endpoint has it, a CIDR's once
    no policy names it), as Cilium's reference counts do. A released number is not handed out again
    until the counter reaches the end of its scope; then the lowest free number is reused."""

    def __init__(self, store: Store | None = None, key: str = STATE_KEY) -> None:
        self.store, self.key = store, key
        self._by_labels: dict[tuple[str, ...], int] = {}
        self._next_global = MIN_CLUSTER_IDENTITY
        self._next_local = LOCAL_SCOPE + 1
        self._dirty = False
        if store is not None:
            self._load(store)

    def _load(self, store: Store) -> None:
        try:
            raw = store.get(self.key)
            if raw is None:
                return
            state = json.loads(raw)
            self._next_global = int(state["next_global"])
            self._next_local = int(state["next_local"])
            self._by_labels = {tuple(e["labels"]): int(e["id"]) for e in state["identities"]}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise RuntimeError(f"identity state {self.key} is unreadable ({e}); refusing to renumber identities") from e

    def flush(self) -> None:
        """Persist the table if it changed since the last flush."""
        if self._dirty:
            self._save()
            self._dirty = False

    def _save(self) -> None:
        if self.store is None:
            return
        state = {
            "next_global": self._next_global,
            "next_local": self._next_local,
            "identities": [{"id": i, "labels": list(lbls)} for lbls, i in sorted(self._by_labels.items(),
                                                                                key=lambda kv: kv[1])],
        }
        self.store.put(self.key, json.dumps(state, indent=1).encode())

    def allocate(self, labels: Iterable[str]) -> int:
        key = tuple(sorted(set(labels)))
        if key in _RESERVED_BY_LABELS:
            return _RESERVED_BY_LABELS[key]
        if key in self._by_labels:
            return self._by_labels[key]
        if any(lbl.startswith("cidr:") for lbl in key):
            if self._next_local <= MAX_LOCAL_IDENTITY:
                ident, self._next_local = self._next_local, self._next_local + 1
            else:
                ident = self._lowest_free(LOCAL_SCOPE + 1, MAX_LOCAL_IDENTITY, "local")
        elif self._next_global <= MAX_CLUSTER_IDENTITY:
            ident, self._next_global = self._next_global, self._next_global + 1
        else:
            ident = self._lowest_free(MIN_CLUSTER_IDENTITY, MAX_CLUSTER_IDENTITY, "cluster")
        self._by_labels[key] = ident
        self._dirty = True
        return ident

    def _lowest_free(self, low: int, high: int, scope: str) -> int:
        used = {i for i in self._by_labels.values() if low <= i <= high}
        for i in range(low, high + 1):
            if i not in used:
                return i
        raise RuntimeError(f"{scope} identity space exhausted ({low}..{high})")

    def allocate_cidr(self, prefix: IPv4Network) -> int:
        return self.allocate(cidr_labels(prefix))

    def lookup(self, labels: Iterable[str]) -> int | None:
        key = tuple(sorted(set(labels)))
        return _RESERVED_BY_LABELS.get(key, self._by_labels.get(key))

    def release(self, identity: int) -> None:
        self.retain(i for i in self._by_labels.values() if i != identity)

    def retain(self, in_use: Iterable[int]) -> list[int]:
        """Release every allocated identity not in ``in_use``, then flush. Returns the released ones."""
        keep = set(in_use)
        released = [i for i in self._by_labels.values() if i not in keep]
        if released:
            gone = set(released)
            self._by_labels = {k: i for k, i in self._by_labels.items() if i not in gone}
            self._dirty = True
        self.flush()
        return sorted(released)

    def count(self) -> int:
        """How many identities are allocated (reserved ones not counted)."""
        return len(self._by_labels)

    def identities(self) -> dict[int, tuple[str, ...]]:
        """Every identity this allocator knows, reserved ones included."""
        return {**RESERVED_IDENTITIES, **{i: lbls for lbls, i in self._by_labels.items()}}


class CidrIndex:
    """The CIDR identities sorted by network address, so that the prefixes inside a network are found by
    bisection instead of by testing every one (a policy naming thousands of CIDRs selects in n log n)."""

    def __init__(self, cidr_ids: Mapping[IPv4Network, int]) -> None:
        rows = sorted((int(p.network_address), p.prefixlen, i) for p, i in cidr_ids.items())
        self._starts = [r[0] for r in rows]
        self._rows = rows

    def inside(self, net: IPv4Network) -> Iterable[tuple[int, int, int]]:
        """(network address, prefix length, identity) of every prefix that is a subnet of ``net``."""
        lo = bisect.bisect_left(self._starts, int(net.network_address))
        hi = bisect.bisect_right(self._starts, int(net.broadcast_address))
        return (r for r in self._rows[lo:hi] if r[1] >= net.prefixlen)


def _within(start: int, plen: int, net: IPv4Network) -> bool:
    shift = 32 - net.prefixlen
    return plen >= net.prefixlen and start >> shift == int(net.network_address) >> shift


def cidr_selection(net: IPv4Network, excepts: Iterable[IPv4Network],
                   cidr_ids: Mapping[IPv4Network, int] | CidrIndex) -> set[int]:
    """Identities a CIDR rule selects: every CIDR identity whose prefix lies inside ``net`` and not inside
    an except; ``0.0.0.0/0`` also selects world. Endpoints and the host have /32 ipcache entries, so a
    CIDR rule never matches them (longest prefix wins)."""
    excepts = list(excepts)
    index = cidr_ids if isinstance(cidr_ids, CidrIndex) else CidrIndex(cidr_ids)
    out = {ID_WORLD} if net.prefixlen == 0 else set()
    for start, plen, ident in index.inside(net):
        if not any(_within(start, plen, e) for e in excepts):
            out.add(ident)
    return out


def build_ipcache(endpoint_ips: Mapping[str, int], host_ips: Iterable[str],
                  cidr_ids: Mapping[IPv4Network, int]) -> dict[str, int]:
    """prefix -> identity: 0.0.0.0/0 world, referenced CIDRs, host addresses (1) and endpoints (/32)."""
    cache = {"0.0.0.0/0": ID_WORLD}
    cache.update({str(p): i for p, i in cidr_ids.items() if p.prefixlen})
    cache.update({f"{ipaddress.IPv4Address(ip)}/32": ID_HOST for ip in host_ips})
    cache.update({f"{ipaddress.IPv4Address(ip)}/32": i for ip, i in endpoint_ips.items()})
    return cache


def resolve(ipcache: Mapping[str, int], ip: str) -> int:
    """The identity of an IPv4 address by longest-prefix match over the ipcache."""
    addr = ipaddress.IPv4Address(ip)
    for plen in range(32, -1, -1):
        ident = ipcache.get(f"{IPv4Network((int(addr) >> (32 - plen) << (32 - plen), plen))}")
        if ident is not None:
            return ident
    return ID_WORLD
