// SPDX-License-Identifier: MIT
/*
 * hostile_ring: a user of EPOLL_USERPOLL that abuses its own ring, then checks that a fresh
 * ring still works exactly.
 *
 * Each round creates a userpoll epoll (epoll_create2, whose number is given on the command
 * line), maps its header+items and its index ring read-write, registers eventfds, and runs at
 * once:
 *   - producer threads writing those eventfds (the kernel appends to the ring from write());
 *   - scribbler threads storing random values over the whole header (magic, lengths, head,
 *     tail), the items (events, data, and ready_events hammered with stores, exchanges and
 *     ORs, so the kernel's cmpxchg loops on them retry) and the index slots;
 *   - a churn thread doing EPOLL_CTL_DEL/ADD/MOD on the registrations and epoll_wait/poll on
 *     the epoll fd (the kernel reads the scribbled head and tail there);
 * while the main thread mremaps the mappings (grow: refused; shrink; move), unmaps and maps
 * the index ring again, checks that bad mmap requests are refused, forks a child that maps
 * the inherited epoll fd and scribbles over it through its own mappings, and finally closes
 * the epoll fd (and then unmaps) while the producers are still writing. Rounds repeat until
 * --rounds or --seconds.
 *
 * Then a fresh ring: every one of its eventfds written once must come out of the ring exactly
 * once with EPOLLIN, twice over. Exit 0 and "hostile_ring: PASS" only if that holds, the
 * children exited cleanly and no unexpected errno showed up; a crash kills the process with
 * its signal (reported on stderr first).
 *
 * --no-ring runs the same rounds on a plain epoll fd (no mappings, no scribblers), for
 * kernels without EPOLL_USERPOLL. --sabotage leaves one eventfd of the fresh check unwritten:
 * the check must then fail (exit 1).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define EPOLL_USERPOLL 1u
#define EPOLLREMOVED (1u << 27)
#define USERPOLL_MAGIC 0xeb01eb01u
#define HEADER_SIZE 128u

#define MAX_ITEMS 1024u /* ring size of the hostile rounds: a header of several pages */
#define NEVENTFDS 48
#define NPRODUCERS 2
#define NSCRIBBLERS 2
#define FRESH_ITEMS 128u
#define FRESH_EVENTFDS 100

struct header {
	uint32_t magic;
	uint32_t header_length;
	uint32_t index_length;
	uint32_t max_items_nr;
	uint32_t head;
	uint32_t tail;
};

struct uitem {
	uint32_t ready_events;
	uint32_t events;
	uint64_t data;
};

static long nr_epoll_create2 = -1;
static long page;
static int failures;

