// SPDX-License-Identifier: MIT
/*
 * The "uring" backend: epoll readiness from io_uring poll requests, no helper thread.
 *
 * Written over the raw system calls (io_uring_setup/io_uring_enter/io_uring_register through
 * syscall(2)) with the SQ/CQ ring code here, not over liburing: `pip install .` must build
 * with gcc and the kernel headers alone, and the few ring operations a poll backend needs
 * (queue an SQE, consume CQEs, enter) are short enough to own, with their memory ordering
 * written out below.
 *
 * Registrations. Each one has a slot in a table of max_items; a poll request carries
 * user_data = generation << 32 | slot, and the generation of a slot changes with every ADD,
 * MOD and DEL, so a CQE of a request that was removed or replaced is recognised as stale and
 * dropped, never delivered. The user's 64-bit data lives in the slot, so it is delivered
 * exactly as given.
 *  - EPOLLET: one multishot poll (IORING_POLL_ADD_MULTI). When it ends (a CQE without
 *    IORING_CQE_F_MORE: the CQ was full, or the kernel cancelled it) it is re-armed.
 *  - level-triggered: a single-shot poll, re-armed after each delivery by an SQE queued at
 *    once and submitted with the next io_uring_enter (the next poll's), so the file is polled
 *    again when the caller asks again, as epoll_wait does, and one enter carries every re-arm
 *    of a batch.
 *  - EPOLLONESHOT: a single-shot poll, not re-armed until MOD.
 *  - MOD: POLL_REMOVE of the old request and POLL_ADD of the new generation, submitted in one
 *    enter (in order); DEL: POLL_REMOVE. The removed request's CQE (-ECANCELED, or a last
 *    event) carries the old generation and is dropped.
 * A request that ends with -ECANCELED while its registration is current (the kernel cancels a
 * poll whose submitting thread has exited when it next fires) is re-armed like an ended
 * multishot poll: its arming poll reports the file's readiness, so nothing is lost.
 *
 * Errors of epoll_ctl are epoll's own: each ctl is first applied to a shadow epoll that
 * holds the same registrations (never waited on), so bad fds, files without poll support,
 * ADD twice, MOD/DEL of a file not registered all fail with the kernel's errno, and whether
 * a registered fd still names the file it was registered with is a MOD away (ue_uring_live).
 *
 * A poll request holds a reference to its file, so closing a registered fd without DEL does
 * not end the registration as it does in epoll: the file stays open and its events are still
 * delivered until the registration is found closed (ue_uring_live_fds, ue_uring_forget).
 *
 * Batches coalesce: a multishot poll posts one CQE per wake-up where epoll reports a ready
 * file once, so the CQEs of one registration in one drain are ORed into one event.
 *
 * Memory ordering (C11 model, GCC __atomic builtins), against the kernel's side of io_uring:
 *  - CQ tail is loaded with ACQUIRE: pairs with the kernel's smp_store_release of cq.tail
 *    after it wrote the CQEs (io_commit_cqring), so every CQE below tail is visible.
 *  - CQ head is stored with RELEASE after the CQEs were read: pairs with the kernel's
 *    acquire of cq.head when it decides whether a CQE slot is free, so our reads of a slot
 *    come before the kernel may overwrite it.
 *  - SQ tail is stored with RELEASE after the SQEs and the index array were written: pairs
 *    with the kernel's smp_load_acquire of sq.tail (io_sqring_entries), so it reads whole
 *    SQEs.
 *  - SQ head is loaded with ACQUIRE: pairs with the kernel's smp_store_release of sq.head
 *    once it has consumed the SQEs, so a slot below it can be written again.
 *  - SQ flags are loaded with ACQUIRE: pairs with the kernel's atomic set of
 *    IORING_SQ_CQ_OVERFLOW after it queued a CQE on its overflow list.
 * Nothing read from the shared rings is trusted: the masks and sizes are our own copies,
 * checked once when the rings are attached; tail - head must fit in the ring; every index is
 * masked with our copy; a CQE's slot is checked against max_items.
 *
 * Setup mode: the default (completions posted by task_work that an IPI runs as soon as the
 * waker's wake-up happens). IORING_SETUP_DEFER_TASKRUN posts completions only inside
 * io_uring_enter, so a poll(0) could never see an event without a system call, and it needs
 * SINGLE_ISSUER, which refuses submissions from any thread but one, where an epoll object is
 * used from several; IORING_SETUP_COOP_TASKRUN never interrupts the submitting thread, so a
 * poll on another thread could sleep while completions wait for the submitter's next system
 * call. backends/uring.py has the measurements.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <linux/io_uring.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "ue_internal.h"

#ifndef __NR_io_uring_setup
#define __NR_io_uring_setup 425
#endif
#ifndef __NR_io_uring_enter
#define __NR_io_uring_enter 426
#endif
#ifndef __NR_io_uring_register
#define __NR_io_uring_register 427
#endif

/* user_data of our own requests (POLL_REMOVE, the close wake-up): a slot no table has. */
#define UD_INTERNAL 0xffffffffull

