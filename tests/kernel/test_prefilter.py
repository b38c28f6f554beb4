"""The XDP prefilter for real: source addresses dropped on a veth whose other end is in a namespace of
our own, per-CIDR drop counters, map-only updates, whole-or-nothing changes; BPF_PROG_TEST_RUN verdicts
for crafted IPv4/IPv6 frames; the agent's `apiary prefilter` commands and their restore after a restart
(kill -9 and adoption of the pins: test_prefilter_restart.py)."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from apiary.sensors.prefilter.cidrs import PrefilterError
from apiary.sensors.prefilter.sensor import Prefilter
from apiary.testing.agent import AgentProcess, one_line_error
from apiary.testing.progrun import ipv4_frame, udp_packet
from apiary.testing.veth import ping, prefilter_cli, prefilter_listing, sh, veth_peer

XDP_DROP, XDP_PASS = 1, 2


def udp_arrives(net: dict[str, str], src: str) -> bool:
    """A UDP datagram from ``src`` in the namespace to a socket on the host end."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind((net["host"], 0))
        rx.settimeout(1.0)
        port = rx.getsockname()[1]
        code = f"import socket;s=socket.socket(2,2);s.bind(({src!r},0));s.sendto(b'pf',({net['host']!r},{port}))"
        sh("ip", "netns", "exec", net["netns"], "python3", "-c", code)
        try:
            return rx.recv(16) == b"pf"
        except TimeoutError:
            return False


def drops(pf: Prefilter) -> dict[str, int]:
    return {e["cidr"]: e["drops"] for e in pf.listing()["entries"]}


@pytest.fixture
def pf() -> Iterator[Prefilter]:
    p = Prefilter(capacity=1024)
    p.load()
    try:
        yield p
    finally:
        p.close()


def test_drops_by_source_with_counters_and_map_only_updates(pf: Prefilter) -> None:
    with veth_peer() as net:
        dev = pf.attach(net["dev"])
        assert dev.mode in ("native", "generic")  # veth has native XDP; the mode said is the one that holds
        assert f"xdp {dev.mode} {net['dev']}" in pf.program_rows()[0].attach
        prog_id = pf.obj.program("prefilter").info().id if pf.obj else 0
        assert ping(net, net["a"]) and udp_arrives(net, net["a"])  # no entries: everything passes

        rev0 = pf.listing()["revision"]
        res = pf.add([f"{net['a']}/32"])
        assert res["revision"] == rev0 + 1 and res["added"] == [f"{net['a']}/32"]
        assert not ping(net, net["a"]) and not udp_arrives(net, net["a"])
        assert ping(net, net["b"])  # another source of the same namespace still passes
        assert drops(pf)[f"{net['a']}/32"] >= 2

        pf.add([f"{net['prefix']}.0/24"])  # a covering prefix: the LPM map; .3 now drops too
        maps = {e["cidr"]: e["map"] for e in pf.listing()["entries"]}
        assert maps == {f"{net['prefix']}.0/24": "cidr_v4_dyn", f"{net['a']}/32": "cidr_v4_fix"}
        before = drops(pf)
        assert not ping(net, net["b"])
        after = drops(pf)
        assert after[f"{net['prefix']}.0/24"] > before[f"{net['prefix']}.0/24"]
        assert after[f"{net['a']}/32"] == before[f"{net['a']}/32"]  # .3 is not .2: its counter stays

        pf.delete([f"{net['prefix']}.0/24"])
        assert ping(net, net["b"]) and not ping(net, net["a"])
        pf.delete([f"{net['a']}/32"])
        assert ping(net, net["a"]) and udp_arrives(net, net["a"])

        pf.add([f"{net['a6']}/128"])
        assert not ping(net, net["a6"])
        assert drops(pf)[f"{net['a6']}/128"] >= 1
        # every change was a map write: the attached program is the one loaded first
        assert pf.obj is not None and pf.obj.program("prefilter").info().id == prog_id
        assert pf.listing()["revision"] == rev0 + 5