#define fail(...)                                                                              \
	do {                                                                                   \
		fprintf(stderr, "hostile_ring: FAIL: " __VA_ARGS__);                           \
		fputc('\n', stderr);                                                           \
		__atomic_add_fetch(&failures, 1, __ATOMIC_RELAXED);                            \
	} while (0)

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t xorshift(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

static int epoll_create2(unsigned int flags, size_t size)
{
	return (int)syscall(nr_epoll_create2, flags, size);
}

static size_t header_length(uint32_t items)
{
	size_t len = HEADER_SIZE + 16u * items;

	return (len + (size_t)page - 1) & ~((size_t)page - 1);
}

static size_t index_length(uint32_t items)
{
	size_t len = 1;

	while (len < 4u * items)
		len <<= 1;
	return len < (size_t)page ? (size_t)page : len;
}

/* An unexpected fault: say where before dying of it (the default action, re-raised) */
static void on_fault(int sig, siginfo_t *info, void *ctx)
{
	char msg[96];
	int n;

	(void)ctx;
	n = snprintf(msg, sizeof(msg), "hostile_ring: FAIL: signal %d at %p\n", sig, info->si_addr);
	if (n > 0 && write(2, msg, (size_t)n) < 0)
		_exit(3);
	signal(sig, SIG_DFL);
	raise(sig);
}

/* --------------------------------------------------------------------------------------- */
/* One hostile round */

struct round {
	int epfd;
	int ring;
	int efds[NEVENTFDS];
	/* The mappings, changed by the main thread under the write lock */
	pthread_rwlock_t lock;
	char *hdr;
	size_t hdr_len;
	char *idx;
	size_t idx_len;
	int split; /* the header mapping is several mappings (a hole was filled) */
	int stop;
	int epfd_closed;
	uint64_t writes, scribbles, ctl_ops;
};

static void *producer(void *arg)
{
	struct round *r = arg;
	uint64_t one = 1, n = 0;
	unsigned int i = 0;

	while (!__atomic_load_n(&r->stop, __ATOMIC_RELAXED)) {
		/* EAGAIN (a counter at its maximum) is fine: nobody reads these */
		if (write(r->efds[i++ % NEVENTFDS], &one, sizeof(one)) == sizeof(one))
			n++;
	}
	__atomic_add_fetch(&r->writes, n, __ATOMIC_RELAXED);
	return NULL;
}

static void scribble(char *hdr, size_t hdr_len, char *idx, size_t idx_len, uint64_t *seed,
		     unsigned int burst)
{
	struct uitem *items = (struct uitem *)(hdr + HEADER_SIZE);
	size_t nitems = hdr_len > HEADER_SIZE ? (hdr_len - HEADER_SIZE) / sizeof(*items) : 0;
	unsigned int k;

	for (k = 0; k < burst; k++) {
		uint64_t x = xorshift(seed);
		uint32_t v = (uint32_t)(x >> 32);

		switch (x % 8) {
		case 0: /* anywhere in the header: magic, lengths, head, tail, padding */
			__atomic_store_n((uint32_t *)hdr + (x >> 8) % (HEADER_SIZE / 4), v,
					 __ATOMIC_RELAXED);
			break;
		case 1: /* head and tail, with values near the real ones and far from them */
			__atomic_store_n(&((struct header *)hdr)->head,
					 (x & 0x100) ? v : ((struct header *)hdr)->tail + (v & 7),
					 __ATOMIC_RELEASE);
			break;
		case 2:
		case 3:
		case 4: /* ready_events of the registered slots: retry the kernel's cmpxchg */
			if (nitems) {
				uint32_t *ready = &items[(x >> 8) % NEVENTFDS % nitems].ready_events;

				if (x & 0x10000)
					__atomic_store_n(ready, v, __ATOMIC_RELAXED);
				else if (x & 0x20000)
					__atomic_exchange_n(ready, v & (EPOLLIN | EPOLLREMOVED),
							    __ATOMIC_ACQ_REL);
				else
					__atomic_fetch_or(ready, v, __ATOMIC_RELAXED);
			}
			break;
		case 5: /* events and data of any item */
			if (nitems) {
				struct uitem *it = &items[(x >> 8) % nitems];

				__atomic_store_n(&it->events, v, __ATOMIC_RELAXED);
				__atomic_store_n(&it->data, x, __ATOMIC_RELAXED);
			}
			break;
		default: /* index slots */
			if (idx_len)
				__atomic_store_n((uint32_t *)idx + (x >> 8) % (idx_len / 4),
						 (x & 0x200) ? v : v % (MAX_ITEMS + 4),
						 __ATOMIC_RELAXED);
			break;
		}
	}
}

static void *scribbler(void *arg)
{
	struct round *r = arg;
	uint64_t seed = now_ns() ^ (uint64_t)(uintptr_t)&seed, n = 0;

	while (!__atomic_load_n(&r->stop, __ATOMIC_RELAXED)) {
		pthread_rwlock_rdlock(&r->lock);
		if (r->hdr)
			scribble(r->hdr, r->hdr_len, r->idx, r->idx ? r->idx_len : 0, &seed, 256);
		pthread_rwlock_unlock(&r->lock);
		n += 256;
	}
	__atomic_add_fetch(&r->scribbles, n, __ATOMIC_RELAXED);
	return NULL;
}

/* Errors a call on an fd the main thread may close at any moment is allowed to give */
static int churn_errno_ok(int err)
{
	return err == EBADF || err == ENOENT || err == EEXIST || err == EINVAL || err == ESTALE ||
	       err == EINTR || err == EPERM || err == ENOSPC;
}

static void *churner(void *arg)
{
	struct round *r = arg;
	uint64_t seed = now_ns() ^ 0x9e3779b97f4a7c15ull, n = 0;

	while (!__atomic_load_n(&r->stop, __ATOMIC_RELAXED)) {
		uint64_t x = xorshift(&seed);
		int epfd = __atomic_load_n(&r->epfd, __ATOMIC_RELAXED);
		int fd = r->efds[(x >> 8) % NEVENTFDS];
		struct epoll_event ev = {
			.events = EPOLLIN | EPOLLET | ((x & 0x40) ? EPOLLONESHOT : 0),
			.data.u64 = x,
		};
		struct pollfd pfd = { .fd = epfd, .events = POLLIN };
		int ret;

		/* epfd may be closed already (and its number reused): errors are expected */
		if (__atomic_load_n(&r->epfd_closed, __ATOMIC_ACQUIRE))
			break;
		switch (x % 6) {
		case 0:
			ret = epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL);
			break;
		case 1:
			ret = epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
			break;
		case 2:
		case 3:
			ret = epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev);
			break;
		case 4: /* the kernel compares the scribbled head and tail */
			ret = r->ring ? epoll_wait(epfd, NULL, 0, 0) : 0;
			break;
		default:
			ret = poll(&pfd, 1, 0);
			break;
		}
		if (ret < 0 && !churn_errno_ok(errno))
			fail("churn op %d: unexpected %s", (int)(x % 6), strerror(errno));
		n++;
	}
	__atomic_add_fetch(&r->ctl_ops, n, __ATOMIC_RELAXED);
	return NULL;
}

