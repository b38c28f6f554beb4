"""Hubble L7 HTTP flows from the proxy's access-log records, and DNS flows from the DNS proxy (pure).

A request the proxy let through gives two flows, as Cilium's proxy access log does: the REQUEST (verdict
FORWARDED) and the RESPONSE (its status, ``latency_ns`` as a string); a denied one gives the REQUEST with
verdict DROPPED (the client got 403 from the proxy). ``Type`` is ``L7`` and ``event_type.type`` 129
(MessageTypeAccessLog). Summaries are Hubble's: ``HTTP/1.1 GET http://host/path`` and
``HTTP/1.1 200 3ms (GET http://host/path)``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from apiary.policy.identity import resolve

MSG_ACCESS_LOG = 129


@dataclass(slots=True)
class HttpExchange:
    client: str
    client_port: int
    server: str
    server_port: int
    method: str
    url: str  # the full URL, http://host/path?query
    protocol: str  # HTTP/1.1
    headers: tuple[tuple[str, str], ...]
    status: int  # 0: no response (denied requests carry the proxy's 403)
    latency_ns: int
    time_ns: int
    allowed: bool
    ingress: bool  # the rule (or the filter that denied) is the server's ingress
    decided_by: str
    client_identity: int = 0
    server_identity: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def exchange(self) -> HttpExchange:
        """Itself (an :class:`ExchangeSource`)."""
        return self


class ExchangeSource(Protocol):
    """What the flows of one HTTP exchange are built from: the exchange, or what makes it when first read."""

    allowed: bool

    def exchange(self) -> HttpExchange: ...


class LoggedExchange:
    """One access-log record of the proxy and the verdict read from it, made into an :class:`HttpExchange` when
    its flows are first read (most never are: a proxy at full speed logs thousands a second). ``ipcache``: the
    compiled policy's, which is replaced whole on a change, never edited."""

    __slots__ = ("rec", "allowed", "ingress", "decided_by", "ipcache", "_x")

    def __init__(self, rec: Mapping[str, str] | bytes, allowed: bool, ingress: bool, decided_by: str,
                 ipcache: Mapping[str, int]) -> None:
        """``rec``: the record, or its JSON as logged (parsed only when the flows are first read)."""
        self.rec, self.allowed, self.ingress, self.decided_by, self.ipcache = rec, allowed, ingress, decided_by, ipcache
        self._x: HttpExchange | None = None

    def exchange(self) -> HttpExchange:
        if self._x is None:
            rec = self.rec if not isinstance(self.rec, bytes) else parse_record(self.rec)
            self._x = http_exchange(rec, self.allowed, self.ingress, self.decided_by, self.ipcache)
        return self._x


def _loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw.decode("utf-8", "replace"))


def parse_record(raw: bytes) -> Mapping[str, str]:
    """The JSON part of an access-log record. HAProxy's ``json(utf8s)`` writes valid JSON; orjson (~1 us a
    record against json's ~4) refuses invalid UTF-8, which json then reads with replacement characters. A line
    longer than HAProxy's log length is cut: its last field, the headers, is left out and the rest is read;
    a record nothing reads is an empty one (its flows keep the verdict, the rule and the time)."""
    try:
        got = _loads(raw)
    except ValueError:
        cut = raw.rfind(b',"headers":"')
        try:
            got = _loads(raw[:cut] + b"}") if cut > 0 else {}
        except ValueError:
            got = {}
    return got if isinstance(got, dict) else {}


# HAProxy's req.ver -> the protocol as Cilium names it (pkg/proxy/accesslog GetProtocol: "HTTP/1", "HTTP/1.1",
# "HTTP/2")
_PROTOCOLS = {"1.0": "HTTP/1", "1.1": "HTTP/1.1", "2.0": "HTTP/2", "2": "HTTP/2"}


def http_exchange(rec: Mapping[str, str], allowed: bool, ingress: bool, decided_by: str,
                  ipcache: Mapping[str, int]) -> HttpExchange:
    """The exchange of one access-log record (``sensors/l7proxy/config.py`` ``LOG_FORMAT``: every value a
    string, ``-`` when unset; a number HAProxy left unset reads 0); ``ipcache`` gives the two ends' identities."""
    version = unset(rec.get("version")) or "1.1"
    client, server = rec.get("client", ""), rec.get("server", "")
    return HttpExchange(
        client=client, client_port=_num(rec.get("cport")), server=server, server_port=_num(rec.get("sport")),
        method=unset(rec.get("method")), url=url_of(rec),
        protocol=_PROTOCOLS.get(version) or f"HTTP/{version}",
        headers=parse_headers(unset(rec.get("headers"))), status=_num(rec.get("status")),
        latency_ns=max(0, _num(rec.get("tr"))) * 1_000_000,
        time_ns=_num(rec.get("ts")) * 1_000_000_000 + _num(rec.get("ms")) * 1_000_000, allowed=allowed, ingress=ingress,
        decided_by=decided_by, client_identity=identity_of(ipcache, client),
        server_identity=identity_of(ipcache, server),
    )


