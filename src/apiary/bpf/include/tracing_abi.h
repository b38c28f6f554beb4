/* Layouts shared by the generic syscall sensor (gsys.bpf.c) and apiary.sensors.tracing.abi. */
#ifndef APIARY_TRACING_ABI_H
#define APIARY_TRACING_ABI_H

#define MSG_GENERIC 10

#define GS_HOOKS 64      /* hooks across all loaded policies */
#define GS_PER_SYSCALL 7 /* hooks watching one syscall */
#define GS_ARGS 5
#define GS_SELECTORS 5
#define GS_FILTERS 5
#define GS_VALS 4
#define GS_STR 128 /* compared bytes of a string value */
#define GS_ARGSTR 256 /* bytes of a string argument kept (event and matching) */
#define GS_BIN 256
#define GS_QUICK 4 /* values of a hook's quick reject (struct gs_quick) */

/* argument kinds */
#define GS_ARG_INT 1
#define GS_ARG_UINT 2
#define GS_ARG_STRING 3
#define GS_ARG_FD 4
#define GS_ARG_SOCKADDR 5
#define GS_ARG_FILEPTR 6 /* a struct file * in kernel memory (LSM hooks) */
#define GS_ARG_DATALOC 7 /* tracepoint record: __data_loc char[] (u32: len << 16 | offset) */
#define GS_ARG_CHARS 8   /* tracepoint record: char name[N] inside the record */
#define GS_ARG_KSTRING 9 /* a char * in kernel memory */
#define GS_ARG_SOCK 10   /* a struct sock * in kernel memory (kprobes): a gs_sockinfo in the string slot */

#define GS_ARG_SKB 13     /* a struct sk_buff * (kprobes): its IPv4/TCP/UDP headers, a gs_skbinfo in the string slot */
#define GS_ARG_PATHPTR 14 /* a struct path * in kernel memory (kprobes), resolved to its full path */
#define GS_ARG_BPRM 15    /* a struct linux_binprm * (kprobes, raw tracepoints): its file's full path */
#define GS_ARG_BUF 12    /* a user buffer; its length is the register arg_off[a] (char_buf + sizeArgIndex) */
#define GS_ARG_CRED 11   /* a struct cred * in kernel memory (kprobes): a gs_credinfo in the string slot */
#define GS_ARG_SOCKETPTR 17 /* a struct socket * in kernel memory (kprobes): its sock, a gs_sockinfo */
#define GS_ARG_KSOCKADDR 18 /* a struct sockaddr * in kernel memory (kprobes): family, port, IPv4 address */
#define GS_ARG_CONNSOCK 16 /* connect(): the socket of the fd in register arg_off[a] (family, type, protocol,
			    * state, bound source) with the destination from the user sockaddr in register
			    * arg_index[a]: a gs_sockinfo in the string slot */

/* register sources past the six syscall arguments (arg_index, arg_off, guard registers) */
#define GS_REG_RET 6  /* the syscall's return value (hooks evaluated at the exit) */
#define GS_REG_CRED 7 /* the current task's credentials (struct cred *), as they are when the hook runs */
#define GS_REG_EXE 8  /* the current process's executable file (struct file *: mm->exe_file) */
#define GS_REG_NONE 0xff

/* Guards: what the kernel function a hook is realised for needs to be called at all, checked on the
 * kernel objects before the hook's selectors (bits of gs_hook.guard; all set bits must hold). The fd is
 * register guard_fd, the file position guard_pos, the user sockaddr guard_addr (its length the register
 * after it). */
