// SPDX-License-Identifier: GPL-2.0
/* Socket-level load balancing (Cilium's bpf_sock.c, FORMATS.md 9.3): a connect()/sendmsg() to a service
 * frontend (VIP:port) is rewritten to a backend before any packet exists, and recvmsg()/getpeername()
 * show the frontend again, so the application sees the VIP as its peer (UDP included). No per-packet NAT:
 * every packet on the wire carries the backend address, and network policy sees the backend's identity.
 *
 * Attached to the cgroup v2 root: every socket of the node, host processes and endpoints alike.
 *   connect4/sendmsg4: frontend lookup (exact, then the NodePort wildcard for local addresses, from the
 *     host netns or an endpoint's, lb4_local_netns), affinity
 *     by netns cookie, a slot (random for TCP, the socket cookie for UDP; or the Maglev table), the
 *     reverse entry keyed by socket cookie, then the rewrite. A frontend without backends refuses with
 *     EHOSTUNREACH and reports SERVICE_BACKEND_NOT_FOUND (158) on the lb_events ring.
 *   recvmsg4/getpeername4: backend -> frontend through lb4_reverse_sk.
 *   post_bind4: in the host netns, a bind() that overlaps a NodePort or ExternalIP frontend fails
 *     with EADDRINUSE. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "lb_abi.h"

char LICENSE[] SEC("license") = "GPL";

#define EHOSTUNREACH 113
#define EADDRINUSE 98
#define NSEC_PER_SEC 1000000000ULL

const volatile __u64 host_netns_cookie = 0;
const volatile __u32 maglev_m = 16381;
const volatile __u16 nodeport_min = 30000;
const volatile __u16 nodeport_max = 32767;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_SERVICE_MAP_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lb4_key);
	__type(value, struct lb4_service);
} lb4_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_BACKEND_MAP_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct lb4_backend);
} lb4_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_REVNAT_MAP_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u16);
	__type(value, struct lb4_reverse_nat);
} lb4_reverse_nat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, LB_REVERSE_SK_ENTRIES);
	__type(key, struct lb4_revnat_sk_key);
	__type(value, struct lb4_revnat_sk_val);
} lb4_reverse_sk SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, LB_AFFINITY_ENTRIES);
	__type(key, struct lb4_affinity_key);
	__type(value, struct lb_affinity_val);
} lb4_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_BACKEND_MAP_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lb_affinity_match);
	__type(value, __u8);
} lb_affinity_match SEC(".maps");

/* The Maglev lookup table of a frontend, keyed by its rev-NAT id: maglev_m backend ids (the loader sets
 * the value size to 4 * maglev_m). One hash map of tables rather than Cilium's hash-of-maps: one write
 * replaces a table whole, and the table size is one load-time setting for all. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_MAGLEV_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u16);
	__type(value, struct lb4_maglev_lut);
} lb4_maglev SEC(".maps");

/* the node's own addresses (host netns): a NodePort is reached at any of them, and an ExternalIP is
 * translated only when it is one of them (or loopback), as Cilium's anti-MITM check */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __be32);
	__type(value, __u8);
} lb_host_addrs SEC(".maps");

/* the netns cookies of the node's endpoints: their sockets reach a NodePort at a node address through the
 * socket path, as the host's do (a netns that is not an endpoint's, as a test host, goes through the TC path) */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_LOCAL_NETNS_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, __u8);
} lb4_local_netns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LB_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} lb_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 16);
} lb_events SEC(".maps");

static __always_inline void count(__u32 slot)
{
	__u64 *n = bpf_map_lookup_elem(&lb_stats, &slot);

	if (n)
		*n += 1;
}

static __always_inline bool is_loopback(__be32 addr)
{
	return (bpf_ntohl(addr) >> 24) == 127;
}

static __always_inline bool is_local(__be32 addr)
{
	return is_loopback(addr) || bpf_map_lookup_elem(&lb_host_addrs, &addr);
}

/* Where a socket may reach a NodePort through the wildcard frontend: from the host netns at any node address
 * or loopback, from an endpoint's netns (lb4_local_netns) at a node address (its own loopback is not the
 * node's, as in Cilium's sock4_wildcard_lookup), from any other netns nowhere (the TC path's job). */
enum { WILDCARD_NONE, WILDCARD_NODE_ADDRS, WILDCARD_HOST };

static __always_inline int wildcard_scope(__u64 netns_cookie)
{
	if (netns_cookie == host_netns_cookie)
		return WILDCARD_HOST;
	return bpf_map_lookup_elem(&lb4_local_netns, &netns_cookie) ? WILDCARD_NODE_ADDRS : WILDCARD_NONE;
}

