// SPDX-License-Identifier: MIT
/*
 * Floors measured in C, with no Python objects in the loop, for the benchmarks: the ring
 * drain itself, raw epoll_wait, and io_uring multishot poll draining its completion ring.
 * Each returns nanoseconds per event (median of rounds) or a negative errno.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/io_uring.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "ue_bench.h"

static uint64_t clock_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double median(double *v, uint32_t n)
{
	qsort(v, n, sizeof(*v), cmp_double);
	return v[n / 2];
}

/*
 * The consumer's own drain (ring.c, reached through the runtime module's table rt) over a
 * ring of nitems pending entries, refilled between rounds. exchange == 0 measures a plain
 * load-and-store drain instead, which is not correct against a live producer (a bit ORed in
 * between is lost) but shows what the atomic costs.
 */
double ue_bench_drain_floor(const struct ue_runtime *rt, uint32_t nitems, uint32_t rounds,
			    int exchange)
{
	size_t header_len = (UE_HEADER_SIZE + 16ull * nitems + 4095) & ~4095ull;
	size_t index_len = 4096;
	struct ue_consumer c;
	struct ue_uheader *hdr;
	struct ue_uitem *items;
	uint32_t *index, r, i;
	double *samples;
	char *out;
	void *mem;

	while (index_len / 4 < nitems)
		index_len *= 2;
	if (!rt || !nitems || !rounds || nitems > UE_MAX_ITEMS)
		return -EINVAL;
	mem = mmap(NULL, header_len + index_len, PROT_READ | PROT_WRITE,
		   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		return -errno;
	samples = calloc(rounds, sizeof(*samples));
	out = calloc(nitems, 12);
	if (!samples || !out) {
		free(samples);
		free(out);
		munmap(mem, header_len + index_len);
		return -ENOMEM;
	}
	hdr = mem;
	hdr->magic = UE_USERPOLL_MAGIC;
	hdr->header_length = (uint32_t)header_len;
	hdr->index_length = (uint32_t)index_len;
	hdr->max_items_nr = nitems;
	items = (struct ue_uitem *)((char *)mem + UE_HEADER_SIZE);
	index = (uint32_t *)((char *)mem + header_len);
	rt->consumer_init(&c, mem, header_len, index, index_len, 5, UE_WAIT_KERNEL, -1, NULL, 0);
	for (i = 0; i < nitems; i++) {
		items[i].events = 0x80000001u;
		items[i].data = i;
	}
	for (r = 0; r < rounds; r++) {
		uint32_t tail = hdr->tail, head;
		uint64_t t0, t1;
		long n = 0;

		for (i = 0; i < nitems; i++) {
			items[i].ready_events = 1;
			index[(tail + i) & (index_len / 4 - 1)] = i;
		}
		__atomic_store_n(&hdr->tail, tail + nitems, __ATOMIC_RELEASE);
		t0 = clock_ns();
		if (exchange) {
			n = rt->drain(&c, out, NULL, nitems);
		} else {
			head = hdr->head;
			while (head != tail + nitems) {
				uint32_t slot = index[head & (index_len / 4 - 1)];
				uint32_t ev = items[slot].ready_events;

				items[slot].ready_events = 0;
				memcpy(out + 12u * n, &ev, 4);
				memcpy(out + 12u * n + 4, &items[slot].data, 8);
				n++;
				head++;
			}
			__atomic_store_n(&hdr->head, head, __ATOMIC_RELEASE);
		}
		t1 = clock_ns();
		if (n != (long)nitems) {
			samples[0] = -EIO;
			break;
		}
		samples[r] = (double)(t1 - t0) / nitems;
	}
	double result = samples[0] < 0 ? samples[0] : median(samples, rounds);

	free(samples);
	free(out);
	munmap(mem, header_len + index_len);
	return result;
}

/* epoll_wait(epfd, buf, batch, 0) from C on fds the caller keeps ready (level-triggered). */
double ue_bench_epoll_wait(int epfd, uint32_t batch, uint32_t rounds)
{
	struct epoll_event *evs = calloc(batch, sizeof(*evs));
	double *samples = calloc(rounds, sizeof(*samples));
	double result;
	uint32_t r;

	if (!evs || !samples) {
		free(evs);
		free(samples);
		return -ENOMEM;
	}
	for (r = 0; r < rounds; r++) {
		uint64_t t0 = clock_ns();
		int n = epoll_wait(epfd, evs, (int)batch, 0);
		uint64_t t1 = clock_ns();

		if (n != (int)batch) {
			free(evs);
			free(samples);
			return n < 0 ? -errno : -EIO;
		}
		samples[r] = (double)(t1 - t0) / batch;
	}
	result = median(samples, rounds);
	free(evs);
	free(samples);
	return result;
}

/* ---- io_uring multishot poll, raw system calls ---- */

struct uring {
	int fd;
	void *sq_ring, *cq_ring;
	size_t sq_len, cq_len;
	struct io_uring_sqe *sqes;
	size_t sqes_len;
	uint32_t *sq_head, *sq_tail, *sq_mask, *sq_array;
	uint32_t *cq_head, *cq_tail, *cq_mask;
	struct io_uring_cqe *cqes;
};

static void uring_free(struct uring *u)
{
	if (u->sqes && u->sqes != MAP_FAILED)
		munmap(u->sqes, u->sqes_len);
	if (u->cq_ring && u->cq_ring != MAP_FAILED && u->cq_ring != u->sq_ring)
		munmap(u->cq_ring, u->cq_len);
	if (u->sq_ring && u->sq_ring != MAP_FAILED)
		munmap(u->sq_ring, u->sq_len);
	if (u->fd >= 0)
		close(u->fd);
}

static int uring_init(struct uring *u, uint32_t entries, uint32_t cq_entries)
{
	struct io_uring_params p;

	memset(u, 0, sizeof(*u));
	memset(&p, 0, sizeof(p));
	p.flags = IORING_SETUP_CQSIZE;
	p.cq_entries = cq_entries;
	u->fd = (int)syscall(SYS_io_uring_setup, entries, &p);
	if (u->fd < 0)
		return -errno;
	u->sq_len = p.sq_off.array + p.sq_entries * sizeof(uint32_t);
	u->cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
	if (p.features & IORING_FEAT_SINGLE_MMAP) {
		if (u->cq_len > u->sq_len)
			u->sq_len = u->cq_len;
		u->cq_len = u->sq_len;
	}
	u->sq_ring = mmap(NULL, u->sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
			  u->fd, IORING_OFF_SQ_RING);
	if (u->sq_ring == MAP_FAILED)
		goto fail;
	if (p.features & IORING_FEAT_SINGLE_MMAP)
		u->cq_ring = u->sq_ring;
	else
		u->cq_ring = mmap(NULL, u->cq_len, PROT_READ | PROT_WRITE,
				  MAP_SHARED | MAP_POPULATE, u->fd, IORING_OFF_CQ_RING);
	if (u->cq_ring == MAP_FAILED)
		goto fail;
	u->sqes_len = p.sq_entries * sizeof(struct io_uring_sqe);
	u->sqes = mmap(NULL, u->sqes_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
		       u->fd, IORING_OFF_SQES);
	if (u->sqes == MAP_FAILED)
		goto fail;
	u->sq_head = (uint32_t *)((char *)u->sq_ring + p.sq_off.head);
	u->sq_tail = (uint32_t *)((char *)u->sq_ring + p.sq_off.tail);
	u->sq_mask = (uint32_t *)((char *)u->sq_ring + p.sq_off.ring_mask);
	u->sq_array = (uint32_t *)((char *)u->sq_ring + p.sq_off.array);
	u->cq_head = (uint32_t *)((char *)u->cq_ring + p.cq_off.head);
	u->cq_tail = (uint32_t *)((char *)u->cq_ring + p.cq_off.tail);
	u->cq_mask = (uint32_t *)((char *)u->cq_ring + p.cq_off.ring_mask);
	u->cqes = (struct io_uring_cqe *)((char *)u->cq_ring + p.cq_off.cqes);
	return 0;
fail:
	{
		int err = -errno;

		uring_free(u);
		return err;
	}
}

/*
 * Arm a multishot POLL_ADD on each eventfd, then per round: write every eventfd (untimed),
 * wait until all n completions are posted (untimed), and time draining the completion ring.
 */
double ue_bench_iouring_multishot(const int *fds, uint32_t n, uint32_t rounds)
{
	struct uring u;
	double *samples;
	uint32_t i, r, entries = 1;
	double result;
	int ret;

	while (entries < n)
		entries *= 2;
	ret = uring_init(&u, entries, entries * 4);
	if (ret)
		return ret;
	samples = calloc(rounds, sizeof(*samples));
	if (!samples) {
		uring_free(&u);
		return -ENOMEM;
	}
	{
		uint32_t tail = *u.sq_tail;

		for (i = 0; i < n; i++) {
			uint32_t idx = (tail + i) & *u.sq_mask;
			struct io_uring_sqe *sqe = &u.sqes[idx];

			memset(sqe, 0, sizeof(*sqe));
			sqe->opcode = IORING_OP_POLL_ADD;
			sqe->fd = fds[i];
			sqe->poll32_events = POLLIN;
			sqe->len = IORING_POLL_ADD_MULTI;
			sqe->user_data = (uint64_t)fds[i];
			u.sq_array[idx] = idx;
		}
		/* Pairs with the kernel's acquire of the SQ tail. */
		__atomic_store_n(u.sq_tail, tail + n, __ATOMIC_RELEASE);
		ret = (int)syscall(SYS_io_uring_enter, u.fd, n, 0, 0, NULL, 0);
		if (ret != (int)n) {
			result = ret < 0 ? -errno : -EIO;
			goto out;
		}
	}
	for (r = 0; r < rounds; r++) {
		uint64_t one = 1, t0, t1, sum = 0;
		uint32_t head, tail, got = 0;

		for (i = 0; i < n; i++)
			if (write(fds[i], &one, sizeof(one)) != sizeof(one)) {
				result = -errno;
				goto out;
			}
		/* Multishot poll completes inline on the wakeup; wait in case it was deferred. */
		while (__atomic_load_n(u.cq_tail, __ATOMIC_ACQUIRE) - *u.cq_head < n) {
			ret = (int)syscall(SYS_io_uring_enter, u.fd, 0, n, IORING_ENTER_GETEVENTS,
					   NULL, 0);
			if (ret < 0 && errno != EINTR) {
				result = -errno;
				goto out;
			}
		}
		t0 = clock_ns();
		head = *u.cq_head;
		tail = __atomic_load_n(u.cq_tail, __ATOMIC_ACQUIRE); /* pairs with the kernel */
		while (head != tail) {
			struct io_uring_cqe *cqe = &u.cqes[head & *u.cq_mask];

			sum += cqe->user_data + (uint32_t)cqe->res;
			head++;
			got++;
		}
		/* Pairs with the kernel's acquire of the CQ head (space for new completions). */
		__atomic_store_n(u.cq_head, head, __ATOMIC_RELEASE);
		t1 = clock_ns();
		if (got < n || !sum) {
			result = -EIO;
			goto out;
		}
		samples[r] = (double)(t1 - t0) / got;
		for (i = 0; i < n; i++) {
			uint64_t value;

			if (read(fds[i], &value, sizeof(value)) < 0 && errno != EAGAIN) {
				result = -errno;
				goto out;
			}
		}
		/* Reading an eventfd does not wake POLLIN waiters: no completions from that. */
	}
	result = median(samples, rounds);
out:
	free(samples);
	uring_free(&u);
	return result;
}
