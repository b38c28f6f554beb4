/* gsys: argument readers (registers, tracepoint fields, files, sockets, packets, credentials)
 * into the per-CPU scratch event */
#ifndef APIARY_GSYS_ARGS_H
#define APIARY_GSYS_ARGS_H

/* register argument idx (0-5) of the call, by constant offsets; GS_REG_RET the return value (at the exit),
 * GS_REG_CRED the current task's credentials, GS_REG_EXE its executable file */
static __always_inline __u64 reg_at(struct hooks_ctx *hc, __u16 idx)
{
	switch (idx) {
	case 0: return hc->args[0];
	case 1: return hc->args[1];
	case 2: return hc->args[2];
	case 3: return hc->args[3];
	case 4: return hc->args[4];
	case 5: return hc->args[5];
	case GS_REG_RET: return hc->ret;
	case GS_REG_CRED: { /* the objective credentials: what commit_creds installs (with the subjective ones) */
		struct task_struct *t = (void *)bpf_get_current_task();
		return (__u64)BPF_CORE_READ(t, real_cred);
	}
	case GS_REG_EXE: {
		struct task_struct *t = (void *)bpf_get_current_task();
		return (__u64)BPF_CORE_READ(t, mm, exe_file);
	}
	}
	return 0;
}

static __always_inline __u64 reg_arg(struct hooks_ctx *hc, struct gs_hook *h, int a)
{
	if (hc->rec) { /* a tracepoint field: offset and size from the format file */
		__u16 off = 0;
		__u8 size = 8, kind = 0;
		switch (a) {
#define GS_F(q) case q: off = h->arg_off[q]; size = h->arg_size[q]; kind = h->arg_kind[q]; break;
		GS_F(0) GS_F(1) GS_F(2) GS_F(3) GS_F(4)
#undef GS_F
		}
		if (kind == GS_ARG_CHARS)
			return hc->rec + off; /* read as a string from there */
		__u64 v = 0;
		if (size > 8)
			size = 8;
		bpf_probe_read_kernel(&v, size & 15, (void *)(hc->rec + off));
		if (kind == GS_ARG_INT && size < 8) {
			__u32 sh = 64 - size * 8;
			v = (__u64)(((__s64)(v << sh)) >> sh);
		}
		return v;
	}
	__u8 idx = 0, size = 0, kind = 0;
	switch (a) {
#define GS_R(q) case q: idx = h->arg_index[q]; size = h->arg_size[q]; kind = h->arg_kind[q]; break;
	GS_R(0) GS_R(1) GS_R(2) GS_R(3) GS_R(4)
#undef GS_R
	}
	__u64 v = reg_at(hc, idx);
	if ((kind == GS_ARG_INT || kind == GS_ARG_UINT) && size && size < 8) {
		/* a 32-bit (or narrower) argument: only the low bytes of the register are its value */
		__u32 sh = 64 - (size & 7) * 8;
		v = kind == GS_ARG_INT ? (__u64)(((__s64)(v << sh)) >> sh) : (v << sh) >> sh;
	}
	return v;
}

/* the open file of an fd of the current process (0: none); the kernel takes fds as unsigned int */
static __always_inline struct file *fd_file(__u64 fd64)
{
	__u32 fd = (__u32)fd64;
	struct task_struct *t = (void *)bpf_get_current_task();
	struct files_struct *files = BPF_CORE_READ(t, files);
	struct fdtable *fdt = BPF_CORE_READ(files, fdt);
	unsigned int max = BPF_CORE_READ(fdt, max_fds);
	if (fd >= max)
		return 0;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *f = 0;
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	return f;
}

/* include/linux/fs.h (the same values in 6.1 - 6.18) */
#define GS_FMODE_READ 0x1
#define GS_FMODE_WRITE 0x2
#define GS_FMODE_PREAD 0x8
#define GS_FMODE_PWRITE 0x10
#define GS_FMODE_PATH 0x4000
#define GS_FMODE_CAN_READ 0x20000
#define GS_FMODE_CAN_WRITE 0x40000
#define GS_S_IFMT 0170000
#define GS_S_IFSOCK 0140000

/* the struct socket of a socket file (0: not a socket); open() cannot open a socket inode, only O_PATH can,
 * and the caller rejects O_PATH files: a socket inode here is a socket made by socket()/accept() */
static __always_inline struct socket *file_socket(struct file *f)
{
	if (!f)
		return 0;
	__u16 mode = BPF_CORE_READ(f, f_inode, i_mode);
	if ((mode & GS_S_IFMT) != GS_S_IFSOCK)
		return 0;
	return BPF_CORE_READ(f, private_data);
}

