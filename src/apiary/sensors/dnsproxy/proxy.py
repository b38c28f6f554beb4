"""The agent's transparent DNS proxy (Cilium's lives in the agent too), built on dnspython.

The datapath redirects an endpoint's DNS packets (UDP and TCP to the ports its ``rules.dns`` entries name) to
this proxy with ``bpf_sk_assign``; the packets keep their original destination, which the proxy reads
(``IP_ORIGDSTADDR`` for UDP, the accepted socket's own address for TCP). Each query is judged: an allowed
name is forwarded to the resolver the endpoint asked, and its answer is released only after ``learn`` (the
agent writing the learned IPs into the policy maps) has finished, so the endpoint's first packet to such an
IP already finds its entry; a refused name gets the reject response code (REFUSED by default, as Cilium's
``--tofqdns-dns-reject-response-code``). Answers go back from the original destination's address and port
(a transparent socket bound there), so the client's resolver accepts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import struct
import time
from collections.abc import Awaitable, Callable

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


# (client, server, port, transport, name) -> (allowed, the rule that decided, as a flow's decided_by says it)
Judge = Callable[[str, str, int, str, str], tuple[bool, str]]
Learn = Callable[[DnsExchange], Awaitable[None]]


class DnsProxy:
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
        self.tasks: set[asyncio.Task[None]] = set()
        self.upstream = _UdpUpstream()
        self._queries = _Parsed()
        self._reply_socks: dict[tuple[str, int], socket.socket] = {}  # transparent, bound to an original address
        self.counters = {"queries": 0, "allowed": 0, "refused": 0, "upstream_errors": 0, "bad_queries": 0,
                         "learn_errors": 0, "reply_errors": 0}

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
        asyncio.get_running_loop().add_reader(self.udp.fileno(), self._on_udp)
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
        for t in self.tasks:
            t.cancel()
        self.upstream.close()
        for rs in self._reply_socks.values():
            rs.close()
        self._reply_socks.clear()

    def status(self) -> dict[str, object]:
        return {"port": self.port, **self.counters, "stray_answers": self.upstream.stray}

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # ------------------------------------------------------------------ UDP
    def _on_udp(self) -> None:
        assert self.udp is not None
        for _ in range(256):
            try:
                data, anc, _flags, client = self.udp.recvmsg(65535, socket.CMSG_SPACE(16))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            orig = _orig_dst(anc)
            if orig is None:  # not redirected (someone sent to 127.0.0.1:port directly)
                self.counters["bad_queries"] += 1
                continue
            self._spawn(self._udp_query(data, client, orig))

    async def _udp_query(self, data: bytes, client: tuple[str, int], orig: tuple[str, int]) -> None:
        wire = await self._answer(data, client, orig, "UDP")
        if wire is None:
            return
        try:  # from the address and port the client asked (one transparent socket per such address, kept)
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
                wire = await self._answer(data, client, orig, "TCP")
                if wire is None:
                    return
                writer.write(struct.pack("!H", len(wire)) + wire)
                await writer.drain()
        finally:
            writer.close()

    # ------------------------------------------------------------------ judging
    async def _answer(self, data: bytes, client: tuple[str, int], orig: tuple[str, int],
                      transport: str) -> bytes | None:
        """The answer to send back (None: nothing to answer, e.g. not a DNS query)."""
        self.counters["queries"] += 1
        start = time.time_ns()
        try:
            q = self._queries.parse(data)
        except dns.exception.DNSException:
            self.counters["bad_queries"] += 1
            return None
        if not q.question:
            self.counters["bad_queries"] += 1
            return None
        name = q.question[0].name.to_text().lower()
        qtypes = tuple(dns.rdatatype.to_text(r.rdtype) for r in q.question)
        allowed, decided = self.judge(client[0], orig[0], orig[1], transport, name)
        x = DnsExchange(client[0], client[1], orig[0], orig[1], transport, name, qtypes, allowed, decided, start)
        if not allowed:
            self.counters["refused"] += 1
            resp = dns.message.make_response(q)
            resp.set_rcode(self.reject_rcode)
            x.rcode = self.reject_rcode
            self.on_exchange(x)
            return data[:2] + resp.to_wire()[2:]  # q may be a remembered parse of another client's query
        self.counters["allowed"] += 1
        try:
            if transport == "UDP":  # the query as the client sent it; the answer as the resolver sent it
                r, wire = await self.upstream.query(q, data, orig, self.timeout)
            else:
                r = await dns.asyncquery.tcp(q, orig[0], timeout=self.timeout, port=orig[1])
                wire = data[:2] + r.to_wire()[2:]
        except (dns.exception.DNSException, OSError) as e:
            self.counters["upstream_errors"] += 1
            x.error = f"{type(e).__name__}: {e}".rstrip(": ")
            return self._servfail(q, x, data)
        _fill(x, r)
        x.latency_ns = time.time_ns() - start
        try:
            await self.learn(x)  # the learned IPs are in the policy maps before the client sees them
        except Exception as e:  # noqa: BLE001 - any failure: the client must not get IPs it cannot reach
            self.counters["learn_errors"] += 1
            x.error = f"policy update failed: {e}"
            return self._servfail(q, x, data)
        asyncio.get_running_loop().call_soon(self.on_exchange, x)  # its flows right after the answer is sent
        return wire

    def _servfail(self, q: dns.message.Message, x: DnsExchange, data: bytes) -> bytes:
        resp = dns.message.make_response(q)
        resp.set_rcode(dns.rcode.SERVFAIL)
        x.rcode, x.latency_ns, x.ips = dns.rcode.SERVFAIL, time.time_ns() - x.time_ns, ()
        self.on_exchange(x)
        return data[:2] + resp.to_wire()[2:]


class _UdpUpstream:
    """UDP queries to resolvers over a few shared sockets (random source ports), each query under a random ID
    of its own; an answer is matched by resolver, ID and question, and gets the client's ID back. No socket per
    query, and the bytes go through unchanged but for the ID."""

    SOCKETS = 8

    def __init__(self) -> None:
        self.socks: list[socket.socket] = []
        self.pending: dict[tuple[int, tuple[str, int], int], tuple[dns.message.Message, asyncio.Future[
            tuple[dns.message.Message, bytes]]]] = {}
        self.stray = 0  # answers that matched no query (late, spoofed or malformed): dropped
        self.answers = _Parsed()

    def _open(self) -> None:
        loop = asyncio.get_running_loop()
        for i in range(self.SOCKETS):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setblocking(False)
            s.bind(("0.0.0.0", 0))
            self.socks.append(s)
            loop.add_reader(s.fileno(), self._on_read, i)

    def close(self) -> None:
        for s in self.socks:
            with contextlib.suppress(RuntimeError, ValueError):
                asyncio.get_running_loop().remove_reader(s.fileno())
            s.close()
        self.socks = []
        for _, fut in self.pending.values():
            if not fut.done():
                fut.cancel()
        self.pending.clear()

    async def query(self, q: dns.message.Message, data: bytes, server: tuple[str, int],
                    timeout: float) -> tuple[dns.message.Message, bytes]:
        if not self.socks:
            self._open()
        loop = asyncio.get_running_loop()
        i = secrets.randbelow(len(self.socks))
        for _ in range(16):
            qid = secrets.randbelow(65536)
            if (i, server, qid) not in self.pending:
                break
        else:
            raise dns.exception.DNSException("no free query ID towards the resolver")
        key = (i, server, qid)
        fut: asyncio.Future[tuple[dns.message.Message, bytes]] = loop.create_future()
        self.pending[key] = (q, fut)
        timer = loop.call_later(timeout, _expire, fut)
        try:
            self.socks[i].sendto(struct.pack("!H", qid) + data[2:], server)
            r, wire = await fut
        finally:
            timer.cancel()
            self.pending.pop(key, None)
        return r, data[:2] + wire[2:]

    def _on_read(self, i: int) -> None:
        s = self.socks[i]
        for _ in range(256):
            try:
                wire, addr = s.recvfrom(65535)
            except OSError:
                return
            if len(wire) < 12:
                self.stray += 1
                continue
            hit = self.pending.get((i, addr, struct.unpack("!H", wire[:2])[0]))
            if hit is None or hit[1].done():
                self.stray += 1
                continue
            q, fut = hit
            try:
                r = self.answers.parse(wire)
            except dns.exception.DNSException:
                self.stray += 1
                continue
            if not r.flags & dns.flags.QR or r.question != q.question:
                self.stray += 1
                continue
            fut.set_result((r, wire))


class _Parsed:
    """dnspython's parse of a message, remembered by its bytes after the ID (the same query from many clients,
    the same answer to many queries, differ only there). Callers read the message and never change it; its ID
    is the first sender's, so whatever goes out takes the sender's own ID bytes."""

    SIZE = 1024

    def __init__(self) -> None:
        self.seen: dict[bytes, dns.message.Message] = {}

    def parse(self, wire: bytes) -> dns.message.Message:
        m = self.seen.get(wire[2:])
        if m is None:
            m = dns.message.from_wire(wire)  # raises on malformed: nothing is remembered then
            if len(self.seen) >= self.SIZE:
                self.seen.clear()
            self.seen[wire[2:]] = m
        return m


def _expire(fut: asyncio.Future[tuple[dns.message.Message, bytes]]) -> None:
    if not fut.done():
        fut.set_exception(dns.exception.Timeout())


def _fill(x: DnsExchange, r: dns.message.Message) -> None:
    """The answer's rcode, addresses, smallest address TTL, CNAME targets and record types."""
    x.rcode = r.rcode()
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
    x.ips, x.cnames, x.rrtypes, x.ttl = tuple(dict.fromkeys(ips)), tuple(cnames), tuple(rrtypes), ttl or 0


def _orig_dst(ancdata: list[tuple[int, int, bytes]]) -> tuple[str, int] | None:
    """IP_ORIGDSTADDR: a struct sockaddr_in (family, port in network order, address)."""
    for level, kind, data in ancdata:
        if level == socket.SOL_IP and kind == IP_RECVORIGDSTADDR and len(data) >= 8:
            port = struct.unpack("!H", data[2:4])[0]
            return socket.inet_ntoa(data[4:8]), port
    return None
