/* SPDX-License-Identifier: MIT */
/*
 * Functions the runtime's own sources share (ring.c, emu.c) and nothing else calls: they
 * have external linkage only because they cross a file, and are not part of the module's
 * interface (ue.h), so Python never sees them.
 */
#ifndef URING_EPOLL_UE_INTERNAL_H
#define URING_EPOLL_UE_INTERNAL_H

#include <string.h>

#include "ue.h"

/*
 * One event into a caller's buffer: packed struct epoll_event (data_out NULL), or the split
 * layout, a u32 events array in out and a u64 data array in data_out.
 */
static inline void ue_put_event(char *out, uint64_t *data_out, uint32_t i, uint32_t events,
				uint64_t data)
{
	if (data_out) {
		((uint32_t *)out)[i] = events;
		data_out[i] = data;
		return;
	}
	/* struct epoll_event is packed on x86_64: 4 bytes of events, then 8 of data. */
	memcpy(out + 12u * i, &events, 4);
	memcpy(out + 12u * i + 4, &data, 8);
}

/* Validate a ring's geometry (ring.c); 0, -EINVAL (arguments) or -EBADMSG (header). */
int ue_ring_attach(struct ue_ring *ring, void *header, size_t header_len, void *index,
		   size_t index_len, int protocol);

/*
 * The emulator's side of a consumer's sleep (emu.c): futex on its tail word until it moves
 * away from seen_tail (-ESTALE), *closing is set (-EBADF), a signal arrives (-EINTR) or the
 * timeout passes (-ETIMEDOUT; a negative timeout never does). A poller thread that failed
 * or is not running ends the wait with its -errno or -EPIPE.
 */
int ue__emu_wait(struct ue_emu *emu, uint32_t *tail, uint32_t seen_tail, int64_t timeout_ns,
		 const int *closing);

/*
 * A consumer found the ring empty (emu.c): unless entries arrived meanwhile, the emulator's
 * pollable fd (ue_emu_poll_fd) stops reporting the ring non-empty. A load when nothing was
 * signalled since the last call; else the emulator's lock and one eventfd read.
 */
void ue__emu_idle(struct ue_emu *emu);

/*
 * The uring backend's side of ue_poll (uring.c): submit queued re-arms, drain the CQ into out
 * (coalescing each registration's CQEs), sleep in io_uring_enter until a CQE or the timeout;
 * -EBADF once *closing is set.
 */
long ue__uring_poll(struct ue_uring *u, void *out, uint64_t *data_out, uint32_t max,
		    int64_t timeout_ns, const int *closing);

/* True if the CQ holds completions, or the kernel holds some back (a hint: no lock). */
int ue__uring_pending(struct ue_uring *u);

/* Wake every thread asleep in io_uring_enter on u (a NOP's completion). */
void ue__uring_wake(struct ue_uring *u);

#endif
