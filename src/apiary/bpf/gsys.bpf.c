// SPDX-License-Identifier: GPL-2.0
/* Generic tracing sensor: TracingPolicy hooks decided in the kernel. The same programs serve every hook,
 * driven by maps: per attach point (a syscall number, or a pseudo number carried as the link's attach
 * cookie) the hooks watching it; per hook the argument specs and up to 5 selectors evaluated in order
 * (first match wins), then the action: Post / NoPost / Sigkill / Signal (bpf_send_signal before the call's
 * body runs) / Override (LSM hooks) / DenyConnect (the cgroup connect4 program fails the connect() with
 * EPERM). Attach points: syscalls/sys_enter_* and sys_exit_* tracepoints, any tracepoint (fields by the
 * offsets of its format file), raw tracepoints, kprobes/kretprobes, uprobes/uretprobes, BPF-LSM hooks.
 * Return hooks keep the entry's event per thread and finish it at exit. followChildren / followForks
 * bits are kept per process by the exec/fork/exit programs. Events go to the process sensor's ring
 * buffer, so they are ordered with exec/exit events. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "process_abi.h"
#include "tracing_abi.h"
#include "pathwalk.bpf.h"
#include "shared_maps.bpf.h"

char LICENSE[] SEC("license") = "GPL";

#include "gsys_maps.h"
#include "gsys_actions.h"
#include "gsys_args.h"
#include "gsys_strings.h"
#include "gsys_filters.h"
#include "gsys_guard.h"

#define GS_CAP_MIN 64 /* bytes of a compared string read before the selectors decide, at least */

/* argument kinds held as text in the event (read with a helper, a path walk or a buffer copy) */
static __always_inline int text_kind(__u8 kind)
{
	return kind == GS_ARG_STRING || kind == GS_ARG_KSTRING || kind == GS_ARG_CHARS || kind == GS_ARG_DATALOC ||
	       kind == GS_ARG_FD || kind == GS_ARG_FILEPTR || kind == GS_ARG_BPRM || kind == GS_ARG_PATHPTR ||
	       kind == GS_ARG_BUF;
}

/* the event's header, once the hook's selectors matched */
static __always_inline void fill_header(struct gs_event *ev, struct gs_hook *h, __u32 hid, struct hooks_ctx *hc)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32;
	ev->type = MSG_GENERIC;
	ev->size = sizeof(*ev);
	ev->ktime = bpf_ktime_get_ns();
	ev->pid = tgid;
	ev->tid = (__u32)pid_tgid;
	struct proc_entry *pe = bpf_map_lookup_elem(&procs, &tgid);
	ev->proc_ktime = pe ? pe->ktime : 0;
	ev->cgroup_id = bpf_get_current_cgroup_id();
	ev->hook_id = hid;
	ev->syscall_nr = hc->nr;
	ev->ret = hc->ret;
	ev->nargs = h->nargs;
}

/* One hook at one call: decide first, then build the event.
 * 1. read only the arguments some selector compares (a compared string only as far as the longest
 *    Equal/Prefix value, plus a byte to tell a longer string), hash those bytes, evaluate the selectors;
 * 2. only when a selector matched: read the other arguments (and the rest of a string read in part),
 *    fill the header, act and post.
 * A call no selector matches costs its compared bytes, not an event. Verified once, on its own. */
