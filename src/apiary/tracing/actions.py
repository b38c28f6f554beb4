"""Action parsing: ``matchActions`` and ``matchReturnActions`` of a selector.

Post (rateLimit, rateLimitScope), NoPost, Sigkill, Signal (argSig), apiary's DenyConnect (hooks realised on
connect()) and Override (argError; BPF-LSM hooks only) become the selector's action, signal and rate limit.
Where a realisation cannot carry an action out (Override off BPF-LSM, DenyConnect off connect(), any
enforcement on a return hook that would come too late), the action is refused with the field path.
"""

from __future__ import annotations

from apiary.kernel.features import KernelFeatures

from .compilation import Compilation, Refuse
from .realisations import Variant
from .selector_specs import ActionSelector, KProbeSelector
from .types import ArgSpec

ENFORCING = ("Sigkill", "Signal", "DenyConnect")


def match_actions(
    comp: Compilation, sp: str, sel: KProbeSelector, variant: Variant, ret: ArgSpec | None = None
) -> tuple[str, int, int, bool]:
    """matchActions as (action, signal, rate limit in ns, post); Post when there is none."""
    action, signal, rate, post = "Post", 0, 0, True
    where = variant.attach_points[0]
    for ai, act in enumerate(sel.match_actions or []):
        ap = f"{sp}.matchActions[{ai}]"
        name = act.action
        if name == "Post":
            post_options(comp, ap, act)
            rate = max(rate, act.rate_limit_seconds() * 1_000_000_000)
            continue
        if name == "NoPost":
            post = False
            continue
        if name == "Override":
            override_possible(comp.features, ap, where, ret)
            err = abs(int(act.arg_error or 1))
            if action != "Post":
                raise Refuse(f"{ap}.action", f"only one enforcement action per selector ({action} already)")
            action, signal = "Override", err  # for Override, `signal` carries the errno returned
            continue
        if name in ("Sigkill", "Signal", "DenyConnect"):
            if name == "DenyConnect" and ret is not None:
                raise Refuse(
                    f"{ap}.action",
                    "DenyConnect is not possible on a return hook: the hook decides when the call has returned, "
                    "after the connection was attempted",
                )
            if name == "DenyConnect" and variant.attach_points != ("connect",):
                raise Refuse(
                    f"{ap}.action",
                    "DenyConnect applies only to hooks realised on connect() (it fails "
                    "the call with EPERM through the endpoint's cgroup hook)",
                )
            sig = 9 if name == "Sigkill" else act.arg_sig if name == "Signal" else 0
            if name == "Signal" and not 1 <= sig <= 64:
                raise Refuse(f"{ap}.argSig", f"Signal needs argSig, a signal number 1-64 (not {act.arg_sig})")
            if action != "Post" and (action, signal) != (name, sig):
                raise Refuse(f"{ap}.action", f"only one enforcement action per selector ({action} already)")
            if ret is not None:
                comp.note(
                    f"{ap.removeprefix('spec.')}: {name} acts when the call returns: its effect has already happened"
                )
            action, signal = name, sig
            continue
        raise Refuse(f"{ap}.action", f"action {name} is not supported yet")
    if not post and action == "Post":
        action = "NoPost"
    return action, signal, rate, post


def override_possible(features: KernelFeatures, ap: str, where: str, ret: ArgSpec | None) -> None:
    """Refuse an Override the realisation ``where`` (an attach point) cannot carry out on this kernel."""
    if ret is not None:
        raise Refuse(
            f"{ap}.action",
            "Override is not possible on a return hook: the call has already returned (use Sigkill, or Override "
            "on a BPF-LSM hook)",
        )
    if where.startswith("__uprobe_"):
        raise Refuse(f"{ap}.action", "Override on uprobes (register rewrite) is not supported")
    if where.startswith("__tp_"):
        raise Refuse(f"{ap}.action", "Override is not available on tracepoints")
    if not (features.lsm or features.override):
        raise Refuse(
            f"{ap}.action",
            "Override needs BPF-LSM or kernel error injection; this kernel has neither: use Sigkill",
        )
    if where.startswith("__kprobe_"):
        raise Refuse(
            f"{ap}.action",
            f"Override is supported on BPF-LSM hooks (lsmhooks file_open, file_permission, bprm_check_security) "
            f"in this version; this hook is realised by a kprobe on {where.removeprefix('__kprobe_')}, where "
            "apiary does not inject errors (use Sigkill)",
        )
    if not where.startswith("__lsm_"):
        raise Refuse(
            f"{ap}.action",
            "Override is supported on BPF-LSM hooks (lsmhooks file_open, file_permission, bprm_check_security) "
            "in this version; this hook is realised at syscall entry (use Sigkill)",
        )


def post_options(comp: Compilation, ap: str, act: ActionSelector) -> None:
    """Refuse the options of a Post apiary does not realise."""
    for fld, name in (
        ("kernel_stack_trace", "kernelStackTrace"),
        ("user_stack_trace", "userStackTrace"),
        ("ima_hash", "imaHash"),
    ):
        if getattr(act, fld):
            raise Refuse(f"{ap}.{name}", f"{name} is not supported yet")
    if act.rate_limit_scope and not act.rate_limit:
        comp.note(f"{ap}.rateLimitScope has no effect without rateLimit")


def check_return_actions(comp: Compilation, sp: str, sel: KProbeSelector, ret: ArgSpec | None) -> None:
    """matchReturnActions: on a return hook the matchActions are taken when the call returns, so only a plain
    Post (which adds nothing) is accepted."""
    actions = sel.match_return_actions or []
    if actions and ret is None:
        comp.refuse(f"{sp}.matchReturnActions", "matchReturnActions applies only on hooks with return: true")
        return
    ok = True
    for ai, act in enumerate(actions):
        ap = f"{sp}.matchReturnActions[{ai}]"
        if act.action != "Post":
            ok = False
            comp.refuse(
                f"{ap}.action",
                f"matchReturnActions {act.action} is not supported yet: on a return hook the matchActions are "
                "taken when the call returns (only Post is accepted here)",
            )
        elif act.rate_limit or act.kernel_stack_trace or act.user_stack_trace or act.ima_hash:
            ok = False
            comp.refuse(ap, "options of a Post in matchReturnActions are not supported yet (use matchActions)")
    if actions and ok:
        comp.note(
            f"{sp.removeprefix('spec.')}.matchReturnActions: Post has no extra effect (the event is posted when "
            "the call returns)"
        )
