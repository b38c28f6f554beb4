/* The process sensor's maps that the tracing sensor shares (the loader hands gsys the process sensor's
 * map fds): the ring buffer both write, the table of live processes and their binaries; and the one way
 * to write the ring. Declared once, here, for process.bpf.c and gsys.bpf.c. */
#ifndef APIARY_SHARED_MAPS_H
#define APIARY_SHARED_MAPS_H

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct proc_entry);
} procs SEC(".maps");

/* the binary each live process runs (first BIN_MAX bytes), for in-kernel matchBinaries */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct proc_binary);
} binaries SEC(".maps");

/* Wake the agent once per wakeup_bytes written (0: on every record). A wake-up is an irq_work, which raises
 * a self-IPI: per record it costs more than the record (in a VM each IPI is an exit). So a record forces
 * one only when it carries the waiting data across a multiple of wakeup_bytes, never on every record
 * while the agent is behind (it is draining then, and the level-triggered poll sees what waits). Two CPUs
 * racing at a boundary may both wake or both miss it: a miss is made up at the next boundary, and the
 * agent also drains on a short timer. Each object has its own copy (rodata): the loader sets the same
 * value in both. */
const volatile __u64 wakeup_bytes = 0;

/* bytes a record of size takes in the ring: its 8-byte header, rounded up to 8 */
#define RB_RECORD_BYTES(size) ((((size) + 7) & ~7ULL) + 8)

static __always_inline __u64 rb_flags(__u64 size)
{
	__u64 wb = wakeup_bytes;
	if (!wb)
		return 0;
	__u64 before = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	return before / wb != (before + RB_RECORD_BYTES(size)) / wb ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
}

/* one record into the shared ring: 0, or < 0 when it is full */
static __always_inline long ring_put(void *rec, __u64 size)
{
	return bpf_ringbuf_output(&events, rec, size, rb_flags(size));
}

#endif