def test_a_bad_change_is_refused_whole(pf: Prefilter) -> None:
    pf.add(["192.0.2.0/24"])
    rev = pf.listing()["revision"]
    with pytest.raises(PrefilterError) as e:
        pf.add(["198.51.100.7", "10.0.0.300/32"])
    assert e.value.field == "cidrs[1]" and "10.0.0.300/32" in str(e.value)
    with pytest.raises(PrefilterError) as e:
        pf.add(["198.51.100.1/24"])
    assert "host bits" in str(e.value) and "198.51.100.0/24" in str(e.value)
    with pytest.raises(PrefilterError) as e:
        pf.delete(["192.0.2.0/24", "203.0.113.0/24"])
    assert e.value.field == "cidrs[1]"
    with pytest.raises(PrefilterError) as e:
        pf.add(["203.0.113.0/24"], revision=rev - 1)
    assert e.value.field == "revision"
    assert [x["cidr"] for x in pf.listing()["entries"]] == ["192.0.2.0/24"] and pf.listing()["revision"] == rev
    assert {m: pf.maps[m].count() for m in pf.maps} == {"cidr_v4_dyn": 1, "cidr_v4_fix": 0, "cidr_v6_dyn": 0,
                                                         "cidr_v6_fix": 0}
    # capacity: refused before any write, naming the map
    small = Prefilter(capacity=2)
    small.load()
    try:
        with pytest.raises(PrefilterError) as e:
            small.add(["10.1.0.1", "10.1.0.2", "10.1.0.3"])
        assert "cidr_v4_fix" in str(e.value) and small.maps["cidr_v4_fix"].count() == 0
    finally:
        small.close()


def _ipv6_udp(src: str, dst: str) -> bytes:
    l4 = struct.pack("!HHHH", 1000, 53, 9, 0) + b"x"
    ip6 = struct.pack("!IHBB16s16s", 6 << 28, len(l4), 17, 64, socket.inet_pton(socket.AF_INET6, src),
                      socket.inet_pton(socket.AF_INET6, dst))
    return b"\x02" * 6 + b"\x04" * 6 + b"\x86\xdd" + ip6 + l4


def test_progrun_verdicts(pf: Prefilter) -> None:
    assert pf.obj
    prog = pf.obj.program("prefilter")

    def verdict(frame: bytes) -> int:
        return prog.test_run(frame)[0]

    pf.add(["10.9.0.0/16", "10.8.0.5", "2001:db8::/32", "2001:db9::1"])
    assert verdict(udp_packet("10.9.200.1", "10.0.0.1", 1, 2)) == XDP_DROP
    assert verdict(udp_packet("10.8.0.5", "10.0.0.1", 1, 2)) == XDP_DROP
    assert verdict(udp_packet("10.8.0.6", "10.0.0.1", 1, 2)) == XDP_PASS
    assert verdict(udp_packet("10.0.0.1", "10.9.0.1", 1, 2)) == XDP_PASS  # the destination does not count
    assert verdict(_ipv6_udp("2001:db8:1::1", "2001:db9::1")) == XDP_DROP
    assert verdict(_ipv6_udp("2001:db9::1", "::1")) == XDP_DROP
    assert verdict(_ipv6_udp("2001:db9::2", "::1")) == XDP_PASS
    assert verdict(ipv4_frame("10.9.0.1", "10.0.0.1", 17, b"")[:20]) == XDP_PASS  # truncated IPv4 header
    arp = b"\xff" * 6 + b"\x04" * 6 + b"\x08\x06" + b"\0" * 28
    assert verdict(arp) == XDP_PASS
    assert drops(pf) == {"10.8.0.5/32": 1, "10.9.0.0/16": 1, "2001:db8::/32": 1, "2001:db9::1/128": 1}


