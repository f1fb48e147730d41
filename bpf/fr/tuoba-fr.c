// SPDX-License-Identifier: GPL-2.0
/*
 * tuoba-fr FILE --filter 'OP N' --reduce R [--format text|int64] [--copy] [--json]
 *
 * Computes a filter -> reduce over FILE inside the kernel, on the read path (fr.bpf.c), and
 * prints one number. The file is read through the page cache as usual, but in reduce mode
 * the kernel does not copy the data into this program's buffer at all: the BPF program at
 * copyout folds it into the result and skips the copy. --copy lets the copy happen (the
 * program still computes), to compare. Exit status: 0 done, 1 the data or the file is bad,
 * 2 usage, 3 the running kernel lacks the hook.
 *
 * It loads its BPF program as a light skeleton (fr_skip.lskel.h, or fr_copy.lskel.h for
 * --copy): the kernel runs a loader program that makes the maps and loads, relocates (CO-RE)
 * and verifies the program; this side makes raw bpf() and perf_event_open() calls only
 * (../common/tuoba_skel.h), no libbpf and no libelf.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <linux/types.h>

#include "fr.h"
#include "fr_copy.lskel.h"
#include "fr_skip.lskel.h"
#include "tuoba_skel.h"

#define TUOBA_PROG "tuoba-fr"
#include "tuoba_cli.h"

#define BUF_SIZE (256 * 1024)
#define HOOK "copyout"
#define PATCH "kernel/patches/0001-iov_iter-copyout-visible-to-bpf.patch"

static const char *const ops[] = { "all", "gt", "ge", "lt", "le", "eq", "ne" };
static const char *const reduces[] = { "sum", "count", "min", "max", "mean", "exists" };
static const char *const formats[] = { "text", "int64" };
static int verbose;

static int lookup(const char *const *names, int count, const char *word)
{
	for (int i = 0; i < count; i++)
		if (strcmp(names[i], word) == 0)
			return i;
	return -1;
}

static void parse_filter(const char *text, struct fr_state *s)
{
	char op[16], rest[2];
	long long constant;
	int i;

	if (strcmp(text, "all") == 0) {
		s->op = FR_ALL;
		return;
	}
	if (sscanf(text, " %15s %lld %1s", op, &constant, rest) != 2)
		die(2, "write it as OP N, e.g. --filter 'gt 5' (OP: gt, ge, lt, le, eq, ne), or 'all'",
		    "--filter '%s' is not an operator and an integer", text);
	i = lookup(ops, 7, op);
	if (i <= 0)
		die(2, "the operators are gt, ge, lt, le, eq and ne", "unknown operator '%s' in --filter '%s'",
		    op, text);
	s->op = i;
	s->constant = constant;
}

/* -v: the verifier's log of the program the skeleton loads (ctx: the skeleton's first member) */
static char *log_on(struct bpf_loader_ctx *ctx)
{
	char *log;

	if (!verbose)
		return NULL;
	log = tuoba_verifier_log(ctx);
	if (!log)
		die(1, NULL, "out of memory");
	return log;
}