#define GS_G_FILE 1       /* the fd is an open file that fdget() accepts (not an O_PATH file) */
#define GS_G_READ 2       /* ... opened for reading the kernel can do (FMODE_READ and FMODE_CAN_READ) */
#define GS_G_WRITE 4      /* ... opened for writing the kernel can do (FMODE_WRITE and FMODE_CAN_WRITE) */
#define GS_G_PREAD 8      /* positional read: pos >= 0 and the file has FMODE_PREAD */
#define GS_G_PWRITE 16    /* positional write: pos >= 0 and the file has FMODE_PWRITE */
#define GS_G_POS_OPT 32   /* with PREAD/PWRITE: pos == -1 means the current position (preadv2/pwritev2) */
#define GS_G_SOCKET 64    /* the file is a socket (a socket inode with the socket file operations) */
#define GS_G_TCP 128      /* the socket is an unconnected TCP socket (AF_INET/AF_INET6, SOCK_STREAM, IPPROTO_TCP,
			   * SS_UNCONNECTED, TCP_CLOSE) and the sockaddr's family and length are the socket's */
#define GS_G_RET_OK 256   /* at the exit: the syscall returned >= 0 */
#define GS_G_ADDR 512     /* the user sockaddr is 0..128 readable bytes (move_addr_to_kernel succeeds) */
#define GS_G_CRED_NEW 1024 /* at the exit: the task's credentials are not those it had at the entry (commit_creds
			    * ran); the entry program records them */

struct gs_credinfo {
	__u32 uid, gid, suid, sgid, euid, egid, fsuid, fsgid;
	__u32 securebits;
	__u32 user_ns; /* inode number of the user namespace */
	__u64 cap_inheritable, cap_permitted, cap_effective;
};

struct gs_sockinfo {
	__u16 family;
	__u16 type;
	__u16 protocol;
	__u16 sport; /* host order */
	__u16 dport; /* host order */
	__u8 state;
	__u8 _pad;
	__u32 saddr; /* host order (AF_INET) */
	__u32 daddr;
	__u8 saddr6[16]; /* AF_INET6: network order */
	__u8 daddr6[16];
};

#define GS_NS 4      /* matchNamespaces entries per selector */
#define GS_FOLLOW 64 /* followChildren / followForks slots (bits of gs_mb) */

/* pseudo syscall numbers for LSM hooks (keys of gs_syscalls next to real syscall numbers) */
#define GS_NR_LSM_FILE_OPEN 4096
#define GS_NR_LSM_FILE_PERMISSION 4097
#define GS_NR_LSM_BPRM_CHECK 4098
/* keys of gs_syscalls (an array): syscall numbers, the LSM pseudo numbers, then 8192 + n for the attach
 * points named by a link's cookie (tracepoints, kprobes, uprobes, raw tracepoints) */
#define GS_NR_DYN 8192
#define GS_NR_MAX 12288

/* filter operators */
#define GS_OP_EQUAL 1
#define GS_OP_NOTEQUAL 2
#define GS_OP_PREFIX 3
#define GS_OP_NOTPREFIX 4
#define GS_OP_POSTFIX 5
#define GS_OP_NOTPOSTFIX 6
#define GS_OP_GT 7
#define GS_OP_LT 8
#define GS_OP_MASK 9
#define GS_OP_INRANGE 10
#define GS_OP_NOTINRANGE 11
#define GS_OP_DADDR 12
#define GS_OP_NOTDADDR 13
#define GS_OP_DPORT 14
#define GS_OP_NOTDPORT 15
#define GS_OP_FAMILY 16
#define GS_OP_SADDR 17
#define GS_OP_NOTSADDR 18
#define GS_OP_SPORT 19
#define GS_OP_NOTSPORT 20
#define GS_OP_PROTOCOL 21

/* binary / pid operators */
#define GS_BIN_IN 1
#define GS_BIN_NOTIN 2
#define GS_BIN_PREFIX 3
#define GS_BIN_NOTPREFIX 4

/* actions */
#define GS_ACT_POST 1
#define GS_ACT_NOPOST 2
#define GS_ACT_SIGKILL 3
#define GS_ACT_SIGNAL 4
#define GS_ACT_DENYCONNECT 5
#define GS_ACT_OVERRIDE 6 /* LSM hooks: return -signal (the errno) */

