// SPDX-License-Identifier: GPL-2.0
/* Endpoint datapath: TC programs on the host side of each endpoint's veth.
 *   from_container (tc ingress of the host veth): packets the endpoint sends -> its EGRESS policy
 *   to_container   (tc egress of the host veth):  packets to the endpoint    -> its INGRESS policy
 * Connection tracking lets replies and established connections pass without a policy lookup (and without
 * the endpoint lookup: the conntrack key holds the interface).
 * The policy decision is a fixed number of hash lookups whatever the number of rules, plus LPM lookups
 * only for an endpoint whose policy has port ranges (see policy/types.py and policy_match below). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "datapath_abi.h"

char LICENSE[] SEC("license") = "GPL";

#define TC_ACT_OK 0
#define TC_ACT_SHOT 2
#define TC_ACT_UNSPEC (-1) /* the next filter decides (none: the packet goes on) */
#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define PACKET_HOST 0
/* A host process's packet to an endpoint whose ingress needs the L7 proxy, looped back from to_container
 * into the same host veth's ingress (where it can be sk_assigned): from_container recognises it by this
 * mark, which never leaves the two programs (redirect_to_proxy replaces it, or the packet is dropped). */
#define MARK_PROXY_LOOP 0x0A8F0001

/* Conntrack times (ct_value.expires, .last_report) are jiffies: bpf_jiffies64() is the cheapest clock and
 * tick precision is all they need. The loader sets these from seconds with the kernel's HZ
 * (sensors/network/sensor.py: lxc_rodata); user space reads the clock with ct_clock below. */
const volatile __u64 trace_interval = 0; /* periodic trace of a busy connection */
const volatile __u64 ct_timeout_syn = 0;
const volatile __u64 ct_timeout_tcp = 0;
const volatile __u64 ct_timeout_close = 0;
const volatile __u64 ct_timeout_other = 0;
const volatile __u64 wakeup_bytes = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32); /* ifindex of the host-side veth */
	__type(value, struct ep_info);
} endpoints SEC(".maps");

/* entries of one port, one protocol (any port) or any protocol; prefixlen is part of the key */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
} policy SEC(".maps");

/* entries of port ranges (aligned blocks), looked up only for endpoints flagged EP_RANGES_* */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
} policy_ranges SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
} ipcache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ct_key);
	__type(value, struct ct_value);
} ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} flows SEC(".maps");

/* endpoint id -> ifindex of its host-side veth (the key of `endpoints`): the destination's ingress policy
 * is looked up where a connection can still be redirected to the proxy (the client's TC ingress) */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u32);
} ep_ifindex SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct proxy_cfg);
} proxy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DP_COUNTERS);
	__type(key, __u32);
	__type(value, struct dp_counter);
} dp_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DP_LOST_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} dp_lost SEC(".maps");

struct pkt {
	__u32 saddr;
	__u32 daddr;
	__u16 sport; /* network order */
	__u16 dport;
	__u8 proto;
	__u8 tcp_flags;
	__u8 icmp_type;
	__u8 icmp_code;
	__u32 len;
};

static __always_inline void count(__u8 reason, __u8 dir, __u32 len)
{
	__u32 idx = (((__u32)reason << 1) | dir) & (DP_COUNTERS - 1);
	struct dp_counter *c = bpf_map_lookup_elem(&dp_counters, &idx);
	if (c) {
		c->packets += 1;
		c->bytes += len;
	}
}

static __always_inline __u64 rb_flags(void)
{
	if (!wakeup_bytes)
		return 0;
	return bpf_ringbuf_query(&flows, BPF_RB_AVAIL_DATA) >= wakeup_bytes ? BPF_RB_FORCE_WAKEUP
									      : BPF_RB_NO_WAKEUP;
}

/* 0: not IPv4 (pass), 1: parsed, <0: drop reason. Direct packet access; headers are pulled into
 * the linear area first when they are not there yet. */
