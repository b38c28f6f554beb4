"""Would a TracingPolicy's enforcement hit the processes apiary itself depends on? (pure; warnings at apply)

The agent's own process is exempt in the kernel (unless `--no-agent-exemption`); the CLI, and the agent
with the exemption off, are not. A selector is flagged when its action enforces (Sigkill, Signal,
Override, DenyConnect) and either its matchBinaries matches the interpreter apiary runs on, or it has no
process scoping and its hook is one the CLI and agent exercise on every request (connect, socket, open,
read, write and their kernel functions). Argument filters are not evaluated: a warning says "can hit".
"""

from __future__ import annotations

from apiary.tracing.types import CompiledTracingPolicy, Hook, Selector

ENFORCING = ("Sigkill", "Signal", "Override", "DenyConnect")

# what the CLI and the agent call on every request (a unix-socket connect, files, reads and writes), by the
# name of the syscall, kernel function or LSM hook with its prefixes removed
TOOL_CALLS = frozenset(
    """connect socket open openat openat2 creat read readv pread64 preadv preadv2 write writev pwrite64 pwritev
    pwritev2 sendto sendmsg sendmmsg recvfrom recvmsg recvmmsg socket_connect socket_create socket_sendmsg
    socket_recvmsg sock_sendmsg sock_recvmsg file_open file_permission vfs_read vfs_write vfs_open do_sys_open
    do_sys_openat2 do_filp_open fd_install unix_stream_connect""".split()
)
_PREFIXES = (
    "__kprobe_",
    "__lsm_",
    "__tp_",
    "__rawtp_",
    "__x64_sys_",
    "__arm64_sys_",
    "__ia32_sys_",
    "__se_sys_",
    "__do_sys_",
    "__sys_",
    "sys_enter_",
    "sys_exit_",
    "sys_",
    "security_",
)


def call_name(name: str) -> str:
    """`__kprobe_security_file_open` -> `file_open`, `syscalls/sys_enter_openat` -> `openat`."""
    name = name.rpartition("/")[2]
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if name.startswith(p):
                name, changed = name.removeprefix(p), True
    return name


def exercised_by_tools(hook: Hook) -> bool:
    """The hook fires on calls the CLI and the agent make on every request."""
    return any(call_name(n) in TOOL_CALLS for n in (hook.function_name, *hook.attach_points))


def _binary_hits(sel: Selector, path: str) -> bool:
    b = sel.binaries
    assert b is not None
    if b.op in ("Prefix", "NotPrefix"):
        hit = any(path.startswith(v) for v in b.values)
    else:
        hit = path in b.values
    return hit != (b.op in ("NotIn", "NotPrefix"))


def _scoped_away(sel: Selector) -> bool:
    """The selector's process filters (other than matchBinaries) exclude host processes run by root."""
    if sel.pids is not None and sel.pids.op == "In":
        return True  # named processes only
    for ns in sel.namespaces:
        host = "host_ns" in ns.values
        if (ns.op == "In") != host:  # In other namespaces, or NotIn the host's
            return True
    if sel.capabilities is not None and sel.capabilities.op == "NotIn" and sel.capabilities.mask:
        return True  # root has every capability
    return False


def reach(sel: Selector, hook: Hook, tools: dict[str, str]) -> str | None:
    """Why this selector's process part can match apiary's own processes, or None."""
    if _scoped_away(sel):
        return None
    if sel.binaries is not None:
        for path, who in tools.items():
            if _binary_hits(sel, path):
                values = ", ".join(sel.binaries.values)
                follow = " with followChildren" if sel.binaries.follow_children else ""
                return f"its matchBinaries ({sel.binaries.op} {values}{follow}) matches {path}, {who}"
        return None
    if exercised_by_tools(hook):
        return "it has no process scoping and the apiary CLI and agent make this call on every request"
    return None


def lockout_warnings(policy: CompiledTracingPolicy, tools: dict[str, str], agent_exempt: bool) -> list[str]:
    """Warnings for enforcing selectors that can hit the apiary CLI or agent (tools: real path -> whose)."""
    if policy.pod_selector is not None or policy.kind == "TracingPolicyNamespaced":
        return []  # only processes in endpoint cgroups
    who = "the apiary CLI" if agent_exempt else "the apiary CLI and agent (agent exemption is off)"
    name = f"{policy.name} -n {policy.namespace}" if policy.namespace else policy.name
    out = []
    for hook in policy.hooks:
        for si, sel in enumerate(hook.selectors):
            if sel.action not in ENFORCING:
                continue
            why = reach(sel, hook, tools)
            if why is None:
                continue
            mode = " (monitor mode now: once enforced)" if policy.mode == "monitor" else ""
            out.append(
                f"{hook.source} selector {si} ({sel.action}) can hit {who}{mode}: {why}. If the CLI is locked "
                f"out, stop the agent and run `apiary tp delete --offline {name}`, or start it with --no-restore"
            )
    return out