/* a socket argument into the event's slot a (the scratch event): a struct sock * or struct socket * (v), or
 * for connect() the socket of the fd with the destination of the user's sockaddr (v; 0: the socket's own
 * destination). Verified once, on its own. */
__noinline int gs_read_sock(__u32 a, __u64 v, __u64 fd, __u32 kind)
{
	__u32 zero = 0;
	struct gs_event *ev = bpf_map_lookup_elem(&gs_scratch, &zero);
	if (!ev || a >= GS_ARGS)
		return 0;
	__u32 conn = kind == GS_ARG_CONNSOCK;
	struct sock *sk = (struct sock *)v;
	if (kind == GS_ARG_SOCKETPTR)
		sk = BPF_CORE_READ((struct socket *)v, sk);
	if (conn) {
		struct socket *so = file_socket(fd_file(fd));
		if (!so)
			return 0;
		sk = BPF_CORE_READ(so, sk);
	}
	struct gs_sockinfo si = {};
	si.family = BPF_CORE_READ(sk, __sk_common.skc_family);
	si.type = BPF_CORE_READ(sk, sk_type);
	si.protocol = BPF_CORE_READ(sk, sk_protocol);
	si.sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	if (!conn) /* at connect() entry the state is not yet the function's (TCP_SYN_SENT) */
		si.state = BPF_CORE_READ(sk, __sk_common.skc_state);
	si.saddr = bpf_ntohl(BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr));
	if (si.family == GS_AF_INET6)
		BPF_CORE_READ_INTO(&si.saddr6, sk, __sk_common.skc_v6_rcv_saddr);
	if (conn && v) {
		struct {
			__u16 family;
			__u16 port;
			__u32 addr;
		} sa = {};
		bpf_probe_read_user(&sa, sizeof(sa), (void *)v);
		si.dport = bpf_ntohs(sa.port);
		if (sa.family == GS_AF_INET)
			si.daddr = bpf_ntohl(sa.addr);
		else if (sa.family == GS_AF_INET6) /* sockaddr_in6: sin6_addr at offset 8 */
			bpf_probe_read_user(&si.daddr6, sizeof(si.daddr6), (void *)(v + 8));
	} else {
		si.dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
		si.daddr = bpf_ntohl(BPF_CORE_READ(sk, __sk_common.skc_daddr));
		if (si.family == GS_AF_INET6)
			BPF_CORE_READ_INTO(&si.daddr6, sk, __sk_common.skc_v6_daddr);
	}
	/* the destination as a sockaddr-style value, so DAddr/DPort/Family filters work unchanged */
	__s64 x = ((__s64)si.family << 48) | ((__s64)si.dport << 32) | si.daddr;
	switch (a) {
#define GS_W(q) case q: ev->ints[q] = x; __builtin_memcpy(ev->str[q], &si, sizeof(si)); ev->slen[q] = sizeof(si); break;
	GS_W(0) GS_W(1) GS_W(2) GS_W(3) GS_W(4)
#undef GS_W
	}
	return 0;
}

#define GS_STACK_STR 64 /* a user string read for the selectors up to this many bytes goes through the stack */

/* Argument a into the scratch event. cap (strings read with a helper that stops at the NUL): 0 reads
 * up to GS_ARGSTR bytes; else at most cap bytes with the NUL, and 1 is returned when the string may go on
 * past them (the caller reads it in full once something matched). */
