/* SPDX-License-Identifier: GPL-2.0 */
/*
 * In-kernel filter -> reduce on the read path (the kernel side of tuoba-fr), shared by its
 * two BPF objects: fr_skip.bpf.c (reduce mode) and fr_copy.bpf.c (--copy). They are two
 * objects, not two programs of one, because tuoba-fr loads a light skeleton, which loads every
 * program of its object, and the program that skips the copy (bpf_override_return) loads and
 * attaches only on a kernel with CONFIG_BPF_KPROBE_OVERRIDE and copyout on the error-injection
 * list: --copy must not need either.
 *
 * A kprobe on copyout(to, from, n) -- kept out of line and on the error-injection list by
 * kernel/patches/0001 -- sees each piece of file data the kernel copies to a user buffer.
 * When the copying thread registered that buffer (map `callers`, keyed by pid_tgid: a caller
 * is a thread and its buffer, so concurrent readers stay apart), the program parses the data
 * (ASCII integers one a line, or raw little-endian int64), keeps the values that pass the
 * filter and folds them into the reduction. In reduce mode (fr_skip) it then overrides
 * copyout's return value with 0 ("nothing left to copy"), so the copy never happens: only
 * the result, read from the map at the end, reaches user space.
 */
#ifndef TUOBA_FR_BPF_H
#define TUOBA_FR_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "fr.h"

char LICENSE[] SEC("license") = "GPL";

/* Weak: the image's fr.bpf.o is both objects linked into one (`bpftool gen object`), where
 * each map is then one, shared by the two programs. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u64);
	__type(value, struct fr_state);
} callers SEC(".maps") __weak;

struct chunk {
	__u8 data[FR_CHUNK];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct chunk);
} scratch SEC(".maps") __weak;

struct walk {
	struct fr_state *s;
	struct chunk *c;
	__u64 base; /* offset of the chunk in the data */
};

static long text_step(__u64 i, void *ctx)
{
	struct walk *w = ctx;
	struct fr_state *s = w->s;

	if (i >= FR_CHUNK)
		return 1;
	fr_text_byte(s, w->c->data[i], w->base + i);
	return s->error ? 1 : 0;
}

static long int64_step(__u64 i, void *ctx)
{
	struct walk *w = ctx;

	if (i >= FR_CHUNK)
		return 1;
	fr_int64_byte(w->s, w->c->data[i]);
	return 0;
}

static __always_inline int on_copyout(struct pt_regs *ctx, int skip)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct fr_state *s = bpf_map_lookup_elem(&callers, &id);
	__u64 to = PT_REGS_PARM1(ctx);
	const void *from = (const void *)PT_REGS_PARM2(ctx);
	__u64 n = PT_REGS_PARM3(ctx);
	struct chunk *c;
	__u32 zero = 0;
	struct walk w;

	if (!s || to < s->buf || to - s->buf >= s->len || n > s->len - (to - s->buf))
		return 0;
	s->copies++;
	if (s->error)
		goto copy;
	if (n > FR_CHUNK) {
		fr_fail(s, FR_BIG_CHUNK, s->bytes_seen, 0);
		goto copy;
	}
	c = bpf_map_lookup_elem(&scratch, &zero);
	if (!c || bpf_probe_read_kernel(c->data, n, from)) {
		fr_fail(s, FR_READ, s->bytes_seen, 0);
		goto copy;
	}
	w.s = s;
	w.c = c;
	w.base = s->bytes_seen;
	if (s->format == FR_INT64)
		bpf_loop(n, int64_step, &w, 0);
	else
		bpf_loop(n, text_step, &w, 0);
	s->bytes_seen += n;
	if (skip && !s->error) {
		s->copies_skipped++;
		bpf_override_return(ctx, 0);
		return 0;
	}
copy:
	s->bytes_copied += n;
	return 0;
}

#endif
