// SPDX-License-Identifier: GPL-2.0
/*
 * Exec and open events (the kernel side of tuoba-snoop).
 *
 * sched_process_exec fires once a new program replaced the process's old one: the event has
 * the file the kernel ran (bprm->filename) and the program's arguments, read from the new
 * address space (mm->arg_start..arg_end, where exec has just written them). An open is the
 * pair of raw syscall tracepoints around an openat(2) or openat2(2) (and open(2), creat(2)
 * where the architecture has them): the entry keeps the path's user address and the flags by
 * thread, the exit makes the event with the result, a file descriptor or -errno. (Not fexit
 * on do_sys_openat2: arm64 has BPF trampolines for kernel functions only from Linux 6.5, with
 * ftrace direct calls; the TuobaOS kernel is 6.1.) Each event is written straight into a BPF
 * ring buffer, whose loss is counted.
 *
 * With `follow` set, only processes in `traced` (the command tuoba-snoop started, put there
 * before it runs) and their descendants (added at fork, removed at exit) are followed.
 */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "snoop.h"

char LICENSE[] SEC("license") = "GPL";

/* set by tuoba-snoop before load */
const volatile __u32 want = SNOOP_WANT_EXEC | SNOOP_WANT_OPEN;
const volatile __u32 follow = 0;
const volatile __u32 self = 0; /* tuoba-snoop's own process: never followed */

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, SNOOP_RINGBUF_SIZE);
} events SEC(".maps");

/* the followed processes (tgid -> 1) */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, __u8);
} traced SEC(".maps");

/* an open system call in progress, by thread: what its entry said */
struct opening {
	const char *filename; /* (a user address) */
	__u32 flags;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct opening);
} opening SEC(".maps");

/* [0] events lost (the ring buffer was full), [1] processes not followed (the map was full) */
#define TUOBA_LOST_REASONS 2
#include "tuoba_lost.bpf.h"

static __always_inline bool followed(__u32 tgid)
{
	if (tgid == self)
		return false;
	return !follow || bpf_map_lookup_elem(&traced, &tgid);
}

/* an event of the current task, its common fields filled; NULL when not wanted or lost */
static __always_inline struct snoop_event *start(__u32 type)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u64 id = bpf_get_current_pid_tgid();
	struct snoop_event *e;

	if (!(want & (1u << type)) || !followed(id >> 32))
		return NULL;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost(0);
		return NULL;
	}
	e->ts_ns = bpf_ktime_get_ns();
	e->type = type;
	e->pid = id >> 32;
	e->tid = (__u32)id;
	e->ppid = BPF_CORE_READ(task, real_parent, tgid);
	e->uid = (__u32)bpf_get_current_uid_gid();
	e->flags = 0;
	e->ret = 0;
	e->args_len = 0;
	e->pad = 0;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	return e;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(on_fork, struct task_struct *parent, struct task_struct *child)
{
	__u32 ptgid, ctgid;
	__u8 one = 1;

	if (!follow)
		return 0;
	ptgid = BPF_CORE_READ(parent, tgid);
	ctgid = BPF_CORE_READ(child, tgid);
	if (ptgid == ctgid || !bpf_map_lookup_elem(&traced, &ptgid))
		return 0; /* a thread, or not followed */
	if (bpf_map_update_elem(&traced, &ctgid, &one, BPF_ANY))
		count_lost(1);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(on_exit, struct task_struct *p)
{
	__u32 tgid;

	if (!follow || BPF_CORE_READ(p, pid) != BPF_CORE_READ(p, tgid))
		return 0; /* a thread of a process that goes on */
	tgid = BPF_CORE_READ(p, tgid);
	bpf_map_delete_elem(&traced, &tgid);
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(on_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	struct snoop_event *e = start(SNOOP_EXEC);
	unsigned long arg_start, arg_end;
	__u32 len;

	if (!e)
		return 0;
	bpf_probe_read_kernel_str(e->path, sizeof(e->path), BPF_CORE_READ(bprm, filename));
	arg_start = BPF_CORE_READ(p, mm, arg_start);
	arg_end = BPF_CORE_READ(p, mm, arg_end);
	len = arg_end > arg_start ? arg_end - arg_start : 0;
	if (len > SNOOP_ARGS_LEN - 1)
		len = SNOOP_ARGS_LEN - 1; /* (and the mask: a bound the verifier sees) */
	len &= SNOOP_ARGS_LEN - 1;
	if (bpf_probe_read_user(e->args, len, (void *)arg_start))
		len = 0;
	e->args_len = len;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/* the open system calls' numbers (the raw syscall tracepoints give the number) */
#if defined(__TARGET_ARCH_arm64)
#define NR_OPENAT 56
#define NR_OPENAT2 437
#elif defined(__TARGET_ARCH_x86)
#define NR_OPEN 2
#define NR_CREAT 85
#define NR_OPENAT 257
#define NR_OPENAT2 437
#else
#error "tuoba-snoop: no open system call numbers for this architecture"
#endif

/* creat(2) is open(2) with these flags */
#define CREAT_FLAGS (00100 | 01000 | 01) /* O_CREAT | O_TRUNC | O_WRONLY */

SEC("tp_btf/sys_enter")
int BPF_PROG(on_sys_enter, struct pt_regs *regs, long id)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct opening o = {};
	__u32 tid = (__u32)pid_tgid;

	if (!(want & SNOOP_WANT_OPEN))
		return 0;
	if (id == NR_OPENAT || id == NR_OPENAT2) {
		o.filename = (const char *)PT_REGS_PARM2_CORE_SYSCALL(regs);
		if (id == NR_OPENAT) {
			o.flags = (__u32)PT_REGS_PARM3_CORE_SYSCALL(regs);
		} else {
			__u64 flags = 0; /* struct open_how's first member */

			bpf_probe_read_user(&flags, sizeof(flags), (void *)PT_REGS_PARM3_CORE_SYSCALL(regs));
			o.flags = (__u32)flags;
		}
#ifdef NR_OPEN
	} else if (id == NR_OPEN || id == NR_CREAT) {
		o.filename = (const char *)PT_REGS_PARM1_CORE_SYSCALL(regs);
		o.flags = id == NR_CREAT ? CREAT_FLAGS : (__u32)PT_REGS_PARM2_CORE_SYSCALL(regs);
#endif
	} else {
		return 0;
	}
	if (!followed(pid_tgid >> 32))
		return 0;
	if (bpf_map_update_elem(&opening, &tid, &o, BPF_ANY))
		count_lost(0);
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(on_sys_exit, struct pt_regs *regs, long ret)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct opening *pending, o;
	struct snoop_event *e;

	if (!(want & SNOOP_WANT_OPEN))
		return 0;
	pending = bpf_map_lookup_elem(&opening, &tid);
	if (!pending)
		return 0; /* not an open, or not followed */
	o = *pending;
	bpf_map_delete_elem(&opening, &tid);
	if ((want & SNOOP_WANT_FAILED) && ret >= 0)
		return 0;
	e = start(SNOOP_OPEN);
	if (!e)
		return 0;
	e->ret = ret;
	e->flags = o.flags;
	if (bpf_probe_read_user_str(e->path, sizeof(e->path), o.filename) < 0)
		e->path[0] = 0;
	bpf_ringbuf_submit(e, 0);
	return 0;
}
