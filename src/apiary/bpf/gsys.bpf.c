// SPDX-License-Identifier: GPL-2.0
/* Generic syscall sensor: TracingPolicy hooks realised at syscall entry, decided in the kernel.
 * One raw tracepoint on sys_enter; per syscall number the hooks watching it; per hook the
 * argument specs and up to 5 selectors evaluated in order (first match wins), then the action:
 * Post / NoPost / Sigkill / Signal (bpf_send_signal before the syscall body runs) / DenyConnect
 * (the cgroup connect4 program fails the connect() with EPERM). Events go to the process sensor's
 * ring buffer, so they are ordered with exec/exit events. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "process_abi.h"
#include "tracing_abi.h"
#include "pathwalk.bpf.h"

char LICENSE[] SEC("license") = "GPL";

/* shared with the process sensor (the loader reuses its maps) */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct proc_entry);
} procs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct proc_binary);
} binaries SEC(".maps");

/* own maps */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32); /* syscall number */
	__type(value, struct gs_sys);
} gs_syscalls SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, GS_HOOKS);
	__type(key, __u32);
	__type(value, struct gs_hook);
} gs_hooks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct gs_scope_key);
	__type(value, __u8);
} gs_scope SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64); /* hook << 40 | selector << 32 | tgid */
	__type(value, __u64);
} gs_rate SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32); /* thread id whose next connect() must fail */
	__type(value, __u32); /* hook id */
} gs_deny SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, GS_HOOKS * 4);
	__type(key, __u32);
	__type(value, __u64);
} gs_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gs_event);
} gs_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gs_hashes);
} gs_hash SEC(".maps");

/* the errno an Override selector decided, read by the LSM program after the hooks ran */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __s32);
} gs_verdict SEC(".maps");

static __always_inline void gs_count(__u32 hook, __u32 what)
{
	__u32 idx = (hook * 4 + what) % (GS_HOOKS * 4);
	__u64 *v = bpf_map_lookup_elem(&gs_counters, &idx);
	if (v)
		*v += 1;
}

struct hooks_ctx {
	__u64 args[6]; /* the syscall's arguments, copied from the tracepoint record */
	__u32 nr;
};

static __always_inline __u64 reg_arg(struct hooks_ctx *hc, __u8 idx)
{
	switch (idx) { /* constant offsets */
	case 0: return hc->args[0];
	case 1: return hc->args[1];
	case 2: return hc->args[2];
	case 3: return hc->args[3];
	case 4: return hc->args[4];
	case 5: return hc->args[5];
	}
	return 0;
}

static __always_inline struct file *fd_file(__u64 fd)
{
	struct task_struct *t = (void *)bpf_get_current_task();
	struct files_struct *files = BPF_CORE_READ(t, files);
	struct fdtable *fdt = BPF_CORE_READ(files, fdt);
	unsigned int max = BPF_CORE_READ(fdt, max_fds);
	if (fd >= max)
		return 0;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *f = 0;
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	return f;
}