__noinline int gs_run_hook(__u32 hid, struct hooks_ctx *hc)
{
	__u32 zero = 0;
	struct gs_hook *h = bpf_map_lookup_elem(&gs_hooks, &hid);
	struct gs_event *ev = bpf_map_lookup_elem(&gs_scratch, &zero);
	if (!h || !ev || !hc || !(h->flags & GS_F_ENABLED))
		return 0;
	if ((h->flags & GS_F_AT_EXIT) && !hc->at_exit) {
		if (h->guard & GS_G_CRED_NEW) { /* the entry's credentials, compared at the exit */
			__u32 tid = (__u32)bpf_get_current_pid_tgid();
			__u64 cred = reg_at(hc, GS_REG_CRED);
			bpf_map_update_elem(&gs_entry_cred, &tid, &cred, BPF_ANY);
		}
		return 0;
	}
	if (!(h->flags & GS_F_AT_EXIT) && hc->at_exit) /* at the exit only hooks evaluated there */
		return 0;
	if (h->flags & GS_F_SCOPED) {
		struct gs_scope_key sk = {.policy_id = h->policy_id, .cgroup_id = bpf_get_current_cgroup_id()};
		if (!bpf_map_lookup_elem(&gs_scope, &sk))
			return 0;
	}
	if (!guard_ok(h, hid, hc))
		return 0;

	/* 1. what the selectors compare */
	ev->flags = 0;
	__u32 nargs = h->nargs, later = 0;
	for (__u32 a = 0; a < GS_ARGS; a++) {
		if (a >= nargs)
			break;
		__u8 kind = h->arg_kind[a];
		__u32 cmp = (h->hash_mask >> a) & 1;
		if (text_kind(kind) && !cmp) { /* text no selector compares: only for the event */
			later |= 1 << a;
			continue;
		}
		/* Equal/Prefix only: their bytes and one more to tell a longer string (at least GS_CAP_MIN: a
		 * short string is read once, not again for the event) */
		__u32 cap = 0, need = cmp ? h->hash_len[a] : 0;
		if (need)
			cap = need + 2 < GS_CAP_MIN ? GS_CAP_MIN : need + 2;
		if (gs_read_arg(hid, a, hc, cap))
			later |= 1 << a;
	}
	for (__u32 a = 0; a < GS_ARGS; a++) {
		if (a >= nargs)
			break;
		if (!((h->hash_mask >> a) & 1))
			continue;
		__u32 len = ev->slen[a], need = h->hash_len[a];
		if (need && need < len) /* Equal/Prefix values only need their own length hashed */
			len = need;
		hash_arg(a, len, !need); /* the tail hashes only for a Postfix (need 0: the whole string) */
	}
	if (h->flags & GS_F_BINARIES)
		gs_hash_bin();
	int ret_hook = h->flags & GS_F_RETURN;
	__u8 mask = match_selectors(h, hid, ret_hook);
	if (!mask)
		return 0;

	/* 2. something matched: the event */
	for (__u32 a = 0; a < GS_ARGS; a++)
		if ((later >> a) & 1)
			gs_read_arg(hid, a, hc, 0);
	fill_header(ev, h, hid, hc);
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (ret_hook) {
		/* decided at exit: keep the entry's arguments and which selectors' entry parts matched */
		ev->sel_mask = mask;
		struct gs_pend_key pk = {.tid = (__u32)pid_tgid, .hook = hid};
		bpf_map_update_elem(&gs_pending, &pk, ev, BPF_ANY);
		return 0;
	}
	__u8 action = GS_ACT_POST, post = 1, sig = 0;
	__u64 rate = 0;
	__s32 matched = -1;
	if (h->nsel) {
		for (__u32 si = 0; si < GS_SELECTORS; si++) { /* the one that matched (the first: it won) */
			if ((mask >> si) & 1) {
				matched = si;
				break;
			}
		}
		struct gs_selector *sel = matched >= 0 ? sel_at(h, matched) : 0;
		if (!sel)
			return 0;
		action = sel->action;
		post = sel->post;
		sig = sel->signal;
		rate = sel->rate_ns;
	}
	act_and_post(ev, h, hid, matched, action, post, sig, rate, pid_tgid);
	return 0;
}

/* The hook's quick reject (struct gs_quick), in the entry program before any call: 1 when the call cannot
 * match (the first bytes of the compared string are none of the values'), 0 when it may (or the hook has
 * no quick reject, or the string cannot be read: the selectors decide as always). Inlined in the entry program
 * when one hook watches the syscall (the common case: no call; quick_reject_rec, before anything else is
 * copied from the record); gs_quick_reject below when several do. */

/* the hook hid when it has a quick reject (w: the lookup's key, then the string's first bytes, in the same
 * 16 bytes: the entry program's frame is at its limit, see gs_quick_reject) */