/* The poll bits a request asks for; EPOLLET, EPOLLONESHOT and friends are ours to handle. */
#define POLL_BITS 0xffffu
#define EV_ERR 0x008u
#define EV_HUP 0x010u
#define EV_ONESHOT (1u << 30)
#define EV_ET (1u << 31)

enum reg_mode { REG_FREE = 0, REG_ET, REG_LT, REG_ONESHOT };

struct reg {
	uint64_t data;	 /* the user's data, delivered as given */
	uint32_t events; /* the poll bits asked for */
	uint32_t gen;	 /* generation of the current request (user_data's high half) */
	uint32_t batch;	 /* the drain that last delivered it ... */
	uint32_t pos;	 /* ... and where, to OR further CQEs into that event */
	int32_t fd;
	uint8_t mode;
	uint8_t armed;	  /* a request of this generation is queued or in flight */
	uint8_t need_arm; /* a re-arm found no SQE: queued by a later drain */
	uint32_t next_free;
};

struct ue_uring {
	int ring_fd;
	int shadow_fd; /* epoll holding the same registrations: epoll's errors, liveness */
	int front_fd;  /* epoll holding ring_fd alone: what epoll.fileno() is */
	struct io_uring_params params;
	/* Mapped by the caller (Python owns the mappings), checked by ue_uring_attach. */
	uint32_t *sq_khead, *sq_ktail, *sq_kflags, *sq_array;
	struct io_uring_sqe *sqes;
	uint32_t *cq_khead, *cq_ktail;
	struct io_uring_cqe *cqes;
	uint32_t sq_entries, cq_entries; /* trusted copies; masks are entries - 1 */
	uint32_t sq_tail;		 /* ours: the kernel never writes it */
	uint32_t sq_submitted;		 /* sq_tail as of the last enter that submitted */
	uint32_t cq_head;		 /* ours, stored to the ring after each drain */
	uint32_t batch;
	pthread_mutex_t lock; /* everything below, the SQ and the CQ head */
	struct reg *regs;
	uint32_t max_items;
	uint32_t free_head; /* first free slot, max_items when none */
	uint32_t used;
	uint32_t need_arm; /* registrations waiting for an SQE to re-arm them */
	int32_t *slot_of_fd; /* fd -> slot + 1 (0: none) */
	uint32_t fd_cap;
	struct ue_uring_stats stats;
};

static int sys_setup(uint32_t entries, struct io_uring_params *p)
{
	long ret = syscall(__NR_io_uring_setup, entries, p);

	return ret < 0 ? -errno : (int)ret;
}

static int sys_enter(int fd, uint32_t to_submit, uint32_t min_complete, uint32_t flags,
		     const void *arg, size_t argsz)
{
	long ret = syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, arg, argsz);

	return ret < 0 ? -errno : (int)ret;
}

static int sys_register(int fd, unsigned int opcode, void *arg, unsigned int nr)
{
	long ret = syscall(__NR_io_uring_register, fd, opcode, arg, nr);

	return ret < 0 ? -errno : (int)ret;
}

static int is_pow2_u32(uint32_t x)
{
	return x && !(x & (x - 1));
}

static uint32_t pow2_at_least(uint32_t n)
{
	uint32_t p = 1;

	while (p < n)
		p <<= 1;
	return p;
}

/* ---- probing ------------------------------------------------------------------------- */

int ue_uring_probe(uint32_t *missing)
{
	struct io_uring_params p;
	struct io_uring_probe *probe;
	size_t probe_len = sizeof(*probe) + 256 * sizeof(struct io_uring_probe_op);
	int fd, ret;

	*missing = 0;
	memset(&p, 0, sizeof(p));
	fd = sys_setup(4, &p);
	if (fd < 0)
		return fd;
	if (!(p.features & IORING_FEAT_NODROP))
		*missing |= UE_URING_NO_NODROP;
	if (!(p.features & IORING_FEAT_EXT_ARG))
		*missing |= UE_URING_NO_EXT_ARG;
	/*
	 * Multishot poll came with 5.13, as did IORING_FEAT_RSRC_TAGS: there is no feature bit
	 * of its own, and the opcode probe below cannot see flags.
	 */
	if (!(p.features & IORING_FEAT_RSRC_TAGS))
		*missing |= UE_URING_NO_MULTISHOT;
	probe = calloc(1, probe_len);
	if (!probe) {
		close(fd);
		return -ENOMEM;
	}
	ret = sys_register(fd, IORING_REGISTER_PROBE, probe, 256);
	if (ret < 0 || probe->last_op < IORING_OP_POLL_REMOVE ||
	    !(probe->ops[IORING_OP_POLL_ADD].flags & IO_URING_OP_SUPPORTED) ||
	    !(probe->ops[IORING_OP_POLL_REMOVE].flags & IO_URING_OP_SUPPORTED))
		*missing |= UE_URING_NO_POLL_OPS;
	free(probe);
	close(fd);
	return 0;
}

