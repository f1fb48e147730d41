/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What TuobaOS's loaders need besides their light skeletons (`bpftool gen skeleton -L`, whose
 * only include is libbpf's header-only <bpf/skel_internal.h>): the bpf() commands that header
 * has no wrapper for, a kprobe attach, and the verifier's log. Raw system calls, like
 * skel_internal.h: a loader needs no libbpf and no libelf at run time, so it builds against
 * any C library, statically too (stage 2: musl).
 */
#ifndef TUOBA_SKEL_H
#define TUOBA_SKEL_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <linux/perf_event.h>
#include <bpf/skel_internal.h>

#define TUOBA_KPROBE_TYPE "/sys/bus/event_source/devices/kprobe/type"

/* 0, or -1 with errno set (ENOENT: no such key) */
static inline int tuoba_map_lookup_elem(int fd, const void *key, void *value)
{
	const size_t attr_sz = offsetofend(union bpf_attr, flags);
	union bpf_attr attr;

	memset(&attr, 0, attr_sz);
	attr.map_fd = fd;
	attr.key = (long)key;
	attr.value = (long)value;
	return skel_sys_bpf(BPF_MAP_LOOKUP_ELEM, &attr, attr_sz);
}

/* the key after `key` (the first one for NULL) in *next: 0, or -1 with errno set (ENOENT:
 * no more keys) */
static inline int tuoba_map_get_next_key(int fd, const void *key, void *next)
{
	const size_t attr_sz = offsetofend(union bpf_attr, next_key);
	union bpf_attr attr;

	memset(&attr, 0, attr_sz);
	attr.map_fd = fd;
	attr.key = (long)key;
	attr.next_key = (long)next;
	return skel_sys_bpf(BPF_MAP_GET_NEXT_KEY, &attr, attr_sz);
}

/*
 * The verifier's log (-v) of what a light skeleton loads: its loader program passes the
 * context's log to each program it loads, and each load writes over the one before, so after
 * a failure the log is the refused program's. Call it between __open and __load with the
 * skeleton's ctx (its first member); it returns the log (to print after a failed __load, then
 * free), or NULL when out of memory.
 */
#define TUOBA_LOG_SIZE (16 * 1024 * 1024) /* as large as libbpf's */

static inline char *tuoba_verifier_log(struct bpf_loader_ctx *ctx)
{
	char *buf = calloc(1, TUOBA_LOG_SIZE);

	if (!buf)
		return NULL;
	ctx->log_level = 1;
	ctx->log_size = TUOBA_LOG_SIZE;
	ctx->log_buf = (long)buf;
	return buf;
}

/*
 * Runs the loaded kprobe program `prog_fd` at the entry of the kernel function `func`, as
 * libbpf's bpf_program__attach_kprobe does: a perf event of the kernel's kprobe PMU (no
 * tracefs), with the program attached by a BPF link. Returns the link's fd, to close before
 * *perf_fd, or -1 with errno set and *step naming what failed.
 */
static inline int tuoba_attach_kprobe(int prog_fd, const char *func, int *perf_fd,
				      const char **step)
{
	struct perf_event_attr attr;
	int type, link, err;
	FILE *f;

	*perf_fd = -1;
	*step = "no kprobe PMU in " TUOBA_KPROBE_TYPE;
	f = fopen(TUOBA_KPROBE_TYPE, "re");
	if (!f)
		return -1;
	err = fscanf(f, "%d", &type) == 1 ? 0 : EINVAL;
	fclose(f);
	if (err) {
		errno = err;
		return -1;
	}
	memset(&attr, 0, sizeof(attr));
	attr.size = sizeof(attr);
	attr.type = type;
	attr.config1 = (__u64)(unsigned long)func; /* kprobe_func */
	attr.config2 = 0;                          /* probe_offset */
	*step = "perf_event_open";
	/* every process (-1) needs a CPU: any one, a kprobe runs its program wherever it fires */
	*perf_fd = syscall(__NR_perf_event_open, &attr, -1, 0, -1, PERF_FLAG_FD_CLOEXEC);
	if (*perf_fd < 0)
		return -1;
	*step = "BPF_LINK_CREATE";
	link = skel_link_create(prog_fd, *perf_fd, BPF_PERF_EVENT);
	if (link >= 0) {
		*step = "PERF_EVENT_IOC_ENABLE";
		if (ioctl(*perf_fd, PERF_EVENT_IOC_ENABLE, 0) == 0)
			return link;
	}
	err = errno;
	if (link >= 0)
		close(link);
	close(*perf_fd);
	*perf_fd = -1;
	errno = err;
	return -1;
}

#endif