static __always_inline void read_arg(struct gs_event *ev, struct gs_hook *h, struct hooks_ctx *hc, int a)
{
	__u8 kind = h->arg_kind[a];
	__u64 v = reg_arg(hc, h->arg_index[a]);
	ev->ints[a] = v;
	ev->slen[a] = 0;
	if (kind == GS_ARG_STRING) {
		long n = bpf_probe_read_user_str(ev->str[a], GS_ARGSTR, (void *)v);
		ev->slen[a] = n > 0 ? n - 1 : 0;
		if (n == GS_ARGSTR)
			ev->flags |= GS_EV_TRUNC;
	} else if (kind == GS_ARG_FD || kind == GS_ARG_FILEPTR) {
		struct file *f = kind == GS_ARG_FD ? fd_file(v) : (struct file *)v;
		if (!f)
			return;
		int trunc = 0;
		__u32 len = walk_path(&f->f_path, &trunc);
		__u32 zero = 0;
		struct pathwalk_buf *pw = bpf_map_lookup_elem(&pathwalk, &zero);
		if (!pw)
			return;
		__u32 start = PATH_BUF - len;
		__u32 n = len;
		if (n > GS_ARGSTR - 1) {
			n = GS_ARGSTR - 1;
			trunc = 1;
		}
		barrier_var(start);
		barrier_var(n);
		start &= PATH_BUF - 1;
		n &= GS_ARGSTR - 1;
		bpf_probe_read_kernel(ev->str[a], n, &pw->path[start]);
		ev->slen[a] = n;
		if (trunc)
			ev->flags |= GS_EV_TRUNC;
	} else if (kind == GS_ARG_SOCKADDR) {
		struct {
			__u16 family;
			__u16 port;
			__u32 addr;
		} sa = {};
		bpf_probe_read_user(&sa, sizeof(sa), (void *)v);
		ev->ints[a] = ((__s64)sa.family << 48) | ((__s64)bpf_ntohs(sa.port) << 32) | bpf_ntohl(sa.addr);
	}
}

struct hash_ctx {
	struct gs_hashes *hs;
	struct gs_event *ev;
	struct proc_binary *pb;
	__u32 a;   /* argument slot, or GS_ARGS for the binary */
	__u32 len;
};

/* step i: fold bytes 4i..4i+3 into the prefix hashes and the same count of bytes from the end into
 * the backwards tail hashes (four bytes per callback: the callback itself is the cost) */
static long hash_step(__u32 i, void *data)
{
	struct hash_ctx *c = data;
	struct gs_hashes *hs = c->hs;
	struct gs_event *ev = c->ev;
	__u32 a = c->a;
	for (__u32 k = 0; k < 4; k++) {
		__u32 n = i * 4 + k;
		if (n >= c->len)
			return 1;
		__u32 j = n, t = c->len - 1 - n;
		barrier_var(j);
		barrier_var(t);
		j &= GS_ARGSTR - 1;
		t &= GS_ARGSTR - 1;
		if (a == GS_ARGS) {
			struct proc_binary *pb = c->pb;
			if (!pb)
				return 1;
			hs->bin[(j + 1) & (GS_BIN - 1)] = (hs->bin[j] ^ (__u8)pb->path[j]) * GS_FNV_PRIME;
			continue;
		}
		switch (a) {
#define GS_H(q) case q: \
			hs->pre[q][(j + 1) & (GS_ARGSTR - 1)] = (hs->pre[q][j] ^ (__u8)ev->str[q][j]) * GS_FNV_PRIME; \
			hs->suf[q][(j + 1) & (GS_ARGSTR - 1)] = (hs->suf[q][j] ^ (__u8)ev->str[q][t]) * GS_FNV_PRIME; \
			break;
		GS_H(0) GS_H(1) GS_H(2) GS_H(3) GS_H(4)
#undef GS_H
		default:
			return 1;
		}
	}
	return 0;
}

static __always_inline void hash_arg(__u32 a, __u32 len, struct proc_binary *pb)
{
	__u32 zero = 0;
	struct gs_hashes *hs = bpf_map_lookup_elem(&gs_hash, &zero);
	struct gs_event *ev = bpf_map_lookup_elem(&gs_scratch, &zero);
	if (!hs || !ev)
		return;
	if (len > GS_ARGSTR - 1)
		len = GS_ARGSTR - 1;
	if (a == GS_ARGS) {
		hs->bin[0] = GS_FNV_BASIS;
		hs->bin_len = len;
	} else if (a < GS_ARGS) {
		hs->pre[a][0] = GS_FNV_BASIS;
		hs->suf[a][0] = GS_FNV_BASIS;
	}
	struct hash_ctx c = {.hs = hs, .ev = ev, .pb = pb, .a = a, .len = len};
	bpf_loop((len + 3) / 4, hash_step, &c, 0);
}