static __always_inline const struct lb4_service *lookup_frontend(struct lb4_key *key, int wildcard)
{
	const struct lb4_service *svc = bpf_map_lookup_elem(&lb4_services, key);
	__u16 port;

	if (svc)
		return svc;
	/* NodePort: the wildcard frontend (address 0), for the node's own addresses only */
	port = bpf_ntohs(key->dport);
	if (wildcard == WILDCARD_NONE || port < nodeport_min || port > nodeport_max)
		return NULL;
	if (wildcard == WILDCARD_HOST ? !is_local(key->address)
				      : is_loopback(key->address) || !bpf_map_lookup_elem(&lb_host_addrs, &key->address))
		return NULL; /* lb_host_addrs holds the host's 127.0.0.1 too: an endpoint's loopback is its own */
	key->address = 0;
	svc = bpf_map_lookup_elem(&lb4_services, key);
	if (svc && !(svc->flags & SVC_FLAG_NODEPORT))
		return NULL;
	return svc;
}

static __always_inline void report_drop(const struct lb4_key *key, __be32 address, __be16 port, __u8 hook,
					__be32 saddr, __be16 sport, __u32 ifindex, __u64 cgroup_id, __u64 netns_cookie)
{
	struct lb_drop_msg *m = bpf_ringbuf_reserve(&lb_events, sizeof(*m), 0);

	if (!m) {
		count(LB_STAT_EVENTS_LOST);
		return;
	}
	m->type = LB_MSG_DROP;
	m->reason = DROP_NO_SERVICE;
	m->proto = key->proto;
	m->hook = hook;
	m->address = address;
	m->port = port;
	m->sport = sport;
	m->saddr = saddr;
	m->pid = hook < 2 ? bpf_get_current_pid_tgid() >> 32 : 0;
	m->ifindex = ifindex;
	m->cgroup_id = cgroup_id;
	m->netns_cookie = netns_cookie;
	m->ktime = bpf_ktime_get_ns();
	bpf_ringbuf_submit(m, 0);
}

static __always_inline void report_sock_drop(struct bpf_sock_addr *ctx, const struct lb4_key *key, __u8 hook)
{
	report_drop(key, ctx->user_ip4, (__be16)ctx->user_port, hook, 0, 0, 0, bpf_get_current_cgroup_id(),
		    bpf_get_netns_cookie(ctx));
}

static __always_inline __u32 affinity_backend(struct lb4_affinity_key *akey, __u32 timeout)
{
	struct lb_affinity_val *v = bpf_map_lookup_elem(&lb4_affinity, akey);
	struct lb_affinity_match match = {};
	__u64 now = bpf_ktime_get_ns();

	if (!v || v->last_used + (__u64)timeout * NSEC_PER_SEC <= now)
		return 0;
	match.backend_id = v->backend_id;
	match.rev_nat_id = akey->rev_nat_id;
	if (!bpf_map_lookup_elem(&lb_affinity_match, &match))
		return 0; /* that backend no longer serves this frontend */
	v->last_used = now;
	return v->backend_id;
}

/* A backend for a new connection: a random slot (x random or per socket), or the Maglev table (x a hash). */
static __always_inline __u32 select_backend(struct lb4_key *key, const struct lb4_service *svc, __u64 x)
{
	__u32 algorithm = svc->backend_id >> LB_ALGORITHM_SHIFT;
	const struct lb4_service *slot;

	if (algorithm == LB_ALG_MAGLEV) {
		struct lb4_maglev_lut *lut = bpf_map_lookup_elem(&lb4_maglev, &svc->rev_nat_index);
		__u32 idx;

		if (!lut)
			return 0;
		x ^= x >> 33;
		x *= 0xff51afd7ed558ccdULL;
		x ^= x >> 33;
		idx = (__u32)(x % maglev_m);
		if (idx >= maglev_m || idx >= LB_MAGLEV_MAX)
			return 0;
		return lut->backend_ids[idx];
	}
	key->backend_slot = (__u16)((__u32)x % svc->count) + 1;
	slot = bpf_map_lookup_elem(&lb4_services, key);
	return slot ? slot->backend_id : 0;
}