/* Map what the round scribbles on; returns 0 or -errno */
static int map_ring(struct round *r)
{
	struct header *h;

	r->hdr_len = header_length(MAX_ITEMS);
	r->idx_len = index_length(MAX_ITEMS);
	r->hdr = mmap(NULL, r->hdr_len, PROT_READ | PROT_WRITE, MAP_SHARED, r->epfd, 0);
	if (r->hdr == MAP_FAILED) {
		r->hdr = NULL;
		return -errno;
	}
	h = (struct header *)r->hdr;
	if (h->magic != USERPOLL_MAGIC || h->header_length != r->hdr_len ||
	    h->index_length != r->idx_len || h->max_items_nr != MAX_ITEMS) {
		fail("a new ring's header: magic %#x lengths %u %u items %u", h->magic,
		     h->header_length, h->index_length, h->max_items_nr);
		return -EBADMSG;
	}
	r->idx = mmap(NULL, r->idx_len, PROT_READ | PROT_WRITE, MAP_SHARED, r->epfd,
		      (off_t)r->hdr_len);
	if (r->idx == MAP_FAILED) {
		r->idx = NULL;
		return -errno;
	}
	return 0;
}

static void expect_mmap_error(int epfd, size_t len, int prot_flags, off_t off, int want,
			      const char *what)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, prot_flags, epfd, off);

	if (p != MAP_FAILED) {
		munmap(p, len);
		fail("mmap %s succeeded", what);
	} else if (errno != want) {
		fail("mmap %s: %s, not %s", what, strerror(errno), strerror(want));
	}
}

