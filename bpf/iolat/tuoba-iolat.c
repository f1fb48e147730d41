// SPDX-License-Identifier: GPL-2.0
/*
 * tuoba-iolat [-d SECONDS] [--cgroup PATH] [--json]
 *
 * Block I/O latency per cgroup and per operation, as log2 histograms of microseconds, from
 * iolat.bpf.c: each request is timed from its issue to the device to its completion and
 * counted for the cgroup that owns its I/O. Runs for SECONDS (default: until Ctrl-C), then
 * prints each cgroup's histograms with its path under /sys/fs/cgroup, or one JSON document.
 * I/O is the cgroup's that submitted it, at the nearest cgroup with the io controller on
 * (systemd turns it on for a unit with IOAccounting=yes; container engines do for theirs).
 * Exit status: 0 done, 1 a failure (said on stderr; not root, say), 2 usage, 3 the kernel
 * lacks the hooks.
 *
 * It loads its BPF programs as a light skeleton (iolat.lskel.h): the kernel runs a loader
 * program that makes the maps and loads, relocates (CO-RE) and verifies the programs; this
 * side makes raw bpf() calls only (../common/tuoba_skel.h), no libbpf and no libelf.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <linux/types.h>

#include "iolat.h"
#include "iolat.lskel.h"
#include "tuoba_skel.h"

#define TUOBA_PROG "tuoba-iolat"
#include "tuoba_cli.h"

#define CGROUP_ROOT "/sys/fs/cgroup"
#define MAX_KEYS 4096

static const char *const op_names[] = { "read", "write", "other" };
static volatile sig_atomic_t stop;
static int verbose;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

static void usage(FILE *to)
{
	fputs("usage: tuoba-iolat [-d SECONDS] [--cgroup PATH] [--json] [-v]\n"
	      "  Block I/O latency per cgroup and operation, as log2 histograms (microseconds).\n"
	      "  -d, --duration SECONDS  run this long (default: until Ctrl-C)\n"
	      "  -c, --cgroup PATH       only this cgroup (a directory under " CGROUP_ROOT ")\n"
	      "  -j, --json              one JSON document instead of the histograms\n"
	      "  -v, --verbose           the verifier's log when the kernel refuses a program\n",
	      to);
}

/* cgroup id -> path: the ids are the inode numbers of the directories under /sys/fs/cgroup */
struct cg {
	__u64 id;
	char *path;
};
static struct cg *cgs;
static size_t ncgs, cap_cgs;

static int collect(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)ftw;
	if (flag != FTW_D)
		return 0;
	if (ncgs == cap_cgs) {
		cap_cgs = cap_cgs ? 2 * cap_cgs : 256;
		cgs = realloc(cgs, cap_cgs * sizeof(*cgs));
		if (!cgs)
			die(1, NULL, "out of memory");
	}
	cgs[ncgs].id = st->st_ino;
	cgs[ncgs].path = strdup(path[strlen(CGROUP_ROOT)] ? path + strlen(CGROUP_ROOT) : "/");
	ncgs++;
	return 0;
}

/* whether the cgroup directory `dir` has `name` in its cgroup.controllers (*is_cgroup: the
 * file exists, so it is a cgroup v2 directory) */
static int has_controller(const char *dir, const char *name, int *is_cgroup)
{
	char path[4200], word[64];
	FILE *f;
	int found = 0;

	snprintf(path, sizeof(path), "%s/cgroup.controllers", dir);
	f = fopen(path, "r");
	*is_cgroup = f != NULL;
	if (!f)
		return 0;
	while (!found && fscanf(f, "%63s", word) == 1)
		found = strcmp(word, name) == 0;
	fclose(f);
	return found;
}

static const char *cgroup_path(__u64 id)
{
	for (size_t i = 0; i < ncgs; i++)
		if (cgs[i].id == id)
			return cgs[i].path;
	return NULL;
}