/* ---- setup and attach ------------------------------------------------------------------ */

struct ue_uring *ue_uring_new(uint32_t max_items, struct ue_uring_info *info, int *err)
{
	struct ue_uring *u;
	uint32_t entries;

	if (max_items == 0 || max_items > UE_MAX_ITEMS) {
		*err = -EINVAL;
		return NULL;
	}
	u = calloc(1, sizeof(*u));
	if (!u) {
		*err = -ENOMEM;
		return NULL;
	}
	u->ring_fd = u->shadow_fd = u->front_fd = -1;
	u->regs = calloc(max_items, sizeof(*u->regs));
	if (!u->regs) {
		*err = -ENOMEM;
		goto fail;
	}
	u->max_items = max_items;
	for (uint32_t i = 0; i < max_items; i++)
		u->regs[i].next_free = i + 1;
	u->free_head = 0;
	/*
	 * SQ: one SQE per registration covers a batch's re-arms (capped; a fuller SQ is
	 * submitted early). CQ: twice that (the kernel's default), and overflow is handled.
	 */
	entries = pow2_at_least(max_items < 8 ? 8 : max_items > 4096 ? 4096 : max_items);
	u->params.flags = IORING_SETUP_CQSIZE;
	u->params.cq_entries = entries * 2;
	u->ring_fd = sys_setup(entries, &u->params);
	if (u->ring_fd < 0) {
		*err = u->ring_fd;
		goto fail;
	}
	if (!(u->params.features & IORING_FEAT_NODROP) ||
	    !(u->params.features & IORING_FEAT_EXT_ARG)) {
		*err = -EOPNOTSUPP;
		goto fail;
	}
	u->shadow_fd = epoll_create1(EPOLL_CLOEXEC);
	if (u->shadow_fd < 0) {
		*err = -errno;
		goto fail;
	}
	/*
	 * fileno(): an epoll fd, as select.epoll's is (fromfd and nesting treat it as one),
	 * readable while completions wait in the CQ (the io_uring fd's own poll).
	 */
	u->front_fd = epoll_create1(EPOLL_CLOEXEC);
	if (u->front_fd < 0) {
		*err = -errno;
		goto fail;
	}
	{
		struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 0 };

		if (epoll_ctl(u->front_fd, EPOLL_CTL_ADD, u->ring_fd, &ev)) {
			*err = -errno;
			goto fail;
		}
	}
	if (pthread_mutex_init(&u->lock, NULL)) {
		*err = -ENOMEM;
		goto fail;
	}
	info->ring_fd = u->ring_fd;
	info->poll_fd = u->front_fd;
	info->sq_entries = u->params.sq_entries;
	info->cq_entries = u->params.cq_entries;
	info->features = u->params.features;
	info->sq_ring_size = u->params.sq_off.array + u->params.sq_entries * sizeof(uint32_t);
	info->cq_ring_size =
		u->params.cq_off.cqes + u->params.cq_entries * sizeof(struct io_uring_cqe);
	info->sqes_size = u->params.sq_entries * sizeof(struct io_uring_sqe);
	info->cqes_offset = u->params.cq_off.cqes;
	info->off_sq_ring = IORING_OFF_SQ_RING;
	info->off_cq_ring = IORING_OFF_CQ_RING;
	info->off_sqes = IORING_OFF_SQES;
	return u;
fail:
	if (u->front_fd >= 0)
		close(u->front_fd);
	if (u->shadow_fd >= 0)
		close(u->shadow_fd);
	if (u->ring_fd >= 0)
		close(u->ring_fd);
	free(u->regs);
	free(u);
	return NULL;
}

static int fits(uint32_t off, size_t width, size_t len)
{
	return off % 4 == 0 && (size_t)off + width <= len;
}

