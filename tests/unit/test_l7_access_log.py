"""The proxy's access log as the agent reads it (a pipe, in batches) and the flows of one exchange."""

from __future__ import annotations

import json
import os
from pathlib import Path

from hubble_flow_helpers import BACKEND_IP, FRONTEND_IP, FakeDirectory, builder  # noqa: I001

from apiary.agent.bus import EventBus
from apiary.observe.hubble.builder import l7_http_deferred, l7_http_responses, l7_response
from apiary.observe.hubble.l7 import HttpExchange, LoggedExchange, identity_of, parse_record
from apiary.sensors.l7proxy.config import build, log_line
from apiary.sensors.l7proxy.haproxy import HAProxy


def reader(tmp: Path, seen: list[list[bytes]]) -> HAProxy:
    def on_log(recs: list[list[bytes]]) -> int:
        good = [r for r in recs if r[5] != b"boom"]  # its termination state: one the agent cannot use
        seen.extend(good)
        return len(recs) - len(good)

    proxy = HAProxy(tmp, "unit", tmp, port=1, on_log=on_log)
    proxy._log_r, proxy._log_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)  # what start() opens
    return proxy


def test_records_in_batches_lines_split_across_reads(tmp_path: Path) -> None:
    seen: list[list[bytes]] = []
    proxy = reader(tmp_path, seen)
    try:
        recs = [log_line({"term": "--", "gen": "0"}, {"client": "10.0.0.1", "cport": str(40000 + i), "status": "200"})
                for i in range(500)]
        blob = b"\n".join(recs) + b"\n"
        os.write(proxy._log_w, blob[:1000])  # ends inside a record: kept for the next read
        assert proxy.drain() == blob[:1000].count(b"\n")
        os.write(proxy._log_w, blob[1000:])
        proxy.drain()
        assert [json.loads(r[-1])["cport"] for r in seen] == [str(40000 + i) for i in range(500)]
        assert [r[:6] for r in seen[:1]] == [[b"ap1", b"-", b"0", b"-", b"-", b"--"]]
        assert proxy.records == 500 and proxy.bad_records == 0
        # HAProxy's own notices, a broken record and a record the agent cannot use: counted, never lost silently
        os.write(proxy._log_w, b'[NOTICE] proxy l7http started\nap1 - 0 - -\n' + log_line({"term": "boom"}, {})
                 + b"\n" + log_line({}, {"status": "200"}) + b"\n")
        proxy.drain()
        assert proxy.notices == 1 and proxy.bad_records == 2 and proxy.records == 502 and len(seen) == 501
        assert proxy.drain() == 0  # nothing left
    finally:  # the fds only (close() would also remove the instance's routing)
        os.close(proxy._log_r)
        os.close(proxy._log_w)


def test_the_json_of_a_record_is_read_when_its_flows_are() -> None:
    body = {"client": "10.0.0.1", "cport": "40000", "server": "10.0.0.2", "sport": "8080", "status": "200",
            "method": "GET", "url": "/a", "host": "x", "version": "1.1", "headers": "Host: x\r\n"}
    x = LoggedExchange(json.dumps(body).encode(), True, True, "", {"10.0.0.1/32": 256}).exchange()
    assert (x.client, x.client_port, x.status, x.method, x.url, x.client_identity) == \
        ("10.0.0.1", 40000, 200, "GET", "http://x/a", 256)
    # HAProxy's json(utf8s) leaves out bytes that are no UTF-8; a record json reads only with replacements
    # still reads, and one nothing reads is empty (its flows keep the verdict)
    assert parse_record(b'{"method": "G\xffT"}') == {"method": "G\ufffdT"}
    assert parse_record(b"{not json") == {} and parse_record(b"[1]") == {}
    # a line longer than HAProxy's log length is cut inside its last field, the headers: the rest reads
    cut = json.dumps(body | {"headers": "X-Big: " + "a" * 20000}, separators=(",", ":")).encode()[:16000]
    assert parse_record(cut) == {k: v for k, v in body.items() if k != "headers"}


def test_haproxy_logs_to_its_stdout() -> None:
    cfg = build({}, {}, port=15000, state_dir="/run/x")
    assert "    log stdout len 16384 format raw local0" in cfg.text.splitlines()


def test_both_flows_of_an_exchange_equal_the_single_flows() -> None:
    b = builder()
    for allowed in (True, False):
        x = HttpExchange("10.200.0.20", 40000, "10.200.0.10", 8080, "GET", "http://frontend:8080/a", "HTTP/1.1",
                         (("Host", "frontend:8080"),), 200 if allowed else 0, 3_000_000, 1_700_000_000_000_000_000,
                         allowed, True, "CiliumNetworkPolicy default/p ingress[0]", 257, 256)
        want = [l7_response(b, x, False)] + ([l7_response(b, x, True)] if allowed else [])
        assert list(l7_http_responses(b, x)) == want


