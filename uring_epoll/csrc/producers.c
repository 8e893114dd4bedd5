// SPDX-License-Identifier: MIT
/*
 * C producer threads for the load tests and benchmarks: writing eventfds (or vpoll
 * commands) round-robin, or publishing straight into the runtime module's emulator through
 * its entry points (struct ue_runtime), and a consumer-side helper that reads what was
 * delivered. On request each thread is pinned to its own CPU of the process's allowed set,
 * so that the kernel's wake-up callbacks for one ring run on several CPUs at once.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "ue_bench.h"

struct producer {
	struct ue_producers *group;
	pthread_t thread;
	uint32_t first; /* this thread writes fds[first], fds[first + stride], ... */
	uint64_t written;
	int error;
	int cpu;      /* the CPU it is pinned to, or -1 */
	int last_cpu; /* where it last sampled itself running (sched_getcpu), -1 before */
};

struct ue_producers {
	const int *fds;
	uint32_t nfds;
	uint32_t nthreads;
	uint64_t writes_per_thread; /* 0: until stopped */
	uint64_t value;
	/*
	 * 0: write(value) as u64; 1: ioctl(fd, value >> 32, value & 0xffffffff);
	 * 2: publish value as events for fd straight into the emulator's ring (no system call)
	 */
	int mode;
	struct ue_emu *emu; /* mode 2, published into through inject */
	int (*inject)(struct ue_emu *emu, int fd, uint32_t events);
	int stop;
	struct producer threads[];
};

static int produce_one(struct ue_producers *g, int fd)
{
	if (g->mode == 2)
		return g->inject(g->emu, fd, (uint32_t)g->value);
	for (;;) {
		if (g->mode == 0) {
			ssize_t ret = write(fd, &g->value, sizeof(g->value));

			if (ret == sizeof(g->value))
				return 0;
		} else {
			if (ioctl(fd, (unsigned long)(g->value >> 32),
				  (unsigned long)(g->value & 0xffffffffu)) >= 0)
				return 0;
		}
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN) {
			/* An eventfd counter at its maximum: the consumer will catch up. */
			if (__atomic_load_n(&g->stop, __ATOMIC_RELAXED))
				return -EAGAIN;
			sched_yield();
			continue;
		}
		return -errno;
	}
}

static void *producer_main(void *arg)
{
	struct producer *p = arg;
	struct ue_producers *g = p->group;
	uint32_t i = p->first;
	sigset_t all;

	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	while (!__atomic_load_n(&g->stop, __ATOMIC_RELAXED)) {
		if (g->writes_per_thread && p->written >= g->writes_per_thread)
			break;
		/* Sampled now and then: what ue_producers_cpu() reports to check the pinning */
		if ((p->written & 1023) == 0)
			__atomic_store_n(&p->last_cpu, sched_getcpu(), __ATOMIC_RELAXED);
		int ret = produce_one(g, g->fds[i]);

		if (ret) {
			if (ret != -EAGAIN)
				p->error = -ret;
			break;
		}
		/* Atomic only so that ue_producers_written() may read it meanwhile */
		__atomic_store_n(&p->written, p->written + 1, __ATOMIC_RELAXED);
		i += g->nthreads;
		if (i >= g->nfds)
			i = p->first;
	}
	return NULL;
}

/*
 * The CPUs this process may run on, in order, into cpus[] (at most CPU_SETSIZE); returns
 * how many, or -errno.
 */
static int allowed_cpus(int *cpus)
{
	cpu_set_t set;
	int n = 0, cpu;

	if (sched_getaffinity(0, sizeof(set), &set))
		return -errno;
	for (cpu = 0; cpu < CPU_SETSIZE; cpu++)
		if (CPU_ISSET(cpu, &set))
			cpus[n++] = cpu;
	return n ? n : -ESRCH;
}

static struct ue_producers *start_group(const int *fds, uint32_t nfds, uint32_t nthreads,
				       uint64_t writes_per_thread, uint64_t value, int mode,
				       uint32_t flags, const struct ue_runtime *rt,
				       struct ue_emu *emu, int *err)
{
	int cpus[CPU_SETSIZE];
	struct ue_producers *g;
	pthread_attr_t attr;
	int ncpus = 0;
	uint32_t t;

