/* gsys: the tracing sensor's own maps (the shared ones are in shared_maps.bpf.h), the per-call
 * context every hook reads its arguments from, and constant-offset accessors of map values */
#ifndef APIARY_GSYS_MAPS_H
#define APIARY_GSYS_MAPS_H

/* kernel constants the programs compare with (uapi values, the same on every kernel) */
enum gs_kconst {
	GS_AF_INET = 2,
	GS_AF_INET6 = 10,
	GS_SOCK_STREAM = 1,
	GS_IPPROTO_TCP = 6,
	GS_IPPROTO_UDP = 17,
	GS_IPPROTO_SCTP = 132,
	GS_TCP_CLOSE = 7,
	GS_SIGKILL = 9,
};

/* gs_selector.cap_type: which capability set matchCapabilities reads (0: none) */
enum gs_cap_type {
	GS_CAP_EFFECTIVE = 1,
	GS_CAP_INHERITABLE = 2,
	GS_CAP_PERMITTED = 3,
};

/* gs_selector.rate_scope: whose events one rate limit counts */
enum gs_rate_scope {
	GS_RATE_THREAD = 0,
	GS_RATE_PROCESS = 1,
	GS_RATE_GLOBAL = 2,
};

/* per attach point (a syscall number or a pseudo number, below GS_NR_MAX) the hooks watching it; an array,
 * so the lookup on every watched call is an index (n = 0: none) */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, GS_NR_MAX);
	__type(key, __u32);
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
	__uint(max_entries, GS_HOOKS * GS_NCNT);
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

/* written by the agent at start: a map, not rodata, as its pid changes and the programs may outlive it */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gs_agent);
} gs_agent SEC(".maps");

struct hooks_ctx {
	__u64 args[6]; /* the syscall's arguments, copied from the tracepoint record */
	__u64 rec;     /* generic tracepoints: the record's address (fields read by offset) */
	__s64 ret;     /* at a syscall's exit: its return value */
	__u32 nr;
	__u32 at_exit; /* run at the syscall's exit: only the hooks evaluated there (GS_F_AT_EXIT) */
};

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


#endif