static __always_inline struct gs_hook *quick_hook(__u64 *w, __u32 hid)
{
	w[0] = hid;
	w[1] = 0;
	struct gs_hook *h = bpf_map_lookup_elem(&gs_hooks, w);
	if (!h || !h->quick.n || h->quick.reg > 5 || (h->flags & GS_F_AT_EXIT))
		return 0;
	return h;
}

/* the test itself on the user string at p */
static __always_inline int quick_test(struct gs_hook *h, __u64 *w, __u64 p)
{
	w[0] = 0;
	long n = bpf_probe_read_user_str(w, 9, (void *)p);
	if (n <= 0)
		return 0;
	__u64 x = w[0];
	if (n < 9) /* only the bytes before the NUL: the helper need not zero the rest */
		x &= (1ULL << ((n - 1) * 8)) - 1;
	__u32 nv = h->quick.n;
	for (__u32 v = 0; v < GS_QUICK; v++) {
		if (v >= nv)
			break;
		if ((x & h->quick.mask[v]) == h->quick.val[v])
			return 0;
	}
	return 1;
}

/* with the arguments copied to hc (several hooks on the syscall) */
static __always_inline int quick_reject(struct hooks_ctx *hc, __u32 hid)
{
	__u64 w[2];
	struct gs_hook *h = quick_hook(w, hid);
	if (!h || !hc)
		return 0;
	return quick_test(h, w, reg_at(hc, h->quick.reg));
}

/* The record's argument slots read as plain loads (r: the record cast to its BTF type by bpf_rdonly_cast, a kfunc
 * the loader probes for; btf 0 where the kernel lacks it: gs_sys_enter_pr). A probe read helper per call costs the
 * never-matching call ~70 ns here; a direct ctx->args[i] read would make the attach to a syscall with fewer
 * arguments fail (max_ctx_offset), a load through the cast pointer is not a ctx access. Past the syscall's
 * arity a slot holds whatever the per-CPU trace buffer holds there (as with the probe read), never used. */
extern void *bpf_rdonly_cast(const void *obj__ign, __u32 btf_id__k) __ksym __weak;

static __always_inline __u64 rec_arg(struct trace_event_raw_sys_enter *ctx, struct trace_event_raw_sys_enter *r,
				     int btf, __u8 reg)
{
	__u64 v = 0;
	if (btf) {
		switch (reg) { /* constant offsets */
		case 0: return r->args[0];
		case 1: return r->args[1];
		case 2: return r->args[2];
		case 3: return r->args[3];
		case 4: return r->args[4];
		default: return r->args[5];
		}
	}
	const void *src;
	switch (reg) {
	case 0: src = &ctx->args[0]; break;
	case 1: src = &ctx->args[1]; break;
	case 2: src = &ctx->args[2]; break;
	case 3: src = &ctx->args[3]; break;
	case 4: src = &ctx->args[4]; break;
	default: src = &ctx->args[5]; break;
	}
	bpf_probe_read_kernel(&v, 8, src);
	return v;
}

/* straight from the tracepoint record, before anything else is copied from it: only the one argument the
 * values compare (8 bytes; the whole record's six argument slots cost the never-matching call ~50 ns more) */
static __always_inline int quick_reject_rec(struct trace_event_raw_sys_enter *ctx, struct trace_event_raw_sys_enter *r,
					    int btf, __u32 hid)
{
	__u64 w[2];
	struct gs_hook *h = quick_hook(w, hid);
	if (!h)
		return 0;
	return quick_test(h, w, rec_arg(ctx, r, btf, h->quick.reg));
}

/* the same, as its own function: a loop over several hooks keeps its state across the calls, and inlined
 * there its buffer and spills would grow the entry program's frame, which the deepest call chain adds to
 * (512 bytes in all) */
__noinline int gs_quick_reject(struct hooks_ctx *hc, __u32 hid)
{
	return hc ? quick_reject(hc, hid) : 0;
}

/* the hooks watching one attach point, in order (sh: its gs_syscalls entry); direct calls, no callbacks.
 * quick: the attach point is a syscall's entry, whose hooks may have a quick reject. */
