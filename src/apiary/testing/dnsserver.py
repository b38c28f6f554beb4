"""A tiny authoritative DNS server and client on dnspython, for tests (python -m apiary.testing.dnsserver ...).

  serve ADDR NAME=IP@TTL...     answer A queries for NAME (UDP and TCP on ADDR:53) with IP and TTL; other
                                names get NXDOMAIN; prints "ready"
  ask SERVER NAME [udp|tcp [TIMEOUT]]
                                one A query (TIMEOUT seconds, default 5); prints JSON {"rcode": N, "ips": [...],
                                "ttl": N} (rcode -1: no answer)
  run JSON                      steps in one process: [["ask", SERVER, NAME, "udp"|"tcp"], ["tcp", IP, PORT], ...];
                                prints the JSON list of results (an ask's object, a tcp probe's true/false)

Only ever used with addresses of endpoints and test hosts the caller created. :func:`dns_host` makes such a
test host (for the tests: a namespace with this server and TCP echo servers).
"""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import struct
import sys
import threading
from collections.abc import Iterator

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset

from apiary.connectivity.probe import tcp


@contextlib.contextmanager
def dns_host() -> Iterator[dict[str, str]]:
    """A test host of our own (:func:`apiary.testing.hostns.host_netns`, 198.19.N.0/24) with this DNS server on
    .53 and TCP echo servers on .10-.21 port 7000."""
    from apiary.testing.hostns import host_netns

    with host_netns((53, 10, 11, 12, 20, 21)) as th:
        net = th.net
        th.python("apiary.testing.dnsserver", "serve", f"{net}.53", f"allowed.example.com={net}.10@300",
                  f"blocked.example.com={net}.11@300", f"short.example.com={net}.20@2",
                  f"a.wild.example.com={net}.21@300", f"x.y.wild.example.com={net}.21@300")
        th.python("apiary.testing.netprobe", "serve-tcp", "7000")
        yield {"netns": th.netns, "net": net}


def _answer(wire: bytes, records: dict[str, tuple[str, int]]) -> bytes:
    q = dns.message.from_wire(wire)
    r = dns.message.make_response(q)
    name = q.question[0].name
    hit = records.get(name.to_text().lower())
    if hit is None:
        r.set_rcode(dns.rcode.NXDOMAIN)
    elif q.question[0].rdtype == dns.rdatatype.A:
        r.answer.append(dns.rrset.from_text(name, hit[1], "IN", "A", hit[0]))
    return r.to_wire()


def serve(addr: str, records: dict[str, tuple[str, int]]) -> None:
    class Udp(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            data, sock = self.request
            sock.sendto(_answer(data, records), self.client_address)

    class Tcp(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            while True:
                head = self.rfile.read(2)
                if len(head) < 2:
                    return
                out = _answer(self.rfile.read(struct.unpack("!H", head)[0]), records)
                self.wfile.write(struct.pack("!H", len(out)) + out)

    socketserver.ThreadingTCPServer.allow_reuse_address = True
    udp = socketserver.ThreadingUDPServer((addr, 53), Udp)
    tcp = socketserver.ThreadingTCPServer((addr, 53), Tcp)
    threading.Thread(target=tcp.serve_forever, daemon=True).start()
    print("ready", flush=True)
    udp.serve_forever()


def ask(server: str, name: str, use_tcp: bool, timeout: float = 5.0) -> dict[str, object]:
    q = dns.message.make_query(name, "A")
    try:
        r = dns.query.tcp(q, server, timeout=timeout) if use_tcp else dns.query.udp(q, server, timeout=timeout)
    except (dns.exception.DNSException, OSError) as e:
        return {"rcode": -1, "ips": [], "ttl": 0, "error": str(e)}
    ips = [rd.to_text() for rrset in r.answer for rd in rrset if rrset.rdtype == dns.rdatatype.A]
    return {"rcode": r.rcode(), "ips": ips, "ttl": min((rr.ttl for rr in r.answer), default=0)}


def main(argv: list[str]) -> int:
    cmd, rest = argv[0], argv[1:]
    if cmd == "serve":
        records = {}
        for item in rest[1:]:
            name, _, value = item.partition("=")
            ip, _, ttl = value.partition("@")
            records[name.lower().rstrip(".") + "."] = (ip, int(ttl or 60))
        serve(rest[0], records)
    elif cmd == "run":
        out: list[object] = []
        for step in json.loads(rest[0]):
            if step[0] == "ask":
                out.append(ask(step[1], step[2], step[3] == "tcp"))
            else:
                out.append(tcp(step[1], int(step[2]), 1.5))
        print(json.dumps(out), flush=True)
    elif cmd == "ask":
        print(json.dumps(ask(rest[0], rest[1], len(rest) > 2 and rest[2] == "tcp",
                             float(rest[3]) if len(rest) > 3 else 5.0)), flush=True)
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    socket.setdefaulttimeout(10)
    sys.exit(main(sys.argv[1:]))
