"""`apiary status` against a real agent: subsystem verdicts with reasons, rates over a window, -o json, --verbose."""

from __future__ import annotations

import json
import subprocess

import pytest

from apiary.sensors.l7proxy.haproxy import haproxy_binary
from apiary.testing.agent import AgentProcess, is_root

pytestmark = pytest.mark.skipif(not is_root(), reason="needs root (loads BPF programs)")


def test_status_subsystems_rates_and_verbose() -> None:
    # a device that does not exist: the agent starts, and says the prefilter is degraded and why
    with AgentProcess("--prefilter-device", "apnodev0") as a:
        first = json.loads(a.cli("status", "-o", "json").stdout)  # the first sample of the rate window
        for _ in range(20):  # events the process sensor must count
            subprocess.run(["/bin/true"], check=True)
        r = a.cli("status", "-o", "json")
        assert r.returncode == 0, r.stderr
        st = json.loads(r.stdout)
        # the existing keys stay
        assert {"version", "programs", "maps", "events", "process_cache", "network", "services"} <= set(st)
        subs = {s["name"]: s for s in st["subsystems"]}
        assert list(subs) == ["process sensor", "tracing", "network datapath", "L7 proxy", "DNS proxy",
                              "services/LB", "prefilter", "API", "event bus"]
        if haproxy_binary() is not None:  # the proxies run: OK with their figures
            l7 = st["network"]["l7_proxy"]
            assert subs["L7 proxy"]["state"] == "OK" and subs["L7 proxy"]["details"]["pid"] == l7["pid"]
            assert f"on 127.0.0.1:{l7['port']}, 0 requests, 0 denied, 0 restarts" in subs["L7 proxy"]["reason"]
            assert subs["DNS proxy"]["state"] == "OK" and "0 queries, 0 refused" in subs["DNS proxy"]["reason"]
        else:
            assert subs["L7 proxy"]["state"] == "disabled" and "haproxy not installed" in subs["L7 proxy"]["reason"]
            assert subs["DNS proxy"]["state"] == "disabled"
        assert subs["process sensor"]["state"] == "OK" and subs["network datapath"]["state"] == "OK"
        assert subs["prefilter"]["state"] == "degraded" and "apnodev0" in subs["prefilter"]["reason"]
        assert st["overall"] == "degraded"
        assert st["rates"]["window_s"] > 0
        assert st["rates"]["increase"]["events"] >= 20 and "rates" in first
        assert st["rates"]["per_s"]["events"] > 0
        assert all(m["owner"] for m in st["maps"])
        text = a.cli("status").stdout
        assert "Prefilter:          degraded" not in text  # the label column is fixed-width
        assert "Prefilter:         degraded   prefilter on apnodev0: not attached" in text
        assert "Process sensor:    OK" in text and "Events/s:" in text and "Map pressure:" in text
        assert "on_exec" not in text  # programs are --verbose
        assert f"L7 proxy:          {subs['L7 proxy']['state']:<10} " in text and "DNS proxy:" in text
        # the servers and the export, one line each
        assert "Metrics:           the API socket's /metrics only (no --metrics-addr)" in text
        assert f"Hubble gRPC:       {st['serving']['Hubble gRPC']}" in text and "hubble.sock" in text
        assert "Tetragon gRPC:     " in text and "Export:            off" in text
        verbose = a.cli("status", "--verbose").stdout
        assert "Subsystem details:" in verbose and "on_exec" in verbose and "procs" in verbose
        assert "  L7 proxy: " in verbose and "  DNS proxy: " in verbose
