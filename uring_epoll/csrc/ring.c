// SPDX-License-Identifier: MIT
/*
 * The EPOLL_USERPOLL consumer: drain the index ring into a caller's buffer of packed
 * struct epoll_event, then (ue_poll) spin and sleep the way the RFC's reference loop does.
 *
 * Memory ordering, in the words of the C11 model (GCC __atomic builtins):
 *
 *  - tail is loaded with ACQUIRE. It pairs with the producer's RELEASE when it publishes tail
 *    (kernel: the last CPU leaving the append path; emulator: ue_emu append), so every index
 *    slot below tail, and the ready_events OR that preceded the append, are visible.
 *  - protocol 3 only: the producer bumps tail before it writes the slot, so the slot itself is
 *    loaded with ACQUIRE (pairs with the producer's RELEASE store of slot + 1) and a zero means
 *    "reserved, not yet written": we wait for it a bounded time, never forever.
 *  - item.data is read before ready_events is exchanged with 0 (ACQ_REL). The RELEASE half
 *    keeps the data load before the exchange: once ready_events is 0 the producer may append
 *    the slot again, or a DEL + ADD may hand the slot to a new owner with new data; the
 *    ACQUIRE half pairs with the producer's atomic OR so we see the bits it set.
 *    Exchanging (never "load, then store 0") is what keeps a bit ORed in between from being
 *    lost without a new ring entry.
 *  - head is stored with RELEASE after the batch. It pairs with the kernel's ACQUIRE of head
 *    when it decides "ring non-empty" (ESTALE, poll of the epfd) and orders our reads of the
 *    index slots (and, in protocol 3, the zeroing stores) before the slots can be reused.
 *  - The RELAXED loads of head and tail outside the consumer lock (ue_drain's empty test,
 *    ring_empty's head, the sleep decision) are hints only: every entry taken is taken by
 *    drain_locked, which loads tail again with ACQUIRE.
 *  - The consumer lock: the ACQUIRE exchange in consumer_trylock pairs with the RELEASE store
 *    in consumer_unlock, so one drain's head store and stuck-slot record are seen by the next.
 *
 * Nothing read from shared memory is trusted: tail - head must fit in the ring, every slot
 * number must be below max_items (our private copy, taken when the ring was attached), and
 * the index position is head masked by our own copy of the index size. Whatever those words
 * hold, no loop waits on them without a bound: a protocol-3 slot reserved and never written
 * ends in -EBADMSG after UE_V3_STUCK_NS, and ue_poll's busy loops return -EINTR every
 * UE_BUSY_SLICE_NS so that the caller sees signals.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "ue_internal.h"

#define UE_EPOLLERR 0x008u
#define UE_EPOLLHUP 0x010u

/*
 * How long a protocol-3 consumer spins on a reserved slot before giving up the batch (a few
 * microseconds). The RFC's v3 consumer spun without a bound; but the producer that reserved
 * the slot may have been preempted, possibly by us, so the poll loop then yields the CPU
 * instead of spinning on (see poll_inner).
 */
#define UE_V3_SLOT_SPINS (1u << 10)

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#else
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
#endif
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int is_pow2(uint64_t x)
{
	return x && !(x & (x - 1));
}

int ue_ring_attach(struct ue_ring *ring, void *header, size_t header_len, void *index,
		   size_t index_len, int protocol)
{
	struct ue_uheader *hdr = header;
	uint32_t n;

	if (protocol != 3 && protocol != 5)
		return -EINVAL;
	if (!header || !index || header_len < UE_HEADER_SIZE)
		return -EINVAL;
	/* Header words (and items' data) are accessed atomically: natural alignment. */
	if ((uintptr_t)header % 8 || (uintptr_t)index % 4)
		return -EINVAL;
	/* These fields are written once, before the ring is handed out; check them all. */
	if (hdr->magic != UE_USERPOLL_MAGIC)
		return -EBADMSG;
	n = hdr->max_items_nr;
	if (n == 0 || n > UE_MAX_ITEMS)
		return -EBADMSG;
	if ((uint64_t)UE_HEADER_SIZE + 16ull * n > header_len)
		return -EBADMSG;
	if (hdr->index_length != index_len || !is_pow2(index_len) || index_len / 4 < n)
		return -EBADMSG;
	ring->hdr = hdr;
	ring->items = (struct ue_uitem *)((char *)header + UE_HEADER_SIZE);
	ring->index = index;
	ring->index_mask = (uint32_t)(index_len / 4 - 1);
	ring->max_items = n;
	ring->protocol = protocol;
	return 0;
}