int ue_uring_attach(struct ue_uring *u, void *sq_ring, size_t sq_len, void *cq_ring,
		    size_t cq_len, void *sqes, size_t sqes_len)
{
	struct io_sqring_offsets *so = &u->params.sq_off;
	struct io_cqring_offsets *co = &u->params.cq_off;
	uint32_t sqn = u->params.sq_entries, cqn = u->params.cq_entries;

	/* The offsets come from the kernel, the lengths from the caller: check both. */
	if (!is_pow2_u32(sqn) || !is_pow2_u32(cqn) || (uintptr_t)sq_ring % 8 ||
	    (uintptr_t)cq_ring % 8 || (uintptr_t)sqes % 8)
		return -EINVAL;
	if (!fits(so->head, 4, sq_len) || !fits(so->tail, 4, sq_len) ||
	    !fits(so->ring_mask, 4, sq_len) || !fits(so->flags, 4, sq_len) ||
	    !fits(so->array, (size_t)sqn * 4, sq_len) || !fits(co->head, 4, cq_len) ||
	    !fits(co->tail, 4, cq_len) || !fits(co->ring_mask, 4, cq_len) ||
	    !fits(co->cqes, (size_t)cqn * sizeof(struct io_uring_cqe), cq_len) ||
	    sqes_len < (size_t)sqn * sizeof(struct io_uring_sqe))
		return -EINVAL;
	if (*(uint32_t *)((char *)sq_ring + so->ring_mask) != sqn - 1 ||
	    *(uint32_t *)((char *)cq_ring + co->ring_mask) != cqn - 1)
		return -EBADMSG;
	u->sq_khead = (uint32_t *)((char *)sq_ring + so->head);
	u->sq_ktail = (uint32_t *)((char *)sq_ring + so->tail);
	u->sq_kflags = (uint32_t *)((char *)sq_ring + so->flags);
	u->sq_array = (uint32_t *)((char *)sq_ring + so->array);
	u->sqes = sqes;
	u->cq_khead = (uint32_t *)((char *)cq_ring + co->head);
	u->cq_ktail = (uint32_t *)((char *)cq_ring + co->tail);
	u->cqes = (struct io_uring_cqe *)((char *)cq_ring + co->cqes);
	u->sq_entries = sqn;
	u->cq_entries = cqn;
	/* A fresh ring: both start at 0, and only we write these two. */
	u->sq_tail = u->sq_submitted = __atomic_load_n(u->sq_ktail, __ATOMIC_RELAXED);
	u->cq_head = __atomic_load_n(u->cq_khead, __ATOMIC_RELAXED);
	return 0;
}

int ue_uring_stats(struct ue_uring *u, struct ue_uring_stats *out)
{
	const struct ue_uring_stats *s = &u->stats;

	pthread_mutex_lock(&u->lock);
	out->cqes = s->cqes;
	out->events = s->events;
	out->coalesced = s->coalesced;
	out->stale = s->stale;
	out->skipped = s->skipped;
	out->rearms = s->rearms;
	out->multishot_restarts = s->multishot_restarts;
	out->overflows = s->overflows;
	/* These two are counted atomically outside the lock as well (sleeping pollers). */
	out->enters = __atomic_load_n(&s->enters, __ATOMIC_RELAXED);
	out->sleeps = __atomic_load_n(&s->sleeps, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&u->lock);
	return 0;
}

void ue_uring_free(struct ue_uring *u)
{
	/*
	 * No request is cancelled and nothing is submitted: in a fork child the ring is the
	 * parent's, and on close the kernel cancels everything with the ring. The mappings are
	 * the caller's (they outlive us while views of them exist).
	 */
	if (!u)
		return;
	if (u->ring_fd >= 0)
		close(u->ring_fd);
	if (u->shadow_fd >= 0)
		close(u->shadow_fd);
	if (u->front_fd >= 0)
		close(u->front_fd);
	free(u->slot_of_fd);
	free(u->regs);
	free(u);
}

/* ---- the submission queue (caller holds the lock) -------------------------------------- */

static int submit_locked(struct ue_uring *u, uint32_t flags)
{
	uint32_t pending = u->sq_tail - u->sq_submitted;
	int ret;

	/* Atomic: sleeping pollers count their enters outside the lock. */
	__atomic_fetch_add(&u->stats.enters, 1, __ATOMIC_RELAXED);
	ret = sys_enter(u->ring_fd, pending, 0, flags, NULL, 0);
	if (ret < 0)
		return ret == -EINTR || ret == -EAGAIN || ret == -EBUSY ? 0 : ret;
	/* The kernel consumed ret SQEs, in order; the rest go with the next enter. */
	u->sq_submitted += (uint32_t)ret;
	return 0;
}

static struct io_uring_sqe *get_sqe(struct ue_uring *u)
{
	for (int tries = 0; tries < 2; tries++) {
		/* Pairs with the kernel's RELEASE of sq.head once it has read the SQEs below. */
		uint32_t head = __atomic_load_n(u->sq_khead, __ATOMIC_ACQUIRE);
		uint32_t used = u->sq_tail - head;

		if (used > u->sq_entries)
			return NULL; /* head is not where a kernel could have put it */
		if (used < u->sq_entries) {
			uint32_t idx = u->sq_tail & (u->sq_entries - 1);
			struct io_uring_sqe *sqe = &u->sqes[idx];

			memset(sqe, 0, sizeof(*sqe));
			u->sq_array[idx] = idx;
			return sqe;
		}
		/* Full: submit what is queued, once. */
		if (submit_locked(u, IORING_ENTER_GETEVENTS) < 0)
			return NULL;
	}
	return NULL;
}