static __always_inline int run_hooks_q(struct hooks_ctx *hc, struct gs_sys *sh, int quick)
{
	__u32 n = sh->n;
	for (__u32 i = 0; i < GS_PER_SYSCALL; i++) {
		if (i >= n)
			break;
		__u32 hid = sh->hooks[i];
		if (quick && gs_quick_reject(hc, hid))
			continue;
		gs_run_hook(hid, hc);
	}
	return 0;
}

static __always_inline int run_hooks(struct hooks_ctx *hc, struct gs_sys *sh)
{
	return run_hooks_q(hc, sh, 0);
}

/* Attached by the loader to syscalls/sys_enter_<name> of each watched syscall only: unwatched
 * syscalls pay nothing. Every sys_enter_* record has the same layout (id, args[6]). btf: read the record
 * through bpf_rdonly_cast (gs_sys_enter) or with probe reads (gs_sys_enter_pr, kernels without it). */
static __always_inline int sys_enter(struct trace_event_raw_sys_enter *ctx, int btf)
{
	/* only the record's int __syscall_nr (offset 8, size 4): the 8-byte `id` would read past the end
	 * of the record of a syscall without arguments (getpid, sync: 12 bytes), which makes the attach
	 * fail with EACCES (max_ctx_offset) */
	__u32 nr = *(__u32 *)((void *)ctx + offsetof(struct trace_event_raw_sys_enter, id));
	struct gs_sys *sh = bpf_map_lookup_elem(&gs_syscalls, &nr);
	if (!sh)
		return 0;
	__u32 n = sh->n;
	struct trace_event_raw_sys_enter *r = 0;
	if (btf)
		r = bpf_rdonly_cast(ctx, bpf_core_type_id_kernel(struct trace_event_raw_sys_enter));
	/* the common case, one hook: its quick reject first, straight from the record */
	if (n == 1 && quick_reject_rec(ctx, r, btf, sh->hooks[0]))
		return 0;
	/* a record only holds the syscall's own arguments: direct ctx reads past them would make the
	 * attach fail (max_ctx_offset), so copy; slots past the syscall's arity are never used */
	struct hooks_ctx hc = {.nr = nr};
	if (btf) {
		hc.args[0] = r->args[0];
		hc.args[1] = r->args[1];
		hc.args[2] = r->args[2];
		hc.args[3] = r->args[3];
		hc.args[4] = r->args[4];
		hc.args[5] = r->args[5];
	} else
		bpf_probe_read_kernel(hc.args, sizeof(hc.args), ctx->args);
	if (n == 1) { /* without a loop's state kept across the calls */
		gs_run_hook(sh->hooks[0], &hc);
		return 0;
	}
	return run_hooks_q(&hc, sh, 1);
}

SEC("tracepoint")
int gs_sys_enter(struct trace_event_raw_sys_enter *ctx)
{
	return sys_enter(ctx, 1);
}

/* the same where tracepoint programs cannot call bpf_rdonly_cast (6.1): the loader loads one of the two */
SEC("tracepoint")
int gs_sys_enter_pr(struct trace_event_raw_sys_enter *ctx)
{
	return sys_enter(ctx, 0);
}

/* return hooks: complete the entry's event with the return value; the first selector (in order) whose
 * entry parts matched and whose matchReturnArgs passes decides. Verified once, on its own. */
