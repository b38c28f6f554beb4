"""HAProxy configuration for the compiled L7 HTTP entries (pure: text and pattern files, no I/O).

One transparent listener on 127.0.0.1:<port> takes every connection the datapath redirects (BPF TPROXY:
the accepted socket's local address is the connection's original destination). Each L7 entry of the
compiled policy becomes a *filter*: which connections it applies to (the endpoint's address as destination
for ingress, as source for egress; the port or port range; the peer's identity, looked up by address in the
identity map the agent keeps up to date through the runtime API) and its HTTP rules. A request passes when
each side that has filters applying to it (the client's egress, the server's ingress: Cilium's two
judgements) has one with a matching rule: a side's filters are ORed, as Envoy's rules of one port are (an
L3-wildcard rule's HTTP rules add to a peer's own); otherwise the proxy answers 403 ``Access denied\\r\\n``
as Cilium's Envoy filter does, and the connection stays open for the next request.

The proxy connects to a local endpoint from the client's own address (``usesrc clientip``: an
``IP_TRANSPARENT`` socket), so the server and its ingress policy see the client; the datapath marks the
server's replies (conntrack knows the proxy's connection) and the ip rule delivers them to that socket.
To any other destination it connects from the host's address.

Such a transparent server connection belongs to its client connection (``http-reuse never``: kept for the
client's next request, closed with it). HAProxy 2.6 keys an idle server connection by its source address
*and port*, the client's: with the default ``http-reuse safe`` a connection whose client has gone could
never serve anyone else, yet it sat in the server's idle pool, and with that pool above HAProxy's estimate
of the connections needed, every new connection was closed right after its response (with an RST): one
new transparent connect per request from then on (wrk from an endpoint: 6,440 connects for ~7,000 requests
in 3 s; 7,779 req/s in a first run, 2,141 in the next).

Regexes are anchored (whole-string match, as Cilium's Envoy config does) and written to pattern files, so no
user text is ever spliced into the configuration itself; the access log names the filter and rule by number.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from apiary.policy.types import INGRESS, HttpRule, PolicyKey, RuleRef

DENIED_BODY = "Access denied\r\n"  # cilium/proxy l7policy.cc: denied_403_body_ + "\r\n"

# the access log: one JSON object per request (every value a string; "-" when unset)
_LOG_FIELDS = {
    "client": "%ci", "cport": "%cp", "server": "%fi", "sport": "%fp", "status": "%ST", "tr": "%Tr",
    "ta": "%Ta", "ts": "%Ts", "ms": "%ms", "term": "%ts", "method": "%[var(txn.m),json(utf8s)]",
    "url": "%[var(txn.uri),json(utf8s)]", "host": "%[var(txn.host),json(utf8s)]",
    "version": "%[var(txn.ver)]", "rule": "%[var(txn.by)]", "deny": "%[var(txn.deny)]",
    "headers": "%[var(txn.hdrs),json(utf8s)]",
}
LOG_FORMAT = "{" + ",".join(f'"{k}":"{v}"' for k, v in _LOG_FIELDS.items()) + "}"


@dataclass(frozen=True)
class Filter:
    """One L7 entry as the proxy sees it: ``rules`` index into :attr:`ProxyConfig.rules`."""

    key: PolicyKey
    address: str  # the endpoint's IPv4
    rules: tuple[int, ...]


@dataclass
class ProxyConfig:
    text: str  # haproxy.cfg
    files: dict[str, str] = field(default_factory=dict)  # pattern file name -> content
    rules: list[HttpRule] = field(default_factory=list)  # logged "rule" n (1-based) = rules[n - 1]
    filters: list[Filter] = field(default_factory=list)  # logged "deny" n (1-based) = filters[n - 1]
    sources: dict[str, tuple[int, str]] = field(default_factory=dict)  # pattern file -> (rule n, its field)


def ids_map(ipcache: Mapping[str, int]) -> dict[str, str]:
    """The identity map's content: prefix -> identity (map_ip finds the longest prefix)."""
    return {prefix: str(ident) for prefix, ident in ipcache.items()}


def anchored(regex: str) -> str:
    return f"^(?:{regex})$"


