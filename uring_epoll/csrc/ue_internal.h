/* SPDX-License-Identifier: MIT */
/*
 * Functions the runtime's own sources share (ring.c, emu.c) and nothing else calls: they
 * have external linkage only because they cross a file, and are not part of the module's
 * interface (ue.h), so Python never sees them.
 */
#ifndef URING_EPOLL_UE_INTERNAL_H
#define URING_EPOLL_UE_INTERNAL_H

#include "ue.h"

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

#endif
