// SPDX-License-Identifier: MIT
/*
 * The "thread" backend: a userspace producer that fills an EPOLL_USERPOLL ring exactly as the
 * patched kernel does, so that the consumer in ring.c runs unchanged on stock kernels.
 *
 * An ordinary epoll fd (the "inner" epoll) holds every registration, always edge-triggered,
 * with the item's slot number as its data. A poller thread waits for the inner epoll to
 * become readable with poll(2) -- which does not dequeue anything -- and then harvests it with
 * epoll_wait(timeout 0) under emu->lock. epoll_ctl on the inner epoll also happens under that
 * lock, followed by the same harvest, so an ADD or MOD of a ready fd is in the ring when ctl
 * returns (the kernel's ep_insert/ep_modify poll the file and queue it synchronously) and is
 * published exactly once: only a harvest under the lock can take an event off the inner
 * epoll, and edge-triggered registrations report each readiness change once.
 *
 * Publishing follows the kernel port: ready_events is ORed atomically (clearing a stale
 * EPOLLREMOVED), and only a 0 -> non-zero transition appends the slot to the index ring.
 * Protocol 5 appends through the wait-free reservation counter; protocol 3 bumps tail first
 * and writes slot + 1 afterwards, which is why its consumer has to wait for non-zero slots.
 *
 * The pollable fd (ue_emu_poll_fd, what epoll.fileno() returns). A nested poll of a kernel
 * userpoll epfd reports "readable" while its ring is non-empty. Here the ring is memory, so
 * the fd is a small epoll of our own, sig_epfd, holding (level-triggered, EPOLLIN):
 *
 *  - inner_epfd: readable while the poller has events still to harvest;
 *  - ready_efd, an eventfd: readable while e->signalled is 1, which means "the ring may hold
 *    entries nobody has taken yet".
 *
 * The protocol behind signalled, all of it under e->lock, so that at every unlock
 * signalled == 1 exactly when ready_efd's counter is non-zero:
 *
 *  - Producer (publish, with the lock held by every publisher: poller harvests, ctl,
 *    ue_emu_inject and through it the C injector threads): before appending an entry, if
 *    signalled is 0, set it to 1 and note that ready_efd must be written; after the append,
 *    still under the lock, write it (signal_flush). The store of signalled comes before the
 *    RELEASE that publishes tail, so a consumer that took the entry (ACQUIRE of tail, or of
 *    the protocol-3 slot) sees signalled == 1 or a later value: its lock-free test below
 *    cannot skip a clear that is due. Only a 0 -> 1 transition writes: while events flow
 *    and nobody finds the ring empty, publishing costs no extra system call.
 *  - Consumer (ue__emu_idle): only on the paths where it found the ring empty, which
 *    already cost a system call: ue_poll returning 0, and ue__emu_wait before the futex
 *    sleep. A polling call that returns events never clears and never makes a system call
 *    for this. If signalled (ACQUIRE load; the hint is exact for every entry this consumer
 *    took, as above) is 1, take the lock and, if head == tail, read ready_efd to zero and
 *    store signalled = 0. Under the lock no producer can append, so "head == tail" is the
 *    truth at the moment of the clear, and the next append sees signalled == 0 and signals
 *    again: this is the clear-then-recheck, with the lock standing in for the barriers.
 *
 * Races, and why none loses readiness or keeps spurious readiness for long:
 *
 *  - Publish vs clear: both hold the lock, so they are ordered; the clear tests emptiness
 *    with tail frozen. A clear that comes first leaves signalled 0 for the publish to see;
 *    a publish that comes first makes the ring non-empty, and the clear does nothing.
 *  - Between the harvest taking an event off inner_epfd and the ready_efd write, both under
 *    the lock, sig_epfd can look not-ready for an instant; the write then wakes any waiter
 *    (as a kernel epfd's wake-up follows its ring append). ue_emu_sync returns only after
 *    both, so a nested poll after testing.sync() sees the event.
 *  - Several consumers: drains do not take e->lock, so a clear can see head != tail while
 *    another consumer is between taking the last entries and storing head; then nothing is
 *    cleared, and sig_epfd stays readable over an empty ring until the next empty-path call
 *    (the next poll that returns nothing clears it). A level-triggered outer loop therefore
 *    sees at most one extra wake-up, never a persistent one. Two clears serialise on the
 *    lock; the second finds signalled 0 and does nothing.
 *  - A consumer draining entries published after the test in ue__emu_idle: it found the ring
 *    non-empty (no clear) or cleared before the append (the append re-signals).
 *  - close(): ue_consumer_close + ue_emu_stop + ue_consumer_quiesce run before ue_emu_free,
 *    so no poller write and no consumer read of ready_efd can run once it is closed (its
 *    number reused). A sig_epfd registered in someone else's epoll leaves it when closed.
 *  - fork: the child never touches the emulator (after_fork_in_child).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "ue_internal.h"

#define HARVEST_BATCH 256

/* Bits of the 64-bit protocol-5 append counter (private to the producer, never shared). */
#define CNT_INSIDE_MASK 0xffffull /* producers inside the append path */
#define CNT_EXPOSE_SHIFT 16	  /* entries written, waiting for the last one out */
#define CNT_EXPOSE_MASK (0xffffull << CNT_EXPOSE_SHIFT)
#define CNT_RESERVE_SHIFT 32 /* next index position; wraps mod 2^32 with tail */