	*err = 0;
	if (!nfds || !nthreads || nthreads > nfds || nthreads > 256 ||
	    (flags & ~(uint32_t)UE_PRODUCERS_PIN_CPUS)) {
		*err = -EINVAL;
		return NULL;
	}
	if (flags & UE_PRODUCERS_PIN_CPUS) {
		ncpus = allowed_cpus(cpus);
		if (ncpus < 0) {
			*err = ncpus;
			return NULL;
		}
	}
	g = calloc(1, sizeof(*g) + nthreads * sizeof(g->threads[0]));
	if (!g) {
		*err = -ENOMEM;
		return NULL;
	}
	g->fds = fds;
	g->nfds = nfds;
	g->nthreads = nthreads;
	g->writes_per_thread = writes_per_thread;
	g->value = value;
	g->mode = mode;
	g->emu = emu;
	g->inject = rt ? rt->emu_inject : NULL;
	for (t = 0; t < nthreads; t++) {
		int ret;

		g->threads[t].group = g;
		g->threads[t].first = t;
		g->threads[t].cpu = -1;
		g->threads[t].last_cpu = -1;
		ret = pthread_attr_init(&attr);
		if (!ret) {
			if (ncpus) {
				cpu_set_t one;

				/* On the attributes: no write ever runs on another CPU */
				g->threads[t].cpu = cpus[t % (uint32_t)ncpus];
				CPU_ZERO(&one);
				CPU_SET(g->threads[t].cpu, &one);
				ret = pthread_attr_setaffinity_np(&attr, sizeof(one), &one);
			}
			if (!ret)
				ret = pthread_create(&g->threads[t].thread, &attr, producer_main,
						     &g->threads[t]);
			pthread_attr_destroy(&attr);
		}
		if (ret) {
			*err = -ret;
			__atomic_store_n(&g->stop, 1, __ATOMIC_RELAXED);
			while (t--)
				pthread_join(g->threads[t].thread, NULL);
			free(g);
			return NULL;
		}
	}
	return g;
}

struct ue_producers *ue_producers_start(const int *fds, uint32_t nfds, uint32_t nthreads,
					uint64_t writes_per_thread, uint64_t value, int mode,
					int *err)
{
	return ue_producers_start_flags(fds, nfds, nthreads, writes_per_thread, value, mode, 0,
					err);
}

/* ue_producers_start with flags: UE_PRODUCERS_PIN_CPUS pins thread t to CPU t % ncpus */
struct ue_producers *ue_producers_start_flags(const int *fds, uint32_t nfds, uint32_t nthreads,
					      uint64_t writes_per_thread, uint64_t value,
					      int mode, uint32_t flags, int *err)
{
	if (mode != 0 && mode != 1) {
		*err = -EINVAL;
		return NULL;
	}
	return start_group(fds, nfds, nthreads, writes_per_thread, value, mode, flags, NULL,
			   NULL, err);
}

/*
 * Producer threads publishing straight into the emulator's ring, as the kernel's wake-up
 * callback would, with no file and no poller thread between them and the consumer: the ring
 * protocol alone. An item already pending gets no second entry (that is the protocol), so a
 * publish is not always a new event. The emulator must outlive the group; rt is the runtime
 * module's table (ue_runtime_table), whose ue_emu_inject is the one that owns emu.
 */
struct ue_producers *ue_producers_start_inject(const struct ue_runtime *rt, struct ue_emu *emu,
					       const int *fds, uint32_t nfds, uint32_t nthreads,
					       uint32_t events, int *err)
{
	if (!rt || !emu || !events) {
		*err = -EINVAL;
		return NULL;
	}
	return start_group(fds, nfds, nthreads, 0, events, 2, 0, rt, emu, err);
}

/*
 * Thread t's CPU: *pinned the one it was pinned to (-1: not pinned), *last the one it last
 * saw itself on (-1: not sampled yet). Valid until ue_producers_join. Returns 0, or -EINVAL.
 */
int ue_producers_cpu(const struct ue_producers *g, uint32_t t, int *pinned, int *last)
{
	if (t >= g->nthreads)
		return -EINVAL;
	*pinned = g->threads[t].cpu;
	*last = __atomic_load_n(&g->threads[t].last_cpu, __ATOMIC_RELAXED);
	return 0;
}

/* Writes so far, all threads together (the group keeps running); valid until join */
uint64_t ue_producers_written(const struct ue_producers *g)
{
	uint64_t total = 0;
	uint32_t t;

	for (t = 0; t < g->nthreads; t++)
		total += __atomic_load_n(&g->threads[t].written, __ATOMIC_RELAXED);
	return total;
}

void ue_producers_stop(struct ue_producers *g)
{
	__atomic_store_n(&g->stop, 1, __ATOMIC_RELAXED);
}

/* Join every thread and free the group; *written = total writes. Returns -errno of a failure. */
int ue_producers_join(struct ue_producers *g, uint64_t *written)
{
	uint64_t total = 0;
	int err = 0;
	uint32_t t;

	for (t = 0; t < g->nthreads; t++) {
		pthread_join(g->threads[t].thread, NULL);
		total += g->threads[t].written;
		if (g->threads[t].error && !err)
			err = g->threads[t].error;
	}
	free(g);
	*written = total;
	return -err;
}

/*
 * For each delivered event (packed epoll_event whose data is an eventfd), read the eventfd
 * and add its counter to *sum. Returns the number of reads that found a value.
 */
long ue_eventfd_consume(const void *events, uint32_t n, uint64_t *sum)
{
	const char *p = events;
	long got = 0;
	uint32_t i;

	for (i = 0; i < n; i++) {
		uint64_t data, value;

		memcpy(&data, p + 12u * i + 4, 8);
		if (read((int)data, &value, sizeof(value)) == sizeof(value)) {
			*sum += value;
			got++;
		} else if (errno != EAGAIN) {
			return -errno;
		}
	}
	return got;
}