/* mode 0: equal, 1: prefix, 2: postfix */
static __always_inline int hash_match(__u64 *pre, __u64 *suf, __u32 alen, __u64 vhash, __u32 vlen, int mode)
{
	if (vlen > alen || vlen > GS_ARGSTR - 1)
		return 0;
	if (mode == 0 && vlen != alen)
		return 0;
	barrier_var(vlen);
	vlen &= GS_ARGSTR - 1;
	return (mode == 2 ? suf[vlen] : pre[vlen]) == vhash;
}

/* selector si of a hook, by constant offsets (keeps the verifier's bounds exact); 0 past the end */
static __always_inline struct gs_selector *sel_at(struct gs_hook *h, __u32 si)
{
	switch (si) {
	case 0: return &h->sel[0];
	case 1: return &h->sel[1];
	case 2: return &h->sel[2];
	case 3: return &h->sel[3];
	case 4: return &h->sel[4];
	}
	return 0;
}

/* Global functions are verified once, on their own: this keeps the selector evaluation linear for
 * the verifier instead of multiplying with every caller's states. */
__noinline int gs_match_filter(__u32 hid, __u32 si, __u32 fi)
{
	__u32 zero0 = 0;
	struct gs_hook *h = bpf_map_lookup_elem(&gs_hooks, &hid);
	struct gs_event *ev = bpf_map_lookup_elem(&gs_scratch, &zero0);
	if (!h || !ev)
		return 0;
	struct gs_selector *sel = sel_at(h, si);
	if (!sel)
		return 0;
	struct gs_filter *f;
	switch (fi) {
	case 0: f = &sel->f[0]; break;
	case 1: f = &sel->f[1]; break;
	case 2: f = &sel->f[2]; break;
	case 3: f = &sel->f[3]; break;
	case 4: f = &sel->f[4]; break;
	default: return 0;
	}

	__u32 zero = 0;
	struct gs_hashes *hs = bpf_map_lookup_elem(&gs_hash, &zero);
	if (!hs)
		return 0;
	__u64 *pre, *suf;
	__u8 kind;
	__u32 alen;
	__s64 x;
	switch (f->arg) { /* constant offsets keep the verifier's bounds exact */
#define GS_PICK(k) case k: pre = hs->pre[k]; suf = hs->suf[k]; kind = h->arg_kind[k]; alen = ev->slen[k]; \
		x = ev->ints[k]; break;
	GS_PICK(0) GS_PICK(1) GS_PICK(2) GS_PICK(3) GS_PICK(4)
#undef GS_PICK
	default:
		return 0;
	}
	if (alen > GS_ARGSTR - 1)
		alen = GS_ARGSTR - 1;
	__u8 op = f->op;
	__u32 n = f->nvals;
	if (kind == GS_ARG_STRING || kind == GS_ARG_FD || kind == GS_ARG_FILEPTR) {
		int mode = (op == GS_OP_EQUAL || op == GS_OP_NOTEQUAL) ? 0 : (op == GS_OP_PREFIX || op == GS_OP_NOTPREFIX) ? 1 : 2;
		int any = 0;
		for (int v = 0; v < GS_VALS; v++) {
			if (v < n && !any)
				any = hash_match(pre, suf, alen, f->hash[v], f->lens[v], mode);
		}
		int neg = op == GS_OP_NOTEQUAL || op == GS_OP_NOTPREFIX || op == GS_OP_NOTPOSTFIX;
		return neg ? !any : any;
	}
	if (kind == GS_ARG_SOCKADDR) {
		__u64 fam = (__u64)x >> 48, port = ((__u64)x >> 32) & 0xffff, addr = (__u64)x & 0xffffffff;
		int any = 0;
		for (int v = 0; v < GS_VALS; v++) {
			if (v >= n)
				break;
			__s64 lo = f->ints[v][0], hi = f->ints[v][1];
			if ((op == GS_OP_DADDR || op == GS_OP_NOTDADDR) && (addr & hi) == (__u64)lo)
				any = 1;
			if ((op == GS_OP_DPORT || op == GS_OP_NOTDPORT) && port >= lo && port <= hi)
				any = 1;
			if (op == GS_OP_FAMILY && fam == (__u64)lo)
				any = 1;
		}
		return (op == GS_OP_NOTDADDR || op == GS_OP_NOTDPORT) ? !any : any;
	}
	if (kind == GS_ARG_INT || kind == GS_ARG_UINT) {
		int any = 0;
		for (int v = 0; v < GS_VALS; v++) {
			if (v >= n)
				break;
			__s64 lo = f->ints[v][0], hi = f->ints[v][1];
			switch (op) {
			case GS_OP_EQUAL:
			case GS_OP_NOTEQUAL:
				any |= x == lo;
				break;
			case GS_OP_GT:
				any |= kind == GS_ARG_UINT ? (__u64)x > (__u64)lo : x > lo;
				break;
			case GS_OP_LT:
				any |= kind == GS_ARG_UINT ? (__u64)x < (__u64)lo : x < lo;
				break;
			case GS_OP_MASK:
				any |= (x & lo) != 0;
				break;
			case GS_OP_INRANGE:
			case GS_OP_NOTINRANGE:
				any |= kind == GS_ARG_UINT ? ((__u64)x >= (__u64)lo && (__u64)x <= (__u64)hi) : (x >= lo && x <= hi);
				break;
			}
		}
		return (op == GS_OP_NOTEQUAL || op == GS_OP_NOTINRANGE) ? !any : any;
	}
	return 0;
}

