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

/* return hooks: the entry's event, completed at exit */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1024);
	__type(key, struct gs_pend_key);
	__type(value, struct gs_event);
} gs_pending SEC(".maps");

/* GS_G_CRED_NEW: per thread, its credentials at the entry of the syscall it is in */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u64);
} gs_entry_cred SEC(".maps");

/* followChildren / followForks: per process, bit i = slot i matched it or an ancestor */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, __u64);
} gs_mb SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, GS_FOLLOW);
	__type(key, __u32);
	__type(value, struct gs_follow);
} gs_follow SEC(".maps");

static __always_inline void gs_count(__u32 hook, __u32 what)
{
	__u32 idx = (hook * 4 + what) % (GS_HOOKS * 4);
	__u64 *v = bpf_map_lookup_elem(&gs_counters, &idx);
	if (v)
		*v += 1;
}

struct hooks_ctx {
	__u64 args[6]; /* the syscall's arguments, copied from the tracepoint record */
	__u64 rec;     /* generic tracepoints: the record's address (fields read by offset) */
	__s64 ret;     /* at a syscall's exit: its return value */
	__u32 nr;
	__u32 at_exit; /* run at the syscall's exit: only the hooks evaluated there (GS_F_AT_EXIT) */
};

/* register argument idx (0-5) of the call, by constant offsets; GS_REG_RET the return value (at the exit),
 * GS_REG_CRED the current task's credentials, GS_REG_EXE its executable file */
static __always_inline __u64 reg_at(struct hooks_ctx *hc, __u16 idx)
{
	switch (idx) {
	case 0: return hc->args[0];
	case 1: return hc->args[1];
	case 2: return hc->args[2];
	case 3: return hc->args[3];
	case 4: return hc->args[4];
	case 5: return hc->args[5];
	case GS_REG_RET: return hc->ret;
	case GS_REG_CRED: { /* the objective credentials: what commit_creds installs (with the subjective ones) */
		struct task_struct *t = (void *)bpf_get_current_task();
		return (__u64)BPF_CORE_READ(t, real_cred);
	}
	case GS_REG_EXE: {
		struct task_struct *t = (void *)bpf_get_current_task();
		return (__u64)BPF_CORE_READ(t, mm, exe_file);
	}
	}
	return 0;
}

static __always_inline __u64 reg_arg(struct hooks_ctx *hc, struct gs_hook *h, int a)
{
	if (hc->rec) { /* a tracepoint field: offset and size from the format file */
		__u16 off = 0;
		__u8 size = 8, kind = 0;
		switch (a) {
#define GS_F(q) case q: off = h->arg_off[q]; size = h->arg_size[q]; kind = h->arg_kind[q]; break;
		GS_F(0) GS_F(1) GS_F(2) GS_F(3) GS_F(4)
#undef GS_F
		}
		if (kind == GS_ARG_CHARS)
			return hc->rec + off; /* read as a string from there */
		__u64 v = 0;
		if (size > 8)
			size = 8;
		bpf_probe_read_kernel(&v, size & 15, (void *)(hc->rec + off));
		if (kind == GS_ARG_INT && size < 8) {
			__u32 sh = 64 - size * 8;
			v = (__u64)(((__s64)(v << sh)) >> sh);
		}
		return v;
	}
	__u8 idx = 0, size = 0, kind = 0;
	switch (a) {
#define GS_R(q) case q: idx = h->arg_index[q]; size = h->arg_size[q]; kind = h->arg_kind[q]; break;
	GS_R(0) GS_R(1) GS_R(2) GS_R(3) GS_R(4)
#undef GS_R
	}
	__u64 v = reg_at(hc, idx);
	if ((kind == GS_ARG_INT || kind == GS_ARG_UINT) && size && size < 8) {
		/* a 32-bit (or narrower) argument: only the low bytes of the register are its value */
		__u32 sh = 64 - (size & 7) * 8;
		v = kind == GS_ARG_INT ? (__u64)(((__s64)(v << sh)) >> sh) : (v << sh) >> sh;
	}
	return v;
}

