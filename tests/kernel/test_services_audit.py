"""Services as a new user met them (a new-user audit): each test is a bug found by hand, on a real agent."""

from __future__ import annotations

import subprocess
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from apiary.testing.agent import AgentProcess
from apiary.testing.net import Net

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def env() -> Iterator[tuple[AgentProcess, Net]]:
    a = AgentProcess().start()
    net = Net(a)
    try:
        net.endpoint("web1", "shop", app="web")
        net.endpoint("client", "shop", app="client")
        yield a, net
    finally:
        net.close()
        a.cleanup()


def apply(a: AgentProcess, text: str) -> subprocess.CompletedProcess[str]:
    return a.cli("service", "apply", "-f", "-", input=textwrap.dedent(text))


def spec(a: AgentProcess, name: str) -> dict[str, Any]:
    got: dict[str, Any] = a.client().get(f"/v1/services/shop/{name}")["service"]["spec"]
    return got


NODEPORT = """\
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: shop}}
spec:
  type: NodePort
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
"""


def test_reapplying_a_file_with_a_new_service_first_keeps_the_old_allocation(env: tuple[AgentProcess, Net]) -> None:
    """The whole manifest applied again with a new service added before an existing one: the existing one
    keeps its clusterIP and nodePort (they were its own), the new one gets others. It used to fail with
    'clusterIP ... is already allocated': the new service had been given the existing one's address."""
    a, _ = env
    r = apply(a, NODEPORT.format(name="keep"))
    assert r.returncode == 0, r.stderr
    before = spec(a, "keep")
    r = apply(a, NODEPORT.format(name="fresh") + "---\n" + NODEPORT.format(name="keep"))
    assert r.returncode == 0, r.stderr
    after, fresh = spec(a, "keep"), spec(a, "fresh")
    assert after["clusterIP"] == before["clusterIP"]
    assert after["ports"][0]["nodePort"] == before["ports"][0]["nodePort"]
    assert fresh["clusterIP"] != after["clusterIP"]
    assert fresh["ports"][0]["nodePort"] != after["ports"][0]["nodePort"]
    # what a re-applied service keeps is still refused to another service asking for it by name
    clash = NODEPORT.format(name="clash").replace("selector:", f"clusterIP: {after['clusterIP']}\n  selector:")
    r = apply(a, clash + "---\n" + NODEPORT.format(name="keep"))
    assert r.returncode != 0 and "already allocated" in r.stderr
    assert a.cli("service", "delete", "shop/keep", "shop/fresh").returncode == 0
