"""L7 HTTP rules as Cilium users write them, through the agent's real HAProxy (findings of a new-user audit):
an L3-wildcard rule's HTTP rules add to a peer's own (Envoy ORs a port's rules); the path is normalized
before the rules judge it ("/api/v1/../../admin" is "/admin", as with Cilium's --http-normalize-path); a
headerMatches without a value asks for presence and a header value may start with '#'; a rule HAProxy
cannot load is refused by field path, the rules in force untouched."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from apiary.sensors.l7proxy.haproxy import haproxy_binary
from apiary.testing.agent import AgentProcess, is_root
from apiary.testing.net import Net
from apiary.testing.seed import SEED_L7_HTTP_POLICY

pytestmark = [
    pytest.mark.skipif(not is_root(), reason="needs root"),
    pytest.mark.skipif(haproxy_binary() is None, reason="haproxy not installed (scripts/setup.sh installs it)"),
]

NS = "l7audit"
SEED = SEED_L7_HTTP_POLICY.replace("name: l7-http-policy", f"name: l7-http-policy\n  namespace: {NS}")
PUBLIC = f"""\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: public, namespace: {NS}}}
spec:
  endpointSelector: {{matchLabels: {{app: frontend}}}}
  ingress:
  - toPorts:
    - ports: [{{port: "8080", protocol: TCP}}]
      rules:
        http:
        - {{method: GET, path: /public}}
        - {{method: GET, path: /token, headerMatches: [{{name: X-Token}}]}}
        - {{method: GET, path: /hash, headers: ["X-Id: #42"]}}
"""


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
        n.apply_ok(SEED)
        n.apply_ok(PUBLIC)
        yield n
    finally:
        n.close()
        agent.cleanup()


def ip(net: Net, name: str) -> str:
    return str(net.eps[name]["ipv4"])  # type: ignore[attr-defined]


def requests(net: Net, src: str, *reqs: tuple[str, str, dict[str, str]]) -> list[list[Any]]:
    spec = json.dumps([[m, p, h, ""] for m, p, h in reqs])
    p = subprocess.run(net._exec(f"{NS}/{src}", "requests", ip(net, "frontend"), "8080", spec), capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return list(json.loads(p.stdout.strip().splitlines()[-1])["responses"])


def raw(net: Net, src: str, text: str) -> str:
    p = subprocess.run(net._exec(f"{NS}/{src}", "raw", ip(net, "frontend"), "8080", json.dumps(text)),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return str(json.loads(p.stdout.strip().splitlines()[-1]))


def test_an_l3_wildcard_rules_http_rules_add_to_a_peers_own(net: Net) -> None:
    # the backend: the seed's rules and everyone's (it was denied both: each policy's filter vetoed the other's)
    out = requests(net, "backend", ("GET", "/api/v1/items", {}), ("GET", "/public", {}), ("DELETE", "/public", {}))
    assert [s for s, _ in out] == [200, 200, 403], out
    out = requests(net, "other", ("GET", "/public", {}), ("GET", "/api/v1/items", {}))
    assert [s for s, _ in out] == [200, 403], out  # the seed's rules are the backend's only
    for path in ("/api/v1/items", "/public"):
        x = net.cli_ok("policy", "explain", "--from", f"{NS}/backend", "--to", f"{NS}/frontend", "--port",
                       "8080/TCP", "--http", "GET", path)
        assert x.startswith("ALLOWED"), x


def test_the_path_is_normalized_before_the_rules(net: Net) -> None:
    # "/api/v1/.*" allowed "/api/v1/../../admin" through, and the server resolved it to /admin
    reply = raw(net, "backend", "GET /api/v1/../../admin HTTP/1.1\r\nHost: f\r\n\r\n"
                "GET /api/v1/%2e%2e/%2E%2E/admin HTTP/1.1\r\nHost: f\r\n\r\n"
                "GET //api//v1/./items HTTP/1.1\r\nHost: f\r\nConnection: close\r\n\r\n")
    assert [int(c) for c in re.findall(r"HTTP/1\.[01] (\d{3}) ", reply)] == [403, 403, 200], reply
    assert f"GET /api/v1/items from {ip(net, 'backend')}" in reply  # the server gets the normalized path
    assert "admin from" not in reply
    x = net.cli_ok("policy", "explain", "--from", f"{NS}/backend", "--to", f"{NS}/frontend", "--port", "8080/TCP",
                   "--http", "GET", "/api/v1/../../admin")
    assert x.startswith("DENIED by the L7 proxy"), x


def test_header_presence_and_a_value_starting_with_a_hash(net: Net) -> None:
    out = requests(net, "other", ("GET", "/token", {"X-Token": "anything"}), ("GET", "/token", {}),
                   ("GET", "/hash", {"X-Id": "#42"}), ("GET", "/hash", {"X-Id": "42"}))
    assert [s for s, _ in out] == [200, 403, 200, 403], out


def test_a_rule_haproxy_cannot_load_is_refused_by_field_path(net: Net) -> None:
    bad = PUBLIC.replace("name: public,", "name: bad-regex,").replace("path: /public}", 'path: "(?u)/x"}')
    before = net.cli_ok("policy", "list", "-o", "json")
    p = net.apply(bad)
    assert p.returncode != 0, p.stdout
    assert "spec.ingress[0].toPorts[0].rules.http[0].path: haproxy cannot use this regular expression" in p.stderr, \
        p.stderr
    assert net.cli_ok("policy", "list", "-o", "json") == before  # nothing changed ...
    out = requests(net, "backend", ("GET", "/api/v1/items", {}), ("GET", "/public", {}), ("GET", "/x", {}))
    assert [s for s, _ in out] == [200, 200, 403], out  # ... and the rules in force are still enforced
