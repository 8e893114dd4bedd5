"""Drain any EPOLL_USERPOLL ring held in memory you provide: for study and for tests.

``Ring`` attaches the same C consumer the backends use to two writable buffers (header +
items, index), after validating the header, and drains them with :meth:`Ring.drain`. Build a
ring by hand with :func:`new_ring_buffers` and the numpy views, and watch what the consumer
does with wrapped, stale or corrupt indices.
"""

from __future__ import annotations

import errno
from typing import Any

import numpy as np

from . import abi
from ._native_lib import NULL, lib
from .backends.base import RingMemory, anonymous_shared, writable_pointer


def new_ring_buffers(max_items: int) -> tuple[Any, Any]:
    """Zeroed header + items and index buffers for *max_items*, header fields filled in."""
    if not 1 <= max_items <= abi.MAX_ITEMS_LIMIT:
        raise ValueError(f"max_items must be in 1..{abi.MAX_ITEMS_LIMIT}")
    header = anonymous_shared(abi.header_length(max_items))
    index = anonymous_shared(abi.index_length(max_items))
    h = np.ndarray((), abi.HEADER_DTYPE, buffer=header)
    h["magic"] = abi.USERPOLL_MAGIC
    h["header_length"] = len(header)
    h["index_length"] = len(index)
    h["max_items_nr"] = max_items
    return header, index


class Ring(RingMemory):
    """A consumer over caller-provided ring memory (no producer, no waiting).

    Not a backend of :class:`uring_epoll.epoll`: nothing registers files with it and nothing
    publishes into it but the caller, through the writable views.
    """

    def __init__(self, header: Any, index: Any, protocol: int = abi.PROTOCOL_V5) -> None:
        super().__init__()
        if protocol not in abi.PROTOCOLS:
            raise ValueError(f"protocol must be 5 or 3, got {protocol!r}")
        self._attach(header, index, protocol, lib.UE_WAIT_KERNEL, -1, None, 0)

    @property
    def writable_header(self) -> np.ndarray:
        """Writable view of the header, to play producer."""
        view: np.ndarray = np.ndarray((), abi.HEADER_DTYPE, buffer=self._header_map)
        return view

    @property
    def writable_items(self) -> np.ndarray:
        """Writable view of the items, indexed by slot number."""
        view: np.ndarray = np.ndarray(
            (self.max_items,), abi.ITEM_DTYPE, buffer=self._header_map, offset=abi.HEADER_SIZE
        )
        return view

    @property
    def writable_index(self) -> np.ndarray:
        """Writable view of the index ring."""
        view: np.ndarray = np.ndarray(
            (len(self._index_map) // 4,), abi.INDEX_DTYPE, buffer=self._index_map
        )
        return view

    def drain(self, out: np.ndarray) -> int:
        """Drain into *out* (1-d, C-contiguous, writable array of EVENT_DTYPE); TypeError for
        any other, OSError(EBADMSG) on a corrupt ring."""
        if (
            not isinstance(out, np.ndarray)
            or out.dtype != abi.EVENT_DTYPE
            or out.ndim != 1
            or not out.flags.c_contiguous
        ):
            raise TypeError("out must be a 1-d C-contiguous numpy array of EVENT_DTYPE")
        if not out.flags.writeable:
            raise TypeError("out must be a writable array: drain() writes the events into it")
        if self.consumer is None:
            raise ValueError("drain on a closed Ring")
        # EVENT_DTYPE is packed (alignment 1): the C side copies each event with memcpy.
        pointer = writable_pointer(out, abi.EVENT_DTYPE.alignment, "out")
        n: int = lib.ue_drain(self.consumer, pointer, NULL, min(len(out), 2**31 - 1))
        if n == -errno.EBADMSG:
            raise self.corrupt_error()
        return n

    def close(self) -> None:
        """Detach the consumer; the buffers stay the caller's. Idempotent."""
        self._release_maps()
