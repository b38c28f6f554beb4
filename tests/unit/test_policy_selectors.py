from __future__ import annotations

import json
import os
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from apiary.policy.identity import (
    MAX_CLUSTER_IDENTITY,
    RESERVED_IDENTITIES,
    CidrIndex,
    IdentityAllocator,
    build_ipcache,
    cidr_selection,
    endpoint_labels,
    resolve,
)
from apiary.policy.models import LabelSelector
from apiary.policy.selectors import (
    Requirement,
    Selector,
    entity_identities,
    parse_key,
    parse_label,
    peer_selector,
    select,
    subject_selector,
)
from apiary.policy.types import LOCAL_SCOPE, MIN_CLUSTER_IDENTITY
from apiary.store import FileStore

FRONTEND = endpoint_labels({"app": "frontend", "tier": "web"}, "team-a")
BACKEND_B = endpoint_labels({"app": "backend"}, "team-b")


def sel(**kw: object) -> LabelSelector:
    return LabelSelector.model_validate(kw)


def test_label_parsing() -> None:
    assert parse_label("k8s:app=frontend") == ("k8s", "app", "frontend")
    assert parse_label("reserved:host") == ("reserved", "host", "")
    assert parse_label("cidr:10.0.0.0/8") == ("cidr", "10.0.0.0/8", "")
    assert parse_key("app") == ("any", "app")
    assert parse_key("k8s:io.kubernetes.pod.namespace") == ("k8s", "io.kubernetes.pod.namespace")


def test_endpoint_labels() -> None:
    assert FRONTEND == ("k8s:app=frontend", "k8s:io.cilium.k8s.policy.cluster=default",
                        "k8s:io.kubernetes.pod.namespace=team-a", "k8s:tier=web")


def test_match_labels_sources() -> None:
    assert Selector.from_model(sel(matchLabels={"app": "frontend"})).matches(FRONTEND)
    assert Selector.from_model(sel(matchLabels={"k8s:app": "frontend"})).matches(FRONTEND)
    assert Selector.from_model(sel(matchLabels={"any:app": "frontend"})).matches(FRONTEND)
    assert not Selector.from_model(sel(matchLabels={"container:app": "frontend"})).matches(FRONTEND)
    assert not Selector.from_model(sel(matchLabels={"app": "frontend", "tier": "db"})).matches(FRONTEND)
    assert Selector.from_model(sel()).matches(FRONTEND) and Selector.from_model(sel(matchLabels={})).matches(())
    assert Selector.from_model(sel(matchLabels={"reserved:host": ""})).matches(("reserved:host",))


@pytest.mark.parametrize(("expr", "matches"), [
    ({"key": "app", "operator": "In", "values": ["frontend", "x"]}, True),
    ({"key": "app", "operator": "In", "values": ["backend"]}, False),
    ({"key": "app", "operator": "NotIn", "values": ["backend"]}, True),
    ({"key": "app", "operator": "NotIn", "values": ["frontend"]}, False),
    ({"key": "missing", "operator": "NotIn", "values": ["frontend"]}, True),
    ({"key": "tier", "operator": "Exists"}, True),
    ({"key": "k8s:tier", "operator": "Exists"}, True),
    ({"key": "reserved:tier", "operator": "Exists"}, False),
    ({"key": "missing", "operator": "Exists"}, False),
    ({"key": "missing", "operator": "DoesNotExist"}, True),
    ({"key": "tier", "operator": "DoesNotExist"}, False),
])
def test_match_expressions(expr: dict[str, object], matches: bool) -> None:
    assert Selector.from_model(sel(matchExpressions=[expr])).matches(FRONTEND) is matches


def test_match_labels_and_expressions_are_anded() -> None:
    s = Selector.from_model(sel(matchLabels={"app": "frontend"},
                                matchExpressions=[{"key": "tier", "operator": "In", "values": ["db"]}]))
    assert not s.matches(FRONTEND)


def test_subject_selector_is_confined_to_the_policy_namespace() -> None:
    s = subject_selector(sel(matchLabels={"app": "frontend"}), "team-a")
    assert s.matches(FRONTEND)
    assert not subject_selector(sel(matchLabels={"app": "frontend"}), "team-b").matches(FRONTEND)
    assert not subject_selector(sel(), "team-b").matches(FRONTEND)
    # a different namespace written by the user is replaced by the policy's own
    assert subject_selector(sel(matchLabels={"io.kubernetes.pod.namespace": "team-b"}), "team-a").matches(FRONTEND)
    # cluster-wide policies select in every namespace
    assert subject_selector(sel(), "").matches(FRONTEND) and subject_selector(sel(), "").matches(BACKEND_B)


