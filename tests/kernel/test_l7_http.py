"""L7 HTTP policy through the agent's HAProxy: the seed's l7-http-policy applied unchanged, requests from
one endpoint to another judged one by one by a real HAProxy the datapath redirects to (BPF TPROXY with
bpf_sk_assign), with the Hubble L7 flow of each request."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from apiary.sensors.l7proxy.haproxy import haproxy_binary
from apiary.testing.agent import AgentProcess, is_root
from apiary.testing.net import Net, endpoint_exec_cmd
from apiary.testing.seed import SEED_L7_HTTP_POLICY

pytestmark = [
    pytest.mark.skipif(not is_root(), reason="needs root"),
    pytest.mark.skipif(haproxy_binary() is None, reason="haproxy not installed (scripts/setup.sh installs it)"),
]

NS = "default"  # the seed policy has no namespace: kubectl (and apiary) put it in "default"
# the seed's §2.4 policy, byte for byte (indentation restored): frontend serves :8080, backend is the client
SEED_L7 = SEED_L7_HTTP_POLICY
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    agent = AgentProcess()
    n = Net(agent)
    try:
        agent.start()
        n.eps = {  # type: ignore[attr-defined]
            "frontend": n.endpoint("frontend", NS, app="frontend"),
            "backend": n.endpoint("backend", NS, app="backend"),
            "other": n.endpoint("other", NS, app="other"),
        }
        n.serve(f"{NS}/frontend", "serve-http11", "8080")
        n.serve(f"{NS}/frontend", "serve-tcp", "9000")
        n.apply_ok(SEED_L7)
        yield n
    finally:
        n.close()
        agent.cleanup()


def ip(net: Net, name: str) -> str:
    return str(net.eps[name]["ipv4"])  # type: ignore[attr-defined]


def requests(net: Net, src: str, *reqs: tuple[str, str, dict[str, str], str]) -> dict[str, Any]:
    argv = net._exec(f"{NS}/{src}", "requests", ip(net, "frontend"), "8080", json.dumps(list(reqs)))
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return dict(json.loads(p.stdout.strip().splitlines()[-1]))


def l7_flows(net: Net) -> list[dict[str, Any]]:
    for _ in range(50):
        flows = [f for f in net.flows("--type", "l7") if f.get("Type") == "L7"]
        if flows:
            return flows
        time.sleep(0.2)
    return []


def find(flows: list[dict[str, Any]], kind: str, method: str, path: str) -> dict[str, Any]:
    hits = [f for f in flows if f["l7"]["type"] == kind and f["l7"]["http"]["method"] == method
            and f["l7"]["http"]["url"].endswith(path)]
    assert hits, f"no {kind} flow for {method} {path}: {[f['Summary'] for f in flows]}"
    return hits[-1]


def test_seed_policy_judges_each_request(net: Net) -> None:
    out = requests(
        net, "backend",
        ("GET", "/api/v1/items", {}, ""),
        ("POST", "/api/v1/orders", JSON, "{}"),
        ("POST", "/api/v1/orders", {"Content-Type": "text/plain"}, "x"),
        ("DELETE", "/api/v1/items", {}, ""),
        ("GET", "/admin", {}, ""),
        ("GET", "/api/v1/again", {}, ""),
    )
    statuses = [s for s, _ in out["responses"]]
    assert statuses == [200, 200, 403, 403, 403, 200], out
    # `apiary status`: the L7 proxy OK with what it judged (3 of these denied; the access log may lag a little)
    for _ in range(50):
        sub = next(s for s in json.loads(net.cli_ok("status", "-o", "json"))["subsystems"] if s["name"] == "L7 proxy")
        if sub["details"]["requests"] >= 6:
            break
        time.sleep(0.2)
    assert sub["state"] == "OK" and sub["details"]["requests"] >= 6 and sub["details"]["denied"] >= 3, sub
    assert out["connections"] == 1  # one keep-alive connection, judged request by request
    assert out["responses"][2][1] == "Access denied\r\n"
    # the server answered the allowed ones, and saw the client's own address (not the proxy's)
    assert out["responses"][0][1].startswith(f"GET /api/v1/items from {ip(net, 'backend')}")

    flows = l7_flows(net)
    get = find(flows, "REQUEST", "GET", "/api/v1/items")
    assert get["verdict"] == "FORWARDED"
    assert get["traffic_direction"] == "INGRESS"
    assert get["source"]["pod_name"] == "backend" and get["destination"]["pod_name"] == "frontend"
    assert get["event_type"] == {"type": 129}
    assert "ingress[0].toPorts[0].rules.http[0]" in get["extensions"]["apiary"]["decided_by"]
    assert get["Summary"] == f"HTTP/1.1 GET http://{ip(net, 'frontend')}:8080/api/v1/items"
    resp = find(flows, "RESPONSE", "GET", "/api/v1/items")
    assert resp["l7"]["http"]["code"] == 200 and isinstance(resp["l7"].get("latency_ns", "0"), str)
    post = find(flows, "REQUEST", "POST", "/api/v1/orders")
    assert {"key": "Content-Type", "value": "application/json"} in post["l7"]["http"]["headers"] or \
        post["verdict"] == "DROPPED"
    assert find(flows, "REQUEST", "DELETE", "/api/v1/items")["verdict"] == "DROPPED"
    denied = find(flows, "REQUEST", "GET", "/admin")
    assert denied["verdict"] == "DROPPED" and denied["l7"]["http"]["code"] == 403
    assert "no HTTP rule matched" in denied["extensions"]["apiary"]["decided_by"]
    drops = [f for f in flows if f["verdict"] == "DROPPED" and f["l7"]["type"] == "REQUEST"]
    assert len(drops) >= 3
    # the observe filters: --http-method / --http-status
    only_delete = [f for f in net.flows("--type", "l7", "--http-method", "DELETE")]
    assert only_delete and all(f["l7"]["http"]["method"] == "DELETE" for f in only_delete)
    denials = net.flows("--type", "l7", "--http-status", "4+")  # a denied request carries its 403, as in Cilium
    assert denials and all(f["l7"]["http"]["code"] == 403 and f["verdict"] == "DROPPED" for f in denials)


def test_a_method_haproxy_has_no_code_for_is_judged_and_logged_as_sent(net: Net) -> None:
    out = requests(net, "backend", ("PATCH", "/api/v1/items", {}, ""), ("PURGE", "/api/v1/items", {}, ""),
                   ("GET", "/api/v1/patched", {}, ""))
    assert [s for s, _ in out["responses"]] == [403, 403, 200], out
    for _ in range(50):
        flows = l7_flows(net)
        if any(f["l7"]["http"]["url"].endswith("/api/v1/patched") for f in flows):
            break
        time.sleep(0.2)
    for method in ("PATCH", "PURGE"):  # HAProxy 2.6 once logged these as OPTIONS
        f = find(flows, "REQUEST", method, "/api/v1/items")
        assert f["verdict"] == "DROPPED" and f["Summary"].startswith(f"HTTP/1.1 {method} "), f["Summary"]
    assert all(f["l7"]["http"]["method"] != "OPTIONS" for f in flows)
    patched = net.flows("--type", "l7", "--http-method", "PATCH")
    assert patched and all(f["l7"]["http"]["method"] == "PATCH" for f in patched)


def test_a_request_whose_log_line_is_cut_still_gives_its_flows(net: Net) -> None:
    """HAProxy cuts an access-log line at its log length (16 KiB). JSON doubles a quote: a header of 7,000
    quotes and a 3,000-byte path make the line longer (each field alone fits). The request is judged and logged
    as any other; its flows lack the headers, the last field."""
    long = "/api/v1/quoted/" + "q" * 3000
    out = requests(net, "backend", ("GET", long, {"X-Quotes": '"' * 7000}, ""),
                   ("GET", "/api/v1/after-quoted", {}, ""))
    assert [s for s, _ in out["responses"]] == [200, 200], out
    for _ in range(50):
        flows = l7_flows(net)
        if any(f["l7"]["http"]["url"].endswith("/api/v1/after-quoted") for f in flows):
            break
        time.sleep(0.2)
    cut = find(flows, "REQUEST", "GET", long)
    assert cut["verdict"] == "FORWARDED" and cut["source"]["pod_name"] == "backend"
    assert not any(h["key"] == "X-Quotes" for h in cut["l7"]["http"].get("headers", []))
    assert find(flows, "RESPONSE", "GET", long)["l7"]["http"]["code"] == 200
    after = find(flows, "REQUEST", "GET", "/api/v1/after-quoted")  # the next line is read as its own
    assert after["verdict"] == "FORWARDED"


def test_policy_explain_http(net: Net) -> None:
    base = ("policy", "explain", "--from", f"{NS}/backend", "--to", f"{NS}/frontend", "--port", "8080/TCP")
    ok = net.cli_ok(*base, "--http", "GET", "/api/v1/items")
    assert "HTTP GET /api/v1/items allowed by the L7 proxy: CiliumNetworkPolicy default/l7-http-policy " \
        "ingress[0].toPorts[0].rules.http[0]" in ok, ok
    denied = json.loads(net.cli_ok(*base, "--http", "POST", "/api/v1/orders", "--http-header",
                                   "Content-Type: text/plain", "-o", "json"))
    assert denied["verdict"] == "DENIED" and denied["http"]["verdict"] == "denied", denied
    assert denied["text"].startswith("DENIED by the L7 proxy (HTTP 403 Access denied) at ingress of default/frontend")
    assert "CiliumNetworkPolicy default/l7-http-policy ingress[0].toPorts[0].rules.http" in denied["text"]
    bad = net.agent.cli(*base, "--http", "GET", "no-slash")
    assert bad.returncode != 0 and "http path" in bad.stderr, bad.stderr


def test_server_sees_the_client_address_and_identity(net: Net) -> None:
    out = requests(net, "backend", ("GET", "/api/v1/peer", {}, ""), ("DELETE", "/api/v1/peer", {}, ""))
    assert [s for s, _ in out["responses"]] == [200, 403], out
    assert out["responses"][0][1].split() == ["GET", "/api/v1/peer", "from", ip(net, "backend")], out
    flows = l7_flows(net)
    assert find(flows, "REQUEST", "GET", "/api/v1/peer")["verdict"] == "FORWARDED"
    assert find(flows, "REQUEST", "DELETE", "/api/v1/peer")["verdict"] == "DROPPED"
    # the proxy's connection reaches the server as the client's: the server's ingress policy verdict and its
    # conntrack (the reply direction too) name the backend, never the host
    backend, frontend = ip(net, "backend"), ip(net, "frontend")
    at_server = [f for f in net.flows("--to-pod", f"{NS}/frontend", "--port", "8080")
                 if f["traffic_direction"] == "INGRESS" and f["IP"]["source"] == backend]
    verdicts = [f for f in at_server if f["Type"] == "L3_L4" and f["event_type"]["type"] == 5]
    assert verdicts and verdicts[-1]["verdict"] == "FORWARDED", at_server
    assert verdicts[-1]["source"]["pod_name"] == "backend", verdicts[-1]
    replies = [f for f in net.flows("--from-pod", f"{NS}/frontend", "--port", "8080")
               if f["IP"]["destination"] == backend and f.get("is_reply")]
    assert replies and replies[-1]["verdict"] == "FORWARDED", replies
    assert frontend != backend
    # a client the L3/L4 policy denies still cannot reach the server through the proxy
    assert not net.probe(f"{NS}/other", "tcp", frontend, "8080", "1")


def test_other_identity_and_other_port_are_not_redirected(net: Net) -> None:
    # "other" is not allowed by the policy at all: dropped by L3/L4 (default deny), never reaches the proxy
    assert not net.probe(f"{NS}/other", "tcp", ip(net, "frontend"), "8080", "1")
    # the backend on a port without L7 rules: also default deny (the policy allows 8080 only)
    assert not net.probe(f"{NS}/backend", "tcp", ip(net, "frontend"), "9000", "1")


def raw(net: Net, src: str, text: str) -> str:
    argv = net._exec(f"{NS}/{src}", "raw", ip(net, "frontend"), "8080", json.dumps(text))
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return str(json.loads(p.stdout.strip().splitlines()[-1]))


def statuses(reply: str) -> list[int]:
    return [int(code) for code in re.findall(r"HTTP/1\.[01] (\d{3}) ", reply)]


def test_pipelined_requests_are_judged_in_order(net: Net) -> None:
    reply = raw(net, "backend", "GET /api/v1/a HTTP/1.1\r\nHost: f\r\n\r\n"
                "DELETE /api/v1/a HTTP/1.1\r\nHost: f\r\n\r\n"
                "GET /api/v1/b HTTP/1.1\r\nHost: f\r\nConnection: close\r\n\r\n")
    assert statuses(reply) == [200, 403, 200], reply
    assert "GET /api/v1/a from" in reply and "GET /api/v1/b from" in reply and "DELETE /api/v1/a from" not in reply


def test_a_burst_of_requests_gives_every_flow(net: Net) -> None:
    """wrk for 1 s (thousands of requests): every request the client completed is an access-log record (its
    REQUEST and RESPONSE flows) or counted as dropped by HAProxy (shown in status): none lost silently."""
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (scripts/setup.sh installs it)")

    def proxy() -> dict[str, Any]:
        return dict(json.loads(net.cli_ok("status", "-o", "json"))["network"]["l7_proxy"])

    first = proxy()
    before, dropped_before = first["access_log_records"], first["dropped_records"]
    argv = endpoint_exec_cmd(net.agent.socket, f"{NS}/backend", "wrk", "-t1", "-c8", "-d1s",
                             f"http://{ip(net, 'frontend')}:8080/api/v1/wrk")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout
    m = re.search(r"(\d+) requests in", out)
    assert m and int(m.group(1)) > 100, out
    done = int(m.group(1))
    st = proxy()
    for _ in range(150):  # the agent reads the log at its pace: on a loaded machine it may trail by seconds
        if st["access_log_records"] - before + st["dropped_records"] - dropped_before >= done:
            break
        time.sleep(0.2)
        st = proxy()
    got, dropped = st["access_log_records"] - before, st["dropped_records"] - dropped_before
    # none lost silently: each completed request is a record, or a record HAProxy counted as dropped (its log
    # pipe full while the agent was busy: shown in status, the L7 proxy degraded), and every record is read
    assert got + dropped >= done and got >= done * 0.9, (got, dropped, done, st)
    assert st["bad_records"] == 0, (st["bad_records"], st)


def proxy_server_stats(net: Net) -> dict[str, int]:
    """The proxy's counters of its transparent server connections (the runtime API's ``show stat``)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(net.agent.dir / "state" / "l7proxy" / "admin.sock"))
        s.sendall(b"show stat\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    rows = list(csv.reader(out.decode().lstrip("# ").splitlines()))
    # the server client_source of both judging backends (one per buffer of rules)
    servers = [dict(zip(rows[0], r, strict=False)) for r in rows[1:] if r[:2] in (["judge0", "client_source"],
                                                                                 ["judge1", "client_source"])]
    assert len(servers) == 2, rows
    return {k: sum(int(row[k] or 0) for row in servers) for k in ("connect", "reuse", "req_tot")}


def test_server_connections_are_reused(net: Net) -> None:
    """Two wrk runs of 8 keep-alive connections one after the other: each client connection keeps one server
    connection for all its requests. (With HAProxy's default pooling, the second run's connections found the
    first run's idle ones, unusable for them, and each request then made a new transparent connection.)"""
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (scripts/setup.sh installs it)")
    before = proxy_server_stats(net)
    for _ in range(2):
        argv = endpoint_exec_cmd(net.agent.socket, f"{NS}/backend", "wrk", "-t1", "-c8", "-d1s",
                                 f"http://{ip(net, 'frontend')}:8080/api/v1/reuse")
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout
        assert re.search(r"(\d+) requests in", out), out
    after = proxy_server_stats(net)
    requests_made = after["req_tot"] - before["req_tot"]
    assert requests_made > 200, (before, after)
    assert after["connect"] - before["connect"] <= 16 + 2, (before, after)  # one per client connection
    assert after["reuse"] - before["reuse"] >= requests_made - 18, (before, after)


def test_http10_and_malformed_request(net: Net) -> None:
    assert statuses(raw(net, "backend", "GET /api/v1/old HTTP/1.0\r\n\r\n")) == [200]
    assert statuses(raw(net, "backend", "GET /other HTTP/1.0\r\n\r\n")) == [403]
    assert statuses(raw(net, "backend", "THIS IS NOT HTTP\r\n\r\n")) == [400]
    out = requests(net, "backend", ("GET", "/api/v1/still-alive", {}, ""))  # the proxy lives on
    assert [s for s, _ in out["responses"]] == [200]


EGRESS_L7 = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: other-egress-l7}
spec:
  endpointSelector: {matchLabels: {app: other}}
  egress:
  - toEndpoints: [{matchLabels: {app: frontend}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules: {http: [{method: GET, path: "/public"}]}
"""
FRONTEND_FROM_OTHER = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: frontend-from-other}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: other}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
"""


def test_egress_l7_and_the_servers_ingress(net: Net) -> None:
    try:
        net.apply_ok(EGRESS_L7)
        # the client's egress sends it to the proxy, but the server's ingress (the seed policy) does not allow
        # "other": decided where the connection leaves the client, as the proxy's own connection is not judged
        assert not net.probe(f"{NS}/other", "tcp", ip(net, "frontend"), "8080", "1")
        net.apply_ok(FRONTEND_FROM_OTHER)
        out = requests(net, "other", ("GET", "/public", {}, ""), ("GET", "/public/x", {}, ""),
                       ("POST", "/public", {}, "x"))
        assert [s for s, _ in out["responses"]] == [200, 403, 403], out  # path regex matches the whole path
        flows = l7_flows(net)
        ok = find(flows, "REQUEST", "GET", "/public")
        assert ok["traffic_direction"] == "EGRESS" and ok["source"]["pod_name"] == "other"
        assert "other-egress-l7 egress[0].toPorts[0].rules.http[0]" in ok["extensions"]["apiary"]["decided_by"]
        assert find(flows, "REQUEST", "GET", "/public/x")["verdict"] == "DROPPED"
    finally:
        for name in ("other-egress-l7", "frontend-from-other"):
            net.agent.cli("policy", "delete", name, "-n", NS)


def test_a_request_both_sides_judge_is_reported_by_each(net: Net) -> None:
    """The client's egress and the server's ingress both have HTTP rules: one proxy judges both, and an allowed
    request is two pairs of flows, EGRESS (the client's rule) and INGRESS (the server's), as Cilium's two
    proxies report it; a request one side denies is one DROPPED flow of that side."""
    try:
        net.apply_ok(EGRESS_L7)
        net.apply_ok(FRONTEND_FROM_OTHER.replace(
            'toPorts: [{ports: [{port: "8080", protocol: TCP}]}]',
            'toPorts: [{ports: [{port: "8080", protocol: TCP}], rules: {http: [{method: GET, path: "/pub.*"}]}}]'))
        out = requests(net, "other", ("GET", "/public", {}, ""), ("GET", "/publicx", {}, ""))
        assert [s for s, _ in out["responses"]] == [200, 403], out
        flows = [f for f in l7_flows(net) if f["l7"]["http"]["url"].endswith(("/public", "/publicx"))
                 and f["source"].get("pod_name", f["destination"].get("pod_name")) in ("other", "frontend")]
        allowed = [f for f in flows if f["l7"]["http"]["url"].endswith("/public")]
        by_side = {(f["traffic_direction"], f["l7"]["type"]) for f in allowed}
        assert by_side == {("EGRESS", "REQUEST"), ("EGRESS", "RESPONSE"), ("INGRESS", "REQUEST"),
                           ("INGRESS", "RESPONSE")}, [f["Summary"] for f in allowed]
        eg = [f for f in allowed if f["traffic_direction"] == "EGRESS" and f["l7"]["type"] == "REQUEST"][-1]
        ing = [f for f in allowed if f["traffic_direction"] == "INGRESS" and f["l7"]["type"] == "REQUEST"][-1]
        assert "other-egress-l7 egress[0].toPorts[0].rules.http[0]" in eg["extensions"]["apiary"]["decided_by"]
        assert "frontend-from-other ingress[0].toPorts[0].rules.http[0]" in ing["extensions"]["apiary"]["decided_by"]
        denied = [f for f in flows if f["l7"]["http"]["url"].endswith("/publicx")]
        assert [(f["traffic_direction"], f["verdict"]) for f in denied] == [("EGRESS", "DROPPED")], denied
    finally:
        for name in ("other-egress-l7", "frontend-from-other"):
            net.agent.cli("policy", "delete", name, "-n", NS)


def test_proxy_down_fails_closed_and_is_restarted(net: Net) -> None:
    status = json.loads(net.cli_ok("status", "-o", "json"))
    proxy = status["network"]["l7_proxy"]
    pid = proxy["pid"]
    assert proxy["alive"] and pid
    os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        proxy = json.loads(net.cli_ok("status", "-o", "json"))["network"]["l7_proxy"]
        if proxy["pid"] != pid and proxy["alive"]:
            break
        time.sleep(0.1)
    assert proxy["restarts"] >= 1 and proxy["pid"] != pid
    # `apiary status`: the restart within the rate window (the last minute) makes the L7 proxy degraded, saying so
    st = json.loads(net.cli_ok("status", "-o", "json"))
    sub = next(s for s in st["subsystems"] if s["name"] == "L7 proxy")
    assert sub["state"] == "degraded" and "restarted" in sub["reason"] and st["overall"] == "degraded", sub
    assert "L7 proxy:          degraded   " in net.cli_ok("status")
    out = requests(net, "backend", ("GET", "/api/v1/after-restart", {}, ""))
    assert [s for s, _ in out["responses"]] == [200]


def test_agent_stopped_proxy_gone_fails_closed(net: Net) -> None:
    """Last in the module: with the agent (and so its HAProxy) stopped the endpoints keep their programs;
    a connection the policy sends to the proxy is dropped (no listener), never let through unjudged."""
    row = json.loads(net.cli_ok("endpoint", "get", f"{NS}/backend"))
    assert net.agent.stop() == 0
    probe = ["ip", "netns", "exec", os.path.basename(row["netns"]), "python3", "-c",
             "import socket,sys\ntry:\n socket.create_connection((sys.argv[1], 8080), timeout=2).close()\n"
             " print('connected')\nexcept OSError as e:\n print('failed', e)", ip(net, "frontend")]
    out = subprocess.run(probe, capture_output=True, text=True, timeout=60).stdout
    assert out.startswith("failed"), out
