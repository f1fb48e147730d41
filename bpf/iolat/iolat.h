/* SPDX-License-Identifier: GPL-2.0 */
/* What iolat.bpf.c and tuoba-iolat share: the histogram map's key and value. */
#ifndef TUOBA_IOLAT_H
#define TUOBA_IOLAT_H

/* log2 buckets of microseconds: slot 0 counts [0, 2) us, slot k > 0 [2^k, 2^(k+1)) us */
#define IOLAT_SLOTS 32

enum iolat_op { IOLAT_READ = 0, IOLAT_WRITE = 1, IOLAT_OTHER = 2 };

struct iolat_key {
	__u64 cgroup; /* the cgroup v2 id (its directory's inode number) */
	__u32 op;     /* enum iolat_op */
	__u32 pad;
};

struct iolat_hist {
	__u64 slots[IOLAT_SLOTS];
	__u64 count;
	__u64 total_ns;
	__u64 bytes;
};

#endif
