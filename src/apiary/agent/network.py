"""Network half of the agent: endpoints, identities, policy repository, datapath, flows.

Apply is all-or-nothing: parse -> compile the whole new policy set -> capacity check -> write the
datapath (atomic per endpoint) -> only then commit to the repository and to disk. Any error before
the write changes nothing; the repository is the single source the datapath is recomputed from.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pyroute2 import IPRoute

from apiary.loader.fs import cgroup2_root
from apiary.observe.clock import KtimeClock
from apiary.observe.hubble.builder import (
    EndpointInfo,
    FlowBuilder,
    L7HttpFlow,
    l7_dns_deferred,
)
from apiary.observe.hubble.filters import FlowFilter
from apiary.observe.hubble.l7 import DnsExchange, LoggedExchange
from apiary.observe.hubble.metrics import FlowMetrics, dns_kind, http_kind, parse_hubble_metrics
from apiary.policy.compile import EndpointSpec, compile_policies
from apiary.policy.explain import HttpRequest, endpoint_peer, explain, http_decision_json, ip_peer
from apiary.policy.identity import IdentityAllocator, endpoint_labels
from apiary.policy.load import PolicyError, load_policies, load_policy_documents
from apiary.policy.models import Problem
from apiary.policy.types import CompiledPolicy, RuleRef
from apiary.sensors.dnsproxy import holder
from apiary.sensors.dnsproxy.proxy import DnsProxy
from apiary.sensors.l7proxy.config import rule_text as http_rule_text
from apiary.sensors.l7proxy.haproxy import ConfigError, HAProxy, ProxyError, haproxy_binary
from apiary.sensors.l7proxy.leftovers import proxy_cgroup
from apiary.sensors.network.endpoints import Endpoint, EndpointError, EndpointManager
from apiary.sensors.network.sensor import Datapath
from apiary.store import Store, StoreError
from apiary.textutil import default_scope, not_found

from . import statedir
from .bus import EventBus
from .config import AgentConfig
from .flowdir import FlowDirectory
from .fqdn import DnsJudge, FqdnCache
from .interfaces import ScopedEndpoint
from .records import RingReader

FQDN_KEY = "fqdn-cache.json"  # the DNS proxy's learned names, restored by the next agent
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

_UNSET = {b"-": b""}  # an access-log value HAProxy had none for


LEARN_MARGIN_S = 5.0  # an answer is released before its learn only while its entry has this long left


def _v4(ips: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(ip for ip in ips if ":" not in ip)


@dataclass
class StoredPolicy:
    kind: str
    namespace: str
    name: str
    revision: int
    source: str  # the YAML document as the user wrote it
    obj: Any  # the parsed policy


def _policy_id(p: Any) -> tuple[str, str, str]:
    return (p.kind, p.namespace if p.kind == "CiliumNetworkPolicy" else "", p.name)


class Network:
    def __init__(self, cfg: AgentConfig, clock: KtimeClock, registry: Any = None, *, store: Store) -> None:
        self.cfg = cfg
        self.state = store  # desired state: policies, endpoints, identities, the fqdn cache
        state = Path(cfg.state_dir)
        cg = cgroup2_root()
        if cg is None:
            raise EndpointError("no cgroup v2 mount found (apiary preflight --fix mounts one)")
        self.cgroup_root = cg
        self.em = EndpointManager(cfg.pod_cidr, cfg.instance, cg, store)
        self.alloc = IdentityAllocator(store)
        self.dp = Datapath(
            pin_dir=Path(cfg.pin_root) / "datapath",
            wakeup_bytes=max(64, (4 << 20) // 16),
            policy_max=cfg.policy_map_size,
        )
        self.dp.audit = cfg.policy_audit_mode
        self.policies: dict[tuple[str, str, str], StoredPolicy] = {}
        self.revision = 0
        self.compiled = CompiledPolicy(0)
        self.flows = EventBus(cfg.flow_buffer, cfg.client_queue)  # Hubble's ring and `observe --follow` clients
        # the directory flows read (endpoints, identities, rules, learned names): replaced whole after every change
        self.view = FlowDirectory(self.compiled, [], {})
        self.builder = FlowBuilder(cfg.node_name, self.view, clock)
        self.metrics = FlowMetrics(registry, parse_hubble_metrics(cfg.hubble_metrics)) if registry is not None else None
        self.reader: RingReader | None = None  # the datapath's flows ring, read with the datapath's decoders
        self._by_cgroup: dict[int, dict[str, Any]] = {}
        self.endpoint_listeners: list[Callable[[], None]] = []  # told after every endpoint change
        # the L7 HTTP proxy (HAProxy), when installed: rules.http are refused without it
        self.l7: HAProxy | None = (
            HAProxy(state, cfg.instance, cg, on_log=self.on_http) if haproxy_binary() is not None else None)
        # on_http's decisions by logged (rule, deny), for one proxy configuration and compiled policy
        self._http_decided: tuple[object, object, dict[tuple[bytes, bytes, bytes], tuple[bool, bool, str]]] = (
            None, None, {})
        # why a proxy is off (`apiary status` says it); what the L7 proxy judged (its access log)
        self.l7_off = "" if self.l7 is not None else "haproxy not installed: policies with rules.http are refused"
        self.dns_off = "needs the L7 proxy's redirect (haproxy): policies with rules.dns are refused"
        self.l7_counts = {"requests": 0, "denied": 0, "upstream_errors": 0}
        # the DNS proxy (toFQDNs, rules.dns): started in the event loop by dns_serve; it shares the HTTP
        # proxy's mark (the ip rule that delivers redirected packets locally)
        self.fqdn = FqdnCache(cfg.tofqdns_min_ttl)
        self.dns: DnsProxy | None = None
        self._run: Callable[[Callable[[], None]], Awaitable[None]] | None = None
        # answers for the worker to learn, by (endpoint, name, IPs): (TTL, when), oldest first; and the queries
        # whose answers wait for them (released once the worker learned them)
        self._learn_pending: dict[tuple[int, str, tuple[str, ...]], tuple[int, float]] = {}
        self._learn_waiters: list[asyncio.Future[None]] = []
        self._learning = False
        self._learnable: dict[tuple[str, ...], tuple[str, ...]] = {}  # an answer's IPs -> its IPv4s, sorted, unique
        self._names_by_ip: dict[str, list[str]] = {}  # replaced whole after every change of the cache
        self.dns_judge = DnsJudge({}, {}, {}, [])
        self.dns_holder: holder.HolderRecord | None = None  # the process keeping the DNS sockets across restarts
        self.dns_holder_restarts = 0
        self._fqdn_dirty = False  # refreshed entries not saved yet (saved within a second)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> list[str]:
        self.em.check_host()
        notes = self.em.recover() + self.em.drop_refused_labels()
        self.em.setup_host()
        self._load_policies()
        notes += self._load_fqdn()
        self.dp.load()
        if self.l7 is not None:
            try:
                self.l7.start()
            except (ProxyError, OSError) as e:
                self.l7_off = f"did not start ({e}): policies with rules.http are refused"
                notes.append(f"L7 proxy not available ({e}): policies with rules.http are refused")
                self.l7.close()
                self.l7 = None
            else:
                self.dp.proxy_port = self.l7.port
                self.dp.set_proxy(self.l7.mark, self.l7.cgroup_id)
                for dev in self.cfg.devices:  # clients on other hosts: their proxied connections' packets
                    try:
                        self.dp.attach_device(dev)
                    except OSError as e:
                        raise RuntimeError(f"--devices: cannot attach to network device {dev!r} ({e})") from None
                if self.cfg.devices:
                    notes.append("L7 proxy: clients on other hosts through " + ", ".join(self.cfg.devices))
                notes.append(f"L7 proxy: haproxy pid {self.l7.proc.pid if self.l7.proc else '?'} on "
                             f"127.0.0.1:{self.l7.port} (transparent)")
                self.dns = DnsProxy(lambda *a: self.dns_judge(*a), self._dns_learn, self.on_dns,
                                    reject=self.cfg.tofqdns_reject_response_code)
                try:
                    notes += self._dns_sockets()  # answers once the event loop runs (dns_serve)
                except OSError as e:
                    self.dns_off = f"could not bind ({e}): policies with rules.dns are refused"
                    notes.append(f"DNS proxy not available ({e}): policies with rules.dns are refused")
                    self.dns = None
                if self.dns is not None:
                    self.dp.dns_proxy_port = self.dns.port
                    notes.append(f"DNS proxy on 127.0.0.1:{self.dns.port} UDP+TCP (transparent)")
        if self.dns is None and holder.stop(self.cfg.state_dir, proxy_cgroup(self.cgroup_root, self.cfg.instance)):
            notes.append("ended the previous agent's DNS socket holder: this agent runs no DNS proxy")
        if self.dp.ring is not None:  # one bad record never stops the flow stream: counted, not logged
            self.reader = RingReader(self.dp.ring, self.dp.handlers(), {"flow": self.on_flow}, log_errors=False)
        lost = self.em.verify()
        for key in lost:
            notes.append(f"endpoint {key} lost its netns/veth while the agent was down: recreate it")
        self._recompute()  # maps filled before programs are (re)attached: no window without policy
        notes += [f"adopted pinned datapath maps, reconciled: {line}" for line in self.dp.reconciled]
        released = self.alloc.retain(self.compiled.identities)
        if released:
            notes.append(f"released {len(released)} identities nothing references any more")
        for ep in self.em.endpoints.values():
            if ep.state == "ready":
                self.dp.attach(ep)
        notes.append(
            f"datapath: {len(self.em.endpoints)} endpoints, {len(self.policies)} policies "
            f"(revision {self.revision}), pod CIDR {self.cfg.pod_cidr}"
        )
        return notes

    def close(self) -> None:
        # endpoints keep their TC programs (and so their enforcement, with the pinned maps the next agent
        # adopts) while the agent is down; with none left, the pins, the pod CIDR's route and the instance's
        # cgroup directory go too
        self.dp.close(detach=not self.em.endpoints)
        # redirected connections now fail closed (no listener) until it is back; DNS queries wait in the
        # sockets the holder keeps (the ip rule that delivers them stays) and the next agent answers them;
        # with no endpoint left the holder goes too
        keep_dns = self.dns_holder is not None and bool(self.em.endpoints)
        if self.l7 is not None:
            if self.dns_holder is not None and not keep_dns:
                holder.stop(self.cfg.state_dir, self.l7.cgroup)
            self.l7.close(keep_route=keep_dns)
        if self.dns is not None:
            self.dns.close()
        self.em.teardown_host()

    def remove_everything(self) -> None:
        for ep in list(self.em.endpoints.values()):
            self.dp.forget(ep)
        self.em.remove_all()

    # ------------------------------------------------------------------ persistence
    def _load_fqdn(self) -> list[str]:
        """The names the previous agent learned, so the maps it left keep their IPs until the TTLs end."""
        try:
            raw = self.state.get(FQDN_KEY)
            n = self.fqdn.load(raw, {e.ep_id for e in self.em.endpoints.values()}) if raw else 0
        except (StoreError, ValueError) as e:
            return [f"fqdn cache not restored ({e}): learned IPs are allowed again after their next lookup"]
        return [f"fqdn cache: restored {n} unexpired entries"] if n else []

    def _save_fqdn(self) -> None:
        self.state.put(FQDN_KEY, self.fqdn.dump())
        self._fqdn_dirty = False

    def _dns_sockets(self) -> list[str]:
        """The DNS proxy's sockets: taken back from the holder a previous agent started (the same sockets,
        with the queries that came meanwhile), else new ones and a new holder for them."""
        assert self.dns is not None and self.l7 is not None
        cg, state = self.l7.cgroup, self.cfg.state_dir
        rec = holder.load(state)
        socks = holder.take(rec, cg) if rec is not None else None
        if rec is not None and socks is not None:
            self.dns.adopt(*socks)
            self.dns_holder = rec
            return [f"DNS proxy: took its sockets back from holder pid {rec.pid} (queries that came while no "
                    "agent ran are answered now)"]
        holder.stop(state, cg)  # a record of a holder that is gone (or not ours any more)
        self.dns.bind()
        return self._dns_hold()

    def _dns_hold(self) -> list[str]:
        assert self.dns is not None and self.l7 is not None and self.dns.udp is not None
        assert self.dns._tcp_sock is not None
        try:
            self.dns_holder = holder.spawn(self.cfg.state_dir, self.l7.cgroup, self.dns.udp, self.dns._tcp_sock,
                                           self.dns.port)
        except (OSError, StoreError) as e:
            self.dns_holder = None
            return [f"DNS socket holder not started ({e}): DNS fails while the agent restarts"]
        return [f"DNS proxy sockets held by pid {self.dns_holder.pid} across agent restarts"]

    def _load_policies(self) -> None:
        data = statedir.read_json(self.state, statedir.NETWORK_FILE)
        if data is None:
            return
        self.revision = data["revision"]
        for rec in data["policies"]:
            (obj,) = load_policies(rec["source"])
            self.policies[_policy_id(obj)] = StoredPolicy(
                rec["kind"], rec["namespace"], rec["name"], rec["revision"], rec["source"], obj
            )

    def _save_policies(self) -> None:
        data = {
            "revision": self.revision,
            "policies": [
                {"kind": p.kind, "namespace": p.namespace, "name": p.name, "revision": p.revision, "source": p.source}
                for p in self.policies.values()
            ],
        }
        statedir.write_json(self.state, statedir.NETWORK_FILE, data)

    # ------------------------------------------------------------------ compile + write
    def _specs(self) -> list[EndpointSpec]:
        return [_spec(e) for e in self.em.endpoints.values()]

    def host_ips(self) -> list[str]:
        ips = {self.em.router}
        with IPRoute() as ipr:
            for a in ipr.get_addr(family=2):
                ips.add(a.get_attr("IFA_ADDRESS"))
        return sorted(ips)

    def _compile(self, policies: list[Any], revision: int) -> CompiledPolicy:
        # the allocator's table is flushed once, at the end of the compile: before the datapath holds the numbers
        return compile_policies(
            policies,
            self._specs(),
            host_ips=self.host_ips(),
            enforcement=self.cfg.enable_policy,
            audit=self.cfg.policy_audit_mode,
            allocator=self.alloc,
            revision=revision,
            supported=True,  # every stored policy came through load_policies
            fqdn_ips=self.fqdn.names_ips(),
        )

    def _release_unused(self) -> None:
        """After every change, committed or not: identities the committed state no longer references
        (an endpoint's label set, a CIDR no policy names, or what a refused apply allocated) are freed."""
        self.alloc.retain(self.compiled.identities)

    def _write(self, compiled: CompiledPolicy) -> None:
        if compiled.l7 and self.l7 is None:
            raise PolicyError([Problem("rules.http", "L7 HTTP rules need the agent's proxy (haproxy), which is not "
                                       "running: install haproxy and restart the agent")])
        if compiled.dns and self.dns is None:
            raise PolicyError([Problem("rules.dns", "DNS rules need the agent's DNS proxy, which is not running "
                                       "(it needs the L7 proxy's routing: install haproxy and restart the agent)")])
        eps = {e.ep_id: e for e in self.em.endpoints.values() if e.state == "ready"}
        ids = {e.ep_id: self.identity_of(e, compiled) for e in eps.values()}
        if self.l7 is not None:  # the proxy knows the rules before the datapath redirects to them
            try:
                self.l7.update(compiled.l7, {e.ep_id: e.ipv4 for e in eps.values()}, compiled.ipcache)
            except ConfigError as err:  # HAProxy refuses them: nothing changes (it keeps the rules in force)
                raise PolicyError([_proxy_problem(err, compiled)]) from err
        # the DNS proxy judges with the new rules before the datapath redirects to them
        self.dns_judge = DnsJudge(compiled.dns, {e.ipv4: e.ep_id for e in eps.values()}, compiled.ipcache,
                                  compiled.rules)
        self.dp.sync(compiled, eps, ids)
        self.compiled = compiled
        all_eps = list(self.em.endpoints.values())
        self._index_names()
        pods = {}
        for e in all_eps:
            try:
                pods[os.stat(e.cgroup).st_ino] = {
                    "namespace": e.namespace,
                    "name": e.name,
                    "pod_labels": dict(e.labels),
                    "workload": e.name,
                }
            except OSError:
                pass
        self._by_cgroup = pods
        for listener in self.endpoint_listeners:
            listener()

    def _new_view(self) -> None:
        """A new directory for the flows read from now on (those read before keep theirs)."""
        self.view = self.builder.directory = FlowDirectory(self.compiled, list(self.em.endpoints.values()),
                                                           self._names_by_ip)

    def identity_of(self, ep: Endpoint, compiled: CompiledPolicy | None = None) -> int:
        c = compiled or self.compiled
        return c.ipcache.get(f"{ep.ipv4}/32", 0)

    def _recompute(self) -> None:
        self._write(self._compile([p.obj for p in self.policies.values()], self.revision))

    # ------------------------------------------------------------------ endpoints
    def create_endpoint(self, name: str, namespace: str, labels: dict[str, str],
                        ports: dict[str, tuple[int, str]] | None = None) -> Endpoint:
        """The policies are recompiled with it: its labels select rules, its ports resolve named ports."""
        ep = self.em.create(name, namespace, labels, ports)
        try:
            self._recompute()
            self.dp.attach(ep)
        except Exception:
            self.dp.forget(ep)
            self.em.delete(ep.key)
            raise
        finally:
            self._release_unused()
        return ep

    def delete_endpoint(self, ref: str) -> Endpoint:
        ep = self.em.get(ref)
        self.dp.forget(ep)
        self.em.delete(ep.key)
        if self.metrics:  # its series go a minute later, as Hubble's
            self.metrics.forget_pod(ep.namespace, ep.name, time.monotonic())
        self.fqdn.forget_endpoint(ep.ep_id)
        self._save_fqdn()
        try:
            self._recompute()
        finally:
            self._release_unused()
        self.em.teardown_host()
        if not self.em.endpoints:
            self.em.setup_host()
        return ep

    def endpoint_row(self, ep: Endpoint) -> dict[str, Any]:
        pol = self.compiled.endpoints.get(ep.ep_id)
        ident = self.identity_of(ep)
        return {
            "id": ep.ep_id,
            "name": ep.name,
            "namespace": ep.namespace,
            "labels": ep.labels,
            "ports": {n: [port, proto] for n, (port, proto) in sorted(ep.ports.items())},
            "identity": ident,
            "ipv4": ep.ipv4,
            "interface": ep.host_if,
            "ifindex": ep.host_ifindex,
            "netns": ep.netns_path,
            "cgroup": ep.cgroup,
            "state": ep.state,
            "ingress_enforcement": bool(pol and pol.ingress_enforced),
            "egress_enforcement": bool(pol and pol.egress_enforced),
            "policy_entries": len(pol.entries) if pol else 0,
        }

    # ------------------------------------------------------------------ policies
    def apply(self, text: str) -> list[dict[str, Any]]:
        with _gc_paused():
            return self._apply(text)

    def _apply(self, text: str) -> list[dict[str, Any]]:
        parsed, documents = load_policy_documents(text)  # PolicyError on any problem: nothing changes
        docs = [_dump(d) for d in documents]
        new = dict(self.policies)
        revision = self.revision + 1
        result = []
        for i, obj in enumerate(parsed):
            pid = _policy_id(obj)
            action = "configured" if pid in new else "created"
            src = docs[i] if i < len(docs) else text
            new[pid] = StoredPolicy(pid[0], pid[1], pid[2], revision, src, obj)
            result.append({"kind": pid[0], "namespace": pid[1], "name": pid[2], "revision": revision, "action": action})
        try:
            compiled = self._compile([p.obj for p in new.values()], revision)
            self.dp.check_capacity(compiled)
            self._write(compiled)
            self.policies, self.revision = new, revision
            self._save_policies()
        finally:
            self._release_unused()
        return result

    def policy_not_found(self, name: str, namespace: str, defaulted: bool = False) -> str:
        """What a get or delete of a policy that is not there says, naming where policies of that name are
        (``defaulted``: no namespace was given)."""
        return not_found("policy", name, namespace,
                         sorted({k[1] for k in self.policies if k[2] == name and k[1] != namespace}), defaulted)

    def policy_scope(self, name: str, namespace: str | None) -> str:
        """The namespace of NAME (None: not given, see ``default_scope``)."""
        return default_scope(name, namespace, ((k[1], k[2]) for k in self.policies))

    def delete_policy(self, name: str, namespace: str | None) -> dict[str, Any]:
        defaulted, namespace = namespace is None, self.policy_scope(name, namespace)
        hits = [k for k in self.policies if k[2] == name and k[1] == namespace]
        if not hits:
            raise PolicyError([Problem("metadata.name", self.policy_not_found(name, namespace, defaulted))])
        new = {k: v for k, v in self.policies.items() if k not in hits}
        revision = self.revision + 1
        try:
            self._write(self._compile([p.obj for p in new.values()], revision))
            self.policies, self.revision = new, revision
            self._save_policies()
        finally:
            self._release_unused()
        return {"deleted": [f"{k[0]} {k[1]}/{k[2]}".replace(" /", " ") for k in hits], "revision": revision}

    def policy_rows(self) -> list[dict[str, Any]]:
        return [
            {"kind": p.kind, "namespace": p.namespace, "name": p.name, "revision": p.revision}
            for p in self.policies.values()
        ]

    def explain(self, src: str, dst: str, port: int, proto: str, http: HttpRequest | None = None) -> dict[str, Any]:
        try:
            res = explain(
                self.compiled, self._peer(src), self._peer(dst), port, proto, audit=self.cfg.policy_audit_mode,
                http=http,
            )
        except ValueError as e:
            raise EndpointError(str(e)) from e

        def dec(d: Any) -> dict[str, Any] | None:
            if d is None:
                return None
            rule = d.rule
            return {
                "verdict": d.verdict,
                "reason": d.reason,
                "rule": None
                if rule is None
                else {"policy": rule.policy, "namespace": rule.namespace, "kind": rule.kind, "section": rule.section},
            }

        return {
            "verdict": res.verdict,
            "text": res.sentence,
            "egress": dec(res.egress),
            "ingress": dec(res.ingress),
            **({"http": http_decision_json(res.http, self.compiled)} if res.http else {}),
            "revision": self.revision,
        }

    def _peer(self, ref: str) -> Any:
        try:
            ep = self.em.get(ref)
            return endpoint_peer(self.compiled, _spec(ep))
        except EndpointError:
            try:
                ipaddress.IPv4Address(ref)
            except ValueError:
                raise EndpointError(f"{ref}: not an endpoint (namespace/name) nor an IPv4 address") from None
            local = next((e for e in self.em.endpoints.values() if e.ipv4 == ref), None)
            if local is not None:  # a local endpoint's address is that endpoint (its policy applies)
                return endpoint_peer(self.compiled, _spec(local))
            return ip_peer(self.compiled, ref)

    # ------------------------------------------------------------------ flows
    def on_flow(self, msg: Any) -> None:
        ev = self.builder.defer(msg)  # most flows are built only when read
        if self.metrics:
            self.metrics.observe_msg(msg, ev)
        self.flows.publish(ev)  # a client that falls behind is told (OBSERVER_EVENTS_QUEUE lost events)

    def on_http(self, recs: list[list[bytes]]) -> int:
        """A batch of the proxy's access-log records: each one's REQUEST flow, and its RESPONSE when it was let
        through; returns how many records could not be used (counted by the proxy, never a stopped stream).
        One pass per batch, not a call per record: at full speed the proxy logs tens of thousands a second."""
        assert self.l7 is not None
        counts = self.l7_counts  # `apiary status`: what the proxy judged
        decide, ipcache, builder = self._http_decision, self.compiled.ipcache, self.builder
        flows: list[L7HttpFlow] = []
        allowed_flows: list[L7HttpFlow] = []
        denied_flows: list[L7HttpFlow] = []
        bad = denied = upstream = 0
        for rec in recs:
            try:
                # the mark, the head's fields ("-" when HAProxy had none) and the JSON (sensors/l7proxy/config.py
                # LOG_FORMAT)
                _, deny, gen, rule_e, rule_i, term, body = rec
                deny, gen = _UNSET.get(deny, deny), _UNSET.get(gen, gen)
                rule_e, rule_i = _UNSET.get(rule_e, rule_e), _UNSET.get(rule_i, rule_i)
                allowed, ingress, decided = decide(rule_i or rule_e, deny, gen)
            except ValueError:
                bad += 1
                continue
            # HAProxy's termination state: S/s = the server refused, aborted or timed out (an upstream error)
            upstream += term[:1] in (b"S", b"s")
            # the exchange is made from the record when its flows are first read; a request the client's egress
            # and the server's ingress both allowed is reported by each side, as Cilium's two proxies do
            if allowed and rule_e and rule_i:
                by_egress = decide(rule_e, deny, gen)[2]
                x = LoggedExchange(body, True, False, by_egress, ipcache)
                pair = (L7HttpFlow(builder, x, False), L7HttpFlow(builder, x, True))
                flows += pair
                allowed_flows += pair
            x = LoggedExchange(body, allowed, ingress, decided, ipcache)
            if allowed:
                pair = (L7HttpFlow(builder, x, False), L7HttpFlow(builder, x, True))
                flows += pair
                allowed_flows += pair
            else:
                denied += 1
                req = L7HttpFlow(builder, x, False)
                flows.append(req)
                denied_flows.append(req)
        counts["requests"] += len(recs) - bad
        counts["denied"] += denied
        counts["upstream_errors"] += upstream
        if self.metrics:  # built now only for L7 metrics that read each flow (or the first of its kind)
            self.metrics.observe_l7_many(http_kind(True), allowed_flows)
            self.metrics.observe_l7_many(http_kind(False), denied_flows)
        self.flows.publish_many(flows)  # built when read (or now, for a live client)
        return bad

    def _http_decision(self, rule: bytes, deny: bytes, gen: bytes = b"") -> tuple[bool, bool, str]:
        """(allowed, ingress, decided_by) of a logged rule/filter number, read in the configuration of the
        record's epoch (``gen``: the numbers of a request judged before a later flip keep their meaning); the
        same for every request the rule decides, so kept until the proxy's configuration or the compiled
        policy changes."""
        assert self.l7 is not None
        latest, compiled = self.l7.config, self.compiled
        if self._http_decided[0] is not latest or self._http_decided[1] is not compiled:
            self._http_decided = (latest, compiled, {})
        cache = self._http_decided[2]
        got = cache.get((gen, rule, deny))
        if got is not None:
            return got
        cfg = self.l7.config_for(gen)
        rule_n, deny_n = int(rule or 0), int(deny or 0)
        allowed = deny_n == 0
        ingress, decided = True, ""
        f = cfg.filters.get(deny_n)
        r = cfg.rules.get(rule_n)
        if not allowed and f is not None:
            ingress = f.key.direction == 0
            first = cfg.rules.get(f.rules[0]) if f.rules else None
            if first is not None:
                decided = http_rule_text(first, compiled.rules).rsplit("[", 1)[0] + " (no HTTP rule matched)"
        elif allowed and r is not None:
            decided = http_rule_text(r, compiled.rules)
            ingress = "ingress" in r.ref.split(".toPorts")[0]
        got = cache[(gen, rule, deny)] = (allowed, ingress, decided)
        return got

    # ------------------------------------------------------------------ DNS proxy (toFQDNs)
    async def dns_serve(self, run: Callable[[Callable[[], None]], Awaitable[None]]) -> None:
        """Run the DNS proxy and expire learned names; ``run`` runs a policy change on the control-plane
        worker (where every other network change runs)."""
        if self.dns is None:
            return
        self._run = run
        try:
            await self.dns.serve()
            while True:
                await asyncio.sleep(1)
                # the refreshes of answers released at once, unless a batch that takes them is under way (while
                # one is, no answer waits outside it: waiting answers start one)
                batch: dict[tuple[int, str, tuple[str, ...]], tuple[int, float]] = {}
                if not self._learning:
                    batch, self._learn_pending = self._learn_pending, {}
                await run(lambda: self._fqdn_tick(batch))  # noqa: B023 - awaited within the iteration
                if self.dns_holder is not None and self.l7 is not None and \
                        not holder.verified(self.dns_holder, self.l7.cgroup):
                    await run(self._dns_rehold)
        finally:
            self.dns.close()

    def _dns_rehold(self) -> None:
        """The holder died while the agent runs (nothing lost yet): start another for the next restart."""
        self.dns_holder_restarts += 1
        if self.l7 is not None:
            holder.stop(self.cfg.state_dir, self.l7.cgroup)
            self._dns_hold()

    def _dns_learn(self, x: DnsExchange) -> asyncio.Future[None] | None:
        """None when the answer's IPs are in the policy maps already (it is released at once), else a future
        done once they are. The worker learns answers in batches, one hop per batch: answers that wait start
        one (those that come meanwhile wait for the next); an answer the cache (and so the maps) holds for a
        while yet only refreshes its entry's TTL, with the next batch or the once-a-second tick."""
        ep = self.dns_judge.ep_of(x.client)
        ips = self._learnable.get(x.ips)
        if ips is None:
            if len(self._learnable) >= 4096:
                self._learnable.clear()
            ips = self._learnable[x.ips] = tuple(sorted(set(_v4(x.ips))))
        if ep is None or x.rcode or not ips:
            return None  # nothing to learn
        key = (ep, x.query, ips)  # x.query is canonical already
        pending = self._learn_pending
        pending.pop(key, None)  # the same answer again: the later one counts (and keeps its place in order)
        now = time.time()
        pending[key] = (x.ttl, now)
        if self.fqdn.holds_exactly(ep, x.query, ips, now + LEARN_MARGIN_S):
            return None
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._learn_waiters.append(fut)
        if not self._learning:
            self._learning = True
            asyncio.ensure_future(self._learn_batches())
        return fut

    async def _learn_batches(self) -> None:
        assert self._run is not None
        try:
            while True:
                batch, waiters = self._learn_pending, self._learn_waiters
                self._learn_pending, self._learn_waiters = {}, []
                try:
                    await self._run(lambda: self.fqdn_learn(batch))  # noqa: B023 - awaited within the iteration
                except Exception as e:  # noqa: BLE001 - handed to every waiting query (each answers SERVFAIL)
                    for f in waiters:
                        if not f.done():
                            f.set_exception(e)
                else:
                    for f in waiters:
                        if not f.done():
                            f.set_result(None)
                if not self._learn_waiters:
                    break
        finally:
            self._learning = False

    def fqdn_learn(self, batch: dict[tuple[int, str, tuple[str, ...]], tuple[int, float]]) -> None:
        """Allowed answers' IPs (by endpoint, name and IPs: TTL and when): into the cache and, when a toFQDNs
        selects a name, into the maps."""
        if not batch:
            return
        answers = [(ep, name, ips, ttl) for (ep, name, ips), (ttl, _) in batch.items()]
        changed = self.fqdn.learn_many(answers, at=[t for _, t in batch.values()])
        self._fqdn_dirty = True
        if changed:
            self._save_fqdn()  # before the maps: a restart never loses an IP an endpoint was told
            if any(self._fqdn_selected(n) for n in changed):
                self._recompute()
            else:
                self._index_names()

    def _fqdn_tick(self, refresh: dict[tuple[int, str, tuple[str, ...]], tuple[int, float]]) -> None:
        """Once a second: the refreshes of answers released at once, then what expired."""
        self.fqdn_learn(refresh)
        self.fqdn_expire()

    def names_of(self, ip: str) -> list[str]:
        """The names the DNS proxy learned for an address (flows' source_names/destination_names)."""
        return self.view.names_of(ip)

    def fqdn_expire(self) -> None:
        before = self.compiled.fqdn_ips
        expired = self.fqdn.expire()
        if expired or self._fqdn_dirty:
            self._save_fqdn()
        if expired:
            if before:
                self._recompute()
            else:
                self._index_names()

    def _index_names(self) -> None:
        by_ip: dict[str, list[str]] = {}
        for name, ips in self.fqdn.names_ips().items():
            for ip in ips:
                by_ip.setdefault(ip, []).append(name.rstrip("."))
        self._names_by_ip = by_ip
        self._new_view()

    def _fqdn_selected(self, name: str) -> bool:
        from apiary.policy.fqdn import selector_matches

        return any(selector_matches(name, s.match_name, s.match_pattern)
                   for p in self.policies.values() for _, rule in p.obj.rules()
                   for item in rule.egress or [] for s in item.to_fqdns or [])

    def on_dns(self, x: DnsExchange) -> None:
        """A query through the DNS proxy: its REQUEST flow and, when answered from the resolver, its RESPONSE,
        each built when read (with the directory of now, and the two ends' identities of now); the metrics count
        them now, as :meth:`on_http`'s (once per kind of flow)."""
        flows = l7_dns_deferred(self.builder, x, self.compiled.ipcache.get(f"{x.client}/32", 0),
                                self.dns_judge.identity(x.server))
        metrics, publish = self.metrics, self.flows.publish
        for ev in flows:
            if metrics:
                metrics.observe_l7(dns_kind(x, ev.response), ev)
            publish(ev)

    def drain(self) -> int:
        return self.reader.drain() if self.reader else 0

    def fileno(self) -> int:
        return self.reader.fileno() if self.reader else -1

    def flow_filter(self, pairs: list[tuple[str, str]]) -> FlowFilter:
        return FlowFilter.from_args(pairs)

    # the EndpointDirectory of now (flows read the one of their moment: self.view when they were read)
    def endpoint(self, ep_id: int) -> EndpointInfo | None:
        return self.view.endpoint(ep_id)

    def endpoint_by_ip(self, ip: str) -> EndpointInfo | None:
        return self.view.endpoint_by_ip(ip)

    # EndpointSource for the tracing half
    def scoped_endpoints(self) -> list[ScopedEndpoint]:
        out = []
        for ep in self.em.endpoints.values():
            try:
                cg: int | None = os.stat(ep.cgroup).st_ino  # a cgroup v2 directory's inode is its id
            except OSError:
                cg = None
            out.append(ScopedEndpoint(ep.namespace, endpoint_labels(ep.labels, ep.namespace), cg))
        return out

    def pod_of_cgroup(self, cgroup_id: int) -> dict[str, Any] | None:
        """Tetragon's `pod` object for a process running in an endpoint's cgroup."""
        return self._by_cgroup.get(cgroup_id)

    def identity_labels(self, identity: int) -> list[str]:
        return self.view.identity_labels(identity)

    def rule(self, rule_id: int) -> RuleRef | None:
        return self.view.rule(rule_id)

    def ifname(self, ifindex: int) -> str | None:
        return self.view.ifname(ifindex)

    def status(self) -> dict[str, Any]:
        pm = self.dp.policy_map if self.dp.obj else None
        used = sum(len(st.keys) for st in self.dp.eps.values())
        rc = self.reader.counters if self.reader else None
        return {
            "endpoints": len(self.em.endpoints),
            "policies": len(self.policies),
            "revision": self.revision,
            "policy_map": {
                "entries": used,
                "capacity": pm.max_entries if pm else 0,
                "fill_pct": round(100 * used / pm.max_entries, 2) if pm else 0,
            },
            "ipcache_entries": len(self.compiled.ipcache),
            "identities_allocated": self.alloc.count(),
            "flows": {
                "records": rc.received if rc else 0,
                "kernel_lost": self.dp.lost() if self.dp.obj else 0,
                "decode_errors": rc.decode_errors + rc.handler_errors if rc else 0,
                "buffered": len(self.flows),
                "capacity": self.cfg.flow_buffer,
                "subscribers": len(self.flows.subscribers),
            },
            "datapath_counters": self.dp.counters() if self.dp.obj else {},
            "l7_proxy": self.l7.status() | self.l7_counts | {"restarting": self.l7.down_since is not None,
                                                              "devices": sorted(self.dp.devices)}
            if self.l7 is not None else None,
            "l7_proxy_disabled": self.l7_off if self.l7 is None else None,
            "dns_proxy": {**self.dns.status(), "holder_pid": self.dns_holder.pid if self.dns_holder else None,
                          "holder_restarts": self.dns_holder_restarts, "serving": self.dns.udp is not None}
            if self.dns is not None else None,
            "dns_proxy_disabled": self.dns_off if self.dns is None else None,
        }


def _proxy_problem(e: ConfigError, compiled: CompiledPolicy) -> Problem:
    """What HAProxy refused, at the field path of the HTTP rule (and the policy) it came from."""
    if e.rule is None:
        return Problem("rules.http", str(e))
    ref = e.rule.ref if e.rule.ref.startswith("specs[") else f"spec.{e.rule.ref}"
    rid = e.rule.rule_id
    where = compiled.rules[rid] if 0 < rid < len(compiled.rules) else None
    policy = f" (in {where.kind} {where.namespace + '/' if where.namespace else ''}{where.policy})" if where else ""
    return Problem(f"{ref}.{e.field}", f"{e}{policy}")


def _spec(ep: Endpoint) -> EndpointSpec:
    return EndpointSpec(ep.ep_id, ep.name, ep.namespace, ep.labels, ep.ipv4, ep.ports)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """A large policy allocates tens of container objects per rule and keeps them: the cyclic collector
    would walk the growing heap again and again (a third of the time at 10,000 rules). Paused meanwhile."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _dump(doc: Any) -> str:
    """One parsed YAML document as text (for storing each policy as its user wrote it); libyaml's emitter
    when PyYAML has it (same text as yaml.safe_dump, ~3x faster on a large policy)."""
    return yaml.dump(doc, Dumper=_DUMPER, sort_keys=False)
