/* SPDX-License-Identifier: MIT */
/*
 * uring_epoll._bench_native: what the benchmarks and load tests need in C and the runtime
 * module (ue.h) does not ship -- producer threads, the wake-up latency pinger and floors
 * measured with no Python in the loop.
 *
 * Nothing here is compiled into the runtime module, and the consumer and the emulator are
 * not compiled into this one: what calls them goes through the runtime's table of entry
 * points (struct ue_runtime, from ue_runtime_table()). The types of ue.h are shared with the
 * runtime module (cffi's ffi.include), so its cdata pass here unconverted.
 *
 * As in ue.h, _bench_native_build.py hands the part between the "cdef: begin" and
 * "cdef: end" lines to cffi as the module's cdef.
 */
#ifndef URING_EPOLL_UE_BENCH_H
#define URING_EPOLL_UE_BENCH_H

#include <stddef.h>
#include <stdint.h>

#include "ue.h"

/* cdef: begin */

/* Bumped whenever this module's C interface changes; checked at import. */
#define UE_BENCH_VERSION 2
/* The runtime interface this module was compiled against: struct ue_consumer's size and
 * struct ue_runtime must be the ones of the runtime module it is handed. */
#define UE_BENCH_RUNTIME_VERSION UE_NATIVE_VERSION

/* Producer threads (producers.c): C threads writing eventfds, or publishing into an emulator */
struct ue_producers;
struct ue_producers *ue_producers_start(const int *fds, uint32_t nfds, uint32_t nthreads,
					uint64_t writes_per_thread, uint64_t value, int mode,
					int *err);
/* Flags of ue_producers_start_flags: pin thread t to CPU t % n of the n the process may use */
#define UE_PRODUCERS_PIN_CPUS 1
struct ue_producers *ue_producers_start_flags(const int *fds, uint32_t nfds, uint32_t nthreads,
					      uint64_t writes_per_thread, uint64_t value,
					      int mode, uint32_t flags, int *err);
int ue_producers_cpu(const struct ue_producers *p, uint32_t t, int *pinned, int *last);
uint64_t ue_producers_written(const struct ue_producers *p);
struct ue_producers *ue_producers_start_inject(const struct ue_runtime *rt, struct ue_emu *emu,
					       const int *fds, uint32_t nfds, uint32_t nthreads,
					       uint32_t events, int *err);
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
double ue_bench_drain_floor(const struct ue_runtime *rt, uint32_t nitems, uint32_t rounds,
			    int exchange);
double ue_bench_epoll_wait(int epfd, uint32_t batch, uint32_t rounds);
double ue_bench_iouring_multishot(const int *fds, uint32_t n, uint32_t rounds);

/* cdef: end */

#endif
