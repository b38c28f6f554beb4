/* Layouts shared by the XDP prefilter (prefilter.bpf.c) and apiary.sensors.prefilter.abi (Python).
 * As Cilium's prefilter (bpf_xdp.c, FORMATS.md 9.4): the packet's SOURCE address is looked up in an
 * LPM trie of prefixes (cidr_v4_dyn) then in a hash of exact addresses (cidr_v4_fix, prefixlen 32); both
 * use the same key. Same for IPv6 (/128 in cidr_v6_fix). A hit drops the packet. */
#ifndef APIARY_PREFILTER_ABI_H
#define APIARY_PREFILTER_ABI_H

#define PF_DEFAULT_ENTRIES 16384 /* per map; the loader sets the real size */

struct pf_v4_key {
	__u32 prefixlen;
	__u8 addr[4];
};

struct pf_v6_key {
	__u32 prefixlen;
	__u8 addr[16];
};

/* the value of every deny map: the slot of this CIDR's drop counter in pf_drops (per CPU) */
struct pf_value {
	__u32 id;
};

#endif