static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return 0;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return 0;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)ip + 20 + 14 > end) {
		/* short frame or headers outside the linear area */
		bpf_skb_pull_data(skb, ETH_HLEN + 60 + 14);
		data = (void *)(long)skb->data;
		end = (void *)(long)skb->data_end;
		ip = data + ETH_HLEN;
		if ((void *)(ip + 1) > end)
			return -DROP_INVALID_PACKET;
	}
	__u32 ihl = ip->ihl * 4;
	if (ihl < 20)
		return -DROP_INVALID_PACKET;
	if (ip->frag_off & bpf_htons(0x1fff))
		return -DROP_FRAG_NOT_SUPPORTED;
	p->saddr = ip->saddr;
	p->daddr = ip->daddr;
	p->proto = ip->protocol;
	p->len = skb->len;
	__u8 *l4 = (void *)ip + ihl;
	switch (p->proto) {
	case IPPROTO_TCP:
		if ((void *)(l4 + 14) > end)
			return -DROP_CT_INVALID_HDR;
		__builtin_memcpy(&p->sport, l4, 2);
		__builtin_memcpy(&p->dport, l4 + 2, 2);
		p->tcp_flags = l4[13];
		break;
	case IPPROTO_UDP:
	case IPPROTO_SCTP:
		if ((void *)(l4 + 4) > end)
			return -DROP_CT_INVALID_HDR;
		__builtin_memcpy(&p->sport, l4, 2);
		__builtin_memcpy(&p->dport, l4 + 2, 2);
		break;
	case IPPROTO_ICMP:
		if ((void *)(l4 + 8) > end)
			return -DROP_CT_INVALID_HDR;
		p->icmp_type = l4[0];
		p->icmp_code = l4[1];
		if (l4[0] == 8 || l4[0] == 0) { /* echo: the identifier ties request and reply */
			__builtin_memcpy(&p->sport, l4 + 4, 2);
			p->dport = p->sport;
		}
		break;
	default:
		break;
	}
	return 1;
}

static __always_inline void emit(struct __sk_buff *skb, struct pkt *p, struct ep_info *ep, __u8 dir, __u8 kind,
				 __u8 sub, __u8 verdict, __u8 ct_state, __u32 remote_id, __u32 rule_id, __u8 match)
{
	struct flow_msg m = {};
	m.kind = kind;
	m.sub_type = sub;
	m.verdict = verdict;
	m.ct_state = ct_state;
	m.proto = p->proto;
	m.tcp_flags = p->tcp_flags;
	m.egress = dir;
	m.match_type = match;
	m.ktime = bpf_ktime_get_ns();
	m.saddr = p->saddr;
	m.daddr = p->daddr;
	if (p->proto == IPPROTO_ICMP) {
		m.sport = p->icmp_type;
		m.dport = p->icmp_code;
	} else {
		m.sport = bpf_ntohs(p->sport);
		m.dport = bpf_ntohs(p->dport);
	}
	m.src_identity = dir == DIR_EGRESS ? ep->identity : remote_id;
	m.dst_identity = dir == DIR_EGRESS ? remote_id : ep->identity;
	m.rule_id = rule_id;
	m.ifindex = skb->ifindex;
	m.ep_id = ep->ep_id;
	m.length = p->len;
	if (bpf_ringbuf_output(&flows, &m, sizeof(m), rb_flags())) {
		__u32 slot = kind & (DP_LOST_SLOTS - 1);
		__u64 *lost = bpf_map_lookup_elem(&dp_lost, &slot);
		if (lost)
			*lost += 1;
	}
}

static __always_inline __u32 remote_identity(__u32 addr)
{
	struct ipcache_key k = {.prefixlen = 32, .addr = addr};
	struct ipcache_value *v = bpf_map_lookup_elem(&ipcache, &k);
	return v ? v->identity : 2; /* reserved:world */
}

struct decision {
	__u32 rule_id;
	__u8 deny;
	__u8 audit;
	__u8 match;
	__u8 found;
	__be16 proxy_port;
};

