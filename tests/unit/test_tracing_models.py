"""Strict loading of TracingPolicy YAML (Tetragon HEAD's CRD): defaults, unknown keys, enums, limits."""

from __future__ import annotations

import textwrap

import pytest

from apiary.policy.models import PolicyError
from apiary.tracing.load import load_tracing_policies
from apiary.tracing.models import KProbeSpec, TracingPolicy, TracingPolicyNamespaced


def doc(spec: str, kind: str = "TracingPolicy", meta: str = "name: test") -> str:
    return (f"apiVersion: cilium.io/v1alpha1\nkind: {kind}\nmetadata:\n  {meta}\nspec:\n"
            + textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ") + "\n")


def problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as e:
        load_tracing_policies(text)
    return e.value.messages


def one(text: str) -> str:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


KPROBE = """
kprobes:
- call: "sys_write"
  args:
  - index: 0
    type: "int"
  selectors:
  - matchArgs:
    - index: 0
      operator: "{op}"
      values: {values}
"""


def kprobe(op: str = "Equal", values: str = '["1"]') -> str:
    return doc(KPROBE.replace("{op}", op).replace("{values}", values))


# --- defaults --------------------------------------------------------------------------------------


def test_crd_defaults_applied() -> None:
    [p] = load_tracing_policies(doc("""
        kprobes:
        - call: sys_write
          args:
          - index: 0
          selectors:
          - matchCapabilities:
            - operator: In
              values: [CAP_SYS_ADMIN]
        """))
    assert isinstance(p, TracingPolicy)
    kp = p.spec.kprobes[0]
    assert kp.syscall is True  # CRD default true
    assert kp.return_ is False
    assert kp.args[0].type_ == "auto"
    assert kp.selectors[0].match_capabilities[0].type_ == "Effective"
    assert p.name == "test" and p.namespace == "" and p.kind == "TracingPolicy"


def test_namespaced_gets_default_namespace_and_keeps_its_own() -> None:
    [p] = load_tracing_policies(doc("kprobes: [{call: sys_write}]", kind="TracingPolicyNamespaced"))
    assert isinstance(p, TracingPolicyNamespaced) and p.namespace == "default"
    [p] = load_tracing_policies(doc("kprobes: [{call: sys_write}]", kind="TracingPolicyNamespaced",
                                    meta="name: t\n  namespace: prod"), default_namespace="x")
    assert p.namespace == "prod"


def test_all_head_spec_fields_accepted() -> None:
    [p] = load_tracing_policies(doc("""
        kprobes: [{call: sys_write, message: hi, tags: [a], ignore: {callNotFound: true}}]
        tracepoints: [{subsystem: syscalls, event: sys_enter_openat, raw: false}]
        uprobes: [{path: /bin/bash, symbols: [readline]}]
        lsmhooks: [{hook: file_open}]
        usdts: [{path: /bin/x, provider: p, name: n}]
        fentries: [{call: vfs_write}]
        loader: true
        podSelector: {matchLabels: {app: web}}
        containerSelector: {matchLabels: {name: c}}
        hostSelector: {}
        nodeSelector: {matchLabels: {zone: a}}
        lists: [{name: l, type: syscalls, values: [sys_dup]}]
        enforcers: [{calls: [sys_dup]}]
        options: [{name: policy-mode, value: monitor}, {name: disable-kprobe-multi, value: "1"}]
        selectorsMacros: {m: {matchBinaries: [{operator: In, values: [/bin/sh]}]}}
        """))
    assert p.spec.option("policy-mode") == "monitor"
    assert [path for path, _ in p.spec.hooks()] == [
        "kprobes[0]", "tracepoints[0]", "uprobes[0]", "lsmhooks[0]", "usdts[0]", "fentries[0]"]


# --- strictness ------------------------------------------------------------------------------------


def test_unknown_key_is_an_error_with_its_path() -> None:
    assert one(doc("kprobes:\n- call: sys_write\n  selector: []")) == "spec.kprobes[0].selector: unknown field"
    assert problems(kprobe().replace("operator:", "op:")) == [
        "spec.kprobes[0].selectors[0].matchArgs[0].operator: required field missing",
        "spec.kprobes[0].selectors[0].matchArgs[0].op: unknown field"]


def test_every_problem_is_listed() -> None:
    found = problems(doc("""
        kprobes:
        - call: sys_write
          bogus: 1
        - call: sys_read
          args: [{index: 0, type: str}]
        tracepoints:
        - subsystem: syscalls
        """))
    assert "spec.kprobes[0].bogus: unknown field" in found
    assert any(m.startswith("spec.kprobes[1].args[0].type:") for m in found)
    assert "spec.tracepoints[0].event: required field missing" in found


def test_duplicate_yaml_key_rejected() -> None:
    msg = one(doc("kprobes:\n- call: sys_write\n  call: sys_read"))
    assert msg.startswith("invalid YAML: duplicate key 'call'") and "line" in msg


def test_scalars_need_their_schema_type() -> None:
    assert one(kprobe(values="[1]")) == \
        'spec.kprobes[0].selectors[0].matchArgs[0].values[0]: values must be strings: quote 1 ("1")'
    assert one(doc('kprobes: [{call: sys_write, syscall: "true"}]')) == \
        "spec.kprobes[0].syscall: Input should be a valid boolean"
    assert one(doc('kprobes: [{call: sys_write, args: [{index: "0", type: int}]}]')) == \
        "spec.kprobes[0].args[0].index: Input should be a valid integer"


def test_api_version_kind_and_other_objects() -> None:
    assert one(doc("kprobes: []").replace("cilium.io/v1alpha1", "cilium.io/v2")) == \
        "apiVersion: apiVersion must be cilium.io/v1alpha1 (not 'cilium.io/v2')"
    pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n---\n" + doc("kprobes: [{call: sys_write}]")
    assert one(pod).startswith("unsupported: document[0].kind (Pod: apiary tp applies only TracingPolicy and "
                               "TracingPolicyNamespaced")
    assert one(doc("kprobes: []", meta="name: Bad_Name")).startswith("metadata.name: metadata.name 'Bad_Name'")


def test_multi_document_paths_and_duplicate_names() -> None:
    text = doc("kprobes: [{call: sys_write}]") + "---\n" + doc("kprobes: [{call: sys_write, x: 1}]")
    assert "document[1].spec.kprobes[0].x: unknown field" in problems(text)
    text = doc("kprobes: [{call: sys_write}]") + "---\n" + doc("kprobes: [{call: sys_read}]")
    assert problems(text) == ["document[1].metadata.name: TracingPolicy 'test' is already defined in document[0]"]


# --- enum spellings --------------------------------------------------------------------------------


@pytest.mark.parametrize("op, right", [("eq", "Equal"), ("neq", "NotEqual"), ("gt", "GT"), ("prefix", "Prefix"),
                                       ("Daddr", "DAddr")])
def test_parser_aliases_rejected_with_the_crd_spelling(op: str, right: str) -> None:
    msg = one(kprobe(op=op))
    assert msg.startswith("spec.kprobes[0].selectors[0].matchArgs[0].operator: ")
    assert f"use {right}" in msg and "CRD validation rejects it" in msg


def test_spelling_traps() -> None:
    msg = one(kprobe(op="NotSPortPriv"))
    assert "it is spelled NotSportPriv" in msg
    msg = one(kprobe(op="SubStringIgnoreCase"))
    assert "it is spelled SubStringIgnCase" in msg
    assert one(kprobe(op="Bogus")).startswith(
        'spec.kprobes[0].selectors[0].matchArgs[0].operator: "Bogus" is not a valid operator (one of: Equal,')


def test_operator_accepted_spellings() -> None:
    for op in ("GreaterThan", "GT", "LessThan", "LT", "Mask", "InRange"):
        values = '["1:2"]' if op == "InRange" else '["1"]'
        load_tracing_policies(kprobe(op=op, values=values))


def action(name: str, extra: str = "") -> str:
    return doc(f"""
        kprobes:
        - call: sys_write
          selectors:
          - matchActions:
            - action: {name}
              {extra}
        """)


def test_action_spellings() -> None:
    assert one(action("sigkill")) == ('spec.kprobes[0].selectors[0].matchActions[0].action: "sigkill" is not a '
                                      "valid action: the CRD spelling is Sigkill (enum values are case-sensitive)")
    assert "was removed from Tetragon" in one(action("FollowFD"))
    assert 'there is no "Deny" action: use Sigkill' in one(action("Deny"))
    assert 'there is no "Alert" action' in one(action("Alert"))
    for ok in ("Post", "NoPost", "Sigkill", "Override", "GetUrl", "DnsLookup", "TrackSock", "UntrackSock",
               "NotifyEnforcer", "CleanupEnforcerNotification", "Set", "DenyConnect"):
        load_tracing_policies(action(ok))
    load_tracing_policies(action("Signal", "argSig: 9"))


def test_arg_type_enum() -> None:
    assert one(doc("kprobes: [{call: sys_write, args: [{index: 0, type: str}]}]")).startswith(
        'spec.kprobes[0].args[0].type: "str" is not a valid arg type (one of: auto, int,')
    for t in ("sockaddr", "socket", "sint32", "ulong", "bpf_prog", "dentry", "const_buf", "linux_binprm"):
        load_tracing_policies(doc(f"kprobes: [{{call: sys_write, args: [{{index: 0, type: {t}}}]}}]"))


def test_return_arg_action_and_rate_limit_rules() -> None:
    msg = one(doc("kprobes: [{call: f, syscall: false, return: true, returnArg: {index: 0, type: int}, "
                  "returnArgAction: Post}]"))
    assert msg.startswith("spec.kprobes[0].returnArgAction: returnArgAction accepts only TrackSock or UntrackSock")
    assert one(doc("kprobes: [{call: f, return: true}]")) == \
        "spec.kprobes[0].returnArg: return: true needs returnArg (e.g. {index: 0, type: int})"
    assert one(action("Sigkill", 'rateLimit: "1m"')) == ("spec.kprobes[0].selectors[0].matchActions[0].rateLimit: "
                                                          "rate limiting can only be applied to the Post action (was "
                                                          "applied to Sigkill)")
    assert "rateLimit 'soon' is invalid" in one(action("Post", "rateLimit: soon"))


def test_options_known_names_and_values() -> None:
    assert one(doc("options: [{name: policy-mode, value: audit}]")) == \
        "spec.options[0].value: invalid value 'audit' for option policy-mode (use enforce or monitor)"
    assert one(doc("options: [{name: frobnicate}]")).startswith("spec.options[0].name: unknown option 'frobnicate'")


def test_namespaced_policy_refuses_host_selector() -> None:
    assert one(doc("hostSelector: {}", kind="TracingPolicyNamespaced")).startswith(
        "spec.hostSelector: a TracingPolicyNamespaced applies only to pods of its namespace")
    assert "accepts only {}" in one(doc("hostSelector: {matchLabels: {a: b}}"))


# --- limits (Tetragon's load-time checks) ----------------------------------------------------------


def test_six_selectors() -> None:
    sels = "\n".join("  - matchPIDs: [{operator: In, values: [1]}]" for _ in range(6))
    assert one(doc(f"kprobes:\n- call: sys_write\n  selectors:\n{sels}")) == \
        "spec.kprobes[0].selectors: too many items: at most 5 (6 given)"


def test_five_int_values() -> None:
    assert one(kprobe(values='["1", "2", "3", "4", "5"]')) == (
        "spec.kprobes[0].selectors[0].matchArgs[0].values: at most 4 values for operator Equal (5 given): use "
        "InMap/NotInMap for more")
    load_tracing_policies(kprobe(op="InMap", values='["1", "2", "3", "4", "5"]'))


def test_string_values_are_map_backed_in_tetragon() -> None:
    text = doc("""
        kprobes:
        - call: sys_openat
          args: [{index: 1, type: string}]
          selectors:
          - matchArgs: [{index: 1, operator: Prefix, values: [/a, /b, /c, /d, /e, /f]}]
        """)
    load_tracing_policies(text)  # Tetragon accepts it; apiary's compiler refuses it (its limit is 4)


def test_two_match_binaries() -> None:
    text = doc("""
        kprobes:
        - call: sys_write
          selectors:
          - matchBinaries:
            - {operator: In, values: [/bin/sh]}
            - {operator: In, values: [/bin/bash]}
        """)
    assert one(text) == "spec.kprobes[0].selectors[0].matchBinaries: too many items: at most 1 (2 given)"


def test_six_match_args() -> None:
    filters = "\n".join('    - {index: 0, operator: Equal, values: ["1"]}' for _ in range(6))
    text = doc(f"kprobes:\n- call: sys_write\n  args: [{{index: 0, type: int}}]\n  selectors:\n  - matchArgs:\n"
               f"{filters}")
    assert one(text) == "spec.kprobes[0].selectors[0].matchArgs: at most 5 arg filters (matchArgs + matchData) " \
        "per selector (6 given)"


def test_pid_values_actions_prefix_and_binary_limits() -> None:
    assert one(doc("kprobes: [{call: sys_write, selectors: [{matchPIDs: [{operator: In, values: [1,2,3,4,5]}]}]}]")) \
        == "spec.kprobes[0].selectors[0].matchPIDs[0].values: too many items: at most 4 (5 given)"
    acts = ", ".join(["{action: Post}"] * 4)
    assert one(doc(f"kprobes: [{{call: sys_write, selectors: [{{matchActions: [{acts}]}}]}}]")) == \
        "spec.kprobes[0].selectors[0].matchActions: too many items: at most 3 (4 given)"
    long = "/" + "a" * 256
    msg = one(doc(f"kprobes: [{{call: sys_openat, args: [{{index: 1, type: string}}], selectors: [{{matchArgs: "
                  f"[{{index: 1, operator: Prefix, values: [\"{long}\"]}}]}}]}}]"))
    assert msg == "spec.kprobes[0].selectors[0].matchArgs[0].values[0]: prefix longer than 256 bytes (257)"
    msg = one(doc(f"kprobes: [{{call: sys_write, selectors: [{{matchBinaries: [{{operator: In, values: "
                  f"[\"{long}\"]}}]}}]}}]"))
    assert msg == "spec.kprobes[0].selectors[0].matchBinaries[0].values[0]: binary paths longer than 255 bytes are " \
        "not supported (257)"
    assert "followChildren is only implemented for In and NotIn" in one(doc(
        "kprobes: [{call: sys_write, selectors: [{matchBinaries: [{operator: Prefix, values: [/bin], "
        "followChildren: true}]}]}]"))


def test_message_and_tags_limits() -> None:
    assert one(doc(f"kprobes: [{{call: sys_write, message: \"{'m' * 257}\"}}]")).startswith(
        "spec.kprobes[0].message: too long: at most 256")
    tags = ", ".join(f"t{i}" for i in range(17))
    assert one(doc(f"kprobes: [{{call: sys_write, tags: [{tags}]}}]")) == \
        "spec.kprobes[0].tags: too many items: at most 16 (17 given)"


# --- cross-field checks ----------------------------------------------------------------------------


def test_match_args_index_names_the_declared_arg() -> None:
    text = doc("""
        kprobes:
        - call: fd_install
          syscall: false
          args: [{index: 0, type: int}, {index: 1, type: file}]
          selectors:
          - matchArgs: [{index: 1, operator: Equal, values: [/etc/passwd]}]
        """)
    load_tracing_policies(text)
    msg = one(text.replace("index: 1, operator", "index: 2, operator"))
    assert msg == ("spec.kprobes[0].selectors[0].matchArgs[0].index: argFilter for unknown index 2: the hook declares "
                   "no arg with index: 2 (declared: 0, 1)")


def test_tracepoint_match_args_index_is_the_args_position() -> None:
    text = doc("""
        tracepoints:
        - subsystem: raw_syscalls
          event: sys_enter
          args: [{index: 4, type: uint64}]
          selectors:
          - matchArgs: [{index: 0, operator: Equal, values: ["1"]}]
        """)
    load_tracing_policies(text)
    assert "names no entry of the tracepoint's args" in one(text.replace("index: 0, operator", "index: 1, operator"))


def test_operator_must_fit_the_arg_type() -> None:
    sock = doc("""
        kprobes:
        - call: security_socket_connect
          syscall: false
          args: [{index: 1, type: sockaddr}]
          selectors:
          - matchArgs: [{index: 1, operator: DAddr, values: [10.0.0.0/8]}]
        """)
    assert "a sockaddr arg supports only SAddr" in one(sock)
    assert "is a socket operator" in one(kprobe(op="DPort", values='["80"]'))
    assert "compares strings" in one(kprobe(op="Prefix", values='["/x"]'))
    assert "'abc' is not an integer" in one(kprobe(values='["abc"]'))
    addr = doc("""
        kprobes:
        - call: tcp_connect
          syscall: false
          args: [{index: 0, type: sock}]
          selectors:
          - matchArgs: [{index: 0, operator: NotDAddr, values: [127.0.0.1, "${PODCIDR}"]}]
        """)
    assert one(addr) == ("spec.kprobes[0].selectors[0].matchArgs[0].values[1]: '${PODCIDR}' is not an IP address or "
                         "CIDR (an unexpanded template placeholder?)")


def test_undefined_lists_and_macros() -> None:
    assert one(doc("kprobes: [{call: 'list:nope'}]")) == "spec.kprobes[0].call: list 'nope' is not defined in " \
        "spec.lists"
    assert one(doc("kprobes: [{call: sys_write, selectors: [{macros: [m]}]}]")) == \
        "spec.kprobes[0].selectors[0].macros[0]: selector macro 'm' is not defined in spec.selectorsMacros"
    assert "defined twice" in one(doc("lists: [{name: a, type: syscalls}, {name: a, type: syscalls}]"))


def test_kprobe_spec_python_api() -> None:
    kp = KProbeSpec.model_validate({"call": "sys_write", "return": True, "returnArg": {"index": 0, "type": "int"}})
    assert kp.return_ and kp.syscall and kp.label() == "sys_write"
