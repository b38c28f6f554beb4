"""`apiary policy explain --http`: the L3/L4 answer followed by what the L7 proxy does with the request (pure)."""

from __future__ import annotations

import textwrap

import pytest
from click.testing import CliRunner

from apiary.cli.main import cli
from apiary.policy.compile import EndpointSpec, compile_policies
from apiary.policy.explain import (
    Explanation,
    HttpRequest,
    endpoint_peer,
    explain,
    http_decision_json,
    parse_http_request,
)
from apiary.policy.load import load_policies
from apiary.policy.types import CompiledPolicy

NS = "default"
FRONTEND = EndpointSpec(1, "frontend", NS, {"app": "frontend"}, "10.200.0.10")
BACKEND = EndpointSpec(2, "backend", NS, {"app": "backend"}, "10.200.0.20")
OTHER = EndpointSpec(3, "other", NS, {"app": "other"}, "10.200.0.30")
SEED = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l7-http-policy}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: backend}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: "/api/v1/.*"}
        - {method: POST, path: /api/v1/orders, headers: ["Content-Type: application/json"]}
"""
EGRESS_L7 = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: backend-out}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  egress:
  - toEndpoints: [{matchLabels: {app: frontend}}]
    toPorts:
    - ports: [{port: "8080", endPort: 8090, protocol: TCP}]
      rules: {http: [{method: GET, host: "api\\\\.example(:8080)?"}]}
"""


def compiled(*docs: str) -> CompiledPolicy:
    return compile_policies([p for d in docs for p in load_policies(textwrap.dedent(d))], [FRONTEND, BACKEND, OTHER])


def ask(c: CompiledPolicy, method: str, path: str, *headers: str, src: EndpointSpec = BACKEND,
        port: int = 8080) -> Explanation:
    return explain(c, endpoint_peer(c, src), endpoint_peer(c, FRONTEND), port, "TCP",
                   http=parse_http_request(method, path, headers))


def test_allowed_request_names_the_rule() -> None:
    c = compiled(SEED)
    x = ask(c, "GET", "/api/v1/items?x=1")
    assert x.verdict == "ALLOWED" and x.http is not None and x.http.verdict == "allowed"
    assert x.sentence == (
        "ALLOWED: egress of default/backend not enforced; ingress of default/frontend allowed by "
        "CiliumNetworkPolicy default/l7-http-policy ingress[0]; HTTP GET /api/v1/items?x=1 allowed by the L7 "
        "proxy: CiliumNetworkPolicy default/l7-http-policy ingress[0].toPorts[0].rules.http[0]")
    post = ask(c, "POST", "/api/v1/orders", "content-type: application/json")  # header names: any case
    assert post.verdict == "ALLOWED" and post.http and post.http.rules[0].ref.endswith("rules.http[1]")


@pytest.mark.parametrize(("method", "path", "headers"), [
    ("DELETE", "/api/v1/items", ()),
    ("POST", "/api/v1/orders", ("Content-Type: text/plain",)),
    ("POST", "/api/v1/orders", ()),
    ("GET", "/admin", ()),
    ("GET", "/x/api/v1/items", ()),  # anchored: the whole path must match
])
def test_denied_request_is_the_proxys_403_naming_the_policy(method: str, path: str, headers: tuple[str, ...]) -> None:
    c = compiled(SEED)
    x = ask(c, method, path, *headers)
    assert x.verdict == "DENIED" and x.http is not None and x.http.verdict == "denied"
    assert x.sentence == (
        f"DENIED by the L7 proxy (HTTP 403 Access denied) at ingress of default/frontend: HTTP {method} {path} "
        "matches no HTTP rule of CiliumNetworkPolicy default/l7-http-policy ingress[0].toPorts[0].rules.http")
    assert http_decision_json(x.http, c)["denied_by"] == [
        "CiliumNetworkPolicy default/l7-http-policy ingress[0].toPorts[0].rules.http[0]",
        "CiliumNetworkPolicy default/l7-http-policy ingress[0].toPorts[0].rules.http[1]"]


def test_the_path_is_judged_normalized_and_the_answer_says_so() -> None:
    c = compiled(SEED)
    x = ask(c, "GET", "/api/v1/%61dmin/../items")  # as the proxy sees it: /api/v1/items
    assert x.verdict == "ALLOWED" and x.http is not None
    assert "HTTP GET /api/v1/%61dmin/../items (judged as /api/v1/items, normalized as the proxy does) allowed" in (
        x.sentence)
    y = ask(c, "GET", "/api/v1/../../admin")  # never above the root: /admin, which no rule allows
    assert y.verdict == "DENIED" and "(judged as /admin, normalized as the proxy does) matches no HTTP rule" in (
        y.sentence)
    assert "judged as" not in ask(c, "GET", "/api/v1/items").sentence  # already normal: said once


