/* SPDX-License-Identifier: MIT */
/*
 * uring-epoll native layer: the EPOLL_USERPOLL ring consumer, the userspace producer that
 * emulates the kernel on stock kernels, the io_uring poll backend, and fixed-argument system
 * call wrappers.
 *
 * Every function returns a non-negative result or -errno; Python turns that into the right
 * exception. Nothing here touches Python objects, so cffi releases the GIL around each call.
 *
 * This header is the module's whole interface, for C and for Python alike: _native_build.py
 * hands the part between the "cdef: begin" and "cdef: end" lines to cffi as its cdef. That
 * part holds plain declarations only (the builder rejects anything else): object-like
 * #defines, structs, enums and prototypes. Struct members after a "private:" comment (up to
 * a "public:" one or the closing brace) are the C side's business: cffi sees them as "...;"
 * and takes their size and offsets from the compiler.
 */
#ifndef URING_EPOLL_UE_H
#define URING_EPOLL_UE_H

#include <stddef.h>
#include <stdint.h>

#include "ue_ring.h"

/* cdef: begin */

/* Bumped whenever the C interface changes; checked at import to catch a stale build. */
#define UE_NATIVE_VERSION 21

/*
 * Longest spin on an empty ring before sleeping (spin_ns is clamped to it). A spin only pays
 * while it is short against the sleep and wake-up it saves (a few microseconds): 10 ms is
 * far past that, a scheduler time slice, and how long a signal may wait to be seen (after a
 * spin that saw nothing, ue_poll returns -EINTR for the caller's signal handlers to run,
 * and sleeps without spinning when called again).
 */
#define UE_SPIN_MAX_NS 10000000
/*
 * How long ue_poll yields to a protocol-3 producer between its reservation and its write
 * before returning -EINTR, so that the caller's signal handlers run (the C code cannot see a
 * signal whose handler has already run); the caller calls again with what is left of its
 * timeout.
 */
#define UE_BUSY_SLICE_NS 10000000
/* Protocol 3: a slot reserved this long and still unwritten makes the drain fail (EBADMSG). */
#define UE_V3_STUCK_NS 1000000000
/*
 * Kernel mode: this many sleeps in a row ended by -ESTALE ("entries in the ring") while the ring
 * as mapped here stayed empty and unchanged make ue_poll fail with -EBADMSG (bad_kind 4): the
 * kernel fills other memory than this mapping, and sleeping again would return at once, for
 * ever. A true ESTALE moves tail (or another consumer's drain moves head) before we look.
 */
#define UE_ESTALE_STUCK 64

enum ue_wait_mode {
	UE_WAIT_KERNEL = 1, /* epoll_wait(epfd, NULL, 0, ms) on a userpoll epfd */
	UE_WAIT_FUTEX = 2,  /* futex on the emulator's tail word */
	UE_WAIT_EPOLL = 3,  /* no ring: plain epoll_wait into the bound buffer */
	UE_WAIT_URING = 4,  /* io_uring poll requests: drain the CQ, sleep in io_uring_enter */
};

struct ue_emu;
struct ue_uring;

struct ue_stats {
	uint64_t ring_events; /* events handed to the caller from the ring */
	uint64_t sleeps;      /* times the consumer went to sleep in the kernel */
	uint64_t estale;      /* sleeps that ended with "entries in the ring" */
	uint64_t spins;       /* bounded spins started on an empty ring */
	uint64_t spin_hits;   /* spins that saw the tail move */
	uint64_t skipped;     /* entries consumed without an event (EPOLLREMOVED, masked) */
	uint64_t slot_waits;  /* protocol 3: drains stopped at a reserved, unwritten slot */
	uint64_t repolls;     /* kernel: epoll_wait(NULL, 0, 0) calls for key-less wakeups */
};

struct ue_consumer {
	/* private: */
	struct ue_ring ring;
	int mode;
	int epfd;
	struct ue_emu *emu;
	struct ue_uring *uring;
	uint64_t spin_ns;
	/* public: */
	struct ue_stats stats;
	/* Details of the last -EBADMSG, for the Python error message. */
	uint32_t bad_position;
	uint32_t bad_value;
	/*
	 * 1: slot out of range, 2: tail - head larger than the ring, 3 (protocol 3): the slot at
	 * head reserved (tail = bad_value) but never written for UE_V3_STUCK_NS, 4: the kernel
	 * said "entries in the ring" UE_ESTALE_STUCK times in a row while head = tail =
	 * bad_position here.
	 */
	uint32_t bad_kind;
	/* private: */
	volatile int lock;    /* one consumer at a time; protects head and the two below */
	uint32_t stuck_head;  /* protocol 3: the head a drain last stopped at, unwritten */
	uint64_t stuck_since; /* when drains started stopping there (0: they do not) */
	int closing;	   /* set by ue_consumer_close: every poll returns -EBADF */
	uint32_t inflight; /* threads inside ue_poll */
	uint32_t estale_idle; /* kernel mode: ESTALE sleeps in a row that found nothing new */
};

