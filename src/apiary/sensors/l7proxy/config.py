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
The text is a layout of filter and rule slots, twice (two buffers, each a backend; ``gen.map`` names the one
the frontend hands requests to, so only its rules are evaluated): each filter's address, ports and peer are
pattern files too, so a change that fits the layout is new files for the idle buffer and a flip, which the
runtime API does without a reload (see :func:`build`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from apiary.policy.types import INGRESS, HttpRule, PolicyKey, RuleRef

DENIED_BODY = "Access denied\r\n"  # cilium/proxy l7policy.cc: denied_403_body_ + "\r\n"

# the access log, one line per request: LOG_MARK, then what the agent reads of every request at once (the
# verdict's numbers and HAProxy's termination state, "-" when unset; never a space in them), then a JSON
# object (every value a string; "-" when unset) parsed only when the request's flows are first read
LOG_MARK = "ap1"
LOG_HEAD = ("deny", "gen", "rule_e", "rule_i", "term")
_LOG_HEAD_FORMAT = ("%[var(txn.deny)]", "%[var(txn.gen)]", "%[var(txn.bye)]", "%[var(txn.byi)]", "%ts")
_LOG_FIELDS = {
    "client": "%ci", "cport": "%cp", "server": "%fi", "sport": "%fp", "status": "%ST", "tr": "%Tr",
    "ta": "%Ta", "ts": "%Ts", "ms": "%ms", "method": "%[var(txn.m),json(utf8s)]",
    "url": "%[var(txn.uri),json(utf8s)]", "host": "%[var(txn.host),json(utf8s)]",
    "version": "%[var(txn.ver)]", "headers": "%[var(txn.hdrs),json(utf8s)]",
}
LOG_FORMAT = " ".join((LOG_MARK, *_LOG_HEAD_FORMAT)) + " {" + ",".join(
    f'"{k}":"{v}"' for k, v in _LOG_FIELDS.items()) + "}"


def log_line(head: Mapping[str, str], body: Mapping[str, str]) -> bytes:
    """A record as HAProxy writes it with LOG_FORMAT (for tests of the reader)."""
    return " ".join((LOG_MARK, *(head.get(k) or "-" for k in LOG_HEAD))).encode() + b" " + json.dumps(
        body, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Filter:
    """One L7 entry as the proxy sees it: ``rules`` are the numbers the access log names its rules by."""

    key: PolicyKey
    address: str  # the endpoint's IPv4
    rules: tuple[int, ...]


@dataclass(frozen=True)
class RuleShape:
    """What of an HTTP rule the configuration's text fixes; its regexes and values live in pattern files."""

    path: bool
    host: bool
    headers: tuple[tuple[str, bool], ...] = ()  # (name, has a value: matched from a file; else presence)


@dataclass(frozen=True)
class SlotShape:
    """A filter's place in the text: its side and its rule slots (an unused one has an empty method file)."""

    direction: int
    rules: tuple[RuleShape, ...]


@dataclass
class ProxyConfig:
    text: str  # haproxy.cfg
    files: dict[str, str] = field(default_factory=dict)  # pattern file name -> content (both buffers)
    rules: dict[int, HttpRule] = field(default_factory=dict)  # logged "rule_e"/"rule_i" n -> its rule
    filters: dict[int, Filter] = field(default_factory=dict)  # logged "deny" n -> its filter
    sources: dict[str, tuple[int, str]] = field(default_factory=dict)  # pattern file -> (rule n, its field)
    layout: tuple[SlotShape, ...] = ()
    active: int = 0  # the buffer the requests are judged by: epoch & 1
    epoch: int = 0  # gen.map's "active": one more at each flip, logged with each request (its numbers' meaning)
    slots: dict[PolicyKey, int] = field(default_factory=dict)  # entry -> its slot in the active buffer

    def buffer_files(self, buffer: int) -> dict[str, str]:
        mark = f"b{buffer}."
        return {k: v for k, v in self.files.items() if k.startswith(mark)}

    def buffer_filters(self) -> dict[int, Filter]:
        """The active buffer's filters (``filters`` also keeps the other buffer's, for records in flight)."""
        size = len(self.layout)
        return {n: f for n, f in self.filters.items() if (n - 1) // size == self.active}

    def buffer_rules(self) -> dict[int, HttpRule]:
        size = sum(len(s.rules) for s in self.layout)
        return {n: r for n, r in self.rules.items() if (n - 1) // size == self.active}


def ids_map(ipcache: Mapping[str, int]) -> dict[str, str]:
    """The identity map's content: prefix -> identity (map_ip finds the longest prefix)."""
    return {prefix: str(ident) for prefix, ident in ipcache.items()}


def anchored(regex: str) -> str:
    return f"^(?:{regex})$"


def shape(rule: HttpRule) -> RuleShape:
    return RuleShape(bool(rule.path), bool(rule.host), tuple((n, bool(v)) for n, v in rule.headers))


def _assign(rules: tuple[HttpRule, ...], slot: SlotShape) -> list[int] | None:
    """Each rule's rule slot in ``slot`` (one of its own shape), or None when they do not all fit."""
    free = list(range(len(slot.rules)))
    out = []
    for rule in rules:
        want = shape(rule)
        j = next((j for j in free if slot.rules[j] == want), None)
        if j is None:
            return None
        free.remove(j)
        out.append(j)
    return out


Entries = list[tuple[PolicyKey, str, tuple[HttpRule, ...]]]


def _fit(entries: Entries, previous: ProxyConfig) -> dict[PolicyKey, tuple[int, list[int]]] | None:
    """The entries placed in the previous layout (an entry keeps its slot where it still fits), or None."""
    layout, taken = previous.layout, set()
    placed: dict[PolicyKey, tuple[int, list[int]]] = {}
    for keep in (True, False):
        for key, _, rules in entries:
            if key in placed:
                continue
            order = [previous.slots[key]] if keep and key in previous.slots else [] if keep else range(len(layout))
            for i in order:
                if i in taken or layout[i].direction != key.direction:
                    continue
                got = _assign(rules, layout[i])
                if got is not None:
                    placed[key] = (i, got)
                    taken.add(i)
                    break
    return placed if len(placed) == len(entries) else None


def _layout(entries: Entries) -> tuple[tuple[SlotShape, ...], dict[PolicyKey, tuple[int, list[int]]]]:
    """A new layout with room to change: each filter gets one spare rule slot of each shape it uses, and
    each side in use one spare filter slot (one rule slot of each shape the side uses), so the usual edits
    (a regex, one rule more or less, a peer, a port, one endpoint more) change pattern files only."""
    slots: list[SlotShape] = []
    placed: dict[PolicyKey, tuple[int, list[int]]] = {}
    for key, _, rules in entries:
        shapes = [shape(r) for r in rules]
        spare = list(dict.fromkeys(shapes)) or [RuleShape(False, False)]
        slot = SlotShape(key.direction, tuple(shapes + spare))
        placed[key] = (len(slots), list(range(len(shapes))))
        slots.append(slot)
    for direction in sorted({s.direction for s in slots}):  # one rule slot of each shape the side uses
        kinds = dict.fromkeys(r for s in slots if s.direction == direction for r in s.rules)
        slots.append(SlotShape(direction, tuple(kinds)))
    return tuple(slots), placed


def build(l7: Mapping[PolicyKey, tuple[HttpRule, ...]], addresses: Mapping[int, str], *, port: int,
          state_dir: str, previous: ProxyConfig | None = None) -> ProxyConfig:
    """``addresses``: endpoint id -> IPv4. Entries of endpoints without an address are left out (their
    traffic never reaches the proxy).

    The text holds two buffers of the same filter and rule slots; ``gen.map`` says which one judges the
    requests. When the entries fit ``previous``'s layout the text stays the same: the other buffer gets the
    new pattern files and becomes the active one (the runtime API loads them and flips ``gen.map``: no
    reload, no connection closed). Otherwise a new layout, its first buffer active (a reload)."""
    d = state_dir.rstrip("/")
    entries: Entries = [(k, addresses[k.ep_id], l7[k]) for k in sorted(l7) if addresses.get(k.ep_id)]
    placed = _fit(entries, previous) if previous is not None and previous.layout else None
    if placed is not None and previous is not None:
        for active in (previous.active, 1 - previous.active):
            epoch = previous.epoch + (active != previous.active)
            cfg = _fill(ProxyConfig(previous.text, layout=previous.layout, active=active, epoch=epoch), entries,
                        placed)
            if active == previous.active and cfg.buffer_files(active) != previous.buffer_files(active):
                continue  # something to load: into the other buffer, which then becomes the active one
            # the other buffer's files stay, and its numbers' meanings (its records may be in flight)
            cfg.files.update(previous.buffer_files(1 - active))
            f_size, r_size = len(cfg.layout), sum(len(s.rules) for s in cfg.layout)
            cfg.rules.update({n: r for n, r in previous.rules.items() if (n - 1) // r_size != active})
            cfg.filters.update({n: f for n, f in previous.filters.items() if (n - 1) // f_size != active})
            return _shared(cfg, addresses)
    layout, placed = _layout(entries)
    epoch = (previous.epoch // 2 + 1) * 2 if previous is not None else 0  # even: buffer 0 judges
    cfg = ProxyConfig("", layout=layout, epoch=epoch)
    empty = ProxyConfig("", layout=layout, active=1)
    _fill(cfg, entries, placed)
    _fill(empty, [], {})
    cfg.files.update(empty.files)
    cfg.text = _text(layout, port, d)
    return _shared(cfg, addresses)


def _numbers(layout: tuple[SlotShape, ...], buffer: int) -> tuple[list[int], list[int]]:
    """Filter number of each slot, and the number of each slot's first rule, in ``buffer``."""
    n_rules = sum(len(s.rules) for s in layout)
    firsts, r = [], buffer * n_rules + 1
    for s in layout:
        firsts.append(r)
        r += len(s.rules)
    return [buffer * len(layout) + i + 1 for i in range(len(layout))], firsts


def _fill(cfg: ProxyConfig, entries: Entries, placed: dict[PolicyKey, tuple[int, list[int]]]) -> ProxyConfig:
    """The active buffer's pattern files: every slot's (empty where unused) and the numbers' meanings."""
    b = cfg.active
    nums, firsts = _numbers(cfg.layout, b)
    by_slot = {placed[key][0]: (key, addr, rules, placed[key][1]) for key, addr, rules in entries}

    def put(name: str, text: str, rule: int = 0, what: str = "") -> None:
        cfg.files[f"b{b}.{name}"] = text
        if rule and what:
            cfg.sources[f"b{b}.{name}"] = (rule, what)

    for i, slot in enumerate(cfg.layout):
        n = nums[i]
        key, addr, rules, where = by_slot.get(i, (None, "", (), []))
        if key is not None:
            first = key.port
            last = key.port | ((1 << (16 - key.port_prefix)) - 1)
            put(f"f{n}.addr.lst", f"{addr}\n")
            put(f"f{n}.port.lst", f"{first}\n" if first == last else f"{first}:{last}\n")
            put(f"f{n}.peer.lst", f"{key.identity}\n" if key.identity else "0:4294967295\n")
        else:  # an unused slot applies to nothing
            for what in ("addr", "port", "peer"):
                put(f"f{n}.{what}.lst", "")
        used = dict(zip(where, rules, strict=True))
        idx = []
        for j, rshape in enumerate(slot.rules):
            r = firsts[i] + j
            rule = used.get(j)
            if rule is None:  # an empty method file: the slot never matches
                put(f"r{r}.method.pat", "")
                if rshape.path:
                    put(f"r{r}.path.pat", "")
                if rshape.host:
                    put(f"r{r}.host.pat", "")
                for k, (_, has_value) in enumerate(rshape.headers):
                    if has_value:
                        put(f"r{r}.h{k}.pat", "")
                continue
            cfg.rules[r] = rule
            idx.append(r)
            put(f"r{r}.method.pat", anchored(rule.method or ".*") + "\n", r, "method")
            if rule.path:
                put(f"r{r}.path.pat", anchored(rule.path) + "\n", r, "path")
            if rule.host:
                put(f"r{r}.host.pat", anchored(rule.host) + "\n", r, "host")
            for k, (_, value) in enumerate(rule.headers):
                if not value:  # Cilium: no value (or an empty one) asks for the header's presence (in the text)
                    continue
                if any(c in value for c in "\r\n\0"):  # no HTTP header value holds these: never matches
                    put(f"r{r}.h{k}.pat", "")
                else:  # a pattern file line is not taken as written (leading blanks, '#'): an escaped regex is
                    put(f"r{r}.h{k}.pat", "^" + re.escape(value) + "$\n", r, "headers")
        if key is not None:
            cfg.filters[n] = Filter(key, addr, tuple(idx))
            cfg.slots[key] = i
    return cfg


def _shared(cfg: ProxyConfig, addresses: Mapping[int, str]) -> ProxyConfig:
    cfg.files["denied.body"] = DENIED_BODY
    local = sorted(set(a for a in addresses.values() if a))
    cfg.files["endpoints.lst"] = "".join(f"{a}\n" for a in local)
    cfg.files["gen.map"] = f"active {cfg.epoch}\n"
    return cfg


def _text(layout: tuple[SlotShape, ...], port: int, d: str) -> str:
    """The frontend normalises the request and sets what the rules read, then hands it to the backend of the
    active buffer (``judge0``/``judge1``), which alone evaluates its rules: the idle buffer costs a request
    nothing. Each backend connects to the original destination, from the client's own address when that is
    a local endpoint."""
    judges: list[str] = []
    for b in (0, 1):
        lines: list[str] = []
        denies: list[str] = []
        nums, firsts = _numbers(layout, b)
        for i, slot in enumerate(layout):
            n = nums[i]
            side, peer, g, by = (("dst", "txn.sid", "gi", "byi") if slot.direction == INGRESS
                                 else ("src", "txn.did", "ge", "bye"))
            lines.append(f"    http-request set-var(txn.f{n}) bool(1) if "
                         f"{{ {side} -f {d}/b{b}.f{n}.addr.lst }} {{ dst_port -f {d}/b{b}.f{n}.port.lst }} "
                         f"{{ var({peer}) -m int -f {d}/b{b}.f{n}.peer.lst }}")
            for j, rshape in enumerate(slot.rules):
                r = firsts[i] + j
                conds = [f"{{ var(txn.f{n}) -m bool }}", f"!{{ var(txn.ok{n}) -m found }}",
                         f"{{ method -m reg -f {d}/b{b}.r{r}.method.pat }}"]
                if rshape.path:
                    conds.append(f"{{ pathq -m reg -f {d}/b{b}.r{r}.path.pat }}")
                if rshape.host:
                    conds.append(f"{{ req.fhdr(host) -m reg -f {d}/b{b}.r{r}.host.pat }}")
                for k, (name, has_value) in enumerate(rshape.headers):
                    conds.append(f"{{ req.fhdr({name}) -m reg -f {d}/b{b}.r{r}.h{k}.pat }}" if has_value
                                 else f"{{ req.fhdr_cnt({name}) -m int gt 0 }}")
                lines.append(f"    http-request set-var(txn.ok{n}) int({r}) if {' '.join(conds)}")
            # the rule that allowed it, per side (a request both an egress and an ingress filter judge is two
            # flows, as Cilium's two proxies report it)
            lines.append(f"    http-request set-var(txn.{by}) var(txn.ok{n}) if {{ var(txn.ok{n}) -m found }}")
            lines.append(f"    http-request set-var(txn.{g}) bool(1) if {{ var(txn.ok{n}) -m found }}")
            # judged once every filter of the side has been: one of them allowing is enough (a request has one
            # destination and one source, so a side's filters that apply are all one endpoint's)
            denies.append(f"    http-request set-var(txn.deny) int({n}) if {{ var(txn.f{n}) -m bool }} "
                          f"!{{ var(txn.{g}) -m found }}")
        judges += [
            f"backend judge{b}",
            *lines,
            *denies,
            f"    http-request return status 403 content-type text/plain file {d}/denied.body "
            "if { var(txn.deny) -m found }",
            "    http-reuse never",  # one server connection per client connection (see the module's doc)
            # to a local endpoint: from the client's own address (its replies come back to this socket)
            f"    use-server client_source if {{ dst -f {d}/endpoints.lst }}",
            f"    use-server original_destination unless {{ dst -f {d}/endpoints.lst }}",
            "    server client_source 0.0.0.0:0 source 0.0.0.0 usesrc clientip",
            "    server original_destination 0.0.0.0:0",
        ]
    return "\n".join([
        "# generated by the apiary agent: do not edit",
        "global",
        "    master-worker",
        "    expose-experimental-directives",  # normalize-uri (HAProxy 2.4+) is "experimental" in 2.6
        # bpf_sk_assign refuses a SO_REUSEPORT listener before Linux 6.5 (-ESOCKTNOSUPPORT): Debian 12's 6.1
        # would drop every redirected packet. A reload still keeps the listener: the master hands it over.
        "    noreuseport",
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
        f"    http-request set-var(txn.gen) str(active),map({d}/gen.map,0)",  # which buffer judges
        "    use_backend judge0 if { var(txn.gen),and(1) -m int 0 }",
        "    default_backend judge1",
        *judges,
        "",
    ])


def rule_text(rule: HttpRule, refs: list[RuleRef]) -> str:
    """What a flow's ``decided_by`` says of an HTTP rule: the policy and the rule's own path."""
    ref = refs[rule.rule_id] if 0 < rule.rule_id < len(refs) else None
    if ref is None:
        return rule.ref
    where = f"{ref.namespace}/{ref.policy}" if ref.namespace else ref.policy
    return f"{ref.kind} {where} {rule.ref}"