int ue_consumer_init(struct ue_consumer *c, void *header, size_t header_len, void *index,
		     size_t index_len, int protocol, int mode, int epfd, struct ue_emu *emu,
		     uint64_t spin_ns)
{
	int ret;

	memset(c, 0, sizeof(*c));
	ret = ue_ring_attach(&c->ring, header, header_len, index, index_len, protocol);
	if (ret)
		return ret;
	if (mode != UE_WAIT_KERNEL && mode != UE_WAIT_FUTEX)
		return -EINVAL;
	if (mode == UE_WAIT_FUTEX && !emu)
		return -EINVAL;
	c->mode = mode;
	c->epfd = epfd;
	c->emu = emu;
	c->spin_ns = spin_ns < UE_SPIN_MAX_NS ? spin_ns : UE_SPIN_MAX_NS;
	return 0;
}

int ue_consumer_init_uring(struct ue_consumer *c, struct ue_uring *u, uint64_t spin_ns)
{
	memset(c, 0, sizeof(*c));
	if (!u)
		return -EINVAL;
	c->mode = UE_WAIT_URING;
	c->uring = u;
	c->epfd = -1;
	c->spin_ns = spin_ns < UE_SPIN_MAX_NS ? spin_ns : UE_SPIN_MAX_NS;
	return 0;
}

int ue_consumer_init_epoll(struct ue_consumer *c, int epfd)
{
	memset(c, 0, sizeof(*c));
	c->mode = UE_WAIT_EPOLL;
	c->epfd = epfd;
	return 0;
}

static void mark_bad(struct ue_consumer *c, uint32_t kind, uint32_t pos, uint32_t value)
{
	c->bad_kind = kind;
	c->bad_position = pos;
	c->bad_value = value;
}

/*
 * Protocol 3: a drain found the slot at head reserved but unwritten, having taken nothing.
 * True once drains have stopped at this same head for UE_V3_STUCK_NS: a producer reserves and
 * writes within a few instructions, so a slot unwritten that long is a dead producer or a
 * corrupt tail, and waiting longer would wait forever. Caller holds c->lock.
 */
static int slot_stuck(struct ue_consumer *c, uint32_t head)
{
	uint64_t now = now_ns();

	if (!c->stuck_since || c->stuck_head != head) {
		c->stuck_head = head;
		c->stuck_since = now;
		return 0;
	}
	return now - c->stuck_since >= UE_V3_STUCK_NS;
}

/*
 * Drain up to maxevents. Returns the number written, or -EBADMSG when the first entry looked
 * at is corrupt; a corrupt entry after good ones ends the batch early and is reported by the
 * next call, so the events already consumed are never lost. Caller holds c->lock.
 */