/*
 * The leading fields of a numpy array object (numpy's PyArrayObject_fields, public C ABI
 * since numpy 1.7, after a non-debug PyObject_HEAD). The Python side checks this layout
 * against the array's own view of itself before it lets C read an array through it.
 */
struct ue_ndarray_head {
	intptr_t ob_refcnt;
	void *ob_type;
	char *data;
	int nd;
	intptr_t *dimensions;
	intptr_t *strides;
	void *base;
	void *descr;
	int flags;
};

#define UE_NPY_ARRAY_WRITEABLE 0x0400

/* ue_poll_bound's -UE_EMOVED: the bound array's memory moved; bind it again. */
#define UE_EMOVED 4096

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
	/*
	 * The caller's numpy array that out lies in, or NULL. A binding outlives the call that
	 * made it, and an array can be resized in place (a new allocation, the old one freed)
	 * or made read-only: each call first checks that the array still has this data pointer,
	 * one dimension of this length, this dtype and is writable, else returns -UE_EMOVED.
	 */
	const struct ue_ndarray_head *array;
	const void *descr;
	intptr_t length;
};

/* The consumer (ring.c) */
int ue_consumer_init(struct ue_consumer *c, void *header, size_t header_len, void *index,
		     size_t index_len, int protocol, int mode, int epfd, struct ue_emu *emu,
		     uint64_t spin_ns);
int ue_consumer_init_epoll(struct ue_consumer *c, int epfd);
long ue_drain(struct ue_consumer *c, void *out, uint64_t *data_out, uint32_t maxevents);
long ue_poll(struct ue_consumer *c, void *out, uint64_t *data_out, uint32_t maxevents,
	     int64_t timeout_ns);
long ue_poll_bound(const struct ue_binding *b, int64_t timeout_ns);
void ue_consumer_close(struct ue_consumer *c);
void ue_consumer_quiesce(struct ue_consumer *c);

/* Userspace producer, the "thread" backend (emu.c) */
struct ue_emu *ue_emu_new(void *header, size_t header_len, void *index, size_t index_len,
			  uint32_t max_items, int protocol, int *err);
int ue_emu_start(struct ue_emu *emu);
int ue_emu_ctl(struct ue_emu *emu, int op, int fd, uint32_t events, uint64_t data);
int ue_emu_inject(struct ue_emu *emu, int fd, uint32_t events);
int ue_emu_sync(struct ue_emu *emu);
int ue_emu_forget(struct ue_emu *emu, int fd);
int ue_emu_inner_fd(struct ue_emu *emu);
/* What epoll.fileno() is: readable while the ring holds entries or the poller has events. */
int ue_emu_poll_fd(struct ue_emu *emu);
int ue_emu_thread_error(struct ue_emu *emu);
int ue_emu_stop(struct ue_emu *emu);
void ue_emu_free(struct ue_emu *emu);

/* io_uring poll requests, the "uring" backend (uring.c) */

/* ue_uring_probe's *missing bits: what this kernel's io_uring lacks for the backend. */
#define UE_URING_NO_NODROP 1	/* IORING_FEAT_NODROP (5.5): CQ overflow would lose events */
#define UE_URING_NO_EXT_ARG 2	/* IORING_FEAT_EXT_ARG (5.11): no timed wait in enter */
#define UE_URING_NO_MULTISHOT 4 /* 5.13's features (IORING_FEAT_RSRC_TAGS): no multishot poll */
#define UE_URING_NO_POLL_OPS 8	/* IORING_REGISTER_PROBE: no POLL_ADD / POLL_REMOVE */