struct ue_reg {
	int fd;		 /* -1: slot free */
	uint32_t events; /* interest as registered with the inner epoll */
	uint64_t data;
};

struct ue_emu {
	struct ue_ring ring;
	int inner_epfd;
	int stop_efd;
	int sig_epfd;  /* what fileno() returns: inner_epfd and ready_efd, level-triggered */
	int ready_efd; /* readable while signalled is 1 (see the top of this file) */
	pthread_t thread;
	int thread_started;
	pthread_mutex_t lock; /* registrations, inner epoll harvests */
	struct ue_reg *regs;  /* indexed by slot */
	uint32_t free_hint;   /* no slot below this one is free: registering n fds stays O(n) */
	int32_t *slot_of_fd; /* fd -> slot + 1, grown on demand */
	size_t slot_of_fd_len;
	uint64_t counter;      /* protocol-5 append counter */
	uint32_t waiters;      /* consumers sleeping on the tail futex */
	int thread_error;      /* errno that stopped the poller, 0 while healthy */
	uint64_t published;    /* ring entries appended */
	uint32_t signalled;    /* 1: ready_efd is (about to be) readable; written under lock */
	int signal_due;	       /* signalled went 0 -> 1: write ready_efd before unlocking */
};

static long futex(uint32_t *uaddr, int op, uint32_t val, const struct timespec *ts)
{
	return syscall(SYS_futex, uaddr, op, val, ts, NULL, 0);
}

static void append_v5(struct ue_emu *e, uint32_t slot)
{
	struct ue_ring *r = &e->ring;
	uint64_t c, next, expose = 0;
	uint32_t pos;

	/* Enter: reserve a position and count ourselves inside, in one atomic add. */
	c = __atomic_fetch_add(&e->counter, (1ull << CNT_RESERVE_SHIFT) | 1ull, __ATOMIC_ACQUIRE);
	pos = (uint32_t)(c >> CNT_RESERVE_SHIFT);
	__atomic_store_n(&r->index[pos & r->index_mask], slot, __ATOMIC_RELAXED);

	/*
	 * Leave: the last producer out takes every entry written so far and publishes them. The
	 * RELEASE half orders our slot store before our leave; the ACQUIRE half lets the last
	 * one out inherit the stores of every producer that left before it, so its RELEASE add
	 * to tail covers them all (pairs with the consumer's ACQUIRE load of tail).
	 */
	c = __atomic_load_n(&e->counter, __ATOMIC_RELAXED);
	do {
		if ((c & CNT_INSIDE_MASK) == 1) {
			expose = ((c & CNT_EXPOSE_MASK) >> CNT_EXPOSE_SHIFT) + 1;
			next = c & ~(CNT_EXPOSE_MASK | CNT_INSIDE_MASK);
		} else {
			expose = 0;
			next = c - 1 + (1ull << CNT_EXPOSE_SHIFT);
		}
	} while (!__atomic_compare_exchange_n(&e->counter, &c, next, 0, __ATOMIC_ACQ_REL,
					      __ATOMIC_RELAXED));
	if (expose)
		__atomic_fetch_add(&r->hdr->tail, (uint32_t)expose, __ATOMIC_RELEASE);
}