def identity_of(ipcache: Mapping[str, int], ip: str) -> int:
    """An address's identity as the datapath gives it: an endpoint's (its /32, the common case), else the
    longest CIDR prefix the policies made an identity of, else world (a client on another host); 0 for a
    value that is no IPv4 address."""
    got = ipcache.get(f"{ip}/32")
    if got is not None:
        return got
    try:
        return resolve(ipcache, ip)
    except ValueError:
        return 0


def _num(v: str | None) -> int:
    try:
        return int(v or "")
    except ValueError:
        return 0


def parse_headers(raw: str) -> tuple[tuple[str, str], ...]:
    """HAProxy's ``req.hdrs`` (the header block, lines ended by CRLF) as (key, value) pairs."""
    out = []
    for line in raw.split("\r\n"):
        name, sep, value = line.partition(":")
        if sep and name:
            out.append((name.strip(), value.strip()))
    return tuple(out)


def url_of(rec: Mapping[str, str]) -> str:
    host = rec.get("host", "-")
    if host in ("", "-"):
        host = f"{rec.get('server', '')}:{rec.get('sport', '')}"
    uri = rec.get("url", "-")
    return f"http://{host}{'' if uri == '-' else uri}"


def unset(v: str | None) -> str:
    return "" if v in (None, "-") else v


def summary(x: HttpExchange, response: bool) -> str:
    if response:
        return f"{x.protocol} {x.status} {x.latency_ns // 1_000_000}ms ({x.method} {x.url})"
    return f"{x.protocol} {x.method} {x.url}"


def http_json(x: HttpExchange, response: bool) -> dict[str, Any]:
    d: dict[str, Any] = {}
    if (response or not x.allowed) and x.status:  # a denied request carries the 403 (Cilium logs it answered)
        d["code"] = x.status
    d["method"] = x.method
    d["url"] = x.url
    d["protocol"] = x.protocol
    if x.headers and not response:
        d["headers"] = [{"key": k, "value": v} for k, v in x.headers]
    return d


@dataclass(slots=True)
class DnsExchange:
    """One query through the DNS proxy and what became of it: a REQUEST flow, and a RESPONSE flow when the
    proxy answered from the resolver (a refused query is the REQUEST, verdict DROPPED, as for HTTP)."""

    client: str
    client_port: int
    server: str
    server_port: int
    transport: str  # "UDP" | "TCP"
    query: str  # the name asked, canonical (lower case, trailing dot)
    qtypes: tuple[str, ...]
    allowed: bool
    decided_by: str
    time_ns: int
    rcode: int = 0
    ips: tuple[str, ...] = ()
    ttl: int = 0  # the smallest TTL of the answer's A/AAAA records
    cnames: tuple[str, ...] = ()
    rrtypes: tuple[str, ...] = ()
    latency_ns: int = 0
    error: str = ""  # the resolver did not answer (the client got SERVFAIL)


# gopacket's DNSResponseCode names, which Hubble's summary prints ("RCode: Query Refused")
RCODE_NAMES = {0: "No Error", 1: "Format Error", 2: "Server Failure", 3: "Non-Existent Domain",
               4: "Not Implemented", 5: "Query Refused"}


def dns_summary(x: DnsExchange, response: bool) -> str:
    qtypes = ",".join(x.qtypes)
    if not response:
        return f"DNS Query {x.query} {qtypes}"
    if x.rcode:
        answer = f"RCode: {RCODE_NAMES.get(x.rcode, str(x.rcode))}"
    else:
        parts = [f'"{",".join(x.ips)}"'] if x.ips else []
        if x.cnames:
            parts.append(f'CNAMEs: "{",".join(x.cnames)}"')
        answer = " ".join(parts)
    return f"DNS Answer {answer} TTL: {x.ttl} (Proxy {x.query} {qtypes})"


def dns_json(x: DnsExchange, response: bool) -> dict[str, Any]:
    d: dict[str, Any] = {"query": x.query}
    if response:
        if x.ips:
            d["ips"] = list(x.ips)
        if x.ttl:
            d["ttl"] = x.ttl
        if x.cnames:
            d["cnames"] = list(x.cnames)
    d["observation_source"] = "proxy"
    if response and x.rcode:
        d["rcode"] = x.rcode
    d["qtypes"] = list(x.qtypes)
    if response and x.rrtypes:
        d["rrtypes"] = list(x.rrtypes)
    return d
