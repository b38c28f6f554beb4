"""L7 HTTP rules: loading (what is refused and why), compiling into L7 entries with their HTTP rules (Cilium's
combination with L3 peers and ports), the HAProxy configuration built from them, and the Hubble L7 flows and
filters of a proxied exchange."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest
from hubble_flow_helpers import FakeDirectory, builder  # noqa: I001

from apiary.observe.hubble.builder import l7_response
from apiary.observe.hubble.filters import FlowFilter
from apiary.observe.hubble.l7 import HttpExchange, parse_headers, url_of
from apiary.policy.compile import EndpointSpec, compile_policies
from apiary.policy.load import PolicyError, load_policies
from apiary.policy.models import split_header
from apiary.policy.types import INGRESS, PROTO_TCP, HttpRule, PolicyKey
from apiary.sensors.l7proxy.config import DENIED_BODY, ProxyConfig, anchored, build, rule_text
from apiary.sensors.l7proxy.haproxy import haproxy_binary
from apiary.testing.seed import SEED_L7_HTTP_POLICY

NS = "default"
EPS = [
    EndpointSpec(1, "frontend", NS, {"app": "frontend"}, "10.200.0.10"),
    EndpointSpec(2, "backend", NS, {"app": "backend"}, "10.200.0.20"),
    EndpointSpec(3, "other", NS, {"app": "other"}, "10.200.0.30"),
]
SEED = SEED_L7_HTTP_POLICY


def compiled(*docs: str):  # type: ignore[no-untyped-def]
    policies = [p for d in docs for p in load_policies(textwrap.dedent(d))]
    return compile_policies(policies, EPS)


def backend_id(c) -> int:  # type: ignore[no-untyped-def]
    return c.ipcache["10.200.0.20/32"]


def test_seed_policy_compiles_to_one_l7_entry_with_two_rules() -> None:
    c = compiled(SEED)
    key = PolicyKey(1, INGRESS, backend_id(c), PROTO_TCP, 8080, 16)
    assert c.endpoints[1].entries[key].l7 and not c.endpoints[1].entries[key].deny
    rules = c.l7[key]
    assert [(r.method, r.path, r.headers) for r in rules] == [
        ("GET", "/api/v1/.*", ()), ("POST", "/api/v1/orders", (("Content-Type", "application/json"),))]
    assert [r.ref for r in rules] == ["ingress[0].toPorts[0].rules.http[0]", "ingress[0].toPorts[0].rules.http[1]"]
    assert rule_text(rules[1], c.rules) == \
        "CiliumNetworkPolicy default/l7-http-policy ingress[0].toPorts[0].rules.http[1]"
    assert len(c.endpoints[1].entries) == 1  # nothing else is allowed (default deny)


PLAIN_SAME_PORT = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: plain}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: backend}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
"""
PLAIN_L3 = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: plain-l3}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: backend}}]
"""
PLAIN_OTHER_PEER = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: plain-other}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: other}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
"""


@pytest.mark.parametrize("plain", [PLAIN_SAME_PORT, PLAIN_L3], ids=["same-port", "l3-only"])
def test_plain_allow_of_same_peer_voids_l7(plain: str) -> None:
    for docs in ((SEED, plain), (plain, SEED)):  # whatever the order
        c = compiled(*docs)
        key = PolicyKey(1, INGRESS, backend_id(c), PROTO_TCP, 8080, 16)
        assert c.endpoints[1].entries[key].l7  # still proxied (visible) ...
        void = [r for r in c.l7[key] if (r.method, r.path, r.host, r.headers) == (None, None, None, ())]
        assert void and c.rules[void[0].rule_id].policy in ("plain", "plain-l3")  # ... and every request allowed


def test_plain_allow_of_another_peer_keeps_l7() -> None:
    c = compiled(SEED, PLAIN_OTHER_PEER)
    key = PolicyKey(1, INGRESS, backend_id(c), PROTO_TCP, 8080, 16)
    assert all(r.method for r in c.l7[key])
    other = PolicyKey(1, INGRESS, c.ipcache["10.200.0.30/32"], PROTO_TCP, 8080, 16)
    assert not c.endpoints[1].entries[other].l7 and other not in c.l7