static void publish_sqe(struct ue_uring *u)
{
	u->sq_tail++;
	/* Pairs with the kernel's ACQUIRE of sq.tail: the SQE and its array entry come first. */
	__atomic_store_n(u->sq_ktail, u->sq_tail, __ATOMIC_RELEASE);
}

static uint64_t ud_of(const struct ue_uring *u, uint32_t slot)
{
	return (uint64_t)u->regs[slot].gen << 32 | slot;
}

static int queue_add(struct ue_uring *u, uint32_t slot)
{
	struct reg *r = &u->regs[slot];
	struct io_uring_sqe *sqe = get_sqe(u);

	if (!sqe) {
		/* Never a registration left unarmed: a later drain queues it (rearm_waiting). */
		if (!r->need_arm) {
			r->need_arm = 1;
			u->need_arm++;
		}
		return -EBUSY;
	}
	if (r->need_arm) {
		r->need_arm = 0;
		u->need_arm--;
	}
	sqe->opcode = IORING_OP_POLL_ADD;
	sqe->fd = r->fd;
	sqe->poll32_events = r->events | EV_ERR | EV_HUP;
	sqe->len = r->mode == REG_ET ? IORING_POLL_ADD_MULTI : 0;
	sqe->user_data = ud_of(u, slot);
	publish_sqe(u);
	r->armed = 1;
	return 0;
}

static int queue_remove(struct ue_uring *u, uint64_t target)
{
	struct io_uring_sqe *sqe = get_sqe(u);

	if (!sqe)
		return -EBUSY;
	sqe->opcode = IORING_OP_POLL_REMOVE;
	sqe->fd = -1;
	sqe->addr = target;
	sqe->user_data = UD_INTERNAL;
	publish_sqe(u);
	return 0;
}

/* ---- registrations ---------------------------------------------------------------------- */

static int32_t slot_of(const struct ue_uring *u, int fd)
{
	if (fd < 0 || (uint32_t)fd >= u->fd_cap)
		return -1;
	return u->slot_of_fd[fd] - 1;
}

static int set_slot_of(struct ue_uring *u, int fd, int32_t slot)
{
	if ((uint32_t)fd >= u->fd_cap) {
		uint32_t cap = u->fd_cap ? u->fd_cap : 64;
		int32_t *grown;

		while (cap <= (uint32_t)fd)
			cap *= 2;
		grown = realloc(u->slot_of_fd, (size_t)cap * sizeof(*grown));
		if (!grown)
			return -ENOMEM;
		memset(grown + u->fd_cap, 0, (size_t)(cap - u->fd_cap) * sizeof(*grown));
		u->slot_of_fd = grown;
		u->fd_cap = cap;
	}
	u->slot_of_fd[fd] = slot + 1;
	return 0;
}

/* End slot's registration: its request is removed, its CQEs become stale. */
static void release_slot(struct ue_uring *u, uint32_t slot)
{
	struct reg *r = &u->regs[slot];

	if (r->armed)
		queue_remove(u, ud_of(u, slot));
	if (slot_of(u, r->fd) == (int32_t)slot)
		u->slot_of_fd[r->fd] = 0;
	r->gen++;
	r->mode = REG_FREE;
	r->armed = 0;
	if (r->need_arm) {
		r->need_arm = 0;
		u->need_arm--;
	}
	r->next_free = u->free_head;
	u->free_head = slot;
	u->used--;
}

static uint8_t mode_of(uint32_t events)
{
	if (events & EV_ONESHOT)
		return REG_ONESHOT;
	return events & EV_ET ? REG_ET : REG_LT;
}

/*
 * 1 if fd is (a dup of) fileno()'s epoll. The kernel knows: EPOLL_CTL_DEL on that epoll fails
 * with EINVAL for its own file, and with ENOENT (EBADF, EPERM) for any other file it does not
 * hold, changing nothing. It holds only the ring's fd, and registrations are keyed by file
 * and fd number, so a DEL by any other number removes nothing. (kcmp(2) would say it too,
 * but kernels without CONFIG_KCMP, User-Mode Linux's defconfig among them, lack it.)
 */
static int is_front_file(const struct ue_uring *u, int fd)
{
	if (fd == u->ring_fd)
		return 0;
	return epoll_ctl(u->front_fd, EPOLL_CTL_DEL, fd, NULL) < 0 && errno == EINVAL;
}

