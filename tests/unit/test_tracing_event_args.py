"""Typed arguments of hook events in Tetragon's JSON shape, from the bytes the kernel sends."""

from __future__ import annotations

import re
import socket
from pathlib import Path

from apiary.agent.tracing import ACTION_ENUM, _cred_arg, _value
from apiary.sensors.tracing import abi
from apiary.tracing.types import (
    ARG_CHARS,
    ARG_CONNSOCK,
    ARG_CRED,
    ARG_DATALOC,
    ARG_FILEPTR,
    ARG_INT,
    ARG_KSOCKADDR,
    ARG_SOCK,
    ARG_SOCKETPTR,
    ARG_UINT,
    GUARD_CHECKS,
    REG_CRED,
    REG_EXE,
    REG_NONE,
    REG_RET,
    ArgSpec,
)

HEADER = Path(abi.__file__).resolve().parents[2] / "bpf" / "include" / "tracing_abi.h"


def test_every_action_has_its_event_enum() -> None:
    assert set(abi.ACTIONS) <= set(ACTION_ENUM)
    assert ACTION_ENUM["Override"] == "KPROBE_ACTION_OVERRIDE" and ACTION_ENUM["Sigkill"] == "KPROBE_ACTION_SIGKILL"


def test_sock_arg_from_the_kernels_socket() -> None:
    si = abi.SockInfo(family=2, type=1, protocol=6, sport=40000, dport=443, state=2, saddr=0x0A000001,
                      daddr=0xC6336401)
    out = _value(ArgSpec(0, ARG_SOCK, tetragon_type="sock"), 0, "", bytes(si))
    assert out == {"sock_arg": {"family": "AF_INET", "type": "SOCK_STREAM", "protocol": "IPPROTO_TCP",
                                "saddr": "10.0.0.1", "daddr": "198.51.100.1", "sport": 40000, "dport": 443,
                                "state": "TCP_SYN_SENT"}}


def test_connect_socket_is_a_sock_arg_with_ipv6_addresses_in_ipv6_form() -> None:
    si = abi.SockInfo(family=10, type=1, protocol=6, dport=443)
    si.daddr6[:] = socket.inet_pton(socket.AF_INET6, "::1")
    out = _value(ArgSpec(1, ARG_CONNSOCK, tetragon_type="sock", size_index=0), 0, "", bytes(si))
    assert out == {"sock_arg": {"family": "AF_INET6", "type": "SOCK_STREAM", "protocol": "IPPROTO_TCP",
                                "saddr": "::", "daddr": "::1", "dport": 443}}


def test_kernel_socket_and_sockaddr_args() -> None:
    si = abi.SockInfo(family=2, type=1, protocol=6, saddr=0x7F000001)
    assert _value(ArgSpec(0, ARG_SOCKETPTR, tetragon_type="socket"), 0, "", bytes(si))["sock_arg"]["type"] == \
        "SOCK_STREAM"
    v = (2 << 48) | (443 << 32) | 0x0A000001
    assert _value(ArgSpec(1, ARG_KSOCKADDR, tetragon_type="sockaddr"), v, "") == {
        "sockaddr_arg": {"family": "AF_INET", "addr": "10.0.0.1", "port": 443}}


def test_guard_bits_and_kinds_are_the_headers() -> None:
    text = HEADER.read_text()
    defs = {m[1]: int(m[2], 0) for m in re.finditer(r"#define (GS_\w+) (0x[0-9a-fA-F]+|[0-9]+)\b", text)}
    assert {c: defs[f"GS_G_{c.upper()}"] for c in GUARD_CHECKS} == abi.GUARD_BITS
    assert defs["GS_ARG_CONNSOCK"] == abi.KIND[ARG_CONNSOCK] and defs["GS_F_AT_EXIT"] == abi.F_AT_EXIT
    assert (defs["GS_ARG_SOCKETPTR"], defs["GS_ARG_KSOCKADDR"]) == (abi.KIND[ARG_SOCKETPTR], abi.KIND[ARG_KSOCKADDR])
    assert (defs["GS_REG_RET"], defs["GS_REG_CRED"], defs["GS_REG_EXE"], defs["GS_REG_NONE"]) == (
        REG_RET, REG_CRED, REG_EXE, REG_NONE)


def test_cred_arg_lists_capabilities_by_name() -> None:
    ci = abi.CredInfo(uid=1000, euid=0, gid=1000, egid=1000, cap_effective=(1 << 21) | 1, cap_permitted=1 << 21,
                      user_ns=4026531837)
    out = _cred_arg(ci)
    assert (out["uid"], out["euid"], out["gid"]) == (1000, 0, 1000)
    assert out["caps"] == {"effective": ["CAP_CHOWN", "CAP_SYS_ADMIN"], "permitted": ["CAP_SYS_ADMIN"]}
    assert out["user_ns"] == {"ns": {"inum": 4026531837}}
    assert _value(ArgSpec(0, ARG_CRED, label="new"), 0, "", bytes(ci))["label"] == "new"


def test_strings_files_and_narrow_ints() -> None:
    assert _value(ArgSpec(5, ARG_CHARS, tetragon_type="string"), 0, "bash") == {"string_arg": "bash"}
    assert _value(ArgSpec(5, ARG_DATALOC, tetragon_type="data_loc"), 0, "/bin/x") == {"string_arg": "/bin/x"}
    assert _value(ArgSpec(0, ARG_FILEPTR, tetragon_type="file"), 0, "/etc/x") == {"file_arg": {"path": "/etc/x"}}
    assert _value(ArgSpec(0, ARG_FILEPTR, tetragon_type="linux_binprm"), 0, "/bin/x") == {
        "linux_binprm_arg": {"path": "/bin/x"}}
    assert _value(ArgSpec(0, ARG_INT, tetragon_type="int"), -2, "") == {"int_arg": -2}
    assert _value(ArgSpec(0, ARG_UINT, tetragon_type="uint64"), 1 << 40, "") == {"size_arg": str(1 << 40)}
    assert _value(ArgSpec(0, ARG_UINT, tetragon_type="uint32"), 7, "") == {"uint_arg": 7}
