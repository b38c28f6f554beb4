/* Layouts shared by the endpoint datapath (lxc.bpf.c) and apiary.sensors.network.abi (Python).
 * A kernel test compares the Python layouts with the BTF of the built object. */
#ifndef APIARY_DATAPATH_ABI_H
#define APIARY_DATAPATH_ABI_H

#define DIR_INGRESS 0
#define DIR_EGRESS 1

/* endpoint flags */
#define EP_ENFORCE_INGRESS (1 << 0)
#define EP_ENFORCE_EGRESS (1 << 1)
#define EP_AUDIT (1 << 2)
#define EP_ANY_DENY_INGRESS (1 << 3) /* the ingress policy has deny entries for any identity (0) */
#define EP_ANY_DENY_EGRESS (1 << 4)
#define EP_L7_INGRESS (1 << 5) /* some ingress entry redirects to the L7 proxy */

/* kinds of policy entries (ep_info.policy_kinds): the datapath looks up only the kinds a policy has.
 * Low nibble: entries of a remote identity; high nibble (<< 4): entries of any identity (0). */
#define PK_PORT (1 << 0)  /* one port (or ICMP type) of one protocol: hash map */
#define PK_RANGE (1 << 1) /* a block of a port range: LPM trie */
#define PK_PROTO (1 << 2) /* one protocol, any port: hash map */
#define PK_ANY (1 << 3)   /* any protocol: hash map */
#define PK_ANY_IDENTITY_SHIFT 4

/* Cilium monitor message types */
#define FLOW_DROP 1
#define FLOW_TRACE 4
#define FLOW_POLICY_VERDICT 5

/* observation points (trace sub-types) */
#define OBS_TO_ENDPOINT 0
#define OBS_TO_PROXY 1
#define OBS_FROM_ENDPOINT 5

/* Cilium drop reasons used here */
#define DROP_POLICY_DENIED 133
#define DROP_INVALID_PACKET 134
#define DROP_CT_INVALID_HDR 135
#define DROP_UNKNOWN_L4 142
#define DROP_FRAG_NOT_SUPPORTED 157
#define DROP_CT_MAP_INSERTION 155
#define DROP_PROXY_LOOKUP_FAILED 178 /* the proxy's socket is not there (proxy down): fail closed */
#define DROP_PROXY_SET_FAILED 179
#define DROP_POLICY_DENY 181

/* flow.Verdict */
#define VERDICT_FORWARDED 1
#define VERDICT_DROPPED 2
#define VERDICT_AUDIT 4

/* conntrack result */
#define CT_NEW 1
#define CT_ESTABLISHED 2
#define CT_REPLY 3
#define CT_RELATED 4

/* policy match types (policy-verdict events) */
#define MATCH_NONE 0
#define MATCH_L3_ONLY 1
#define MATCH_L3_L4 2
#define MATCH_L4_ONLY 3
#define MATCH_ALL 4

/* counters: index = reason << 1 | direction; reason 0 = forwarded */
#define DP_COUNTERS 512
/* lost flow events, index = message type */
#define DP_LOST_SLOTS 8

struct ep_info {
	__u16 ep_id;
	__u16 flags;
	__u32 identity;
	__u32 ipv4;        /* network order */
	__u16 policy_slot;    /* ep_id << 1 | generation: the policy map entries in force */
	__u8 policy_kinds[2]; /* by direction: PK_* of the entries in force */
};

/* The policy entries of one (policy slot, direction, identity): prefixlen counts the significant bits
 * after it: the fixed part ep_id+direction+pad+identity (64 bits), +8 protocol, +16 port (big-endian).
 * Entries of full-length ports live in the hash map `policy`, where prefixlen is part of the exact key:
 * POLICY_PREFIX_ANY (any protocol), POLICY_PREFIX_PROTO (a protocol, any port), POLICY_PREFIX_PORT
 * (one port / ICMP type). Port ranges (the aligned blocks of an endPort range) live in the LPM trie
 * `policy_ranges`, prefixlen between the last two. */
#define POLICY_PREFIX_ANY 64
#define POLICY_PREFIX_PROTO 72
#define POLICY_PREFIX_PORT 88
struct policy_key {
	__u32 prefixlen;
	__u16 ep_id;
	__u8 direction;
	__u8 _pad1;
	__u32 identity;
	__u8 proto;
	__u8 dport[2]; /* big-endian, so a prefix covers high bits */
	__u8 _pad2;
};

struct policy_value {
	__u8 deny;
	__u8 audit;
	__u8 match_type; /* MATCH_* of the entry: what a policy-verdict event reports */
	__u8 _pad;
	__u32 rule_id;
	__be16 proxy_port; /* non-zero: new connections go to the L7 proxy listening there (Cilium's proxy_port) */
	__u16 _pad2;
};

struct ipcache_key {
	__u32 prefixlen;
	__u32 addr; /* network order */
};

struct ipcache_value {
	__u32 identity;
	__u16 ep_id;
	__u16 _pad;
};

struct ct_key {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 direction;
	__u16 pad;
	__u32 ifindex; /* host-side veth: known before the endpoint lookup, which established packets skip */
};

struct ct_value {
	__u64 expires;     /* jiffies (bpf_jiffies64) */
	__u64 last_report; /* jiffies of the last trace event */
	__u32 rule_id;
	__u8 flags_orig;   /* TCP flags seen in the original direction */
	__u8 flags_reply;
	__u8 closing;
	__u8 audit;
	__u64 packets;
	__u64 bytes;
	__be16 proxy_port; /* the connection is redirected to the L7 proxy (every packet of the original direction) */
	__u8 from_proxy;   /* the L7 proxy's own connection to the endpoint (already judged) */
	__u8 dirs_reported; /* CT_DIR_* bits: a packet of that direction was traced (the first of each always is) */
	__u8 _pad[4];
};

/* ct_value.dirs_reported */
enum { CT_DIR_ORIG = 1, CT_DIR_REPLY = 2 };

/* The L7 proxy of this agent (one entry, written by the agent): packets redirected to it carry `mark`
 * (an ip rule routes that mark to a local table), its sockets live in the cgroup `cgroup_id`. */
struct proxy_cfg {
	__u32 mark;
	__u32 _pad;
	__u64 cgroup_id;
};

struct flow_msg {
	__u8 kind;
	__u8 sub_type;
	__u8 verdict;
	__u8 ct_state;
	__u8 proto;
	__u8 tcp_flags;
	__u8 egress;
	__u8 match_type;
	__u64 ktime;
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u32 src_identity;
	__u32 dst_identity;
	__u32 rule_id;
	__u32 ifindex;
	__u16 ep_id;
	__u16 _pad;
	__u32 length;
};

struct dp_counter {
	__u64 packets;
	__u64 bytes;
};

#endif
