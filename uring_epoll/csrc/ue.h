/* SPDX-License-Identifier: MIT */
/*
 * uring-epoll native layer: the EPOLL_USERPOLL ring consumer, the userspace producer that
 * emulates the kernel on stock kernels, and fixed-argument system call wrappers.
 *
 * Every function returns a non-negative result or -errno; Python turns that into the right
 * exception. Nothing here touches Python objects, so cffi releases the GIL around each call.
 */
#ifndef URING_EPOLL_UE_H
#define URING_EPOLL_UE_H

#include <stdint.h>
#include <stddef.h>

/* Bumped whenever the C interface changes; checked at import to catch a stale build. */
#define UE_NATIVE_VERSION 12

#define UE_USERPOLL_MAGIC 0xeb01eb01u
#define UE_HEADER_SIZE 128u
#define UE_EPOLLREMOVED (1u << 27)
#define UE_MAX_ITEMS 65536u

/* Shared header: written once by the producer except head (consumer) and tail (producer). */
struct ue_uheader {
	uint32_t magic;
	uint32_t header_length;
	uint32_t index_length;
	uint32_t max_items_nr;
	uint32_t head;
	uint32_t tail;
	uint8_t padding[UE_HEADER_SIZE - 24];
};

struct ue_uitem {
	uint32_t ready_events;
	uint32_t events;
	uint64_t data;
};

/* Consumer's trusted copy of the ring geometry, validated once when the ring is attached. */
struct ue_ring {
	struct ue_uheader *hdr;
	struct ue_uitem *items;
	uint32_t *index;
	uint32_t index_mask;
	uint32_t max_items;
	int protocol;
};

enum ue_wait_mode {
	UE_WAIT_KERNEL = 1, /* epoll_wait(epfd, NULL, 0, ms) on a userpoll epfd */
	UE_WAIT_FUTEX = 2,  /* futex on the emulator's tail word */
	UE_WAIT_EPOLL = 3,  /* no ring: plain epoll_wait into the bound buffer */
};

struct ue_consumer;

/*
 * A destination bound once and reused by every call: each argument of a cffi call costs
 * tens of nanoseconds, so the per-call entry point takes only a binding and a timeout.
 * Bindings are immutable once made, so threads polling with their own buffers never share
 * one.
 */
struct ue_binding {
	struct ue_consumer *consumer;
	void *out;	    /* packed epoll_event array, or u32 events array if data_out */
	uint64_t *data_out; /* NULL: packed layout */
	uint32_t max;
};

struct ue_stats {
	uint64_t ring_events; /* events handed to the caller from the ring */
	uint64_t sleeps;      /* times the consumer went to sleep in the kernel */
	uint64_t estale;      /* sleeps that ended with "entries in the ring" */
	uint64_t spins;       /* bounded spins started on an empty ring */
	uint64_t spin_hits;   /* spins that saw the tail move */
	uint64_t skipped;     /* entries consumed without an event (EPOLLREMOVED, masked) */
	uint64_t slot_waits;  /* protocol 3: drains stopped at a reserved, unwritten slot */
};

struct ue_emu;

struct ue_consumer {
	struct ue_ring ring;
	int mode;
	int epfd;
	struct ue_emu *emu;
	uint64_t spin_ns;
	struct ue_stats stats;
	/* Details of the last -EBADMSG, for the Python error message. */
	uint32_t bad_position;
	uint32_t bad_value;
	uint32_t bad_kind; /* 1: slot out of range, 2: tail - head larger than the ring */
	volatile int lock; /* one consumer at a time; protects head */
	int closing;	   /* set by ue_consumer_close: every poll returns -EBADF */
	uint32_t inflight; /* threads inside ue_poll */
};

/* Ring geometry checks and consumer */
int ue_ring_attach(struct ue_ring *ring, void *header, size_t header_len, void *index,
		   size_t index_len, int protocol);
int ue_consumer_init(struct ue_consumer *c, void *header, size_t header_len, void *index,
		     size_t index_len, int protocol, int mode, int epfd, struct ue_emu *emu,
		     uint64_t spin_ns);
long ue_drain(struct ue_consumer *c, void *out, uint64_t *data_out, uint32_t maxevents);
long ue_poll(struct ue_consumer *c, void *out, uint64_t *data_out, uint32_t maxevents,
             int64_t timeout_ns);

/* Userspace producer (the "thread" backend) */
struct ue_emu *ue_emu_new(void *header, size_t header_len, void *index, size_t index_len,
			  uint32_t max_items, int protocol, int *err);
int ue_emu_start(struct ue_emu *emu);
int ue_emu_ctl(struct ue_emu *emu, int op, int fd, uint32_t events, uint64_t data);
int ue_emu_inject(struct ue_emu *emu, int fd, uint32_t events);
int ue_emu_sync(struct ue_emu *emu);
int ue_emu_forget(struct ue_emu *emu, int fd);
int ue_emu_inner_fd(struct ue_emu *emu);
int ue_emu_thread_error(struct ue_emu *emu);
int ue_emu_stop(struct ue_emu *emu);
void ue_emu_free(struct ue_emu *emu);

/* Fixed-argument system call wrappers, each returning the result or -errno */
int ue_sys_epoll_create2(long nr, int flags, size_t size);
int ue_sys_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t data);
int ue_sys_epoll_wait(int epfd, void *events, int maxevents, int timeout_ms);
int ue_sys_epoll_wait_null(int epfd, int timeout_ms);
int ue_sys_epoll_wait_ns(int epfd, void *events, int maxevents, int64_t timeout_ns);
int ue_sys_eventfd(unsigned int initval, int flags);

/* Benchmark and load-test producers: C threads writing eventfds, or publishing into an emulator */
struct ue_producers;
struct ue_producers *ue_producers_start(const int *fds, uint32_t nfds, uint32_t nthreads,
					uint64_t writes_per_thread, uint64_t value, int mode,
					int *err);
struct ue_producers *ue_producers_start_inject(struct ue_emu *emu, const int *fds,
					       uint32_t nfds, uint32_t nthreads, uint32_t events,
					       int *err);
int ue_producers_join(struct ue_producers *p, uint64_t *written);
void ue_producers_stop(struct ue_producers *p);
long ue_eventfd_consume(const void *events, uint32_t n, uint64_t *sum);

/*
 * Wake-up latency producer (latency.c): one thread writing its CLOCK_MONOTONIC ns as the
 * value of an eventfd, then waiting for the consumer's ack and a gap before the next ping.
 */
struct ue_pinger;
struct ue_pinger *ue_pinger_start(int fd, uint64_t count, uint64_t gap_ns, int *err);
void ue_pinger_ack(struct ue_pinger *p);
void ue_pinger_stop(struct ue_pinger *p);
int ue_pinger_join(struct ue_pinger *p, uint64_t *sent);

/* C floors for the benchmarks (bench.c): ns per event, or -errno */
double ue_bench_drain_floor(uint32_t nitems, uint32_t rounds, int exchange);
double ue_bench_epoll_wait(int epfd, uint32_t batch, uint32_t rounds);
double ue_bench_iouring_multishot(const int *fds, uint32_t n, uint32_t rounds);

#endif