/* the open file of an fd of the current process (0: none); the kernel takes fds as unsigned int */
static __always_inline struct file *fd_file(__u64 fd64)
{
	__u32 fd = (__u32)fd64;
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

/* include/linux/fs.h (the same values in 6.1 - 6.18) */
#define GS_FMODE_READ 0x1
#define GS_FMODE_WRITE 0x2
#define GS_FMODE_PREAD 0x8
#define GS_FMODE_PWRITE 0x10
#define GS_FMODE_PATH 0x4000
#define GS_FMODE_CAN_READ 0x20000
#define GS_FMODE_CAN_WRITE 0x40000
#define GS_S_IFMT 0170000
#define GS_S_IFSOCK 0140000

/* the struct socket of a socket file (0: not a socket); open() cannot open a socket inode, only O_PATH can,
 * and the caller rejects O_PATH files: a socket inode here is a socket made by socket()/accept() */
static __always_inline struct socket *file_socket(struct file *f)
{
	if (!f)
		return 0;
	__u16 mode = BPF_CORE_READ(f, f_inode, i_mode);
	if ((mode & GS_S_IFMT) != GS_S_IFSOCK)
		return 0;
	return BPF_CORE_READ(f, private_data);
}

/* a socket argument into the event's slot a (the scratch event): a struct sock * or struct socket * (v), or
 * for connect() the socket of the fd with the destination of the user's sockaddr (v; 0: the socket's own
 * destination). Verified once, on its own. */
__noinline int gs_read_sock(__u32 a, __u64 v, __u64 fd, __u32 kind)
{
	__u32 zero = 0;
	struct gs_event *ev = bpf_map_lookup_elem(&gs_scratch, &zero);
	if (!ev || a >= GS_ARGS)
		return 0;
	__u32 conn = kind == GS_ARG_CONNSOCK;
	struct sock *sk = (struct sock *)v;
	if (kind == GS_ARG_SOCKETPTR)
		sk = BPF_CORE_READ((struct socket *)v, sk);
	if (conn) {
		struct socket *so = file_socket(fd_file(fd));
		if (!so)
			return 0;
		sk = BPF_CORE_READ(so, sk);
	}
	struct gs_sockinfo si = {};
	si.family = BPF_CORE_READ(sk, __sk_common.skc_family);
	si.type = BPF_CORE_READ(sk, sk_type);
	si.protocol = BPF_CORE_READ(sk, sk_protocol);
	si.sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	if (!conn) /* at connect() entry the state is not yet the function's (TCP_SYN_SENT) */
		si.state = BPF_CORE_READ(sk, __sk_common.skc_state);
	si.saddr = bpf_ntohl(BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr));
	if (si.family == 10)
		BPF_CORE_READ_INTO(&si.saddr6, sk, __sk_common.skc_v6_rcv_saddr);
	if (conn && v) {
		struct {
			__u16 family;
			__u16 port;
			__u32 addr;
		} sa = {};
		bpf_probe_read_user(&sa, sizeof(sa), (void *)v);
		si.dport = bpf_ntohs(sa.port);
		if (sa.family == 2)
			si.daddr = bpf_ntohl(sa.addr);
		else if (sa.family == 10) /* sockaddr_in6: sin6_addr at offset 8 */
			bpf_probe_read_user(&si.daddr6, sizeof(si.daddr6), (void *)(v + 8));
	} else {
		si.dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
		si.daddr = bpf_ntohl(BPF_CORE_READ(sk, __sk_common.skc_daddr));
		if (si.family == 10)
			BPF_CORE_READ_INTO(&si.daddr6, sk, __sk_common.skc_v6_daddr);
	}
	/* the destination as a sockaddr-style value, so DAddr/DPort/Family filters work unchanged */
	__s64 x = ((__s64)si.family << 48) | ((__s64)si.dport << 32) | si.daddr;
	switch (a) {
#define GS_W(q) case q: ev->ints[q] = x; __builtin_memcpy(ev->str[q], &si, sizeof(si)); ev->slen[q] = sizeof(si); break;
	GS_W(0) GS_W(1) GS_W(2) GS_W(3) GS_W(4)
#undef GS_W
	}
	return 0;
}

