"""kill -9 of the agent leaves the XDP prefilter dropping: its maps and XDP link are pinned under
``<pin-root>/prefilter``; the next agent adopts them, reconciles the deny lists and devices to the stored state
(logging the diff), and keeps the revision and the per-CIDR drop counters; `apiary uninstall` removes the pins
and so the XDP link (issue 12, "Restart and state")."""

from __future__ import annotations

import ipaddress
import json
import signal
import subprocess
from collections.abc import Iterator

import pytest

from apiary.loader import Map
from apiary.sensors.prefilter import abi
from apiary.sensors.prefilter.cidrs import MAP_NAMES
from apiary.testing.agent import AgentProcess, pinned_maps
from apiary.testing.veth import ping, prefilter_cli, prefilter_listing, veth_peer

pytestmark = pytest.mark.kernel
LOG = "adopted pinned prefilter maps and XDP links, reconciled: "


@pytest.fixture(scope="module")
def env() -> Iterator[tuple[AgentProcess, dict[str, str]]]:
    with veth_peer() as net:
        a = AgentProcess("--no-network")
        try:
            a.start()
            yield a, net
        finally:
            a.cleanup()  # the pins go (and with them the XDP link), then the veth


def dump(a: AgentProcess) -> dict[str, dict[bytes, bytes]]:
    """The deny maps, read from the pins (what the kernel holds)."""
    return pinned_maps(a.pin_root, "prefilter", MAP_NAMES)


def pinned_drops(a: AgentProcess, slot: int) -> int:
    m = Map.from_pin(f"{a.pin_root}/prefilter/pf_drops")
    try:
        raw = m.lookup(slot.to_bytes(4, "little")) or b""
        return sum(int.from_bytes(v[:8], "little") for v in m.percpu_values(raw))
    finally:
        m.close()


def xdp_prog(dev: str) -> int:
    """The id of the XDP program on ``dev`` (0: none)."""
    out = json.loads(subprocess.run(["ip", "-j", "link", "show", "dev", dev], check=True, capture_output=True,
                                    text=True).stdout)
    return int(out[0].get("xdp", {}).get("prog", {}).get("id", 0))


def test_kill_9_keeps_dropping_and_the_next_agent_adopts_the_pins(env: tuple[AgentProcess, dict[str, str]]) -> None:
    a, net = env

    def ok(*args: str) -> str:
        return prefilter_cli(a, *args)

    def listing() -> dict:
        return prefilter_listing(a)

    bad = f"{net['a']}/32"
    ok("add", "--device", net["dev"], bad, "2001:db8::/32")
    assert not ping(net, net["a"]) and ping(net, net["b"])
    before_list = listing()
    rev, link_id = before_list["revision"], before_list["devices"][0]["link_id"]
    dropped = {e["cidr"]: e["drops"] for e in before_list["entries"]}[bad]
    assert dropped >= 1
    before = dump(a)
    slot = int.from_bytes(before["cidr_v4_fix"][abi.key(ipaddress.ip_network(bad))][:4], "little")

    assert a.stop(signal.SIGKILL) == -signal.SIGKILL
    assert not ping(net, net["a"]) and ping(net, net["b"])  # no agent at all: the pinned XDP link still drops
    down = pinned_drops(a, slot)
    assert down > dropped
    # a stale entry of some earlier agent in a pinned map: the next agent's reconcile removes it
    stale = Map.from_pin(f"{a.pin_root}/prefilter/cidr_v4_dyn")
    stale.update(abi.key(ipaddress.ip_network("10.77.0.0/16")), abi.value(4000))
    stale.close()

    a.start()
    log = a.log()
    assert f"{LOG}cidr_v4_dyn: +0 ~0 -1 entries" in log, log
    assert f"{LOG}devices: kept {net['dev']}, attached none, detached none" in log, log
    assert dump(a) == before  # the same entries with the same counter slots: nothing stale, missing or doubled
    after = listing()
    assert after["revision"] == rev and after["devices"][0]["link_id"] == link_id  # the very link, adopted
    assert {e["cidr"]: e["drops"] for e in after["entries"]}[bad] >= down  # counts went on across the restart
    assert not ping(net, net["a"])

    ok("delete", bad)
    assert ping(net, net["a"]) and listing()["revision"] == rev + 1

    # kill -9 again: the link stays; `apiary uninstall` removes the pins and so the XDP program
    assert a.stop(signal.SIGKILL) == -signal.SIGKILL
    assert xdp_prog(net["dev"]) != 0
    r = a.cli("uninstall", "--state-dir", str(a.dir / "state"), "--pin-root", a.pin_root, "--instance", a.instance,
              "--pod-cidr", a.pod_cidr, "--service-cidr", a.service_cidr, timeout=300)
    assert r.returncode == 0 and f"removed: pins {a.pin_root}" in r.stdout, r.stdout + r.stderr
    assert xdp_prog(net["dev"]) == 0