def test_l4_denied_and_not_proxied_connections() -> None:
    c = compiled(SEED)
    x = ask(c, "GET", "/api/v1/items", src=OTHER)  # no rule for this peer: never reaches the proxy
    assert x.verdict == "DENIED" and x.http is None and "by default deny" in x.sentence
    back = explain(c, endpoint_peer(c, FRONTEND), endpoint_peer(c, BACKEND), 8080,
                   http=HttpRequest("DELETE", "/"))
    assert back.verdict == "ALLOWED" and back.http and back.http.verdict == "not-proxied"
    assert back.sentence.endswith("; HTTP DELETE / is not inspected (no L7 rule for this connection)")


def test_egress_rule_with_host_and_port_range_and_both_sides_judge() -> None:
    c = compiled(EGRESS_L7)
    ok = ask(c, "GET", "/", "Host: api.example:8080", port=8085)
    assert ok.verdict == "ALLOWED" and ok.http and "egress[0].toPorts[0].rules.http[0]" in ok.sentence
    no_host = ask(c, "GET", "/", port=8085)
    assert no_host.verdict == "DENIED" and "at egress of default/backend" in no_host.sentence
    both = compiled(EGRESS_L7, SEED)  # the client's egress and the server's ingress both judge
    assert ask(both, "GET", "/api/v1/x", "Host: api.example").verdict == "ALLOWED"
    x = ask(both, "GET", "/api/v1/x", "Host: other")
    assert x.verdict == "DENIED" and "backend-out" in x.sentence
    y = ask(both, "GET", "/nope", "Host: api.example")
    assert y.verdict == "DENIED" and "l7-http-policy" in y.sentence


L3_WILDCARD_L7 = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: public}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  ingress:
  - toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules: {http: [{method: GET, path: /public}]}
"""


def test_an_l3_wildcard_rules_http_rules_add_to_a_peers_own() -> None:
    # Envoy ORs the rules of one port: the backend may do what the seed allows it and what everyone may do
    c = compiled(SEED, L3_WILDCARD_L7)
    for path, policy in (("/api/v1/items", "l7-http-policy"), ("/public", "public")):
        x = ask(c, "GET", path)
        assert x.verdict == "ALLOWED" and x.http and x.http.verdict == "allowed", x.sentence
        assert f"default/{policy} ingress[0].toPorts[0].rules.http[0]" in x.sentence
    assert ask(c, "GET", "/public", src=OTHER).verdict == "ALLOWED"
    assert ask(c, "GET", "/api/v1/items", src=OTHER).verdict == "DENIED"  # not the backend's rules
    x = ask(c, "DELETE", "/public")
    assert x.verdict == "DENIED" and x.http and {r.ref for r in x.http.denied_by} == {
        "ingress[0].toPorts[0].rules.http[0]", "ingress[0].toPorts[0].rules.http[1]"}
    assert "default/l7-http-policy" in x.sentence and "default/public" in x.sentence


def test_bad_requests_name_the_part() -> None:
    for args, says in ((("GE T", "/"), "http method"), (("GET", "api"), "http path"),
                       (("GET", "/", ("NoColon",)), "http header")):
        with pytest.raises(ValueError, match=says):
            parse_http_request(*args)  # type: ignore[arg-type]
    c = compiled(SEED)
    with pytest.raises(ValueError, match="needs a TCP port"):
        explain(c, endpoint_peer(c, BACKEND), endpoint_peer(c, FRONTEND), 8080, "UDP", http=HttpRequest("GET", "/"))


def test_cli_needs_port_and_http_for_headers() -> None:  # refused before any agent is asked
    base = ["--socket", "/nonexistent/apiary.sock", "policy", "explain", "--from", "a/b", "--to", "c/d"]
    r = CliRunner().invoke(cli, [*base, "--http", "GET", "/"])
    assert r.exit_code == 2 and "--http needs --port" in r.output, r.output
    r = CliRunner().invoke(cli, [*base, "--port", "80", "--http-header", "A: b"])
    assert r.exit_code == 2 and "--http-header needs --http METHOD PATH" in r.output, r.output