__noinline int gs_match_process(__u32 hid, __u32 si)
{
	struct gs_hook *h = bpf_map_lookup_elem(&gs_hooks, &hid);
	if (!h)
		return 0;
	struct gs_selector *sel = sel_at(h, si);
	if (!sel)
		return 0;
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (sel->npids) {
		int any = 0;
		for (int v = 0; v < GS_VALS; v++)
			if (v < sel->npids && sel->pids[v] == tgid)
				any = 1;
		if ((sel->pid_op == GS_BIN_IN) != any)
			return 0;
	}
	if (sel->nbins) {
		__u32 zero = 0;
		struct gs_hashes *hs = bpf_map_lookup_elem(&gs_hash, &zero);
		if (!hs)
			return 0;
		int mode = (sel->bin_op == GS_BIN_PREFIX || sel->bin_op == GS_BIN_NOTPREFIX) ? 1 : 0;
		int any = 0;
		for (int v = 0; v < GS_VALS; v++)
			if (v < sel->nbins && !any)
				any = hash_match(hs->bin, hs->bin, hs->bin_len, sel->bin_hash[v], sel->bin_lens[v], mode);
		int neg = sel->bin_op == GS_BIN_NOTIN || sel->bin_op == GS_BIN_NOTPREFIX;
		if (neg ? any : !any)
			return 0;
	}
	return 1;
}

struct eval_ctx {
	__u32 hook;
	__s32 matched;
	__u32 ok;
};

/* slot i = selector (i / GS_FILTERS), filter (i % GS_FILTERS): all filters of a selector AND */
static long eval_step(__u32 i, void *data)
{
	struct eval_ctx *c = data;
	__u32 hid = c->hook;
	struct gs_hook *h = bpf_map_lookup_elem(&gs_hooks, &hid);
	if (!h || i >= h->nsel)
		return 1;
	if (!gs_match_process(hid, i))
		return 0;
	struct gs_selector *sel = sel_at(h, i);
	if (!sel)
		return 1;
	__u32 nf = sel->nfilters;
	for (__u32 fi = 0; fi < GS_FILTERS; fi++) {
		if (fi >= nf)
			break;
		if (!gs_match_filter(hid, i, fi))
			return 0;
	}
	c->matched = i;
	return 1;
}