static int ctl_locked(struct ue_uring *u, int op, int fd, uint32_t events, uint64_t data)
{
	struct epoll_event ev = { .events = events, .data.u64 = data };
	int32_t slot = slot_of(u, fd);
	struct reg *r;
	int ret;

	/* As epoll refuses itself (or a dup of itself: fileno()'s epoll), for every op. */
	if (fd == u->ring_fd || fd == u->front_fd || is_front_file(u, fd))
		return -EINVAL;
	if (op != EPOLL_CTL_ADD && op != EPOLL_CTL_MOD && op != EPOLL_CTL_DEL)
		return -EINVAL;
	ret = epoll_ctl(u->shadow_fd, op, fd, op == EPOLL_CTL_DEL ? NULL : &ev) ? -errno : 0;
	if (ret < 0) {
		/*
		 * Our slot for fd names a file fd no longer refers to (closed, and the number
		 * reused or not): epoll forgot that registration with the close, so do we.
		 */
		if (slot >= 0 && (ret == -ENOENT || ret == -EBADF))
			release_slot(u, (uint32_t)slot);
		return ret;
	}
	if (op == EPOLL_CTL_ADD) {
		if (slot >= 0) /* the same number, another file: the old registration is gone */
			release_slot(u, (uint32_t)slot);
		if (u->used == u->max_items) {
			/* epoll's own checks (EBADF, EPERM, EEXIST...) came first, then ours. */
			epoll_ctl(u->shadow_fd, EPOLL_CTL_DEL, fd, NULL);
			return -ENOSPC;
		}
		slot = (int32_t)u->free_head;
		ret = set_slot_of(u, fd, slot);
		if (ret < 0) {
			epoll_ctl(u->shadow_fd, EPOLL_CTL_DEL, fd, NULL);
			return ret;
		}
		u->free_head = u->regs[slot].next_free;
		u->used++;
		r = &u->regs[slot];
		r->fd = fd;
		r->gen++;
	} else if (slot < 0) {
		/* Registered in the shadow but not here cannot happen; say so as epoll would. */
		return -ENOENT;
	} else if (op == EPOLL_CTL_DEL) {
		release_slot(u, (uint32_t)slot);
		return submit_locked(u, 0);
	} else {
		r = &u->regs[slot];
		if (r->armed)
			queue_remove(u, ud_of(u, (uint32_t)slot));
		r->gen++;
		r->armed = 0;
	}
	r->data = data;
	r->events = events & POLL_BITS;
	r->mode = mode_of(events);
	r->batch = 0;
	/* No SQE (the SQ full and the kernel not taking more): the next drain arms it. */
	queue_add(u, (uint32_t)slot);
	return submit_locked(u, 0);
}

int ue_uring_ctl(struct ue_uring *u, int op, int fd, uint32_t events, uint64_t data)
{
	int ret;

	pthread_mutex_lock(&u->lock);
	ret = ctl_locked(u, op, fd, events, data);
	pthread_mutex_unlock(&u->lock);
	return ret;
}

/* 1 if fd is registered and still names the file it was registered with, else 0. */
static int live_locked(struct ue_uring *u, int fd)
{
	struct epoll_event ev;
	int32_t slot = slot_of(u, fd);

	if (slot < 0)
		return 0;
	/* MOD succeeds only for the (file, fd) pair the shadow holds; it changes nothing else. */
	ev.events = u->regs[slot].events;
	ev.data.u64 = u->regs[slot].data;
	return epoll_ctl(u->shadow_fd, EPOLL_CTL_MOD, fd, &ev) == 0;
}

long ue_uring_live_fds(struct ue_uring *u, int32_t *out, uint32_t max)
{
	long n = 0;

	pthread_mutex_lock(&u->lock);
	for (uint32_t slot = 0; slot < u->max_items && (uint32_t)n < max; slot++) {
		struct reg *r = &u->regs[slot];

		if (r->mode != REG_FREE && live_locked(u, r->fd))
			out[n++] = r->fd;
	}
	pthread_mutex_unlock(&u->lock);
	return n;
}

int ue_uring_forget(struct ue_uring *u, int fd)
{
	int32_t slot;
	int ret = 0;

	pthread_mutex_lock(&u->lock);
	slot = slot_of(u, fd);
	/* Only a registration whose file fd no longer names: a live one needs DEL. */
	if (slot >= 0 && !live_locked(u, fd)) {
		release_slot(u, (uint32_t)slot);
		ret = submit_locked(u, 0);
	}
	pthread_mutex_unlock(&u->lock);
	return ret;
}

/* ---- the completion queue --------------------------------------------------------------- */

/*
 * Consume CQEs into out from position n; returns the new count, or -EBADMSG for a CQ whose
 * tail is not where a kernel could have put it. Stops, leaving the CQE in the ring, when an
 * event needs a new position and out is full.
 */