__noinline int gs_exit_hook(__u32 hid, __s64 ret)
{
	struct gs_hook *h = bpf_map_lookup_elem(&gs_hooks, &hid);
	if (!h || !(h->flags & GS_F_RETURN))
		return 0;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct gs_pend_key pk = {.tid = (__u32)pid_tgid, .hook = hid};
	struct gs_event *ev = bpf_map_lookup_elem(&gs_pending, &pk);
	if (!ev)
		return 0;
	ev->ret = ret;
	if (h->copy_mask) { /* returnCopy: the buffer as the call left it, as many bytes as it returned */
		__u64 n = ret > 0 ? ret : 0;
		if (n > GS_ARGSTR - 1) {
			n = GS_ARGSTR - 1;
			ev->flags |= GS_EV_TRUNC;
		}
		n &= GS_ARGSTR - 1;
		__u8 cm = h->copy_mask;
#define GS_C(q) if ((cm >> q) & 1) { \
			if (bpf_probe_read_user(ev->str[q], n, (void *)ev->ints[q])) \
				ev->slen[q] = 0; \
			else \
				ev->slen[q] = n; \
		}
		GS_C(0) GS_C(1) GS_C(2) GS_C(3) GS_C(4)
#undef GS_C
	}
	ev->ktime = bpf_ktime_get_ns();
	__u8 action = GS_ACT_POST, post = 1, sig = 0;
	__u64 rate = 0;
	__s32 matched = -1;
	if (h->nsel) {
		__u8 mask = ev->sel_mask;
		for (__u32 si = 0; si < GS_SELECTORS; si++) {
			if (si >= h->nsel)
				break;
			if ((mask >> si) & 1 && gs_match_ret(hid, si, ret)) {
				matched = si;
				break;
			}
		}
		struct gs_selector *sel = matched >= 0 ? sel_at(h, matched) : 0;
		if (!sel) {
			bpf_map_delete_elem(&gs_pending, &pk);
			return 0;
		}
		action = sel->action;
		post = sel->post;
		sig = sel->signal;
		rate = sel->rate_ns;
	}
	act_and_post(ev, h, hid, matched, action, post, sig, rate, pid_tgid);
	bpf_map_delete_elem(&gs_pending, &pk);
	return 0;
}

static __always_inline int run_exit(__u32 nr, __s64 ret)
{
	struct gs_sys *sh = bpf_map_lookup_elem(&gs_syscalls, &nr);
	if (!sh)
		return 0;
	__u32 n = sh->n;
	for (__u32 i = 0; i < GS_PER_SYSCALL; i++) {
		if (i >= n)
			break;
		gs_exit_hook(sh->hooks[i], ret);
	}
	return 0;
}

/* Attached to syscalls/sys_exit_<name> of each syscall a return hook watches. */
SEC("tracepoint")
int gs_sys_exit(struct trace_event_raw_sys_exit *ctx)
{
	__u32 nr = (__u32)ctx->id;
	__s64 ret = ctx->ret;
	run_exit(nr, ret);
	/* hooks evaluated as a whole at the exit (their args from the return value and the task) */
	struct gs_sys *sh = bpf_map_lookup_elem(&gs_syscalls, &nr);
	if (!sh)
		return 0;
	struct hooks_ctx hc = {.nr = nr, .ret = ret, .at_exit = 1};
	return run_hooks(&hc, sh);
}

/* kretprobes and uretprobes (the cookie names the hooks, as for the entry) */
SEC("kprobe")
int gs_kretprobe(struct pt_regs *ctx)
{
	return run_exit((__u32)bpf_get_attach_cookie(ctx), PT_REGS_RC(ctx));
}

/* Any other tracepoint: the attach cookie names the hooks; fields are read from the record by the offsets
 * and sizes of its format file. */
SEC("tracepoint")
int gs_tp(void *ctx)
{
	__u32 nr = (__u32)bpf_get_attach_cookie(ctx);
	struct gs_sys *sh = bpf_map_lookup_elem(&gs_syscalls, &nr);
	if (!sh)
		return 0;
	struct hooks_ctx hc = {.nr = nr};
	bpf_probe_read_kernel(&hc.rec, sizeof(hc.rec), &ctx);
	return run_hooks(&hc, sh);
}

/* Raw tracepoints (`raw: true`; Linux 6.10+, which gives raw tracepoints attach cookies): the
 * tracepoint's own arguments, read like a kprobed function's. */
SEC("raw_tp")
int gs_raw_tp(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 nr = (__u32)bpf_get_attach_cookie(ctx);
	struct gs_sys *sh = bpf_map_lookup_elem(&gs_syscalls, &nr);
	if (!sh)
		return 0;
	struct hooks_ctx hc = {.nr = nr};
	/* copied: a direct read past the tracepoint's arity would make the attach fail */
	bpf_probe_read_kernel(hc.args, sizeof(hc.args), ctx->args);
	return run_hooks(&hc, sh);
}