static long drain_locked(struct ue_consumer *c, char *out, uint64_t *data_out,
			 uint32_t maxevents)
{
	struct ue_ring *r = &c->ring;
	uint32_t head = __atomic_load_n(&r->hdr->head, __ATOMIC_RELAXED); /* we own head */
	uint32_t tail = __atomic_load_n(&r->hdr->tail, __ATOMIC_ACQUIRE);
	uint32_t first = head, n = 0, skipped = 0;
	long ret = 0;

	if (head == tail)
		return 0;
	if (tail - head > r->index_mask + 1) {
		mark_bad(c, 2, head, tail);
		return -EBADMSG;
	}
	while (head != tail && n < maxevents) {
		uint32_t *slotp = &r->index[head & r->index_mask];
		uint32_t slot, events, interest;
		struct ue_uitem *item;
		uint64_t data;

		if (r->protocol == 5) {
			slot = __atomic_load_n(slotp, __ATOMIC_ACQUIRE);
		} else {
			uint32_t spins = 0, v;

			/* Pairs with the producer's RELEASE store of slot + 1. */
			while ((v = __atomic_load_n(slotp, __ATOMIC_ACQUIRE)) == 0) {
				if (++spins == UE_V3_SLOT_SPINS) {
					c->stats.slot_waits++;
					if (n || skipped || !slot_stuck(c, head))
						goto out; /* reserved but unwritten: next call */
					mark_bad(c, 3, head, tail);
					ret = -EBADMSG;
					goto out;
				}
				cpu_relax();
			}
			slot = v - 1;
		}
		if (slot >= r->max_items) {
			mark_bad(c, 1, head, slot);
			ret = -EBADMSG;
			break;
		}
		/* Protocol 3: zero the slot so the next lap can tell "not yet written". */
		if (r->protocol == 3)
			__atomic_store_n(slotp, 0, __ATOMIC_RELAXED);
		item = &r->items[slot];
		data = __atomic_load_n(&item->data, __ATOMIC_RELAXED);
		events = __atomic_exchange_n(&item->ready_events, 0, __ATOMIC_ACQ_REL);
		head++;
		/* The producer may OR in wake bits nobody asked for; ERR and HUP always count. */
		interest = __atomic_load_n(&item->events, __ATOMIC_RELAXED) | UE_EPOLLERR |
			   UE_EPOLLHUP;
		events &= interest & ~UE_EPOLLREMOVED;
		if (!events) {
			skipped++;
			continue;
		}
		ue_put_event(out, data_out, n++, events, data);
	}
out:
	if (head != first)
		c->stuck_since = 0; /* progress: whatever stopped us before was written */
	/* Pairs with the producer's ACQUIRE of head (ring non-empty checks). */
	__atomic_store_n(&r->hdr->head, head, __ATOMIC_RELEASE);
	c->stats.ring_events += n;
	c->stats.skipped += skipped;
	if (n)
		return n;
	return ret;
}

static int consumer_trylock(struct ue_consumer *c)
{
	return !__atomic_exchange_n(&c->lock, 1, __ATOMIC_ACQUIRE);
}

static void consumer_unlock(struct ue_consumer *c)
{
	__atomic_store_n(&c->lock, 0, __ATOMIC_RELEASE);
}

static void consumer_lock(struct ue_consumer *c)
{
	while (!consumer_trylock(c))
		sched_yield();
}

long ue_drain(struct ue_consumer *c, void *out, uint64_t *data_out, uint32_t maxevents)
{
	long ret;

	/* Empty ring: no need to take the consumer lock (drain_locked re-reads both). */
	if (__atomic_load_n(&c->ring.hdr->head, __ATOMIC_RELAXED) ==
	    __atomic_load_n(&c->ring.hdr->tail, __ATOMIC_RELAXED))
		return 0;
	consumer_lock(c);
	ret = drain_locked(c, out, data_out, maxevents);
	consumer_unlock(c);
	return ret;
}

long ue_poll_bound(const struct ue_binding *b, int64_t timeout_ns)
{
	const struct ue_ndarray_head *a = b->array;

	/* A few loads instead of the ~1 us a per-call buffer request costs in Python. */
	if (a && (a->data != (char *)b->out || a->nd != 1 || a->dimensions[0] != b->length ||
		  a->descr != b->descr || !(a->flags & UE_NPY_ARRAY_WRITEABLE)))
		return -UE_EMOVED;
	return ue_poll(b->consumer, b->out, b->data_out, b->max, timeout_ns);
}

/*
 * Closing while other threads poll: mark the consumer closed and wake futex sleepers; they
 * return -EBADF. ue_consumer_quiesce then waits until no thread is left inside ue_poll, after
 * which the producer (and its memory) can go. A thread asleep in epoll_wait on a kernel
 * userpoll epfd is not woken (as with select.epoll), but that path touches nothing we free.
 */