static long consume_locked(struct ue_uring *u, char *out, uint64_t *data_out, uint32_t max,
			   uint32_t n)
{
	/* Pairs with the kernel's RELEASE of cq.tail: the CQEs below it are written. */
	uint32_t tail = __atomic_load_n(u->cq_ktail, __ATOMIC_ACQUIRE);
	uint32_t head = u->cq_head;
	uint32_t mask = u->cq_entries - 1;

	if (tail - head > u->cq_entries)
		return -EBADMSG;
	while (head != tail) {
		const struct io_uring_cqe *cqe = &u->cqes[head & mask];
		uint64_t ud = cqe->user_data;
		int32_t res = cqe->res;
		uint32_t flags = cqe->flags;
		uint32_t slot = (uint32_t)ud, events;
		struct reg *r;

		if (slot >= u->max_items) { /* ours (POLL_REMOVE, wake-up), or not a slot */
			u->stats.cqes++;
			head++;
			continue;
		}
		r = &u->regs[slot];
		if (r->mode == REG_FREE || r->gen != (uint32_t)(ud >> 32)) {
			u->stats.cqes++;
			u->stats.stale++;
			head++;
			continue;
		}
		events = res > 0 ? (uint32_t)res & (r->events | EV_ERR | EV_HUP) : 0;
		if (events && r->batch != u->batch && n == max)
			break; /* no room: this CQE stays for the next drain */
		u->stats.cqes++;
		head++;
		if (!(flags & IORING_CQE_F_MORE)) {
			/* The request ended: it delivered (single-shot), ended or was cancelled. */
			r->armed = 0;
			if (res == -ECANCELED || (res >= 0 && r->mode == REG_ET)) {
				/*
				 * A multishot poll that ended (the CQ was full), or a request the
				 * kernel cancelled (its submitter exited): arm again; the arming
				 * poll reports what is ready by then.
				 */
				u->stats.multishot_restarts++;
				queue_add(u, slot);
			} else if (res >= 0 && (r->mode == REG_LT || !events)) {
				/*
				 * Level-triggered, or a one-shot that saw only bits nobody asked
				 * for: polled again at the next enter, when the caller asks again.
				 */
				u->stats.rearms++;
				queue_add(u, slot);
			}
			/* res < 0 otherwise (-EBADF...): the file is gone; it stays disarmed. */
		}
		if (!events) {
			u->stats.skipped++;
			continue;
		}
		if (r->batch == u->batch) {
			/* Coalesced: this registration already has an event in this batch. */
			uint32_t old;

			if (data_out) {
				((uint32_t *)out)[r->pos] |= events;
			} else {
				memcpy(&old, out + 12u * r->pos, 4);
				old |= events;
				memcpy(out + 12u * r->pos, &old, 4);
			}
			u->stats.coalesced++;
			continue;
		}
		r->batch = u->batch;
		r->pos = n;
		ue_put_event(out, data_out, n++, events, r->data);
	}
	u->cq_head = head;
	/* Pairs with the kernel's ACQUIRE of cq.head: our reads of these CQEs come first. */
	__atomic_store_n(u->cq_khead, head, __ATOMIC_RELEASE);
	return n;
}

/* Queue the re-arms that found the SQ full (rare: it holds one SQE per registration). */
static void rearm_waiting(struct ue_uring *u)
{
	for (uint32_t slot = 0; slot < u->max_items && u->need_arm; slot++)
		if (u->regs[slot].need_arm && queue_add(u, slot) < 0)
			return;
}

/*
 * One drain: submit queued SQEs (the previous batch's re-arms: their arming polls post at
 * once what is ready), consume the CQ, and flush the kernel's overflow list into it while
 * there is room. One enter for the whole batch, none when nothing is queued or held back.
 */
