// SPDX-License-Identifier: MIT
/*
 * The wake-up latency producer: one C thread that pings an eventfd, one ping at a time.
 *
 * Each ping writes the producer's CLOCK_MONOTONIC reading (ns) as the eventfd value, so the
 * consumer gets t0 back with the eventfd_read it has to do anyway and computes its own
 * t1 - t0 without reading anything else. The next ping waits for the consumer's ack (a counter
 * in this thread's struct, see wait_ack for why it is polled), then for a gap: the consumer is
 * back in its poll (asleep or spinning) before the next write, and never sees two pings
 * coalesced into one counter.
 *
 * The gap is drawn uniformly from [gap/2, 3 gap/2] so the pings do not phase-lock with a
 * periodic timer or tick (which would hide, or exaggerate, its effect on the tail), and the
 * thread asks for a timer slack of 1 ns so a 20 us gap is not silently 70 us (the default
 * slack of a normal thread is 50 us).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#include "ue_bench.h"

/* First and longest sleep between two looks for the ack (see wait_ack). */
#define MIN_STEP_NS 2000u
#define MAX_STEP_NS 1000000u

struct ue_pinger {
	pthread_t thread;
	int fd; /* pinged: t0 written as the eventfd value */
	uint64_t count;
	uint64_t gap_ns;
	uint64_t step_ns; /* first sleep between two looks for the ack */
	uint64_t rng;
	/* Written by the thread, read by ue_pinger_join after pthread_join (which orders them). */
	uint64_t sent;
	int error;
	/* Pings the consumer has finished with: ue_pinger_ack adds 1 (release), we load (acquire). */
	uint64_t acked;
	/* Set by ue_pinger_stop (release), read by the thread (acquire) between steps. */
	int stop;
};

static uint64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* xorshift64*: plenty for jittering a gap, and no shared state with rand(). */
static uint64_t next_random(uint64_t *state)
{
	uint64_t x = *state;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*state = x;
	return x * 0x2545f4914f6cdd1dull;
}

static int stopped(struct ue_pinger *p)
{
	/* Pairs with the release store in ue_pinger_stop. */
	return __atomic_load_n(&p->stop, __ATOMIC_ACQUIRE);
}

static int sleep_ns(uint64_t ns)
{
	struct timespec until;
	uint64_t t;
	int ret;

	/* An absolute deadline, so an EINTR restart does not lengthen the sleep. */
	t = mono_ns() + ns;
	until.tv_sec = (time_t)(t / 1000000000u);
	until.tv_nsec = (long)(t % 1000000000u);
	do
		ret = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL);
	while (ret == EINTR);
	return -ret;
}

/*
 * Wait until the consumer has acked every ping sent: 0, 1 if told to stop, or -errno.
 *
 * Polled with timed sleeps rather than woken by the consumer, on purpose: a wake-up sent by
 * the consumer lets the scheduler queue us on the consumer's CPU, where a spinning consumer
 * (the "spin" mode) keeps us off the CPU until its spin bound runs out -- so the next ping
 * arrives after the spin, and the spin mode measures sleeping (9 pings in 10 on a 2-CPU host
 * with an eventfd ack). Timer wake-ups keep this thread on its own CPU.
 *
 * The sleeps double from step_ns: where a wake-up costs more than a fixed short step
 * (User-Mode Linux: one CPU, tens of us a context switch) the steps take the CPU from the
 * consumer they wait for, and 0.3-2% of its wake-ups took a whole 10 ms tick.
 */
static int wait_ack(struct ue_pinger *p)
{
	uint64_t step = p->step_ns;
	int ret;

	for (;;) {
		if (stopped(p))
			return 1;
		/* Pairs with the release add in ue_pinger_ack: the consumer's read came first. */
		if (__atomic_load_n(&p->acked, __ATOMIC_ACQUIRE) >= p->sent)
			return 0;
		ret = sleep_ns(step);
		if (ret)
			return ret;
		if (step < MAX_STEP_NS)
			step *= 2;
	}
}

static int sleep_gap(struct ue_pinger *p)
{
	uint64_t gap = p->gap_ns;

	if (!gap)
		return 0;
	return sleep_ns(gap / 2 + next_random(&p->rng) % (gap + 1));
}

static int ping(struct ue_pinger *p)
{
	/* Taken as late as possible: the figure is write-to-consumer, not gap jitter. */
	uint64_t t0 = mono_ns();

	for (;;) {
		if (write(p->fd, &t0, sizeof(t0)) == sizeof(t0))
			return 0;
		/* EAGAIN would mean the consumer acked without reading: a bug, say so. */
		if (errno != EINTR)
			return -errno;
	}
}

static void *pinger_main(void *arg)
{
	struct ue_pinger *p = arg;
	sigset_t all;
	int ret = 0;

	/* Signals belong to the Python thread, which handles them. */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	/* Best effort: without it the gap is only longer than asked. */
	prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
	while (p->sent < p->count) {
		if (p->sent) {
			ret = wait_ack(p);
			if (ret)
				break;
		}
		ret = sleep_gap(p);
		if (ret || stopped(p))
			break;
		ret = ping(p);
		if (ret)
			break;
		p->sent++;
	}
	if (ret < 0)
		p->error = -ret;
	return NULL;
}

/*
 * Start the thread: *count* pings of *fd*, each once the previous one is acked
 * (ue_pinger_ack) and a gap of about *gap_ns* has passed. NULL with *err = -errno on failure.
 */
struct ue_pinger *ue_pinger_start(int fd, uint64_t count, uint64_t gap_ns, int *err)
{
	struct ue_pinger *p;
	int ret;

	*err = 0;
	if (fd < 0) {
		*err = -EINVAL;
		return NULL;
	}
	p = calloc(1, sizeof(*p));
	if (!p) {
		*err = -ENOMEM;
		return NULL;
	}
	p->fd = fd;
	p->count = count;
	p->gap_ns = gap_ns;
	/* Half the gap to start with: the ack of a prompt consumer is seen soon enough. */
	p->step_ns = gap_ns / 2 > MIN_STEP_NS ? gap_ns / 2 : MIN_STEP_NS;
	/* Any non-zero seed; the start time makes runs differ, the bit keeps it non-zero. */
	p->rng = mono_ns() | 1;
	ret = pthread_create(&p->thread, NULL, pinger_main, p);
	if (ret) {
		*err = -ret;
		free(p);
		return NULL;
	}
	return p;
}

/* The consumer is done with the last ping (it has read the eventfd): the next may follow. */
void ue_pinger_ack(struct ue_pinger *p)
{
	/* Pairs with the acquire load in wait_ack. */
	__atomic_fetch_add(&p->acked, 1, __ATOMIC_RELEASE);
}

/*
 * Ask the thread to finish early: it notices within one ack-polling step (or the gap it is
 * sleeping), and never pings again. Call ue_pinger_join afterwards.
 */
void ue_pinger_stop(struct ue_pinger *p)
{
	/* Pairs with the acquire load in stopped(). */
	__atomic_store_n(&p->stop, 1, __ATOMIC_RELEASE);
}

/* Join the thread and free it; *sent = pings written. Returns 0 or the thread's -errno. */
int ue_pinger_join(struct ue_pinger *p, uint64_t *sent)
{
	int err;

	pthread_join(p->thread, NULL);
	*sent = p->sent;
	err = p->error;
	free(p);
	return -err;
}