void ue_consumer_close(struct ue_consumer *c)
{
	__atomic_store_n(&c->closing, 1, __ATOMIC_SEQ_CST);
	if (c->mode == UE_WAIT_FUTEX)
		syscall(SYS_futex, &c->ring.hdr->tail, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
	if (c->mode == UE_WAIT_URING)
		ue__uring_wake(c->uring);
}

void ue_consumer_quiesce(struct ue_consumer *c)
{
	while (__atomic_load_n(&c->inflight, __ATOMIC_ACQUIRE)) {
		if (c->mode == UE_WAIT_FUTEX)
			syscall(SYS_futex, &c->ring.hdr->tail, FUTEX_WAKE_PRIVATE, INT_MAX, NULL,
				NULL, 0);
		if (c->mode == UE_WAIT_URING)
			ue__uring_wake(c->uring);
		sched_yield();
	}
}

/* epoll_wait into the split layout (u32 events, u64 data), through a stack buffer. */
static long epoll_wait_split(int epfd, void *events_out, uint64_t *data_out, uint32_t maxevents,
			     int64_t timeout_ns)
{
	struct epoll_event chunk[256];
	uint32_t total = 0;

	while (total < maxevents) {
		uint32_t want = maxevents - total < 256 ? maxevents - total : 256;
		int i, n = ue_sys_epoll_wait_ns(epfd, chunk, (int)want, total ? 0 : timeout_ns);

		if (n < 0)
			return total ? (long)total : n;
		for (i = 0; i < n; i++) {
			((uint32_t *)events_out)[total + i] = chunk[i].events;
			data_out[total + i] = chunk[i].data.u64;
		}
		total += (uint32_t)n;
		if ((uint32_t)n < want)
			break;
	}
	return total;
}

/*
 * Kernel mode: the kernel set the header's repoll word, so files woke the epoll without a key
 * and wait for their owner to poll them (their events reach the ring only then). The load is
 * RELAXED: the word is a hint. The kernel sets it under ep->lock after queueing the item and
 * clears it before it takes the queue under that lock, so a wakeup is never left unannounced;
 * a stale 1 costs one epoll_wait(NULL, 0, 0) that finds nothing, and the system call itself
 * orders everything that follows it. The emulator never sets it.
 */
static int repoll_pending(const struct ue_consumer *c)
{
	return c->mode == UE_WAIT_KERNEL &&
	       __atomic_load_n(&c->ring.hdr->repoll, __ATOMIC_RELAXED) != 0;
}

static int ring_empty(struct ue_consumer *c)
{
	return __atomic_load_n(&c->ring.hdr->head, __ATOMIC_RELAXED) ==
		       __atomic_load_n(&c->ring.hdr->tail, __ATOMIC_ACQUIRE) &&
	       !repoll_pending(c);
}

/*
 * Kernel mode: a sleep ended with -ESTALE, the kernel's word that the ring holds entries. The
 * ring read head and tail (as seen here) just before the sleep. True once the kernel has
 * said so UE_ESTALE_STUCK times in a row while the ring here was empty before the sleep and
 * has not changed since: the kernel and this mapping disagree about the ring (it is not the
 * memory the kernel fills), so every further sleep would end at once. Shared by the threads
 * polling this consumer; any change of head or tail, ours or another thread's, starts over.
 */
static int estale_without_progress(struct ue_consumer *c, uint32_t head, uint32_t tail)
{
	uint32_t now_head = __atomic_load_n(&c->ring.hdr->head, __ATOMIC_RELAXED);
	uint32_t now_tail = __atomic_load_n(&c->ring.hdr->tail, __ATOMIC_ACQUIRE);

	if (head != tail || now_head != head || now_tail != tail) {
		__atomic_store_n(&c->estale_idle, 0, __ATOMIC_RELAXED);
		return 0;
	}
	if (__atomic_add_fetch(&c->estale_idle, 1, __ATOMIC_RELAXED) < UE_ESTALE_STUCK)
		return 0;
	__atomic_store_n(&c->estale_idle, 0, __ATOMIC_RELAXED);
	consumer_lock(c);
	mark_bad(c, 4, head, tail);
	consumer_unlock(c);
	return 1;
}

/*
 * The consumer this thread's last ue_poll returned -EINTR for after a spin or a busy slice:
 * the caller is calling again at once (its signal handlers having run), and this call goes
 * to sleep without spinning first. Per thread, so that pollers on other threads keep theirs.
 */
static __thread const struct ue_consumer *resumed;

/*
 * The reference consumer loop in one call: drain; if empty, spin on tail for spin_ns; then
 * sleep until entries appear (kernel: epoll_wait(NULL, 0) returning -ESTALE; emulator: futex)
 * and drain again. With data_out NULL, out receives packed struct epoll_event; otherwise out
 * is a u32 events array and data_out a u64 data array. Returns the count (0 on timeout) or -errno (-EINTR: the caller handles
 * signals and calls again with what is left of its timeout).
 */
static long poll_inner(struct ue_consumer *c, void *out, uint64_t *data_out, uint32_t maxevents,
		       int64_t timeout_ns)
{
	uint64_t deadline = 0, now, busy_since = 0;
	int synced = 0, may_spin = resumed != c;
	long n;

	resumed = NULL;

	if (c->mode == UE_WAIT_EPOLL) {
		/* The baseline backend: no ring, epoll_wait writes the packed events itself. */
		if (!data_out)
			return ue_sys_epoll_wait_ns(c->epfd, out, (int)maxevents, timeout_ns);
		return epoll_wait_split(c->epfd, out, data_out, maxevents, timeout_ns);
	}
	if (c->mode == UE_WAIT_URING) {
		uint64_t spin_end;

		if (!c->spin_ns || !may_spin || timeout_ns == 0)
			return ue__uring_poll(c->uring, out, data_out, maxevents, timeout_ns,
					      &c->closing);
		/* As below for the rings: drain, spin on the CQ, then sleep in the kernel. */
		n = ue__uring_poll(c->uring, out, data_out, maxevents, 0, &c->closing);
		if (n != 0)
			return n;
		now = now_ns();
		spin_end = now + c->spin_ns;
		if (timeout_ns > 0 && spin_end > now + (uint64_t)timeout_ns)
			spin_end = now + (uint64_t)timeout_ns;
		c->stats.spins++;
		while (!ue__uring_pending(c->uring) && now_ns() < spin_end)
			cpu_relax();
		if (ue__uring_pending(c->uring)) {
			c->stats.spin_hits++;
			if (timeout_ns > 0) {
				now = now_ns() - now;
				timeout_ns = now >= (uint64_t)timeout_ns ? 0 : timeout_ns - (int64_t)now;
			}
			return ue__uring_poll(c->uring, out, data_out, maxevents, timeout_ns,
					      &c->closing);
		}
		if (timeout_ns > 0 && now_ns() - now >= (uint64_t)timeout_ns)
			return 0;
		/* A signal during the spin: the caller's handlers run first (see below). */
		resumed = c;
		return -EINTR;
	}
	if (!maxevents)
		return -EINVAL;

	if (timeout_ns > 0)
		deadline = now_ns() + (uint64_t)timeout_ns;
	for (;;) {
		if (__atomic_load_n(&c->closing, __ATOMIC_RELAXED))
			return -EBADF;
		if (repoll_pending(c)) {
			/*
			 * Before the drain, not only when it finds nothing: a ring that is never
			 * empty must not hold back a signalfd or a hang-up for ever. The kernel
			 * polls the waiting files and appends what they report (-ESTALE), or
			 * finds nothing to report (0).
			 */
			int ret = ue_sys_epoll_wait_null(c->epfd, 0);

			c->stats.repolls++;
			if (ret < 0 && ret != -ESTALE)
				return ret;
		}
		n = ue_drain(c, out, data_out, maxevents);
		if (n != 0)
			return n;
		if (timeout_ns == 0) {
			if (c->mode != UE_WAIT_FUTEX || synced)
				return 0;
			/* Emulator: take what the poller thread has not published yet. */
			synced = 1;
			n = ue_emu_sync(c->emu);
			if (n < 0)
				return n;
			continue;
		}
		if (c->spin_ns && may_spin) {
			uint64_t spin_end = now_ns() + c->spin_ns;

			/* Never past the timeout; spin_ns is at most UE_SPIN_MAX_NS. */
			if (timeout_ns > 0 && spin_end > deadline)
				spin_end = deadline;
			c->stats.spins++;
			while (ring_empty(c)) {
				cpu_relax();
				if (now_ns() >= spin_end)
					break;
			}
			if (!ring_empty(c)) {
				c->stats.spin_hits++;
				continue;
			}
			if (timeout_ns > 0 && now_ns() >= deadline)
				return 0;
			/*
			 * A signal that came during the spin has run its C handler, and would not
			 * interrupt the sleep that follows: return for the caller to run the Python
			 * handlers, and sleep without spinning when it calls again.
			 */
			resumed = c;
			return -EINTR;
		}
		int64_t left = -1;

		if (timeout_ns > 0) {
			now = now_ns();
			if (now >= deadline)
				return 0;
			left = (int64_t)(deadline - now);
		}
		if (c->mode == UE_WAIT_KERNEL) {
			c->stats.sleeps++;
			/* Round up like CPython's select.epoll, so we never return early. */
			int ms = left < 0 ? -1 :
				 (int)((left + 999999) / 1000000 > INT_MAX ?
					       INT_MAX :
					       (left + 999999) / 1000000);
			uint32_t head = __atomic_load_n(&c->ring.hdr->head, __ATOMIC_RELAXED);
			uint32_t tail = __atomic_load_n(&c->ring.hdr->tail, __ATOMIC_ACQUIRE);
			int ret = ue_sys_epoll_wait_null(c->epfd, ms);

			may_spin = 1;
			if (ret == -ESTALE) {
				c->stats.estale++;
				if (estale_without_progress(c, head, tail))
					return -EBADMSG;
				continue;
			}
			if (ret < 0)
				return ret;
			/* 0: timed out (the kernel's clock, not ours). */
			if (timeout_ns < 0)
				continue;
			if (now_ns() >= deadline)
				return 0;
			continue;
		} else {
			uint32_t tail = __atomic_load_n(&c->ring.hdr->tail, __ATOMIC_ACQUIRE);
			uint32_t head = __atomic_load_n(&c->ring.hdr->head, __ATOMIC_RELAXED);
			int ret;

			if (head != tail) {
				/*
				 * Entries we could not take: new ones (drain again at once) or, with
				 * protocol 3, one reserved but not yet written by a producer that
				 * may need this CPU to finish. That wait is bounded by the drain
				 * (-EBADMSG after UE_V3_STUCK_NS) and returns to the caller every
				 * UE_BUSY_SLICE_NS, for its signal handlers.
				 */
				if (c->ring.protocol == 3) {
					now = now_ns();
					if (!busy_since) {
						busy_since = now;
					} else if (now - busy_since >= UE_BUSY_SLICE_NS) {
						resumed = c;
						return -EINTR;
					}
					sched_yield();
				}
				continue;
			}
			c->stats.sleeps++;
			may_spin = 1;
			ret = ue__emu_wait(c->emu, &c->ring.hdr->tail, tail, left, &c->closing);
			if (ret == -ESTALE) {
				c->stats.estale++;
				continue;
			}
			if (ret < 0 && ret != -ETIMEDOUT)
				return ret;
			if (timeout_ns > 0 && now_ns() >= deadline)
				return 0;
		}
	}
}

long ue_poll(struct ue_consumer *c, void *out, uint64_t *data_out, uint32_t maxevents,
	     int64_t timeout_ns)
{
	long ret;

	/* Counted so that close can wait for us before the producer's memory goes. */
	__atomic_fetch_add(&c->inflight, 1, __ATOMIC_SEQ_CST);
	ret = poll_inner(c, out, data_out, maxevents, timeout_ns);
	/* Emulator: the ring was empty, so its pollable fd must stop saying otherwise. */
	if (ret == 0 && c->mode == UE_WAIT_FUTEX)
		ue__emu_idle(c->emu);
	__atomic_fetch_sub(&c->inflight, 1, __ATOMIC_RELEASE);
	return ret;
}

/* What other extension modules call (see struct ue_runtime in ue.h). */
static const struct ue_runtime runtime_table = {
	.consumer_init = ue_consumer_init,
	.drain = ue_drain,
	.emu_inject = ue_emu_inject,
};

const struct ue_runtime *ue_runtime_table(void)
{
	return &runtime_table;
}
