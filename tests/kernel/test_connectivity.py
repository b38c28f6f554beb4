"""`apiary connectivity test` against a real agent: every scenario passes, --test selects, a sabotaged
namespace fails with ❌ and exit 1, and nothing the run created is left behind (also after Ctrl-C)."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator

import pytest

from apiary.connectivity.scenarios import SCENARIOS
from apiary.sensors.l7proxy.haproxy import haproxy_binary
from apiary.testing.agent import AgentProcess, one_line_error

pytestmark = pytest.mark.kernel
TIMEOUT = 900


@pytest.fixture(scope="module")
def agent() -> Iterator[AgentProcess]:
    a = AgentProcess().start()
    try:
        yield a
    finally:
        a.cleanup()


def run(a: AgentProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return a.cli("connectivity", "test", *args, timeout=TIMEOUT)


def host_leftovers(a: AgentProcess) -> set[str]:
    """The host objects a connectivity run names as its own (netns, veths, scratch dirs)."""
    netns = os.listdir("/run/netns") if os.path.isdir("/run/netns") else []
    found = {f"netns {n}" for n in netns if n.startswith(("apiary-ct-", f"apiary-{a.instance}-"))}
    links = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True, check=True).stdout
    found |= {f"link {x['ifname']}" for x in json.loads(links) if x["ifname"].startswith("ct")}
    return found | set(glob.glob("/dev/shm/apiary-conntest-*")) | set(glob.glob("/tmp/apiary-conntest-*"))


@pytest.fixture(autouse=True)
def before(agent: AgentProcess) -> set[str]:
    """What other sessions' runs had on the host when the test began (so only this test's runs are judged)."""
    return host_leftovers(agent)


def assert_nothing_left(a: AgentProcess, before: set[str], keep_policies: int = 0) -> None:
    c = a.client()
    assert c.get("/v1/endpoints") == []
    assert len(c.get("/v1/policies")["policies"]) == keep_policies
    assert c.get("/v1/services")["frontends"] == []
    assert c.get("/v1/tracingpolicies") == []
    pf = c.get("/v1/prefilter")
    assert pf["entries"] == [] and pf["devices"] == []
    left = host_leftovers(a) - before
    assert not left, left


def test_every_scenario_passes_and_nothing_is_left(agent: AgentProcess, before: set[str]) -> None:
    r = run(agent)
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}\n{agent.log()[-3000:]}"
    lines = r.stdout.splitlines()
    proxy = haproxy_binary() is not None  # the agent runs its L7 proxy when haproxy is installed
    skipped_names = set() if proxy else {"l7-http", "dns"}  # the DNS proxy starts with the L7 proxy
    for s in SCENARIOS:
        (line,) = [ln for ln in lines if f"[{s.name}]" in ln]
        if s.name in skipped_names:
            assert line.startswith("⏭️") and f"{'DNS' if s.dns else 'L7'} proxy not available in this agent" in line
        else:
            assert line.startswith("✅"), line
    if proxy:  # the allowed GET got the server's 200, the other one the proxy's 403; the allowed name resolved
        (l7,) = [ln for ln in lines if "[l7-http]" in ln]  # through the DNS proxy, the other one it refused
        (dns,) = [ln for ln in lines if "[dns]" in ln]
        assert l7.endswith("(2 actions)") and dns.endswith("(2 actions)"), (l7, dns)
        assert agent.client().get("/v1/status")["network"]["dns_proxy"]["refused"] >= 1
    skipped = len(skipped_names)
    ran = len(SCENARIOS) - skipped
    last = lines[-1]
    assert last.startswith(f"✅ All {ran} tests (") and last.endswith(
        f"actions) successful, {skipped} tests skipped, 0 scenarios skipped."), last
    assert_nothing_left(agent, before)


def test_test_pattern_selects_and_excludes(agent: AgentProcess, before: set[str]) -> None:
    r = run(agent, "--test", "pod-to", "--test", "!host", "-o", "json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [x["name"] for x in out["results"]] == ["pod-to-pod", "pod-to-service"]
    assert {x["result"] for x in out["results"]} == {"success"} and out["complete"]
    r = run(agent, "--test", "!pod-,!host,!l7,!dns,!prefilter,!tracing,!flow", "--list")
    assert r.returncode == 0 and [ln.split()[0] for ln in r.stdout.splitlines()] == ["allow-l3-l4", "deny-precedence"]
    bad = run(agent, "--test", "no-such-scenario")
    assert bad.returncode == 2 and "matches no scenario" in one_line_error(bad)
    assert_nothing_left(agent, before)


def test_a_deny_all_in_the_test_namespace_fails_pod_to_pod(agent: AgentProcess, before: set[str]) -> None:
    """The honest sabotage: a policy the operator (here: the test) put in the namespace the connectivity test
    is told to use denies all ingress there, so pod-to-pod must fail, be reported, and exit 1."""
    ns = f"conntest-sab-{uuid.uuid4().hex[:6]}"
    deny_all = textwrap.dedent(f"""\
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {{name: deny-all, namespace: {ns}}}
        spec:
          endpointSelector: {{}}
          ingressDeny:
          - fromEntities: [all]
        """)
    r = agent.cli("policy", "apply", "-f", "-", input=deny_all)
    assert r.returncode == 0, r.stderr
    try:
        r = run(agent, "--test-namespace", ns, "--test", "pod-to-pod|pod-to-host")
        assert r.returncode == 1, r.stdout
        lines = r.stdout.splitlines()
        (bad,) = [ln for ln in lines if ln.startswith("❌ [pod-to-pod]")]
        assert bad.startswith("❌") and "expect success): connection failed: timed out" in bad, bad
        (good,) = [ln for ln in lines if ln.startswith(("✅ [pod-to-host]", "❌ [pod-to-host]"))]
        assert good.startswith("✅"), good  # ingress to the node is not the namespace's policy to deny
        # the scenarios --test left out count as skipped tests, as in cilium-cli
        assert f"❌ 1/2 tests failed (1/2 actions), {len(SCENARIOS) - 2} tests skipped, 0 scenarios skipped:" in lines
        assert "Test [pod-to-pod]:" in lines
        assert_nothing_left(agent, before, keep_policies=1)  # the operator's policy is not the test's to remove
    finally:
        agent.cli("policy", "delete", "deny-all", "-n", ns)
    assert_nothing_left(agent, before)


def test_a_refused_set_up_is_one_error_and_leaves_nothing(agent: AgentProcess, before: set[str]) -> None:
    r = run(agent, "--test-namespace", "Not A Namespace!", "--test", "pod-to-pod")
    err = one_line_error(r)
    assert r.returncode == 1 and "set-up failed" in err and "namespace" in err, err
    assert_nothing_left(agent, before)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_removes_everything(agent: AgentProcess, sig: int, before: set[str]) -> None:
    # SIGINT as a terminal's Ctrl-C delivers it: a suite started as a background job (`make test &`) inherits
    # SIGINT ignored, and Python keeps an ignored SIGINT ignored, so the CLI gets it at its default
    p = subprocess.Popen([sys.executable, "-m", "apiary", "--socket", agent.socket, "connectivity", "test"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert p.stdout is not None
    seen = []
    for line in p.stdout:  # interrupt once a scenario has run: endpoints, servers and a Service exist then
        seen.append(line)
        if "[pod-to-service]" in line:
            break
    p.send_signal(sig)
    out, err = p.communicate(timeout=TIMEOUT)
    assert p.returncode == 130, ("".join(seen) + out, err)
    assert "🧹" in out and "connectivity test interrupted" in err
    assert_nothing_left(agent, before)
