"""deploy/: the alerting rules pass `promtool check rules` and their unit tests (`promtool test rules`); the
PromQL name extraction the dashboard check relies on; `--metrics-addr` and `--hubble-metrics` refuse bad values."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from apiary.agent.metrics_server import MetricsError, parse_metrics_addr
from apiary.testing.agent import one_line_error
from apiary.testing.prom import exposed_names, promql_metric_names

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="prometheus not installed (scripts/setup.sh)")


def _promtool(*args: str, cwd: Path = DEPLOY) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120, cwd=cwd)


@promtool
def test_rules_pass_promtool_check_and_their_unit_tests() -> None:
    r = _promtool("check", "rules", "prometheus-rules.yaml")
    assert r.returncode == 0 and "SUCCESS: 4 rules found" in r.stdout, r.stdout + r.stderr
    r = _promtool("test", "rules", "prometheus-rules.test.yaml")
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


@promtool
def test_rule_unit_tests_fail_when_an_alert_changes(tmp_path: Path) -> None:
    """The unit tests can fail: with the drop threshold raised above the test's 20/s, the alert never fires."""
    rules = (DEPLOY / "prometheus-rules.yaml").read_text()
    assert "> 10\n" in rules
    (tmp_path / "prometheus-rules.yaml").write_text(rules.replace("> 10\n", "> 50\n"))
    shutil.copy(DEPLOY / "prometheus-rules.test.yaml", tmp_path)
    r = _promtool("test", "rules", "prometheus-rules.test.yaml", cwd=tmp_path)
    assert r.returncode != 0 and "HighPolicyDropRate" in r.stdout + r.stderr


@promtool
def test_lost_events_alert_fires_with_one_side_only(tmp_path: Path) -> None:
    """`sum(a) + sum(b)` is empty when one side has no series (--no-network: no flow ring): the rule's unit tests
    (tetragon losses alone, export losses alone) fail with it, and pass with each side `or vector(0)`."""
    rules = (DEPLOY / "prometheus-rules.yaml").read_text()
    assert rules.count("or vector(0))") == 3 and "apiary_export_lost_total" in rules
    start = rules.index("    expr: >-\n      (sum(rate(hubble_lost")
    end = rules.index(" > 0\n", rules.index("apiary_export_lost"))
    old = ("    expr: sum(rate(hubble_lost_events_total[5m])) + sum(rate(tetragon_bpf_missed_events_total[5m])) + "
           'sum(rate(apiary_export_lost_total{reason!="rate_limited"}[5m]))')
    (tmp_path / "prometheus-rules.yaml").write_text(rules[:start] + old + rules[end:])
    shutil.copy(DEPLOY / "prometheus-rules.test.yaml", tmp_path)
    r = _promtool("test", "rules", "prometheus-rules.test.yaml", cwd=tmp_path)
    assert r.returncode != 0 and "ApiaryLostEvents" in r.stdout + r.stderr, r.stdout + r.stderr


def test_seed_alerts_are_present() -> None:
    import yaml

    alerts = {r["alert"] for g in yaml.safe_load((DEPLOY / "prometheus-rules.yaml").read_text())["groups"]
              for r in g["rules"]}
    assert {"ApiaryAgentDown", "HighPolicyDropRate", "TetragonSecurityEvent"} <= alerts


def test_promql_metric_names() -> None:
    assert promql_metric_names('sum by (reason) (rate(hubble_drop_total{reason=~"POLICY_.*"}[5m])) > 10') == {
        "hubble_drop_total"
    }
    assert promql_metric_names(
        "sum by (program) (rate(apiary_bpf_program_run_seconds_total[$__rate_interval])) / "
        "sum by (program) (rate(apiary_bpf_program_runs_total[1m]))"
    ) == {"apiary_bpf_program_run_seconds_total", "apiary_bpf_program_runs_total"}
    assert promql_metric_names('topk(10, sum(x_total) without (a, b)) and on (c) up{job="apiary"} == 0') == {
        "x_total", "up"
    }
    assert promql_metric_names("1e3 * foo offset 5m") == {"foo"}


def test_exposed_names_include_families_without_samples() -> None:
    text = "# HELP a_total x\n# TYPE a_total counter\n# TYPE b gauge\nb{x=\"1\"} 2.0\n"
    assert exposed_names(text) == {"a_total", "b"}


