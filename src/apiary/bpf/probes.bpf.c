// SPDX-License-Identifier: GPL-2.0
/* Feature probes for `apiary preflight`: one tiny program per program type, attach type or helper.
 *
 * The loader opens this object once per probe and loads ONE program (autoload off for the rest), so
 * one refusal never hides another. Tracing probes count their runs in `hits`, so preflight can show
 * that an attached program really ran. Helper probes are loaded only, never attached.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "GPL";

/* index into `hits`; preflight.py mirrors these numbers */
enum probe_hit {
	HIT_TRACEPOINT = 0,
	HIT_TP_BTF = 1,
	HIT_RAW_TP = 2,
	HIT_KPROBE = 3,
	HIT_FENTRY = 4,
	HIT_LSM = 5,
	HIT_UPROBE = 6,
	HIT_MAX = 8,
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, HIT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} hits SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} probe_rb SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} probe_sockhash SEC(".maps");

static __always_inline void hit(__u32 idx)
{
	__u64 *n = bpf_map_lookup_elem(&hits, &idx);

	if (n)
		__sync_fetch_and_add(n, 1);
}

/* ---- tracing ------------------------------------------------------------------------------- */

SEC("tracepoint/syscalls/sys_enter_getpid")
int probe_tracepoint(void *ctx)
{
	hit(HIT_TRACEPOINT);
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(probe_tp_btf, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	hit(HIT_TP_BTF);
	return 0;
}

SEC("raw_tp/sys_enter")
int probe_raw_tp(struct bpf_raw_tracepoint_args *ctx)
{
	hit(HIT_RAW_TP);
	return 0;
}

SEC("kprobe/do_sys_openat2")
int probe_kprobe(struct pt_regs *ctx)
{
	hit(HIT_KPROBE);
	return 0;
}

SEC("fentry/do_unlinkat")
int BPF_PROG(probe_fentry)
{
	hit(HIT_FENTRY);
	return 0;
}

SEC("lsm/file_open")
int BPF_PROG(probe_lsm, struct file *file)
{
	hit(HIT_LSM);
	return 0; /* allow */
}

SEC("uprobe")
int probe_uprobe(struct pt_regs *ctx)
{
	hit(HIT_UPROBE);
	return 0;
}

/* ---- networking ---------------------------------------------------------------------------- */

SEC("tc")
int probe_tc(struct __sk_buff *skb)
{
	return 0; /* TC_ACT_OK */
}

SEC("xdp")
int probe_xdp(struct xdp_md *ctx)
{
	return XDP_PASS;
}

SEC("cgroup_skb/ingress")
int probe_cgroup_skb_ingress(struct __sk_buff *skb)
{
	return 1; /* allow */
}

SEC("cgroup_skb/egress")
int probe_cgroup_skb_egress(struct __sk_buff *skb)
{
	return 1; /* allow */
}

SEC("cgroup/connect4")
int probe_connect4(struct bpf_sock_addr *ctx)
{
	return 1; /* allow */
}

SEC("sk_lookup")
int probe_sk_lookup(struct bpf_sk_lookup *ctx)
{
	return SK_PASS;
}

SEC("sockops")
int probe_sock_ops(struct bpf_sock_ops *skops)
{
	return 1;
}

SEC("sk_msg")
int probe_sk_msg(struct sk_msg_md *msg)
{
	return SK_PASS;
}

/* ---- helpers (loaded, never attached) ------------------------------------------------------ */

SEC("tracepoint/syscalls/sys_enter_getppid")
int probe_ringbuf(void *ctx)
{
	__u64 *e = bpf_ringbuf_reserve(&probe_rb, sizeof(*e), 0);

	if (!e)
		return 0;
	*e = 1;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_getppid")
int probe_send_signal(void *ctx)
{
	/* signal 0 only checks permission: harmless even if someone attached it */
	bpf_send_signal(0);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_getppid")
int probe_write_user(void *ctx)
{
	char byte = 0;

	/* a write to user address 0 fails with EFAULT: harmless even if someone attached it */
	bpf_probe_write_user((void *)0, &byte, 1);
	return 0;
}

/* the tracepoint record read with plain loads through bpf_rdonly_cast (a kfunc: weak, so the object still
 * opens where the kernel lacks it); the tracing sensor loads gs_sys_enter where this loads */
extern void *bpf_rdonly_cast(const void *obj__ign, __u32 btf_id__k) __ksym __weak;

SEC("tracepoint/syscalls/sys_enter_getppid")
int probe_rdonly_cast(struct trace_event_raw_sys_enter *ctx)
{
	struct trace_event_raw_sys_enter *r = bpf_rdonly_cast(ctx, bpf_core_type_id_kernel(struct trace_event_raw_sys_enter));

	return r->args[0] != 0;
}
