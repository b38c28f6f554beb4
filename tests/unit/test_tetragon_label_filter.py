"""Tetragon's --metrics-label-filter: the process labels tetragon_events_total and tetragon_policy_events_total keep
(pure logic)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry, generate_latest

from apiary.agent.bus import EventBus
from apiary.agent.events import PROCESS_LABELS, Publisher, TracingEvents, parse_metrics_label_filter
from apiary.cli.main import cli
from apiary.kernel.features import X86_64_SYSCALLS, KernelFeatures
from apiary.observe.clock import KtimeClock
from apiary.observe.process import ProcessCache
from apiary.sensors.tracing.sensor import LoadedPolicy
from apiary.tracing.compile import compile_tracing_policy
from apiary.tracing.load import load_tracing_policies

POLICY = """
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: watch-etc}
spec:
  kprobes:
  - {call: sys_openat, syscall: true}
"""


def _series(keep: frozenset[str], metric: str = "tetragon_policy_events_total") -> list[str]:
    """Four processes (two pods of one workload, two binaries each), one exec and one tracing event each: the
    exposed series of ``metric``."""
    features = KernelFeatures(kprobes=False, fentry=False, lsm=False, override=False, syscalls=X86_64_SYSCALLS)
    compiled = compile_tracing_policy(load_tracing_policies(POLICY)[0], features)
    entry = (LoadedPolicy(compiled, 1, [3]), compiled.hooks[0])
    clock = KtimeClock(0)
    registry = CollectorRegistry()
    out = Publisher(EventBus(10, 1), registry, "n1", keep)
    events = TracingEvents(None, ProcessCache("n1", clock), clock, "n1", out, registry)
    for pod in ("web-1", "web-2"):
        for binary in ("/bin/sh", "/usr/bin/curl"):
            labels = events._labels({"binary": binary, "pod": {"namespace": "shop", "workload": "web", "name": pod}})
            events._policy_counter(entry, labels).n += 1
            out.publish("exec", {"process_exec": {}}, out.cell("exec", labels))
    text = generate_latest(registry).decode()
    return sorted(ln for ln in text.splitlines() if ln.startswith(metric + "{"))


def test_default_keeps_all_labels() -> None:
    assert parse_metrics_label_filter("namespace,workload,pod,binary") == frozenset(PROCESS_LABELS)
    rows = _series(parse_metrics_label_filter("namespace,workload,pod,binary"))
    assert len(rows) == 4
    assert ('tetragon_policy_events_total{binary="/bin/sh",hook="__x64_sys_openat",namespace="shop",node_name="n1",'
            'pod="web-1",policy="watch-etc",workload="web"} 1.0') in rows


def test_left_out_labels_stay_empty_and_their_series_collapse() -> None:
    rows = _series(parse_metrics_label_filter("namespace, workload"))
    assert rows == ['tetragon_policy_events_total{binary="",hook="__x64_sys_openat",namespace="shop",node_name="n1",'
                    'pod="",policy="watch-etc",workload="web"} 4.0']
    rows = _series(parse_metrics_label_filter("binary"))
    assert len(rows) == 2 and all('pod=""' in r and 'namespace=""' in r and r.endswith(" 2.0") for r in rows)
    assert len(_series(parse_metrics_label_filter(""))) == 1  # none kept: one series per policy and hook


def test_events_total_carries_tetragons_labels_and_the_same_filter() -> None:
    rows = _series(frozenset(PROCESS_LABELS), "tetragon_events_total")
    assert len(rows) == 4
    assert ('tetragon_events_total{binary="/usr/bin/curl",namespace="shop",node_name="n1",pod="web-2",'
            'type="PROCESS_EXEC",workload="web"} 1.0') in rows
    rows = _series(parse_metrics_label_filter("namespace,workload"), "tetragon_events_total")
    assert rows == ['tetragon_events_total{binary="",namespace="shop",node_name="n1",pod="",type="PROCESS_EXEC",'
                    'workload="web"} 4.0']


@pytest.mark.parametrize("text,bad", [("namespace,pods", "pods"), ("Binary", "Binary"), ("node_name", "node_name")])
def test_unknown_label_is_refused_naming_the_flag_and_value(text: str, bad: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_metrics_label_filter(text)
    assert str(e.value).startswith(f"--metrics-label-filter {text!r}: unknown label {bad!r}")
    assert "namespace, workload, pod, binary" in str(e.value)


def test_agent_refuses_an_unknown_label_before_starting(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["--socket", str(tmp_path / "a.sock"), "agent", "--state-dir", str(tmp_path / "s"),
                                 "--metrics-label-filter", "pod,container"])
    assert r.exit_code == 2, r.output
    assert "--metrics-label-filter 'pod,container': unknown label 'container'" in r.output
    assert list(tmp_path.iterdir()) == []  # nothing created