static void append_v3(struct ue_emu *e, uint32_t slot)
{
	struct ue_ring *r = &e->ring;
	uint32_t pos = __atomic_fetch_add(&r->hdr->tail, 1, __ATOMIC_ACQ_REL);

	/* Pairs with the protocol-3 consumer's ACQUIRE load of the slot. */
	__atomic_store_n(&r->index[pos & r->index_mask], slot + 1, __ATOMIC_RELEASE);
}

/* The kernel's ep_poll_callback for a userpoll item. Called with e->lock held. */
static void publish(struct ue_emu *e, uint32_t slot, uint32_t flags)
{
	struct ue_uitem *item = &e->ring.items[slot];
	uint32_t old, next;

	flags &= e->regs[slot].events | EPOLLERR | EPOLLHUP;
	flags &= ~UE_EPOLLREMOVED;
	if (!flags)
		return;
	old = __atomic_load_n(&item->ready_events, __ATOMIC_RELAXED);
	do {
		next = (old & ~UE_EPOLLREMOVED) | flags;
	} while (!__atomic_compare_exchange_n(&item->ready_events, &old, next, 0,
					      __ATOMIC_ACQ_REL, __ATOMIC_RELAXED));
	if (old != 0)
		return; /* already has its one ring entry */
	/*
	 * Before the append: the RELEASE that publishes tail (append_v5's tail add, append_v3's
	 * slot store) orders this store before the entry, for the consumer's lock-free test in
	 * ue__emu_idle. The eventfd itself is written after the append (signal_flush).
	 */
	if (!__atomic_load_n(&e->signalled, __ATOMIC_RELAXED)) {
		__atomic_store_n(&e->signalled, 1, __ATOMIC_RELAXED);
		e->signal_due = 1;
	}
	if (e->ring.protocol == 5)
		append_v5(e, slot);
	else
		append_v3(e, slot);
	e->published++;
}

static void wake_consumers(struct ue_emu *e)
{
	/*
	 * Pairs with the SEQ_CST fence in ue__emu_wait: either the consumer sees the new tail
	 * before sleeping, or we see its waiters count and wake it.
	 */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (__atomic_load_n(&e->waiters, __ATOMIC_RELAXED))
		futex(&e->ring.hdr->tail, FUTEX_WAKE_PRIVATE, INT_MAX, NULL);
}

/* Make ready_efd readable after a 0 -> 1 of signalled. Called with e->lock held. */
static void signal_flush(struct ue_emu *e)
{
	uint64_t one = 1;

	if (!e->signal_due)
		return;
	e->signal_due = 0;
	/* Cannot fail: the counter is 0 (signalled was 0) and the fd is open until free. */
	if (write(e->ready_efd, &one, sizeof(one)) != sizeof(one))
		__atomic_store_n(&e->signalled, 0, __ATOMIC_RELAXED); /* keep the invariant */
}

/*
 * A consumer found the ring empty: unless entries arrived meanwhile, make sig_epfd stop
 * reporting it non-empty. The protocol and its races are described at the top of this file.
 */
void ue__emu_idle(struct ue_emu *e)
{
	uint64_t v;
	uint32_t head;

	/*
	 * The lock-free test is a hint, exact where it matters: this ACQUIRE of tail pairs with
	 * the producer's RELEASE of it, which follows its store of signalled = 1, so for every
	 * entry below the tail we read we see that 1 (or a later clear's 0).
	 */
	(void)__atomic_load_n(&e->ring.hdr->tail, __ATOMIC_ACQUIRE);
	if (!__atomic_load_n(&e->signalled, __ATOMIC_RELAXED))
		return;
	pthread_mutex_lock(&e->lock);
	/*
	 * No producer appends while we hold the lock: tail is frozen, and head == tail means
	 * empty now. ACQUIRE on head pairs with the consumers' RELEASE store of head.
	 */
	head = __atomic_load_n(&e->ring.hdr->head, __ATOMIC_ACQUIRE);
	if (__atomic_load_n(&e->signalled, __ATOMIC_RELAXED) &&
	    head == __atomic_load_n(&e->ring.hdr->tail, __ATOMIC_RELAXED)) {
		/* Non-blocking; the counter is non-zero here (the invariant under the lock). */
		if (read(e->ready_efd, &v, sizeof(v)) == sizeof(v) || errno == EAGAIN)
			__atomic_store_n(&e->signalled, 0, __ATOMIC_RELAXED);
	}
	pthread_mutex_unlock(&e->lock);
}