static __always_inline int xlate_fwd(struct bpf_sock_addr *ctx, __u8 hook)
{
	struct lb4_key key = {
		.address = ctx->user_ip4,
		.dport = (__be16)ctx->user_port,
		.proto = (__u8)ctx->protocol,
	};
	struct lb4_affinity_key akey = {};
	const struct lb4_service *svc;
	struct lb4_revnat_sk_key rkey = {};
	struct lb4_revnat_sk_val rval = {};
	const struct lb4_backend *be;
	__u32 backend_id = 0, timeout;
	__be32 vip = ctx->user_ip4;
	__be16 vport = (__be16)ctx->user_port;

	/* NodePort at a node address: for the sockets of the host and of its endpoints (a socket in another
	 * netns, as a test host, reaches the node through a device, where the TC path translates it) */
	svc = lookup_frontend(&key, wildcard_scope(bpf_get_netns_cookie(ctx)));
	if (!svc)
		return 1;
	if ((svc->flags & SVC_FLAG_EXTERNAL_IP) && !is_local(vip))
		return 1; /* an ExternalIP that is not this node's: not ours to hijack */
	if (svc->count == 0) {
		count(LB_STAT_NO_BACKEND);
		report_sock_drop(ctx, &key, hook);
		bpf_set_retval(-EHOSTUNREACH);
		return 0;
	}
	timeout = svc->backend_id & LB_AFFINITY_TIMEOUT_MASK;
	if (svc->flags & SVC_FLAG_AFFINITY) {
		akey.client_id = bpf_get_netns_cookie(ctx);
		akey.rev_nat_id = svc->rev_nat_index;
		akey.netns_cookie = 1;
		backend_id = affinity_backend(&akey, timeout);
		if (backend_id)
			count(LB_STAT_AFFINITY_HIT);
	}
	/* TCP: a random slot per connection; UDP: the socket cookie, so one socket keeps its backend */
	if (!backend_id)
		backend_id = select_backend(&key, svc, ctx->protocol == IPPROTO_TCP ? bpf_get_prandom_u32()
										      : bpf_get_socket_cookie(ctx));
	be = backend_id ? bpf_map_lookup_elem(&lb4_backends, &backend_id) : NULL;
	if (!be) {
		count(LB_STAT_NO_BACKEND);
		report_sock_drop(ctx, &key, hook);
		bpf_set_retval(-EHOSTUNREACH);
		return 0;
	}
	if (svc->flags & SVC_FLAG_AFFINITY) {
		struct lb_affinity_val av = {.last_used = bpf_ktime_get_ns(), .backend_id = backend_id};

		bpf_map_update_elem(&lb4_affinity, &akey, &av, BPF_ANY);
	}
	rkey.cookie = bpf_get_socket_cookie(ctx);
	rkey.address = be->address;
	rkey.port = be->port;
	rval.address = vip;
	rval.port = vport;
	rval.rev_nat_index = svc->rev_nat_index;
	if (bpf_map_update_elem(&lb4_reverse_sk, &rkey, &rval, BPF_ANY))
		count(LB_STAT_REVSK_FULL);
	ctx->user_ip4 = be->address;
	ctx->user_port = (__u32)be->port;
	count(LB_STAT_FWD);
	return 1;
}

static __always_inline int xlate_rev(struct bpf_sock_addr *ctx)
{
	struct lb4_revnat_sk_key rkey = {
		.cookie = bpf_get_socket_cookie(ctx),
		.address = ctx->user_ip4,
		.port = (__be16)ctx->user_port,
	};
	const struct lb4_revnat_sk_val *v = bpf_map_lookup_elem(&lb4_reverse_sk, &rkey);
	const struct lb4_reverse_nat *rn;

	if (!v)
		return 1;
	rn = bpf_map_lookup_elem(&lb4_reverse_nat, &v->rev_nat_index);
	/* a NodePort's reverse entry holds the wildcard address: the node address used is the socket's */
	if (!rn || (rn->address && rn->address != v->address) || rn->port != v->port) {
		bpf_map_delete_elem(&lb4_reverse_sk, &rkey); /* the service is gone or changed */
		return 1;
	}
	ctx->user_ip4 = v->address;
	ctx->user_port = (__u32)v->port;
	count(LB_STAT_REV);
	return 1;
}

SEC("cgroup/connect4")
int lb_connect4(struct bpf_sock_addr *ctx)
{
	return xlate_fwd(ctx, 0);
}

SEC("cgroup/sendmsg4")
int lb_sendmsg4(struct bpf_sock_addr *ctx)
{
	return xlate_fwd(ctx, 1);
}

SEC("cgroup/recvmsg4")
int lb_recvmsg4(struct bpf_sock_addr *ctx)
{
	return xlate_rev(ctx);
}

SEC("cgroup/getpeername4")
int lb_getpeername4(struct bpf_sock_addr *ctx)
{
	return xlate_rev(ctx);
}