/* hook flags */
#define GS_F_ENABLED 1
#define GS_F_SCOPED 2  /* only processes in the policy's endpoint cgroups */
#define GS_F_MONITOR 4 /* report the action, do not act */
#define GS_F_BINARIES 8 /* some selector matches on the binary: hash it */
#define GS_F_RETURN 16  /* decided at return: entry parts at entry, matchReturnArgs and action at exit */
#define GS_F_AT_EXIT 32 /* evaluated as a whole at the syscall's exit (args from the return value, the task) */

/* event flags */
#define GS_EV_MONITOR 1
#define GS_EV_ENFORCED 2
#define GS_EV_TRUNC 4
#define GS_EV_EXEMPT 8 /* the agent's own process: the action was not taken (agent exemption) */

/* counters per hook: index hook * GS_NCNT + what */
#define GS_CNT_MATCHED 0
#define GS_CNT_POSTED 1
#define GS_CNT_ENFORCED 2
#define GS_CNT_LOST 3
#define GS_CNT_EXEMPT 4 /* actions not taken on the agent's own process */
#define GS_NCNT 5

/* Strings are matched by 64-bit FNV-1a hashes of the compared bytes (prefix hashes of the argument
 * for Equal/Prefix, hashes of its reversed tail for Postfix), computed once per argument: matching
 * costs O(1) per value and the verifier sees no nested byte loops. */
struct gs_filter {
	__u8 arg;
	__u8 op;
	__u8 nvals;
	__u8 _pad;
	__u32 lens[GS_VALS];
	__s64 ints[GS_VALS][2];
	__u64 hash[GS_VALS];
};

/* namespace types of matchNamespaces */
#define GS_NS_UTS 1
#define GS_NS_IPC 2
#define GS_NS_MNT 3
#define GS_NS_PID 4
#define GS_NS_PID_FOR_CHILDREN 5
#define GS_NS_NET 6
#define GS_NS_TIME 7
#define GS_NS_TIME_FOR_CHILDREN 8
#define GS_NS_CGROUP 9
#define GS_NS_USER 10

struct gs_nsf {
	__u8 type;
	__u8 op; /* GS_BIN_IN / GS_BIN_NOTIN */
	__u8 n;
	__u8 _pad;
	__u32 vals[GS_VALS];
};

struct gs_selector {
	__u8 nfilters;
	__u8 action;
	__u8 signal;
	__u8 post;
	__u8 bin_op;
	__u8 nbins;
	__u8 pid_op;
	__u8 npids;
	__u32 pids[GS_VALS];
	__u64 rate_ns;
	__u32 bin_lens[GS_VALS];
	__u64 bin_hash[GS_VALS];
	struct gs_filter f[GS_FILTERS];
	__u8 bin_follow; /* 1 + bit of gs_mb set for children of a matching binary; 0: no followChildren */
	__u8 pid_follow; /* 1 + bit of gs_mb set for descendants of the pids; 0: no followForks */
	__u8 nns;
	__u8 cap_type;   /* 0 none, 1 effective, 2 inheritable, 3 permitted */
	__u8 cap_op;     /* GS_BIN_IN / GS_BIN_NOTIN */
	__u8 nret;       /* 0 or 1 matchReturnArgs filter */
	__u8 rate_scope; /* 0 thread, 1 process, 2 global */
	__u8 pid_ns;     /* matchPIDs isNamespacePID: compare the PID in the process's own PID namespace */
	__u64 cap_mask;
	struct gs_nsf ns[GS_NS];
	struct gs_filter ret; /* its arg field is unused: the filter is on the return value */
};

/* A hook's quick reject at a syscall's entry (n = 0: none): every selector compares the user string in
 * register reg with Equal/Prefix, so a call whose first 8 bytes (read as a little-endian u64, zero past the
 * NUL) match none of val[v] under mask[v] cannot match: it is dropped before anything else is read. An Equal
 * value shorter than 8 bytes includes its NUL in the mask; a longer value compares its first 8 bytes. */
struct gs_quick {
	__u8 reg;
	__u8 n;
	__u8 _pad[6];
	__u64 val[GS_QUICK];
	__u64 mask[GS_QUICK];
};

