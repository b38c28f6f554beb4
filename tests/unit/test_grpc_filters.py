"""Tetragon's allow/deny Filter over event dicts, and the gRPC listen addresses (pure logic)."""

from __future__ import annotations

import pytest

from apiary.agent.config import AgentConfig
from apiary.agent.grpc_common import hubble_addresses, parse_address, tetragon_address
from apiary.observe.tetragon.allowdeny import AllowDeny


def _exec(binary: str, pid: int = 10, pod: dict | None = None, args: str = "") -> dict:
    proc: dict = {"binary": binary, "pid": pid, "arguments": args}
    if pod:
        proc["pod"] = pod
    return {"process_exec": {"process": proc, "parent": {"binary": "/bin/sh"}}, "node_name": "n", "time": "t"}


def _kprobe(binary: str, policy: str) -> dict:
    return {"process_kprobe": {"process": {"binary": binary, "pid": 5}, "policy_name": policy}, "node_name": "n"}


POD = {"namespace": "shop", "name": "web-1", "pod_labels": {"app": "web"}}


def test_allow_list_fields_and_or_semantics() -> None:
    evs = [_exec("/usr/bin/curl", 1), _exec("/usr/bin/wget", 2, POD, "-q x"), _kprobe("/usr/bin/cat", "p1")]

    def keep(allow: list[dict], deny: list[dict] | None = None) -> list[int]:
        f = AllowDeny(allow, deny or [])
        return [i for i, e in enumerate(evs) if f.matches(e)]

    assert keep([]) == [0, 1, 2]
    assert keep([{"binary_regex": ["curl$", "cat"]}]) == [0, 2]  # values ORed, unanchored search
    assert keep([{"binary_regex": ["/usr/bin/"], "pid": [2]}]) == [1]  # fields ANDed
    assert keep([{"pid": [1]}, {"pid": [2]}]) == [0, 1]  # filters ORed
    assert keep([{"namespace": ["shop"]}]) == [1]
    assert keep([{"namespace": [""]}]) == [0, 2]  # "" = host processes
    assert keep([{"pod_regex": ["^web-"]}]) == [1]
    assert keep([{"labels": ["app=web"]}]) == [1]
    assert keep([{"arguments_regex": ["-q"]}]) == [1]
    assert keep([{"parent_binary_regex": ["sh$"]}]) == [0, 1]
    assert keep([{"event_set": ["PROCESS_KPROBE"]}]) == [2]
    assert keep([{"policy_names": ["p1"]}]) == [2]
    assert keep([], [{"event_set": ["PROCESS_EXEC"]}]) == [2]
    assert keep([{"binary_regex": ["usr"]}], [{"pid": [1]}]) == [1, 2]  # allow minus deny
    assert keep([{"pid_set": [2]}]) == [1] and keep([{"parent_arguments_regex": ["."]}]) == []


@pytest.mark.parametrize(
    ("flt", "where"),
    [
        ({"capabilities": {"effective": {"any": ["CAP_SYS_ADMIN"]}}}, "allow_list[0].capabilities: unsupported"),
        ({"cel_expression": ["true"]}, "allow_list[0].cel_expression"),
        ({"binary_regex": ["ok", "("]}, "allow_list[0].binary_regex[1]"),
        ({"event_set": ["NOPE"]}, "allow_list[0].event_set[0]"),
        ({"whatever": [1]}, "allow_list[0].whatever"),
    ],
)
def test_unsupported_or_bad_fields_name_the_field(flt: dict, where: str) -> None:
    with pytest.raises(ValueError) as e:
        AllowDeny([flt])
    assert str(e.value).startswith(where), e.value


def test_listen_addresses() -> None:
    assert parse_address("unix:///run/x.sock", "--f").unix == "/run/x.sock"
    assert parse_address("/run/x.sock", "--f").target() == "unix:///run/x.sock"
    assert parse_address("127.0.0.1:4245", "--f").tcp == "127.0.0.1:4245"
    assert parse_address("[::1]:4245", "--f").tcp == "[::1]:4245"
    assert parse_address("localhost:1", "--f").tcp == "localhost:1"
    for bad, why in (("0.0.0.0:4245", "loopback"), ("10.0.0.1:80", "loopback"), (":4245", "loopback"),
                     ("127.0.0.1:0", "port"), ("unix:x.sock", "absolute"), ("nonsense", "HOST:PORT")):
        with pytest.raises(ValueError) as e:
            parse_address(bad, "--hubble-listen-address")
        assert str(e.value).startswith("--hubble-listen-address") and why in str(e.value), (bad, e.value)
    cfg = AgentConfig(socket_path="/tmp/a1/apiary.sock", hubble_listen_address="127.0.0.1:4245")
    assert [a.target() for a in hubble_addresses(cfg)] == ["unix:///tmp/a1/hubble.sock", "127.0.0.1:4245"]
    assert tetragon_address(cfg).target() == "unix:///tmp/a1/tetragon.sock"
