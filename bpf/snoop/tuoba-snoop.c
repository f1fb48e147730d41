// SPDX-License-Identifier: GPL-2.0
/*
 * tuoba-snoop [--exec] [--open] [--failed] [--pid PID] [-d SECONDS] [--json] [COMMAND [ARG...]]
 *
 * What ran and what it opened, from snoop.bpf.c: each program the kernel starts (exec, with
 * its arguments) and each open (the path as given, the flags, the file descriptor or the
 * error), one line each, or one JSON document a line (--json). Traces every process until
 * Ctrl-C or SECONDS, or one process and its descendants (--pid), or runs COMMAND and traces it
 * and its descendants until it exits, then exits with its status, as strace does.
 * Exit status otherwise: 0 done, 1 a failure (said on stderr; not root, say), 2 usage, 3 the
 * kernel lacks the hooks.
 *
 * It loads its BPF programs as a light skeleton (snoop.lskel.h, no libbpf and no libelf at
 * run time) and reads their events from a BPF ring buffer mapped into this process
 * (../common/tuoba_ringbuf.h).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/types.h>

#include "snoop.h"
#include "snoop.lskel.h"
#include "tuoba_ringbuf.h"
#include "tuoba_skel.h"

#define TUOBA_PROG "tuoba-snoop"
#include "tuoba_cli.h"

static volatile sig_atomic_t stop;
static int json;
static __u64 t0;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

static void usage(FILE *to)
{
	fputs("usage: tuoba-snoop [--exec] [--open] [--failed] [--pid PID] [-d SECONDS] [--json] [-v]\n"
	      "                   [COMMAND [ARG...]]\n"
	      "  What ran (exec, with its arguments) and what it opened (path, flags, fd or error).\n"
	      "  Every process until Ctrl-C; or COMMAND and its descendants until it exits (then\n"
	      "  its exit status is this one's); or --pid PID and its descendants.\n"
	      "  -e, --exec              exec events only\n"
	      "  -o, --open              open events only\n"
	      "  -x, --failed            of the opens, only the failed ones\n"
	      "  -p, --pid PID           only this process and the ones it starts from now on\n"
	      "  -d, --duration SECONDS  run this long (default: until Ctrl-C or COMMAND exits)\n"
	      "  -j, --json              one JSON document a line instead of the columns\n"
	      "  -v, --verbose           the verifier's log when the kernel refuses a program\n",
	      to);
}

static __u64 now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts); /* bpf_ktime_get_ns's clock */
	return (__u64)ts.tv_sec * 1000000000ULL + (__u64)ts.tv_nsec;
}

static void on_event(const void *data, __u32 len, void *arg)
{
	const struct snoop_event *e = data;
	double t;

	(void)arg;
	if (len < sizeof(*e))
		return;
	t = e->ts_ns >= t0 ? (e->ts_ns - t0) / 1e9 : 0.0;
	if (json) {
		printf("{\"time\": %.6f, \"event\": \"%s\", \"pid\": %u, \"tid\": %u, \"ppid\": %u, "
		       "\"uid\": %u, \"comm\": ",
		       t, e->type == SNOOP_EXEC ? "exec" : "open", e->pid, e->tid, e->ppid, e->uid);
		json_string(e->comm, sizeof(e->comm));
		printf(", \"path\": ");
		json_string(e->path, sizeof(e->path));
		if (e->type == SNOOP_EXEC) {
			printf(", \"args\": [");
			for (__u32 i = 0, n = 0; i < e->args_len && i < sizeof(e->args); n++) {
				size_t l = strnlen(e->args + i, e->args_len - i);

				if (n)
					printf(", ");
				json_string(e->args + i, l);
				i += l + 1;
			}
			printf("]");
		} else {
			printf(", \"flags\": %u, \"ret\": %lld", e->flags, (long long)e->ret);
			if (e->ret < 0) {
				printf(", \"error\": ");
				json_string(strerror((int)-e->ret), 200);
			}
		}
		printf("}\n");
		return;
	}
	printf("%-10.6f %-7u %-7u %-5u %-16.16s ", t, e->pid, e->ppid, e->uid, e->comm);
	if (e->type == SNOOP_EXEC) {
		__u32 n = e->args_len < sizeof(e->args) ? e->args_len : sizeof(e->args);

		while (n && !e->args[n - 1])
			n--; /* (the last argument's NUL) */
		printf("exec  %-5s %.*s  ", "", (int)sizeof(e->path), e->path);
		for (__u32 i = 0; i < n; i++)
			putchar(e->args[i] ? e->args[i] : ' ');
		putchar('\n');
	} else {
		printf("open  %-5lld %.*s", (long long)e->ret, (int)sizeof(e->path), e->path);
		if (e->ret < 0)
			printf("  (%s)", strerror((int)-e->ret));
		putchar('\n');
	}
}