/* Take everything ready off the inner epoll and publish it. Called with e->lock held. */
static int harvest_locked(struct ue_emu *e)
{
	struct epoll_event evs[HARVEST_BATCH];
	uint64_t before = e->published;
	int n, i;

	do {
		n = epoll_wait(e->inner_epfd, evs, HARVEST_BATCH, 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		for (i = 0; i < n; i++) {
			uint64_t slot = evs[i].data.u64;

			if (slot < e->ring.max_items && e->regs[slot].fd >= 0)
				publish(e, (uint32_t)slot, evs[i].events);
		}
	} while (n == HARVEST_BATCH);
	if (e->published != before)
		wake_consumers(e);
	signal_flush(e);
	return 0;
}

static void *poller_main(void *arg)
{
	struct ue_emu *e = arg;
	struct pollfd pfd[2] = {
		{ .fd = e->inner_epfd, .events = POLLIN },
		{ .fd = e->stop_efd, .events = POLLIN },
	};
	sigset_t all;
	int ret;

	/* Signals belong to the Python main thread. */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	for (;;) {
		ret = poll(pfd, 2, -1);

		if (ret < 0) {
			if (errno == EINTR)
				continue;
			ret = errno;
			goto fail;
		}
		if (pfd[1].revents)
			break;
		if (!pfd[0].revents)
			continue;
		pthread_mutex_lock(&e->lock);
		ret = harvest_locked(e);
		pthread_mutex_unlock(&e->lock);
		if (ret < 0) {
			ret = -ret;
			goto fail;
		}
	}
	return NULL;
fail:
	__atomic_store_n(&e->thread_error, ret, __ATOMIC_RELEASE);
	/* Nobody must sleep forever on a ring that will never move again. */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	futex(&e->ring.hdr->tail, FUTEX_WAKE_PRIVATE, INT_MAX, NULL);
	return NULL;
}

int ue__emu_wait(struct ue_emu *e, uint32_t *tail, uint32_t seen_tail, int64_t timeout_ns,
		 const int *closing)
{
	struct timespec ts, *tsp = NULL;
	int err;
	long ret;

	err = __atomic_load_n(&e->thread_error, __ATOMIC_ACQUIRE);
	if (err)
		return -err;
	if (!__atomic_load_n(&e->thread_started, __ATOMIC_ACQUIRE))
		return -EPIPE;
	/* About to sleep on an empty ring: sig_epfd must not stay readable meanwhile. */
	ue__emu_idle(e);
	if (timeout_ns >= 0) {
		ts.tv_sec = timeout_ns / 1000000000ll;
		ts.tv_nsec = timeout_ns % 1000000000ll;
		tsp = &ts;
	}
	__atomic_fetch_add(&e->waiters, 1, __ATOMIC_RELAXED);
	/*
	 * Pairs with the fence in wake_consumers (Dekker: waiters store vs tail store), and
	 * with ue_consumer_close (closing store, then wake).
	 */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (__atomic_load_n(closing, __ATOMIC_RELAXED)) {
		__atomic_fetch_sub(&e->waiters, 1, __ATOMIC_RELAXED);
		return -EBADF;
	}
	if (__atomic_load_n(tail, __ATOMIC_ACQUIRE) != seen_tail) {
		__atomic_fetch_sub(&e->waiters, 1, __ATOMIC_RELAXED);
		return -ESTALE;
	}
	ret = futex(tail, FUTEX_WAIT_PRIVATE, seen_tail, tsp);
	err = ret < 0 ? errno : 0;
	__atomic_fetch_sub(&e->waiters, 1, __ATOMIC_RELAXED);
	if (__atomic_load_n(tail, __ATOMIC_ACQUIRE) != seen_tail)
		return -ESTALE;
	if (err == EAGAIN)
		return -ESTALE; /* tail moved before we slept */
	if (err == EINTR)
		return -EINTR;
	if (err == ETIMEDOUT)
		return -ETIMEDOUT;
	err = __atomic_load_n(&e->thread_error, __ATOMIC_ACQUIRE);
	if (err)
		return -err;
	return 0;
}

/* Level-triggered: sig_epfd is readable exactly while one of its two members is. */
static int sig_add(int epfd, int fd)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.fd = fd };

	return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) ? -errno : 0;
}

