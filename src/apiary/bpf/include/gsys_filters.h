/* gsys: selector evaluation: argument filters, process filters (pids, binaries, namespaces,
 * capabilities), return-value filters */
#ifndef APIARY_GSYS_FILTERS_H
#define APIARY_GSYS_FILTERS_H

static __always_inline int int_match(struct gs_filter *f, __u8 kind, __s64 x)
{
	__u8 op = f->op;
	__u32 n = f->nvals;
	int any = 0;
	for (int v = 0; v < GS_VALS; v++) {
		if (v >= n)
			break;
		__s64 lo = f->ints[v][0], hi = f->ints[v][1];
		switch (op) {
		case GS_OP_EQUAL:
		case GS_OP_NOTEQUAL:
			any |= x == lo;
			break;
		case GS_OP_GT:
			any |= kind == GS_ARG_UINT ? (__u64)x > (__u64)lo : x > lo;
			break;
		case GS_OP_LT:
			any |= kind == GS_ARG_UINT ? (__u64)x < (__u64)lo : x < lo;
			break;
		case GS_OP_MASK:
			any |= (x & lo) != 0;
			break;
		case GS_OP_INRANGE:
		case GS_OP_NOTINRANGE:
			any |= kind == GS_ARG_UINT ? ((__u64)x >= (__u64)lo && (__u64)x <= (__u64)hi) : (x >= lo && x <= hi);
			break;
		}
	}
	return (op == GS_OP_NOTEQUAL || op == GS_OP_NOTINRANGE) ? !any : any;
}

/* Global functions are verified once, on their own: this keeps the selector evaluation linear for
 * the verifier instead of multiplying with every caller's states. */
__noinline int gs_match_filter(__u32 hid, __u32 si, __u32 fi)
{
	__u32 zero0 = 0;
	struct gs_hook *h = bpf_map_lookup_elem(&gs_hooks, &hid);
	struct gs_event *ev = bpf_map_lookup_elem(&gs_scratch, &zero0);
	if (!h || !ev)
		return 0;
	struct gs_selector *sel = sel_at(h, si);
	if (!sel)
		return 0;
	struct gs_filter *f;
	switch (fi) {
	case 0: f = &sel->f[0]; break;
	case 1: f = &sel->f[1]; break;
	case 2: f = &sel->f[2]; break;
	case 3: f = &sel->f[3]; break;
	case 4: f = &sel->f[4]; break;
	default: return 0;
	}

	__u32 zero = 0;
	struct gs_hashes *hs = bpf_map_lookup_elem(&gs_hash, &zero);
	if (!hs)
		return 0;
	__u64 *pre, *suf;
	__u8 kind;
	__u32 alen;
	__s64 x;
	switch (f->arg) { /* constant offsets keep the verifier's bounds exact */
#define GS_PICK(k) case k: pre = hs->pre[k]; suf = hs->suf[k]; kind = h->arg_kind[k]; alen = ev->slen[k]; \
		x = ev->ints[k]; break;
	GS_PICK(0) GS_PICK(1) GS_PICK(2) GS_PICK(3) GS_PICK(4)
#undef GS_PICK
	default:
		return 0;
	}
	if (alen > GS_ARGSTR - 1)
		alen = GS_ARGSTR - 1;
	__u8 op = f->op;
	__u32 n = f->nvals;
	if (kind == GS_ARG_STRING || kind == GS_ARG_FD || kind == GS_ARG_FILEPTR || kind == GS_ARG_KSTRING ||
	    kind == GS_ARG_CHARS || kind == GS_ARG_DATALOC || kind == GS_ARG_BUF || kind == GS_ARG_PATHPTR ||
	    kind == GS_ARG_BPRM) {
		enum gs_hash_mode mode = (op == GS_OP_EQUAL || op == GS_OP_NOTEQUAL)     ? GS_HM_EQUAL
					 : (op == GS_OP_PREFIX || op == GS_OP_NOTPREFIX) ? GS_HM_PREFIX
											   : GS_HM_POSTFIX;
		int any = 0;
		for (int v = 0; v < GS_VALS; v++) {
			if (v < n && !any)
				any = hash_match(pre, suf, alen, f->hash[v], f->lens[v], mode);
		}
		int neg = op == GS_OP_NOTEQUAL || op == GS_OP_NOTPREFIX || op == GS_OP_NOTPOSTFIX;
		return neg ? !any : any;
	}
	int sockish = kind == GS_ARG_SOCK || kind == GS_ARG_SKB || kind == GS_ARG_CONNSOCK || kind == GS_ARG_SOCKETPTR;
	if (sockish && op >= GS_OP_SADDR) { /* the source side and the protocol */
		struct gs_sockinfo si = {};
		switch (f->arg) {
#define GS_SI(k) case k: __builtin_memcpy(&si, ev->str[k], sizeof(si)); break;
		GS_SI(0) GS_SI(1) GS_SI(2) GS_SI(3) GS_SI(4)
#undef GS_SI
		}
		int any = 0;
		for (int v = 0; v < GS_VALS; v++) {
			if (v >= n)
				break;
			__s64 lo = f->ints[v][0], hi = f->ints[v][1];
			if ((op == GS_OP_SADDR || op == GS_OP_NOTSADDR) && si.family == GS_AF_INET && (si.saddr & hi) == (__u64)lo)
				any = 1;
			if ((op == GS_OP_SPORT || op == GS_OP_NOTSPORT) && si.sport >= lo && si.sport <= hi)
				any = 1;
			if (op == GS_OP_PROTOCOL && si.protocol == lo)
				any = 1;
		}
		/* address values are IPv4: an IPv6 address is in none of them; other families match neither way
		 * (Tetragon's filter_addr_map) */
		if ((op == GS_OP_SADDR || op == GS_OP_NOTSADDR) && si.family != GS_AF_INET && si.family != GS_AF_INET6)
			return 0;
		return (op == GS_OP_NOTSADDR || op == GS_OP_NOTSPORT) ? !any : any;
	}
	if (kind == GS_ARG_SOCKADDR || kind == GS_ARG_KSOCKADDR || sockish) {
		__u64 fam = (__u64)x >> 48, port = ((__u64)x >> 32) & 0xffff, addr = (__u64)x & 0xffffffff;
		int any = 0;
		for (int v = 0; v < GS_VALS; v++) {
			if (v >= n)
				break;
			__s64 lo = f->ints[v][0], hi = f->ints[v][1];
			if ((op == GS_OP_DADDR || op == GS_OP_NOTDADDR) && fam == GS_AF_INET && (addr & hi) == (__u64)lo)
				any = 1;
			if ((op == GS_OP_DPORT || op == GS_OP_NOTDPORT) && port >= lo && port <= hi)
				any = 1;
			if (op == GS_OP_FAMILY && fam == (__u64)lo)
				any = 1;
		}
		if ((op == GS_OP_DADDR || op == GS_OP_NOTDADDR) && fam != GS_AF_INET && fam != GS_AF_INET6)
			return 0;
		return (op == GS_OP_NOTDADDR || op == GS_OP_NOTDPORT) ? !any : any;
	}
	if (kind == GS_ARG_INT || kind == GS_ARG_UINT)
		return int_match(f, kind, x);
	return 0;
}