def build(l7: Mapping[PolicyKey, tuple[HttpRule, ...]], addresses: Mapping[int, str], *, port: int,
          state_dir: str) -> ProxyConfig:
    """``addresses``: endpoint id -> IPv4. Entries of endpoints without an address are left out (their
    traffic never reaches the proxy)."""
    cfg = ProxyConfig("")
    d = state_dir.rstrip("/")
    lines: list[str] = []

    def pattern(text: str, rule: int, what: str) -> str:
        name = f"p{len(cfg.files)}.pat"
        cfg.files[name] = text + "\n"
        cfg.sources[name] = (rule, what)
        return f"{d}/{name}"

    groups: dict[tuple[int, int], int] = {}  # (endpoint, direction) -> its number
    denies: list[str] = []
    for key in sorted(l7):
        addr = addresses.get(key.ep_id)
        if not addr:
            continue
        n = len(cfg.filters) + 1
        g = groups.setdefault((key.ep_id, key.direction), len(groups) + 1)
        first = key.port
        last = key.port | ((1 << (16 - key.port_prefix)) - 1)
        ports = str(first) if first == last else f"{first}:{last}"
        if key.direction == INGRESS:
            cond = f"{{ dst {addr} }} {{ dst_port {ports} }}"
            peer = "txn.sid"
        else:
            cond = f"{{ src {addr} }} {{ dst_port {ports} }}"
            peer = "txn.did"
        if key.identity:
            cond += f" {{ var({peer}) -m int {key.identity} }}"
        lines.append(f"    http-request set-var(txn.f{n}) bool(1) if {cond}")
        idx = []
        for rule in l7[key]:
            cfg.rules.append(rule)
            r = len(cfg.rules)
            idx.append(r)
            conds = [f"{{ var(txn.f{n}) -m bool }}", f"!{{ var(txn.ok{n}) -m found }}"]
            if rule.method:
                conds.append(f"{{ method -m reg -f {pattern(anchored(rule.method), r, 'method')} }}")
            if rule.path:
                conds.append(f"{{ pathq -m reg -f {pattern(anchored(rule.path), r, 'path')} }}")
            if rule.host:
                conds.append(f"{{ req.fhdr(host) -m reg -f {pattern(anchored(rule.host), r, 'host')} }}")
            for name, value in rule.headers:
                if not value:  # Cilium: no value (or an empty one) asks for the header's presence
                    conds.append(f"{{ req.fhdr_cnt({name}) -m int gt 0 }}")
                elif any(c in value for c in "\r\n\0"):  # no HTTP header value holds these: never matches
                    conds.append("{ always_false }")
                else:  # a pattern file line is not taken as written (leading blanks, '#'): an escaped regex is
                    exact = pattern("^" + re.escape(value) + "$", r, "headers")
                    conds.append(f"{{ req.fhdr({name}) -m reg -f {exact} }}")
            lines.append(f"    http-request set-var(txn.ok{n}) int({r}) if {' '.join(conds)}")
        lines.append(f"    http-request set-var(txn.by) var(txn.ok{n}) if {{ var(txn.ok{n}) -m found }}")
        lines.append(f"    http-request set-var(txn.g{g}) bool(1) if {{ var(txn.ok{n}) -m found }}")
        # judged once every filter of the endpoint's direction has been: one of them allowing is enough
        denies.append(f"    http-request set-var(txn.deny) int({n}) if {{ var(txn.f{n}) -m bool }} "
                      f"!{{ var(txn.g{g}) -m found }}")
        cfg.filters.append(Filter(key, addr, tuple(idx)))
    lines += denies
    deny_body = f"{d}/denied.body"
    cfg.files["denied.body"] = DENIED_BODY
    local = sorted(set(a for a in addresses.values() if a))
    cfg.files["endpoints.lst"] = "".join(f"{a}\n" for a in local)
    cfg.text = "\n".join([
        "# generated by the apiary agent: do not edit",
        "global",
        "    master-worker",
        "    expose-experimental-directives",  # normalize-uri (HAProxy 2.4+) is "experimental" in 2.6
        f"    pidfile {d}/haproxy.pid",
        f"    stats socket {d}/admin.sock mode 600 level admin",
        "    log stdout len 16384 format raw local0",  # the agent's pipe
        "    maxconn 4096",
        "defaults",
        "    mode http",
        "    log global",
        "    option dontlognull",
        "    timeout connect 5s",
        "    timeout client 5m",
        "    timeout server 5m",
        "    timeout http-request 30s",
        "    timeout http-keep-alive 5m",
        "frontend l7http",
        f"    bind 127.0.0.1:{port} transparent",
        f"    log-format '{LOG_FORMAT}'",
        # the path as Cilium's Envoy sees it (--http-normalize-path, on by default): %-encoded unreserved
        # characters decoded, "." and ".." segments resolved, "//" merged, before any rule reads it, and sent
        # so to the server: "/api/v1/../../admin" is judged, and served, as "/admin"
        "    http-request normalize-uri percent-decode-unreserved",
        "    http-request normalize-uri path-strip-dot",
        "    http-request normalize-uri path-strip-dotdot full",
        "    http-request normalize-uri path-merge-slashes",
        # as a string: HAProxy 2.6 keeps a method it has no code for (PATCH, custom) in a variable as OPTIONS
        "    http-request set-var(txn.m) method,concat()",
        "    http-request set-var(txn.uri) pathq",
        "    http-request set-var(txn.host) req.fhdr(host)",
        "    http-request set-var(txn.ver) req.ver",
        "    http-request set-var(txn.hdrs) req.hdrs",
        f"    http-request set-var(txn.sid) src,map_ip({d}/ids.map,0)",
        f"    http-request set-var(txn.did) dst,map_ip({d}/ids.map,0)",
        *lines,
        f"    http-request return status 403 content-type text/plain file {deny_body} if {{ var(txn.deny) -m found }}",
        f"    use_backend client_source if {{ dst -f {d}/endpoints.lst }}",
        "    default_backend original_destination",
        "backend original_destination",
        "    server original 0.0.0.0:0",
        "backend client_source",  # to a local endpoint: from the client's own address (its replies come back)
        "    source 0.0.0.0 usesrc clientip",
        "    http-reuse never",  # one server connection per client connection (see the module's doc)
        "    server original 0.0.0.0:0",
        "",
    ])
    return cfg


def rule_text(rule: HttpRule, refs: list[RuleRef]) -> str:
    """What a flow's ``decided_by`` says of an HTTP rule: the policy and the rule's own path."""
    ref = refs[rule.rule_id] if 0 < rule.rule_id < len(refs) else None
    if ref is None:
        return rule.ref
    where = f"{ref.namespace}/{ref.policy}" if ref.namespace else ref.policy
    return f"{ref.kind} {where} {rule.ref}"
