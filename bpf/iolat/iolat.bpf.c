// SPDX-License-Identifier: GPL-2.0
/*
 * Block I/O latency per cgroup (the kernel side of tuoba-iolat).
 *
 * block_rq_issue (a request handed to the device driver) stamps the request with the time and
 * the cgroup that owns its I/O: the blkcg of its first bio (bio->bi_blkg, set when the bio was
 * submitted, from the submitting task's cgroup: the nearest one with the io controller on) or,
 * for a request without bios (a flush), the cgroup of the task issuing it. block_rq_complete
 * folds the time since into that cgroup's log2 histogram for the request's operation.
 * Requests are keyed by address; one completed in parts is counted when it is done.
 */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "iolat.h"

char LICENSE[] SEC("license") = "GPL";

/* the operation's bits of a request's cmd_flags (REQ_OP_MASK, a macro: not in the BTF) */
#define OP_MASK ((1u << 8) - 1)

/* set by tuoba-iolat before load: count only this cgroup (0: every cgroup) */
const volatile __u64 only_cgroup = 0;

struct start {
	__u64 ts;
	__u64 cgroup;
	__u64 bytes; /* the request's size when issued (it may complete in parts) */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct start);
} started SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct iolat_key);
	__type(value, struct iolat_hist);
} hists SEC(".maps");

/* lost: [0] requests not stamped (the map was full), [1] histograms not made (full) */
#define TUOBA_LOST_REASONS 2
#include "tuoba_lost.bpf.h"

static __u64 owner(struct request *rq)
{
	struct bio *bio = BPF_CORE_READ(rq, bio);

	if (bio && bpf_core_field_exists(bio->bi_blkg)) {
		__u64 id = BPF_CORE_READ(bio, bi_blkg, blkcg, css.cgroup, kn, id);

		if (id)
			return id;
	}
	return bpf_get_current_cgroup_id();
}

static __u32 slot_of(__u64 us)
{
	__u32 slot = 0;

	/* bounded: at most IOLAT_SLOTS - 1 halvings */
	for (int i = 0; i < IOLAT_SLOTS - 1; i++) {
		if (us < 2)
			break;
		us >>= 1;
		slot++;
	}
	return slot;
}

SEC("tp_btf/block_rq_issue")
int BPF_PROG(on_issue, struct request *rq)
{
	__u64 key = (__u64)rq;
	struct start s = {
		.ts = bpf_ktime_get_ns(),
		.cgroup = owner(rq),
		.bytes = BPF_CORE_READ(rq, __data_len),
	};

	if (only_cgroup && s.cgroup != only_cgroup) {
		bpf_map_delete_elem(&started, &key); /* (a stamp left by an earlier request here) */
		return 0;
	}
	if (bpf_map_update_elem(&started, &key, &s, BPF_ANY))
		count_lost(0);
	return 0;
}

SEC("tp_btf/block_rq_complete")
int BPF_PROG(on_complete, struct request *rq, blk_status_t error, unsigned int nr_bytes)
{
	__u64 key = (__u64)rq;
	struct start *s = bpf_map_lookup_elem(&started, &key);
	struct iolat_key k = {};
	struct iolat_hist *h;
	__u64 delta, bytes;
	__u32 op;

	if (!s)
		return 0;
	/* a request completed in parts: count it once, when nothing is left */
	if (BPF_CORE_READ(rq, __data_len) > nr_bytes)
		return 0;
	delta = bpf_ktime_get_ns() - s->ts;
	k.cgroup = s->cgroup;
	bytes = s->bytes;
	bpf_map_delete_elem(&started, &key);

	op = BPF_CORE_READ(rq, cmd_flags) & OP_MASK;
	k.op = op == REQ_OP_READ ? IOLAT_READ : op == REQ_OP_WRITE ? IOLAT_WRITE : IOLAT_OTHER;
	h = bpf_map_lookup_elem(&hists, &k);
	if (!h) {
		struct iolat_hist zero = {};

		/* (another CPU may have made it first: then that one is used) */
		bpf_map_update_elem(&hists, &k, &zero, BPF_NOEXIST);
		h = bpf_map_lookup_elem(&hists, &k);
		if (!h) {
			count_lost(1);
			return 0;
		}
	}
	__sync_fetch_and_add(&h->slots[slot_of(delta / 1000) & (IOLAT_SLOTS - 1)], 1);
	__sync_fetch_and_add(&h->count, 1);
	__sync_fetch_and_add(&h->total_ns, delta);
	__sync_fetch_and_add(&h->bytes, bytes);
	return 0;
}
