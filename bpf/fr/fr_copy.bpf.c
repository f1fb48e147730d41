// SPDX-License-Identifier: GPL-2.0
/*
 * tuoba-fr --copy: the data still reaches the caller (for comparison, and for kernels whose
 * copyout is traceable but not on the error-injection list). fr.bpf.h has the rest.
 */
#include "fr.bpf.h"

SEC("kprobe/copyout")
int fr_copy(struct pt_regs *ctx)
{
	return on_copyout(ctx, 0);
}