/* What the Python side needs to map the rings (sizes and mmap offsets). */
struct ue_uring_info {
	int ring_fd;
	int poll_fd; /* an epoll fd holding ring_fd: readable while the CQ holds completions */
	uint32_t sq_entries;
	uint32_t cq_entries;
	uint32_t features;
	uint32_t sq_ring_size;
	uint32_t cq_ring_size;
	uint32_t sqes_size;
	uint32_t cqes_offset; /* of the CQE array in the CQ ring mapping */
	uint64_t off_sq_ring;
	uint64_t off_cq_ring;
	uint64_t off_sqes;
};

struct ue_uring_stats {
	uint64_t cqes;		     /* CQEs consumed, stale ones included */
	uint64_t events;	     /* events handed out (after coalescing) */
	uint64_t coalesced;	     /* CQEs ORed into an event of the same batch */
	uint64_t stale;		     /* CQEs of a removed or modified registration, dropped */
	uint64_t skipped;	     /* CQEs of a current registration without an asked-for bit */
	uint64_t rearms;	     /* single-shot polls queued again after a delivery */
	uint64_t multishot_restarts; /* multishot polls that ended or were cancelled, re-armed */
	uint64_t overflows;	     /* drains that found CQEs held back (CQ full) and fetched them */
	uint64_t enters;	     /* io_uring_enter calls */
	uint64_t sleeps;	     /* enters that waited for a completion */
};

/* 0 and *missing (UE_URING_NO_*), or -errno of io_uring_setup (-ENOSYS, -EPERM...). */
int ue_uring_probe(uint32_t *missing);
/* A ring for max_items registrations (NULL and *err on failure); the caller maps it. */
struct ue_uring *ue_uring_new(uint32_t max_items, struct ue_uring_info *info, int *err);
/* The caller's mappings of the SQ ring, CQ ring and SQEs, checked against the offsets. */
int ue_uring_attach(struct ue_uring *u, void *sq_ring, size_t sq_len, void *cq_ring,
		    size_t cq_len, void *sqes, size_t sqes_len);
/* epoll_ctl semantics and errors (events with EPOLLET / EPOLLONESHOT as epoll has them). */
int ue_uring_ctl(struct ue_uring *u, int op, int fd, uint32_t events, uint64_t data);
/* Registered fds that still name the file they were registered with: count, into out. */
long ue_uring_live_fds(struct ue_uring *u, int32_t *out, uint32_t max);
/* End the registration of fd if fd no longer names its file (closed without DEL). */
int ue_uring_forget(struct ue_uring *u, int fd);
int ue_uring_stats(struct ue_uring *u, struct ue_uring_stats *out);
/* Remove every armed poll request (their files are held): close(), never a fork child. */
void ue_uring_cancel_all(struct ue_uring *u);
/* Close the ring's fds and free; submits nothing (safe in a fork child). */
void ue_uring_free(struct ue_uring *u);
/* The consumer in UE_WAIT_URING mode; spin_ns as for the rings (clamped the same way). */
int ue_consumer_init_uring(struct ue_consumer *c, struct ue_uring *u, uint64_t spin_ns);

/* Fixed-argument system call wrappers, each returning the result or -errno (sys.c) */
int ue_sys_epoll_create2(long nr, int flags, size_t size);
int ue_sys_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t data);
int ue_sys_epoll_wait(int epfd, void *events, int maxevents, int timeout_ms);
int ue_sys_epoll_wait_null(int epfd, int timeout_ms);
int ue_sys_epoll_wait_ns(int epfd, void *events, int maxevents, int64_t timeout_ns);
int ue_sys_eventfd(unsigned int initval, int flags);
/*
 * Map an inaccessible placeholder at exactly [addr, addr + length), never over a mapping:
 * 0, -EEXIST when something is mapped there, or -errno.
 */
int ue_sys_reserve(uintptr_t addr, size_t length);

/*
 * Entry points for C code in other extension modules (the benchmark producers and drain
 * floor in uring_epoll._bench_native): their addresses, so that the consumer and the
 * emulator are compiled into this module alone and other modules drive the very copy Python
 * uses. The initializer in ring.c is checked against the prototypes above by the compiler.
 */
struct ue_runtime {
	int (*consumer_init)(struct ue_consumer *c, void *header, size_t header_len, void *index,
			     size_t index_len, int protocol, int mode, int epfd,
			     struct ue_emu *emu, uint64_t spin_ns);
	long (*drain)(struct ue_consumer *c, void *out, uint64_t *data_out, uint32_t maxevents);
	int (*emu_inject)(struct ue_emu *emu, int fd, uint32_t events);
};

const struct ue_runtime *ue_runtime_table(void);

/* cdef: end */

#endif