def test_empty_http_rule_is_visibility_only_and_deny_wins() -> None:
    c = compiled(SEED.replace("""        - method: "GET"
          path: "/api/v1/.*"
        - method: "POST"
          path: "/api/v1/orders"
          headers:
          - "Content-Type: application/json"
""", "        - {}\n"))
    key = PolicyKey(1, INGRESS, backend_id(c), PROTO_TCP, 8080, 16)
    assert [(r.method, r.path) for r in c.l7[key]] == [(None, None)]
    deny = SEED + """  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: backend}}]
"""
    c = compiled(deny)
    entry = c.endpoints[1].entries[key]
    assert entry.deny and not entry.l7 and key not in c.l7


def test_egress_l7_and_port_range() -> None:
    c = compiled("""\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: egress-l7}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  egress:
  - toEndpoints: [{matchLabels: {app: frontend}}]
    toPorts:
    - ports: [{port: "8080", endPort: 8081, protocol: TCP}]
      rules: {http: [{method: GET, host: "^api\\\\.example$"}]}
    - ports: [{port: "9000", protocol: TCP}]
""")
    l7 = {k: v for k, v in c.l7.items() if k.ep_id == 2}
    assert {(k.port, k.port_prefix) for k in l7} == {(8080, 15)}
    (rules,) = l7.values()
    assert rules[0].ref == "egress[0].toPorts[0].rules.http[0]" and rules[0].host == "^api\\.example$"
    plain = [k for k, e in c.endpoints[2].entries.items() if k.port == 9000]
    assert plain and not c.endpoints[2].entries[plain[0]].l7


@pytest.mark.parametrize(("rule", "path", "why"), [
    ("{headerMatches: [{name: X-A, value: b, mismatch: LOG}]}", "rules.http[0].headerMatches[0].mismatch", "LOG"),
    ("{headerMatches: [{name: X-A, secret: {name: s}}]}", "rules.http[0].headerMatches[0].secret", "secret"),
])
def test_unhonoured_header_matches_are_refused_by_path(rule: str, path: str, why: str) -> None:
    with pytest.raises(PolicyError) as e:
        load_policies(SEED.replace("""        - method: "GET"\n""", f"        - {rule}\n        - method: \"GET\"\n"))
    (msg,) = e.value.messages
    assert msg.startswith(f"unsupported: spec.ingress[0].toPorts[0].{path} (") and why in msg


@pytest.mark.parametrize(("rule", "path"), [
    ('{path: "/a(["}', "spec.ingress[0].toPorts[0].rules.http[0].path"),
    ('{method: "*GET"}', "spec.ingress[0].toPorts[0].rules.http[0].method"),
    ('{headers: ["Bad Header: x"]}', None),  # "Bad" is the name, "Header: x" the value: valid
    ('{headers: ["Bad(: x"]}', "spec.ingress[0].toPorts[0].rules.http[0].headers[0]"),
])
def test_bad_http_rules_name_the_field(rule: str, path: str | None) -> None:
    text = SEED.replace("""        - method: "GET"\n""", f"        - {rule}\n        - method: \"GET\"\n")
    if path is None:
        load_policies(text)
        return
    with pytest.raises(PolicyError) as e:
        load_policies(text)
    assert any(m.startswith(path + ":") for m in e.value.messages), e.value.messages


def test_headers_split_as_cilium_does() -> None:
    assert split_header("Content-Type: application/json") == ("Content-Type", "application/json")
    assert split_header("X-My-Header: true") == ("X-My-Header", "true")
    assert split_header("X-Present") == ("X-Present", None)