/* The most specific entry of one identity (0: any identity) for the packet: one port, then a port range,
 * then the protocol with any port, then any protocol. That order is the longest prefix over both maps, as
 * one LPM over every entry would find it. `kinds` (PK_*): the kinds of entries the identity has, so a
 * lookup that cannot find anything is skipped. */
static __always_inline struct policy_value *policy_match(__u16 slot, __u8 dir, __u32 identity, __u8 proto,
							 __u16 port, __u8 kinds)
{
	struct policy_key k = {.prefixlen = POLICY_PREFIX_PORT, .ep_id = slot, .direction = dir,
			       .identity = identity, .proto = proto};
	struct policy_value *v;
	k.dport[0] = port >> 8;
	k.dport[1] = port & 0xff;
	if (kinds & PK_PORT) {
		v = bpf_map_lookup_elem(&policy, &k);
		if (v)
			return v;
	}
	if (kinds & PK_RANGE) {
		v = bpf_map_lookup_elem(&policy_ranges, &k);
		if (v)
			return v;
	}
	k.dport[0] = 0;
	k.dport[1] = 0;
	if (kinds & PK_PROTO) {
		k.prefixlen = POLICY_PREFIX_PROTO;
		v = bpf_map_lookup_elem(&policy, &k);
		if (v)
			return v;
	}
	if (kinds & PK_ANY) {
		k.prefixlen = POLICY_PREFIX_ANY;
		k.proto = 0;
		return bpf_map_lookup_elem(&policy, &k);
	}
	return 0;
}

/* The remote identity's entry and the any-identity entry: a deny from either wins, then the remote
 * identity's (more specific) allow. The any-identity entries are looked up only when the remote identity
 * has no entry, or an allow that a deny of any identity could override.
 * Not inlined: a BPF-to-BPF call costs nothing measurable here and spares the verifier the product of the
 * lookups' branches with the rest of the program (from_container ~14,700 -> ~5,800 verified instructions). */
static __noinline void policy_lookup(struct ep_info *ep, __u8 dir, __u32 remote, struct pkt *p,
				     struct decision *d)
{
	__u16 port = 0;
	if (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP || p->proto == IPPROTO_SCTP)
		port = bpf_ntohs(p->dport);
	else if (p->proto == IPPROTO_ICMP)
		port = p->icmp_type;
	__u8 kinds = ep->policy_kinds[dir & 1];
	__u16 any_deny = dir == DIR_EGRESS ? EP_ANY_DENY_EGRESS : EP_ANY_DENY_INGRESS;
	__u16 slot = ep->policy_slot;
	struct policy_value *v = 0;
	if (remote && (kinds & 0xf)) /* identity 0 is never a remote's, but would be any identity */
		v = policy_match(slot, dir, remote, p->proto, port, kinds & 0xf);
	if (!v || (!v->deny && (ep->flags & any_deny))) {
		struct policy_value *v0 = policy_match(slot, dir, 0, p->proto, port, kinds >> PK_ANY_IDENTITY_SHIFT);
		if (v0 && (v0->deny || !v))
			v = v0;
	}
	if (!v)
		return;
	d->found = 1;
	d->deny = v->deny;
	d->audit = v->audit;
	d->rule_id = v->rule_id;
	d->match = v->match_type;
	d->proxy_port = v->proxy_port;
}

/* Assign a TCP packet to the host socket of its exact connection, unless there is none or it is a listener
 * (for the proxy: a connection it holds; a listener of the original port is not the proxy), and mark it so
 * the ip rule routes it locally. 1 assigned, 0 no such socket, -1 the assign failed. */