/* The main thread's mapping abuse, one step at a time while the others run */
static void abuse_mappings(struct round *r, unsigned int step)
{
	void *p;

	pthread_rwlock_wrlock(&r->lock);
	if (!r->hdr || !r->idx) { /* lost to an earlier failure, already reported */
		pthread_rwlock_unlock(&r->lock);
		return;
	}
	switch (step % 6) {
	case 0: /* grow: the mapping of a vmalloc buffer cannot expand */
		p = mremap(r->hdr, r->hdr_len, r->hdr_len + (size_t)page, MREMAP_MAYMOVE);
		if (p != MAP_FAILED) {
			/* Not expected; keep using the part that is known to be backed */
			fail("mremap grew the header mapping");
			r->hdr = p;
		} else if (errno != EFAULT && errno != EINVAL && errno != ENOMEM) {
			fail("mremap grow: unexpected %s", strerror(errno));
		}
		break;
	case 1: /* move the header mapping elsewhere */
		p = mmap(NULL, r->hdr_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED)
			break;
		p = mremap(r->hdr, r->hdr_len, r->hdr_len, MREMAP_MAYMOVE | MREMAP_FIXED, p);
		if (p != MAP_FAILED)
			r->hdr = p;
		else if (!(r->split && errno == EFAULT)) /* no remap across mappings */
			fail("mremap move: %s", strerror(errno));
		break;
	case 2: /* shrink it to its first page, then map it whole again */
		p = mremap(r->hdr, r->hdr_len, (size_t)page, 0);
		if (p == MAP_FAILED) {
			fail("mremap shrink: %s", strerror(errno));
			break;
		}
		munmap(p, (size_t)page);
		r->hdr = mmap(NULL, r->hdr_len, PROT_READ | PROT_WRITE, MAP_SHARED, r->epfd, 0);
		if (r->hdr == MAP_FAILED) {
			fail("mapping the header again: %s", strerror(errno));
			r->hdr = NULL;
		}
		r->split = 0;
		break;
	case 3: /* punch a hole in the middle of the header mapping, then fill it */
		if (r->hdr_len >= 3 * (size_t)page) {
			munmap(r->hdr + page, (size_t)page);
			p = mmap(r->hdr + page, (size_t)page, PROT_READ | PROT_WRITE,
				 MAP_SHARED | MAP_FIXED, r->epfd, 0);
			if (p == MAP_FAILED) {
				fail("mapping into the hole: %s", strerror(errno));
				munmap(r->hdr, r->hdr_len);
				r->hdr = NULL;
			}
			r->split = 1;
		}
		break;
	case 4: /* unmap the index ring and map it again */
		munmap(r->idx, r->idx_len);
		r->idx = mmap(NULL, r->idx_len, PROT_READ | PROT_WRITE, MAP_SHARED, r->epfd,
			      (off_t)r->hdr_len);
		if (r->idx == MAP_FAILED) {
			fail("mapping the index again: %s", strerror(errno));
			r->idx = NULL;
		}
		break;
	default: /* requests the ABI refuses */
		expect_mmap_error(r->epfd, r->hdr_len + (size_t)page, MAP_SHARED, 0, ENXIO,
				  "longer than the header");
		expect_mmap_error(r->epfd, (size_t)page, MAP_SHARED, (off_t)page * 4096, ENXIO,
				  "at an unknown offset");
		expect_mmap_error(r->epfd, (size_t)page, MAP_PRIVATE, 0, EINVAL, "MAP_PRIVATE");
		break;
	}
	pthread_rwlock_unlock(&r->lock);
}

/*
 * A fork child: the parent's mappings are not inherited, but the epoll fd is. It maps the
 * ring through it, scribbles, writes eventfds and exits; 0 unless a call failed unexpectedly.
 */
static int child_main(struct round *r)
{
	size_t hl = header_length(MAX_ITEMS), il = index_length(MAX_ITEMS);
	uint64_t seed = now_ns() | 1, one = 1;
	char *hdr, *idx;
	int i;

	alarm(30); /* never outlive a stuck parent */
	hdr = mmap(NULL, hl, PROT_READ | PROT_WRITE, MAP_SHARED, r->epfd, 0);
	idx = mmap(NULL, il, PROT_READ | PROT_WRITE, MAP_SHARED, r->epfd, (off_t)hl);
	if (hdr == MAP_FAILED || idx == MAP_FAILED)
		return 2;
	for (i = 0; i < 64; i++) {
		scribble(hdr, hl, idx, il, &seed, 64);
		if (write(r->efds[i % NEVENTFDS], &one, sizeof(one)) < 0 && errno != EAGAIN)
			return 3;
	}
	/* Leave the mappings for exit to tear down, and the epoll fd open: exit closes both */
	return 0;
}