def test_haproxy_config(tmp_path: Path) -> None:
    c = compiled(SEED)
    cfg = build(c.l7, {1: "10.200.0.10", 2: "10.200.0.20"}, port=15001, state_dir=str(tmp_path))
    (f,) = cfg.filters.values()
    assert f.address == "10.200.0.10" and f.rules == (1, 2)
    assert "bind 127.0.0.1:15001 transparent" in cfg.text
    # the filter's address, port and peer are pattern files of its slot (the text is a layout of slots)
    assert (cfg.files["b0.f1.addr.lst"], cfg.files["b0.f1.port.lst"], cfg.files["b0.f1.peer.lst"]) == (
        "10.200.0.10\n", "8080\n", f"{backend_id(c)}\n")
    assert (f"{{ dst -f {tmp_path}/b0.f1.addr.lst }} {{ dst_port -f {tmp_path}/b0.f1.port.lst }} "
            f"{{ var(txn.sid) -m int -f {tmp_path}/b0.f1.peer.lst }}") in cfg.text
    assert sorted(v for k, v in cfg.files.items() if k.startswith("b0.r") and v) == sorted(
        ["^(?:GET)$\n", "^(?:/api/v1/.*)$\n", "^(?:POST)$\n", "^(?:/api/v1/orders)$\n", "^application/json$\n"])
    assert cfg.files["denied.body"] == DENIED_BODY == "Access denied\r\n"
    assert "/api/v1" not in cfg.text  # user text only ever in pattern files
    # to a local endpoint the proxy connects from the client's address; anywhere else from the host's
    assert cfg.files["endpoints.lst"] == "10.200.0.10\n10.200.0.20\n"
    # the frontend hands a request to the active buffer's backend (only its rules are evaluated); there, to a
    # local endpoint the proxy connects from the client's address, anywhere else from the host's
    assert "    use_backend judge0 if { var(txn.gen),and(1) -m int 0 }\n    default_backend judge1\n" in cfg.text
    for b in (0, 1):
        backend = cfg.text.split(f"\nbackend judge{b}\n", 1)[1].split("\nbackend ", 1)[0].splitlines()
        assert f"    use-server client_source if {{ dst -f {tmp_path}/endpoints.lst }}" in backend
        assert "    server client_source 0.0.0.0:0 source 0.0.0.0 usesrc clientip" in backend
        assert "    server original_destination 0.0.0.0:0" in backend
        # its server connections stay with their client connection (never pooled, where HAProxy could not
        # reuse them: keyed by the client's port)
        assert "    http-reuse never" in backend
        assert all(f"b{1 - b}." not in line for line in backend)  # only its own buffer's pattern files
    haproxy_loads(cfg, tmp_path, "10.200.0.20/32 257\n")