static __always_inline void read_arg(struct gs_event *ev, struct gs_hook *h, struct hooks_ctx *hc, int a)
{
	__u8 kind = 0;
	switch (a) {
#define GS_KD(q) case q: kind = h->arg_kind[q]; break;
	GS_KD(0) GS_KD(1) GS_KD(2) GS_KD(3) GS_KD(4)
#undef GS_KD
	default:
		return;
	}
	__u64 v = reg_arg(hc, h, a);
	ev->ints[a] = v;
	ev->slen[a] = 0;
	if (kind == GS_ARG_STRING || kind == GS_ARG_KSTRING || kind == GS_ARG_CHARS || kind == GS_ARG_DATALOC) {
		long n;
		if (kind == GS_ARG_STRING)
			n = bpf_probe_read_user_str(ev->str[a], GS_ARGSTR, (void *)v);
		else if (kind == GS_ARG_DATALOC)
			n = bpf_probe_read_kernel_str(ev->str[a], GS_ARGSTR, (void *)(hc->rec + (v & 0xffff)));
		else if (kind == GS_ARG_CHARS) {
			__u32 cap = GS_ARGSTR;
			switch (a) {
#define GS_S(q) case q: cap = h->arg_size[q]; break;
			GS_S(0) GS_S(1) GS_S(2) GS_S(3) GS_S(4)
#undef GS_S
			}
			if (cap > GS_ARGSTR || cap == 0)
				cap = GS_ARGSTR;
			cap = ((cap - 1) & (GS_ARGSTR - 1)) + 1;
			n = bpf_probe_read_kernel_str(ev->str[a], cap, (void *)v);
		} else
			n = bpf_probe_read_kernel_str(ev->str[a], GS_ARGSTR, (void *)v);
		ev->slen[a] = n > 0 ? n - 1 : 0;
		if (n == GS_ARGSTR)
			ev->flags |= GS_EV_TRUNC;
	} else if (kind == GS_ARG_FD || kind == GS_ARG_FILEPTR || kind == GS_ARG_BPRM || kind == GS_ARG_PATHPTR) {
		const struct path *p = (const struct path *)v;
		if (kind != GS_ARG_PATHPTR) { /* a file: its path */
			struct file *f = kind == GS_ARG_FD ? fd_file(v)
					 : kind == GS_ARG_BPRM ? BPF_CORE_READ((struct linux_binprm *)v, file)
							       : (struct file *)v;
			if (!f)
				return;
			p = &f->f_path;
		}
		int trunc = 0;
		__u32 len = walk_path(p, &trunc);
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
	} else if (kind == GS_ARG_BUF) {
		__u16 sidx = 0;
		switch (a) {
#define GS_B(q) case q: sidx = h->arg_off[q]; break;
		GS_B(0) GS_B(1) GS_B(2) GS_B(3) GS_B(4)
#undef GS_B
		}
		__u64 n = reg_at(hc, sidx);
		if ((__s64)n < 0 || (h->copy_mask >> a) & 1) /* returnCopy: read at exit, with the return value */
			n = 0;
		if (n > GS_ARGSTR - 1) {
			n = GS_ARGSTR - 1;
			ev->flags |= GS_EV_TRUNC;
		}
		n &= GS_ARGSTR - 1;
		if (bpf_probe_read_user(ev->str[a], n, (void *)v))
			n = 0;
		ev->slen[a] = n;
	} else if (kind == GS_ARG_SKB) {
		struct sk_buff *skb = (struct sk_buff *)v;
		struct gs_skbinfo si = {};
		unsigned char *head = BPF_CORE_READ(skb, head);
		__u16 nh = BPF_CORE_READ(skb, network_header), th = BPF_CORE_READ(skb, transport_header);
		struct iphdr ip = {};
		bpf_probe_read_kernel(&ip, sizeof(ip), head + nh);
		si.len = BPF_CORE_READ(skb, len);
		si.mark = BPF_CORE_READ(skb, mark);
		si.priority = BPF_CORE_READ(skb, priority);
		si.hash = BPF_CORE_READ(skb, hash);
		if (ip.version == 4) {
			si.s.family = 2; /* AF_INET */
			si.s.protocol = ip.protocol;
			si.s.saddr = bpf_ntohl(ip.saddr);
			si.s.daddr = bpf_ntohl(ip.daddr);
			if (ip.protocol == 6 || ip.protocol == 17 || ip.protocol == 132) { /* ports lead TCP/UDP/SCTP */
				__u16 ports[2] = {};
				/* the transport header may not be set yet on the way out: derive it from the IP header */
				__u32 off = th && th != 0xffff && th != nh ? th : nh + ip.ihl * 4;
				bpf_probe_read_kernel(ports, sizeof(ports), head + off);
				si.s.sport = bpf_ntohs(ports[0]);
				si.s.dport = bpf_ntohs(ports[1]);
			}
		}
		ev->ints[a] = ((__s64)si.s.family << 48) | ((__s64)si.s.dport << 32) | si.s.daddr;
		__builtin_memcpy(ev->str[a], &si, sizeof(si));
		ev->slen[a] = sizeof(si);
	} else if (kind == GS_ARG_CRED) {
		struct cred *cr = (struct cred *)v;
		struct gs_credinfo ci = {};
		ci.uid = BPF_CORE_READ(cr, uid.val);
		ci.gid = BPF_CORE_READ(cr, gid.val);
		ci.suid = BPF_CORE_READ(cr, suid.val);
		ci.sgid = BPF_CORE_READ(cr, sgid.val);
		ci.euid = BPF_CORE_READ(cr, euid.val);
		ci.egid = BPF_CORE_READ(cr, egid.val);
		ci.fsuid = BPF_CORE_READ(cr, fsuid.val);
		ci.fsgid = BPF_CORE_READ(cr, fsgid.val);
		ci.securebits = BPF_CORE_READ(cr, securebits);
		ci.user_ns = BPF_CORE_READ(cr, user_ns, ns.inum);
		/* kernel_cap_t is a u64 (6.3+) or two u32 (older): the same 8 bytes either way */
		bpf_probe_read_kernel(&ci.cap_inheritable, 8, __builtin_preserve_access_index(&cr->cap_inheritable));
		bpf_probe_read_kernel(&ci.cap_permitted, 8, __builtin_preserve_access_index(&cr->cap_permitted));
		bpf_probe_read_kernel(&ci.cap_effective, 8, __builtin_preserve_access_index(&cr->cap_effective));
		ev->ints[a] = ci.euid;
		__builtin_memcpy(ev->str[a], &ci, sizeof(ci));
		ev->slen[a] = sizeof(ci);
	} else if (kind == GS_ARG_SOCK || kind == GS_ARG_CONNSOCK || kind == GS_ARG_SOCKETPTR) {
		__u16 fdreg = 0;
		switch (a) {
#define GS_K(q) case q: fdreg = h->arg_off[q]; break;
		GS_K(0) GS_K(1) GS_K(2) GS_K(3) GS_K(4)
#undef GS_K
		}
		gs_read_sock(a, v, kind == GS_ARG_CONNSOCK ? reg_at(hc, fdreg) : 0, kind);
	} else if (kind == GS_ARG_SOCKADDR || kind == GS_ARG_KSOCKADDR) {
		struct {
			__u16 family;
			__u16 port;
			__u32 addr;
		} sa = {};
		if (kind == GS_ARG_KSOCKADDR)
			bpf_probe_read_kernel(&sa, sizeof(sa), (void *)v);
		else
			bpf_probe_read_user(&sa, sizeof(sa), (void *)v);
		ev->ints[a] = ((__s64)sa.family << 48) | ((__s64)bpf_ntohs(sa.port) << 32) | bpf_ntohl(sa.addr);
	}
}

