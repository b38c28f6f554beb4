"""deploy/: the Kubernetes manifests and the Helm chart validated offline against the Kubernetes schemas
(kubernetes-validate ships them), their agent arguments parsed by the real CLI, the systemd unit verified by
systemd-analyze when it is there.

The chart is rendered and linted by Helm itself: helm-python-sdk binds Helm v4's Go SDK (its template engine and
linter, built into the wheel as a C library), so no `helm` binary, Go toolchain or cluster is needed.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import click
import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from apiary.cli.main import agent as agent_cmd

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "apiary"
K8S_VERSION = "1.30.0"
CRD_KINDS = {"CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy", "TracingPolicy", "TracingPolicyNamespaced"}
CAPS = {"CAP_BPF", "CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_PERFMON", "CAP_SYS_RESOURCE"}


def _docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def _chart_docs(values: dict[str, Any] | None = None, namespace: str = "kube-system") -> list[dict[str, Any]]:
    """`helm template apiary deploy/helm/apiary --namespace NS [-f values]`, by Helm's own engine."""
    vals = values or yaml.safe_load((CHART / "values.yaml").read_text())
    rendered = helm.Chart.load(CHART).render(values=vals, name="apiary", namespace=namespace)
    assert rendered, "helm rendered no template"
    out: list[dict[str, Any]] = []
    for name in sorted(rendered):
        out += _docs(rendered[name])
    return out


def test_helm_lints_the_chart_clean() -> None:
    report = helm.lint(CHART, strict=True, kube_version=f"v{K8S_VERSION}")
    assert report["errors"] == [] and report["total_charts_linted"] == 1, report
    assert [m for m in report["messages"] if m["severity"] >= 2] == [], report  # no warning, no error
    broken = yaml.safe_load((CHART / "values.yaml").read_text())
    broken["loadBalancer"] = "maglev"  # a string where the chart wants a map: Helm's own error names the field
    with pytest.raises(helm.HelmRenderError, match=r"\.Values\.loadBalancer\.algorithm"):
        helm.Chart.load(CHART).render(values=broken, name="apiary", namespace="kube-system")