static int by_path(const void *a, const void *b)
{
	const struct iolat_key *x = a, *y = b;
	const char *px = cgroup_path(x->cgroup), *py = cgroup_path(y->cgroup);
	int c = strcmp(px ? px : "~", py ? py : "~");

	if (c)
		return c;
	if (x->cgroup != y->cgroup)
		return x->cgroup < y->cgroup ? -1 : 1;
	return (int)x->op - (int)y->op;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "duration", required_argument, NULL, 'd' },
		{ "cgroup", required_argument, NULL, 'c' },
		{ "json", no_argument, NULL, 'j' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	const char *only = NULL;
	long duration = -1;
	int json = 0, opt, err, is_cgroup;
	char *log = NULL;
	struct iolat_bpf *skel;
	struct iolat_key *keys, key, next;
	struct iolat_hist h;
	size_t nkeys = 0;
	__u64 lost[2] = { 0, 0 };
	struct stat st;
	char *end;

	while ((opt = getopt_long(argc, argv, "d:c:jvh", longopts, NULL)) != -1) {
		switch (opt) {
		case 'd':
			errno = 0;
			duration = strtol(optarg, &end, 10);
			if (errno || *end || end == optarg || duration <= 0 || duration > 86400)
				die(2, "give whole seconds, 1 to 86400", "--duration '%s' is not a number of seconds",
				    optarg);
			break;
		case 'c':
			only = optarg;
			break;
		case 'j':
			json = 1;
			break;
		case 'v':
			verbose++;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc)
		die(2, "see tuoba-iolat --help", "unexpected argument '%s'", argv[optind]);
	skel = iolat_bpf__open();
	if (!skel)
		die(1, NULL, "cannot open the BPF program: %s", strerror(errno));
	if (only) {
		char full[4096];

		if (strncmp(only, CGROUP_ROOT "/", strlen(CGROUP_ROOT) + 1) == 0)
			snprintf(full, sizeof(full), "%s", only);
		else
			snprintf(full, sizeof(full), CGROUP_ROOT "%s%s", only[0] == '/' ? "" : "/", only);
		if (stat(full, &st) || !S_ISDIR(st.st_mode))
			die(2, "give a cgroup's directory, e.g. /system.slice/ssh.service",
			    "--cgroup '%s': no cgroup directory %s", only, full);
		if (!has_controller(full, "io", &is_cgroup) && is_cgroup)
			fprintf(stderr, "tuoba-iolat: %s has no io controller: its I/O is counted for the "
				"nearest cgroup above it that has one (systemd: IOAccounting=yes)\n", only);
		if (!is_cgroup)
			die(2, "give a directory under " CGROUP_ROOT ", e.g. /system.slice/ssh.service",
			    "--cgroup '%s': %s is not a cgroup v2 directory", only, full);
		skel->rodata->only_cgroup = st.st_ino;
	}
	if (verbose && !(log = tuoba_verifier_log(&skel->ctx)))
		die(1, NULL, "out of memory");
	load_result(iolat_bpf__load(skel), log,
		    "the kernel needs BTF and the block tracepoints (the bpf feature); run with -v for the verifier's log");
	if (iolat_bpf__attach(skel) < 0)
		die(3, "the kernel needs tp_btf on block_rq_issue and block_rq_complete",
		    "cannot attach to the block tracepoints: %s", strerror(errno));

	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	fprintf(stderr, "tuoba-iolat: tracing block I/O%s%s%s\n", only ? " of " : "", only ? only : "",
		duration > 0 ? "" : " (Ctrl-C to stop)");
	for (long waited = 0; !stop && (duration < 0 || waited < duration * 10); waited++)
		usleep(100000);
	iolat_bpf__detach(skel); /* the maps hold still while they are read */
	/* (detach leaves the closed fds in the skeleton: destroy would close them again) */
	memset(&skel->links, 0, sizeof(skel->links));

	keys = calloc(MAX_KEYS, sizeof(*keys));
	if (!keys)
		die(1, NULL, "out of memory");
	for (err = tuoba_map_get_next_key(skel->maps.hists.map_fd, NULL, &next); !err && nkeys < MAX_KEYS;
	     err = tuoba_map_get_next_key(skel->maps.hists.map_fd, &key, &next)) {
		keys[nkeys++] = next;
		key = next;
	}
	for (__u32 i = 0; i < 2; i++)
		tuoba_map_lookup_elem(skel->maps.lost.map_fd, &i, &lost[i]);
	nftw(CGROUP_ROOT, collect, 32, FTW_PHYS);
	qsort(keys, nkeys, sizeof(*keys), by_path);

	if (json)
		printf("{\"cgroups\": [");
	for (size_t i = 0, shown = 0; i < nkeys; i++) {
		const char *path = cgroup_path(keys[i].cgroup);
		int top = 0;

		if (tuoba_map_lookup_elem(skel->maps.hists.map_fd, &keys[i], &h))
			continue;
		shown++;
		for (int s = 0; s < IOLAT_SLOTS; s++)
			if (h.slots[s])
				top = s;
		if (json) {
			printf("%s\n  {\"cgroup\": ", shown > 1 ? "," : "");
			if (path)
				json_string(path, SIZE_MAX);
			else
				printf("null");
			printf(", \"cgroup_id\": %llu, \"op\": \"%s\", \"count\": %llu, \"bytes\": %llu, "
			       "\"mean_us\": %.1f, \"hist\": [",
			       (unsigned long long)keys[i].cgroup, op_names[keys[i].op % 3],
			       (unsigned long long)h.count, (unsigned long long)h.bytes,
			       h.count ? h.total_ns / 1000.0 / h.count : 0.0);
			for (int s = 0; s <= top; s++)
				printf("%s{\"from_us\": %llu, \"count\": %llu}", s ? ", " : "",
				       s ? 1ULL << s : 0ULL, (unsigned long long)h.slots[s]);
			printf("]}");
			continue;
		}
		printf("%s  %s  %llu requests, %llu bytes, mean %.1f us\n", path ? path : "(cgroup gone)",
		       op_names[keys[i].op % 3], (unsigned long long)h.count, (unsigned long long)h.bytes,
		       h.count ? h.total_ns / 1000.0 / h.count : 0.0);
		for (int s = 0; s <= top; s++) {
			int bar = h.count ? (int)(40 * h.slots[s] / h.count) : 0;

			printf("  %10llu -> %-10llu us : %-8llu |%.*s%*s|\n", s ? 1ULL << s : 0ULL,
			       (2ULL << s) - 1, (unsigned long long)h.slots[s], bar,
			       "########################################", 40 - bar, "");
		}
	}
	if (json)
		printf("%s], \"lost\": {\"requests\": %llu, \"histograms\": %llu}}\n", nkeys ? "\n" : "",
		       (unsigned long long)lost[0], (unsigned long long)lost[1]);
	else if (!nkeys)
		printf("no block I/O was completed while tracing\n");
	if (!json && (lost[0] || lost[1]))
		fprintf(stderr, "tuoba-iolat: %llu requests and %llu histograms were not counted (maps full)\n",
			(unsigned long long)lost[0], (unsigned long long)lost[1]);
	iolat_bpf__destroy(skel);
	return 0;
}