def haproxy_loads(cfg: ProxyConfig, where: Path, ids: str) -> None:
    """HAProxy itself reads the configuration and its pattern files (when installed)."""
    if haproxy_binary() is None:
        return
    for name, text in cfg.files.items():
        (where / name).write_text(text)
    (where / "ids.map").write_text(ids)
    (where / "haproxy.cfg").write_text(cfg.text)
    r = subprocess.run([str(haproxy_binary()), "-c", "-f", str(where / "haproxy.cfg")], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# the seed's rules for any peer (no fromEndpoints): an L3-wildcard L7 rule on the same port
L3_WILDCARD_L7 = SEED.replace("name: l7-http-policy", "name: public").replace(
    "  - fromEndpoints:\n    - matchLabels:\n        app: backend\n    toPorts:", "  - toPorts:")


def test_filters_of_one_side_are_ored(tmp_path: Path) -> None:
    """The seed's rules for the backend and an L3-wildcard rule on the same port: two filters of the
    frontend's ingress; a request either allows passes (Envoy ORs a port's rules), so the 403 is decided
    after both, on the side's group, never on one filter alone."""
    c = compiled(SEED, L3_WILDCARD_L7)
    cfg = build(c.l7, {1: "10.200.0.10", 2: "10.200.0.20"}, port=15001, state_dir=str(tmp_path))
    assert len(cfg.filters) == 2
    lines = cfg.text.splitlines()
    deny = [i for i, line in enumerate(lines) if "set-var(txn.deny)" in line]
    # two filters and one spare slot in each of the two buffers
    assert [lines[i].split(" if ", 1)[1] for i in deny][:3] == [
        "{ var(txn.f1) -m bool } !{ var(txn.gi) -m found }", "{ var(txn.f2) -m bool } !{ var(txn.gi) -m found }",
        "{ var(txn.f3) -m bool } !{ var(txn.gi) -m found }"]
    first_backend = lines[: lines.index("backend judge1")]
    last_rule = max(i for i, line in enumerate(first_backend) if "set-var(txn.ok" in line)
    assert min(deny) > last_rule
    assert sum("set-var(txn.gi) bool(1) if" in line for line in lines) == 6
    egress = compiled(SEED, L3_WILDCARD_L7, """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: out}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  egress:
  - toPorts: [{ports: [{port: "8080", protocol: TCP}], rules: {http: [{method: GET}]}}]
""")
    cfg = build(egress.l7, {1: "10.200.0.10", 2: "10.200.0.20"}, port=15001, state_dir=str(tmp_path))
    assert "!{ var(txn.ge) -m found }" in cfg.text  # the client's egress is a side of its own: ANDed


def test_header_values_and_presence(tmp_path: Path) -> None:
    """Exact header values go to a pattern file as escaped regexes (a plain line starting with '#' would be
    a comment, leading blanks dropped); headerMatches without a value ask for presence, as in Cilium."""
    c = compiled(SEED.replace('          - "Content-Type: application/json"\n',
                              '          - "X-Id: #42"\n          - "X-Sp:  two"\n'
                              '        - headerMatches: [{name: X-Token}, {name: X-E, value: ""}]\n'))
    cfg = build(c.l7, {1: "10.200.0.10"}, port=15001, state_dir=str(tmp_path))
    pats = sorted(v for v in cfg.files.values() if "#" in v or "two" in v)
    assert pats == ["^\\ two$\n", "^\\#42$\n"], pats
    assert "{ req.fhdr_cnt(X-Token) -m int gt 0 } { req.fhdr_cnt(X-E) -m int gt 0 }" in cfg.text
    assert cfg.sources[next(k for k, v in cfg.files.items() if v == "^\\#42$\n")] == (2, "headers")
    from apiary.policy.explain import HttpRequest, endpoint_peer, explain

    # explain agrees: a headerMatches without a value is a presence match
    third = compiled(SEED.replace("GET", "HEAD").replace('          - "Content-Type: application/json"\n',
                                                          "        - headerMatches: [{name: X-Token}]\n"))
    src, dst = endpoint_peer(third, EPS[1]), endpoint_peer(third, EPS[0])
    assert explain(third, src, dst, 8080, "TCP", http=HttpRequest("GET", "/", (("X-Token", "a"),))).verdict \
        == "ALLOWED"
    assert explain(third, src, dst, 8080, "TCP", http=HttpRequest("GET", "/")).verdict == "DENIED"
    haproxy_loads(cfg, tmp_path, "")


def test_paths_are_normalized_before_the_rules(tmp_path: Path) -> None:
    from apiary.policy.explain import normalize_path

    cfg = build({}, {}, port=15001, state_dir=str(tmp_path))
    lines = cfg.text.splitlines()
    norm = [i for i, line in enumerate(lines) if "normalize-uri" in line]
    assert [lines[i].split("normalize-uri ")[1] for i in norm] == [
        "percent-decode-unreserved", "path-strip-dot", "path-strip-dotdot full", "path-merge-slashes"]
    assert max(norm) < min(i for i, line in enumerate(lines) if "set-var(txn.uri)" in line)
    assert "    expose-experimental-directives" in lines
    # explain's own normalization: HAProxy 2.6's results for these
    for raw, norm_path in (("/api/v1/../../admin", "/admin"), ("/api/v1/%2e%2e/%2E%2E/admin", "/admin"),
                           ("//api//v1/x", "/api/v1/x"), ("/%61pi/v1/x?a=%2e%2e", "/api/v1/x?a=.."),
                           ("/api/v1/./x", "/api/v1/x"), ("/api/v1/%2fx", "/api/v1/%2fx"), ("/a/..", "/"),
                           ("/..", "/"), ("/api/v1/x/../", "/api/v1/"), ("/a?b=/../c", "/a?b=/../c")):
        assert normalize_path(raw) == norm_path, raw


def test_the_listener_is_not_reuseport(tmp_path: Path) -> None:
    """bpf_sk_assign refuses a SO_REUSEPORT socket before Linux 6.5: on Debian 12's 6.1 every redirected SYN
    was dropped (SOCKET_ASSIGN_FAILED) while HAProxy listened with its default SO_REUSEPORT."""
    lines = build({}, {}, port=15001, state_dir=str(tmp_path)).text.splitlines()
    assert lines.index("    noreuseport") < lines.index("defaults")


def test_anchoring() -> None:
    import re

    assert re.fullmatch(anchored("GET|POST"), "POST") and not re.search(anchored("/api"), "/api/x")


REC = {"client": "10.200.0.20", "cport": "40000", "server": "10.200.0.10", "sport": "8080", "method": "GET",
       "url": "/api/v1/x?a=1", "host": "frontend:8080", "version": "1.1", "status": "200", "tr": "3"}


def exchange(allowed: bool) -> HttpExchange:
    return HttpExchange("10.200.0.20", 40000, "10.200.0.10", 8080, "GET", url_of(REC), "HTTP/1.1",
                        parse_headers("Host: frontend:8080\r\nX-A: b\r\n"), 200 if allowed else 0, 3_000_000,
                        1_700_000_000_000_000_000, allowed, True, "CiliumNetworkPolicy default/p ingress[0]")


def test_a_denied_request_carries_its_403_and_flows_name_the_service() -> None:
    from dataclasses import replace

    from apiary.observe.hubble.services import ServiceTable
    from apiary.services.backends import Backend, BackendState, Frontend

    b = builder()
    denied = l7_response(b, replace(exchange(False), status=403), response=False)["flow"]
    assert denied["verdict"] == "DROPPED" and denied["l7"]["http"]["code"] == 403
    resp = {"flow": denied}
    assert FlowFilter.from_args([("http-status", "4+")]).matches(resp)  # `observe --http-status 4+` finds it
    assert "destination_service" not in denied  # no service table
    b.services = ServiceTable([Frontend("shop/web", "", "10.96.0.7", 80, "TCP", "ClusterIP",
                                        (Backend("10.200.0.10", 8080, "TCP", BackendState.ACTIVE),))])
    req = l7_response(b, exchange(True), response=False)["flow"]  # to the backend a VIP was translated to
    assert req["destination_service"] == {"name": "web", "namespace": "shop"} and "source_service" not in req
    keys = list(req)
    assert keys.index("event_type") < keys.index("destination_service") < keys.index("traffic_direction")
    back = l7_response(b, exchange(True), response=True)["flow"]
    assert back["source_service"] == {"name": "web", "namespace": "shop"}


def test_l7_flows() -> None:
    b = builder()
    req = l7_response(b, exchange(True), response=False)["flow"]
    assert req["Type"] == "L7" and req["event_type"] == {"type": 129} and req["verdict"] == "FORWARDED"
    assert req["l7"] == {"type": "REQUEST", "http": {
        "method": "GET", "url": "http://frontend:8080/api/v1/x?a=1", "protocol": "HTTP/1.1",
        "headers": [{"key": "Host", "value": "frontend:8080"}, {"key": "X-A", "value": "b"}]}}
    assert req["Summary"] == "HTTP/1.1 GET http://frontend:8080/api/v1/x?a=1"
    assert req["traffic_direction"] == "INGRESS" and req["IP"]["source"] == "10.200.0.20"
    resp = l7_response(b, exchange(True), response=True)["flow"]
    assert resp["l7"]["type"] == "RESPONSE" and resp["l7"]["latency_ns"] == "3000000"
    assert resp["l7"]["http"]["code"] == 200 and resp["IP"]["source"] == "10.200.0.10" and resp["is_reply"]
    assert resp["Summary"] == "HTTP/1.1 200 3ms (GET http://frontend:8080/api/v1/x?a=1)"
    denied = l7_response(b, exchange(False), response=False)["flow"]
    assert denied["verdict"] == "DROPPED" and denied["extensions"]["apiary"]["decided_by"].endswith("ingress[0]")
    assert "destination_names" not in req and "source_names" not in resp


class NamedDirectory(FakeDirectory):
    def names_of(self, ip: str) -> list[str]:
        return ["api.example.com"] if ip == "10.200.0.10" else []


def test_l7_flows_name_a_learned_destination() -> None:
    """An HTTP request to an address the DNS proxy learned (toFQDNs) names it, as Hubble's L7 parser does:
    the compact line shows the name and --to-fqdn selects the flow."""
    b = builder(NamedDirectory())
    req = l7_response(b, exchange(True), response=False)["flow"]
    resp = l7_response(b, exchange(True), response=True)["flow"]
    assert req["destination_names"] == ["api.example.com"] and "source_names" not in req
    assert resp["source_names"] == ["api.example.com"] and "destination_names" not in resp
    to_fqdn = FlowFilter.from_args([("to-fqdn", "*.example.com")])
    assert to_fqdn.matches(l7_response(b, exchange(True), response=False))
    assert not to_fqdn.matches(l7_response(builder(), exchange(True), response=False))


@pytest.mark.parametrize(("args", "expect"), [
    (["--http-status", "200"], [False, True, False]),
    (["--http-status", "2+"], [False, True, False]),
    (["--http-status", "4+"], [False, False, False]),
    (["--http-method", "get"], [True, True, True]),
    (["--http-path", "^/api/v1/x$"], [True, True, True]),
    (["--http-url", "a=1"], [True, True, True]),
    (["--protocol", "http"], [True, True, True]),
])
def test_http_filters(args: list[str], expect: list[bool]) -> None:
    b = builder()
    flows = [l7_response(b, exchange(True), response=False), l7_response(b, exchange(True), response=True),
             l7_response(b, exchange(False), response=False)]
    f = FlowFilter.from_args([(args[0], args[1])])
    assert [f.matches(x) for x in flows] == expect


def test_http_filter_values_are_checked() -> None:
    for bad in (("--http-status", "2xx"), ("--http-path", "(")):
        with pytest.raises(ValueError):
            FlowFilter.from_args([bad])


def test_unanchored_rule_text_fallback() -> None:
    assert rule_text(HttpRule(99, "ingress[0]"), []) == "ingress[0]"


def test_the_readme_example_file_is_the_seed_policy() -> None:
    """`apiary policy apply -f examples/l7-http-policy.yaml` (README) applies the seed's policy, byte for byte."""
    shipped = Path(__file__).resolve().parents[2] / "examples" / "l7-http-policy.yaml"
    assert shipped.read_text() == SEED_L7_HTTP_POLICY
    assert load_policies(shipped.read_text())[0].metadata.name == "l7-http-policy"


@pytest.mark.skipif(haproxy_binary() is None, reason="haproxy not installed")
def test_rules_haproxy_cannot_load_are_refused_before_the_reload(tmp_path: Path) -> None:
    """A regex Python accepts but HAProxy's PCRE does not (``(?u)``): ``haproxy -c`` on the new rules, apart,
    names the rule and field; the running configuration and its pattern files are left as they were."""
    from apiary.sensors.l7proxy.haproxy import ConfigError, HAProxy

    proxy = HAProxy(tmp_path, "unit-l7check", tmp_path / "cg", port=15001)
    proxy.dir.mkdir()
    good = compiled(SEED)
    proxy.update(good.l7, {1: "10.200.0.10"}, good.ipcache)  # not running: written (checked first)
    before = {p.name: p.read_text() for p in proxy.dir.iterdir() if p.is_file()}
    bad = compiled(SEED.replace('path: "/api/v1/orders"', 'path: "(?u)/api/v1/orders"'))
    with pytest.raises(ConfigError) as e:
        proxy.update(bad.l7, {1: "10.200.0.10"}, bad.ipcache)
    assert e.value.rule is not None and e.value.rule.ref == "ingress[0].toPorts[0].rules.http[1]"
    assert e.value.field == "path" and "regular expression" in str(e.value), str(e.value)
    assert {p.name: p.read_text() for p in proxy.dir.iterdir() if p.is_file()} == before
    assert tuple(proxy.config.rules.values()) == list(good.l7.values())[0]
