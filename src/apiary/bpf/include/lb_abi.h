/* Layouts shared by the socket load balancer (lb.bpf.c) and apiary.sensors.lb.abi (Python).
 * Cilium's lb.h layouts (FORMATS.md 9.1): a service map where slot 0 of a frontend is its master entry
 * (count = backend slots, rev_nat_index = the service id, backend_id of the master = algorithm << 24 |
 * affinity timeout) and slots 1..count hold backend ids; a backend map; a reverse-NAT map; socket
 * reverse-NAT by socket cookie; session affinity by netns cookie with its "backend still valid" map.
 * Addresses and ports are in network byte order, as Cilium keeps them. */
#ifndef APIARY_LB_ABI_H
#define APIARY_LB_ABI_H

#define LB_SERVICE_MAP_ENTRIES 65536 /* the loader sets the real sizes */
#define LB_BACKEND_MAP_ENTRIES 65536
#define LB_REVNAT_MAP_ENTRIES 65536
#define LB_REVERSE_SK_ENTRIES 262144 /* pkg/maps/lbmap: 256 Ki */
#define LB_AFFINITY_ENTRIES 65536
#define LB_MAGLEV_ENTRIES 4096 /* frontends with a Maglev table */
#define LB_MAGLEV_MAX 131071 /* the largest table size allowed (Cilium's primes) */
#define LB_LOCAL_NETNS_ENTRIES 4096 /* endpoint netns cookies (lb4_local_netns) */

#define LB_ALGORITHM_SHIFT 24
#define LB_AFFINITY_TIMEOUT_MASK 0xffffff
#define LB_ALG_RANDOM 1
#define LB_ALG_MAGLEV 2

/* lb4_service.flags (Cilium's SVC_FLAG_*) */
#define SVC_FLAG_EXTERNAL_IP (1 << 0)
#define SVC_FLAG_NODEPORT (1 << 1)
#define SVC_FLAG_EXT_LOCAL_SCOPE (1 << 2)
#define SVC_FLAG_AFFINITY (1 << 4)
#define SVC_FLAG_ROUTABLE (1 << 6)

/* Cilium's drop reason for a frontend without a usable backend */
#define DROP_NO_SERVICE 158

struct lb4_key {
	__be32 address;
	__be16 dport;
	__u16 backend_slot; /* 0: the master entry */
	__u8 proto;
	__u8 scope; /* 0 external, 1 internal (only with two scopes; apiary writes 0) */
	__u8 pad[2];
};

struct lb4_service {
	__u32 backend_id; /* slot > 0: the backend; master: algorithm << 24 | affinity timeout (s) */
	__u16 count; /* master: backend slots */
	__u16 rev_nat_index; /* the service (frontend) id */
	__u8 flags;
	__u8 flags2;
	__u16 qcount;
};

struct lb4_backend {
	__be32 address;
	__be16 port;
	__u8 proto;
	__u8 flags; /* backend state: 0 active, 1 terminating, 2 quarantined, 3 maintenance */
	__u16 cluster_id;
	__u8 zone;
	__u8 pad;
};

struct lb4_reverse_nat {
	__be32 address;
	__be16 port;
	__u16 pad;
};

/* socket reverse NAT: what a connected/sending socket was translated to, by its cookie */
struct lb4_revnat_sk_key {
	__u64 cookie;
	__be32 address; /* the backend */
	__be16 port;
	__u16 pad;
};

struct lb4_revnat_sk_val {
	__be32 address; /* the frontend */
	__be16 port;
	__u16 rev_nat_index;
};

struct lb4_affinity_key {
	__u64 client_id; /* the netns cookie (socket LB) */
	__u16 rev_nat_id;
	__u8 netns_cookie; /* 1: client_id is a netns cookie */
	__u8 pad[5];
};

struct lb_affinity_val {
	__u64 last_used; /* bpf_ktime_get_ns() */
	__u32 backend_id;
	__u32 pad;
};

struct lb_affinity_match {
	__u32 backend_id;
	__u16 rev_nat_id;
	__u16 pad;
};

/* the Maglev table of one frontend (the loader sets the map's value size to 4 * maglev_m) */
struct lb4_maglev_lut {
	__u32 backend_ids[16381];
};

/* lb_stats slots (per CPU) */
enum lb_stat {
	LB_STAT_FWD = 0,       /* connect/sendmsg translated to a backend */
	LB_STAT_REV = 1,       /* recvmsg/getpeername translated back to the frontend */
	LB_STAT_NO_BACKEND = 2,/* refused: frontend without a backend (158) */
	LB_STAT_BIND_DENIED = 3, /* bind() refused: overlaps a NodePort */
	LB_STAT_AFFINITY_HIT = 4,
	LB_STAT_REVSK_FULL = 5, /* reverse_sk write failed (replies keep the backend address) */
	LB_STAT_EVENTS_LOST = 6,
	LB_STAT_NODEPORT_IN = 7, /* NodePort/ExternalIP packets translated on a device (tc) */
	LB_STAT_NODEPORT_OUT = 8, /* their replies translated back */
	LB_STAT_MAX = 10,
};

#define LB_MSG_DROP 20 /* the type byte of lb_events records (a ring of its own) */

/* one refused connect/sendmsg or NodePort packet, for the flow stream (SERVICE_BACKEND_NOT_FOUND) */
struct lb_drop_msg {
	__u8 type; /* LB_MSG_DROP */
	__u8 reason;
	__u8 proto;
	__u8 hook; /* 0 connect4, 1 sendmsg4, 2 nodeport (tc ingress of a device) */
	__be32 address; /* the frontend */
	__be16 port;
	__be16 sport; /* nodeport: the client's port */
	__be32 saddr; /* nodeport: the client */
	__u32 pid;
	__u32 ifindex;
	__u64 cgroup_id;
	__u64 netns_cookie;
	__u64 ktime;
};

/* NodePort/ExternalIP NAT on the TC path (packets from outside, no socket to hook): by the tuple as seen
 * on the device. dir 0: client -> frontend (ingress) gives the backend; dir 1: backend -> client
 * (egress) gives the frontend to write back as the source. */
struct lb4_nat_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 dir;
	__u8 pad[2];
};

struct lb4_nat_val {
	__be32 address;
	__be16 port;
	__u16 rev_nat_index;
	__u32 backend_id;
	__u32 pad;
};

#define LB_NAT_ENTRIES 65536

#endif
