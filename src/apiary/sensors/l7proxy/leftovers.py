"""What one agent instance's L7 proxy leaves in the kernel, named from the instance alone (for `apiary
uninstall` and for tests that kill an agent): the proxy's cgroup (HAProxy's processes are in it, and only
they) and the ip rule with its local route table."""

from __future__ import annotations

import contextlib
import zlib
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

RULE_PRIORITY = 9000


def rule_numbers(instance: str) -> tuple[int, int]:
    """(route table, fwmark) of an instance's proxy: redirected packets carry the mark, the rule sends
    them to the table, whose one route delivers them locally."""
    n = zlib.crc32(instance.encode()) % 30000
    return 20000 + n, 0x0A900000 + n


def proxy_cgroup(cgroup_root: str | Path, instance: str) -> Path:
    return Path(cgroup_root) / f"apiary-l7proxy-{instance}"


def route_present(instance: str) -> bool:
    table, mark = rule_numbers(instance)
    with IPRoute() as ipr:
        return any(r.get_attr("FRA_TABLE") == table and r.get_attr("FRA_FWMARK") == mark for r in ipr.get_rules())


def unroute(instance: str) -> None:
    """Remove the instance's ip rule and its table's local route (each only if present)."""
    table, mark = rule_numbers(instance)
    with IPRoute() as ipr:
        with contextlib.suppress(NetlinkError):
            ipr.rule("del", fwmark=mark, fwmask=0xFFFFFFFF, table=table, priority=RULE_PRIORITY)
        with contextlib.suppress(NetlinkError):
            ipr.route("del", dst="0.0.0.0/0", type="local", scope="host", oif=ipr.link_lookup(ifname="lo")[0],
                      table=table)
