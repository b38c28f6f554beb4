/* gsys: string matching by FNV-1a prefix / tail hashes.
 * Strings are compared through 64-bit FNV-1a hashes of the compared bytes (prefix hashes of the argument
 * for Equal/Prefix, hashes of its reversed tail for Postfix; the values' hashes are computed by the
 * agent): a comparison costs O(1) per value. The hashes are folded in a plain bounded loop over only the
 * bytes some value compares (direct code: no callback per byte, no tail hashes unless a Postfix needs them). */
#ifndef APIARY_GSYS_STRINGS_H
#define APIARY_GSYS_STRINGS_H

enum gs_hash_mode {
	GS_HM_EQUAL = 0,
	GS_HM_PREFIX = 1,
	GS_HM_POSTFIX = 2,
};

/* the prefix hashes pre[1..len] of the len bytes at s (pre[0] is the basis) */
static __always_inline void hash_prefixes(__u64 *pre, const char *s, __u32 len)
{
	__u64 x = GS_FNV_BASIS;
	pre[0] = x;
	for (__u32 n = 0; n < GS_ARGSTR - 1; n++) {
		if (n >= len)
			break;
		x = (x ^ (__u8)s[n]) * GS_FNV_PRIME;
		pre[n + 1] = x;
	}
}

/* the tail hashes suf[1..len]: suf[n] hashes the last n bytes of the len bytes at s, read backwards */
static __always_inline void hash_tails(__u64 *suf, const char *s, __u32 len)
{
	__u64 x = GS_FNV_BASIS;
	suf[0] = x;
	for (__u32 n = 0; n < GS_ARGSTR - 1; n++) {
		if (n >= len)
			break;
		__u32 t = len - 1 - n;
		barrier_var(t);
		t &= GS_ARGSTR - 1;
		x = (x ^ (__u8)s[t]) * GS_FNV_PRIME;
		suf[n + 1] = x;
	}
}

/* The prefix hashes (tails 0) or tail hashes (tails 1) of the first len bytes of argument a of the scratch
 * event. One loop per call, ended by a return: the verifier walks each loop once, not once per way out
 * of the one before. Verified once, on its own. */
__noinline int gs_hash_str(__u32 a, __u32 len, __u32 tails)
{
	__u32 zero = 0;
	struct gs_hashes *hs = bpf_map_lookup_elem(&gs_hash, &zero);
	struct gs_event *ev = bpf_map_lookup_elem(&gs_scratch, &zero);
	if (!hs || !ev)
		return 0;
	if (len > GS_ARGSTR - 1)
		len = GS_ARGSTR - 1;
	switch (a) { /* constant slots keep the verifier's bounds exact */
#define GS_H(q) case q: \
		if (tails) \
			hash_tails(hs->suf[q], ev->str[q], len); \
		else \
			hash_prefixes(hs->pre[q], ev->str[q], len); \
		return 0;
	GS_H(0) GS_H(1) GS_H(2) GS_H(3) GS_H(4)
#undef GS_H
	}
	return 0;
}

/* the prefix hashes of the current process's binary. Verified once, on its own. */
__noinline int gs_hash_bin(void)
{
	__u32 zero = 0, tgid = bpf_get_current_pid_tgid() >> 32;
	struct gs_hashes *hs = bpf_map_lookup_elem(&gs_hash, &zero);
	if (!hs)
		return 0;
	struct proc_binary *pb = bpf_map_lookup_elem(&binaries, &tgid);
	__u32 len = pb ? pb->len : 0;
	if (len > GS_BIN - 1)
		len = GS_BIN - 1;
	hs->bin_len = len;
	hs->bin[0] = GS_FNV_BASIS;
	if (pb)
		hash_prefixes(hs->bin, pb->path, len);
	return 0;
}

/* the hashes a comparison of argument a needs: prefixes of its first len bytes, tails for a Postfix */
static __always_inline void hash_arg(__u32 a, __u32 len, __u32 tails)
{
	gs_hash_str(a, len, 0);
	if (tails)
		gs_hash_str(a, len, 1);
}

static __always_inline int hash_match(__u64 *pre, __u64 *suf, __u32 alen, __u64 vhash, __u32 vlen,
				      enum gs_hash_mode mode)
{
	if (vlen > alen || vlen > GS_ARGSTR - 1)
		return 0;
	if (mode == GS_HM_EQUAL && vlen != alen)
		return 0;
	barrier_var(vlen);
	vlen &= GS_ARGSTR - 1;
	return (mode == GS_HM_POSTFIX ? suf[vlen] : pre[vlen]) == vhash;
}

#endif