def _validate(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def _daemonset(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == "DaemonSet")


def test_plain_manifests_validate_and_have_what_the_agent_needs() -> None:
    docs = _docs((DEPLOY / "kubernetes" / "apiary.yaml").read_text())
    crds = _docs((DEPLOY / "kubernetes" / "crds.yaml").read_text())
    for d in docs + crds:
        _validate(d)
    assert {d["spec"]["names"]["kind"] for d in crds} == CRD_KINDS
    assert {d["kind"] for d in docs} == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet"}
    pod = _daemonset(docs)["spec"]["template"]["spec"]
    assert pod["hostNetwork"] and pod["hostPID"] and pod["serviceAccountName"] == "apiary"
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert {"/sys/fs/bpf", "/sys/fs/cgroup", "/procHost", "/run/apiary", "/run/netns", "/var/lib/apiary"} <= mounts
    role = next(d for d in docs if d["kind"] == "ClusterRole")
    read = {r for rule in role["rules"] for r in rule["resources"]}
    assert {d["spec"]["names"]["plural"] for d in crds} <= read  # it may read every CRD it defines


def test_a_wrong_manifest_is_refused_by_the_validator() -> None:
    ds = _daemonset(_docs((DEPLOY / "kubernetes" / "apiary.yaml").read_text()))
    ds["spec"]["template"]["spec"]["hostNetwork"] = "yes"  # a string where a boolean belongs
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(ds)
    ds["spec"]["template"]["spec"]["hostNetwork"] = True
    ds["spec"]["template"]["spec"]["hostNetwrk"] = True  # strict: an unknown field
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(ds)


def test_daemonset_args_are_options_the_agent_accepts() -> None:
    for docs in (_docs((DEPLOY / "kubernetes" / "apiary.yaml").read_text()), _chart_docs()):
        c = _daemonset(docs)["spec"]["template"]["spec"]["containers"][0]
        assert c["command"] == ["apiary"] and c["args"][0] == "agent"
        ctx = agent_cmd.make_context("agent", list(c["args"][1:]), obj={})  # click parses and checks every value
        assert ctx.params["state_dir"] == "/var/lib/apiary"
        # TracingPolicy kills go on through a rollout; metrics on Cilium's agent port, loopback only
        assert ctx.params["keep_sensors_on_exit"] is True
        assert ctx.params["metrics_addr"] == "127.0.0.1:9962"


def test_chart_renders_to_the_plain_manifests_and_values_reach_the_agent() -> None:
    plain = _docs((DEPLOY / "kubernetes" / "apiary.yaml").read_text())
    rendered = _chart_docs()
    for d in rendered:
        _validate(d)
    def key(d: dict[str, Any]) -> tuple[str, str]:
        return d["kind"], d["metadata"]["name"]

    assert sorted(rendered, key=key) == sorted(plain, key=key)  # the chart's defaults are the plain manifests
    assert (CHART / "crds" / "crds.yaml").read_text() == (DEPLOY / "kubernetes" / "crds.yaml").read_text()
    vals = yaml.safe_load((CHART / "values.yaml").read_text())
    vals["policyEnforcementMode"] = "always"
    vals["loadBalancer"]["algorithm"] = "maglev"
    vals["resources"]["limits"]["memory"] = "4Gi"
    ds = _daemonset(_chart_docs(vals, namespace="apiary-system"))
    _validate(ds)
    c = ds["spec"]["template"]["spec"]["containers"][0]
    params = agent_cmd.make_context("agent", list(c["args"][1:]), obj={}).params
    assert params["enable_policy"] == "always" and params["lb_algorithm"] == "maglev"
    assert c["resources"]["limits"]["memory"] == "4Gi" and ds["metadata"]["namespace"] == "apiary-system"
    assert params["metrics_addr"] == "127.0.0.1:9962" and params["keep_sensors_on_exit"]  # the defaults
    vals["prometheus"]["enabled"] = False
    off = _daemonset(_chart_docs(vals, namespace="apiary-system"))["spec"]["template"]["spec"]["containers"][0]
    assert agent_cmd.make_context("agent", list(off["args"][1:]), obj={}).params["metrics_addr"] is None
    vals["prometheus"] = {"enabled": True, "port": 9090}  # the seed's cilium-values.yaml
    vals["hubble"]["metrics"]["enabled"] = ["dns", "drop", "tcp", "flow", "port-distribution"]  # the seed's list
    vals["tetragon"]["exporter"]["otlp"] = {"enabled": True, "endpoint": "http://otel-collector:4318"}
    ds = _daemonset(_chart_docs(vals))
    _validate(ds)
    args = list(ds["spec"]["template"]["spec"]["containers"][0]["args"][1:])
    assert args[-3:] == ["--metrics-addr=127.0.0.1:9090", "--hubble-metrics=dns drop tcp flow port-distribution",
                         "--export-otlp-endpoint=http://otel-collector:4318"]
    params = agent_cmd.make_context("agent", args, obj={}).params
    assert params["metrics_addr"] == "127.0.0.1:9090"
    assert params["hubble_metrics"] == ("dns drop tcp flow port-distribution",)
    assert params["export_otlp_endpoint"] == "http://otel-collector:4318"
    from apiary.observe.hubble.metrics import parse_hubble_metrics

    parse_hubble_metrics(params["hubble_metrics"])  # the seed's list is one the agent serves
    vals["prometheus"]["enabled"] = False  # each key alone: the others' flags go with their key
    assert not any(a.startswith("--metrics-addr") for a in _daemonset(_chart_docs(vals))["spec"]["template"]["spec"][
        "containers"][0]["args"])
    vals["prometheus"]["enabled"] = True
    vals["xdp"] = {"preFilter": True, "preFilterInterface": "eth0"}  # the seed's cilium-values.yaml
    vals["tetragon"]["bpf"]["ringBufferSize"] = 64  # the seed's tetragon-values.yaml (MB)
    ds = _daemonset(_chart_docs(vals))
    _validate(ds)
    params = agent_cmd.make_context("agent", list(ds["spec"]["template"]["spec"]["containers"][0]["args"][1:]),
                                    obj={}).params
    assert params["prefilter_devices"] == ("eth0",) and params["ringbuf_size"] == 64 * 1024 * 1024
    vals["xdp"]["preFilterInterface"] = ""  # on, with no device: Helm's own error names the key
    with pytest.raises(helm.HelmError, match="xdp.preFilterInterface"):
        _chart_docs(vals)
    vals["xdp"]["preFilter"] = False
    vals["policyEnforcementMode"] = "sometimes"  # a value the agent refuses fails where the chart is used
    c = _daemonset(_chart_docs(vals))["spec"]["template"]["spec"]["containers"][0]
    with pytest.raises(click.BadParameter):
        agent_cmd.make_context("agent", list(c["args"][1:]), obj={})


def test_systemd_unit_capabilities_hardening_and_verify(tmp_path: Path) -> None:
    text = (DEPLOY / "apiary.service").read_text()
    opts: dict[str, str] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            k, _, v = line.partition("=")
            opts[k] = v
    assert CAPS <= set(opts["CapabilityBoundingSet"].split()) and CAPS <= set(opts["AmbientCapabilities"].split())
    assert opts["NoNewPrivileges"] == "yes" and opts["ProtectSystem"] == "strict"
    assert opts["LimitMEMLOCK"] == "infinity" and "/sys/fs/bpf" in opts["ReadWritePaths"]
    argv = shlex.split(opts["ExecStart"])
    assert argv[1] == "agent"
    params = agent_cmd.make_context("agent", argv[2:], obj={}).params  # the unit's options, parsed by the CLI
    assert params["keep_sensors_on_exit"] is True and params["metrics_addr"] == "127.0.0.1:9962"
    assert params["state_dir"] == "/var/lib/apiary" and params["pin_root"] == "/sys/fs/bpf/apiary"
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    # the unit names /opt/apiary; verify checks that ExecStart exists, so point it at this checkout's venv
    exe = ROOT / ".venv" / "bin" / "apiary"
    unit = tmp_path / "apiary.service"
    unit.write_text(text.replace("/opt/apiary/.venv/bin/apiary", str(exe)))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "apiary.service" not in r.stderr, r.stderr