static long parse_number(const char *opt, const char *s, long max, const char *hint)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || *end || end == s || v <= 0 || v > max)
		die(2, hint, "%s '%s' is not a %s", opt, s, strcmp(opt, "--pid") ? "number of seconds" :
		    "process id");
	return v;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "exec", no_argument, NULL, 'e' },
		{ "open", no_argument, NULL, 'o' },
		{ "failed", no_argument, NULL, 'x' },
		{ "pid", required_argument, NULL, 'p' },
		{ "duration", required_argument, NULL, 'd' },
		{ "json", no_argument, NULL, 'j' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	__u32 want = 0, failed = 0;
	long duration = -1, pid = 0;
	int opt, verbose = 0, go[2] = { -1, -1 }, status = 0;
	char *log = NULL;
	struct snoop_bpf *skel;
	struct tuoba_ringbuf rb;
	pid_t child = 0;
	__u64 deadline, lost[2] = { 0, 0 };
	__u8 one = 1;

	/* '+': options end at COMMAND, whose own options are its own */
	while ((opt = getopt_long(argc, argv, "+eoxp:d:jvh", longopts, NULL)) != -1) {
		switch (opt) {
		case 'e':
			want |= SNOOP_WANT_EXEC;
			break;
		case 'o':
			want |= SNOOP_WANT_OPEN;
			break;
		case 'x':
			failed = SNOOP_WANT_FAILED;
			break;
		case 'p':
			pid = parse_number("--pid", optarg, 0x3fffffff, "give a running process's id");
			break;
		case 'd':
			duration = parse_number("--duration", optarg, 86400, "give whole seconds, 1 to 86400");
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
	if (!want)
		want = SNOOP_WANT_EXEC | SNOOP_WANT_OPEN;
	if (failed && !(want & SNOOP_WANT_OPEN))
		die(2, "--failed picks among the opens: leave out --exec, or add --open",
		    "--failed with --exec alone traces nothing");
	if (pid && optind < argc)
		die(2, "trace a running process (--pid) or a command, not both",
		    "--pid %ld and a command '%s' were both given", pid, argv[optind]);
	if (pid && kill((pid_t)pid, 0) && errno == ESRCH)
		die(2, "give a running process's id (see ps)", "--pid %ld: no such process", pid);

	skel = snoop_bpf__open();
	if (!skel)
		die(1, NULL, "cannot open the BPF program: %s", strerror(errno));
	skel->rodata->want = want | failed;
	skel->rodata->follow = pid || optind < argc;
	skel->rodata->self = (__u32)getpid();
	if (verbose && !(log = tuoba_verifier_log(&skel->ctx)))
		die(1, NULL, "out of memory");
	load_result(snoop_bpf__load(skel), log,
		    "the kernel needs BTF and the sched and raw syscall tracepoints (the bpf feature); run with -v for the verifier's log");
	if (snoop_bpf__attach(skel) < 0)
		die(3, "the kernel needs tp_btf on the sched_process and sys_enter/sys_exit tracepoints",
		    "cannot attach to exec and open: %s", strerror(errno));
	if (tuoba_ringbuf_open(&rb, skel->maps.events.map_fd, SNOOP_RINGBUF_SIZE))
		die(1, NULL, "cannot map the ring buffer: %s", strerror(errno));

	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	if (optind < argc) {
		/* the command waits (on a pipe) until it is followed, then runs */
		if (pipe2(go, O_CLOEXEC))
			die(1, NULL, "pipe: %s", strerror(errno));
		fflush(NULL);
		child = fork();
		if (child < 0)
			die(1, NULL, "fork: %s", strerror(errno));
		if (child == 0) {
			char c;

			signal(SIGINT, SIG_DFL);
			signal(SIGTERM, SIG_DFL);
			close(go[1]);
			if (read(go[0], &c, 1) < 0)
				_exit(127);
			execvp(argv[optind], argv + optind);
			fprintf(stderr, "tuoba-snoop: cannot run '%s': %s\n", argv[optind], strerror(errno));
			_exit(errno == ENOENT ? 127 : 126);
		}
		pid = child;
	}
	if (pid) {
		__u32 key = (__u32)pid;

		if (skel_map_update_elem(skel->maps.traced.map_fd, &key, &one, BPF_ANY))
			die(1, NULL, "cannot follow process %ld: %s", pid, strerror(errno));
	}
	t0 = now_ns();
	if (!json)
		printf("%-10s %-7s %-7s %-5s %-16s %-5s %-5s %s\n", "TIME(s)", "PID", "PPID", "UID", "COMM",
		       "EVENT", "RET", "PATH");
	if (child) {
		close(go[0]);
		close(go[1]); /* the command runs */
	} else {
		fprintf(stderr, "tuoba-snoop: tracing %s%s%s%s\n",
			want == (SNOOP_WANT_EXEC | SNOOP_WANT_OPEN) ? "exec and open" :
			want == SNOOP_WANT_EXEC ? "exec" : "open",
			failed ? " (failed opens)" : "", pid ? " of the process and its descendants" : "",
			duration > 0 ? "" : " (Ctrl-C to stop)");
	}
	fflush(NULL);
	deadline = duration > 0 ? t0 + (__u64)duration * 1000000000ULL : 0;
	while (!stop) {
		if (tuoba_ringbuf_wait(&rb, 100) < 0)
			die(1, NULL, "poll: %s", strerror(errno));
		tuoba_ringbuf_consume(&rb, on_event, NULL);
		fflush(stdout);
		if (child && waitpid(child, &status, WNOHANG) == child)
			break; /* (its events are in the ring buffer: they are read below) */
		if (deadline && now_ns() >= deadline)
			break;
		if (pid && !child && kill((pid_t)pid, 0) && errno == ESRCH)
			break; /* the process is gone (its descendants may not be) */
	}
	snoop_bpf__detach(skel);
	memset(&skel->links, 0, sizeof(skel->links));
	tuoba_ringbuf_consume(&rb, on_event, NULL);
	fflush(stdout);
	for (__u32 i = 0; i < 2; i++)
		tuoba_map_lookup_elem(skel->maps.lost.map_fd, &i, &lost[i]);
	if (lost[0] || lost[1])
		fprintf(stderr, "tuoba-snoop: %llu events were lost (the ring buffer was full) and %llu "
			"processes were not followed (too many)\n",
			(unsigned long long)lost[0], (unsigned long long)lost[1]);
	tuoba_ringbuf_close(&rb);
	snoop_bpf__destroy(skel);
	if (child) {
		if (stop && waitpid(child, &status, WNOHANG) == 0)
			return 130; /* interrupted while the command runs */
		return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
	}
	return 0;
}