struct ue_emu *ue_emu_new(void *header, size_t header_len, void *index, size_t index_len,
			  uint32_t max_items, int protocol, int *err)
{
	struct ue_uheader *hdr = header;
	struct ue_emu *e;
	uint32_t i;
	int ret;

	*err = 0;
	if (max_items == 0 || max_items > UE_MAX_ITEMS || (protocol != 3 && protocol != 5) ||
	    header_len < UE_HEADER_SIZE + 16ull * max_items || index_len / 4 < max_items ||
	    index_len > UINT32_MAX) {
		*err = -EINVAL;
		return NULL;
	}
	/* What the kernel writes once at epoll_create2 time; the memory arrives zeroed. */
	hdr->magic = UE_USERPOLL_MAGIC;
	hdr->header_length = (uint32_t)header_len;
	hdr->index_length = (uint32_t)index_len;
	hdr->max_items_nr = max_items;

	e = calloc(1, sizeof(*e));
	if (!e)
		goto nomem;
	ret = ue_ring_attach(&e->ring, header, header_len, index, index_len, protocol);
	if (ret) {
		free(e);
		*err = ret;
		return NULL;
	}
	e->regs = calloc(max_items, sizeof(*e->regs));
	if (!e->regs)
		goto nomem_free;
	for (i = 0; i < max_items; i++)
		e->regs[i].fd = -1;
	e->inner_epfd = epoll_create1(EPOLL_CLOEXEC);
	if (e->inner_epfd < 0) {
		*err = -errno;
		goto fail_regs;
	}
	e->stop_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (e->stop_efd < 0) {
		*err = -errno;
		goto fail_inner;
	}
	e->ready_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (e->ready_efd < 0) {
		*err = -errno;
		goto fail_stop;
	}
	e->sig_epfd = epoll_create1(EPOLL_CLOEXEC);
	if (e->sig_epfd < 0) {
		*err = -errno;
		goto fail_ready;
	}
	ret = sig_add(e->sig_epfd, e->inner_epfd);
	if (!ret)
		ret = sig_add(e->sig_epfd, e->ready_efd);
	if (ret) {
		*err = ret;
		close(e->sig_epfd);
		goto fail_ready;
	}
	pthread_mutex_init(&e->lock, NULL);
	return e;

fail_ready:
	close(e->ready_efd);
fail_stop:
	close(e->stop_efd);
fail_inner:
	close(e->inner_epfd);
fail_regs:
	free(e->regs);
	free(e);
	return NULL;
nomem_free:
	free(e);
nomem:
	*err = -ENOMEM;
	return NULL;
}

int ue_emu_start(struct ue_emu *e)
{
	int ret = pthread_create(&e->thread, NULL, poller_main, e);

	if (ret)
		return -ret;
	__atomic_store_n(&e->thread_started, 1, __ATOMIC_RELEASE);
	return 0;
}

static int slot_lookup(struct ue_emu *e, int fd)
{
	if (fd < 0 || (size_t)fd >= e->slot_of_fd_len)
		return -1;
	return e->slot_of_fd[fd] - 1;
}

static int slot_map(struct ue_emu *e, int fd, int slot)
{
	if ((size_t)fd >= e->slot_of_fd_len) {
		size_t len = e->slot_of_fd_len ? e->slot_of_fd_len : 256;
		int32_t *p;

		while (len <= (size_t)fd)
			len *= 2;
		p = realloc(e->slot_of_fd, len * sizeof(*p));
		if (!p)
			return -ENOMEM;
		memset(p + e->slot_of_fd_len, 0, (len - e->slot_of_fd_len) * sizeof(*p));
		e->slot_of_fd = p;
		e->slot_of_fd_len = len;
	}
	e->slot_of_fd[fd] = slot + 1;
	return 0;
}

