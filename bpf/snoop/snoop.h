/* SPDX-License-Identifier: GPL-2.0 */
/* What snoop.bpf.c and tuoba-snoop share: the ring buffer's events. */
#ifndef TUOBA_SNOOP_H
#define TUOBA_SNOOP_H

/* the ring buffer's size (a power of two, a multiple of the page size): about 1800 events */
#define SNOOP_RINGBUF_SIZE (1 << 20)
#define SNOOP_PATH_LEN 256
#define SNOOP_ARGS_LEN 256
#define SNOOP_COMM_LEN 16

enum snoop_type { SNOOP_EXEC = 0, SNOOP_OPEN = 1 };

/* which events tuoba-snoop asked for (the `want` constant: a bit each) */
#define SNOOP_WANT_EXEC (1u << SNOOP_EXEC)
#define SNOOP_WANT_OPEN (1u << SNOOP_OPEN)
#define SNOOP_WANT_FAILED (1u << 8) /* opens: only the failed ones */

struct snoop_event {
	__u64 ts_ns;   /* CLOCK_MONOTONIC */
	__u32 type;    /* enum snoop_type */
	__u32 pid;     /* the process (thread group) */
	__u32 tid;     /* the thread */
	__u32 ppid;    /* its parent process */
	__u32 uid;
	__u32 flags;   /* open: its O_* flags */
	__s64 ret;     /* open: the file descriptor, or -errno; exec: 0 */
	__u32 args_len; /* exec: bytes of args (NUL-separated, as in /proc/PID/cmdline) */
	__u32 pad;
	char comm[SNOOP_COMM_LEN];
	char path[SNOOP_PATH_LEN]; /* exec: the file the kernel ran; open: the path as given */
	char args[SNOOP_ARGS_LEN];
};

#endif
