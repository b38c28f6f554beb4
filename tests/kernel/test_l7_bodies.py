"""Bodies through the L7 proxy (issue 11's tests): a chunked upload and a large chunked download are streamed
through apiary's HAProxy (each side sees the first bytes before the other has sent the last: nothing is held
whole), with their content intact; a denied upload never reaches the server; a backend that resets gives the
client HAProxy's 502 and the proxy serves the next connection. Real endpoints, a real server on raw sockets
(apiary.testing.httpbodies), the datapath's redirect to the proxy."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from apiary.sensors.l7proxy.haproxy import haproxy_binary
from apiary.testing.agent import is_root
from apiary.testing.net import Net, endpoint_exec_cmd, http_bodies_net

pytestmark = [
    pytest.mark.skipif(not is_root(), reason="needs root"),
    pytest.mark.skipif(haproxy_binary() is None, reason="haproxy not installed (scripts/setup.sh installs it)"),
]

NS = "bodies"
PORT = 8080
BIG = 32 << 20
POLICY = f"""\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: bodies, namespace: {NS}}}
spec:
  endpointSelector: {{matchLabels: {{app: server}}}}
  ingress:
  - fromEndpoints: [{{matchLabels: {{app: client}}}}]
    toPorts:
    - ports: [{{port: "{PORT}", protocol: TCP}}]
      rules:
        http:
        - {{method: GET, path: "/api/v1/.*"}}
        - {{method: POST, path: "/api/v1/upload"}}
"""


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    with http_bodies_net(NS, PORT, POLICY, "apiary-bodies-") as n:
        yield n


def client(net: Net, *args: str) -> dict[str, Any]:
    """One httpbodies client command in the client endpoint, to the server's address; its JSON line."""
    shared: str = net.shared  # type: ignore[attr-defined]
    for name in ("first-chunk", "go"):  # each case starts with no signal given
        Path(shared, name).unlink(missing_ok=True)
    server = str(net.eps["server"]["ipv4"])  # type: ignore[attr-defined]
    cmd, *rest = args
    argv = [cmd, server, str(PORT), *(shared,) * (cmd in ("upload", "download")), *rest]
    p = subprocess.run(endpoint_exec_cmd(net.agent.socket, f"{NS}/client", sys.executable, "-m",
                                         "apiary.testing.httpbodies", *argv),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return dict(json.loads(p.stdout.strip().splitlines()[-1]))


def l7_flow(net: Net, kind: str, method: str, path: str) -> dict[str, Any]:
    for _ in range(50):
        hits = [f for f in net.flows("--type", "l7") if f.get("Type") == "L7" and f["l7"]["type"] == kind
                and f["l7"]["http"]["method"] == method and f["l7"]["http"]["url"].split("?")[0].endswith(path)]
        if hits:
            return hits[-1]
        time.sleep(0.2)
    raise AssertionError(f"no {kind} flow for {method} {path}")


def test_a_chunked_upload_is_streamed_to_the_server_whole(net: Net) -> None:
    out = client(net, "upload", "/api/v1/upload", str(BIG), "15")
    assert out["status"] == 200 and out["body"] == out["expected"], out  # every byte, in order
    # the server had the first 4 KiB while the client still held the other 32 MiB: not buffered by the proxy
    assert out["first_chunk_seen_early"], out
    req = l7_flow(net, "REQUEST", "POST", "/api/v1/upload")
    assert req["verdict"] == "FORWARDED" and "rules.http[1]" in req["extensions"]["apiary"]["decided_by"]


def test_a_denied_upload_gets_403_and_never_reaches_the_server(net: Net) -> None:
    out = client(net, "upload", "/api/v1/elsewhere", str(64 << 10), "2")
    assert out["status"] == 403 and out["body"] == "Access denied\r\n", out
    assert not out["first_chunk_seen_early"], out  # the server never saw a byte of it
    assert l7_flow(net, "REQUEST", "POST", "/api/v1/elsewhere")["verdict"] == "DROPPED"


def test_a_large_chunked_response_is_streamed_to_the_client_whole(net: Net) -> None:
    out = client(net, "download", "/api/v1/download", str(BIG))
    assert out["status"] == 200 and out["length"] == BIG and out["sha256_ok"], out
    # the client read the first 64 KiB while the server still held the rest (until the client said go)
    assert out["first_bytes_early"], out
    assert l7_flow(net, "RESPONSE", "GET", "/api/v1/download")["l7"]["http"]["code"] == 200


def test_a_backend_that_resets_gives_502_and_the_proxy_lives_on(net: Net) -> None:
    out = client(net, "get", "/api/v1/reset")
    assert out["status"] == 502, out  # HAProxy's answer for a server that closed without a response
    assert l7_flow(net, "RESPONSE", "GET", "/api/v1/reset")["l7"]["http"]["code"] == 502
    assert client(net, "get", "/api/v1/after")["status"] == 200