static long run_hook(__u32 i, void *data)
{
	struct hooks_ctx *hc = data;
	__u32 nr = hc->nr, zero = 0;
	struct gs_sys *sh = bpf_map_lookup_elem(&gs_syscalls, &nr);
	__u32 idx = i;
	barrier_var(idx);
	if (!sh || idx >= GS_PER_SYSCALL)
		return 1;
	__u32 hid = sh->hooks[idx];
	struct gs_hook *h = bpf_map_lookup_elem(&gs_hooks, &hid);
	struct gs_event *ev = bpf_map_lookup_elem(&gs_scratch, &zero);
	if (!h || !ev || !(h->flags & GS_F_ENABLED))
		return 0;
	if (h->flags & GS_F_SCOPED) {
		struct gs_scope_key sk = {.policy_id = h->policy_id, .cgroup_id = bpf_get_current_cgroup_id()};
		if (!bpf_map_lookup_elem(&gs_scope, &sk))
			return 0;
	}
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
	ev->syscall_nr = nr;
	ev->flags = 0;
	ev->nargs = h->nargs;
	if (h->nargs > 0)
		read_arg(ev, h, hc, 0);
	if (h->nargs > 1)
		read_arg(ev, h, hc, 1);
	if (h->nargs > 2)
		read_arg(ev, h, hc, 2);
	if (h->nargs > 3)
		read_arg(ev, h, hc, 3);
	if (h->nargs > 4)
		read_arg(ev, h, hc, 4);

	for (__u32 a = 0; a < GS_ARGS; a++) {
		if (a >= h->nargs)
			break;
		__u8 k = h->arg_kind[a];
		if (k == GS_ARG_STRING || k == GS_ARG_FD || k == GS_ARG_FILEPTR)
			hash_arg(a, ev->slen[a], 0);
	}
	if (h->flags & GS_F_BINARIES) {
		struct proc_binary *pb = bpf_map_lookup_elem(&binaries, &tgid);
		hash_arg(GS_ARGS, pb ? pb->len : 0, pb);
	}
	__u8 action = GS_ACT_POST, post = 1, sig = 0;
	__u64 rate = 0;
	__s32 matched = -1;
	if (h->nsel) {
		struct eval_ctx c = {.hook = hid, .matched = -1};
		bpf_loop(GS_SELECTORS, eval_step, &c, 0);
		if (c.matched < 0 || c.matched >= GS_SELECTORS)
			return 0;
		matched = c.matched;
		struct gs_selector *sel = &h->sel[matched];
		action = sel->action;
		post = sel->post;
		sig = sel->signal;
		rate = sel->rate_ns;
	}
	gs_count(hid, GS_CNT_MATCHED);
	ev->selector = matched;
	ev->action = action;
	int monitor = h->flags & GS_F_MONITOR;
	if (action == GS_ACT_SIGKILL || action == GS_ACT_SIGNAL) {
		if (monitor) {
			ev->flags |= GS_EV_MONITOR;
		} else {
			bpf_send_signal(action == GS_ACT_SIGKILL ? 9 : sig);
			ev->flags |= GS_EV_ENFORCED;
			gs_count(hid, GS_CNT_ENFORCED);
		}
	} else if (action == GS_ACT_OVERRIDE) {
		if (monitor) {
			ev->flags |= GS_EV_MONITOR;
		} else {
			__s32 *verdict = bpf_map_lookup_elem(&gs_verdict, &zero);
			if (verdict)
				*verdict = -(__s32)sig;
			ev->flags |= GS_EV_ENFORCED;
			gs_count(hid, GS_CNT_ENFORCED);
		}
	} else if (action == GS_ACT_DENYCONNECT) {
		if (monitor) {
			ev->flags |= GS_EV_MONITOR;
		} else {
			__u32 tid = (__u32)pid_tgid;
			bpf_map_update_elem(&gs_deny, &tid, &hid, BPF_ANY);
			ev->flags |= GS_EV_ENFORCED;
			gs_count(hid, GS_CNT_ENFORCED);
		}
	}
	if (!post)
		return 0;
	if (rate) {
		__u64 rk = ((__u64)hid << 40) | ((__u64)(matched & 0xff) << 32) | tgid;
		__u64 *last = bpf_map_lookup_elem(&gs_rate, &rk);
		if (last && ev->ktime - *last < rate)
			return 0;
		bpf_map_update_elem(&gs_rate, &rk, &ev->ktime, BPF_ANY);
	}
	if (bpf_ringbuf_output(&events, ev, sizeof(*ev), 0))
		gs_count(hid, GS_CNT_LOST);
	else
		gs_count(hid, GS_CNT_POSTED);
	return 0;
}

