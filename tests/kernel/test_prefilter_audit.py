"""The XDP prefilter as a new user met it (a new-user audit): each test is a bug found by hand."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from apiary.sensors.prefilter.sensor import Prefilter
from apiary.testing.agent import AgentProcess
from apiary.testing.veth import ping, prefilter_cli, prefilter_listing, sh, veth_peer

pytestmark = pytest.mark.kernel


@pytest.fixture
def pf() -> Iterator[Prefilter]:
    p = Prefilter(capacity=64)
    p.load()
    try:
        yield p
    finally:
        p.close()


def _recreate(net: dict[str, str]) -> None:
    """Delete the veth pair and make it again with the same names and addresses (as a CNI or a reboot of a
    container does): the XDP link of the deleted device went with it."""
    h_if, t_if, ns = net["dev"], net["dev"][:-1] + "t", net["netns"]
    sh("ip", "link", "del", h_if)
    sh("ip", "link", "add", h_if, "type", "veth", "peer", "name", t_if, "netns", ns)
    sh("ip", "addr", "add", f"{net['host']}/29", "dev", h_if)
    sh("ip", "link", "set", h_if, "up")
    for cmd in (["ip", "addr", "add", f"{net['a']}/29", "dev", t_if], ["ip", "link", "set", t_if, "up"]):
        sh("ip", "netns", "exec", ns, *cmd)


def test_a_device_deleted_and_made_again_is_attached_again(pf: Prefilter) -> None:
    """`prefilter add --device X` after X was deleted and re-created attaches to the new X. It used to answer
    'device X: XDP native' from the stale record while nothing was attached: nothing was dropped."""
    with veth_peer() as net:
        first = pf.attach(net["dev"])
        pf.add([f"{net['a']}/32"])
        assert not ping(net, net["a"])
        _recreate(net)
        assert first.link.xdp_ifindex() == 0  # the old link holds no device any more
        dev = pf.attach(net["dev"])
        assert dev.link.xdp_ifindex() == dev.ifindex != first.ifindex
        assert "xdp" in sh("ip", "link", "show", net["dev"])
        assert not ping(net, net["a"])  # dropped again
        assert pf.attach(net["dev"]) is dev  # a device still held keeps its link


def test_agent_attaches_a_device_made_again() -> None:
    """The same through the agent: `apiary prefilter add --device X` attaches to the new X."""
    with veth_peer() as net, AgentProcess() as a:
        prefilter_cli(a, "add", "--device", net["dev"], f"{net['a']}/32")
        assert not ping(net, net["a"])
        _recreate(net)
        assert ping(net, net["a"])  # nothing on the new device yet
        prefilter_cli(a, "add", "--device", net["dev"], "203.0.113.0/24")
        assert "xdp" in sh("ip", "link", "show", net["dev"])
        assert not ping(net, net["a"])
        assert [d["device"] for d in prefilter_listing(a)["devices"]] == [net["dev"]]
