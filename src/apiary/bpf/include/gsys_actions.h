/* gsys: actions (signals, Override verdicts, DenyConnect marks), counters and posting events */
#ifndef APIARY_GSYS_ACTIONS_H
#define APIARY_GSYS_ACTIONS_H

/* the current process is the agent: same tgid and same start time (decided here, never by name or path),
 * or, for the tracing programs, one of its helpers: in the agent's helpers cgroup (its HAProxy and DNS socket
 * holder, started by it);
 * with_start 0: the tgid only (cgroup programs do not get the task helpers on every kernel) */
static __always_inline int agent_exempt(__u32 tgid, int with_start)
{
	__u32 zero = 0;
	struct gs_agent *a = bpf_map_lookup_elem(&gs_agent, &zero);
	if (!a || !a->tgid || !a->tick_ns)
		return 0;
	if (with_start && a->helpers_cgroup && bpf_get_current_cgroup_id() == a->helpers_cgroup)
		return 1; /* (tracing programs only: the cgroup programs judge by tgid alone, as for the agent) */
	if (a->tgid != tgid)
		return 0;
	if (!with_start)
		return 1;
	struct task_struct *t = (void *)bpf_get_current_task();
	return BPF_CORE_READ(t, group_leader, start_boottime) / a->tick_ns == a->start_ticks;
}

static __always_inline void gs_count(__u32 hook, __u32 what)
{
	__u32 idx = (hook * GS_NCNT + what) % (GS_HOOKS * GS_NCNT);
	__u64 *v = bpf_map_lookup_elem(&gs_counters, &idx);
	if (v)
		*v += 1;
}

/* the matched selector's action, then the event (rate limited); ev may be a map value */
static __always_inline void act_and_post(struct gs_event *ev, struct gs_hook *h, __u32 hid, __s32 matched,
					 __u8 action, __u8 post, __u8 sig, __u64 rate, __u64 pid_tgid)
{
	__u32 zero = 0, tgid = pid_tgid >> 32;
	gs_count(hid, GS_CNT_MATCHED);
	ev->selector = matched;
	ev->action = action;
	int monitor = h->flags & GS_F_MONITOR;
	__u8 held = GS_EV_MONITOR; /* what an action not taken is flagged with */
	if (!monitor && action >= GS_ACT_SIGKILL && action <= GS_ACT_OVERRIDE && agent_exempt(tgid, 1)) {
		monitor = 1;
		held = GS_EV_EXEMPT;
		gs_count(hid, GS_CNT_EXEMPT);
	}
	if (action == GS_ACT_SIGKILL || action == GS_ACT_SIGNAL) {
		if (monitor) {
			ev->flags |= held;
		} else {
			bpf_send_signal(action == GS_ACT_SIGKILL ? GS_SIGKILL : sig);
			ev->flags |= GS_EV_ENFORCED;
			gs_count(hid, GS_CNT_ENFORCED);
		}
	} else if (action == GS_ACT_OVERRIDE) {
		if (monitor) {
			ev->flags |= held;
		} else {
			__s32 *verdict = bpf_map_lookup_elem(&gs_verdict, &zero);
			if (verdict)
				*verdict = -(__s32)sig;
			ev->flags |= GS_EV_ENFORCED;
			gs_count(hid, GS_CNT_ENFORCED);
		}
	} else if (action == GS_ACT_DENYCONNECT) {
		if (monitor) {
			ev->flags |= held;
		} else {
			__u32 tid = (__u32)pid_tgid;
			bpf_map_update_elem(&gs_deny, &tid, &hid, BPF_ANY);
			ev->flags |= GS_EV_ENFORCED;
			gs_count(hid, GS_CNT_ENFORCED);
		}
	}
	if (!post)
		return;
	if (rate) {
		struct gs_selector *rs = matched >= 0 ? sel_at(h, matched) : 0;
		__u8 scope = rs ? rs->rate_scope : 0;
		__u32 who = scope == GS_RATE_PROCESS ? tgid : scope == GS_RATE_GLOBAL ? 0 : (__u32)pid_tgid; /* thread, process, global */
		__u64 rk = ((__u64)hid << 40) | ((__u64)(matched & 0xff) << 32) | who;
		__u64 *last = bpf_map_lookup_elem(&gs_rate, &rk);
		if (last && ev->ktime - *last < rate)
			return;
		bpf_map_update_elem(&gs_rate, &rk, &ev->ktime, BPF_ANY);
	}
	/* send up to the last byte of the last string slot in use: an event without strings is ~130 bytes,
	 * one with a short path ~150, not 1.4 KB (the agent reads each slot by its length; the rest is zero) */
	__u64 size = offsetof(struct gs_event, str);
	__u32 nstr = 0, tail = 0;
	for (__u32 a = 0; a < GS_ARGS; a++)
		if (a < ev->nargs && ev->slen[a]) {
			nstr = a + 1;
			tail = ev->slen[a];
		}
	if (nstr)
		size += (nstr - 1) * GS_ARGSTR + tail;
	/* at most the event (in assembly: the compiler would clamp a copy of the register, not the one passed) */
	asm volatile("if %[s] <= %[max] goto +1\n\t"
		     "%[s] = %[max]"
		     : [s] "+r"(size)
		     : [max] "i"(sizeof(*ev)));
	ev->size = size;
	if (ring_put(ev, size))
		gs_count(hid, GS_CNT_LOST);
	else
		gs_count(hid, GS_CNT_POSTED);
}

/* DenyConnect: the connect() a hook marked fails with EPERM (IPv4 and IPv6: tcp_connect sees both) */
static __always_inline int deny_marked(void)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	if (bpf_map_lookup_elem(&gs_deny, &tid)) {
		bpf_map_delete_elem(&gs_deny, &tid);
		return 0;
	}
	return 1;
}


#endif