/* Attached by the loader to syscalls/sys_enter_<name> of each watched syscall only: unwatched
 * syscalls pay nothing. Every sys_enter_* record has the same layout (id, args[6]). */
SEC("tracepoint")
int gs_sys_enter(struct trace_event_raw_sys_enter *ctx)
{
	__u32 nr = (__u32)ctx->id;
	struct gs_sys *sh = bpf_map_lookup_elem(&gs_syscalls, &nr);
	if (!sh)
		return 0;
	struct hooks_ctx hc = {.nr = nr};
	/* a record only holds the syscall's own arguments: direct ctx reads past them would make the
	 * attach fail (max_ctx_offset), so copy; slots past the syscall's arity are never used */
	bpf_probe_read_kernel(hc.args, sizeof(hc.args), ctx->args);
	__u32 n = sh->n;
	if (n > GS_PER_SYSCALL)
		n = GS_PER_SYSCALL;
	bpf_loop(n, run_hook, &hc, 0);
	return 0;
}

/* BPF-LSM file_open (kernels that have BPF-LSM; the loader enables it only there): the same hooks and
 * selectors, with the struct file as argument 0; an Override selector makes the open fail. */
SEC("lsm/file_open")
int BPF_PROG(gs_file_open, struct file *file, int ret)
{
	if (ret)
		return ret;
	__u32 nr = GS_NR_LSM_FILE_OPEN, zero = 0;
	struct gs_sys *sh = bpf_map_lookup_elem(&gs_syscalls, &nr);
	if (!sh)
		return 0;
	__s32 *verdict = bpf_map_lookup_elem(&gs_verdict, &zero);
	if (!verdict)
		return 0;
	*verdict = 0;
	struct hooks_ctx hc = {.nr = nr};
	/* copy the pointer as plain bytes: the hooks read it with probe reads, like any syscall argument */
	bpf_probe_read_kernel(&hc.args[0], sizeof(hc.args[0]), &file);
	__u32 n = sh->n;
	if (n > GS_PER_SYSCALL)
		n = GS_PER_SYSCALL;
	bpf_loop(n, run_hook, &hc, 0);
	verdict = bpf_map_lookup_elem(&gs_verdict, &zero);
	return verdict ? *verdict : 0;
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
	__u32 n = sh->n;
	if (n > GS_PER_SYSCALL)
		n = GS_PER_SYSCALL;
	bpf_loop(n, run_hook, &hc, 0);
	return 0;
}

/* DenyConnect: the connect() a hook marked fails with EPERM */
SEC("cgroup/connect4")
int gs_connect4(struct bpf_sock_addr *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	if (bpf_map_lookup_elem(&gs_deny, &tid)) {
		bpf_map_delete_elem(&gs_deny, &tid);
		return 0;
	}
	return 1;
}

union gs_abi_types {
	struct gs_hook h;
	struct gs_sys s;
	struct gs_event e;
	struct gs_scope_key k;
};
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, union gs_abi_types);
} gs_abi_types SEC(".maps");
