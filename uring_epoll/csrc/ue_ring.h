/* SPDX-License-Identifier: MIT */
/*
 * The EPOLL_USERPOLL ring as it lies in shared memory (the layout the patched kernel writes),
 * and the consumer's validated copy of its geometry. C only: Python reads the same layout
 * through the numpy dtypes in abi.py, and the cffi module sees none of it.
 */
#ifndef URING_EPOLL_UE_RING_H
#define URING_EPOLL_UE_RING_H

#include <stddef.h>
#include <stdint.h>

#define UE_USERPOLL_MAGIC 0xeb01eb01u
#define UE_HEADER_SIZE 128u
#define UE_EPOLLREMOVED (1u << 27)
#define UE_MAX_ITEMS 65536u

/*
 * Shared header: written once by the producer except head (consumer), tail and repoll
 * (producer). repoll is the 6.1 port's addition (zero elsewhere): see poll_inner in ring.c.
 */
struct ue_uheader {
	uint32_t magic;
	uint32_t header_length;
	uint32_t index_length;
	uint32_t max_items_nr;
	uint32_t head;
	uint32_t tail;
	uint32_t repoll; /* kernel: items woken without a key wait for an epoll_wait() */
	uint8_t padding[UE_HEADER_SIZE - 28];
};

struct ue_uitem {
	uint32_t ready_events;
	uint32_t events;
	uint64_t data;
};

/* Consumer's trusted copy of the ring geometry, validated once when the ring is attached. */
struct ue_ring {
	struct ue_uheader *hdr;
	struct ue_uitem *items;
	uint32_t *index;
	uint32_t index_mask;
	uint32_t max_items;
	int protocol;
};

#endif
