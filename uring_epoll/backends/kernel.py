"""The ``kernel`` backend: EPOLL_USERPOLL in the patched kernel (``kernel_patches/``).

``epoll_create2(EPOLL_USERPOLL, max_items)`` gives an epoll fd whose header + items and index
ring are mmapped; the kernel is the producer. When the ring is empty the consumer sleeps in
``epoll_wait(epfd, NULL, 0, timeout)``, which returns -ESTALE as soon as entries appear.
"""

from __future__ import annotations

import errno
import mmap
import os

import numpy as np

from .. import abi, probe
from .._native_lib import lib, os_error
from .base import EpfdBackend, RingBackend, track_ring_map

_PROT = mmap.PROT_READ | mmap.PROT_WRITE


def map_userpoll(epfd: int) -> tuple[mmap.mmap, mmap.mmap]:
    """Map the header + items and the index ring of a userpoll epfd.

    Maps one page first to learn the lengths (the ABI allows a partial map), checks them, and
    maps both buffers at their full size.
    """
    first = mmap.mmap(epfd, mmap.PAGESIZE, mmap.MAP_SHARED, _PROT, offset=0)
    try:
        magic, header_len, index_len, max_items = (int(v) for v in np.frombuffer(first, "<u4", 4))
    finally:
        first.close()
    if magic != abi.USERPOLL_MAGIC:
        raise OSError(errno.EBADMSG, f"bad userpoll magic {magic:#x}")
    if not 0 < max_items <= abi.MAX_ITEMS_LIMIT or header_len != abi.header_length(max_items):
        raise OSError(errno.EBADMSG, f"bad userpoll header length {header_len} for {max_items}")
    if index_len != abi.index_length(max_items):
        raise OSError(errno.EBADMSG, f"bad userpoll index length {index_len}")
    header = track_ring_map(mmap.mmap(epfd, header_len, mmap.MAP_SHARED, _PROT, offset=0))
    index = track_ring_map(mmap.mmap(epfd, index_len, mmap.MAP_SHARED, _PROT, offset=header_len))
    return header, index


class KernelBackend(EpfdBackend, RingBackend):
    """The real thing: the kernel publishes, we drain."""

    name = "kernel"

    def __init__(
        self, *, max_items: int, protocol: int, spin_ns: int, epfd: int | None = None
    ) -> None:
        super().__init__()
        if protocol != abi.PROTOCOL_V5:
            raise ValueError(
                f"the kernel backend speaks protocol 5 only (got {protocol}); "
                "protocol 3 is available on the thread backend"
            )
        owned = epfd is None  # a caller's fd (fromfd) is never closed here on failure
        if epfd is None:
            number, why = probe.kernel_userpoll_syscall()
            if number is None:
                raise OSError(errno.ENOSYS, f"kernel backend unavailable: {why}")
            epfd = lib.ue_sys_epoll_create2(
                number, abi.EPOLL_USERPOLL | abi.EPOLL_CLOEXEC, max_items
            )
            if epfd < 0:
                raise os_error(epfd, "epoll_create2")
        self.epfd = epfd
        try:
            header, index = map_userpoll(epfd)
            self._attach(header, index, protocol, lib.UE_WAIT_KERNEL, epfd, None, spin_ns)
        except BaseException:
            if owned:
                os.close(epfd)
            raise

    def close(self) -> None:
        self._release_maps()
        if self.epfd >= 0:
            os.close(self.epfd)
            self.epfd = -1

    def after_fork_in_child(self) -> None:
        # The mappings are not inherited (VM_DONTCOPY): never touch them here (their ranges
        # are held by base._hold_ring_ranges).
        self._release_maps()
