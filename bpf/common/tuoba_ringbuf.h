/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Reading a BPF ring buffer (BPF_MAP_TYPE_RINGBUF) without libbpf: the map's pages mapped as
 * the kernel lays them out (kernel/bpf/ringbuf.c) — a consumer page the reader writes its
 * position to, then the producer's page and the data pages, mapped twice in a row so that a
 * record that wraps around is contiguous. Each record is an 8-byte header (its length, with
 * the busy and discard bits, and a page offset) and its data, rounded up to 8 bytes.
 */
#ifndef TUOBA_RINGBUF_H
#define TUOBA_RINGBUF_H

#include <errno.h>
#include <poll.h>
#include <sys/mman.h>
#include <unistd.h>
#include <linux/bpf.h>

struct tuoba_ringbuf {
	int fd;
	size_t size;                /* the map's max_entries: a power of two */
	size_t page;
	unsigned long *consumer_pos;
	unsigned long *producer_pos;
	char *data;
};

/* maps the ring buffer map `fd` of `size` bytes: 0, or -1 with errno set */
static inline int tuoba_ringbuf_open(struct tuoba_ringbuf *rb, int fd, size_t size)
{
	void *p;

	rb->fd = fd;
	rb->size = size;
	rb->page = (size_t)sysconf(_SC_PAGESIZE);
	p = mmap(NULL, rb->page, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED)
		return -1;
	rb->consumer_pos = p;
	p = mmap(NULL, rb->page + 2 * size, PROT_READ, MAP_SHARED, fd, (off_t)rb->page);
	if (p == MAP_FAILED) {
		int err = errno;

		munmap(rb->consumer_pos, rb->page);
		errno = err;
		return -1;
	}
	rb->producer_pos = p;
	rb->data = (char *)p + rb->page;
	return 0;
}

static inline void tuoba_ringbuf_close(struct tuoba_ringbuf *rb)
{
	munmap(rb->producer_pos, rb->page + 2 * rb->size);
	munmap(rb->consumer_pos, rb->page);
}

/*
 * Hands each committed record to `fn` (discarded ones are passed over), up to the first one
 * still being written, and moves the consumer position past them. Returns how many records
 * `fn` got.
 */
static inline long tuoba_ringbuf_consume(struct tuoba_ringbuf *rb,
					 void (*fn)(const void *data, __u32 len, void *arg), void *arg)
{
	unsigned long cons = __atomic_load_n(rb->consumer_pos, __ATOMIC_ACQUIRE), prod;
	long n = 0;

	for (;;) {
		const __u32 *hdr;
		__u32 len;

		prod = __atomic_load_n(rb->producer_pos, __ATOMIC_ACQUIRE);
		if (cons >= prod)
			break;
		hdr = (const __u32 *)(rb->data + (cons & (rb->size - 1)));
		len = __atomic_load_n(hdr, __ATOMIC_ACQUIRE);
		if (len & BPF_RINGBUF_BUSY_BIT)
			break;
		cons += (BPF_RINGBUF_HDR_SZ + (len & ~BPF_RINGBUF_DISCARD_BIT) + 7) & ~7UL;
		if (!(len & BPF_RINGBUF_DISCARD_BIT)) {
			fn((const char *)hdr + BPF_RINGBUF_HDR_SZ, len & ~BPF_RINGBUF_DISCARD_BIT, arg);
			n++;
		}
		__atomic_store_n(rb->consumer_pos, cons, __ATOMIC_RELEASE);
	}
	return n;
}

/* waits up to `ms` milliseconds for data (the kernel wakes the map's pollers on a submit):
 * 1 data may be there, 0 timed out, -1 with errno set */
static inline int tuoba_ringbuf_wait(struct tuoba_ringbuf *rb, int ms)
{
	struct pollfd p = { .fd = rb->fd, .events = POLLIN };
	int r = poll(&p, 1, ms);

	if (r < 0 && errno == EINTR)
		return 0;
	return r;
}

#endif
