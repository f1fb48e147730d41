/* The user-space baseline bench/fr.py compares tuoba-fr with: the same question (the sum of the
 * values > 0 of a text file of integers, one a line) answered by a plain C reader, read() into
 * a 64 KiB buffer and parsed there: every byte copied to user space, parsed at C's speed.
 * Usage: fr-reader FILE */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	static char buf[65536];
	long long sum = 0, v = 0;
	int neg = 0, in = 0, fd;
	ssize_t n;

	if (argc != 2) {
		fprintf(stderr, "usage: fr-reader FILE\n");
		return 2;
	}
	fd = open(argv[1], O_RDONLY);
	if (fd < 0) {
		perror(argv[1]);
		return 1;
	}
	while ((n = read(fd, buf, sizeof(buf))) > 0) {
		for (ssize_t i = 0; i < n; i++) { /* a value may straddle two reads */
			char c = buf[i];
			if (c >= '0' && c <= '9') {
				v = v * 10 + (c - '0');
				in = 1;
			} else if (c == '-') {
				neg = 1;
			} else {
				if (in && !neg && v > 0)
					sum += v;
				v = 0;
				neg = in = 0;
			}
		}
	}
	if (n < 0) {
		perror(argv[1]);
		return 1;
	}
	if (in && !neg && v > 0)
		sum += v;
	printf("%lld\n", sum);
	return 0;
}