struct gs_hook {
	__u32 policy_id;
	__u16 hook_id;
	__u8 nargs;
	__u8 nsel;
	__u8 flags;
	__u8 guard_fd;   /* guard registers (GS_REG_NONE: unused) */
	__u8 guard_pos;
	__u8 guard_addr;
	__u8 arg_index[GS_ARGS];
	__u8 arg_kind[GS_ARGS];
	__u8 ret_kind;  /* GS_ARG_INT / GS_ARG_UINT for return hooks */
	__u8 hash_mask; /* bit a: some selector compares string argument a (hash it) */
	__u8 hash_len[GS_ARGS]; /* bytes of argument a the comparisons need (0: all, for Postfix) */
	__u8 copy_mask; /* bit a: argument a is a buffer read when the call returns (returnCopy) */
	__u16 arg_off[GS_ARGS];  /* tracepoint record: field offset */
	__u8 arg_size[GS_ARGS];  /* tracepoint record: field size */
	__u8 _pad3;
	__u16 guard; /* GS_G_* bits */
	struct gs_selector sel[GS_SELECTORS];
	struct gs_quick quick;
};

/* followChildren / followForks: what sets bit i of a process's gs_mb entry */
#define GS_FOLLOW_BIN 1
#define GS_FOLLOW_PID 2
struct gs_follow {
	__u8 kind;
	__u8 op; /* GS_BIN_IN / GS_BIN_PREFIX (the positive form) */
	__u8 n;
	__u8 pid_ns; /* GS_FOLLOW_PID: the pids are as the process's own PID namespace sees them */
	__u32 lens[GS_VALS];
	__u64 hash[GS_VALS];
	__u32 pids[GS_VALS];
};

/* the agent's own process, exempt from Sigkill/Signal/Override/DenyConnect (tgid 0: nobody): its tgid and
 * its start time in clock ticks since boot (/proc/PID/stat field 22), so a reused pid is not exempt */
struct gs_agent {
	__u32 tgid;
	__u32 _pad;
	__u64 start_ticks;
	__u64 tick_ns; /* nanoseconds per clock tick (1e9 / sysconf(_SC_CLK_TCK)) */
	__u64 helpers_cgroup; /* the cgroup of the agent's own helpers (its HAProxy, the DNS socket holder); 0: none */
};

struct gs_pend_key {
	__u32 tid;
	__u32 hook;
};

struct gs_hashes {
	__u64 pre[GS_ARGS][GS_ARGSTR]; /* pre[a][n]: hash of the first n bytes of argument a */
	__u64 suf[GS_ARGS][GS_ARGSTR]; /* suf[a][n]: hash of the last n bytes, read backwards */
	__u64 bin[GS_BIN];             /* prefix hashes of the process's binary path */
	__u32 bin_len;
	__u32 _pad;
};

#define GS_FNV_BASIS 0xcbf29ce484222325ULL
#define GS_FNV_PRIME 0x100000001b3ULL

struct gs_sys {
	__u16 n;
	__u16 hooks[8]; /* at most GS_PER_SYSCALL used; 8 so an index can be masked */
	__u16 _pad;
};

struct gs_scope_key {
	__u32 policy_id;
	__u32 _pad;
	__u64 cgroup_id;
};

struct gs_event {
	__u8 type;
	__u8 _pad0[3];
	__u32 size;
	__u64 ktime;
	__u32 pid;
	__u32 tid;
	__u64 proc_ktime;
	__u64 cgroup_id;
	__u16 hook_id;
	__s8 selector;
	__u8 action;
	__u8 flags;
	__u8 nargs;
	__u16 syscall_nr;
	__s64 ret;
	__u8 sel_mask; /* return hooks: selectors whose entry parts matched */
	__u8 _pad2[7];
	__s64 ints[GS_ARGS];
	__u16 slen[GS_ARGS];
	__u16 _pad1[3];
	char str[GS_ARGS][GS_ARGSTR];
};

/* a packet: the same leading fields as a socket, so the socket filters apply */
struct gs_skbinfo {
	struct gs_sockinfo s;
	__u32 len;
	__u32 mark;
	__u32 priority;
	__u32 hash;
};

#endif
