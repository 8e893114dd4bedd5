"""The interface every backend offers, and the ring machinery the ring backends share."""

from __future__ import annotations

import errno
import mmap
from typing import Any

import numpy as np

from .. import abi
from .._native_lib import ffi, lib, os_error


class Backend:
    """create, ctl, wait/drain, close: what :class:`uring_epoll.epoll` needs of a backend."""

    name = "?"
    #: True when events come from a shared ring (so LT needs re-arming, data is 64-bit).
    is_ring = False

    def fileno(self) -> int:
        raise NotImplementedError

    def ctl(self, op: int, fd: int, events: int, data: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def after_fork_in_child(self) -> None:
        """Forget resources that belong to the parent (threads, mappings) without touching them."""

    def stats(self) -> dict[str, int]:
        return {}

    def live_fds(self) -> set[int]:
        """The fds the kernel still holds registrations for (a closed file's go with it)."""
        return registered_fds(self.fileno())

    def forget(self, fd: int) -> None:
        """Drop our own record of *fd*'s registration after its file was closed."""


class EpfdBackend(Backend):
    """A backend whose registrations live on an epoll fd of its own (``self.epfd``)."""

    epfd = -1

    def fileno(self) -> int:
        return self.epfd

    def ctl(self, op: int, fd: int, events: int, data: int) -> None:
        ret = lib.ue_sys_epoll_ctl(self.epfd, op, fd, events, data)
        if ret < 0:
            raise os_error(ret)


class RingBackend(Backend):
    """A ring (header + items + index) and the C consumer draining it."""

    is_ring = True

    def __init__(self) -> None:
        self._header_map: Any = None
        self._index_map: Any = None
        self.consumer: Any = None
        self.memory: Any = None
        self.protocol = abi.PROTOCOL_V5
        self.max_items = 0

    def _attach(
        self,
        header_map: Any,
        index_map: Any,
        protocol: int,
        mode: int,
        epfd: int,
        emu: Any,
        spin_ns: int,
    ) -> None:
        """Validate the ring's geometry and set up the consumer; nothing is trusted before."""
        header_ptr = ffi.from_buffer(header_map)
        index_ptr = ffi.from_buffer(index_map)
        consumer = ffi.new("struct ue_consumer *")
        ret = lib.ue_consumer_init(
            consumer,
            header_ptr,
            len(header_map),
            index_ptr,
            len(index_map),
            protocol,
            mode,
            epfd,
            emu if emu is not None else ffi.NULL,
            spin_ns,
        )
        if ret < 0:
            if ret == -errno.EBADMSG:
                raise OSError(errno.EBADMSG, "ring header is not a valid EPOLL_USERPOLL header")
            raise os_error(ret, "attaching the ring")
        self._header_map = header_map
        self._index_map = index_map
        self.consumer = consumer
        # Everything the C consumer points into. A poll in flight on another thread holds
        # this tuple, so close() dropping our references can never free memory under it.
        self.memory = (consumer, header_map, index_map, header_ptr, index_ptr)
        self.protocol = protocol
        self.max_items = int(np.frombuffer(header_map, "<u4", count=4)[3])

    # Views for study: read-only, so a stray assignment cannot corrupt the live ring.
    @property
    def header(self) -> np.ndarray:
        view = np.ndarray((), abi.HEADER_DTYPE, buffer=self._header_map)
        view.flags.writeable = False
        return view

    @property
    def items(self) -> np.ndarray:
        view = np.ndarray(
            (self.max_items,), abi.ITEM_DTYPE, buffer=self._header_map, offset=abi.HEADER_SIZE
        )
        view.flags.writeable = False
        return view

    @property
    def index(self) -> np.ndarray:
        view = np.ndarray(
            (len(self._index_map) // 4,), abi.INDEX_DTYPE, buffer=self._index_map
        )
        view.flags.writeable = False
        return view

    def stats(self) -> dict[str, int]:
        s = self.consumer.stats
        return {
            "ring_events": s.ring_events,
            "sleeps": s.sleeps,
            "estale": s.estale,
            "spins": s.spins,
            "spin_hits": s.spin_hits,
            "skipped": s.skipped,
            "slot_waits": s.slot_waits,
        }

    def corrupt_error(self) -> OSError:
        """The OSError(EBADMSG) for the corrupt entry the consumer just stopped at."""
        c = self.consumer
        if c.bad_kind == 2:
            what = (
                f"ring tail {c.bad_value} is {(c.bad_value - c.bad_position) & 0xFFFFFFFF} "
                f"entries ahead of head {c.bad_position}, more than the ring holds"
            )
        else:
            what = (
                f"index entry at head {c.bad_position} names item {c.bad_value}, "
                f"beyond max_items {self.max_items}"
            )
        return OSError(errno.EBADMSG, f"corrupt EPOLL_USERPOLL ring: {what}")

    def _release_maps(self) -> None:
        # The C side must stop using the memory before these go; numpy views the user still
        # holds keep the mappings alive, so dropping our references is always safe.
        if self.consumer is not None:
            lib.ue_consumer_close(self.consumer)
        self.consumer = None
        self.memory = None
        self._header_map = None
        self._index_map = None


def registered_fds(epfd: int) -> set[int]:
    """The target fds of an epoll fd's registrations, from /proc/self/fdinfo (no side effect).

    The kernel removes a registration when its file is closed; this is the one way to see
    that from user space without touching the registration itself.
    """
    fds = set()
    with open(f"/proc/self/fdinfo/{epfd}") as f:
        for line in f:
            if line.startswith("tfd:"):
                fds.add(int(line.split()[1]))
    return fds


def anonymous_shared(length: int) -> mmap.mmap:
    """Zeroed MAP_SHARED|MAP_ANONYMOUS memory, like the kernel's vmalloc'd ring buffers."""
    return mmap.mmap(-1, length, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