/* An LSM program returns 0 or -errno; the verifier (6.12+) checks that range on its return value, so clamp
 * with branches it follows (in assembly: the compiler would make them branchless, which it cannot track). */
static __always_inline int lsm_retval(int v)
{
	__s64 r = v;
	asm volatile("if %[r] s<= 0 goto +1\n\t"
		     "%[r] = 0\n\t"
		     "if %[r] s>= -4095 goto +1\n\t"
		     "%[r] = -4095"
		     : [r] "+r"(r));
	return r;
}

static __always_inline int lsm_run(__u32 nr, __u64 a0, __u64 a1)
{
	__u32 zero = 0;
	struct gs_sys *sh = bpf_map_lookup_elem(&gs_syscalls, &nr);
	if (!sh)
		return 0;
	__s32 *verdict = bpf_map_lookup_elem(&gs_verdict, &zero);
	if (!verdict)
		return 0;
	*verdict = 0;
	struct hooks_ctx hc = {.nr = nr};
	hc.args[0] = a0;
	hc.args[1] = a1;
	run_hooks(&hc, sh);
	verdict = bpf_map_lookup_elem(&gs_verdict, &zero);
	return verdict ? lsm_retval(*verdict) : 0;
}

/* BPF-LSM hooks (kernels that have BPF-LSM; the loader enables them only there, and attaches each only
 * while a policy uses it): the same hooks and selectors; an Override selector makes the operation fail. */
SEC("lsm/file_open")
int BPF_PROG(gs_file_open, struct file *file, int ret)
{
	if (ret)
		return lsm_retval(ret);
	__u64 f = 0;
	/* copy the pointer as plain bytes: the hooks read it with probe reads, like any syscall argument */
	bpf_probe_read_kernel(&f, sizeof(f), &file);
	return lsm_run(GS_NR_LSM_FILE_OPEN, f, 0);
}

SEC("lsm/file_permission")
int BPF_PROG(gs_file_permission, struct file *file, int mask, int ret)
{
	if (ret)
		return lsm_retval(ret);
	__u64 f = 0;
	bpf_probe_read_kernel(&f, sizeof(f), &file);
	return lsm_run(GS_NR_LSM_FILE_PERMISSION, f, (__u64)mask);
}

SEC("lsm/bprm_check_security")
int BPF_PROG(gs_bprm_check_security, struct linux_binprm *bprm, int ret)
{
	if (ret)
		return lsm_retval(ret);
	__u64 f = (__u64)BPF_CORE_READ(bprm, file);
	return lsm_run(GS_NR_LSM_BPRM_CHECK, f, 0);
}

/* kprobes (kernels that have them; the loader enables this program only there): one program attached
 * to each watched kernel function, the attach cookie saying which hooks (its pseudo syscall number). */
SEC("kprobe")
int gs_kprobe(struct pt_regs *ctx)
{
	__u32 nr = (__u32)bpf_get_attach_cookie(ctx);
	struct gs_sys *sh = bpf_map_lookup_elem(&gs_syscalls, &nr);
	if (!sh)
		return 0;
	struct hooks_ctx hc = {.nr = nr};
	hc.args[0] = PT_REGS_PARM1(ctx);
	hc.args[1] = PT_REGS_PARM2(ctx);
	hc.args[2] = PT_REGS_PARM3(ctx);
	hc.args[3] = PT_REGS_PARM4(ctx);
	hc.args[4] = PT_REGS_PARM5(ctx);
	return run_hooks(&hc, sh);
}

struct follow_ctx {
	__u64 bits;
	__u32 ptgid; /* fork: the parent */
	__u32 pns;   /* fork: the parent's PID in its own PID namespace */
	__u32 cross; /* fork: the child is in another PID namespace than its parent (it entered one) */
	__u32 exec;  /* 1: match binary slots against the new image, 0: pid slots against the parent */
};