/* The kernel's DEL: a pending entry becomes exactly EPOLLREMOVED, and the slot is free. */
static void release_slot(struct ue_emu *e, uint32_t slot)
{
	struct ue_uitem *item = &e->ring.items[slot];
	uint32_t old = __atomic_load_n(&item->ready_events, __ATOMIC_RELAXED);

	/* If the consumer exchanges it to 0 first, the CAS fails and we see 0: nothing pending. */
	while (old && !__atomic_compare_exchange_n(&item->ready_events, &old, UE_EPOLLREMOVED, 0,
						   __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
		;
	e->slot_of_fd[e->regs[slot].fd] = 0;
	e->regs[slot].fd = -1;
	if (slot < e->free_hint)
		e->free_hint = slot;
}

/* The kernel's find_first_zero_bit over its item bitmap: the lowest free slot. */
static int lowest_free_slot(struct ue_emu *e)
{
	uint32_t i;

	for (i = e->free_hint; i < e->ring.max_items; i++) {
		if (e->regs[i].fd < 0) {
			e->free_hint = i;
			return (int)i;
		}
	}
	e->free_hint = e->ring.max_items;
	return -1;
}

static int inner_ctl(struct ue_emu *e, int op, int fd, uint32_t events, uint32_t slot)
{
	struct epoll_event ev = { .events = events, .data.u64 = slot };

	return epoll_ctl(e->inner_epfd, op, fd, &ev) ? -errno : 0;
}

/*
 * True if fd is (a dup of) sig_epfd, the fd epoll.fileno() returns: epoll_ctl on an epfd with
 * its own file as the target is EINVAL, and the caller's ctl must say so, as a plain epoll's
 * does. The kernel makes the same test before any other on a MOD of sig_epfd; a MOD of fd
 * there changes nothing that matters (ENOENT unless fd is one of its two members, which it
 * sets to what they already are). Only asked on paths that are failing anyway.
 */
static int is_own_file(struct ue_emu *e, int fd)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.fd = fd };

	return epoll_ctl(e->sig_epfd, EPOLL_CTL_MOD, fd, &ev) < 0 && errno == EINVAL;
}

int ue_emu_ctl(struct ue_emu *e, int op, int fd, uint32_t events, uint64_t data)
{
	struct ue_uitem *item;
	int slot, ret;

	/* The rules of a userpoll epfd (do_epoll_ctl in the kernel port). */
	if (op == EPOLL_CTL_ADD || op == EPOLL_CTL_MOD) {
		if (!(events & EPOLLET) || (events & EPOLLEXCLUSIVE) ||
		    (events & UE_EPOLLREMOVED))
			return -EINVAL;
		events &= ~EPOLLWAKEUP;
	} else if (op != EPOLL_CTL_DEL) {
		return -EINVAL;
	}
	if (fd < 0)
		return -EBADF;

	pthread_mutex_lock(&e->lock);
	slot = slot_lookup(e, fd);
	switch (op) {
	case EPOLL_CTL_ADD: {
		/*
		 * If we still map fd to a slot but the inner epoll accepts the ADD, the file was
		 * closed and the kernel dropped its registration (as it frees the item on close):
		 * the old slot goes as on DEL. The inner ADD decides, so a real duplicate fails
		 * with EEXIST before anything changes.
		 */
		int first = slot >= 0 ? slot : lowest_free_slot(e);
		int fresh;

		if (first < 0) {
			ret = -ENOSPC;
			break;
		}
		ret = inner_ctl(e, EPOLL_CTL_ADD, fd, events, (uint32_t)first);
		if (ret == -ELOOP && is_own_file(e, fd))
			ret = -EINVAL; /* sig_epfd holds inner_epfd: the loop is itself */
		if (ret)
			break;
		if (slot >= 0)
			release_slot(e, (uint32_t)slot);
		fresh = lowest_free_slot(e);
		if (fresh != first) {
			ret = inner_ctl(e, EPOLL_CTL_MOD, fd, events, (uint32_t)fresh);
			if (ret) {
				inner_ctl(e, EPOLL_CTL_DEL, fd, 0, 0);
				break;
			}
		}
		ret = slot_map(e, fd, fresh);
		if (ret) {
			inner_ctl(e, EPOLL_CTL_DEL, fd, 0, 0);
			break;
		}
		/* Fill the shared item before the harvest below can publish an event for it. */
		item = &e->ring.items[fresh];
		__atomic_store_n(&item->events, events | EPOLLERR | EPOLLHUP, __ATOMIC_RELAXED);
		__atomic_store_n(&item->data, data, __ATOMIC_RELAXED);
		e->regs[fresh] = (struct ue_reg){ .fd = fd, .events = events, .data = data };
		ret = harvest_locked(e);
		break;
	}
	case EPOLL_CTL_MOD:
		if (slot < 0) {
			/* Not ours; let the inner epoll pick the errno (EBADF, EPERM, ENOENT). */
			ret = inner_ctl(e, EPOLL_CTL_MOD, fd, events, 0);
			ret = ret == 0 ? -ENOENT : ret;
			if (ret == -ENOENT && is_own_file(e, fd))
				ret = -EINVAL;
			break;
		}
		item = &e->ring.items[slot];
		__atomic_store_n(&item->events, events | EPOLLERR | EPOLLHUP, __ATOMIC_RELAXED);
		__atomic_store_n(&item->data, data, __ATOMIC_RELAXED);
		e->regs[slot].events = events;
		e->regs[slot].data = data;
		ret = inner_ctl(e, EPOLL_CTL_MOD, fd, events, slot);
		if (ret == -ENOENT) {
			release_slot(e, (uint32_t)slot); /* closed behind our back */
			break;
		}
		if (ret)
			break;
		ret = harvest_locked(e);
		break;
	case EPOLL_CTL_DEL:
		if (slot < 0) {
			ret = inner_ctl(e, EPOLL_CTL_DEL, fd, 0, 0);
			ret = ret == 0 ? -ENOENT : ret;
			if (ret == -ENOENT && is_own_file(e, fd))
				ret = -EINVAL;
			break;
		}
		ret = inner_ctl(e, EPOLL_CTL_DEL, fd, 0, 0);
		if (ret == 0 || ret == -ENOENT) {
			release_slot(e, (uint32_t)slot);
			ret = ret == 0 ? 0 : -ENOENT;
		}
		break;
	default:
		ret = -EINVAL;
	}
	pthread_mutex_unlock(&e->lock);
	return ret;
}