static const char *describe(const struct fr_state *s, char *out, size_t size)
{
	switch (s->error) {
	case FR_BAD_BYTE:
		if (s->error_byte >= 0x20 && s->error_byte < 0x7f)
			snprintf(out, size, "byte %" PRIu64 " ('%c') is not part of an integer",
				 (uint64_t)s->error_offset, s->error_byte);
		else
			snprintf(out, size, "byte %" PRIu64 " (0x%02x) is not part of an integer",
				 (uint64_t)s->error_offset, s->error_byte);
		break;
	case FR_BAD_SIGN:
		snprintf(out, size, "byte %" PRIu64 ": a '-' with no digits after it",
			 (uint64_t)s->error_offset);
		break;
	case FR_TOO_LONG:
	case FR_RANGE:
		snprintf(out, size, "the value ending at byte %" PRIu64 " is outside the int64 range",
			 (uint64_t)s->error_offset);
		break;
	case FR_BIG_CHUNK:
		snprintf(out, size, "the kernel copied more than %d bytes at once", FR_CHUNK);
		break;
	case FR_READ:
		snprintf(out, size, "the BPF program could not read the kernel's copy of the data");
		break;
	case FR_TRAILING:
		snprintf(out, size, "%u bytes at the end make no whole int64 value", s->carry_len);
		break;
	default:
		snprintf(out, size, "error %u", s->error);
	}
	return out;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "filter", required_argument, 0, 'f' }, { "reduce", required_argument, 0, 'r' },
		{ "format", required_argument, 0, 'F' }, { "json", no_argument, 0, 'j' },
		{ "copy", no_argument, 0, 'c' },         { "verbose", no_argument, 0, 'v' },
		{ "help", no_argument, 0, 'h' },         { 0, 0, 0, 0 },
	};
	struct fr_state s = { 0 };
	int json = 0, copy = 0, opt, fd, err, reduce = -1;
	const char *path, *step;
	struct fr_skip_bpf *skip = NULL;
	struct fr_copy_bpf *copier = NULL;
	int prog_fd, callers_fd, perf_fd, link;
	char *log;
	struct timespec t0, t1;
	unsigned char *buf;
	uint64_t total = 0, key, untouched = 0;
	ssize_t got;
	char why[160];

	s.op = FR_ALL;
	while ((opt = getopt_long(argc, argv, "f:r:F:jcvh", longopts, NULL)) != -1) {
		switch (opt) {
		case 'f':
			parse_filter(optarg, &s);
			break;
		case 'r':
			reduce = lookup(reduces, 6, optarg);
			if (reduce < 0)
				die(2, "the reductions are sum, count, min, max, mean and exists",
				    "unknown reduction '%s' in --reduce", optarg);
			break;
		case 'F':
			if ((err = lookup(formats, 2, optarg)) < 0)
				die(2, "text: ASCII integers one a line; int64: raw little-endian values",
				    "unknown format '%s' in --format", optarg);
			s.format = err;
			break;
		case 'j':
			json = 1;
			break;
		case 'c':
			copy = 1;
			break;
		case 'v':
			verbose = 1;
			break;
		case 'h':
			printf("usage: tuoba-fr FILE --filter 'OP N' --reduce R [--format text|int64] "
			       "[--copy] [--json]\n"
			       "  computes a filter -> reduce over FILE in the kernel, on the read path\n"
			       "  OP: gt ge lt le eq ne (or --filter all); R: sum count min max mean exists\n"
			       "  --copy: let the data reach this program's buffer too (default: it does not)\n");
			return 0;
		default:
			die(2, "see tuoba-fr --help", "bad usage");
		}
	}
	if (optind != argc - 1)
		die(2, "see tuoba-fr --help", optind < argc ? "give one FILE" : "no FILE given");
	if (reduce < 0)
		die(2, "e.g. --reduce sum", "--reduce is missing");
	s.reduce = reduce;
	s.skip_copy = !copy;
	path = argv[optind];

	fd = open(path, O_RDONLY);
	if (fd < 0)
		die(1, NULL, "cannot read %s: %s", path, strerror(errno));
	buf = aligned_alloc(4096, BUF_SIZE);
	if (!buf)
		die(1, NULL, "out of memory");
	memset(buf, 0xa5, BUF_SIZE); /* a pattern: what is still there was never copied over */

	/* one skeleton or the other: a light skeleton loads every program of its object, and the
	 * one that skips the copy loads only on a kernel with CONFIG_BPF_KPROBE_OVERRIDE */
	if (copy) {
		copier = fr_copy_bpf__open();
		if (!copier)
			die(1, NULL, "cannot open the BPF program: %s", strerror(errno));
		log = log_on(&copier->ctx);
		err = fr_copy_bpf__load(copier);
		prog_fd = copier->progs.fr_copy.prog_fd;
		callers_fd = copier->maps.callers.map_fd;
	} else {
		skip = fr_skip_bpf__open();
		if (!skip)
			die(1, NULL, "cannot open the BPF program: %s", strerror(errno));
		log = log_on(&skip->ctx);
		err = fr_skip_bpf__load(skip);
		prog_fd = skip->progs.fr_skip.prog_fd;
		callers_fd = skip->maps.callers.map_fd;
	}
	if (err && log && log[0])
		fprintf(stderr, "tuoba-fr: the verifier's log:\n%s\n", log);
	free(log);
	/* the verifier refuses with EACCES too: who runs it decides which failure this is */
	if (err && geteuid() != 0)
		die(1, "run it as root (loading BPF programs needs CAP_BPF and CAP_PERFMON)",
		    "not allowed to load the BPF program: %s", strerror(-err));
	if (err && !copy)
		die(3, "boot a TuobaOS kernel (CONFIG_BPF_KPROBE_OVERRIDE), or pass --copy to compute "
		       "with the data copied; -v shows the verifier's log",
		    "the running kernel refused the BPF program that skips the copy (%s)",
		    strerror(-err));
	if (err)
		die(3, "run it as root on a kernel with BPF and BTF (a TuobaOS kernel); -v shows the "
		       "verifier's log",
		    "the running kernel refused the BPF program (%s)", strerror(-err));
	link = tuoba_attach_kprobe(prog_fd, HOOK, &perf_fd, &step);
	if (link < 0) {
		err = errno;
		die(3, "boot a TuobaOS kernel: it carries " PATCH " (copyout out of line and on the "
		       "error-injection list) and CONFIG_BPF_KPROBE_OVERRIDE",
		    "the running kernel has no filter->reduce hook: a BPF kprobe%s on %s failed (%s: %s)",
		    copy ? "" : " that skips the copy", HOOK, step, strerror(err));
	}

	s.buf = (uint64_t)(uintptr_t)buf;
	s.len = BUF_SIZE;
	key = ((uint64_t)getpid() << 32) | (uint32_t)syscall(SYS_gettid);
	if (skel_map_update_elem(callers_fd, &key, &s, BPF_ANY) < 0)
		die(1, NULL, "cannot register with the BPF program: %s", strerror(errno));

	clock_gettime(CLOCK_MONOTONIC, &t0);
	while ((got = read(fd, buf, BUF_SIZE)) > 0)
		total += got;
	clock_gettime(CLOCK_MONOTONIC, &t1);
	if (got < 0)
		die(1, NULL, "cannot read %s: %s", path, strerror(errno));

	err = tuoba_map_lookup_elem(callers_fd, &key, &s) < 0 ? errno : 0;
	close(link);
	close(perf_fd);
	fr_copy_bpf__destroy(copier);
	fr_skip_bpf__destroy(skip);
	if (err)
		die(1, NULL, "cannot read the result from the BPF program: %s", strerror(err));
	if (s.bytes_seen != total)
		die(1, "tuoba-fr computes on regular files read through the page cache",
		    "the kernel's program saw %" PRIu64 " of the %" PRIu64 " bytes read from %s",
		    (uint64_t)s.bytes_seen, total, path);
	/* the end of the file ends a last value that has no newline after it */
	if (s.format == FR_TEXT)
		fr_end_value(&s, total);
	else if (s.carry_len)
		fr_fail(&s, FR_TRAILING, total, 0);
	if (s.error)
		die(1, s.format == FR_TEXT ? "text format: one integer a line (--format int64 for raw values)"
					   : NULL,
		    "%s: %s", path, describe(&s, why, sizeof(why)));
	if (s.overflow && (reduce == FR_SUM || reduce == FR_MEAN))
		die(1, NULL, "%s: the sum of the values left the int64 range", path);
	for (size_t i = 0; i < BUF_SIZE; i++)
		untouched += buf[i] == 0xa5;

	double ms = (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6;
	char value[64];
	int none = s.count == 0 && (reduce == FR_MIN || reduce == FR_MAX || reduce == FR_MEAN);

	switch (reduce) {
	case FR_SUM: snprintf(value, sizeof(value), "%" PRId64, (int64_t)s.sum); break;
	case FR_COUNT: snprintf(value, sizeof(value), "%" PRIu64, (uint64_t)s.count); break;
	case FR_MIN: snprintf(value, sizeof(value), "%" PRId64, (int64_t)s.min); break;
	case FR_MAX: snprintf(value, sizeof(value), "%" PRId64, (int64_t)s.max); break;
	case FR_MEAN: snprintf(value, sizeof(value), "%.6f", (double)s.sum / (double)(s.count ? s.count : 1)); break;
	default: snprintf(value, sizeof(value), "%s", s.count ? "true" : "false");
	}
	if (none)
		snprintf(value, sizeof(value), json ? "null" : "none");
	if (json) {
		printf("{\"file\": ");
		json_string(path, SIZE_MAX);
		printf(", \"reduce\": \"%s\", \"filter\": {\"op\": \"%s\", \"value\": %" PRId64
		       "}, \"format\": \"%s\", \"result\": %s, \"sum\": %" PRId64 ", \"count\": %" PRIu64
		       ", \"bytes_read\": %" PRIu64 ", \"bytes_seen_in_kernel\": %" PRIu64
		       ", \"bytes_to_user\": %" PRIu64 ", \"copies\": %" PRIu64 ", \"copies_skipped\": %" PRIu64
		       ", \"buffer_untouched\": %s, \"seconds\": %.6f}\n",
		       reduces[reduce], ops[s.op], (int64_t)s.constant, formats[s.format], value,
		       (int64_t)s.sum, (uint64_t)s.count, total, (uint64_t)s.bytes_seen,
		       (uint64_t)s.bytes_copied, (uint64_t)s.copies, (uint64_t)s.copies_skipped,
		       untouched == BUF_SIZE ? "true" : "false", ms / 1e3);
	} else {
		printf("%s\n", value);
	}
	return 0;
}