static __always_inline int assign_established(struct __sk_buff *skb, struct pkt *p, __u32 mark)
{
	struct bpf_sock_tuple t = {};
	t.ipv4.saddr = p->saddr;
	t.ipv4.daddr = p->daddr;
	t.ipv4.sport = p->sport;
	t.ipv4.dport = p->dport;
	struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return 0;
	if (sk->state == BPF_TCP_LISTEN) {
		bpf_sk_release(sk);
		return 0;
	}
	long err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (err)
		return -1;
	skb->mark = mark;
	return 1;
}

/* BPF TPROXY (Cilium's bpf/lib/proxy.h): hand the packet to the proxy's socket of this connection, or
 * to its listener for a new one, and mark it so the ip rule routes it locally. 0 or a drop reason. */
static __noinline int redirect_to_proxy(struct __sk_buff *skb, struct pkt *p, __be16 proxy_port)
{
	__u32 zero = 0;
	struct proxy_cfg *cfg = bpf_map_lookup_elem(&proxy, &zero);
	if (!cfg || !cfg->mark)
		return DROP_PROXY_LOOKUP_FAILED;
	struct bpf_sock_tuple t = {};
	t.ipv4.saddr = p->saddr;
	t.ipv4.sport = p->sport;
	t.ipv4.daddr = bpf_htonl(0x7f000001); /* the proxies listen on 127.0.0.1:proxy_port */
	t.ipv4.dport = proxy_port;
	struct bpf_sock *sk;
	if (p->proto == IPPROTO_UDP) { /* the DNS proxy: one unconnected socket takes every datagram */
		sk = bpf_sk_lookup_udp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
		if (!sk)
			return DROP_PROXY_LOOKUP_FAILED;
	} else {
		int held = assign_established(skb, p, cfg->mark); /* a connection the proxy holds */
		if (held)
			return held > 0 ? 0 : DROP_PROXY_SET_FAILED;
		sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0); /* a new one: its listener */
		if (!sk)
			return DROP_PROXY_LOOKUP_FAILED;
		if (sk->state != BPF_TCP_LISTEN) {
			bpf_sk_release(sk);
			return DROP_PROXY_LOOKUP_FAILED;
		}
	}
	long err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (err)
		return DROP_PROXY_SET_FAILED;
	skb->mark = cfg->mark;
	return 0;
}

/* the proxy's own connections (its sockets are in its cgroup) */
static __always_inline int from_proxy(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct proxy_cfg *cfg = bpf_map_lookup_elem(&proxy, &zero);
	return cfg && cfg->cgroup_id && bpf_skb_cgroup_id(skb) == cfg->cgroup_id;
}

/* A new TCP connection leaving an endpoint to a local endpoint: that endpoint's ingress decision for the
 * client's identity, taken here when the connection may go through the proxy (the proxy's own connection
 * to it is not judged again). Returns 1 when the peer is a local endpoint enforcing ingress and was looked
 * up; skipped (0) unless the egress side redirects or the peer has ingress L7 entries. */
static __noinline int peer_ingress(__u32 daddr, __u32 identity, struct pkt *p, struct decision *d, __u8 egress_l7)
{
	struct ipcache_key k = {.prefixlen = 32, .addr = daddr};
	struct ipcache_value *v = bpf_map_lookup_elem(&ipcache, &k);
	if (!v || !v->ep_id)
		return 0;
	__u32 id = v->ep_id;
	__u32 *ifindex = bpf_map_lookup_elem(&ep_ifindex, &id);
	if (!ifindex)
		return 0;
	struct ep_info *peer = bpf_map_lookup_elem(&endpoints, ifindex);
	if (!peer || !(peer->flags & EP_ENFORCE_INGRESS))
		return 0;
	if (!egress_l7 && !(peer->flags & EP_L7_INGRESS))
		return 0;
	policy_lookup(peer, DIR_INGRESS, identity, p, d);
	return 1;
}

/* to_container: send a packet of a host client's connection (conntrack's proxy_port) back into the host
 * stack through the same veth's ingress, to from_container (proxy_loop_in), which hands it to the proxy */