/* Publish events for fd as if its file had woken the inner epoll (tests and benchmarks). */
int ue_emu_inject(struct ue_emu *e, int fd, uint32_t events)
{
	int slot, ret = 0;

	pthread_mutex_lock(&e->lock);
	slot = slot_lookup(e, fd);
	if (slot < 0) {
		ret = -ENOENT;
	} else {
		uint64_t before = e->published;

		publish(e, (uint32_t)slot, events);
		if (e->published != before)
			wake_consumers(e);
		signal_flush(e);
	}
	pthread_mutex_unlock(&e->lock);
	return ret;
}

/*
 * Publish everything the inner epoll already holds, from the caller's thread. The kernel
 * publishes inside the waker's own system call; the poller thread publishes a little later.
 * A consumer about to report "nothing ready" calls this first, so that an event whose write
 * returned before poll(0) was called is never missed.
 */
int ue_emu_sync(struct ue_emu *e)
{
	int ret;

	pthread_mutex_lock(&e->lock);
	ret = harvest_locked(e);
	pthread_mutex_unlock(&e->lock);
	return ret;
}

/*
 * Drop the registration of fd, whose file the caller found closed (the inner epoll no longer
 * lists it): the kernel would have removed it on close, with EPOLLREMOVED for a pending
 * entry. Returns -ENOENT if fd has no slot.
 */
int ue_emu_forget(struct ue_emu *e, int fd)
{
	int slot, ret = 0;

	pthread_mutex_lock(&e->lock);
	slot = slot_lookup(e, fd);
	if (slot < 0)
		ret = -ENOENT;
	else
		release_slot(e, (uint32_t)slot);
	pthread_mutex_unlock(&e->lock);
	return ret;
}

int ue_emu_inner_fd(struct ue_emu *e)
{
	return e->inner_epfd;
}

int ue_emu_poll_fd(struct ue_emu *e)
{
	return e->sig_epfd;
}

int ue_emu_thread_error(struct ue_emu *e)
{
	return __atomic_load_n(&e->thread_error, __ATOMIC_ACQUIRE);
}

int ue_emu_stop(struct ue_emu *e)
{
	uint64_t one = 1;
	int ret;

	if (!e->thread_started)
		return 0;
	if (write(e->stop_efd, &one, sizeof(one)) != sizeof(one))
		return -errno;
	ret = pthread_join(e->thread, NULL);
	__atomic_store_n(&e->thread_started, 0, __ATOMIC_RELEASE);
	/* Wake anyone still asleep so they see the stopped poller. */
	futex(&e->ring.hdr->tail, FUTEX_WAKE_PRIVATE, INT_MAX, NULL);
	return -ret;
}

void ue_emu_free(struct ue_emu *e)
{
	if (!e)
		return;
	ue_emu_stop(e);
	close(e->sig_epfd);
	close(e->ready_efd);
	close(e->inner_epfd);
	close(e->stop_efd);
	pthread_mutex_destroy(&e->lock);
	free(e->slot_of_fd);
	free(e->regs);
	free(e);
}
