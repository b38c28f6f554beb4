"""Every real Tetragon policy of the corpus either compiles on this kernel (with notes) or is refused with a
PolicyError naming the field; nothing crashes. Compact lines of real Tetragon hook events."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apiary.kernel.features import X86_64_SYSCALLS, KernelFeatures
from apiary.observe.tetragon.compact import compact, kprobe_line, lsm_line, tracepoint_line
from apiary.policy.models import PolicyError
from apiary.tracing.compile import compile_tracing_policy
from apiary.tracing.load import load_tracing_policies

SHARED = next((p for p in (Path(__file__).resolve().parents[3] / "shared", Path("/work/shared"))
               if (p / "conformance").is_dir()), Path("/work/shared"))
CORPUS = SHARED / "conformance" / "tetragon-policies"
EVENTS = SHARED / "conformance" / "events" / "tetragon"
# this machine: no kprobes, fentry and BPF-LSM refused, the syscall tracepoints of Linux 6.18 x86_64
HERE = KernelFeatures(kprobes=False, fentry=False, lsm=False, override=False, syscalls=X86_64_SYSCALLS,
                      raw_tp_cookie=True)

COMPILES = {
    "tracingpolicy/fd_install_ns.yaml",
    "tracingpolicy/fd_install_ns_host.yaml",
    "tracingpolicy/hardlink-observe.yaml",
    "tracingpolicy/kprobe_commit_creds.yaml",
    "tracingpolicy/list-syscalls-tracepoint.yaml",
    "tracingpolicy/list-syscalls.yaml",
    "tracingpolicy/lsm_file_open.yaml",
    "tracingpolicy/openat_write.yaml",
    "tracingpolicy/process-credentials/process-creds-installed.yaml",
    "tracingpolicy/process-credentials/process.credentials.changes.at.syscalls.yaml",
    "tracingpolicy/raw_syscalls.yaml",
    "tracingpolicy/write.yaml",
    "tracingpolicy/rawtp.yaml",
    "tracingpolicy/sys_pivot_root.yaml",
    "tracingpolicy/sys_clock_settime.yaml",
    "tracingpolicy/security-socket-connect.yaml",
    "tracingpolicy/security_bprm_check.yaml",
    "tracingpolicy/symlink-observe.yaml",
    "tracingpolicy/sys_mount.yaml",
    "tracingpolicy/sys_ptrace.yaml",
    "tracingpolicy/sys_setuid.yaml",
    "tracingpolicy/tcp-connect-only-local-addrs.yaml",
    "tracingpolicy/tcp-connect-only-private-addrs.yaml",
    "tracingpolicy/uprobe-binaries.yaml",
    "tracingpolicy/uprobe-host.yaml",
    "tracingpolicy/uprobe-pid.yaml",
    "tracingpolicy/uprobe.yaml",
}
# a few refusals pinned to their reason (the rest: any PolicyError whose problems all name a field)
REFUSED_BECAUSE = {
    "invalid/nosuchcall.yaml": "spec.kprobes[0].call (thiscalldoesnotexist is not a syscall symbol",
    "invalid/wrongargtype.yaml": "spec.kprobes[0].call (vfs_llseek: needs kprobe (or BPF-LSM)",
    "tracingpolicy/dev_queue_xmit.yaml": "dev_queue_xmit: needs kprobe (or BPF-LSM); this kernel: no kprobes "
                                         "(CONFIG_KPROBES off), fentry/BPF-LSM refused",
    "tracingpolicy/hardlink-override.yaml": "Override needs BPF-LSM or kernel error injection; this kernel has "
                                            "neither: use Sigkill",
    "tracingpolicy/loader.yaml": "spec.loader (loader events are not supported yet)",
    "quickstart/network_egress_cluster.yaml": "'${PODCIDR}' is not an IP address or CIDR",
    "quickstart/file_monitoring.yaml": "at most 4 values per filter (9 given)",
    "tracingpolicy/killer.yaml": "spec.enforcers (enforcers are not supported yet)",
    "tracingpolicy/list-syscalls-generated.yaml": "this policy needs 360 hooks; the sensor holds at most 64",
    "tracingpolicy/lsm_track_grandparent.yml": "spec.lsmhooks[0].args[0].resolve (resolve is not supported yet)",
    "other/file-block-kubectl-exec-access.yaml": "document[0].kind (Pod: apiary tp applies only TracingPolicy",
}


def corpus_files() -> list[Path]:
    return sorted(p for p in CORPUS.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def outcome(path: Path) -> tuple[str, list[str]]:
    """("compiles", notes) | ("refused", problems) | ("UNNAMED", problems without a field path) | ("CRASH", [repr])."""
    try:
        notes: list[str] = []
        for p in load_tracing_policies(path.read_text()):
            c = compile_tracing_policy(p, HERE)
            assert c.hooks or c.notes
            notes += c.notes
        return "compiles", notes
    except PolicyError as e:
        unnamed = [str(p) for p in e.problems if not p.path]
        return ("refused", e.messages) if not unnamed else ("UNNAMED", unnamed)
    except Exception as e:  # noqa: BLE001 - the point of the test
        return "CRASH", [repr(e)]


def test_every_corpus_policy_compiles_or_is_refused() -> None:
    files = corpus_files()
    assert len(files) == 80, f"corpus at {CORPUS}: {len(files)} files"
    results = {str(f.relative_to(CORPUS)): outcome(f) for f in files}
    table = "\n".join(f"{state:9} {name}\n" + "".join(f"{'':10}{line[:160]}\n" for line in lines)
                      for name, (state, lines) in results.items())
    crashed = [n for n, (s, _) in results.items() if s in ("CRASH", "UNNAMED")]
    assert not crashed, f"crashed or refused without a field path: {crashed}\n{table}"
    compiled = {n for n, (s, _) in results.items() if s == "compiles"}
    assert compiled == COMPILES, f"\n{table}"
    assert sum(s == "refused" for s, _ in results.values()) == 53, table
    for name, (state, lines) in results.items():
        if name in REFUSED_BECAUSE:
            assert state == "refused" and any(REFUSED_BECAUSE[name] in line for line in lines), f"{name}: {lines}"
        if state == "compiles":
            assert lines, f"{name}: no notes"


def test_invalid_policies_are_refused() -> None:
    invalid = sorted((CORPUS / "invalid").glob("*.yaml"))
    assert len(invalid) == 2
    for f in invalid:
        assert outcome(f)[0] == "refused", f


def test_compiled_corpus_notes_say_how_each_hook_is_realised() -> None:
    state, notes = outcome(CORPUS / "tracingpolicy" / "sys_setuid.yaml")
    assert (state, notes) == ("compiles", ["kprobes[0] sys_setuid: syscall entry of setuid"])
    state, notes = outcome(CORPUS / "tracingpolicy" / "list-syscalls-tracepoint.yaml")
    assert notes == ["tracepoints[0] raw_syscalls/sys_enter: syscall entry of dup, dup2 (the id filter is the set of "
                     "syscalls watched); the id arg (index 4) is the event's syscall number"]


# --- compact lines ---------------------------------------------------------------------------------


def event(name: str) -> dict:
    return json.loads((EVENTS / name).read_text())


def test_compact_kprobe_lines_of_real_events() -> None:
    assert compact(event("docs-filename-access-1-process_kprobe.json")) == \
        "📝 write   default/file-access /bin/vi /etc/passwd"
    assert compact(event("book-golden-signals-process_kprobe.json")) == \
        "📝 write   tenant-jobs/elasticsearch-56f8fc6988-sh8rm /usr/bin/vi etc/passwd 627 bytes"
    assert compact(event("docs-creds-syscalls-monitoring-1-process_kprobe.json")) == \
        "❓ syscall default/xwing /bin/su __x64_sys_setgid"


def kp(fn: str, *args: dict, pod: bool = True) -> dict:
    proc = {"binary": "/usr/bin/curl", "pod": {"namespace": "default", "name": "xwing"}} if pod else \
        {"binary": "/usr/bin/curl"}
    return {"process_kprobe": {"process": proc, "function_name": fn, "args": list(args),
                               "action": "KPROBE_ACTION_POST", "policy_name": "p"}, "node_name": "node1"}


def test_compact_kprobe_lines() -> None:
    sock = {"sock_arg": {"family": "AF_INET", "saddr": "10.244.0.6", "daddr": "104.198.14.52", "sport": 34965,
                         "dport": 80}}
    assert kprobe_line(kp("tcp_connect", sock)) == \
        "🔌 connect default/xwing /usr/bin/curl tcp 10.244.0.6:34965 -> 104.198.14.52:80"
    sa = {"sockaddr_arg": {"family": "AF_INET", "addr": "104.198.14.52", "port": 443}}
    assert kprobe_line(kp("tcp_connect", sa)) == "🔌 connect default/xwing /usr/bin/curl tcp -> 104.198.14.52:443"
    assert kprobe_line(kp("tcp_sendmsg", sock, {"int_arg": 73})) == \
        "📤 sendmsg default/xwing /usr/bin/curl tcp 10.244.0.6:34965 -> 104.198.14.52:80 bytes 73"
    assert kprobe_line(kp("__x64_sys_setuid", {"int_arg": 0})) == "🔑 setuid  default/xwing /usr/bin/curl 0"
    assert kprobe_line(kp("fd_install", {"int_arg": 3}, {"file_arg": {"path": "/tmp/tetragon"}}, pod=False)) == \
        "📬 open    node1 /usr/bin/curl /tmp/tetragon"
    assert kprobe_line(kp("__x64_sys_openat", {"int_arg": -100}, {"string_arg": "/etc/passwd"})) == \
        "📬️ openat  default/xwing /usr/bin/curl /etc/passwd"
    # a policy that declares only the path (args: [{index: 1, type: string}]): the path is the event's first arg
    assert kprobe_line(kp("__x64_sys_openat", {"string_arg": "/etc/passwd"})) == \
        "📬️ openat  default/xwing /usr/bin/curl /etc/passwd"
    assert kprobe_line(kp("__x64_sys_write", {"int_arg": 1})) == "📝 write   default/xwing /usr/bin/curl  "
    f = {"file_arg": {"path": "/etc/shadow"}}
    assert kprobe_line(kp("security_file_permission", f, {"int_arg": 4})) == \
        "📚 read    default/xwing /usr/bin/curl /etc/shadow"
    assert kprobe_line(kp("security_file_permission", f)) == \
        "❓ security_file_permission default/xwing /usr/bin/curl "
    assert kprobe_line(kp("security_mmap_file", f, {"uint_arg": 5})) == \
        "📝 mmap-rx default/xwing /usr/bin/curl /etc/shadow"
    assert kprobe_line(kp("security_path_truncate", {"path_arg": {"path": "/etc/x"}})) == \
        "📝 truncate default/xwing /usr/bin/curl /etc/x"
    assert kprobe_line(kp("__x64_sys_kill", {"int_arg": 1})) == "❓ syscall default/xwing /usr/bin/curl __x64_sys_kill"
    assert kprobe_line(kp("vfs_write", f)) == "❓ syscall default/xwing /usr/bin/curl vfs_write"
    assert kprobe_line(kp("__x64_sys_mount", {"string_arg": "a"}, {"string_arg": "b"})) == \
        "💾 mount   default/xwing /usr/bin/curl a b"
    colored = kprobe_line(kp("tcp_connect", sock), color=True)
    assert colored.startswith("\x1b[34m🔌 connect\x1b[0m \x1b[32mdefault/xwing\x1b[0m")


def test_compact_tracepoint_and_lsm_lines() -> None:
    tp = {"process_tracepoint": {"process": {"binary": "/bin/cat"}, "subsys": "syscalls", "event": "sys_enter_openat"},
          "node_name": "n"}
    assert tracepoint_line(tp) == "⁉️ tracepoint n /bin/cat syscalls sys_enter_openat"
    raw = {"process_tracepoint": {"process": {"binary": "/bin/cat"}, "subsys": "raw_syscalls", "event": "sys_enter",
                                  "args": [{"long_arg": "-1"}]}, "node_name": "n"}
    assert tracepoint_line(raw) == "☎  syscall n /bin/cat unknown"
    lsm = {"process_lsm": {"process": {"binary": "/usr/bin/zsh", "pod": {"namespace": "user-nix", "name": ""}},
                           "function_name": "bprm_check_security"}, "node_name": "n"}
    assert lsm_line(lsm) == "🔒 LSM     user-nix/ /usr/bin/zsh bprm_check_security"
    assert compact(lsm) == lsm_line(lsm) and compact(tp) == tracepoint_line(tp)


@pytest.mark.parametrize("kind", ["process_kprobe", "process_tracepoint", "process_lsm", "process_uprobe",
                                  "process_usdt"])
def test_hook_kinds_registered(kind: str) -> None:
    line = compact({kind: {"process": {"binary": "/bin/x"}}, "node_name": "n"})
    assert "/bin/x" in line and not line.startswith("❓ " + kind)