SEC("cgroup/post_bind4")
int lb_post_bind4(struct bpf_sock *ctx)
{
	struct lb4_key key = {};
	const struct lb4_service *svc;

	if (bpf_get_netns_cookie(ctx) != host_netns_cookie)
		return 1;
	key.dport = bpf_htons((__u16)ctx->src_port);
	key.proto = (__u8)ctx->protocol;
	svc = bpf_map_lookup_elem(&lb4_services, &key); /* a NodePort: every address */
	if (!svc || !(svc->flags & SVC_FLAG_NODEPORT)) {
		key.address = ctx->src_ip4;
		svc = key.address ? bpf_map_lookup_elem(&lb4_services, &key) : NULL;
		if (!svc || !(svc->flags & (SVC_FLAG_NODEPORT | SVC_FLAG_EXTERNAL_IP)))
			return 1;
	}
	count(LB_STAT_BIND_DENIED);
	bpf_set_retval(-EADDRINUSE);
	return 0;
}

/* ---------------------------------------------------------------------------------------------------
 * NodePort and ExternalIP on the TC path: packets that arrive on a node device with no local socket to
 * hook (a client on another host). Ingress: DNAT to a backend (Cilium's nodeport_lb4 for a local backend:
 * no SNAT, the reply is routed back through the same device), with the choice kept per connection in
 * lb4_nat; egress: the reply's source written back to the frontend the client used.
 * Only IPv4 without options or fragments, TCP and UDP; anything else passes untouched. The ingress program
 * ends with TC_ACT_UNSPEC, so a filter after it (from_netdev) sees the packet as translated. */
#define TC_ACT_OK 0
#define TC_ACT_SHOT 2
#define TC_ACT_UNSPEC (-1) /* the next filter decides (the network sensor's from_netdev; none: on) */
#define ETH_HLEN 14
#define ETH_P_IP 0x0800
/* fixed wire offsets (not CO-RE: header layouts are the protocol's, not the kernel's) */
#define IP_CSUM_OFF (ETH_HLEN + 10)
#define IP_SRC_OFF (ETH_HLEN + 12)
#define IP_DST_OFF (ETH_HLEN + 16)
#define L4_OFF (ETH_HLEN + 20)
#define TCP_CSUM_OFF 16
#define UDP_CSUM_OFF 6

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, LB_NAT_ENTRIES);
	__type(key, struct lb4_nat_key);
	__type(value, struct lb4_nat_val);
} lb4_nat SEC(".maps");

struct l4_ports {
	__be16 sport;
	__be16 dport;
};

static __always_inline int parse4(struct __sk_buff *skb, struct lb4_nat_key *k)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct l4_ports *pp = (void *)(ip + 1);

	if ((void *)(pp + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return -1;
	if (ip->ihl != 5 || (ip->frag_off & bpf_htons(0x3fff)))
		return -1;
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return -1;
	k->saddr = ip->saddr;
	k->daddr = ip->daddr;
	k->sport = pp->sport;
	k->dport = pp->dport;
	k->proto = ip->protocol;
	return 0;
}

/* rewrite one address (at ip_off) and one port (at port_off) with their checksums */
static __always_inline void rewrite(struct __sk_buff *skb, __u8 proto, __u32 ip_off, __be32 old_ip, __be32 new_ip,
				    __u32 port_off, __be16 old_port, __be16 new_port)
{
	__u32 csum = L4_OFF + (proto == IPPROTO_TCP ? TCP_CSUM_OFF : UDP_CSUM_OFF);
	__u64 mangled = proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;

	bpf_l4_csum_replace(skb, csum, old_ip, new_ip, BPF_F_PSEUDO_HDR | mangled | sizeof(new_ip));
	bpf_l4_csum_replace(skb, csum, old_port, new_port, mangled | sizeof(new_port));
	bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_ip, new_ip, sizeof(new_ip));
	bpf_skb_store_bytes(skb, ip_off, &new_ip, sizeof(new_ip), 0);
	bpf_skb_store_bytes(skb, port_off, &new_port, sizeof(new_port), 0);
}

static __always_inline __u64 tuple_hash(const struct lb4_nat_key *k, bool affinity)
{
	__u64 sport = affinity ? 0 : k->sport; /* with affinity one client goes to one backend (Cilium) */

	return ((__u64)k->saddr << 32 | k->daddr) ^ (sport << 16 | k->dport) ^ ((__u64)k->proto << 56);
}

/* What picks a new connection's backend on the TC path: Maglev hashes the connection (without the client's
 * port under ClientIP affinity), random draws. */
static __always_inline __u64 nodeport_pick(const struct lb4_nat_key *k, const struct lb4_service *svc)
{
	if ((svc->backend_id >> LB_ALGORITHM_SHIFT) == LB_ALG_MAGLEV)
		return tuple_hash(k, svc->flags & SVC_FLAG_AFFINITY);
	return bpf_get_prandom_u32();
}