def test_agent_prefilter_commands_and_restart() -> None:
    with veth_peer() as net, AgentProcess("--no-network") as agent:
        def ok(*args: str) -> str:
            return prefilter_cli(agent, *args)

        def listing() -> dict:
            return prefilter_listing(agent)

        assert listing()["entries"] == [] and ping(net, net["a"])
        out = ok("add", "--device", net["dev"], f"{net['a']}/32")
        assert f"added {net['a']}/32" in out and f"device {net['dev']}: XDP " in out
        assert not ping(net, net["a"]) and ping(net, net["b"])
        rev = listing()["revision"]

        # a bad CIDR: refused with its position, nothing changed
        r = agent.cli("prefilter", "add", f"{net['prefix']}.0/24", "300.1.2.3/32")
        assert "cidrs[1]" in one_line_error(r) and "300.1.2.3/32" in r.stderr
        r = agent.cli("prefilter", "add", "--revision", str(rev - 1), f"{net['prefix']}.0/24")
        assert "revision" in one_line_error(r)
        r = agent.cli("prefilter", "add", "--device", "nosuchdev0", f"{net['prefix']}.0/24")
        assert "nosuchdev0" in one_line_error(r)
        assert [e["cidr"] for e in listing()["entries"]] == [f"{net['a']}/32"] and listing()["revision"] == rev
        assert ping(net, net["b"])

        ok("update", "--revision", str(rev), "--cidr", f"{net['prefix']}.0/24")  # Cilium's spelling
        assert not ping(net, net["b"])
        table = ok("list")
        assert f"Revision: {rev + 1}" in table and f"{net['dev']} (XDP " in table and "cidr_v4_dyn" in table
        got = {e["cidr"]: e["drops"] for e in listing()["entries"]}
        assert got[f"{net['a']}/32"] >= 1 and got[f"{net['prefix']}.0/24"] >= 1

        status = json.loads(agent.cli("status", "-o", "json").stdout)
        assert any(p["name"] == "prefilter" and net["dev"] in p["attach"] for p in status["programs"])
        assert {"cidr_v4_dyn", "cidr_v4_fix"} <= {m["name"] for m in status["maps"]}

        # a stopped agent's prefilter keeps dropping (its XDP link is pinned, as the datapath's endpoints keep
        # their programs); a restart adopts it and keeps the lists, the revision and the counters
        agent.stop()
        assert not ping(net, net["b"])
        agent.start()
        after = listing()
        assert [e["cidr"] for e in after["entries"]] == [f"{net['prefix']}.0/24", f"{net['a']}/32"]
        assert after["revision"] == rev + 1 and [d["device"] for d in after["devices"]] == [net["dev"]]
        assert {e["cidr"]: e["drops"] for e in after["entries"]}[f"{net['prefix']}.0/24"] > got[f"{net['prefix']}.0/24"]
        assert not ping(net, net["b"])

        ok("delete", f"{net['prefix']}.0/24", "--cidr", f"{net['a']}/32")
        assert ping(net, net["a"]) and ping(net, net["b"]) and listing()["entries"] == []
        ok("detach", net["dev"])
        assert listing()["devices"] == [] and os.path.isdir(f"{agent.pin_root}/prefilter")
        agent.stop()  # a clean stop with no device and no entry left: the prefilter's pins go
        assert not os.path.exists(f"{agent.pin_root}/prefilter")


def test_modes_generic_and_fallback(pf: Prefilter) -> None:
    """--mode generic holds on any device; auto falls back to generic where the driver has no native XDP
    (a bridge device), and says so; native alone is refused there."""
    with veth_peer() as net:
        assert pf.attach(net["dev"], "generic").mode == "generic"
        pf.add([f"{net['a']}/32"])
        assert not ping(net, net["a"]) and ping(net, net["b"])
    bridge = f"pf{uuid.uuid4().hex[:6]}b"
    if subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], capture_output=True).returncode != 0:
        pytest.skip("no bridge devices on this kernel")
    try:
        other = Prefilter(capacity=16)
        other.load()
        try:
            with pytest.raises(Exception, match="native"):
                other.attach(bridge, "native")
            dev = other.attach(bridge)
            assert dev.mode == "generic" and "no native XDP" in dev.note
        finally:
            other.close()
    finally:
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)


def test_a_failing_write_is_undone() -> None:
    """The kernel refusing a write half-way (a map smaller than the planner was told) leaves the lists,
    the maps and the revision as they were."""
    pf = Prefilter(capacity=2)
    pf.load()
    try:
        pf.add(["10.2.0.0/16"])
        pf.lists.capacity = 10  # the planner now allows more than the kernel's maps hold
        rev = pf.listing()["revision"]
        with pytest.raises(Exception, match="cidr_v4_fix"):
            pf.add(["10.3.0.0/16", "10.4.0.1", "10.4.0.2", "10.4.0.3"])
        assert [e["cidr"] for e in pf.listing()["entries"]] == ["10.2.0.0/16"] and pf.listing()["revision"] == rev
        assert pf.maps["cidr_v4_dyn"].count() == 1 and pf.maps["cidr_v4_fix"].count() == 0
        pf.lists.capacity = 2
        pf.add(["10.4.0.1"])  # and the next change works
        assert pf.maps["cidr_v4_fix"].count() == 1
    finally:
        pf.close()
