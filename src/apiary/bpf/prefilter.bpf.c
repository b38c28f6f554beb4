// SPDX-License-Identifier: GPL-2.0
/* XDP prefilter: drop packets whose source address is in a deny list, before the stack sees them.
 * Lookups as Cilium's check_v4/check_v6: the LPM trie of prefixes first, then the hash of exact
 * addresses. Each entry holds the slot of its drop counter (a per-CPU array): user space changes the
 * lists by map writes only, the program is never reloaded. Everything else (non-IP, truncated) passes. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "prefilter_abi.h"

char LICENSE[] SEC("license") = "GPL";

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, PF_DEFAULT_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct pf_v4_key);
	__type(value, struct pf_value);
} cidr_v4_dyn SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PF_DEFAULT_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct pf_v4_key);
	__type(value, struct pf_value);
} cidr_v4_fix SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, PF_DEFAULT_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct pf_v6_key);
	__type(value, struct pf_value);
} cidr_v6_dyn SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PF_DEFAULT_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct pf_v6_key);
	__type(value, struct pf_value);
} cidr_v6_fix SEC(".maps");

/* drops per deny entry, indexed by pf_value.id (4 x the per-map size: one slot per possible entry) */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 4 * PF_DEFAULT_ENTRIES);
	__type(key, __u32);
	__type(value, __u64);
} pf_drops SEC(".maps");

static __always_inline int drop(const struct pf_value *v)
{
	__u64 *n = bpf_map_lookup_elem(&pf_drops, &v->id);

	if (n)
		*n += 1;
	return XDP_DROP;
}

SEC("xdp")
int prefilter(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct pf_value *v;

	if ((void *)(eth + 1) > end)
		return XDP_PASS;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		struct pf_v4_key k = {.prefixlen = 32};

		if ((void *)(ip + 1) > end)
			return XDP_PASS;
		__builtin_memcpy(k.addr, &ip->saddr, 4);
		v = bpf_map_lookup_elem(&cidr_v4_dyn, &k);
		if (!v)
			v = bpf_map_lookup_elem(&cidr_v4_fix, &k);
		return v ? drop(v) : XDP_PASS;
	}
	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		struct pf_v6_key k = {.prefixlen = 128};

		if ((void *)(ip6 + 1) > end)
			return XDP_PASS;
		__builtin_memcpy(k.addr, &ip6->saddr, 16);
		v = bpf_map_lookup_elem(&cidr_v6_dyn, &k);
		if (!v)
			v = bpf_map_lookup_elem(&cidr_v6_fix, &k);
		return v ? drop(v) : XDP_PASS;
	}
	return XDP_PASS;
}

/* the baseline of the benchmark: an XDP program that does nothing (not loaded by the agent) */
SEC("xdp")
int pf_empty(struct xdp_md *ctx)
{
	return XDP_PASS;
}