static int run_round(unsigned int round_no, uint64_t round_ns)
{
	pthread_t threads[NPRODUCERS + NSCRIBBLERS + 1];
	pthread_rwlockattr_t attr;
	struct round r;
	unsigned int nthreads = 0, t, step = 0;
	uint64_t end;
	pid_t child = -1;
	int i, status;

	memset(&r, 0, sizeof(r));
	r.ring = nr_epoll_create2 >= 0;
	pthread_rwlockattr_init(&attr);
	/* The main thread's remaps must not starve behind the scribblers' read locks */
	pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&r.lock, &attr);
	pthread_rwlockattr_destroy(&attr);
	r.epfd = r.ring ? epoll_create2(EPOLL_USERPOLL | EPOLL_CLOEXEC, MAX_ITEMS)
			: epoll_create1(EPOLL_CLOEXEC);
	if (r.epfd < 0) {
		fail("round %u: creating the epoll fd: %s", round_no, strerror(errno));
		return -1;
	}
	if (r.ring && map_ring(&r)) {
		fail("round %u: mapping the ring: %s", round_no, strerror(errno));
		return -1;
	}
	for (i = 0; i < NEVENTFDS; i++) {
		struct epoll_event ev = { .events = EPOLLIN | EPOLLET, .data.u64 = (uint64_t)i };

		r.efds[i] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		if (r.efds[i] < 0 || epoll_ctl(r.epfd, EPOLL_CTL_ADD, r.efds[i], &ev)) {
			fail("round %u: eventfd %d: %s", round_no, i, strerror(errno));
			return -1;
		}
	}
	for (t = 0; t < NPRODUCERS; t++)
		if (!pthread_create(&threads[nthreads], NULL, producer, &r))
			nthreads++;
	for (t = 0; r.ring && t < NSCRIBBLERS; t++)
		if (!pthread_create(&threads[nthreads], NULL, scribbler, &r))
			nthreads++;
	if (!pthread_create(&threads[nthreads], NULL, churner, &r))
		nthreads++;
	if (nthreads < 2)
		fail("round %u: only %u threads started", round_no, nthreads);

	end = now_ns() + round_ns;
	while (now_ns() < end) {
		struct timespec gap = { 0, (long)(round_ns / 16) };

		if (r.ring)
			abuse_mappings(&r, step);
		if (step == 3) {
			child = fork();
			if (child == 0)
				_exit(r.ring ? child_main(&r) : 0);
			if (child < 0)
				fail("fork: %s", strerror(errno));
		}
		step++;
		nanosleep(&gap, NULL); /* let the others run against this state a while */
	}

	/* Close the epoll fd while producers write and scribblers scribble, then unmap */
	__atomic_store_n(&r.epfd_closed, 1, __ATOMIC_RELEASE);
	close(r.epfd);
	{
		struct timespec gap = { 0, (long)(round_ns / 8) };

		nanosleep(&gap, NULL);
	}
	pthread_rwlock_wrlock(&r.lock);
	if (r.hdr)
		munmap(r.hdr, r.hdr_len);
	if (r.idx)
		munmap(r.idx, r.idx_len);
	r.hdr = r.idx = NULL;
	pthread_rwlock_unlock(&r.lock);

	__atomic_store_n(&r.stop, 1, __ATOMIC_RELAXED);
	for (t = 0; t < nthreads; t++)
		pthread_join(threads[t], NULL);
	for (i = 0; i < NEVENTFDS; i++)
		close(r.efds[i]);
	if (child > 0) {
		if (waitpid(child, &status, 0) != child)
			fail("waitpid: %s", strerror(errno));
		else if (!WIFEXITED(status) || WEXITSTATUS(status))
			fail("round %u: the fork child %s %d", round_no,
			     WIFEXITED(status) ? "exited" : "died of signal",
			     WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
	}
	pthread_rwlock_destroy(&r.lock);
	printf("round %u: %llu writes, %llu scribbles, %llu ctl ops, %u mapping steps\n",
	       round_no, (unsigned long long)r.writes, (unsigned long long)r.scribbles,
	       (unsigned long long)r.ctl_ops, r.ring ? step : 0);
	return 0;
}

/* --------------------------------------------------------------------------------------- */
/* The fresh ring: exact delivery */

struct fresh {
	int epfd;
	struct header *h;
	struct uitem *items;
	uint32_t *index;
	uint32_t mask;
	size_t hdr_len, idx_len;
};

/* Take what the ring holds into seen[]; returns entries taken, or -1 on a bad entry */
static int drain(struct fresh *f, unsigned int *seen, int nfds)
{
	uint32_t head = f->h->head, tail = __atomic_load_n(&f->h->tail, __ATOMIC_ACQUIRE);
	int taken = 0;

	for (; head != tail; head++) {
		uint32_t slot = __atomic_load_n(&f->index[head & f->mask], __ATOMIC_ACQUIRE);
		uint64_t data;
		uint32_t events;

		if (slot >= FRESH_ITEMS) {
			fail("fresh ring: index entry %u holds slot %u", head, slot);
			return -1;
		}
		data = f->items[slot].data;
		events = __atomic_exchange_n(&f->items[slot].ready_events, 0, __ATOMIC_ACQ_REL);
		if (!(events & ~EPOLLREMOVED))
			continue;
		if (data >= (uint64_t)nfds || events != EPOLLIN) {
			fail("fresh ring: entry data %llu events %#x",
			     (unsigned long long)data, events);
			return -1;
		}
		seen[data]++;
		taken++;
	}
	__atomic_store_n(&f->h->head, head, __ATOMIC_RELEASE);
	return taken;
}

