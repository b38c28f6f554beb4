/* Layouts shared by the process sensor (BPF) and apiary.sensors.process.abi (Python).
 * A kernel test compares the Python layouts with the BTF of the built object. */
#ifndef APIARY_PROCESS_ABI_H
#define APIARY_PROCESS_ABI_H

#define MSG_EXEC 1
#define MSG_FORK 2
#define MSG_EXIT 3
#define MSG_BENCH 100

#define EXEC_F_REEXEC (1 << 0)
#define EXEC_F_CLONE (1 << 1)
#define EXEC_F_TRUNC_ARGS (1 << 2)
#define EXEC_F_TRUNC_PATH (1 << 3)
#define EXEC_F_TRUNC_CWD (1 << 4)
#define EXEC_F_ERR_CWD (1 << 5)
#define EXEC_F_ERR_ARGS (1 << 6)
#define EXEC_F_NO_PARENT (1 << 8)

#define PROC_F_EXECED (1 << 0)
#define PROC_F_CLONE (1 << 1)
#define PROC_F_PROCFS (1 << 2)

#define PATH_BUF 4096   /* longest binary path or cwd, incl. nothing else */
#define ARGS_BUF 4096   /* longest argv (NUL-separated) before it is cut and flagged */
#define PATH_DEPTH 128  /* most path components walked */

/* per-CPU counters, index = what */
enum apiary_counter {
	CNT_EXEC = 0,      /* exec messages written */
	CNT_FORK,
	CNT_EXIT,
	CNT_BENCH,
	CNT_LOST_EXEC,     /* ring buffer full: message lost */
	CNT_LOST_FORK,
	CNT_LOST_EXIT,
	CNT_LOST_BENCH,
	CNT_PROCS_FULL,    /* live-process map full: entry not stored */
	CNT_MAX,
};

struct msg_hdr {
	__u8 type;
	__u8 _pad[3];
	__u32 size;
	__u64 ktime;
};

struct msg_exec {
	struct msg_hdr hdr;
	__u32 pid;
	__u32 tid;
	__u32 ppid;
	__u32 flags;
	__u64 parent_ktime;
	__u32 uid;
	__u32 euid;
	__u32 gid;
	__u32 egid;
	__u32 auid;
	__u32 _pad;
	__u64 cgroup_id;
	__u16 binary_len;
	__u16 cwd_len;
	__u16 args_len;
	__u16 _pad2;
	/* followed by binary_len + cwd_len + args_len bytes */
};

struct msg_fork {
	struct msg_hdr hdr;
	__u32 pid;
	__u32 tid;
	__u32 ppid;
	__u32 _pad;
	__u64 parent_ktime;
};

struct msg_exit {
	struct msg_hdr hdr;
	__u32 pid;
	__u32 tid;
	__u64 proc_ktime;
	__u32 code; /* kernel exit_code: status << 8 | signal */
	__u32 _pad;
};

struct msg_bench {
	struct msg_hdr hdr;
	__u64 seq;
};

#define BIN_MAX 256

/* the binary a live process runs, keyed by tgid (matchBinaries) */
struct proc_binary {
	__u32 len;
	char path[BIN_MAX];
};

/* the kernel's table of live processes, keyed by tgid */
struct proc_entry {
	__u64 ktime;
	__u64 parent_ktime;
	__u32 ppid;
	__u32 flags;
};

#endif
