/* gsys: hook guards: whether the kernel function a hook stands for is called at all */
#ifndef APIARY_GSYS_GUARD_H
#define APIARY_GSYS_GUARD_H

/* The hook's guard (GS_G_* bits): whether the kernel function it stands for is called at all by this
 * syscall, read from the kernel objects (the fd's file and socket, the user's sockaddr, the return value). */
struct guard_in {
	__u64 fd, pos, addr, alen; /* the guard's registers' values */
	__s64 ret;
	__u32 hid;
	__u32 _pad;
};

/* verified once, on its own */
__noinline int gs_guard(struct guard_in *in)
{
	if (!in)
		return 0;
	__u32 hid = in->hid;
	struct gs_hook *h = bpf_map_lookup_elem(&gs_hooks, &hid);
	if (!h)
		return 0;
	__u16 g = h->guard;
	if ((g & GS_G_RET_OK) && in->ret < 0)
		return 0;
	if (g & GS_G_CRED_NEW) {
		__u32 tid = (__u32)bpf_get_current_pid_tgid();
		__u64 *before = bpf_map_lookup_elem(&gs_entry_cred, &tid);
		struct task_struct *t = (void *)bpf_get_current_task();
		if (!before || *before == (__u64)BPF_CORE_READ(t, real_cred))
			return 0;
	}
	struct file *f = 0;
	unsigned int mode = 0;
	if (g & (GS_G_FILE | GS_G_READ | GS_G_WRITE | GS_G_PREAD | GS_G_PWRITE | GS_G_SOCKET | GS_G_TCP)) {
		f = fd_file(in->fd);
		if (!f)
			return 0;
		mode = BPF_CORE_READ(f, f_mode);
		if (mode & GS_FMODE_PATH) /* fdget() refuses O_PATH files: the call fails with EBADF first */
			return 0;
	}
	if ((g & GS_G_READ) && (mode & (GS_FMODE_READ | GS_FMODE_CAN_READ)) != (GS_FMODE_READ | GS_FMODE_CAN_READ))
		return 0;
	if ((g & GS_G_WRITE) && (mode & (GS_FMODE_WRITE | GS_FMODE_CAN_WRITE)) != (GS_FMODE_WRITE | GS_FMODE_CAN_WRITE))
		return 0;
	if (g & (GS_G_PREAD | GS_G_PWRITE)) {
		__s64 pos = (__s64)in->pos;
		if (!((g & GS_G_POS_OPT) && pos == -1)) { /* -1: preadv2/pwritev2 at the current position */
			if (pos < 0)
				return 0;
			if (!(mode & ((g & GS_G_PREAD) ? GS_FMODE_PREAD : GS_FMODE_PWRITE)))
				return 0; /* not seekable: ESPIPE */
		}
	}
	if (g & (GS_G_ADDR | GS_G_TCP)) { /* move_addr_to_kernel(): 0..sizeof(sockaddr_storage) readable bytes */
		__u64 ua = in->addr;
		__s32 alen = (__s32)in->alen;
		__u8 b = 0;
		if (alen < 0 || alen > 128)
			return 0;
		if (alen && (bpf_probe_read_user(&b, 1, (void *)ua) || bpf_probe_read_user(&b, 1, (void *)(ua + alen - 1))))
			return 0;
		if (g & GS_G_TCP) {
			__u16 fam = 0;
			if (alen < 2 || bpf_probe_read_user(&fam, sizeof(fam), (void *)ua))
				return 0;
			if (alen < (fam == GS_AF_INET6 ? 24 : 16)) /* tcp_v6_connect: SIN6_LEN_RFC2133; tcp_v4_connect */
				return 0;
			struct socket *so = file_socket(f);
			if (!so || BPF_CORE_READ(so, state) != SS_UNCONNECTED)
				return 0;
			struct sock *sk = BPF_CORE_READ(so, sk);
			__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
			if ((family != GS_AF_INET && family != GS_AF_INET6) || fam != family) /* AF_UNSPEC disconnects; others: EAFNOSUPPORT */
				return 0;
			if (BPF_CORE_READ(sk, sk_type) != GS_SOCK_STREAM || BPF_CORE_READ(sk, sk_protocol) != GS_IPPROTO_TCP) /* SOCK_STREAM, TCP */
				return 0;
			if (BPF_CORE_READ(sk, __sk_common.skc_state) != GS_TCP_CLOSE) /* TCP_CLOSE, else EISCONN/EALREADY */
				return 0;
		}
	}
	if ((g & GS_G_SOCKET) && !file_socket(f))
		return 0;
	return 1;
}

/* the hook's guard, from its registers */
static __always_inline int guard_ok(struct gs_hook *h, __u32 hid, struct hooks_ctx *hc)
{
	if (!h->guard)
		return 1;
	struct guard_in in = {.hid = hid, .ret = hc->ret};
	in.fd = reg_at(hc, h->guard_fd);
	in.pos = reg_at(hc, h->guard_pos);
	in.addr = reg_at(hc, h->guard_addr);
	in.alen = reg_at(hc, (h->guard_addr + 1) & 7);
	return gs_guard(&in);
}


#endif