static long drain(struct ue_uring *u, void *out, uint64_t *data_out, uint32_t max)
{
	long n = 0;
	int ret;

	pthread_mutex_lock(&u->lock);
	u->batch++;
	if (u->batch == 0)
		u->batch = 1; /* 0 is "never delivered" */
	if (u->need_arm)
		rearm_waiting(u);
	if (u->sq_tail != u->sq_submitted) {
		ret = submit_locked(u, IORING_ENTER_GETEVENTS);
		if (ret < 0)
			goto out;
	}
	for (;;) {
		uint32_t sq_flags;

		n = consume_locked(u, out, data_out, max, (uint32_t)n);
		if (n < 0 || (uint32_t)n == max)
			break;
		/* Pairs with the kernel's atomic set of the flag when it held CQEs back. */
		sq_flags = __atomic_load_n(u->sq_kflags, __ATOMIC_ACQUIRE);
		if (!(sq_flags & IORING_SQ_CQ_OVERFLOW))
			break;
		/*
		 * CQEs held back while the CQ was full: GETEVENTS moves them in. Nothing is
		 * submitted with it: the re-arms this drain queued wait for the next poll, or
		 * the arming poll of a registration delivered in this very batch would report
		 * it again in the next one, whatever the caller does in between (a level-
		 * triggered file read empty, a vpoll source lowered).
		 */
		u->stats.overflows++;
		__atomic_fetch_add(&u->stats.enters, 1, __ATOMIC_RELAXED);
		ret = sys_enter(u->ring_fd, 0, 0, IORING_ENTER_GETEVENTS, NULL, 0);
		if (ret == -EINTR || ret == -EAGAIN || ret == -EBUSY)
			break;
		if (ret < 0) {
			n = n ? n : ret;
			break;
		}
		if (__atomic_load_n(u->cq_ktail, __ATOMIC_ACQUIRE) == u->cq_head)
			break;
	}
	u->stats.events += n > 0 ? (uint64_t)n : 0;
out:
	pthread_mutex_unlock(&u->lock);
	return n;
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

long ue__uring_poll(struct ue_uring *u, void *out, uint64_t *data_out, uint32_t max,
		    int64_t timeout_ns, const int *closing)
{
	uint64_t deadline = timeout_ns > 0 ? now_ns() + (uint64_t)timeout_ns : 0;

	if (!max)
		return -EINVAL;
	for (;;) {
		struct io_uring_getevents_arg arg;
		struct __kernel_timespec ts;
		long n;
		int ret;

		if (__atomic_load_n(closing, __ATOMIC_RELAXED))
			return -EBADF;
		n = drain(u, out, data_out, max);
		if (n != 0)
			return n;
		if (timeout_ns == 0)
			return 0;
		memset(&arg, 0, sizeof(arg));
		if (timeout_ns > 0) {
			uint64_t now = now_ns(), left;

			if (now >= deadline)
				return 0;
			left = deadline - now;
			ts.tv_sec = (long long)(left / 1000000000ull);
			ts.tv_nsec = (long long)(left % 1000000000ull);
			arg.ts = (uint64_t)(uintptr_t)&ts;
		}
		/*
		 * Re-arms the drain above queued must be in flight before we sleep (the next
		 * poll would have submitted them): then wait, unless CQEs came meanwhile.
		 */
		pthread_mutex_lock(&u->lock);
		ret = u->sq_tail != u->sq_submitted ? submit_locked(u, 0) : 0;
		pthread_mutex_unlock(&u->lock);
		if (ret < 0)
			return ret;
		if (__atomic_load_n(u->cq_ktail, __ATOMIC_ACQUIRE) !=
		    __atomic_load_n(u->cq_khead, __ATOMIC_RELAXED))
			continue;
		__atomic_fetch_add(&u->stats.sleeps, 1, __ATOMIC_RELAXED);
		__atomic_fetch_add(&u->stats.enters, 1, __ATOMIC_RELAXED);
		ret = sys_enter(u->ring_fd, 0, 1, IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG,
				&arg, sizeof(arg));
		if (ret == -ETIME)
			return 0;
		if (ret < 0 && ret != -EBUSY)
			return ret; /* -EINTR: the caller runs its signal handlers, calls again */
	}
}

int ue__uring_pending(struct ue_uring *u)
{
	/*
	 * Tail ACQUIRE pairs with the kernel's RELEASE of cq.tail; head is ours (stored under
	 * the lock, RELEASE); the flags ACQUIRE pairs with the kernel's set of CQ_OVERFLOW.
	 */
	return __atomic_load_n(u->cq_ktail, __ATOMIC_ACQUIRE) !=
		       __atomic_load_n(u->cq_khead, __ATOMIC_RELAXED) ||
	       (__atomic_load_n(u->sq_kflags, __ATOMIC_ACQUIRE) & IORING_SQ_CQ_OVERFLOW);
}

void ue_uring_cancel_all(struct ue_uring *u)
{
	/*
	 * The ring outlives close() while mappings of it exist (a cqes view, the mmap objects'
	 * own fds), and each armed poll request holds its file open: remove them all now, so a
	 * file closed after the epoll object is really closed.
	 */
	pthread_mutex_lock(&u->lock);
	for (uint32_t slot = 0; slot < u->max_items; slot++) {
		struct reg *r = &u->regs[slot];

		if (r->mode != REG_FREE && r->armed && queue_remove(u, ud_of(u, slot)) == 0)
			r->armed = 0;
	}
	submit_locked(u, 0);
	pthread_mutex_unlock(&u->lock);
}

/* Wake every thread asleep in io_uring_enter: a NOP's CQE (dropped as ours). */
void ue__uring_wake(struct ue_uring *u)
{
	struct io_uring_sqe *sqe;

	pthread_mutex_lock(&u->lock);
	sqe = get_sqe(u);
	if (sqe) {
		sqe->opcode = IORING_OP_NOP;
		sqe->user_data = UD_INTERNAL;
		publish_sqe(u);
		submit_locked(u, 0);
	}
	pthread_mutex_unlock(&u->lock);
}