def test_peer_selector_namespace_injection() -> None:
    # CNP: an empty peer selector means "all pods of the policy namespace"
    assert peer_selector(sel(), "team-a").matches(FRONTEND)
    assert not peer_selector(sel(), "team-a").matches(BACKEND_B)
    assert not peer_selector(sel(), "team-a").matches(("reserved:host",))
    # naming the namespace (label or expression, with or without source) disables the injection
    assert peer_selector(sel(matchLabels={"k8s:io.kubernetes.pod.namespace": "team-b"}), "team-a").matches(BACKEND_B)
    assert peer_selector(sel(matchLabels={"io.kubernetes.pod.namespace": "team-b"}), "team-a").matches(BACKEND_B)
    ns_in = {"key": "io.kubernetes.pod.namespace", "operator": "In", "values": ["team-b", "team-c"]}
    assert peer_selector(sel(matchExpressions=[ns_in]), "team-a").matches(BACKEND_B)
    # reserved selectors are left alone
    assert peer_selector(sel(matchLabels={"reserved:host": ""}), "team-a").matches(("reserved:host",))
    # CCNP: every pod (namespace Exists), never reserved identities
    assert peer_selector(sel(), "").matches(FRONTEND) and peer_selector(sel(), "").matches(BACKEND_B)
    assert not peer_selector(sel(), "").matches(("reserved:world",))
    assert peer_selector(sel(matchLabels={"app": "backend"}), "").matches(BACKEND_B)
    assert str(peer_selector(sel(), "")) == "k8s:io.kubernetes.pod.namespace"


def test_reserved_all_is_a_wildcard() -> None:
    s = Selector.of({"reserved:all": ""})
    assert s.selects_all and select([s], {300: FRONTEND}) == {0}


IDS = {**RESERVED_IDENTITIES, 300: FRONTEND, 301: BACKEND_B,
       LOCAL_SCOPE + 1: ("cidr:192.0.2.0/24", "reserved:world")}


@pytest.mark.parametrize(("entity", "expected"), [
    ("host", {1}),
    ("world", {2, LOCAL_SCOPE + 1}),
    ("remote-node", {6, 7}),
    ("kube-apiserver", {7}),
    ("health", {4}),
    ("init", {5}),
    ("ingress", {8}),
    ("unmanaged", {3}),
    ("cluster", {1, 3, 4, 5, 6, 7, 8, 300, 301}),
    ("cluster-mesh", {1, 3, 4, 5, 6, 7, 8, 300, 301}),
    ("all", {0}),
    ("none", set()),
])
def test_entities(entity: str, expected: set[int]) -> None:
    assert entity_identities(entity, IDS) == expected


def test_requirement_dataclass() -> None:
    r = Requirement("any", "app", "In", frozenset({"a"}))
    assert r.matches([("k8s", "app", "a")]) and not r.matches([("k8s", "app", "b")])


# --- identities ------------------------------------------------------------------------------------


def test_allocator_is_stable_across_restarts(tmp_path: Path) -> None:
    state = tmp_path / "identities.json"
    a = IdentityAllocator(FileStore(tmp_path))
    fe, be = a.allocate(FRONTEND), a.allocate(BACKEND_B)
    cidr = a.allocate_cidr(IPv4Network("192.0.2.0/24"))
    assert (fe, be, cidr) == (MIN_CLUSTER_IDENTITY, MIN_CLUSTER_IDENTITY + 1, LOCAL_SCOPE + 1)
    assert a.allocate(reversed(FRONTEND)) == fe  # label order does not matter
    assert os.listdir(tmp_path) == []  # allocation alone writes nothing: one write per flush
    a.flush()
    assert sorted(os.listdir(tmp_path)) == ["identities.json"]  # temp file renamed, none left behind
    b = IdentityAllocator(FileStore(tmp_path))
    assert b.allocate(BACKEND_B) == be and b.allocate(FRONTEND) == fe
    assert b.lookup(("cidr:192.0.2.0/24", "reserved:world")) == cidr
    assert b.allocate(("k8s:app=new",)) == MIN_CLUSTER_IDENTITY + 2
    b.release(fe)
    c = IdentityAllocator(FileStore(tmp_path))
    assert c.lookup(FRONTEND) is None and c.allocate(FRONTEND) == MIN_CLUSTER_IDENTITY + 3  # no reuse
    c.flush()
    assert json.loads(state.read_text())["next_global"] == MIN_CLUSTER_IDENTITY + 4


def test_retain_releases_what_nothing_references_and_writes_once(tmp_path: Path) -> None:
    state = tmp_path / "identities.json"
    a = IdentityAllocator(FileStore(tmp_path))
    fe = a.allocate(FRONTEND)
    a.flush()
    baseline = a.count()
    for round_ in range(10):  # apply + delete of a 100-CIDR policy, ten times
        ids = [a.allocate_cidr(IPv4Network(f"198.51.{i}.0/24")) for i in range(100)]
        assert a.count() == baseline + 100
        a.flush()
        assert len(json.loads(state.read_text())["identities"]) == baseline + 100
        released = a.retain([fe])
        assert released == sorted(ids) and a.count() == baseline, round_
    assert len(json.loads(state.read_text())["identities"]) == baseline
    assert IdentityAllocator(FileStore(tmp_path)).lookup(FRONTEND) == fe  # the label identity kept its number
    assert a.retain(RESERVED_IDENTITIES) == [fe]  # reserved numbers are never in the table