SEC("tc")
int lb_nodeport_in(struct __sk_buff *skb)
{
	struct lb4_nat_key fk = {}, rk = {};
	struct lb4_nat_val nv = {}, rv = {};
	struct lb4_nat_val *found;
	struct lb4_key key = {};
	const struct lb4_service *svc;
	const struct lb4_backend *be;
	__u32 backend_id = 0;

	if (parse4(skb, &fk))
		return TC_ACT_UNSPEC;
	found = bpf_map_lookup_elem(&lb4_nat, &fk);
	if (found && bpf_map_lookup_elem(&lb4_backends, &found->backend_id)) {
		nv = *found;
		goto xlate;
	}
	key.address = fk.daddr;
	key.dport = fk.dport;
	key.proto = fk.proto;
	svc = lookup_frontend(&key, WILDCARD_HOST); /* as before: every node address and loopback */
	if (!svc || !(svc->flags & SVC_FLAG_ROUTABLE))
		return TC_ACT_UNSPEC; /* not a frontend reachable from outside (a ClusterIP is not) */
	if (svc->count == 0) {
		count(LB_STAT_NO_BACKEND);
		report_drop(&key, fk.daddr, fk.dport, 2, fk.saddr, fk.sport, skb->ifindex, 0, 0);
		return TC_ACT_SHOT;
	}
	if (svc->flags & SVC_FLAG_AFFINITY) {
		struct lb4_affinity_key akey = {.client_id = fk.saddr, .rev_nat_id = svc->rev_nat_index};

		backend_id = affinity_backend(&akey, svc->backend_id & LB_AFFINITY_TIMEOUT_MASK);
		if (backend_id) {
			count(LB_STAT_AFFINITY_HIT);
		} else {
			backend_id = select_backend(&key, svc, nodeport_pick(&fk, svc));
			if (backend_id) {
				struct lb_affinity_val av = {.last_used = bpf_ktime_get_ns(), .backend_id = backend_id};

				bpf_map_update_elem(&lb4_affinity, &akey, &av, BPF_ANY);
			}
		}
	} else {
		backend_id = select_backend(&key, svc, nodeport_pick(&fk, svc));
	}
	be = backend_id ? bpf_map_lookup_elem(&lb4_backends, &backend_id) : NULL;
	if (!be) {
		count(LB_STAT_NO_BACKEND);
		report_drop(&key, fk.daddr, fk.dport, 2, fk.saddr, fk.sport, skb->ifindex, 0, 0);
		return TC_ACT_SHOT;
	}
	nv.address = be->address;
	nv.port = be->port;
	nv.rev_nat_index = svc->rev_nat_index;
	nv.backend_id = backend_id;
	rk.saddr = be->address;
	rk.daddr = fk.saddr;
	rk.sport = be->port;
	rk.dport = fk.sport;
	rk.proto = fk.proto;
	rk.dir = 1;
	rv.address = fk.daddr;
	rv.port = fk.dport;
	rv.rev_nat_index = svc->rev_nat_index;
	rv.backend_id = backend_id;
	if (bpf_map_update_elem(&lb4_nat, &rk, &rv, BPF_ANY) || bpf_map_update_elem(&lb4_nat, &fk, &nv, BPF_ANY))
		return TC_ACT_SHOT;
xlate:
	rewrite(skb, fk.proto, IP_DST_OFF, fk.daddr, nv.address, L4_OFF + 2, fk.dport,
		nv.port);
	count(LB_STAT_NODEPORT_IN);
	return TC_ACT_UNSPEC;
}

SEC("tc")
int lb_nodeport_out(struct __sk_buff *skb)
{
	struct lb4_nat_key rk = {};
	struct lb4_nat_val *v;

	if (parse4(skb, &rk))
		return TC_ACT_OK;
	rk.dir = 1;
	v = bpf_map_lookup_elem(&lb4_nat, &rk);
	if (!v)
		return TC_ACT_OK;
	rewrite(skb, rk.proto, IP_SRC_OFF, rk.saddr, v->address, L4_OFF, rk.sport,
		v->port);
	count(LB_STAT_NODEPORT_OUT);
	return TC_ACT_OK;
}

/* Never written: makes clang emit BTF for every ABI layout, compared with Python's by a test. */
union lb_abi_types {
	struct lb_drop_msg dm;
	struct lb4_nat_key nk;
	struct lb4_nat_val nv;
};
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, union lb_abi_types);
} lb_abi_types SEC(".maps");