static long follow_step(__u32 i, void *data)
{
	struct follow_ctx *fc = data;
	__u32 slot = i;
	struct gs_follow *f = bpf_map_lookup_elem(&gs_follow, &slot);
	if (!f || !f->kind)
		return 0;
	int any = 0;
	if (fc->exec && f->kind == GS_FOLLOW_BIN) {
		__u32 zero = 0;
		struct gs_hashes *hs = bpf_map_lookup_elem(&gs_hash, &zero);
		if (!hs)
			return 1;
		enum gs_hash_mode mode = f->op == GS_BIN_PREFIX ? GS_HM_PREFIX : GS_HM_EQUAL;
		for (int v = 0; v < GS_VALS; v++)
			if (v < f->n && !any)
				any = hash_match(hs->bin, hs->bin, hs->bin_len, f->hash[v], f->lens[v], mode);
	} else if (!fc->exec && f->kind == GS_FOLLOW_PID) {
		if (f->pid_ns && fc->cross) { /* namespace PIDs are followed within their namespace only */
			fc->bits &= ~(1ULL << (i & 63));
			return 0;
		}
		__u32 ppid = f->pid_ns ? fc->pns : fc->ptgid;
		for (int v = 0; v < GS_VALS; v++)
			if (v < f->n && f->pids[v] == ppid)
				any = 1;
	}
	if (any)
		fc->bits |= 1ULL << (i & 63);
	return 0;
}

/* followChildren: a process whose image matches a slot's binaries gets its bit; children inherit it */
SEC("tp_btf/sched_process_exec")
int BPF_PROG(gs_follow_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u64 *cur = bpf_map_lookup_elem(&gs_mb, &tgid);
	struct follow_ctx fc = {.bits = cur ? *cur : 0, .exec = 1};
	__u64 before = fc.bits;
	struct proc_binary *pb = bpf_map_lookup_elem(&binaries, &tgid); /* the process sensor ran first */
	if (!pb)
		return 0;
	gs_hash_bin();
	bpf_loop(GS_FOLLOW, follow_step, &fc, 0);
	if (fc.bits != before)
		bpf_map_update_elem(&gs_mb, &tgid, &fc.bits, BPF_ANY);
	return 0;
}

/* a new process inherits its parent's bits; followForks slots of the parent's pid set theirs */
SEC("tp_btf/sched_process_fork")
int BPF_PROG(gs_follow_fork, struct task_struct *parent, struct task_struct *child)
{
	__u32 pid = BPF_CORE_READ(child, pid), tgid = BPF_CORE_READ(child, tgid);
	if (pid != tgid)
		return 0;
	__u32 ptgid = BPF_CORE_READ(parent, tgid);
	__u64 *pbits = bpf_map_lookup_elem(&gs_mb, &ptgid);
	struct follow_ctx fc = {.bits = pbits ? *pbits : 0, .ptgid = ptgid, .pns = ns_tgid(parent)};
	fc.cross = pid_ns_of(parent) != pid_ns_of(child);
	bpf_loop(GS_FOLLOW, follow_step, &fc, 0);
	if (fc.bits)
		bpf_map_update_elem(&gs_mb, &tgid, &fc.bits, BPF_ANY);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(gs_follow_exit, struct task_struct *p)
{
	if (BPF_CORE_READ(p, signal, live.counter) != 0)
		return 0;
	__u32 tgid = BPF_CORE_READ(p, tgid);
	bpf_map_delete_elem(&gs_mb, &tgid);
	return 0;
}

SEC("cgroup/connect4")
int gs_connect4(struct bpf_sock_addr *ctx)
{
	return deny_marked();
}

SEC("cgroup/connect6")
int gs_connect6(struct bpf_sock_addr *ctx)
{
	return deny_marked();
}

union gs_abi_types {
	struct gs_hook h;
	struct gs_sys s;
	struct gs_event e;
	struct gs_scope_key k;
	struct gs_follow f;
	struct gs_pend_key p;
	struct gs_agent ag;
	struct gs_sockinfo si;
	struct gs_credinfo ci;
	struct gs_skbinfo sk;
};
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, union gs_abi_types);
} gs_abi_types SEC(".maps");