static __always_inline int read_arg(struct gs_event *ev, struct gs_hook *h, struct hooks_ctx *hc, int a, __u32 cap)
{
	__u8 kind = 0;
	switch (a) {
#define GS_KD(q) case q: kind = h->arg_kind[q]; break;
	GS_KD(0) GS_KD(1) GS_KD(2) GS_KD(3) GS_KD(4)
#undef GS_KD
	default:
		return 0;
	}
	__u64 v = reg_arg(hc, h, a);
	ev->ints[a] = v;
	ev->slen[a] = 0;
	if (kind == GS_ARG_STRING || kind == GS_ARG_KSTRING || kind == GS_ARG_CHARS || kind == GS_ARG_DATALOC) {
		long n;
		if (!cap || cap > GS_ARGSTR || kind == GS_ARG_CHARS)
			cap = GS_ARGSTR;
		cap = ((cap - 1) & (GS_ARGSTR - 1)) + 1;
		if (kind == GS_ARG_STRING && cap <= GS_STACK_STR) {
			/* a short read for the selectors: into the stack, then the event. The kernel checks the
			 * destination of every user copy, and a stack object costs it less than a map value. */
			char buf[GS_STACK_STR] = {};
			__u32 c = cap - 1;
			barrier_var(c); /* the mask below is what the verifier bounds the size by */
			c = (c & (GS_STACK_STR - 1)) + 1;
			n = bpf_probe_read_user_str(buf, c, (void *)v);
			__builtin_memcpy(ev->str[a], buf, GS_STACK_STR);
		} else if (kind == GS_ARG_STRING)
			n = bpf_probe_read_user_str(ev->str[a], cap, (void *)v);
		else if (kind == GS_ARG_DATALOC)
			n = bpf_probe_read_kernel_str(ev->str[a], cap, (void *)(hc->rec + (v & 0xffff)));
		else if (kind == GS_ARG_CHARS) {
			__u32 size = GS_ARGSTR;
			switch (a) {
#define GS_S(q) case q: size = h->arg_size[q]; break;
			GS_S(0) GS_S(1) GS_S(2) GS_S(3) GS_S(4)
#undef GS_S
			}
			if (size > GS_ARGSTR || size == 0)
				size = GS_ARGSTR;
			size = ((size - 1) & (GS_ARGSTR - 1)) + 1;
			n = bpf_probe_read_kernel_str(ev->str[a], size, (void *)v);
		} else
			n = bpf_probe_read_kernel_str(ev->str[a], cap, (void *)v);
		ev->slen[a] = n > 0 ? n - 1 : 0;
		if (n == GS_ARGSTR)
			ev->flags |= GS_EV_TRUNC;
		return cap < GS_ARGSTR && n == cap;
	} else if (kind == GS_ARG_FD || kind == GS_ARG_FILEPTR || kind == GS_ARG_BPRM || kind == GS_ARG_PATHPTR) {
		const struct path *p = (const struct path *)v;
		if (kind != GS_ARG_PATHPTR) { /* a file: its path */
			struct file *f = kind == GS_ARG_FD ? fd_file(v)
					 : kind == GS_ARG_BPRM ? BPF_CORE_READ((struct linux_binprm *)v, file)
							       : (struct file *)v;
			if (!f)
				return 0;
			p = &f->f_path;
		}
		int trunc = 0;
		__u32 len = walk_path(p, &trunc);
		__u32 zero = 0;
		struct pathwalk_buf *pw = bpf_map_lookup_elem(&pathwalk, &zero);
		if (!pw)
			return 0;
		__u32 start = PATH_BUF - len;
		__u32 n = len;
		if (n > GS_ARGSTR - 1) {
			n = GS_ARGSTR - 1;
			trunc = 1;
		}
		barrier_var(start);
		barrier_var(n);
		start &= PATH_BUF - 1;
		n &= GS_ARGSTR - 1;
		bpf_probe_read_kernel(ev->str[a], n, &pw->path[start]);
		ev->slen[a] = n;
		if (trunc)
			ev->flags |= GS_EV_TRUNC;
	} else if (kind == GS_ARG_BUF) {
		__u16 sidx = 0;
		switch (a) {
#define GS_B(q) case q: sidx = h->arg_off[q]; break;
		GS_B(0) GS_B(1) GS_B(2) GS_B(3) GS_B(4)
#undef GS_B
		}
		__u64 n = reg_at(hc, sidx);
		if ((__s64)n < 0 || (h->copy_mask >> a) & 1) /* returnCopy: read at exit, with the return value */
			n = 0;
		if (n > GS_ARGSTR - 1) {
			n = GS_ARGSTR - 1;
			ev->flags |= GS_EV_TRUNC;
		}
		n &= GS_ARGSTR - 1;
		if (bpf_probe_read_user(ev->str[a], n, (void *)v))
			n = 0;
		ev->slen[a] = n;
	} else if (kind == GS_ARG_SKB) {
		struct sk_buff *skb = (struct sk_buff *)v;
		struct gs_skbinfo si = {};
		unsigned char *head = BPF_CORE_READ(skb, head);
		__u16 nh = BPF_CORE_READ(skb, network_header), th = BPF_CORE_READ(skb, transport_header);
		struct iphdr ip = {};
		bpf_probe_read_kernel(&ip, sizeof(ip), head + nh);
		si.len = BPF_CORE_READ(skb, len);
		si.mark = BPF_CORE_READ(skb, mark);
		si.priority = BPF_CORE_READ(skb, priority);
		si.hash = BPF_CORE_READ(skb, hash);
		if (ip.version == 4) {
			si.s.family = GS_AF_INET;
			si.s.protocol = ip.protocol;
			si.s.saddr = bpf_ntohl(ip.saddr);
			si.s.daddr = bpf_ntohl(ip.daddr);
			if (ip.protocol == GS_IPPROTO_TCP || ip.protocol == GS_IPPROTO_UDP || ip.protocol == GS_IPPROTO_SCTP) { /* ports lead TCP/UDP/SCTP */
				__u16 ports[2] = {};
				/* the transport header may not be set yet on the way out: derive it from the IP header */
				__u32 off = th && th != 0xffff && th != nh ? th : nh + ip.ihl * 4;
				bpf_probe_read_kernel(ports, sizeof(ports), head + off);
				si.s.sport = bpf_ntohs(ports[0]);
				si.s.dport = bpf_ntohs(ports[1]);
			}
		}
		ev->ints[a] = ((__s64)si.s.family << 48) | ((__s64)si.s.dport << 32) | si.s.daddr;
		__builtin_memcpy(ev->str[a], &si, sizeof(si));
		ev->slen[a] = sizeof(si);
	} else if (kind == GS_ARG_CRED) {
		struct cred *cr = (struct cred *)v;
		struct gs_credinfo ci = {};
		ci.uid = BPF_CORE_READ(cr, uid.val);
		ci.gid = BPF_CORE_READ(cr, gid.val);
		ci.suid = BPF_CORE_READ(cr, suid.val);
		ci.sgid = BPF_CORE_READ(cr, sgid.val);
		ci.euid = BPF_CORE_READ(cr, euid.val);
		ci.egid = BPF_CORE_READ(cr, egid.val);
		ci.fsuid = BPF_CORE_READ(cr, fsuid.val);
		ci.fsgid = BPF_CORE_READ(cr, fsgid.val);
		ci.securebits = BPF_CORE_READ(cr, securebits);
		ci.user_ns = BPF_CORE_READ(cr, user_ns, ns.inum);
		/* kernel_cap_t is a u64 (6.3+) or two u32 (older): the same 8 bytes either way */
		bpf_probe_read_kernel(&ci.cap_inheritable, 8, __builtin_preserve_access_index(&cr->cap_inheritable));
		bpf_probe_read_kernel(&ci.cap_permitted, 8, __builtin_preserve_access_index(&cr->cap_permitted));
		bpf_probe_read_kernel(&ci.cap_effective, 8, __builtin_preserve_access_index(&cr->cap_effective));
		ev->ints[a] = ci.euid;
		__builtin_memcpy(ev->str[a], &ci, sizeof(ci));
		ev->slen[a] = sizeof(ci);
	} else if (kind == GS_ARG_SOCK || kind == GS_ARG_CONNSOCK || kind == GS_ARG_SOCKETPTR) {
		__u16 fdreg = 0;
		switch (a) {
#define GS_K(q) case q: fdreg = h->arg_off[q]; break;
		GS_K(0) GS_K(1) GS_K(2) GS_K(3) GS_K(4)
#undef GS_K
		}
		gs_read_sock(a, v, kind == GS_ARG_CONNSOCK ? reg_at(hc, fdreg) : 0, kind);
	} else if (kind == GS_ARG_SOCKADDR || kind == GS_ARG_KSOCKADDR) {
		struct {
			__u16 family;
			__u16 port;
			__u32 addr;
		} sa = {};
		if (kind == GS_ARG_KSOCKADDR)
			bpf_probe_read_kernel(&sa, sizeof(sa), (void *)v);
		else
			bpf_probe_read_user(&sa, sizeof(sa), (void *)v);
		ev->ints[a] = ((__s64)sa.family << 48) | ((__s64)bpf_ntohs(sa.port) << 32) | bpf_ntohl(sa.addr);
	}
	return 0;
}

/* argument a of hook hid into the scratch event (cap: see read_arg): verified once, on its own, not once
 * per argument and caller */
__noinline int gs_read_arg(__u32 hid, __u32 a, struct hooks_ctx *hc, __u32 cap)
{
	__u32 zero = 0;
	struct gs_hook *h = bpf_map_lookup_elem(&gs_hooks, &hid);
	struct gs_event *ev = bpf_map_lookup_elem(&gs_scratch, &zero);
	if (!h || !ev || !hc)
		return 0;
	switch (a) { /* constant slots keep the verifier's bounds exact */
	case 0: return read_arg(ev, h, hc, 0, cap);
	case 1: return read_arg(ev, h, hc, 1, cap);
	case 2: return read_arg(ev, h, hc, 2, cap);
	case 3: return read_arg(ev, h, hc, 3, cap);
	case 4: return read_arg(ev, h, hc, 4, cap);
	}
	return 0;
}

#endif