def test_metrics_addr_is_loopback_unless_allowed() -> None:
    assert parse_metrics_addr("127.0.0.1:9962") == ("127.0.0.1", 9962)
    assert parse_metrics_addr("localhost:9962") == ("127.0.0.1", 9962)
    assert parse_metrics_addr("[::1]:9962") == ("::1", 9962)
    assert parse_metrics_addr("0.0.0.0:9962", allow_remote=True) == ("0.0.0.0", 9962)
    for bad, says in (
        ("0.0.0.0:9962", "0.0.0.0 is not a loopback address"),
        ("192.0.2.1:9962", "needs --metrics-allow-remote"),
        ("9962", "expected HOST:PORT"),
        ("127.0.0.1:http", "port 'http' is not a number"),
        ("127.0.0.1:70000", "out of range"),
        ("example.com:9962", "is not an IP address"),
    ):
        with pytest.raises(MetricsError) as e:
            parse_metrics_addr(bad)
        assert says in str(e.value) and f"--metrics-addr {bad!r}" in str(e.value)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--metrics-addr", "0.0.0.0:9962"), "not a loopback address"),
        (("--metrics-allow-remote",), "--metrics-allow-remote: needs --metrics-addr"),
        (("--hubble-metrics", "flow kafka"), "--hubble-metrics 'kafka': not served by apiary yet"),
    ],
)
def test_agent_refuses_bad_metrics_flags_before_starting(args: tuple[str, ...], says: str, tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "apiary", "--socket", str(tmp_path / "a.sock"), "agent", "--state-dir",
         str(tmp_path / "state"), *args],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 2 and says in one_line_error(r)
    assert not (tmp_path / "state").exists()  # nothing was changed


class _Ring:
    pass


class _Sensor:
    """A sensor with no programs or maps whose ring lost ``lost`` records (pure accounting, no kernel)."""

    def __init__(self, ring: object, lost: dict[str, int]) -> None:
        from apiary.sensors.base import RingCounts

        self.ring, self.counts = ring, RingCounts({}, lost)

    def owned_maps(self) -> list[object]:
        return []

    def program_rows(self) -> list[object]:
        return []

    def records_into(self) -> object:
        return self.ring

    def ring_counts(self) -> object:
        return self.counts


class _Network:
    def __init__(self) -> None:
        from types import SimpleNamespace

        from prometheus_client import CollectorRegistry

        from apiary.observe.hubble.metrics import FlowMetrics

        self.kernel_lost = 0
        self.registry = CollectorRegistry()
        self.metrics = FlowMetrics(self.registry)
        self.em = SimpleNamespace(endpoints={"a/1": 1, "a/2": 2, "a/3": 3})
        self.alloc = SimpleNamespace(count=lambda: 2)
        self.policies = {"a/p": 1}
        self.dp = SimpleNamespace(obj=True, lost=lambda: self.kernel_lost)
        self.l7 = SimpleNamespace(dropped=0)  # HAProxy's dropped access-log records


def test_collector_moves_lost_counters_by_the_kernels_difference() -> None:
    """The flow ring's kernel count moves hubble_lost_events_total by what it grew since the last scrape; the
    event ring's losses are tetragon_bpf_missed_events_total by Tetragon's msg_op."""
    from types import SimpleNamespace

    from prometheus_client import generate_latest

    from apiary.agent.metrics_server import AgentCollector
    from apiary.observe.process import ProcessCache

    ring = _Ring()
    process = _Sensor(ring, {"exec": 4, "tracing": 1})
    net = _Network()
    agent = SimpleNamespace(sensors=[process, _Sensor(_Ring(), {"flow": 99})], cache=ProcessCache("n"),
                            stats_fd=None, network=net, services=None, tracing=None, process=process)
    AgentCollector(agent, net.registry)  # type: ignore[arg-type]

    def value(name: str, **labels: str) -> float | None:
        generate_latest(net.registry)  # a scrape
        return net.registry.get_sample_value(name, labels)

    lost = dict(source="perf_event_ring_buffer")
    assert value("hubble_lost_events_total", **lost) == 0
    net.kernel_lost = 7
    assert value("hubble_lost_events_total", **lost) == 7
    assert value("hubble_lost_events_total", **lost) == 7  # scraped again: not counted twice
    net.kernel_lost = 10
    assert value("hubble_lost_events_total", **lost) == 10
    proxy = dict(source="l7_proxy_access_log")  # shown at 0 before any loss, so a rate() sees the first one
    assert value("hubble_lost_events_total", **proxy) == 0
    net.l7.dropped = 5
    assert value("hubble_lost_events_total", **proxy) == 5
    assert value("hubble_lost_events_total", **proxy) == 5
    assert value("hubble_lost_events_total", **lost) == 10
    assert value("tetragon_bpf_missed_events_total", msg_op="5", error="ENOSPC") == 4
    assert value("tetragon_bpf_missed_events_total", msg_op="13", error="ENOSPC") == 1
    assert value("tetragon_bpf_missed_events_total", msg_op="7", error="ENOSPC") == 0
    assert value("apiary_bpf_stats_enabled") == 0  # said plainly: no BPF stats, the run counters stay 0
    assert value("apiary_endpoints") == 3 and value("apiary_identities") == 2 and value("apiary_services") == 0