def test_flush_writes_only_after_a_change(tmp_path: Path) -> None:
    state = tmp_path / "identities.json"
    a = IdentityAllocator(FileStore(tmp_path))
    a.allocate(FRONTEND)
    a.flush()
    ino = state.stat().st_ino  # every write renames a new file over this one
    a.allocate(FRONTEND)  # already known: no change
    a.flush()
    a.retain([MIN_CLUSTER_IDENTITY])
    assert state.stat().st_ino == ino
    a.allocate(BACKEND_B)
    a.flush()
    assert state.stat().st_ino != ino


def test_numbers_are_reused_only_once_the_counter_reaches_the_end(tmp_path: Path) -> None:
    a = IdentityAllocator(None)
    first = a.allocate(("k8s:app=a",))
    a.retain([])
    assert a.allocate(("k8s:app=b",)) == first + 1  # not reused while the scope has room
    a._next_global = MAX_CLUSTER_IDENTITY + 1  # the counter has reached the end of the cluster scope
    assert a.allocate(("k8s:app=c",)) == first  # the lowest free number
    assert a.allocate(("k8s:app=d",)) == first + 2


def test_allocator_reserved_and_in_memory() -> None:
    a = IdentityAllocator(None)
    assert a.allocate(("reserved:host",)) == 1
    assert a.allocate(("reserved:remote-node", "reserved:kube-apiserver")) == 7
    assert a.identities()[2] == ("reserved:world",)


def test_corrupt_state_is_an_error(tmp_path: Path) -> None:
    state = tmp_path / "identities.json"
    state.write_text("{")
    with pytest.raises(RuntimeError, match="refusing to renumber"):
        IdentityAllocator(FileStore(tmp_path))


def test_cidr_index_selects_what_testing_every_prefix_selects() -> None:
    import random

    rnd = random.Random(7)
    prefixes = {IPv4Network((rnd.getrandbits(32), plen), strict=False) for plen in (8, 12, 16, 20, 24, 28, 32)
                for _ in range(60)}
    cidr_ids = {p: LOCAL_SCOPE + 1 + i for i, p in enumerate(sorted(prefixes))}
    index = CidrIndex(cidr_ids)
    for net in [*list(prefixes)[:80], IPv4Network("0.0.0.0/0"), IPv4Network("10.0.0.0/8")]:
        excepts = [p for p in prefixes if p.subnet_of(net) and p != net][:2]
        naive = {i for p, i in cidr_ids.items() if p.subnet_of(net) and not any(p.subnet_of(e) for e in excepts)}
        naive |= {2} if net.prefixlen == 0 else set()
        assert cidr_selection(net, excepts, index) == naive, net


def test_cidr_selection_and_ipcache() -> None:
    cidr_ids = {IPv4Network("10.0.0.0/8"): LOCAL_SCOPE + 1, IPv4Network("10.96.0.0/12"): LOCAL_SCOPE + 2,
                IPv4Network("10.96.1.0/24"): LOCAL_SCOPE + 3, IPv4Network("10.1.0.0/16"): LOCAL_SCOPE + 4}
    assert cidr_selection(IPv4Network("10.0.0.0/8"), [IPv4Network("10.96.0.0/12")], cidr_ids) == {
        LOCAL_SCOPE + 1, LOCAL_SCOPE + 4}
    assert cidr_selection(IPv4Network("0.0.0.0/0"), [], cidr_ids) == {2, *cidr_ids.values()}
    assert cidr_selection(IPv4Network("10.96.0.0/12"), [], cidr_ids) == {LOCAL_SCOPE + 2, LOCAL_SCOPE + 3}
    cache = build_ipcache({"10.1.0.5": 300}, ["10.1.0.1"], cidr_ids)
    assert cache["0.0.0.0/0"] == 2 and cache["10.1.0.5/32"] == 300 and cache["10.1.0.1/32"] == 1
    assert resolve(cache, "10.1.0.5") == 300  # an endpoint inside a CIDR keeps its own identity
    assert resolve(cache, "10.1.0.1") == 1
    assert resolve(cache, "10.1.9.9") == LOCAL_SCOPE + 4
    assert resolve(cache, "10.96.1.7") == LOCAL_SCOPE + 3
    assert resolve(cache, "10.97.0.1") == LOCAL_SCOPE + 2
    assert resolve(cache, "8.8.8.8") == 2