static __always_inline int proxy_loop_out(struct __sk_buff *skb)
{
	skb->mark = MARK_PROXY_LOOP;
	return bpf_redirect(skb->ifindex, BPF_F_INGRESS);
}

/* from_container: a packet looped by to_container (proxy_loop_out). Its connection is the ingress
 * conntrack entry of this veth; the drop (proxy down: fail closed) is reported as the endpoint's ingress. */
static __noinline int proxy_loop_in(struct __sk_buff *skb, struct pkt *p)
{
	struct ct_key k = {.saddr = p->saddr, .daddr = p->daddr, .sport = p->sport, .dport = p->dport,
			   .proto = p->proto, .direction = DIR_INGRESS, .ifindex = skb->ifindex};
	struct ct_value *cv = bpf_map_lookup_elem(&ct, &k);
	__u32 rule_id = 0;
	int err = DROP_PROXY_LOOKUP_FAILED;
	skb->mark = 0;
	if (cv && cv->proxy_port) {
		rule_id = cv->rule_id;
		/* addressed to the endpoint's MAC: the host's IP layer takes it only as its own */
		bpf_skb_change_type(skb, PACKET_HOST);
		err = redirect_to_proxy(skb, p, cv->proxy_port);
		if (!err)
			return TC_ACT_OK;
	}
	__u32 ifindex = skb->ifindex;
	struct ep_info *ep = bpf_map_lookup_elem(&endpoints, &ifindex);
	if (ep)
		emit(skb, p, ep, DIR_INGRESS, FLOW_DROP, err, VERDICT_DROPPED, 0, remote_identity(p->saddr), rule_id, 0);
	count(err, DIR_INGRESS, p->len);
	return TC_ACT_SHOT;
}

/* a local endpoint's address (its connections to the proxy are redirected at its own veth) */
static __always_inline int local_endpoint(__u32 addr)
{
	struct ipcache_key k = {.prefixlen = 32, .addr = addr};
	struct ipcache_value *v = bpf_map_lookup_elem(&ipcache, &k);
	return v && v->ep_id;
}

static __always_inline __u64 ct_lifetime(struct pkt *p, struct ct_value *v)
{
	if (p->proto != IPPROTO_TCP)
		return ct_timeout_other;
	if (v->closing)
		return ct_timeout_close;
	if ((v->flags_orig & 0x10) || (v->flags_reply & 0x10)) /* ACK seen: established */
		return ct_timeout_tcp;
	return ct_timeout_syn;
}

