"""The EPOLL_USERPOLL ABI: constants and numpy dtypes, no logic.

Everything here mirrors ``include/uapi/linux/eventpoll.h`` of the patched kernel in
``kernel_patches/`` (x86_64, little-endian). The layouts are asserted by the tests, so a change
here that breaks the ABI fails loudly.
"""

from __future__ import annotations

import select

import numpy as np

#: ``epoll_create2`` number in the patched kernel. It is unused on every mainline x86_64 kernel
#: up to today (mainline allocates upwards from 424; x32 uses 512 and up). It is never called
#: unless the running kernel announces this very number in :data:`USERPOLL_SYSCTL`.
NR_EPOLL_CREATE2 = 500

#: Read-only sysctl added by the patch; it holds the syscall number above. Its presence is the
#: only thing the probe trusts, so no syscall number is ever tried on a kernel that may give it
#: another meaning.
USERPOLL_SYSCTL = "/proc/sys/fs/epoll/userpoll_nr"

#: ``epoll_create2`` flag asking for the shared ring.
EPOLL_USERPOLL = 1
EPOLL_CLOEXEC = 0o2000000

#: Bit the kernel writes into ``ready_events`` when a pending item is deleted.
EPOLLREMOVED = 1 << 27

USERPOLL_MAGIC = 0xEB01EB01
HEADER_SIZE = 128
ITEM_SIZE = 16
MAX_ITEMS_LIMIT = 65536

#: Protocol revisions: 5 is the final RFC posting (wait-free producer, index slot holds the item
#: number); 3 is the v2/v3 scheme (index slot holds item number + 1, consumer spins on zero).
PROTOCOL_V5 = 5
PROTOCOL_V3 = 3
PROTOCOLS = (PROTOCOL_V5, PROTOCOL_V3)

EPOLLIN = select.EPOLLIN
EPOLLPRI = select.EPOLLPRI
EPOLLOUT = select.EPOLLOUT
EPOLLERR = select.EPOLLERR
EPOLLHUP = select.EPOLLHUP
EPOLLRDNORM = select.EPOLLRDNORM
EPOLLRDBAND = select.EPOLLRDBAND
EPOLLWRNORM = select.EPOLLWRNORM
EPOLLWRBAND = select.EPOLLWRBAND
EPOLLMSG = select.EPOLLMSG
EPOLLRDHUP = select.EPOLLRDHUP
EPOLLEXCLUSIVE = select.EPOLLEXCLUSIVE
EPOLLWAKEUP = 1 << 29
EPOLLONESHOT = select.EPOLLONESHOT
EPOLLET = select.EPOLLET

EPOLL_CTL_ADD = 1
EPOLL_CTL_DEL = 2
EPOLL_CTL_MOD = 3

HEADER_DTYPE = np.dtype(
    {
        "names": [
            "magic",
            "header_length",
            "index_length",
            "max_items_nr",
            "head",
            "tail",
            "repoll",
        ],
        "formats": ["<u4"] * 7,
        "offsets": [0, 4, 8, 12, 16, 20, 24],
        "itemsize": HEADER_SIZE,
    }
)
"""The 128-byte ring header (``struct epoll_uheader``).

``repoll`` is this project's kernel port's addition to the RFC's header (the RFC left bytes
24..127 as padding): the kernel sets it when a file woke the epoll without saying which events
(signalfd, inotify, pidfd, a pipe's release, a socket's state change...). Such files must be
polled by the ring's owner, in its own context, before the ring can report them; one
``epoll_wait(epfd, NULL, 0, 0)`` has the kernel do it and clears the word. The consumer checks
it on every poll, so a poll(0) that drains the ring without a system call still sees them.
"""

ITEM_DTYPE = np.dtype(
    {
        "names": ["ready_events", "events", "data"],
        "formats": ["<u4", "<u4", "<u8"],
        "offsets": [0, 4, 8],
        "itemsize": ITEM_SIZE,
    }
)
"""One registration's shared item (``struct epoll_uitem``), indexed by its slot number."""

INDEX_DTYPE = np.dtype("<u4")
"""One index ring slot."""

EVENT_DTYPE = np.dtype(
    {"names": ["events", "data"], "formats": ["<u4", "<u8"], "offsets": [0, 4], "itemsize": 12}
)
"""A delivered event: the packed x86_64 ``struct epoll_event`` (12 bytes), so one buffer serves
the ring drain and ``epoll_wait`` alike."""


CQE_DTYPE = np.dtype(
    {
        "names": ["user_data", "res", "flags"],
        "formats": ["<u8", "<i4", "<u4"],
        "offsets": [0, 8, 12],
        "itemsize": 16,
    }
)
"""One io_uring completion (``struct io_uring_cqe``, 16 bytes), as the uring backend's
``cqes`` view shows them. For a poll request, ``user_data`` is the registration's generation
<< 32 | its slot, ``res`` the poll mask (or -errno) and ``flags`` has IORING_CQE_F_MORE
(:data:`IORING_CQE_F_MORE`) while a multishot poll goes on."""

#: ``flags`` bit of a CQE whose multishot request goes on.
IORING_CQE_F_MORE = 1 << 1
#: io_uring_params.features bit: the SQ and CQ rings are one mapping.
IORING_FEAT_SINGLE_MMAP = 1 << 0


def page_size() -> int:
    import mmap

    return mmap.PAGESIZE


def header_length(max_items: int) -> int:
    """Bytes of header + items for *max_items* registrations (page aligned)."""
    ps = page_size()
    return (HEADER_SIZE + ITEM_SIZE * max_items + ps - 1) // ps * ps


def index_length(max_items: int) -> int:
    """Bytes of the index ring: a power of two, at least one page."""
    need = 4 * max_items
    size = 1
    while size < need:
        size <<= 1
    return max(size, page_size())
