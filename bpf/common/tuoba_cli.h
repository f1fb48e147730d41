/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What the loaders' command lines share. Define TUOBA_PROG (the command's name) before the
 * include: die() says one sentence on stderr, "TUOBA_PROG: what failed", then an optional
 * "  hint: what to do", and exits with `code`; json_string() writes a JSON string.
 */
#ifndef TUOBA_CLI_H
#define TUOBA_CLI_H

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef TUOBA_PROG
#error "define TUOBA_PROG, the command's name, before including tuoba_cli.h"
#endif

static inline __attribute__((noreturn, format(printf, 3, 4))) void
die(int code, const char *hint, const char *fmt, ...)
{
	va_list ap;

	fputs(TUOBA_PROG ": ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	if (hint)
		fprintf(stderr, "  hint: %s\n", hint);
	exit(code);
}

/* s (up to its NUL, or `max` bytes: SIZE_MAX for no limit) as a JSON string on stdout */
static inline void json_string(const char *s, size_t max)
{
	putchar('"');
	for (size_t i = 0; i < max && s[i]; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == '"' || c == '\\')
			printf("\\%c", c);
		else if (c < 0x20 || c == 0x7f)
			printf("\\u%04x", c);
		else
			putchar(c);
	}
	putchar('"');
}

/*
 * After a light skeleton's __load returned `err`: nothing when it loaded; otherwise the
 * verifier's `log` first (when -v asked for one), then the failure as who runs it makes it:
 * not root, status 1 (the verifier refuses with EACCES too), or a kernel that refused the
 * program, status 3 with `kernel_hint`. Frees `log`.
 */
static inline void load_result(int err, char *log, const char *kernel_hint)
{
	if (err && log && log[0])
		fprintf(stderr, TUOBA_PROG ": the verifier's log:\n%s\n", log);
	free(log);
	if (err && geteuid() != 0)
		die(1, "run it as root (loading BPF programs needs CAP_BPF and CAP_PERFMON)",
		    "not allowed to load the BPF program: %s", strerror(-err));
	if (err)
		die(3, kernel_hint, "the running kernel refused the program: %s", strerror(-err));
}

#endif