static __always_inline int mb_bit(__u32 tgid, __u8 slot)
{
	if (!slot)
		return 0;
	__u64 *bits = bpf_map_lookup_elem(&gs_mb, &tgid);
	return bits && (*bits >> ((slot - 1) & 63)) & 1;
}

/* the PID namespace a task's PID lives in (its active one) */
static __always_inline void *pid_ns_of(struct task_struct *t)
{
	struct pid *tp = BPF_CORE_READ(t, thread_pid);
	unsigned int level = BPF_CORE_READ(tp, level);
	struct upid up = {};
	bpf_probe_read_kernel(&up, sizeof(up), (void *)((long)&tp->numbers[0] + (long)(level & 31) * sizeof(struct upid)));
	return up.ns;
}

/* a process's PID as its own PID namespace sees it (1 = a container's init) */
static __always_inline __u32 ns_tgid(struct task_struct *t)
{
	struct pid *tp = BPF_CORE_READ(t, group_leader, thread_pid);
	unsigned int level = BPF_CORE_READ(tp, level);
	struct upid up = {};
	bpf_probe_read_kernel(&up, sizeof(up), (void *)((long)&tp->numbers[0] + (long)(level & 31) * sizeof(struct upid)));
	return up.nr;
}

/* the inode number of the current task's namespace of a type (what /proc/PID/ns/<type> shows) */
static __always_inline __u32 ns_inum(struct task_struct *t, __u8 type)
{
	struct nsproxy *nsp = BPF_CORE_READ(t, nsproxy);
	switch (type) {
	case GS_NS_UTS: return BPF_CORE_READ(nsp, uts_ns, ns.inum);
	case GS_NS_IPC: return BPF_CORE_READ(nsp, ipc_ns, ns.inum);
	case GS_NS_MNT: return BPF_CORE_READ(nsp, mnt_ns, ns.inum);
	case GS_NS_PID: {
		struct pid *p = BPF_CORE_READ(t, thread_pid);
		unsigned int level = BPF_CORE_READ(p, level);
		struct upid up = {};
		bpf_probe_read_kernel(&up, sizeof(up), (void *)((long)&p->numbers[0] + (long)(level & 31) * sizeof(struct upid)));
		return BPF_CORE_READ(up.ns, ns.inum);
	}
	case GS_NS_PID_FOR_CHILDREN: return BPF_CORE_READ(nsp, pid_ns_for_children, ns.inum);
	case GS_NS_NET: return BPF_CORE_READ(nsp, net_ns, ns.inum);
	case GS_NS_TIME: return BPF_CORE_READ(nsp, time_ns, ns.inum);
	case GS_NS_TIME_FOR_CHILDREN: return BPF_CORE_READ(nsp, time_ns_for_children, ns.inum);
	case GS_NS_CGROUP: return BPF_CORE_READ(nsp, cgroup_ns, ns.inum);
	case GS_NS_USER: return BPF_CORE_READ(t, cred, user_ns, ns.inum);
	}
	return 0;
}

