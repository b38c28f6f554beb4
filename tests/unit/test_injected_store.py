"""The agent's components keep their desired state in the one Store they are given (apiary.store's Protocol),
not in files of their own: an in-memory store here stands in for the embedded one (and for etcd next)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from apiary.agent import statedir
from apiary.agent.config import AgentConfig
from apiary.agent.prefilter import STATE_FILE as PREFILTER_KEY
from apiary.agent.prefilter import PrefilterControl
from apiary.agent.tracing import Tracing
from apiary.kernel.features import X86_64_SYSCALLS, KernelFeatures
from apiary.policy.identity import IdentityAllocator
from apiary.policy.types import MIN_CLUSTER_IDENTITY
from apiary.sensors.network.endpoints import JOURNAL_KEY, STATE_KEY, Endpoint, EndpointManager
from apiary.store import FileStore, Store, describe


class MemStore:
    """A dict-backed Store: what each component writes, by key."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.puts: list[str] = []

    def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    def put(self, key: str, value: bytes) -> None:
        self.data[key] = bytes(value)
        self.puts.append(key)

    def delete(self, key: str) -> bool:
        return self.data.pop(key, None) is not None

    def list(self, prefix: str = "") -> list[str]:
        return sorted(k for k in self.data if k.startswith(prefix))


def _store() -> MemStore:
    s = MemStore()
    _: Store = s  # implements the Protocol (mypy checks this line)
    return s


def test_identities_persist_through_the_store() -> None:
    mem = _store()
    a = IdentityAllocator(mem)
    fe = a.allocate(("k8s:app=frontend",))
    assert mem.data == {}  # allocation alone writes nothing
    a.flush()
    assert mem.puts == ["identities.json"]
    assert json.loads(mem.data["identities.json"])["identities"] == [{"id": fe, "labels": ["k8s:app=frontend"]}]
    b = IdentityAllocator(mem)  # a restarted agent reads the table back from the store
    assert b.lookup(("k8s:app=frontend",)) == fe and b.allocate(("k8s:app=x",)) == MIN_CLUSTER_IDENTITY + 1
    mem.data["identities.json"] = b"{"
    with pytest.raises(RuntimeError, match="refusing to renumber"):
        IdentityAllocator(mem)


def _endpoint(tmp_path: Path) -> dict[str, Any]:
    return {"ep_id": 1, "name": "web", "namespace": "default", "ipv4": "10.0.0.2", "netns": "apiary-x-1",
            "host_if": "lxc1", "host_ifindex": 7, "cgroup": str(tmp_path / "cg"), "labels": {"app": "web"}}


def test_endpoints_and_their_journal_persist_through_the_store(tmp_path: Path) -> None:
    mem = _store()
    mem.data[STATE_KEY] = json.dumps([_endpoint(tmp_path)]).encode()
    em = EndpointManager("10.0.0.0/24", "x", str(tmp_path / "cg"), mem)
    assert list(em.endpoints) == ["default/web"]  # read from the store
    ep = em.endpoints["default/web"]
    em._journal("delete", ep)
    assert json.loads(mem.data[JOURNAL_KEY])["op"] == "delete"
    em._journal_done()
    assert JOURNAL_KEY not in mem.data
    em.endpoints.clear()
    em._save()
    assert json.loads(mem.data[STATE_KEY]) == []
    assert Endpoint.from_dict(_endpoint(tmp_path)).key == "default/web"


def _features() -> KernelFeatures:
    return KernelFeatures(kprobes=False, fentry=False, lsm=False, override=False, syscalls=X86_64_SYSCALLS)


def test_tracing_policies_are_saved_in_the_store() -> None:
    mem = _store()
    t = Tracing(mem, None, _features())  # type: ignore[arg-type]  # the sensor is never loaded here
    rec = {"key": "/p", "source": "kind: TracingPolicy", "mode": None, "enabled": True}
    t.unrestored = [rec]  # a stored record this kernel could not load: kept
    t._save()
    assert mem.puts == [statedir.TRACING_FILE]
    assert statedir.read_json(mem, statedir.TRACING_FILE) == [rec]


def test_prefilter_state_is_read_from_and_saved_in_the_store(tmp_path: Path) -> None:
    mem = _store()
    cfg = AgentConfig(state_dir=str(tmp_path / "no-such-dir"), pin_root=str(tmp_path / "pins"))
    p = PrefilterControl(cfg, lambda s: None, store=mem)
    mem.data[PREFILTER_KEY] = b'{"revision": 3, "devices": {}, "cidrs": []}'
    assert p.start() == ([], [])  # nothing to filter: no sensor is loaded
    lists = SimpleNamespace(revision=4, entries=["192.0.2.0/24"])
    devs = {"eth9": SimpleNamespace(name="eth9", mode="generic")}
    p.sensor = SimpleNamespace(lists=lists, devs=devs)  # type: ignore[assignment]  # what _save reads
    p._save()
    p.sensor = None
    assert statedir.read_json(mem, PREFILTER_KEY) == {"revision": 4, "devices": {"eth9": "generic"},
                                                     "cidrs": ["192.0.2.0/24"]}
    assert not (tmp_path / "no-such-dir").exists()  # nothing went to the state directory itself


def test_statedir_helpers_and_describe(tmp_path: Path) -> None:
    mem = _store()
    statedir.write_json(mem, "policies.json", {"revision": 1, "policies": []})
    assert statedir.read_json(mem, "policies.json") == {"revision": 1, "policies": []}
    assert statedir.read_json(mem, "absent.json") is None
    mem.data["bad.json"] = b"{"
    with pytest.raises(ValueError, match=r"bad\.json \(state store\): cannot read it"):
        statedir.read_json(mem, "bad.json")
    fs = statedir.open_store(tmp_path)
    assert isinstance(fs, FileStore) and describe(fs, "policies.json") == str(tmp_path / "policies.json")
    statedir.write_json(fs, "policies.json", {"revision": 2, "policies": []})  # the same layout as before
    assert json.loads((tmp_path / "policies.json").read_text()) == {"revision": 2, "policies": []}
