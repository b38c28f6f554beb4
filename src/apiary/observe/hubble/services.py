"""Which service an address belongs to, for a flow's ``source_service`` / ``destination_service``.

Hubble's L3/L4 parser asks its service getter about each end of a flow, ``(IP, port)``, and fills
``flow.Service{name, namespace}`` when that is a service frontend (``GetServiceByAddr``: the frontend
table, TCP first then UDP). apiary asks the same question through :class:`ServiceLookup`, with the flow's
L4 protocol. apiary balances local sockets at ``connect()`` (socket LB), so packets on the wire already
carry the backend's address and a frontend-only look-up would almost never match; :class:`ServiceTable`
therefore also answers for a backend ``ip:port/proto`` (see docs/flows.md, "Services").

This module does not import the agent or :mod:`apiary.services` (import-linter layers): the agent hands
:meth:`ServiceTable.update` its frontends, any objects of the :class:`FrontendLike` shape
(``apiary.services.backends.Frontend`` is one).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

WILDCARD = "0.0.0.0"  # a NodePort frontend: every host address (Cilium's wildcard frontend)

ServiceKey = tuple[str, int, str]  # (address, port, protocol)
ServiceName = tuple[str, str]  # (namespace, name)


@runtime_checkable
class ServiceLookup(Protocol):
    """What :class:`~apiary.observe.hubble.builder.FlowBuilder` asks about each end of a TCP/UDP/SCTP flow.

    ``protocol`` is ``TCP``, ``UDP`` or ``SCTP``. Returns ``(namespace, name)`` or None. Must be cheap,
    must not block and should not raise (an exception is treated as "no service")."""

    def service_of(self, ip: str, port: int, protocol: str) -> ServiceName | None: ...


class BackendLike(Protocol):
    """An address:port/protocol (a backend; a frontend is one too)."""

    @property
    def address(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def protocol(self) -> str: ...


class FrontendLike(BackendLike, Protocol):
    """One frontend (VIP:port/proto) of a service and its backends."""

    @property
    def service(self) -> str: ...  # "namespace/name"

    @property
    def backends(self) -> Sequence[BackendLike]: ...


@functools.lru_cache(maxsize=1 << 16)  # the table is rebuilt on every service change: parse each address once
def _addr(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError(f"invalid service address {text!r}") from None


@functools.lru_cache(maxsize=1 << 16)
def split_service(text: str) -> ServiceName:
    """``namespace/name`` -> (namespace, name); a bare name is in ``default`` (as Kubernetes)."""
    ns, sep, name = text.partition("/")
    if not sep:
        ns, name = "default", ns
    if not name or "/" in name:
        raise ValueError(f"invalid service name {text!r}: must be namespace/name")
    return ns, name


class ServiceTable:
    """A :class:`ServiceLookup` over the agent's frontends.

    ``service_of(ip, port, proto)`` answers, in this order: a frontend with exactly that address, a wildcard
    (``0.0.0.0``, NodePort) frontend on that port, then (``match_backends``) a backend with that address and
    port. A backend shared by several services answers with the first by ``(namespace, name)``.

    :meth:`update` replaces the whole table at once (a new index is built, then swapped in), so flows being
    built on another thread see either the old or the new table, never a half of each.
    """

    __slots__ = ("match_backends", "_index", "_count")

    def __init__(self, frontends: Iterable[FrontendLike] = (), *, match_backends: bool = True) -> None:
        self.match_backends = match_backends
        self._index: tuple[dict[ServiceKey, ServiceName], dict[tuple[int, str], ServiceName]] = ({}, {})
        self._count = 0
        self.update(frontends)

    def update(self, frontends: Iterable[FrontendLike]) -> None:
        """Replace the table with these frontends. ``ValueError`` (and the old table kept) on a bad entry."""
        fronts: dict[ServiceKey, ServiceName] = {}
        wild: dict[tuple[int, str], ServiceName] = {}
        backs: dict[ServiceKey, ServiceName] = {}
        for fe in frontends:
            name = split_service(fe.service)
            addr, port, proto = _addr(fe.address), int(fe.port), fe.protocol.upper()
            if addr == WILDCARD:
                wild.setdefault((port, proto), name)
            else:
                fronts.setdefault((addr, port, proto), name)
            for be in fe.backends:
                key = (_addr(be.address), int(be.port), be.protocol.upper())
                if key not in backs or name < backs[key]:
                    backs[key] = name
        # one dict for the exact look-up: frontends win over backends; a wildcard frontend wins over a
        # backend on the same port too, so those backends are left out of the exact dict
        exact = {k: v for k, v in backs.items() if (k[1], k[2]) not in wild} if self.match_backends else {}
        exact.update(fronts)
        self._index = (exact, wild)
        self._count = len(fronts) + len(wild)

    def clear(self) -> None:
        self._index = ({}, {})
        self._count = 0

    def __len__(self) -> int:
        """The number of frontends."""
        return self._count

    def service_of(self, ip: str, port: int, protocol: str) -> ServiceName | None:
        exact, wild = self._index
        found = exact.get((ip, port, protocol))
        if found is None and wild:
            found = wild.get((port, protocol))
        return found
