"""The seed article's invented TracingPolicy syntax: rejected field by field, converted to real Tetragon."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from apiary.kernel.features import X86_64_SYSCALLS, KernelFeatures
from apiary.policy.models import PolicyError
from apiary.tracing.compile import compile_tracing_policy
from apiary.tracing.load import convert_seed, load_tracing_policies, seed_problems
from apiary.tracing.types import ARG_CONNSOCK, ARG_FD, ARG_INT, ARG_STRING, ArgFilter, ArgSpec, CompiledTracingPolicy

SEED = Path(__file__).parent / "data" / "seed"
# shared/ sits beside the repository (CI: beside the clone; here: /work/shared)
CORPUS = next((p for p in (Path(__file__).resolve().parents[3] / "shared/conformance/tetragon-policies",
                           Path("/work/shared/conformance/tetragon-policies")) if p.is_dir()),
              Path("/work/shared/conformance/tetragon-policies"))
HERE = KernelFeatures(kprobes=False, fentry=False, lsm=False, override=False, syscalls=X86_64_SYSCALLS)

# seed file -> every field path the error must name as invented
EXPECTED = {
    "deny-write-etc.yaml": ["spec.selectors", "spec.selectors[0].matchSelectors", "spec.kprobes[0].return",
                            "spec.kprobes[0].return.action", "spec.kprobes[0].returnArgAction",
                            "spec.kprobes[0].policy.path", "spec.kprobes[0].policy.matchAction"],
    "detect-shell.yaml": ["spec.selectors", "spec.selectors[0].matchSelectors", "spec.listTracepoints",
                          "spec.kprobes[0].call", "spec.kprobes[0].return", "spec.kprobes[0].returnArgAction",
                          "spec.kprobes[0].action", "spec.listTracepoints[0].action"],
    "block-binary-writes.yaml": ["spec.selectors", "spec.selectors[0].matchSelectors", "spec.kprobes[0].return",
                                 "spec.kprobes[0].return.action", "spec.kprobes[0].policy.path",
                                 "spec.kprobes[0].policy.matchAction"],
    "privilege-escalation.yaml": ["spec.selectors", "spec.selectors[0].matchSelectors", "spec.kprobes[0].call",
                                  "spec.kprobes[0].return", "spec.kprobes[0].policy.uid",
                                  "spec.kprobes[0].policy.matchAction"],
    "suspicious-cidr.yaml": ["spec.selectors", "spec.selectors[0].matchSelectors", "spec.kprobes[0].return",
                             "spec.kprobes[0].action", "spec.kprobes[0].policy.dstIP",
                             "spec.kprobes[0].policy.matchAction"],
}


def seed(name: str) -> str:
    return (SEED / name).read_text()


def converted(name: str) -> CompiledTracingPolicy:
    [p] = load_tracing_policies(convert_seed(seed(name)))
    return compile_tracing_policy(p, HERE)


def test_every_seed_file_is_covered() -> None:
    assert sorted(p.name for p in SEED.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_seed_syntax_rejected_naming_each_field(name: str) -> None:
    with pytest.raises(PolicyError) as e:
        load_tracing_policies(seed(name))
    msgs = e.value.messages
    named = [m.split(": ", 1)[0] for m in msgs[:-1]]
    assert named == EXPECTED[name]
    for m in msgs[:-1]:
        assert "not a Tetragon field" in m or "not a syscall" in m or "not accepted at Tetragon HEAD" in m, m
    last = msgs[-1]
    assert last.startswith("this is the seed article's syntax, not Tetragon's. The equivalent real TracingPolicy "
                           "(apiary tp convert -f FILE writes it):\n")
    assert last.split(":\n", 1)[1] == convert_seed(seed(name))


def test_real_equivalents_are_named() -> None:
    with pytest.raises(PolicyError) as e:
        load_tracing_policies(seed("deny-write-etc.yaml"))
    text = "\n".join(e.value.messages)
    assert "real: spec.podSelector: {matchLabels: …}" in text
    assert 'operator: Prefix, values: ["/etc/"]' in text
    assert "there is no Deny action: use Sigkill" in text
    assert "real: return: true + returnArg: {index: 0, type: int}" in text
    with pytest.raises(PolicyError) as e:
        load_tracing_policies(seed("privilege-escalation.yaml"))
    assert "Tetragon's name is sys_setuid" in "\n".join(e.value.messages)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_conversion_loads_cleanly_and_compiles(name: str) -> None:
    out = convert_seed(seed(name))
    assert out.startswith("# Converted by apiary from the seed article's syntax to Tetragon's:\n")
    [p] = load_tracing_policies(out)
    assert seed_problems(yaml.safe_load(out)) == []
    c = compile_tracing_policy(p, HERE)
    assert c.hooks and c.notes


def test_deny_write_etc_converted() -> None:
    c = converted("deny-write-etc.yaml")
    assert c.pod_selector == {"matchLabels": {"security-test": "true"}}
    write, pwrite = c.hooks  # vfs_write is called by write and pwrite64 only (writev goes through vfs_writev)
    assert (write.function_name, write.attach_points, write.args) == ("vfs_write", ("write",),
                                                                 (ArgSpec(0, ARG_FD, "", "file"),))
    assert pwrite.attach_points == ("pwrite64",)
    [s] = write.selectors
    assert (s.args, s.action, s.signal) == ((ArgFilter(0, "Prefix", ("/etc/",)),), "Sigkill", 9)
    assert any(n.startswith("kprobes[0] vfs_write: via sys_enter_write: the file resolved from the fd")
               for n in c.notes)


def test_block_binary_writes_converted_into_selectors_of_four() -> None:
    c = converted("block-binary-writes.yaml")
    assert c.pod_selector == {"matchLabels": {"env": "production"}}
    h = c.hooks[0]
    assert [(s.args[0].values, s.action) for s in h.selectors] == [
        (("/bin/", "/sbin/", "/usr/bin/", "/usr/sbin/"), "Sigkill"), (("/usr/local/bin/",), "Sigkill")]


def test_detect_shell_converted() -> None:
    out = convert_seed(seed("detect-shell.yaml"))
    doc = yaml.safe_load(out)
    assert "tracepoints" not in doc["spec"] and "listTracepoints" not in doc["spec"]
    assert "sched/sched_process_exec removed: apiary reports process_exec for every exec" in out
    c = converted("detect-shell.yaml")
    [h] = c.hooks
    assert (h.function_name, h.attach_points, h.args) == ("__x64_sys_execve", ("execve",),
                                                     (ArgSpec(0, ARG_STRING, "", "string"),))


def test_privilege_escalation_converted() -> None:
    [h] = converted("privilege-escalation.yaml").hooks
    assert (h.function_name, h.attach_points, h.args) == (
        "__x64_sys_setuid", ("setuid",), (ArgSpec(0, ARG_INT, "", "int"),))
    [s] = h.selectors
    assert (s.args, s.action) == ((ArgFilter(0, "Equal", (0,)),), "Post")


def test_suspicious_cidr_converted_to_tcp_connect() -> None:
    [h] = converted("suspicious-cidr.yaml").hooks
    assert (h.function_name, h.attach_points, h.args) == ("tcp_connect", ("connect",),
                                                     (ArgSpec(1, ARG_CONNSOCK, "", "sock", size_index=0),))
    assert h.selectors[0].args == (ArgFilter(0, "DAddr", ("203.0.113.0/24", "198.51.100.7/32")),)


def test_globs() -> None:
    text = seed("deny-write-etc.yaml").replace('path: "/etc/*"', 'path: ["/etc/passwd", "*.conf", "/a/*/b"]')
    out = yaml.safe_load(convert_seed(text))
    sels = out["spec"]["kprobes"][0]["selectors"]
    assert [(s["matchArgs"][0]["operator"], s["matchArgs"][0]["values"]) for s in sels] == [
        ("Equal", ["/etc/passwd"]), ("Postfix", [".conf"]), ("Prefix", ["/a/"])]
    assert "glob '/a/*/b' approximated by the prefix '/a/'" in convert_seed(text)


def test_real_policies_have_no_seed_problems() -> None:
    files = sorted(CORPUS.rglob("*.y*ml"))
    assert files
    for f in files:
        for d in yaml.safe_load_all(f.read_text()):
            assert seed_problems(d) == [], f


def test_convert_leaves_real_documents_alone() -> None:
    real = ("apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: r\nspec:\n  kprobes:\n"
            "  - call: sys_write\n")
    assert yaml.safe_load(convert_seed(real)) == yaml.safe_load(real)
    both = real + "---\n" + seed("privilege-escalation.yaml")
    docs = list(yaml.safe_load_all(convert_seed(both)))
    assert docs[0] == yaml.safe_load(real) and docs[1]["spec"]["kprobes"][0]["call"] == "sys_setuid"
    with pytest.raises(PolicyError) as e:
        load_tracing_policies(both)
    assert e.value.messages[0].startswith("document[1].spec.selectors: not a Tetragon field")