static __always_inline int handle(struct __sk_buff *skb, __u8 dir)
{
	__u32 ifindex = skb->ifindex;
	struct ep_info *ep;
	struct pkt p = {};
	int r = parse(skb, &p);
	if (r == 0)
		return TC_ACT_OK;
	if (r < 0) {
		ep = bpf_map_lookup_elem(&endpoints, &ifindex);
		if (!ep)
			return TC_ACT_OK;
		__u8 reason = -r;
		emit(skb, &p, ep, dir, FLOW_DROP, reason, VERDICT_DROPPED, 0, 0, 0, 0);
		count(reason, dir, skb->len);
		return TC_ACT_SHOT;
	}
	if (dir == DIR_EGRESS && skb->mark == MARK_PROXY_LOOP)
		return proxy_loop_in(skb, &p);
	__u64 now = bpf_jiffies64();
	__u32 remote_addr = dir == DIR_EGRESS ? p.daddr : p.saddr;

	/* conntrack: the original direction, then the reply direction. Keyed by the interface, so a
	 * tracked packet needs no endpoint lookup (entries of a removed endpoint are deleted with it). */
	struct ct_key k = {.saddr = p.saddr, .daddr = p.daddr, .sport = p.sport, .dport = p.dport,
			   .proto = p.proto, .direction = dir, .ifindex = ifindex};
	struct ct_value *cv = bpf_map_lookup_elem(&ct, &k);
	__u8 state = 0;
	if (cv && cv->expires < now) {
		bpf_map_delete_elem(&ct, &k);
		cv = 0;
	}
	if (cv) {
		state = CT_ESTABLISHED;
	} else {
		struct ct_key rk = {.saddr = p.daddr, .daddr = p.saddr, .sport = p.dport, .dport = p.sport,
				    .proto = p.proto, .direction = dir ^ 1, .ifindex = ifindex};
		cv = bpf_map_lookup_elem(&ct, &rk);
		if (cv && cv->expires < now) {
			bpf_map_delete_elem(&ct, &rk);
			cv = 0;
		}
		if (cv)
			state = CT_REPLY;
	}
	if (cv) {
		__u8 *seen = state == CT_REPLY ? &cv->flags_reply : &cv->flags_orig;
		/* new TCP flags, or the first packet of this direction: a UDP or ICMP reply carries no flags, and
		 * without this the answer to a request would never be traced (as Cilium's per-direction report) */
		__u8 dir_bit = state == CT_REPLY ? CT_DIR_REPLY : CT_DIR_ORIG;
		__u8 fresh = (p.tcp_flags & ~*seen) | (dir_bit & ~cv->dirs_reported);
		*seen |= p.tcp_flags;
		cv->dirs_reported |= dir_bit;
		if (p.tcp_flags & 0x05) /* FIN or RST */
			cv->closing = 1;
		cv->expires = now + ct_lifetime(&p, cv);
		cv->packets += 1;
		cv->bytes += p.len;
		if (fresh || now - cv->last_report > trace_interval) {
			cv->last_report = now;
			ep = bpf_map_lookup_elem(&endpoints, &ifindex);
			if (ep)
				emit(skb, &p, ep, dir, FLOW_TRACE, dir == DIR_EGRESS ? OBS_FROM_ENDPOINT : OBS_TO_ENDPOINT,
				     cv->audit ? VERDICT_AUDIT : VERDICT_FORWARDED, state, remote_identity(remote_addr),
				     cv->rule_id, 0);
		}
		if (cv->from_proxy && state == CT_REPLY) {
			/* the server answers the proxy's connection made from the client's address: to the
			 * proxy's (transparent) socket, not to the client */
			__u32 zero = 0;
			struct proxy_cfg *pc = bpf_map_lookup_elem(&proxy, &zero);
			if (pc)
				skb->mark = pc->mark;
		}
		if (cv->proxy_port && state == CT_ESTABLISHED) {
			if (dir == DIR_INGRESS)
				return proxy_loop_out(skb);
			int err = redirect_to_proxy(skb, &p, cv->proxy_port);
			if (err) {
				ep = bpf_map_lookup_elem(&endpoints, &ifindex);
				if (ep)
					emit(skb, &p, ep, dir, FLOW_DROP, err, VERDICT_DROPPED, 0,
					     remote_identity(remote_addr), cv->rule_id, 0);
				count(err, dir, p.len);
				return TC_ACT_SHOT;
			}
		}
		count(0, dir, p.len);
		return TC_ACT_OK;
	}
	ep = bpf_map_lookup_elem(&endpoints, &ifindex);
	if (!ep)
		return TC_ACT_OK;

	/* ICMP errors belong to some connection: let them through, reported as related */
	__u32 remote = remote_identity(remote_addr);
	if (p.proto == IPPROTO_ICMP && p.icmp_type != 8 && p.icmp_type != 0 && p.icmp_type != 13 &&
	    p.icmp_type != 14) {
		emit(skb, &p, ep, dir, FLOW_TRACE, dir == DIR_EGRESS ? OBS_FROM_ENDPOINT : OBS_TO_ENDPOINT,
		     VERDICT_FORWARDED, CT_RELATED, remote, 0, 0);
		count(0, dir, p.len);
		return TC_ACT_OK;
	}

	/* a new connection: policy */
	__u16 enforce = dir == DIR_EGRESS ? EP_ENFORCE_EGRESS : EP_ENFORCE_INGRESS;
	struct decision d = {};
	__u8 verdict = VERDICT_FORWARDED;
	__u8 proxied = 0;
	if (dir == DIR_INGRESS && p.proto == IPPROTO_TCP && from_proxy(skb))
		proxied = 1; /* the proxy's connection, from the client's address: judged with its identity */
	if (ep->flags & enforce) {
		policy_lookup(ep, dir, remote, &p, &d);
		if (!d.found || d.deny) {
			__u8 reason = d.found ? DROP_POLICY_DENY : DROP_POLICY_DENIED;
			if (!(ep->flags & EP_AUDIT) && !d.audit) {
				emit(skb, &p, ep, dir, FLOW_POLICY_VERDICT, 0, VERDICT_DROPPED, CT_NEW, remote, d.rule_id,
				     d.match);
				emit(skb, &p, ep, dir, FLOW_DROP, reason, VERDICT_DROPPED, 0, remote, d.rule_id, d.match);
				count(reason, dir, p.len);
				return TC_ACT_SHOT;
			}
			verdict = VERDICT_AUDIT;
		}
		emit(skb, &p, ep, dir, FLOW_POLICY_VERDICT, 0, verdict, CT_NEW, remote, d.rule_id, d.match);
	}
	__be16 proxy_port = 0;
	__u8 loop = 0;
	if (p.proto == IPPROTO_UDP && dir == DIR_EGRESS && d.proxy_port) {
		/* DNS over UDP to the agent's DNS proxy (rules.dns); its answers come back as replies */
		proxy_port = d.proxy_port;
		int err = redirect_to_proxy(skb, &p, proxy_port);
		if (err) {
			emit(skb, &p, ep, dir, FLOW_DROP, err, VERDICT_DROPPED, 0, remote, d.rule_id, d.match);
			count(err, dir, p.len);
			return TC_ACT_SHOT;
		}
	} else if (p.proto == IPPROTO_TCP && !proxied) {
		if (dir == DIR_EGRESS) {
			proxy_port = d.proxy_port;
			struct decision di = {};
			if (peer_ingress(p.daddr, ep->identity, &p, &di, proxy_port != 0)) {
				if (di.found && !di.deny && di.proxy_port)
					proxy_port = di.proxy_port;
				else if (proxy_port && (!di.found || di.deny)) {
					/* the peer's ingress denies: decided here, as the proxy's connection is not judged */
					__u8 reason = di.found ? DROP_POLICY_DENY : DROP_POLICY_DENIED;
					emit(skb, &p, ep, dir, FLOW_DROP, reason, VERDICT_DROPPED, 0, remote, di.rule_id,
					     di.match);
					count(reason, dir, p.len);
					return TC_ACT_SHOT;
				}
			}
		} else if (d.proxy_port && !local_endpoint(p.saddr)) {
			/* a host process's connection: looped back to this veth's ingress, where it can be
			 * redirected (proxy_loop_in), for every packet (conntrack's proxy_port) */
			proxy_port = d.proxy_port;
			loop = 1;
		} else if (d.proxy_port) {
			/* a local endpoint's connection that did not come through the proxy, though its own veth
			 * redirects what the proxy judges (it cannot be redirected here): fail closed */
			emit(skb, &p, ep, dir, FLOW_DROP, DROP_PROXY_LOOKUP_FAILED, VERDICT_DROPPED, 0, remote, d.rule_id,
			     d.match);
			count(DROP_PROXY_LOOKUP_FAILED, dir, p.len);
			return TC_ACT_SHOT;
		}
		if (proxy_port && !loop) {
			int err = redirect_to_proxy(skb, &p, proxy_port);
			if (err) {
				emit(skb, &p, ep, dir, FLOW_DROP, err, VERDICT_DROPPED, 0, remote, d.rule_id, d.match);
				count(err, dir, p.len);
				return TC_ACT_SHOT;
			}
		}
	}
	struct ct_value nv = {};
	nv.proxy_port = proxy_port;
	nv.from_proxy = proxied;
	nv.rule_id = d.rule_id;
	nv.flags_orig = p.tcp_flags;
	nv.dirs_reported = CT_DIR_ORIG; /* traced below */
	nv.audit = verdict == VERDICT_AUDIT;
	nv.last_report = now;
	nv.packets = 1;
	nv.bytes = p.len;
	nv.expires = now + ct_lifetime(&p, &nv);
	if (bpf_map_update_elem(&ct, &k, &nv, BPF_ANY)) {
		emit(skb, &p, ep, dir, FLOW_DROP, DROP_CT_MAP_INSERTION, VERDICT_DROPPED, CT_NEW, remote, 0, 0);
		count(DROP_CT_MAP_INSERTION, dir, p.len);
		return TC_ACT_SHOT;
	}
	emit(skb, &p, ep, dir, FLOW_TRACE, dir == DIR_EGRESS ? OBS_FROM_ENDPOINT : loop ? OBS_TO_PROXY : OBS_TO_ENDPOINT,
	     verdict, CT_NEW, remote, d.rule_id, d.match);
	count(0, dir, p.len);
	return loop ? proxy_loop_out(skb) : TC_ACT_OK;
}

