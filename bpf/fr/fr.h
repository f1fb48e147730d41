/* SPDX-License-Identifier: GPL-2.0 */
/*
 * tuoba-fr: the filter -> reduce both sides share. The BPF program (fr.bpf.c) runs it on the
 * read path, over the data the kernel copies to the caller's buffer; the loader (tuoba-fr.c)
 * runs the same code once more at end of file, for a last value with no newline after it.
 * Integers only: mean is returned as sum and count, the division is the caller's.
 */
#ifndef TUOBA_FR_H
#define TUOBA_FR_H

#define FR_CHUNK 4096 /* copyout copies at most a page at a time on the read path */
#define FR_MAX_DIGITS 19

enum fr_op { FR_ALL, FR_GT, FR_GE, FR_LT, FR_LE, FR_EQ, FR_NE };
enum fr_reduce { FR_SUM, FR_COUNT, FR_MIN, FR_MAX, FR_MEAN, FR_EXISTS };
enum fr_format { FR_TEXT, FR_INT64 };
enum fr_error {
	FR_OK,
	FR_BAD_BYTE,   /* a byte that is no part of an integer (text) */
	FR_BAD_SIGN,   /* a '-' with no digits after it */
	FR_TOO_LONG,   /* more digits than an int64 holds */
	FR_RANGE,      /* digits beyond the int64 range */
	FR_BIG_CHUNK,  /* a single copy larger than FR_CHUNK */
	FR_READ,       /* the program could not read the kernel's copy */
	FR_TRAILING,   /* int64 format: bytes left over that make no whole value */
};

/* One caller (a thread reading through its buffer), keyed by its pid_tgid. */
struct fr_state {
	/* the request, written by the loader */
	__u64 buf;      /* the caller's buffer: copies into [buf, buf + len) are the data */
	__u64 len;
	__s64 constant; /* the filter's right-hand side */
	__u32 op, reduce, format, skip_copy;
	/* the reduction so far */
	__s64 sum;
	__u64 count;
	__s64 min, max;
	__u32 overflow; /* the sum left the int64 range */
	/* the parser, across copies (a value can straddle two of them) */
	__u32 digits, negative, carry_len;
	__u64 value; /* text: the magnitude so far */
	__u8 carry[8]; /* int64: the bytes of a value so far */
	/* what happened */
	__u32 error;
	__u8 error_byte;
	__u8 pad[3];
	__u64 error_offset; /* byte offset in the data read */
	__u64 bytes_seen;   /* bytes the program saw */
	__u64 bytes_copied; /* bytes that reached the caller's buffer */
	__u64 copies, copies_skipped;
};

static __always_inline int fr_keep(const struct fr_state *s, __s64 v)
{
	switch (s->op) {
	case FR_GT: return v > s->constant;
	case FR_GE: return v >= s->constant;
	case FR_LT: return v < s->constant;
	case FR_LE: return v <= s->constant;
	case FR_EQ: return v == s->constant;
	case FR_NE: return v != s->constant;
	default: return 1;
	}
}

static __always_inline void fr_take(struct fr_state *s, __s64 v)
{
	__s64 sum;

	if (!fr_keep(s, v))
		return;
	if (__builtin_add_overflow(s->sum, v, &sum))
		s->overflow = 1;
	s->sum = sum;
	if (s->count == 0 || v < s->min)
		s->min = v;
	if (s->count == 0 || v > s->max)
		s->max = v;
	s->count++;
}

static __always_inline void fr_fail(struct fr_state *s, __u32 error, __u64 offset, __u8 byte)
{
	if (s->error)
		return;
	s->error = error;
	s->error_offset = offset;
	s->error_byte = byte;
}

/* The end of a text value (a newline, a blank or the end of the file). */
static __always_inline void fr_end_value(struct fr_state *s, __u64 offset)
{
	if (s->digits) {
		/* |INT64_MIN| = INT64_MAX + 1 */
		if (s->value > (__u64)0x7fffffffffffffffULL + s->negative)
			fr_fail(s, FR_RANGE, offset, 0);
		else
			fr_take(s, s->negative ? (__s64)(0 - s->value) : (__s64)s->value);
	} else if (s->negative) {
		fr_fail(s, FR_BAD_SIGN, offset, '-');
	}
	s->digits = 0;
	s->negative = 0;
	s->value = 0;
}

static __always_inline void fr_text_byte(struct fr_state *s, __u8 c, __u64 offset)
{
	if (c >= '0' && c <= '9') {
		if (s->digits >= FR_MAX_DIGITS) {
			fr_fail(s, FR_TOO_LONG, offset, c);
			return;
		}
		s->value = s->value * 10 + (c - '0');
		s->digits++;
	} else if (c == '-' && !s->digits && !s->negative) {
		s->negative = 1;
	} else if (c == '\n' || c == ' ' || c == '\t' || c == '\r') {
		fr_end_value(s, offset);
	} else {
		fr_fail(s, FR_BAD_BYTE, offset, c);
	}
}

static __always_inline void fr_int64_byte(struct fr_state *s, __u8 c)
{
	__u64 v = 0;
	int k;

	s->carry[s->carry_len & 7] = c;
	if (++s->carry_len < 8)
		return;
	for (k = 7; k >= 0; k--)
		v = (v << 8) | s->carry[k];
	s->carry_len = 0;
	fr_take(s, (__s64)v);
}

#endif