/* argument a of hook hid into the scratch event: verified once, on its own, not once per argument and caller */
__noinline int gs_read_arg(__u32 hid, __u32 a, struct hooks_ctx *hc)
{
	__u32 zero = 0;
	struct gs_hook *h = bpf_map_lookup_elem(&gs_hooks, &hid);
	struct gs_event *ev = bpf_map_lookup_elem(&gs_scratch, &zero);
	if (!h || !ev || !hc)
		return 0;
	switch (a) { /* constant slots keep the verifier's bounds exact */
	case 0: read_arg(ev, h, hc, 0); break;
	case 1: read_arg(ev, h, hc, 1); break;
	case 2: read_arg(ev, h, hc, 2); break;
	case 3: read_arg(ev, h, hc, 3); break;
	case 4: read_arg(ev, h, hc, 4); break;
	}
	return 0;
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

static __always_inline void hash_arg(__u32 a, __u32 len, struct proc_binary *pb);

/* the prefix/suffix hashes of argument a (GS_ARGS: the current process's binary): verified once, on its own */
__noinline int gs_hash_arg(__u32 a, __u32 len)
{
	struct proc_binary *pb = 0;
	if (a == GS_ARGS) {
		__u32 tgid = bpf_get_current_pid_tgid() >> 32;
		pb = bpf_map_lookup_elem(&binaries, &tgid);
		len = pb ? pb->len : 0;
	}
	switch (a) { /* constant slots keep the verifier's bounds exact */
	case 0: hash_arg(0, len, 0); break;
	case 1: hash_arg(1, len, 0); break;
	case 2: hash_arg(2, len, 0); break;
	case 3: hash_arg(3, len, 0); break;
	case 4: hash_arg(4, len, 0); break;
	case GS_ARGS: hash_arg(GS_ARGS, len, pb); break;
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

static __always_inline int int_match(struct gs_filter *f, __u8 kind, __s64 x)
{
	__u8 op = f->op;
	__u32 n = f->nvals;
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
	if (kind == GS_ARG_STRING || kind == GS_ARG_FD || kind == GS_ARG_FILEPTR || kind == GS_ARG_KSTRING ||
	    kind == GS_ARG_CHARS || kind == GS_ARG_DATALOC || kind == GS_ARG_BUF || kind == GS_ARG_PATHPTR ||
	    kind == GS_ARG_BPRM) {
		int mode = (op == GS_OP_EQUAL || op == GS_OP_NOTEQUAL) ? 0 : (op == GS_OP_PREFIX || op == GS_OP_NOTPREFIX) ? 1 : 2;
		int any = 0;
		for (int v = 0; v < GS_VALS; v++) {
			if (v < n && !any)
				any = hash_match(pre, suf, alen, f->hash[v], f->lens[v], mode);
		}
		int neg = op == GS_OP_NOTEQUAL || op == GS_OP_NOTPREFIX || op == GS_OP_NOTPOSTFIX;
		return neg ? !any : any;
	}
	int sockish = kind == GS_ARG_SOCK || kind == GS_ARG_SKB || kind == GS_ARG_CONNSOCK || kind == GS_ARG_SOCKETPTR;
	if (sockish && op >= GS_OP_SADDR) { /* the source side and the protocol */
		struct gs_sockinfo si = {};
		switch (f->arg) {
#define GS_SI(k) case k: __builtin_memcpy(&si, ev->str[k], sizeof(si)); break;
		GS_SI(0) GS_SI(1) GS_SI(2) GS_SI(3) GS_SI(4)
#undef GS_SI
		}
		int any = 0;
		for (int v = 0; v < GS_VALS; v++) {
			if (v >= n)
				break;
			__s64 lo = f->ints[v][0], hi = f->ints[v][1];
			if ((op == GS_OP_SADDR || op == GS_OP_NOTSADDR) && si.family == 2 && (si.saddr & hi) == (__u64)lo)
				any = 1;
			if ((op == GS_OP_SPORT || op == GS_OP_NOTSPORT) && si.sport >= lo && si.sport <= hi)
				any = 1;
			if (op == GS_OP_PROTOCOL && si.protocol == lo)
				any = 1;
		}
		/* address values are IPv4: an IPv6 address is in none of them; other families match neither way
		 * (Tetragon's filter_addr_map) */
		if ((op == GS_OP_SADDR || op == GS_OP_NOTSADDR) && si.family != 2 && si.family != 10)
			return 0;
		return (op == GS_OP_NOTSADDR || op == GS_OP_NOTSPORT) ? !any : any;
	}
	if (kind == GS_ARG_SOCKADDR || kind == GS_ARG_KSOCKADDR || sockish) {
		__u64 fam = (__u64)x >> 48, port = ((__u64)x >> 32) & 0xffff, addr = (__u64)x & 0xffffffff;
		int any = 0;
		for (int v = 0; v < GS_VALS; v++) {
			if (v >= n)
				break;
			__s64 lo = f->ints[v][0], hi = f->ints[v][1];
			if ((op == GS_OP_DADDR || op == GS_OP_NOTDADDR) && fam == 2 && (addr & hi) == (__u64)lo)
				any = 1;
			if ((op == GS_OP_DPORT || op == GS_OP_NOTDPORT) && port >= lo && port <= hi)
				any = 1;
			if (op == GS_OP_FAMILY && fam == (__u64)lo)
				any = 1;
		}
		if ((op == GS_OP_DADDR || op == GS_OP_NOTDADDR) && fam != 2 && fam != 10)
			return 0;
		return (op == GS_OP_NOTDADDR || op == GS_OP_NOTDPORT) ? !any : any;
	}
	if (kind == GS_ARG_INT || kind == GS_ARG_UINT)
		return int_match(f, kind, x);
	return 0;
}

static __always_inline int mb_bit(__u32 tgid, __u8 slot)
{
	if (!slot)
		return 0;
	__u64 *bits = bpf_map_lookup_elem(&gs_mb, &tgid);
	return bits && (*bits >> ((slot - 1) & 63)) & 1;
}

/* the PID namespace a task's PID lives in (its active one) */
static __always_inline void *pid_ns_of(struct task_struct *t)
{
	struct pid *tp = BPF_CORE_READ(t, thread_pid);
	unsigned int level = BPF_CORE_READ(tp, level);
	struct upid up = {};
	bpf_probe_read_kernel(&up, sizeof(up), (void *)((long)&tp->numbers[0] + (long)(level & 31) * sizeof(struct upid)));
	return up.ns;
}

/* a process's PID as its own PID namespace sees it (1 = a container's init) */
static __always_inline __u32 ns_tgid(struct task_struct *t)
{
	struct pid *tp = BPF_CORE_READ(t, group_leader, thread_pid);
	unsigned int level = BPF_CORE_READ(tp, level);
	struct upid up = {};
	bpf_probe_read_kernel(&up, sizeof(up), (void *)((long)&tp->numbers[0] + (long)(level & 31) * sizeof(struct upid)));
	return up.nr;
}

/* the inode number of the current task's namespace of a type (what /proc/PID/ns/<type> shows) */
static __always_inline __u32 ns_inum(struct task_struct *t, __u8 type)
{
	struct nsproxy *nsp = BPF_CORE_READ(t, nsproxy);
	switch (type) {
	case GS_NS_UTS: return BPF_CORE_READ(nsp, uts_ns, ns.inum);
	case GS_NS_IPC: return BPF_CORE_READ(nsp, ipc_ns, ns.inum);
	case GS_NS_MNT: return BPF_CORE_READ(nsp, mnt_ns, ns.inum);
	case GS_NS_PID: {
		struct pid *p = BPF_CORE_READ(t, thread_pid);
		unsigned int level = BPF_CORE_READ(p, level);
		struct upid up = {};
		bpf_probe_read_kernel(&up, sizeof(up), (void *)((long)&p->numbers[0] + (long)(level & 31) * sizeof(struct upid)));
		return BPF_CORE_READ(up.ns, ns.inum);
	}
	case GS_NS_PID_FOR_CHILDREN: return BPF_CORE_READ(nsp, pid_ns_for_children, ns.inum);
	case GS_NS_NET: return BPF_CORE_READ(nsp, net_ns, ns.inum);
	case GS_NS_TIME: return BPF_CORE_READ(nsp, time_ns, ns.inum);
	case GS_NS_TIME_FOR_CHILDREN: return BPF_CORE_READ(nsp, time_ns_for_children, ns.inum);
	case GS_NS_CGROUP: return BPF_CORE_READ(nsp, cgroup_ns, ns.inum);
	case GS_NS_USER: return BPF_CORE_READ(t, cred, user_ns, ns.inum);
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
		__u32 pid = tgid;
		if (sel->pid_ns) /* the process's PID in its own PID namespace (1 = a container's init) */
			pid = ns_tgid((void *)bpf_get_current_task());
		int any = 0;
		for (int v = 0; v < GS_VALS; v++)
			if (v < sel->npids && sel->pids[v] == pid)
				any = 1;
		if (!any)
			any = mb_bit(tgid, sel->pid_follow);
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
		if (!any)
			any = mb_bit(tgid, sel->bin_follow);
		int neg = sel->bin_op == GS_BIN_NOTIN || sel->bin_op == GS_BIN_NOTPREFIX;
		if (neg ? any : !any)
			return 0;
	}
	if (sel->nns || sel->cap_type) {
		struct task_struct *t = (void *)bpf_get_current_task();
		for (int e = 0; e < GS_NS; e++) {
			if (e >= sel->nns)
				break;
			struct gs_nsf *nf = &sel->ns[e];
			__u32 inum = ns_inum(t, nf->type);
			int any = 0;
			for (int v = 0; v < GS_VALS; v++)
				if (v < nf->n && nf->vals[v] == inum)
					any = 1;
			if ((nf->op == GS_BIN_IN) != any)
				return 0;
		}
		if (sel->cap_type) {
			const struct cred *cr = BPF_CORE_READ(t, cred);
			__u64 caps = 0;
			if (sel->cap_type == 1)
				bpf_probe_read_kernel(&caps, 8, __builtin_preserve_access_index(&cr->cap_effective));
			else if (sel->cap_type == 2)
				bpf_probe_read_kernel(&caps, 8, __builtin_preserve_access_index(&cr->cap_inheritable));
			else
				bpf_probe_read_kernel(&caps, 8, __builtin_preserve_access_index(&cr->cap_permitted));
			int any = (caps & sel->cap_mask) != 0;
			if ((sel->cap_op == GS_BIN_IN) != any)
				return 0;
		}
	}
	return 1;
}

struct eval_ctx {
	__u32 hook;
	__s32 matched;
	__u32 all;  /* return hooks: evaluate every selector's entry parts, collect a mask */
	__u32 mask;
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
	if (c->all) {
		c->mask |= 1 << (i & 7);
		return 0;
	}
	c->matched = i;
	return 1;
}

/* the matched selector's action, then the event (rate limited); ev may be a map value */
static __always_inline void act_and_post(struct gs_event *ev, struct gs_hook *h, __u32 hid, __s32 matched,
					 __u8 action, __u8 post, __u8 sig, __u64 rate, __u64 pid_tgid)
{
	__u32 zero = 0, tgid = pid_tgid >> 32;
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
		return;
	if (rate) {
		struct gs_selector *rs = matched >= 0 ? sel_at(h, matched) : 0;
		__u8 scope = rs ? rs->rate_scope : 0;
		__u32 who = scope == 1 ? tgid : scope == 2 ? 0 : (__u32)pid_tgid; /* thread, process, global */
		__u64 rk = ((__u64)hid << 40) | ((__u64)(matched & 0xff) << 32) | who;
		__u64 *last = bpf_map_lookup_elem(&gs_rate, &rk);
		if (last && ev->ktime - *last < rate)
			return;
		bpf_map_update_elem(&gs_rate, &rk, &ev->ktime, BPF_ANY);
	}
	/* send up to the last string slot in use: an event without strings is ~130 bytes, not 1.4 KB */
	__u32 size = offsetof(struct gs_event, str);
	__u32 nstr = 0;
	for (__u32 a = 0; a < GS_ARGS; a++)
		if (a < ev->nargs && ev->slen[a])
			nstr = a + 1;
	size += nstr * GS_ARGSTR;
	if (size > sizeof(*ev))
		size = sizeof(*ev);
	ev->size = size;
	if (bpf_ringbuf_output(&events, ev, size, 0))
		gs_count(hid, GS_CNT_LOST);
	else
		gs_count(hid, GS_CNT_POSTED);
}

/* The hook's guard (GS_G_* bits): whether the kernel function it stands for is called at all by this
 * syscall, read from the kernel objects (the fd's file and socket, the user's sockaddr, the return value). */
struct guard_in {
	__u64 fd, pos, addr, alen; /* the guard's registers' values */
	__s64 ret;
	__u32 hid;
	__u32 _pad;
};

/* verified once, on its own */
__noinline int gs_guard(struct guard_in *in)
{
	if (!in)
		return 0;
	__u32 hid = in->hid;
	struct gs_hook *h = bpf_map_lookup_elem(&gs_hooks, &hid);
	if (!h)
		return 0;
	__u16 g = h->guard;
	if ((g & GS_G_RET_OK) && in->ret < 0)
		return 0;
	if (g & GS_G_CRED_NEW) {
		__u32 tid = (__u32)bpf_get_current_pid_tgid();
		__u64 *before = bpf_map_lookup_elem(&gs_entry_cred, &tid);
		struct task_struct *t = (void *)bpf_get_current_task();
		if (!before || *before == (__u64)BPF_CORE_READ(t, real_cred))
			return 0;
	}
	struct file *f = 0;
	unsigned int mode = 0;
	if (g & (GS_G_FILE | GS_G_READ | GS_G_WRITE | GS_G_PREAD | GS_G_PWRITE | GS_G_SOCKET | GS_G_TCP)) {
		f = fd_file(in->fd);
		if (!f)
			return 0;
		mode = BPF_CORE_READ(f, f_mode);
		if (mode & GS_FMODE_PATH) /* fdget() refuses O_PATH files: the call fails with EBADF first */
			return 0;
	}
	if ((g & GS_G_READ) && (mode & (GS_FMODE_READ | GS_FMODE_CAN_READ)) != (GS_FMODE_READ | GS_FMODE_CAN_READ))
		return 0;
	if ((g & GS_G_WRITE) && (mode & (GS_FMODE_WRITE | GS_FMODE_CAN_WRITE)) != (GS_FMODE_WRITE | GS_FMODE_CAN_WRITE))
		return 0;
	if (g & (GS_G_PREAD | GS_G_PWRITE)) {
		__s64 pos = (__s64)in->pos;
		if (!((g & GS_G_POS_OPT) && pos == -1)) { /* -1: preadv2/pwritev2 at the current position */
			if (pos < 0)
				return 0;
			if (!(mode & ((g & GS_G_PREAD) ? GS_FMODE_PREAD : GS_FMODE_PWRITE)))
				return 0; /* not seekable: ESPIPE */
		}
	}
	if (g & (GS_G_ADDR | GS_G_TCP)) { /* move_addr_to_kernel(): 0..sizeof(sockaddr_storage) readable bytes */
		__u64 ua = in->addr;
		__s32 alen = (__s32)in->alen;
		__u8 b = 0;
		if (alen < 0 || alen > 128)
			return 0;
		if (alen && (bpf_probe_read_user(&b, 1, (void *)ua) || bpf_probe_read_user(&b, 1, (void *)(ua + alen - 1))))
			return 0;
		if (g & GS_G_TCP) {
			__u16 fam = 0;
			if (alen < 2 || bpf_probe_read_user(&fam, sizeof(fam), (void *)ua))
				return 0;
			if (alen < (fam == 10 ? 24 : 16)) /* tcp_v6_connect: SIN6_LEN_RFC2133; tcp_v4_connect */
				return 0;
			struct socket *so = file_socket(f);
			if (!so || BPF_CORE_READ(so, state) != SS_UNCONNECTED)
				return 0;
			struct sock *sk = BPF_CORE_READ(so, sk);
			__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
			if ((family != 2 && family != 10) || fam != family) /* AF_UNSPEC disconnects; others: EAFNOSUPPORT */
				return 0;
			if (BPF_CORE_READ(sk, sk_type) != 1 || BPF_CORE_READ(sk, sk_protocol) != 6) /* SOCK_STREAM, TCP */
				return 0;
			if (BPF_CORE_READ(sk, __sk_common.skc_state) != 7) /* TCP_CLOSE, else EISCONN/EALREADY */
				return 0;
		}
	}
	if ((g & GS_G_SOCKET) && !file_socket(f))
		return 0;
	return 1;
}

/* the hook's guard, from its registers */
static __always_inline int guard_ok(struct gs_hook *h, __u32 hid, struct hooks_ctx *hc)
{
	if (!h->guard)
		return 1;
	struct guard_in in = {.hid = hid, .ret = hc->ret};
	in.fd = reg_at(hc, h->guard_fd);
	in.pos = reg_at(hc, h->guard_pos);
	in.addr = reg_at(hc, h->guard_addr);
	in.alen = reg_at(hc, (h->guard_addr + 1) & 7);
	return gs_guard(&in);
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
	__u64 cgid = bpf_get_current_cgroup_id();
	if (h->flags & GS_F_SCOPED) {
		struct gs_scope_key sk = {.policy_id = h->policy_id, .cgroup_id = cgid};
		if (!bpf_map_lookup_elem(&gs_scope, &sk))
			return 0;
	}
	if (!guard_ok(h, hid, hc))
		return 0;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32;
	ev->type = MSG_GENERIC;
	ev->size = sizeof(*ev);
	ev->ktime = bpf_ktime_get_ns();
	ev->pid = tgid;
	ev->tid = (__u32)pid_tgid;
	struct proc_entry *pe = bpf_map_lookup_elem(&procs, &tgid);
	ev->proc_ktime = pe ? pe->ktime : 0;
	ev->cgroup_id = cgid;
	ev->hook_id = hid;
	ev->syscall_nr = nr;
	ev->flags = 0;
	ev->ret = hc->ret;
	ev->nargs = h->nargs;
	for (__u32 a = 0; a < GS_ARGS; a++)
		if (a < h->nargs)
			gs_read_arg(hid, a, hc);

	for (__u32 a = 0; a < GS_ARGS; a++) {
		if (a >= h->nargs)
			break;
		if (!(h->hash_mask & (1 << a))) /* only what some selector compares */
			continue;
		__u32 len = ev->slen[a], need = 0;
		switch (a) {
#define GS_L(q) case q: need = h->hash_len[q]; break;
		GS_L(0) GS_L(1) GS_L(2) GS_L(3) GS_L(4)
#undef GS_L
		}
		if (need && need < len) /* Equal/Prefix values only need their own length hashed */
			len = need;
		gs_hash_arg(a, len);
	}
	if (h->flags & GS_F_BINARIES) {
		gs_hash_arg(GS_ARGS, 0);
	}
	if (h->flags & GS_F_RETURN) {
		/* decided at exit: keep the entry's arguments and which selectors' entry parts matched */
		__u8 mask = 0xff;
		if (h->nsel) {
			struct eval_ctx c = {.hook = hid, .matched = -1, .all = 1};
			bpf_loop(GS_SELECTORS, eval_step, &c, 0);
			if (!c.mask)
				return 0;
			mask = c.mask;
		}
		ev->sel_mask = mask;
		struct gs_pend_key pk = {.tid = (__u32)pid_tgid, .hook = hid};
		bpf_map_update_elem(&gs_pending, &pk, ev, BPF_ANY);
		return 0;
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
	act_and_post(ev, h, hid, matched, action, post, sig, rate, pid_tgid);
	return 0;
}

/* the hooks watching one attach point, in order (sh: its gs_syscalls entry) */
static __always_inline int run_hooks(struct hooks_ctx *hc, struct gs_sys *sh)
{
	__u32 n = sh->n;
	if (n > GS_PER_SYSCALL)
		n = GS_PER_SYSCALL;
	bpf_loop(n, run_hook, hc, 0);
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
	return run_hooks(&hc, sh);
}

__noinline int gs_match_ret(__u32 hid, __u32 si, __s64 ret)
{
	struct gs_hook *h = bpf_map_lookup_elem(&gs_hooks, &hid);
	if (!h)
		return 0;
	struct gs_selector *sel = sel_at(h, si);
	if (!sel)
		return 0;
	if (!sel->nret)
		return 1;
	return int_match(&sel->ret, h->ret_kind, ret);
}

struct exit_ctx {
	__s64 ret;
	__u32 nr;
};

/* return hooks: complete the entry's event with the return value; the first selector (in order) whose
 * entry parts matched and whose matchReturnArgs passes decides */
static long exit_hook(__u32 i, void *data)
{
	struct exit_ctx *xc = data;
	__u32 nr = xc->nr;
	struct gs_sys *sh = bpf_map_lookup_elem(&gs_syscalls, &nr);
	__u32 idx = i;
	barrier_var(idx);
	if (!sh || idx >= GS_PER_SYSCALL)
		return 1;
	__u32 hid = sh->hooks[idx];
	struct gs_hook *h = bpf_map_lookup_elem(&gs_hooks, &hid);
	if (!h || !(h->flags & GS_F_RETURN))
		return 0;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct gs_pend_key pk = {.tid = (__u32)pid_tgid, .hook = hid};
	struct gs_event *ev = bpf_map_lookup_elem(&gs_pending, &pk);
	if (!ev)
		return 0;
	ev->ret = xc->ret;
	if (h->copy_mask) { /* returnCopy: the buffer as the call left it, as many bytes as it returned */
		__u64 n = xc->ret > 0 ? xc->ret : 0;
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
			if ((mask >> si) & 1 && gs_match_ret(hid, si, xc->ret)) {
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
	struct exit_ctx xc = {.ret = ret, .nr = nr};
	__u32 n = sh->n;
	if (n > GS_PER_SYSCALL)
		n = GS_PER_SYSCALL;
	bpf_loop(n, exit_hook, &xc, 0);
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
		int mode = f->op == GS_BIN_PREFIX ? 1 : 0;
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
	gs_hash_arg(GS_ARGS, 0);
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

/* DenyConnect: the connect() a hook marked fails with EPERM (IPv4 and IPv6: tcp_connect sees both) */
static __always_inline int deny_marked(void)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	if (bpf_map_lookup_elem(&gs_deny, &tid)) {
		bpf_map_delete_elem(&gs_deny, &tid);
		return 0;
	}
	return 1;
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
