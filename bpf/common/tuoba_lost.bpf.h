/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The BPF side's count of what it could not record, by reason (a full map, a full ring
 * buffer): the `lost` array map, which the loader reads at the end and reports. Define
 * TUOBA_LOST_REASONS (how many counters) before the include.
 */
#ifndef TUOBA_LOST_BPF_H
#define TUOBA_LOST_BPF_H

#ifndef TUOBA_LOST_REASONS
#error "define TUOBA_LOST_REASONS, the number of counters, before including tuoba_lost.bpf.h"
#endif

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TUOBA_LOST_REASONS);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

static __always_inline void count_lost(__u32 which)
{
	__u64 *n = bpf_map_lookup_elem(&lost, &which);

	if (n)
		__sync_fetch_and_add(n, 1);
}

#endif
