"""`apiary tp delete --offline` / `apiary policy delete --offline`: edits of a stopped agent's state directory,
refused while an agent holds it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from apiary.agent import statedir
from apiary.cli.main import cli

TP = [
    {"key": "/kill-cli", "source": "kind: TracingPolicy", "mode": None, "enabled": True},
    {"key": "team/audit", "source": "kind: TracingPolicyNamespaced", "mode": None, "enabled": True},
]
NP = {
    "revision": 7,
    "policies": [
        {"kind": "CiliumNetworkPolicy", "namespace": "team", "name": "web", "revision": 6, "source": "a"},
        {"kind": "CiliumClusterwideNetworkPolicy", "namespace": "", "name": "web", "revision": 7, "source": "b"},
    ],
}


@pytest.fixture
def state(tmp_path: Path) -> Path:
    (tmp_path / statedir.TRACING_FILE).write_text(json.dumps(TP))
    (tmp_path / statedir.NETWORK_FILE).write_text(json.dumps(NP))
    return tmp_path


def run(*args: str) -> tuple[int, str]:
    if args[0] == "tp" and "--offline" in args:  # never the machine's pins
        args = (*args, "--pin-root", "/nonexistent/apiary-pins")
    r = CliRunner().invoke(cli, list(args), obj={})
    return r.exit_code, r.output


def test_tp_delete_offline_removes_only_that_policy(state: Path) -> None:
    code, out = run("tp", "delete", "--offline", "kill-cli", "--state-dir", str(state))
    assert code == 0 and f"tracingpolicy kill-cli deleted from {state}" in out
    assert [r["key"] for r in json.loads((state / statedir.TRACING_FILE).read_text())] == ["team/audit"]
    code, out = run("tp", "delete", "--offline", "audit", "-n", "team", "--state-dir", str(state))
    assert code == 0 and json.loads((state / statedir.TRACING_FILE).read_text()) == []


def test_policy_delete_offline_removes_by_name_and_namespace_and_bumps_the_revision(state: Path) -> None:
    code, out = run("policy", "delete", "--offline", "web", "--state-dir", str(state))
    assert code == 0 and "deleted CiliumClusterwideNetworkPolicy web" in out and "next starts" in out
    data = json.loads((state / statedir.NETWORK_FILE).read_text())
    assert data["revision"] == 8 and [(p["namespace"], p["name"]) for p in data["policies"]] == [("team", "web")]


@pytest.mark.parametrize(
    "args",
    [
        ("tp", "delete", "--offline", "kill-cli"),
        ("policy", "delete", "--offline", "web", "-n", "team"),
    ],
)
def test_offline_delete_is_refused_while_an_agent_holds_the_state_dir(state: Path, args: tuple[str, ...]) -> None:
    before = {p.name: p.read_text() for p in state.iterdir()}
    fd = statedir.lock(state)  # what a running agent holds (a second flock on another open file conflicts)
    try:
        code, out = run(*args, "--state-dir", str(state))
    finally:
        os.close(fd)
    assert code == 1
    assert f"the apiary state directory {state} is in use by pid {os.getpid()}" in out and "stop the agent" in out
    assert {p.name: p.read_text() for p in state.iterdir() if p.name != statedir.LOCK_FILE} == {
        k: v for k, v in before.items() if k != statedir.LOCK_FILE
    }
    code, _ = run(*args, "--state-dir", str(state))  # once the lock is released, it works
    assert code == 0


def test_unknown_policy_or_missing_state_dir_is_one_line_and_changes_nothing(state: Path, tmp_path: Path) -> None:
    before = (state / statedir.TRACING_FILE).read_text()
    code, out = run("tp", "delete", "--offline", "nope", "--state-dir", str(state))
    assert code == 1 and "no stored tracing policy 'nope'" in out and "Traceback" not in out
    assert (state / statedir.TRACING_FILE).read_text() == before
    code, out = run("policy", "delete", "--offline", "web", "-n", "other", "--state-dir", str(state))
    assert code == 1 and "no stored policy 'web' in namespace other" in out
    code, out = run("tp", "delete", "--offline", "x", "--state-dir", str(tmp_path / "absent"))
    assert code == 1 and "no apiary state directory" in out and not (tmp_path / "absent").exists()
    (state / statedir.TRACING_FILE).write_text("{not json")
    code, out = run("tp", "delete", "--offline", "x", "--state-dir", str(state))
    assert code == 1 and "cannot read it" in out


def test_a_second_agent_on_the_same_state_dir_is_refused(tmp_path: Path) -> None:
    fd = statedir.lock(tmp_path / "s")
    try:
        with pytest.raises(statedir.StateDirBusy, match="in use by pid"):
            statedir.lock(tmp_path / "s")
    finally:
        os.close(fd)
    os.close(statedir.lock(tmp_path / "s"))


def test_agent_help_states_the_exemption_and_what_no_restore_covers() -> None:
    code, out = run("agent", "-h")
    text = " ".join(out.split())
    assert code == 0
    assert (
        "--no-agent-exemption" in text and "never by binary name or path" in text and "Nothing else is exempt" in text
    )
    assert "--no-restore" in text and "Network policies are restored" in text and "cannot lock out the CLI" in text


def test_without_n_a_name_means_the_cluster_wide_policy_else_namespace_default(state: Path) -> None:
    data = json.loads((state / statedir.NETWORK_FILE).read_text())
    data["policies"].append({"kind": "CiliumNetworkPolicy", "namespace": "default", "name": "seed", "revision": 7,
                             "source": "c"})
    (state / statedir.NETWORK_FILE).write_text(json.dumps(data))
    # "seed" is only in namespace default: no -n means there, as kubectl's default namespace
    code, out = run("policy", "delete", "--offline", "seed", "--state-dir", str(state))
    assert code == 0 and "deleted CiliumNetworkPolicy default/seed" in out, out
    # "web" is cluster-wide and in namespace team: no -n means the cluster-wide one, team's stays
    code, out = run("policy", "delete", "--offline", "web", "--state-dir", str(state))
    assert code == 0 and "deleted CiliumClusterwideNetworkPolicy web" in out
    left = json.loads((state / statedir.NETWORK_FILE).read_text())["policies"]
    assert [(p["namespace"], p["name"]) for p in left] == [("team", "web")]
    # -n "" asks for the cluster scope explicitly, and there is none left
    code, out = run("policy", "delete", "--offline", "web", "-n", "", "--state-dir", str(state))
    assert code == 1 and "no stored policy 'web' in cluster scope" in out


@pytest.mark.parametrize(
    ("name", "namespace", "scopes", "want"),
    [
        ("a", None, [("", "a"), ("default", "a")], ""),
        ("a", None, [("default", "a"), ("team", "a")], "default"),
        ("a", None, [("team", "a")], ""),  # nowhere obvious: the cluster scope, whose error names team
        ("a", None, [], ""),
        ("a", "team", [("", "a")], "team"),
        ("a", "", [("default", "a")], ""),
    ],
)
def test_default_scope(name: str, namespace: str | None, scopes: list[tuple[str, str]], want: str) -> None:
    from apiary.textutil import default_scope

    assert default_scope(name, namespace, scopes) == want


def test_policy_apply_takes_several_files_as_one_stream_and_other_commands_refuse_a_second(tmp_path: Path) -> None:
    from apiary.cli.network_cmds import one_file

    r = CliRunner().invoke(cli, ["tp", "apply", "-f", "a.yaml", "-f", "b.yaml"], obj={})
    assert r.exit_code == 2 and "given 2 times (a.yaml, b.yaml): this command reads one file" in r.output
    r = CliRunner().invoke(cli, ["service", "apply", "-f", "a.yaml", "-f", "b.yaml"], obj={})
    assert r.exit_code == 2 and "given 2 times" in r.output
    assert one_file(None, None, ("x.yaml",)) == "x.yaml" and one_file(None, None, ()) is None  # type: ignore[arg-type]
    # policy apply: both files' documents in one request (seen as the agent's missing socket, after reading both)
    (tmp_path / "a.yaml").write_text("kind: A\n")
    r = CliRunner().invoke(cli, ["--socket", str(tmp_path / "none.sock"), "policy", "apply", "-f",
                                 str(tmp_path / "a.yaml"), "-f", str(tmp_path / "missing.yaml")], obj={})
    assert r.exit_code == 2 and "missing.yaml" in r.output  # every file is read before anything is sent
