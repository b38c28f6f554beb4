// SPDX-License-Identifier: GPL-2.0
/* Process sensor: exec, fork and exit into one ring buffer, plus a map of live processes. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "process_abi.h"
#include "pathwalk.bpf.h"
#include "shared_maps.bpf.h"

char LICENSE[] SEC("license") = "GPL";

#define SCRATCH_DATA (PATH_BUF + PATH_BUF + ARGS_BUF)

struct exec_scratch {
	struct msg_exec msg;
	char data[SCRATCH_DATA];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct exec_scratch);
} scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct proc_binary);
} bin_scratch SEC(".maps");

/* Never written: it only makes clang emit the BTF of every message layout, which a test compares
 * with the Python decoder's layouts. */
union abi_types {
	struct msg_exec exec;
	struct msg_fork fork;
	struct msg_exit exit;
	struct msg_bench bench;
	struct proc_entry proc;
	struct proc_binary bin;
};
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, union abi_types);
} abi_types SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);
	if (v)
		*v += 1;
}

/* copy the walked path to s->data[pos] */
static __always_inline __u32 put_path(struct exec_scratch *s, __u32 pos, __u32 len)
{
	return copy_walked(&s->data[pos & (2 * PATH_BUF - 1)], len);
}

static __always_inline struct proc_entry *proc_of(__u32 tgid)
{
	return bpf_map_lookup_elem(&procs, &tgid);
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(on_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	__u32 zero = 0;
	struct exec_scratch *s = bpf_map_lookup_elem(&scratch, &zero);
	if (!s)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	__u32 tgid = BPF_CORE_READ(p, tgid);
	struct msg_exec *m = &s->msg;
	__u32 flags = 0;

	m->hdr.type = MSG_EXEC;
	m->hdr.ktime = now;
	m->pid = tgid;
	m->tid = BPF_CORE_READ(p, pid);

	struct proc_entry *cur = proc_of(tgid);
	if (cur && (cur->flags & PROC_F_EXECED)) {
		m->ppid = tgid;
		m->parent_ktime = cur->ktime;
		flags |= EXEC_F_REEXEC;
	} else if (cur) {
		m->ppid = cur->ppid;
		m->parent_ktime = cur->parent_ktime;
		flags |= EXEC_F_CLONE;
	} else {
		__u32 ppid = BPF_CORE_READ(p, real_parent, tgid);
		struct proc_entry *pe = proc_of(ppid);
		m->ppid = ppid;
		m->parent_ktime = pe ? pe->ktime : 0;
		if (!pe)
			flags |= EXEC_F_NO_PARENT;
	}
	struct proc_entry ne = {.ktime = now, .parent_ktime = m->parent_ktime, .ppid = m->ppid,
				.flags = PROC_F_EXECED};
	if (bpf_map_update_elem(&procs, &tgid, &ne, BPF_ANY))
		count(CNT_PROCS_FULL);

	m->uid = BPF_CORE_READ(p, cred, uid.val);
	m->euid = BPF_CORE_READ(p, cred, euid.val);
	m->gid = BPF_CORE_READ(p, cred, gid.val);
	m->egid = BPF_CORE_READ(p, cred, egid.val);
	m->auid = (__u32)-1;
	if (bpf_core_field_exists(p->loginuid))
		m->auid = BPF_CORE_READ(p, loginuid.val);
	m->cgroup_id = bpf_get_current_cgroup_id();

	/* binary: the file the kernel executes, as a full path */
	int trunc = 0;
	struct file *f = BPF_CORE_READ(bprm, file);
	__u32 blen = walk_path(&f->f_path, &trunc);
	if (trunc)
		flags |= EXEC_F_TRUNC_PATH;
	blen = put_path(s, 0, blen);
	struct proc_binary *pb = bpf_map_lookup_elem(&bin_scratch, &zero);
	if (pb) {
		__u32 bl = blen < BIN_MAX - 1 ? blen : BIN_MAX - 1;
		pb->len = bl;
		bpf_probe_read_kernel(pb->path, bl & (BIN_MAX - 1), s->data);
		pb->path[bl & (BIN_MAX - 1)] = 0;
		bpf_map_update_elem(&binaries, &tgid, pb, BPF_ANY);
	}

	/* cwd */
	__u32 clen = 0;
	struct fs_struct *fs = BPF_CORE_READ(p, fs);
	if (fs) {
		trunc = 0;
		clen = walk_path(&fs->pwd, &trunc);
		if (trunc)
			flags |= EXEC_F_TRUNC_CWD;
		clen = put_path(s, blen & (PATH_BUF - 1), clen);
	} else {
		flags |= EXEC_F_ERR_CWD;
	}

	/* argv from the new image's stack */
	__u32 pos = (blen + clen) & (2 * PATH_BUF - 1);
	struct mm_struct *mm = BPF_CORE_READ(p, mm);
	unsigned long a0 = BPF_CORE_READ(mm, arg_start);
	unsigned long a1 = BPF_CORE_READ(mm, arg_end);
	__u32 alen = 0;
	if (a1 > a0) {
		unsigned long n = a1 - a0;
		if (n > ARGS_BUF) {
			n = ARGS_BUF;
			flags |= EXEC_F_TRUNC_ARGS;
		}
		alen = n;
		if (alen > ARGS_BUF)
			alen = ARGS_BUF;
		if (bpf_probe_read_user(&s->data[pos], alen, (void *)a0)) {
			alen = 0;
			flags |= EXEC_F_ERR_ARGS;
		}
	}
	m->flags = flags;
	m->binary_len = blen;
	m->cwd_len = clen;
	m->args_len = alen;
	__u32 size = sizeof(*m) + pos + alen;
	m->hdr.size = size;
	if (size > sizeof(*m) + SCRATCH_DATA)
		return 0;
	if (ring_put(s, size))
		count(CNT_LOST_EXEC);
	else
		count(CNT_EXEC);
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(on_fork, struct task_struct *parent, struct task_struct *child)
{
	__u32 pid = BPF_CORE_READ(child, pid);
	__u32 tgid = BPF_CORE_READ(child, tgid);
	if (pid != tgid)
		return 0; /* a new thread, not a new process */
	__u64 now = bpf_ktime_get_ns();
	__u32 ptgid = BPF_CORE_READ(parent, tgid);
	struct proc_entry *pe = proc_of(ptgid);
	struct proc_entry ne = {.ktime = now, .parent_ktime = pe ? pe->ktime : 0, .ppid = ptgid,
				.flags = PROC_F_CLONE};
	if (bpf_map_update_elem(&procs, &tgid, &ne, BPF_ANY))
		count(CNT_PROCS_FULL);

	struct proc_binary *pbin = bpf_map_lookup_elem(&binaries, &ptgid);
	if (pbin)
		bpf_map_update_elem(&binaries, &tgid, pbin, BPF_ANY);

	struct msg_fork m = {};
	m.hdr.type = MSG_FORK;
	m.hdr.size = sizeof(m);
	m.hdr.ktime = now;
	m.pid = tgid;
	m.tid = pid;
	m.ppid = ptgid;
	m.parent_ktime = ne.parent_ktime;
	if (ring_put(&m, sizeof(m)))
		count(CNT_LOST_FORK);
	else
		count(CNT_FORK);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(on_exit, struct task_struct *p)
{
	/* only when the whole thread group is gone */
	if (BPF_CORE_READ(p, signal, live.counter) != 0)
		return 0;
	__u32 tgid = BPF_CORE_READ(p, tgid);
	struct proc_entry *pe = proc_of(tgid);
	struct msg_exit m = {};
	m.hdr.type = MSG_EXIT;
	m.hdr.size = sizeof(m);
	m.hdr.ktime = bpf_ktime_get_ns();
	m.pid = tgid;
	m.tid = BPF_CORE_READ(p, pid);
	m.proc_ktime = pe ? pe->ktime : 0;
	m.code = BPF_CORE_READ(p, exit_code);
	bpf_map_delete_elem(&procs, &tgid);
	bpf_map_delete_elem(&binaries, &tgid);
	if (ring_put(&m, sizeof(m)))
		count(CNT_LOST_EXIT);
	else
		count(CNT_EXIT);
	return 0;
}

/* Benchmark source: one message per getppid() of the chosen process, through the same ring. */
const volatile __u32 bench_tgid = 0;

SEC("tracepoint/syscalls/sys_enter_getppid")
int bench_event(void *ctx)
{
	if (!bench_tgid || (bpf_get_current_pid_tgid() >> 32) != bench_tgid)
		return 0;
	struct msg_bench m = {};
	m.hdr.type = MSG_BENCH;
	m.hdr.size = sizeof(m);
	m.hdr.ktime = bpf_ktime_get_ns();
	if (ring_put(&m, sizeof(m)))
		count(CNT_LOST_BENCH);
	else
		count(CNT_BENCH);
	return 0;
}