def test_deferred_flows_are_the_same_built_once_with_the_endpoints_as_logged() -> None:
    """The agent publishes an exchange's flows unbuilt (most of its work per request at full speed): read from
    the bus they are the eager flows, each built once; endpoints as they were when the request was logged."""
    directory = FakeDirectory()
    b = builder(directory)
    for allowed in (True, False):
        x = HttpExchange(BACKEND_IP, 40000, FRONTEND_IP, 8080, "GET", "http://frontend:8080/a", "HTTP/1.1",
                         (("Host", "frontend:8080"),), 200 if allowed else 0, 3_000_000, 1_700_000_000_000_000_000,
                         allowed, True, "CiliumNetworkPolicy default/p ingress[0]", 257, 256)
        want = [l7_response(b, x, False)] + ([l7_response(b, x, True)] if allowed else [])  # built at once, alone
        assert want[0]["flow"]["source"]["pod_name"] == "backend"
        evs = l7_http_deferred(b, x)
        assert all(ev.built is None for ev in evs)
        gone = FakeDirectory()
        gone.eps.pop(12)
        b.directory = gone  # the client endpoint goes before anyone reads the flows (a new directory, as the agent's)
        try:
            bus = EventBus(16, 4)
            for ev in evs:
                bus.publish(ev)
            assert bus.recent() == want
            assert all(got is ev.built for got, ev in zip(bus.recent(), evs, strict=True))  # built once
        finally:
            b.directory = directory


def test_a_logged_record_becomes_its_exchange_when_first_read() -> None:
    """The agent publishes a record's flows before it makes the exchange (most records are never read): read,
    they are the flows of the exchange the record describes, made once for both."""
    rec = {"client": BACKEND_IP, "cport": "40000", "server": FRONTEND_IP, "sport": "8080", "status": "200",
           "tr": "3", "ta": "4", "ts": "1700000000", "ms": "250", "term": "--", "method": "PATCH",
           "url": "/a?b=1", "host": "frontend:8080", "version": "1.0", "rule": "1", "deny": "-",
           "headers": "Host: frontend:8080\r\nX-Req: 1\r\n"}
    ipcache = {f"{BACKEND_IP}/32": 257, f"{FRONTEND_IP}/32": 256}
    src = LoggedExchange(rec, True, True, "CiliumNetworkPolicy default/p ingress[0]", ipcache)
    b = builder()
    evs = l7_http_deferred(b, src)
    assert len(evs) == 2 and src._x is None  # nothing made yet
    x = src.exchange()
    assert src.exchange() is x
    assert x == HttpExchange(BACKEND_IP, 40000, FRONTEND_IP, 8080, "PATCH", "http://frontend:8080/a?b=1",
                             "HTTP/1", (("Host", "frontend:8080"), ("X-Req", "1")), 200, 3_000_000,
                             1_700_000_000_250_000_000, True, True, "CiliumNetworkPolicy default/p ingress[0]",
                             257, 256)
    assert [ev.materialize() for ev in evs] == list(l7_http_responses(b, x))
    # the protocol as Cilium names it ("HTTP/1", "HTTP/1.1", "HTTP/2"), whatever HAProxy's req.ver says
    for ver, proto in (("1.0", "HTTP/1"), ("1.1", "HTTP/1.1"), ("2.0", "HTTP/2")):
        assert LoggedExchange({**rec, "version": ver}, True, True, "", {}).exchange().protocol == proto
    unset = {**rec, "status": "-", "tr": "-1", "host": "-", "deny": "2"}  # denied before any server: unset numbers
    y = LoggedExchange(unset, False, True, "", {}).exchange()
    # an address the ipcache does not hold is world (2), as the datapath says
    assert (y.status, y.latency_ns, y.url, y.client_identity) == (0, 0, f"http://{FRONTEND_IP}:8080/a?b=1", 2)
    assert len(l7_http_deferred(b, LoggedExchange(unset, False, True, "", {}))) == 1  # a denied request: one flow


def test_a_client_on_another_host_gets_the_identity_the_datapath_gives() -> None:
    """An endpoint by its /32; a client on another host by the longest CIDR prefix a policy made an identity
    of, else world; a value that is no IPv4 address has none."""
    ipcache = {"10.0.0.5/32": 300, "198.19.0.0/16": 16777217, "198.19.7.0/24": 16777218}
    assert identity_of(ipcache, "10.0.0.5") == 300
    assert identity_of(ipcache, "198.19.7.9") == 16777218
    assert identity_of(ipcache, "198.19.8.9") == 16777217
    assert identity_of(ipcache, "203.0.113.1") == 2
    assert identity_of(ipcache, "-") == 0 and identity_of(ipcache, "fd00::1") == 0
