"""A veth pair of a test's own, its far end in a namespace of its own (RFC 2544 benchmarking addresses), for
tests that send real packets at an XDP or TC program on the near end."""

from __future__ import annotations

import contextlib
import json
import random
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

from .agent import AgentProcess


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


@contextlib.contextmanager
def veth_peer() -> Iterator[dict[str, str]]:
    """A veth pair, the peer end in a new namespace holding two addresses of 198.18.N.0/29 (RFC 2544
    benchmarking range, N random) and fd00:N::2/64; the host end has .1 and fd00:N::1. Removed afterwards."""
    tag = uuid.uuid4().hex[:6]
    n = random.randrange(1, 250)
    ns, h_if, t_if = f"apiary-pf-{tag}", f"pf{tag}h", f"pf{tag}t"
    net = {"netns": ns, "dev": h_if, "host": f"198.18.{n}.1", "a": f"198.18.{n}.2", "b": f"198.18.{n}.3",
           "prefix": f"198.18.{n}", "host6": f"fd00:{n:x}::1", "a6": f"fd00:{n:x}::2"}
    try:
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", h_if, "type", "veth", "peer", "name", t_if, "netns", ns)
        sh("ip", "addr", "add", f"{net['host']}/29", "dev", h_if)
        sh("ip", "-6", "addr", "add", f"{net['host6']}/64", "dev", h_if, "nodad")
        sh("ip", "link", "set", h_if, "up")
        for cmd in (
            ["ip", "link", "set", "lo", "up"],
            ["ip", "addr", "add", f"{net['a']}/29", "dev", t_if],
            ["ip", "addr", "add", f"{net['b']}/29", "dev", t_if],
            ["ip", "-6", "addr", "add", f"{net['a6']}/64", "dev", t_if, "nodad"],
            ["ip", "link", "set", t_if, "up"],
        ):
            sh("ip", "netns", "exec", ns, *cmd)
        got = sh("ip", "netns", "exec", ns, "ip", "route", "get", net["host"])
        if f"dev {t_if}" not in got:  # traffic only to our own namespace's link
            raise RuntimeError(f"{net['host']} does not route over the test veth ({got.strip()}): refusing to send")
        yield net
    finally:
        subprocess.run(["ip", "link", "del", h_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@contextlib.contextmanager
def outside_host(routed: str) -> Iterator[dict[str, str]]:
    """A machine outside the node, as a namespace of the test's own behind a veth: it has 198.19.N.2/24 (RFC 2544
    benchmarking range, N random), the node's end of the link 198.19.N.1, and a route to ``routed`` (the agent's
    pod CIDR) through the node, which forwards like a router. Removed afterwards."""
    tag = uuid.uuid4().hex[:6]
    n = random.randrange(1, 250)
    ns, h_if, t_if = f"apiary-ou-{tag}", f"ou{tag}h", f"ou{tag}t"
    net = {"netns": ns, "dev": h_if, "node": f"198.19.{n}.1", "client": f"198.19.{n}.2", "cidr": f"198.19.{n}.0/24"}
    try:
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", h_if, "type", "veth", "peer", "name", t_if, "netns", ns)
        sh("ip", "addr", "add", f"{net['node']}/24", "dev", h_if)
        sh("ip", "link", "set", h_if, "up")
        for cmd in (
            ["ip", "link", "set", "lo", "up"],
            ["ip", "addr", "add", f"{net['client']}/24", "dev", t_if],
            ["ip", "link", "set", t_if, "up"],
            ["ip", "route", "add", routed, "via", net["node"], "dev", t_if],
        ):
            sh("ip", "netns", "exec", ns, *cmd)
        got = sh("ip", "route", "get", net["client"])
        if f"dev {h_if}" not in got:  # the node answers the client over the test link only
            raise RuntimeError(f"{net['client']} does not route over the test veth ({got.strip()}): refusing to send")
        yield net
    finally:
        subprocess.run(["ip", "link", "del", h_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def ping(net: dict[str, str], src: str, dst: str | None = None) -> bool:
    """One echo request from ``src`` (an address inside the namespace) to the host end."""
    dst = dst or (net["host6"] if ":" in src else net["host"])
    r = subprocess.run(["ip", "netns", "exec", net["netns"], "ping", "-c", "1", "-W", "1", "-I", src, dst],
                       capture_output=True)
    return r.returncode == 0


def prefilter_cli(agent: AgentProcess, *args: str) -> str:
    """`apiary prefilter ARGS` against ``agent``, which must succeed: its output."""
    r = agent.cli("prefilter", *args)
    assert r.returncode == 0, f"{args}: {r.stderr}\n{agent.log()[-3000:]}"
    return r.stdout


def prefilter_listing(agent: AgentProcess) -> dict[str, Any]:
    """`apiary prefilter list -o json`."""
    out: dict[str, Any] = json.loads(prefilter_cli(agent, "list", "-o", "json"))
    return out
