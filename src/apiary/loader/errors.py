"""Loader errors: short context, errno, and the verifier's reason when there is one."""

from __future__ import annotations

import errno as _errno
import os
import re

# errnos by which the kernel says "I do not have this" rather than "you did it wrong"
ENOTSUPP = 524  # the kernel-internal "not supported" some BPF commands return (not in errno; not ENOTSUP)
_UNSUPPORTED = {_errno.EOPNOTSUPP, ENOTSUPP}
# map commands a map type (or kernel) does not have: the batch and lookup-and-delete paths fall back
NO_SUCH_COMMAND = frozenset({_errno.EINVAL, _errno.EOPNOTSUPP, ENOTSUPP})


class BpfError(Exception):
    """A libbpf/kernel operation failed. ``context`` says what apiary was doing."""

    def __init__(self, context: str, err: int = 0, detail: str = "") -> None:
        self.context = context
        self.errno = abs(err)
        self.detail = detail
        msg = context
        if self.errno:
            msg += f": {os.strerror(self.errno)} (errno {self.errno})"
        if detail:
            msg += f": {detail}"
        super().__init__(msg)


class NotSupportedError(BpfError):
    """The running kernel lacks a feature apiary asked for."""

    def __init__(self, context: str, feature: str, err: int = 0, detail: str = "") -> None:
        self.feature = feature
        super().__init__(f"{context}: not supported on this kernel: {feature}", err, detail)


class VerifierError(BpfError):
    """The verifier rejected a program. ``log`` is the full log, ``summary`` the part that matters."""

    def __init__(self, context: str, err: int, log: str) -> None:
        self.log = log
        self.summary = summarize_verifier_log(log)
        super().__init__(context, err, "verifier rejected it:\n" + self.summary)


_INSN = re.compile(r"^\d+: [(<]")
_SRC = re.compile(r"^; (.*?)(?: @ (\S+:\d+))?$")


def summarize_verifier_log(log: str) -> str:
    """Reduce a verifier log to: the reason, the failing instruction, and its source line."""
    lines = [ln.rstrip() for ln in log.splitlines() if ln.strip()]
    # libbpf wraps the kernel's log between BEGIN/END markers and adds its own lines around it
    body: list[str] = []
    inside = False
    for ln in lines:
        if "-- BEGIN PROG LOAD LOG --" in ln:
            inside, body = True, []
            continue
        if "-- END PROG LOAD LOG --" in ln:
            inside = False
            continue
        if inside:
            body.append(ln)
    if not body:
        body = lines
    body = [ln for ln in body if not ln.startswith(("processed ", "verification time", "stack depth"))]
    if not body:
        return "(no verifier log)"
    reason = body[-1]
    insn = next((ln for ln in reversed(body[:-1]) if _INSN.match(ln)), "")
    src = ""
    stop = body.index(insn) if insn else len(body) - 1
    for ln in reversed(body[:stop]):
        m = _SRC.match(ln)
        if m:
            src = ln[2:]
            break
    out = [f"reason: {reason}"]
    if insn:
        out.append(f"instruction: {insn}")
    if src:
        out.append(f"source: {src}")
    return "\n".join(out)


def from_errno(context: str, err: int, feature: str | None = None, detail: str = "") -> BpfError:
    err = abs(err)
    if feature and err in (_errno.EPERM, _errno.EINVAL, _errno.ENOENT, _errno.EOPNOTSUPP, 524):
        return NotSupportedError(context, feature, err, detail)
    if err in _UNSUPPORTED:
        return NotSupportedError(context, feature or "operation", err, detail)
    return BpfError(context, err, detail)