__noinline int gs_match_process(__u32 hid, __u32 si)
{
	struct gs_hook *h = bpf_map_lookup_elem(&gs_hooks, &hid);
	if (!h)
		return 0;
	struct gs_selector *sel = sel_at(h, si);
	if (!sel)
		return 0;
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (sel->npids) {
		__u32 pid = tgid;
		if (sel->pid_ns) /* the process's PID in its own PID namespace (1 = a container's init) */
			pid = ns_tgid((void *)bpf_get_current_task());
		int any = 0;
		for (int v = 0; v < GS_VALS; v++)
			if (v < sel->npids && sel->pids[v] == pid)
				any = 1;
		if (!any)
			any = mb_bit(tgid, sel->pid_follow);
		if ((sel->pid_op == GS_BIN_IN) != any)
			return 0;
	}
	if (sel->nbins) {
		__u32 zero = 0;
		struct gs_hashes *hs = bpf_map_lookup_elem(&gs_hash, &zero);
		if (!hs)
			return 0;
		enum gs_hash_mode mode = (sel->bin_op == GS_BIN_PREFIX || sel->bin_op == GS_BIN_NOTPREFIX) ? GS_HM_PREFIX : GS_HM_EQUAL;
		int any = 0;
		for (int v = 0; v < GS_VALS; v++)
			if (v < sel->nbins && !any)
				any = hash_match(hs->bin, hs->bin, hs->bin_len, sel->bin_hash[v], sel->bin_lens[v], mode);
		if (!any)
			any = mb_bit(tgid, sel->bin_follow);
		int neg = sel->bin_op == GS_BIN_NOTIN || sel->bin_op == GS_BIN_NOTPREFIX;
		if (neg ? any : !any)
			return 0;
	}
	if (sel->nns || sel->cap_type) {
		struct task_struct *t = (void *)bpf_get_current_task();
		for (int e = 0; e < GS_NS; e++) {
			if (e >= sel->nns)
				break;
			struct gs_nsf *nf = &sel->ns[e];
			__u32 inum = ns_inum(t, nf->type);
			int any = 0;
			for (int v = 0; v < GS_VALS; v++)
				if (v < nf->n && nf->vals[v] == inum)
					any = 1;
			if ((nf->op == GS_BIN_IN) != any)
				return 0;
		}
		if (sel->cap_type) {
			const struct cred *cr = BPF_CORE_READ(t, cred);
			__u64 caps = 0;
			if (sel->cap_type == GS_CAP_EFFECTIVE)
				bpf_probe_read_kernel(&caps, 8, __builtin_preserve_access_index(&cr->cap_effective));
			else if (sel->cap_type == GS_CAP_INHERITABLE)
				bpf_probe_read_kernel(&caps, 8, __builtin_preserve_access_index(&cr->cap_inheritable));
			else
				bpf_probe_read_kernel(&caps, 8, __builtin_preserve_access_index(&cr->cap_permitted));
			int any = (caps & sel->cap_mask) != 0;
			if ((sel->cap_op == GS_BIN_IN) != any)
				return 0;
		}
	}
	return 1;
}

/* selector si of hook hid, its entry parts (process filters, then every argument filter: they AND) */
__noinline int gs_match_selector(__u32 hid, __u32 si)
{
	struct gs_hook *h = bpf_map_lookup_elem(&gs_hooks, &hid);
	if (!h || si >= h->nsel)
		return 0;
	struct gs_selector *sel = sel_at(h, si);
	if (!sel)
		return 0;
	/* the process filters only when the selector has some (most have only argument filters) */
	if ((sel->npids || sel->nbins || sel->nns || sel->cap_type) && !gs_match_process(hid, si))
		return 0;
	__u32 nf = sel->nfilters;
	for (__u32 fi = 0; fi < GS_FILTERS; fi++) {
		if (fi >= nf)
			break;
		if (!gs_match_filter(hid, si, fi))
			return 0;
	}
	return 1;
}

/* The selectors of a hook, in order: bit i set if selector i's entry parts matched; all: every selector
 * (return hooks: the exit decides among them), else only up to the first that matched (it wins). A hook
 * without selectors matches (0xff). Direct calls in a bounded loop: no callback per selector. */
static __always_inline __u8 match_selectors(struct gs_hook *h, __u32 hid, int all)
{
	__u32 nsel = h->nsel;
	if (!nsel)
		return 0xff;
	__u8 mask = 0;
	for (__u32 si = 0; si < GS_SELECTORS; si++) {
		if (si >= nsel)
			break;
		if (gs_match_selector(hid, si)) {
			mask |= 1 << si;
			if (!all)
				break;
		}
	}
	return mask;
}


__noinline int gs_match_ret(__u32 hid, __u32 si, __s64 ret)
{
	struct gs_hook *h = bpf_map_lookup_elem(&gs_hooks, &hid);
	if (!h)
		return 0;
	struct gs_selector *sel = sel_at(h, si);
	if (!sel)
		return 0;
	if (!sel->nret)
		return 1;
	return int_match(&sel->ret, h->ret_kind, ret);
}


#endif