/* One write to each eventfd (but one when sabotaging) must give one entry each */
static int fresh_pass(struct fresh *f, const int *efds, int nfds, int sabotage, int pass)
{
	unsigned int seen[FRESH_EVENTFDS] = { 0 };
	uint64_t one = 1, deadline = now_ns() + 10ull * 1000000000u;
	int i, got = 0, ok = 1, expect = nfds - (sabotage ? 1 : 0);
	struct epoll_event ev;

	for (i = sabotage ? 1 : 0; i < nfds; i++)
		if (write(efds[i], &one, sizeof(one)) != sizeof(one))
			fail("fresh pass %d: writing eventfd %d: %s", pass, i, strerror(errno));
	/* Wait for what was written; an entry for the unwritten one would be a failure too */
	while (got < expect && now_ns() < deadline) {
		int n = f->h ? drain(f, seen, nfds) : 0;

		if (n < 0)
			return 0;
		got += n;
		if (got >= expect)
			break;
		if (f->h) {
			/* Empty: sleep until entries appear (ESTALE) or 100 ms pass */
			if (epoll_wait(f->epfd, NULL, 0, 100) < 0 && errno != ESTALE &&
			    errno != EINTR)
				fail("fresh pass %d: epoll_wait: %s", pass, strerror(errno));
		} else {
			n = epoll_wait(f->epfd, &ev, 1, 100);
			if (n == 1) {
				if (ev.data.u64 >= (uint64_t)nfds || ev.events != EPOLLIN) {
					fail("fresh pass %d: event data %llu events %#x", pass,
					     (unsigned long long)ev.data.u64, ev.events);
					return 0;
				}
				seen[ev.data.u64]++;
				got++;
			}
		}
	}
	for (i = 0; i < nfds; i++) {
		uint64_t value;

		if (seen[i] != 1) {
			fail("fresh pass %d: eventfd %d reported %u times", pass, i, seen[i]);
			ok = 0;
		}
		if (read(efds[i], &value, sizeof(value)) != sizeof(value) || value != 1) {
			if (!(sabotage && i == 0)) {
				fail("fresh pass %d: eventfd %d does not hold 1", pass, i);
				ok = 0;
			}
		}
	}
	/* Nothing more: the ring is empty and a wait times out */
	if (f->h && (f->h->head != __atomic_load_n(&f->h->tail, __ATOMIC_ACQUIRE) ||
		     epoll_wait(f->epfd, NULL, 0, 0) != 0)) {
		fail("fresh pass %d: the ring is not empty after every event", pass);
		ok = 0;
	}
	if (!f->h && epoll_wait(f->epfd, &ev, 1, 0) != 0) {
		fail("fresh pass %d: an event after every event", pass);
		ok = 0;
	}
	return ok;
}

