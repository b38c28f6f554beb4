"""The DNS proxy's UDP path on loopback, without the datapath's redirect: a query is handed to the proxy as the
redirect would hand it (client address, original destination = a resolver socket of the test's own), and the
answers it would send back are recorded. Each query ends in exactly one answer and its flows, and nothing is
lost uncounted: the resolver's answer (released only once learned), REFUSED, or SERVFAIL when the resolver
does not answer in time or the learn fails; answers that match no query are counted and dropped."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import dns.message
import dns.rcode
import dns.rrset
import pytest

from apiary.observe.hubble.l7 import DnsExchange
from apiary.sensors.dnsproxy.proxy import DnsProxy

CLIENT = ("10.0.0.5", 40000)


class Harness:
    def __init__(self, resolver: socket.socket, timeout: float = 5.0) -> None:
        self.resolver = resolver
        self.orig = resolver.getsockname()
        self.replies: list[tuple[tuple[str, int], tuple[str, int], dns.message.Message]] = []
        self.exchanges: list[DnsExchange] = []
        self.learned: list[DnsExchange] = []
        self.learn_result: asyncio.Future[None] | None = None
        self.proxy = DnsProxy(self.judge, self.learn, self.exchanges.append, timeout=timeout)
        self.proxy._reply = self.reply  # type: ignore[method-assign]  # no transparent socket needed

    @staticmethod
    def judge(client: str, server: str, port: int, transport: str, name: str) -> tuple[bool, str]:
        return (not name.startswith("blocked.")), "test rule"

    def learn(self, x: DnsExchange) -> asyncio.Future[None] | None:
        self.learned.append(x)
        return self.learn_result

    def reply(self, orig: tuple[str, int], client: tuple[str, int], wire: bytes) -> None:
        self.replies.append((orig, client, dns.message.from_wire(wire)))

    def ask(self, loop: asyncio.AbstractEventLoop, name: str, qid: int) -> None:
        """As the proxy's reader callback hands a redirected query over (in the event loop)."""
        async def query() -> None:
            self.proxy._udp_query(dns.message.make_query(name, "A", id=qid).to_wire(), CLIENT, self.orig)
            self.proxy._flush()

        loop.run_until_complete(query())

    def forwarded(self) -> tuple[dns.message.Message, tuple[str, int]]:
        data, addr = self.resolver.recvfrom(65535)
        return dns.message.from_wire(data), addr

    def answer(self, q: dns.message.Message, addr: tuple[str, int], ip: str, qid: int | None = None) -> None:
        r = dns.message.make_response(q)
        r.answer.append(dns.rrset.from_text(q.question[0].name, 300, "IN", "A", ip))
        if qid is not None:
            r.id = qid
        self.resolver.sendto(r.to_wire(), addr)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def run(loop: asyncio.AbstractEventLoop, seconds: float) -> None:
    """Let the proxy serve (its sockets' callbacks and its timeout sweep run) for ``seconds``."""
    loop.run_until_complete(asyncio.sleep(seconds))


def start(loop: asyncio.AbstractEventLoop, timeout: float = 5.0) -> tuple[Harness, socket.socket]:
    resolver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    resolver.bind(("127.0.0.1", 0))
    resolver.settimeout(2)
    h = Harness(resolver, timeout)
    udp, tcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket()
    udp.bind(("127.0.0.1", 0))
    tcp.bind(("127.0.0.1", udp.getsockname()[1]))
    tcp.listen(8)
    h.proxy.adopt(udp, tcp)
    loop.run_until_complete(h.proxy.serve())
    return h, resolver


def stop(loop: asyncio.AbstractEventLoop, h: Harness, resolver: socket.socket) -> None:
    async def close() -> None:
        h.proxy.close()

    loop.run_until_complete(close())
    resolver.close()


def test_an_answer_goes_back_with_the_client_id_once_learned_and_strays_are_counted(
        loop: asyncio.AbstractEventLoop) -> None:
    h, resolver = start(loop)
    try:
        h.learn_result = loop.create_future()  # the maps are not written yet
        h.ask(loop, "allowed.example.com", 0x1234)
        q, addr = h.forwarded()
        assert q.question[0].name.to_text() == "allowed.example.com." and h.proxy.status()["waiting"] == 1
        h.answer(q, addr, "192.0.2.7", qid=(q.id + 1) & 0xFFFF)  # not this query's ID: a stray
        h.answer(q, addr, "192.0.2.7")
        run(loop, 0.3)
        assert [x.ips for x in h.learned] == [("192.0.2.7",)]
        assert not h.replies and not h.exchanges  # held until learned
        h.learn_result.set_result(None)
        run(loop, 0.1)
        (orig, client, r), = h.replies
        assert orig == h.orig and client == CLIENT and r.id == 0x1234 and r.rcode() == dns.rcode.NOERROR
        assert [rd.to_text() for rr in r.answer for rd in rr] == ["192.0.2.7"]
        (x,) = h.exchanges
        assert x.allowed and x.ttl == 300 and x.rrtypes == ("A",) and x.latency_ns > 0
        st = h.proxy.status()
        assert (st["queries"], st["allowed"], st["stray_answers"], st["waiting"]) == (1, 1, 1, 0), st

        h.learn_result = None  # the maps hold the IPs already: released at once
        h.ask(loop, "allowed.example.com", 0x4321)
        q, addr = h.forwarded()
        h.answer(q, addr, "192.0.2.7")
        run(loop, 0.2)
        assert h.replies[-1][2].id == 0x4321 and len(h.exchanges) == 2
    finally:
        stop(loop, h, resolver)


def test_refused_timed_out_and_unlearnable_queries_are_answered_and_counted(loop: asyncio.AbstractEventLoop) -> None:
    h, resolver = start(loop, timeout=0.3)
    try:
        h.ask(loop, "blocked.example.com", 1)
        (_, _, r), = h.replies
        assert r.id == 1 and r.rcode() == dns.rcode.REFUSED and not h.exchanges[0].allowed

        h.ask(loop, "allowed.example.com", 2)  # the resolver never answers
        h.forwarded()
        run(loop, 0.8)
        assert h.replies[-1][2].id == 2 and h.replies[-1][2].rcode() == dns.rcode.SERVFAIL
        assert h.exchanges[-1].error.startswith("Timeout") and h.exchanges[-1].rcode == dns.rcode.SERVFAIL

        failed: asyncio.Future[None] = loop.create_future()
        failed.set_exception(OSError("map full"))
        h.learn_result = failed
        h.ask(loop, "allowed.example.com", 3)
        q, addr = h.forwarded()
        h.answer(q, addr, "192.0.2.8")
        run(loop, 0.2)
        assert h.replies[-1][2].id == 3 and h.replies[-1][2].rcode() == dns.rcode.SERVFAIL
        assert "map full" in h.exchanges[-1].error and not h.exchanges[-1].ips
        st = h.proxy.status()
        assert (st["queries"], st["refused"], st["upstream_errors"], st["learn_errors"], st["waiting"]) == \
            (3, 1, 1, 1, 0), st
        assert len(h.replies) == len(h.exchanges) == 3  # one answer and one exchange per query
    finally:
        stop(loop, h, resolver)
