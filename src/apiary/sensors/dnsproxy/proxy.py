"""The agent's transparent DNS proxy (Cilium's lives in the agent too), built on dnspython.

The datapath redirects an endpoint's DNS packets (UDP and TCP to the ports its ``rules.dns`` entries name) to
this proxy with ``bpf_sk_assign``; the packets keep their original destination, which the proxy reads
(``IP_ORIGDSTADDR`` for UDP, the accepted socket's own address for TCP). Each query is judged: an allowed
name is forwarded to the resolver the endpoint asked, and its answer is released only after ``learn`` (the
agent writing the learned IPs into the policy maps) has finished, so the endpoint's first packet to such an
IP already finds its entry; a refused name gets the reject response code (REFUSED by default, as Cilium's
``--tofqdns-dns-reject-response-code``). Answers go back from the original destination's address and port
(a transparent socket bound there), so the client's resolver accepts them.

UDP, the common case, is answered from readiness callbacks, with no task, future or timer per query: a query
waiting for its resolver is an entry of ``pending`` (keyed by upstream socket, resolver and query ID) that the
resolver's answer or one periodic sweep (the timeout: SERVFAIL) takes out. Messages are parsed with dnspython
once per distinct content (the same query from many clients, the same answer to many queries, differ only in
their ID) and what the proxy reads of them is kept with the parse; the resolver's answer goes back to the
client as the resolver sent it, but for the ID.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import Generic, TypeVar

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from apiary.observe.hubble.l7 import DnsExchange

IP_TRANSPARENT = 19
IP_RECVORIGDSTADDR = 20  # also the cmsg type of IP_ORIGDSTADDR
REJECT_CODES = {"refused": dns.rcode.REFUSED, "nameError": dns.rcode.NXDOMAIN}
SWEEP_S = 0.2  # how often waiting queries are checked for their timeout


# (client, server, port, transport, name) -> (allowed, the rule that decided, as a flow's decided_by says it)
Judge = Callable[[str, str, int, str, str], tuple[bool, str]]
# an allowed answer's IPs into the policy maps: None when they are there already (released at once), else a
# future that is done once they are (or failed: the client gets SERVFAIL)
Learn = Callable[[DnsExchange], "asyncio.Future[None] | None"]


class _Query:
    """What the proxy reads of a query (its parse, kept by :class:`_Parsed`)."""

    __slots__ = ("msg", "name", "qtypes", "qkey", "rejected")

    def __init__(self, msg: dns.message.Message) -> None:
        self.msg = msg
        q = self.msg.question
        self.name = q[0].name.to_text().lower() if q else ""
        self.qtypes = tuple(dns.rdatatype.to_text(r.rdtype) for r in q)
        self.qkey = _question_key(self.msg)
        self.rejected: dict[dns.rcode.Rcode, bytes] = {}  # rcode -> the response after its ID

    def response(self, rcode: dns.rcode.Rcode) -> bytes:
        """A response with ``rcode`` to this query, after the ID (the sender's ID goes first)."""
        wire = self.rejected.get(rcode)
        if wire is None:
            resp = dns.message.make_response(self.msg)
            resp.set_rcode(rcode)
            wire = self.rejected[rcode] = resp.to_wire()[2:]
        return wire


class _Answer:
    """What the proxy reads of a resolver's answer: rcode, addresses, smallest address TTL, CNAME targets and
    record types (kept by :class:`_Parsed`)."""

    __slots__ = ("is_response", "qkey", "rcode", "ips", "cnames", "rrtypes", "ttl")

    def __init__(self, r: dns.message.Message) -> None:
        self.is_response = bool(r.flags & dns.flags.QR)
        self.qkey = _question_key(r)
        self.rcode = r.rcode()
        ips: list[str] = []
        cnames: list[str] = []
        rrtypes: list[str] = []
        ttl: int | None = None
        for rrset in r.answer:
            t = dns.rdatatype.to_text(rrset.rdtype)
            if t not in rrtypes:
                rrtypes.append(t)
            if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                ips += [rd.to_text() for rd in rrset]
                ttl = rrset.ttl if ttl is None else min(ttl, rrset.ttl)
            elif rrset.rdtype == dns.rdatatype.CNAME:
                cnames += [rd.to_text().lower() for rd in rrset]
        self.ips, self.cnames, self.rrtypes = tuple(dict.fromkeys(ips)), tuple(cnames), tuple(rrtypes)
        self.ttl = ttl or 0

    def fill(self, x: DnsExchange) -> None:
        x.rcode, x.ips, x.cnames, x.rrtypes, x.ttl = self.rcode, self.ips, self.cnames, self.rrtypes, self.ttl


def _question_key(m: dns.message.Message) -> tuple[tuple[bytes, int, int], ...]:
    """The question section as dnspython compares it (names case-insensitively)."""
    return tuple((rr.name.canonicalize().to_wire() or b"", rr.rdtype, rr.rdclass) for rr in m.question)


P = TypeVar("P", _Query, _Answer)


class _Parsed(Generic[P]):
    """Messages parsed by dnspython, remembered by their bytes after the ID (the same query from many clients,
    the same answer to many queries, differ only there), with what the proxy reads of them. Callers read them
    and never change them."""

    SIZE = 1024

    def __init__(self, kind: Callable[[dns.message.Message], P]) -> None:
        self.kind: Callable[[dns.message.Message], P] = kind
        self.seen: dict[bytes, P] = {}

    def parse(self, wire: bytes) -> P:
        key = wire[2:]
        m = self.seen.get(key)
        if m is None:
            m = self.kind(dns.message.from_wire(wire))  # raises on malformed: nothing is remembered then
            if len(self.seen) >= self.SIZE:
                self.seen.clear()
            self.seen[key] = m
        return m


class _Pending:
    """A UDP query forwarded to its resolver, waiting for the answer (or its deadline)."""

    __slots__ = ("x", "query", "data", "client", "orig", "deadline")

    def __init__(self, x: DnsExchange, query: _Query, data: bytes, client: tuple[str, int], orig: tuple[str, int],
                 deadline: float) -> None:
        self.x, self.query, self.data, self.client, self.orig, self.deadline = x, query, data, client, orig, deadline


class DnsProxy:
    SOCKETS = 8  # upstream UDP sockets (random source ports), shared by every query

    def __init__(self, judge: Judge, learn: Learn, on_exchange: Callable[[DnsExchange], None], *,
                 reject: str = "refused", timeout: float = 5.0) -> None:
        if reject not in REJECT_CODES:
            raise ValueError(f"reject response code must be one of {', '.join(REJECT_CODES)}, not {reject!r}")
        self.judge, self.learn, self.on_exchange = judge, learn, on_exchange
        self.reject_rcode = REJECT_CODES[reject]
        self.timeout = timeout
        self.port = 0
        self.udp: socket.socket | None = None
        self._tcp_sock: socket.socket | None = None
        self.tcp: asyncio.base_events.Server | None = None
        self._queries: _Parsed[_Query] = _Parsed(_Query)
        self._answers: _Parsed[_Answer] = _Parsed(_Answer)
        self._reply_socks: dict[tuple[str, int], socket.socket] = {}  # transparent, bound to an original address
        self._origs: dict[bytes, tuple[str, int]] = {}  # IP_ORIGDSTADDR's bytes -> (address, port)
        # UDP queries at their resolvers, by (upstream socket, resolver, query ID); oldest first
        self.upstream: list[socket.socket] = []
        self.pending: dict[tuple[int, tuple[str, int], int], _Pending] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self._random = b""  # query IDs and upstream sockets come from here (os.urandom, read in blocks)
        self._random_at = 0
        self._done: list[DnsExchange] = []  # answered: their flows go out right after (one callback per batch)
        self.counters = {"queries": 0, "allowed": 0, "refused": 0, "upstream_errors": 0, "bad_queries": 0,
                         "learn_errors": 0, "reply_errors": 0, "stray_answers": 0}

    # ------------------------------------------------------------------ lifecycle
    def bind(self) -> None:
        """Bind 127.0.0.1, UDP and TCP on one free port (both transparent); :meth:`serve` answers on them."""
        last: OSError | None = None
        for _ in range(20):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                for s in (udp, tcp):
                    s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
                udp.setsockopt(socket.SOL_IP, IP_RECVORIGDSTADDR, 1)
                udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
                udp.bind(("127.0.0.1", 0))
                port = udp.getsockname()[1]
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                tcp.bind(("127.0.0.1", port))
                tcp.listen(1024)
            except OSError as e:
                udp.close()
                tcp.close()
                last = e
                continue
            break
        else:
            raise OSError(f"the DNS proxy found no free port: {last}")
        self.adopt(udp, tcp)

    def adopt(self, udp: socket.socket, tcp: socket.socket) -> None:
        """Answer on sockets bound earlier (by :meth:`bind`, maybe of an agent before this one: see holder.py);
        what is queued on them is answered once :meth:`serve` runs."""
        udp.setblocking(False)
        tcp.setblocking(False)
        self.udp, self._tcp_sock, self.port = udp, tcp, udp.getsockname()[1]

    async def serve(self) -> None:
        """Answer from the running event loop (queries that came meanwhile wait in the sockets' queues)."""
        if self.udp is None:
            self.bind()
        assert self.udp is not None and self._tcp_sock is not None
        loop = asyncio.get_running_loop()
        for i in range(self.SOCKETS):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setblocking(False)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            s.bind(("0.0.0.0", 0))
            self.upstream.append(s)
            loop.add_reader(s.fileno(), self._on_upstream, i)
        loop.add_reader(self.udp.fileno(), self._on_udp)
        self.tcp = await asyncio.start_server(self._on_tcp, sock=self._tcp_sock)

    def close(self) -> None:
        if self.udp is not None:
            with contextlib.suppress(RuntimeError, ValueError):
                asyncio.get_running_loop().remove_reader(self.udp.fileno())
            self.udp.close()
            self.udp = None
        if self.tcp is not None:
            self.tcp.close()
            self.tcp = None
        elif self._tcp_sock is not None:
            self._tcp_sock.close()
        self._tcp_sock = None
        for s in self.upstream:
            with contextlib.suppress(RuntimeError, ValueError):
                asyncio.get_running_loop().remove_reader(s.fileno())
            s.close()
        self.upstream = []
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self.pending.clear()  # no socket to answer them from any more: their clients time out and ask again
        for rs in self._reply_socks.values():
            rs.close()
        self._reply_socks.clear()

    def status(self) -> dict[str, object]:
        return {"port": self.port, **self.counters, "waiting": len(self.pending)}

    # ------------------------------------------------------------------ UDP
    def _on_udp(self) -> None:
        """Queries from endpoints: as many as are queued (up to a bound, so answers get their turn)."""
        udp = self.udp
        assert udp is not None
        recvmsg, space = udp.recvmsg, socket.CMSG_SPACE(16)
        for _ in range(256):
            try:
                data, anc, _flags, client = recvmsg(65535, space)
            except OSError:  # BlockingIOError: nothing more queued
                break
            orig = self._destination(anc)
            if orig is None:  # not redirected (someone sent to 127.0.0.1:port directly)
                self.counters["bad_queries"] += 1
                continue
            self._udp_query(data, client, orig)
        self._flush()

    def _destination(self, ancdata: list[tuple[int, int, bytes]]) -> tuple[str, int] | None:
        """The query's original destination (:func:`_orig_dst`), remembered by the control message's bytes."""
        for level, kind, data in ancdata:
            if level == socket.SOL_IP and kind == IP_RECVORIGDSTADDR:
                orig = self._origs.get(data)
                if orig is None:
                    orig = _orig_dst(ancdata)
                    if orig is None:
                        return None
                    if len(self._origs) >= 1024:
                        self._origs.clear()
                    self._origs[data] = orig
                return orig
        return None

    def _udp_query(self, data: bytes, client: tuple[str, int], orig: tuple[str, int]) -> None:
        got = self._judged(data, client, orig, "UDP")
        if got is None:
            return
        x, q = got
        if not x.allowed:
            self._reply(orig, client, data[:2] + q.response(self.reject_rcode))
            return
        upstream = self.upstream
        if not upstream:  # not serving (closed): as a resolver that does not answer
            self._upstream_failed(x, q, data, client, orig, "OSError: the DNS proxy is not serving")
            return
        for _ in range(16):  # a random ID (and socket) of its own; the client's goes back on the answer
            r = self._randint()
            qid, i = r & 0xFFFF, (r >> 16) % len(upstream)
            key = (i, orig, qid)
            if key not in self.pending:
                break
        else:
            self._upstream_failed(x, q, data, client, orig, "DNSException: no free query ID towards the resolver")
            return
        try:
            upstream[i].sendto(struct.pack("!H", qid) + data[2:], orig)
        except OSError as e:
            self._upstream_failed(x, q, data, client, orig, f"{type(e).__name__}: {e}".rstrip(": "))
            return
        self.pending[key] = _Pending(x, q, data, client, orig, time.monotonic() + self.timeout)
        if self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_later(SWEEP_S, self._expire)

    def _randint(self) -> int:
        """24 random bits (a query ID and an upstream socket); os.urandom is read 4 KiB at a time."""
        at = self._random_at
        if at + 3 > len(self._random):
            self._random, at = os.urandom(4096), 0
        self._random_at = at + 3
        return int.from_bytes(self._random[at:at + 3], "big")

    def _on_upstream(self, i: int) -> None:
        """Answers from resolvers on upstream socket ``i``: each matched by resolver, ID and question."""
        recvfrom = self.upstream[i].recvfrom
        pending, counters = self.pending, self.counters
        for _ in range(256):
            try:
                wire, addr = recvfrom(65535)
            except OSError:  # BlockingIOError: nothing more queued
                break
            key = (i, addr, int.from_bytes(wire[:2], "big"))
            p = pending.get(key) if len(wire) >= 12 else None
            if p is None:  # late, spoofed or malformed: dropped, counted
                counters["stray_answers"] += 1
                continue
            try:
                a = self._answers.parse(wire)
            except Exception:  # noqa: BLE001 - bytes from the network: whatever dnspython raises on them, counted
                counters["stray_answers"] += 1
                continue
            if not a.is_response or a.qkey != p.query.qkey:
                counters["stray_answers"] += 1
                continue
            del pending[key]
            x = p.x
            a.fill(x)
            x.latency_ns = time.time_ns() - x.time_ns
            self._learned(x, p.query, p.data, p.client, p.orig, p.data[:2] + wire[2:])
        self._flush()

    def _learned(self, x: DnsExchange, q: _Query, data: bytes, client: tuple[str, int], orig: tuple[str, int],
                 wire: bytes) -> None:
        """Release ``wire`` (the answer) once its IPs are in the policy maps."""
        try:
            fut = self.learn(x)
        except Exception as e:  # noqa: BLE001 - any failure: the client must not get IPs it cannot reach
            self._learn_failed(x, q, data, client, orig, e)
            return
        if fut is None:
            self._reply(orig, client, wire)
            self._done.append(x)
            return

        def release(f: asyncio.Future[None]) -> None:
            e = f.exception() if not f.cancelled() else asyncio.CancelledError()
            if e is not None:
                self._learn_failed(x, q, data, client, orig, e)
                return
            self._reply(orig, client, wire)
            self._done.append(x)
            self._flush()

        fut.add_done_callback(release)

    def _learn_failed(self, x: DnsExchange, q: _Query, data: bytes, client: tuple[str, int], orig: tuple[str, int],
                      e: BaseException) -> None:
        self.counters["learn_errors"] += 1
        x.error = f"policy update failed: {e}"
        self._reply(orig, client, self._servfail(x, q, data))

    def _upstream_failed(self, x: DnsExchange, q: _Query, data: bytes, client: tuple[str, int],
                         orig: tuple[str, int], error: str) -> None:
        self.counters["upstream_errors"] += 1
        x.error = error
        self._reply(orig, client, self._servfail(x, q, data))

    def _expire(self) -> None:
        """The periodic sweep: queries whose resolver did not answer in time get SERVFAIL."""
        self._sweep = None
        now, pending = time.monotonic(), self.pending
        while pending:
            key, p = next(iter(pending.items()))  # oldest first: every query has the same timeout
            if p.deadline > now:
                break
            del pending[key]
            e = dns.exception.Timeout()
            self._upstream_failed(p.x, p.query, p.data, p.client, p.orig, f"{type(e).__name__}: {e}".rstrip(": "))
        if pending and self.upstream:
            self._sweep = asyncio.get_running_loop().call_later(SWEEP_S, self._expire)

    def _reply(self, orig: tuple[str, int], client: tuple[str, int], wire: bytes) -> None:
        """From the address and port the client asked (one transparent socket per such address, kept)."""
        try:
            s = self._reply_socks.get(orig)
            if s is None:
                if len(self._reply_socks) >= 256:
                    self._reply_socks.pop(next(iter(self._reply_socks))).close()
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                try:
                    s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind(orig)
                    s.setblocking(False)
                except OSError:
                    s.close()
                    raise
                self._reply_socks[orig] = s
            s.sendto(wire, client)
        except OSError:
            self.counters["reply_errors"] += 1

    def _flush(self) -> None:
        """The flows of the answers just sent (after the sends: the answers first)."""
        if self._done:
            done, self._done = self._done, []
            for x in done:
                self.on_exchange(x)

    # ------------------------------------------------------------------ TCP
    async def _on_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = writer.get_extra_info("peername")
        orig = writer.get_extra_info("sockname")  # a transparently accepted socket: the original destination
        try:
            while True:
                try:
                    size = struct.unpack("!H", await reader.readexactly(2))[0]
                    data = await reader.readexactly(size)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                wire = await self._tcp_answer(data, client, orig)
                if wire is None:
                    return
                writer.write(struct.pack("!H", len(wire)) + wire)
                await writer.drain()
        finally:
            writer.close()

    async def _tcp_answer(self, data: bytes, client: tuple[str, int], orig: tuple[str, int]) -> bytes | None:
        """The answer to send back (None: nothing to answer, e.g. not a DNS query)."""
        got = self._judged(data, client, orig, "TCP")
        if got is None:
            return None
        x, q = got
        if not x.allowed:
            return data[:2] + q.response(self.reject_rcode)
        try:
            r = await dns.asyncquery.tcp(q.msg, orig[0], timeout=self.timeout, port=orig[1])
            wire = data[:2] + r.to_wire()[2:]
            _Answer(r).fill(x)
        except (dns.exception.DNSException, OSError) as e:
            self.counters["upstream_errors"] += 1
            x.error = f"{type(e).__name__}: {e}".rstrip(": ")
            return self._servfail(x, q, data)
        x.latency_ns = time.time_ns() - x.time_ns
        try:
            fut = self.learn(x)
            if fut is not None:
                await fut  # the learned IPs are in the policy maps before the client sees them
        except Exception as e:  # noqa: BLE001 - any failure: the client must not get IPs it cannot reach
            self.counters["learn_errors"] += 1
            x.error = f"policy update failed: {e}"
            return self._servfail(x, q, data)
        asyncio.get_running_loop().call_soon(self.on_exchange, x)  # its flows right after the answer is sent
        return wire

    # ------------------------------------------------------------------ judging
    def _judged(self, data: bytes, client: tuple[str, int], orig: tuple[str, int],
                transport: str) -> tuple[DnsExchange, _Query] | None:
        """The query's exchange, judged (None: not a DNS query; counted). A refused one is counted and its flow
        is out; an allowed one is counted."""
        counters = self.counters
        counters["queries"] += 1
        start = time.time_ns()
        try:
            q = self._queries.parse(data)
        except Exception:  # noqa: BLE001 - bytes from the network: whatever dnspython raises on them, counted
            counters["bad_queries"] += 1
            return None
        if not q.qtypes:
            counters["bad_queries"] += 1
            return None
        allowed, decided = self.judge(client[0], orig[0], orig[1], transport, q.name)
        x = DnsExchange(client[0], client[1], orig[0], orig[1], transport, q.name, q.qtypes, allowed, decided, start)
        if allowed:
            counters["allowed"] += 1
        else:
            counters["refused"] += 1
            x.rcode = self.reject_rcode
            self.on_exchange(x)
        return x, q

    def _servfail(self, x: DnsExchange, q: _Query, data: bytes) -> bytes:
        x.rcode, x.latency_ns, x.ips = dns.rcode.SERVFAIL, time.time_ns() - x.time_ns, ()
        self.on_exchange(x)
        return data[:2] + q.response(dns.rcode.SERVFAIL)


def _orig_dst(ancdata: list[tuple[int, int, bytes]]) -> tuple[str, int] | None:
    """IP_ORIGDSTADDR: a struct sockaddr_in (family, port in network order, address)."""
    for level, kind, data in ancdata:
        if level == socket.SOL_IP and kind == IP_RECVORIGDSTADDR and len(data) >= 8:
            port = struct.unpack("!H", data[2:4])[0]
            return socket.inet_ntoa(data[4:8]), port
    return None