static int fresh_check(int sabotage)
{
	int efds[FRESH_EVENTFDS], i, ok = 1;
	struct fresh f;

	memset(&f, 0, sizeof(f));
	if (nr_epoll_create2 >= 0) {
		f.epfd = epoll_create2(EPOLL_USERPOLL | EPOLL_CLOEXEC, FRESH_ITEMS);
		if (f.epfd < 0) {
			fail("fresh ring: epoll_create2: %s", strerror(errno));
			return 0;
		}
		f.hdr_len = header_length(FRESH_ITEMS);
		f.idx_len = index_length(FRESH_ITEMS);
		f.h = mmap(NULL, f.hdr_len, PROT_READ | PROT_WRITE, MAP_SHARED, f.epfd, 0);
		f.index = mmap(NULL, f.idx_len, PROT_READ | PROT_WRITE, MAP_SHARED, f.epfd,
			       (off_t)f.hdr_len);
		if (f.h == MAP_FAILED || f.index == MAP_FAILED) {
			fail("fresh ring: mmap: %s", strerror(errno));
			return 0;
		}
		if (f.h->magic != USERPOLL_MAGIC || f.h->header_length != f.hdr_len ||
		    f.h->index_length != f.idx_len || f.h->max_items_nr != FRESH_ITEMS ||
		    f.h->head || f.h->tail) {
			fail("fresh ring: header magic %#x lengths %u %u items %u head %u tail %u",
			     f.h->magic, f.h->header_length, f.h->index_length,
			     f.h->max_items_nr, f.h->head, f.h->tail);
			return 0;
		}
		f.items = (struct uitem *)((char *)f.h + HEADER_SIZE);
		f.mask = (uint32_t)(f.idx_len / 4 - 1);
	} else {
		f.epfd = epoll_create1(EPOLL_CLOEXEC);
		if (f.epfd < 0) {
			fail("fresh epoll: %s", strerror(errno));
			return 0;
		}
	}
	for (i = 0; i < FRESH_EVENTFDS; i++) {
		struct epoll_event ev = { .events = EPOLLIN | EPOLLET, .data.u64 = (uint64_t)i };

		efds[i] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		if (efds[i] < 0 || epoll_ctl(f.epfd, EPOLL_CTL_ADD, efds[i], &ev)) {
			fail("fresh ring: eventfd %d: %s", i, strerror(errno));
			return 0;
		}
	}
	/* Twice: the second pass proves the first left every item re-armable */
	ok = fresh_pass(&f, efds, FRESH_EVENTFDS, sabotage, 1) &&
	     fresh_pass(&f, efds, FRESH_EVENTFDS, 0, 2);
	for (i = 0; i < FRESH_EVENTFDS; i++)
		close(efds[i]);
	if (f.h) {
		munmap(f.h, f.hdr_len);
		munmap(f.index, f.idx_len);
	}
	close(f.epfd);
	return ok;
}

/* --------------------------------------------------------------------------------------- */

static void usage(void)
{
	fprintf(stderr, "usage: hostile_ring (--nr NUMBER | --no-ring) [--rounds N] "
			"[--seconds S] [--round-ms MS] [--sabotage]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	unsigned int rounds = 20, round, done = 0;
	double seconds = 20, round_ms = 100;
	int no_ring = 0, sabotage = 0, i;
	struct sigaction sa;
	uint64_t start, limit;

	for (i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--nr") && i + 1 < argc)
			nr_epoll_create2 = strtol(argv[++i], NULL, 0);
		else if (!strcmp(argv[i], "--rounds") && i + 1 < argc)
			rounds = (unsigned int)strtoul(argv[++i], NULL, 0);
		else if (!strcmp(argv[i], "--seconds") && i + 1 < argc)
			seconds = strtod(argv[++i], NULL);
		else if (!strcmp(argv[i], "--round-ms") && i + 1 < argc)
			round_ms = strtod(argv[++i], NULL);
		else if (!strcmp(argv[i], "--no-ring"))
			no_ring = 1;
		else if (!strcmp(argv[i], "--sabotage"))
			sabotage = 1;
		else
			usage();
	}
	if (no_ring == (nr_epoll_create2 >= 0) || round_ms <= 0)
		usage();
	page = sysconf(_SC_PAGESIZE);
	setvbuf(stdout, NULL, _IOLBF, 0);

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_fault;
	sa.sa_flags = SA_SIGINFO;
	sigaction(SIGSEGV, &sa, NULL);
	sigaction(SIGBUS, &sa, NULL);
	sigaction(SIGILL, &sa, NULL);
	sigaction(SIGFPE, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	start = now_ns();
	limit = start + (uint64_t)(seconds * 1e9);
	for (round = 0; round < rounds && now_ns() < limit; round++) {
		if (run_round(round, (uint64_t)(round_ms * 1e6)))
			break;
		done++;
	}
	printf("hostile rounds: %u in %.2f s\n", done, (double)(now_ns() - start) / 1e9);
	if (!fresh_check(sabotage))
		fail("the fresh %s does not deliver exactly", no_ring ? "epoll" : "ring");
	if (failures) {
		printf("hostile_ring: FAIL (%d problems)\n", failures);
		return 1;
	}
	printf("hostile_ring: PASS (%s, %u rounds)\n", no_ring ? "no ring" : "ring", done);
	return 0;
}