SEC("tc")
int from_container(struct __sk_buff *skb)
{
	return handle(skb, DIR_EGRESS);
}

SEC("tc")
int to_container(struct __sk_buff *skb)
{
	return handle(skb, DIR_INGRESS);
}

/* from_netdev, on a node device (--devices): a packet of a connection the L7 proxy holds, from a client on
 * another host. Its first packet was forwarded to the endpoint's veth and handed to the proxy there
 * (to_container loops it to from_container); the rest would be forwarded too, and dropped by the
 * forwarding path, since early demux finds the proxy's (transparent) socket for them: ip_forward refuses a
 * packet that has a socket. So here, at the device's ingress, a TCP packet to a local endpoint's address
 * whose exact connection is a socket of the host's (only the proxy's transparent sockets hold an endpoint's
 * address; never a listener: a new connection is judged at the endpoint's veth) is assigned to it and
 * marked for local delivery, as Cilium's from-netdev does for its proxy. (bpf_sk_cgroup_id, to ask for the
 * proxy's cgroup, is not offered to TC programs.)
 * Anything else goes on to the next filter untouched. */
SEC("tc")
int from_netdev(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct proxy_cfg *cfg = bpf_map_lookup_elem(&proxy, &zero);
	if (!cfg || !cfg->mark || !cfg->cgroup_id)
		return TC_ACT_UNSPEC;
	struct pkt p = {};
	if (parse(skb, &p) != 1 || p.proto != IPPROTO_TCP || !local_endpoint(p.daddr))
		return TC_ACT_UNSPEC;
	assign_established(skb, &p, cfg->mark);
	return TC_ACT_UNSPEC;
}

/* The conntrack clock for user space (expiry by ct_gc): BPF_PROG_TEST_RUN of ct_clock stores jiffies in
 * dp_clock[0]. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} dp_clock SEC(".maps");

SEC("tc")
int ct_clock(struct __sk_buff *skb)
{
	__u32 zero = 0;
	__u64 *now = bpf_map_lookup_elem(&dp_clock, &zero);
	if (now)
		*now = bpf_jiffies64();
	return TC_ACT_OK;
}

/* the cost baseline for the benchmark: a TC program that does nothing */
SEC("tc")
int empty_tc(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}

/* Never written: makes clang emit BTF for every ABI layout, compared with Python's by a test. */
union dp_abi_types {
	struct ep_info ep;
	struct policy_key pk;
	struct policy_value pv;
	struct ipcache_key ik;
	struct ipcache_value iv;
	struct ct_key ck;
	struct ct_value cv;
	struct proxy_cfg pc;
	struct flow_msg fm;
	struct dp_counter dc;
};
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, union dp_abi_types);
} dp_abi_types SEC(".maps");
