/* Full path of a struct path, resolved in the kernel by walking dentries up to the root and across
 * mounts (bpf_d_path is not allowed from tracepoints). The path is written backwards into a per-CPU
 * buffer; walk_path() returns its length, the path starting at pathwalk_buf.path[PATH_BUF - len]. */
#ifndef APIARY_PATHWALK_H
#define APIARY_PATHWALK_H

#ifndef PATH_BUF
#define PATH_BUF 4096
#endif
#ifndef PATH_DEPTH
#define PATH_DEPTH 128
#endif

struct pathwalk_buf {
	char path[PATH_BUF + 256];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pathwalk_buf);
} pathwalk SEC(".maps");

struct walk_ctx {
	struct pathwalk_buf *s; /* looked up once per walk, not per component */
	struct dentry *dentry;
	struct mount *mnt;
	int off;
	int done;
	int trunc;
};

static long walk_step(__u32 i, void *data)
{
	struct walk_ctx *c = data;
	struct pathwalk_buf *s = c->s;
	struct dentry *d = c->dentry;
	struct mount *mnt = c->mnt;
	struct dentry *parent = BPF_CORE_READ(d, d_parent);
	struct dentry *mnt_root = BPF_CORE_READ(mnt, mnt.mnt_root);

	if (d == mnt_root || d == parent) {
		struct mount *mp = BPF_CORE_READ(mnt, mnt_parent);
		if (d != mnt_root || mnt == mp) {
			c->done = 1;
			return 1;
		}
		c->dentry = BPF_CORE_READ(mnt, mnt_mountpoint);
		c->mnt = mp;
		return 0;
	}
	__u32 len = BPF_CORE_READ(d, d_name.len);
	const unsigned char *name = BPF_CORE_READ(d, d_name.name);
	len &= 255;
	int off = c->off - (int)len - 1;
	if (off < 1) {
		c->trunc = 1;
		return 1;
	}
	bpf_probe_read_kernel(&s->path[(off + 1) & (PATH_BUF - 1)], len, name);
	s->path[off & (PATH_BUF - 1)] = '/';
	c->off = off;
	c->dentry = parent;
	return 0;
}

static __always_inline __u32 walk_path(const struct path *p, int *trunc)
{
	struct walk_ctx c = {};
	__u32 zero = 0;
	c.s = bpf_map_lookup_elem(&pathwalk, &zero);
	if (!c.s) {
		*trunc = 1;
		return 0;
	}
	struct vfsmount *vfs = BPF_CORE_READ(p, mnt);
	c.dentry = BPF_CORE_READ(p, dentry);
	c.mnt = (struct mount *)((void *)vfs - bpf_core_field_offset(struct mount, mnt));
	c.off = PATH_BUF;
	bpf_loop(PATH_DEPTH, walk_step, &c, 0);
	if (!c.done)
		c.trunc = 1;
	*trunc = c.trunc;
	if (c.off >= PATH_BUF) { /* the root itself */
		c.s->path[PATH_BUF - 1] = '/';
		c.off = PATH_BUF - 1;
	}
	return PATH_BUF - c.off;
}

/* copy the last walked path (len bytes) to dst, which has room for PATH_BUF bytes */
static __always_inline __u32 copy_walked(char *dst, __u32 len)
{
	__u32 zero = 0;
	struct pathwalk_buf *s = bpf_map_lookup_elem(&pathwalk, &zero);
	len &= (PATH_BUF - 1);
	if (!s || !len)
		return 0;
	bpf_probe_read_kernel(dst, len, &s->path[(PATH_BUF - len) & (PATH_BUF - 1)]);
	return len;
}

#endif
