"""The interface :class:`uring_epoll.epoll` has with its backends, and shared machinery.

:class:`Backend` is the whole contract: ``uring_epoll.epoll`` uses exactly its members and
nothing else of a backend object. :class:`BackendBase` gives the members a backend without a
ring can leave at their defaults; :class:`RingMemory` is the ring (header + items + index)
and the C consumer draining it, which the ring backends and the :class:`uring_epoll.ring.Ring`
study view share. ``Ring`` is not a backend: it has no producer, no registrations and no fd.
"""

from __future__ import annotations

import errno
import mmap
import os
import weakref
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from .. import abi
from .._native_lib import ffi, lib, os_error


class Backend(Protocol):
    """What :class:`uring_epoll.epoll` uses of a backend (all of it).

    Once :meth:`close` has run, every method but :meth:`close`, :meth:`after_fork_in_child`
    and :meth:`forget` raises ``OSError(EBADF)``, as ``select.epoll`` does once its fd was
    closed under it: teardown order (finalizers at exit, module teardown) must never turn
    into a TypeError from a freed C object.

    ``uring_epoll.epoll`` never runs :meth:`close` while another thread is inside any other
    method (its lifecycle guard waits for them); the one exception is the drain through
    ``memory[0]``, which the C consumer guards itself (it counts its callers, and close
    makes it return -EBADF), so a backend need not lock anything for that.
    """

    #: "kernel", "thread", "uring" or "epoll": what ``epoll.backend`` reports.
    name: str
    #: True when events come from a shared ring drained through ``memory[0]`` (there is no
    #: select.epoll to hand a poll to, and EPOLLEXCLUSIVE is refused).
    is_ring: bool
    #: True when the backend keeps level-triggered registrations level-triggered itself;
    #: False on the EPOLL_USERPOLL rings, where EPOLLET is forced and ``uring_epoll.epoll``
    #: re-arms each delivered level-triggered registration with EPOLL_CTL_MOD.
    rearms_level: bool

    @property
    def max_items(self) -> int | None:
        """Most registrations the ring holds at once; None without a ring."""
        ...

    @property
    def protocol(self) -> int | None:
        """The ring's protocol revision (``abi.PROTOCOLS``); None without a ring."""
        ...

    @property
    def memory(self) -> tuple[Any, ...]:
        """What a ``struct ue_binding`` needs: ``memory[0]`` is the ``struct ue_consumer *``
        ``lib.ue_poll_bound`` drains through, the rest is every object the consumer points
        into. A caller keeps the tuple with its binding, so memory stays mapped under a poll
        still running on another thread while :meth:`close` drops the backend's references."""
        ...

    @property
    def poll_pairs(self) -> Callable[[Any, int], list[tuple[int, int]]] | None:
        """``select.epoll.poll`` of the same epoll fd on a backend without a ring (its data is
        always the fd, so ``poll()`` may hand it the whole call); None on ring backends."""
        ...

    @property
    def header(self) -> np.ndarray | None:
        """Read-only view of the ring header (``abi.HEADER_DTYPE``); None without a ring."""
        ...

    @property
    def items(self) -> np.ndarray | None:
        """Read-only view of the ring's items (``abi.ITEM_DTYPE``); None without a ring."""
        ...

    @property
    def index(self) -> np.ndarray | None:
        """Read-only view of the index ring (``abi.INDEX_DTYPE``); None without a ring."""
        ...

    @property
    def cqes(self) -> np.ndarray | None:
        """Read-only view of an io_uring completion queue (``abi.CQE_DTYPE``); None without."""
        ...

    def fileno(self) -> int:
        """The pollable epoll fd ``epoll.fileno()`` reports."""
        ...

    def ctl(self, op: int, fd: int, events: int, data: int) -> None:
        """``epoll_ctl`` with 64-bit *data*; OSError with the kernel's errno on failure."""
        ...

    def live_fds(self) -> set[int]:
        """The fds the kernel still holds registrations for (a closed file's go with it)."""
        ...

    def forget(self, fd: int) -> None:
        """Drop the backend's own record of *fd*'s registration after its file was closed."""
        ...

    def stats(self) -> dict[str, int]:
        """Consumer counters by ``PollStats`` field name; missing ones count as 0."""
        ...

    def corrupt_error(self) -> OSError:
        """The OSError(EBADMSG) for a drain that returned ``-EBADMSG`` (a corrupt ring)."""
        ...

    def shares_file(self, fd: int) -> bool:
        """True if *fd* is (a dup of) this backend's :meth:`fileno`: ``epoll.fromfd(fd)``
        then shares this backend rather than wrap the fd anew (the thread backend's poller
        alone consumes its inner epoll's events, and every backend's objects must share the
        registrations' data and level-triggered re-arms)."""
        ...

    def close(self) -> None:
        """Stop the producer, unmap the ring, close the fd. Idempotent."""
        ...

    def after_fork_in_child(self) -> None:
        """In a fork child: forget what belongs to the parent (threads, mappings) without
        touching it. Idempotent; the backend is closed afterwards."""
        ...


def closed_error() -> OSError:
    """What every method of a closed backend raises: the fd is gone, as for select.epoll."""
    return OSError(errno.EBADF, "Bad file descriptor (the epoll object was closed)")


class BackendBase:
    """Defaults for the :class:`Backend` members a backend may not need.

    Each concrete backend still says what it is: ``name``, ``is_ring``, ``max_items``,
    ``protocol``, ``memory`` and ``poll_pairs`` are its own.
    """

    name = "?"
    is_ring = False
    rearms_level = False

    @property
    def header(self) -> np.ndarray | None:
        return None

    @property
    def cqes(self) -> np.ndarray | None:
        return None

    @property
    def items(self) -> np.ndarray | None:
        return None

    @property
    def index(self) -> np.ndarray | None:
        return None

    def fileno(self) -> int:
        raise NotImplementedError

    def live_fds(self) -> set[int]:
        return registered_fds(self.fileno())

    def forget(self, fd: int) -> None:
        """Nothing to drop: the kernel forgot the registration with the file."""

    def stats(self) -> dict[str, int]:
        return {}

    def corrupt_error(self) -> OSError:
        return OSError(errno.EBADMSG, os_error(-errno.EBADMSG).strerror)

    def shares_file(self, fd: int) -> bool:
        try:
            return same_epoll_file(self.fileno(), fd)
        except OSError:  # closed
            return False

    def after_fork_in_child(self) -> None:
        self.close()  # overridden wherever closing would touch the parent's resources

    def close(self) -> None:
        raise NotImplementedError


class EpfdBackend(BackendBase):
    """A backend whose registrations live on an epoll fd of its own (``self.epfd``)."""

    epfd = -1

    def fileno(self) -> int:
        if self.epfd < 0:
            raise closed_error()
        return self.epfd

    def ctl(self, op: int, fd: int, events: int, data: int) -> None:
        ret = lib.ue_sys_epoll_ctl(self.fileno(), op, fd, events, data)
        if ret < 0:
            raise os_error(ret)


class RingMemory:
    """A ring (header + items + index) in memory, and the C consumer attached to it.

    Shared by the ring backends and the :class:`uring_epoll.ring.Ring` study view; by itself
    it produces nothing and waits for nothing.
    """

    def __init__(self) -> None:
        self._header_map: Any = None
        self._index_map: Any = None
        self.consumer: Any = None
        self._memory: tuple[Any, ...] = ()
        self.protocol: int = abi.PROTOCOL_V5
        self.max_items: int = 0

    @property
    def memory(self) -> tuple[Any, ...]:
        """The consumer and everything it points into (see :attr:`Backend.memory`)."""
        if not self._memory:
            raise closed_error()
        return self._memory

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
        # The consumer stores head (and, protocol 3, zeroes index slots), atomically: the
        # memory must be writable and its words naturally aligned.
        header_ptr = writable_pointer(header_map, 8, "the ring header")
        index_ptr = writable_pointer(index_map, 4, "the index ring")
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
        self._memory = (consumer, header_map, index_map, header_ptr, index_ptr)
        self.protocol = protocol
        self.max_items = int(np.frombuffer(header_map, "<u4", count=4)[3])

    # Views for study: read-only, so a stray assignment cannot corrupt the live ring.
    @property
    def header(self) -> np.ndarray:
        view: np.ndarray = np.ndarray((), abi.HEADER_DTYPE, buffer=self._header_map)
        view.flags.writeable = False
        return view

    @property
    def items(self) -> np.ndarray:
        view: np.ndarray = np.ndarray(
            (self.max_items,), abi.ITEM_DTYPE, buffer=self._header_map, offset=abi.HEADER_SIZE
        )
        view.flags.writeable = False
        return view

    @property
    def index(self) -> np.ndarray:
        view: np.ndarray = np.ndarray(
            (len(self._index_map) // 4,), abi.INDEX_DTYPE, buffer=self._index_map
        )
        view.flags.writeable = False
        return view

    def stats(self) -> dict[str, int]:
        if self.consumer is None:
            raise closed_error()
        s = self.consumer.stats
        return {
            "ring_events": s.ring_events,
            "sleeps": s.sleeps,
            "estale": s.estale,
            "spins": s.spins,
            "spin_hits": s.spin_hits,
            "skipped": s.skipped,
            "slot_waits": s.slot_waits,
            "repolls": s.repolls,
        }

    def corrupt_error(self) -> OSError:
        """The OSError(EBADMSG) for the corrupt entry the consumer just stopped at."""
        c = self.consumer
        if c.bad_kind == 4:
            return OSError(
                errno.EBADMSG,
                f"EPOLL_USERPOLL ring and kernel disagree: the kernel ended "
                f"{lib.UE_ESTALE_STUCK} sleeps in a row with ESTALE (entries in the ring) "
                f"while the ring mapped here stayed empty (head = tail = {c.bad_position}): "
                "this mapping is not the memory the kernel fills",
            )
        if c.bad_kind == 3:
            what = (
                f"index entry at head {c.bad_position} (tail {c.bad_value}) was reserved "
                f"but never written for {lib.UE_V3_STUCK_NS / 1e9:g} s: the producer died "
                "between reserving and writing it, or tail was overwritten"
            )
        elif c.bad_kind == 2:
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
        self._memory = ()
        self._header_map = None
        self._index_map = None


class RingBackend(RingMemory, BackendBase):
    """A backend whose events come from a ring drained by the C consumer."""

    is_ring = True
    #: Every poll drains the ring; there is no select.epoll to hand a call to.
    poll_pairs: Callable[[Any, int], list[tuple[int, int]]] | None = None


def writable_pointer(buffer: Any, alignment: int, what: str) -> Any:
    """``ffi.from_buffer`` of memory C code writes into: writable, contiguous and aligned to
    *alignment* bytes. TypeError for read-only memory (as ``readinto`` says), ValueError for
    memory that is not one contiguous block or is misaligned."""
    try:
        pointer = ffi.from_buffer(buffer, require_writable=True)
    except BufferError:
        raise TypeError(
            f"{what} must be writable memory (bytearray, mmap, writable numpy array), "
            f"not read-only {type(buffer).__name__}"
        ) from None
    except TypeError:
        raise TypeError(
            f"{what} must support the buffer protocol, not {type(buffer).__name__}"
        ) from None
    except ValueError as exc:  # numpy: "ndarray is not C-contiguous"
        raise ValueError(f"{what} must be one C-contiguous block of memory ({exc})") from None
    if int(ffi.cast("uintptr_t", pointer)) % alignment:
        raise ValueError(f"{what} must be {alignment}-byte aligned")
    return pointer


def same_epoll_file(epfd: int, fd: int) -> bool:
    """True if *fd* refers to the open epoll file of *epfd* (the same number, or a dup).

    epoll files all share one anonymous inode, so fstat cannot tell them apart. The kernel
    can: EPOLL_CTL_DEL on *epfd* fails with EINVAL when the target is *epfd*'s own file, and
    with ENOENT (or EBADF, EPERM) for any other file not registered in it, and a failed DEL
    changes nothing. A file registered in *epfd* is never *epfd* itself, so those are not
    asked (a DEL would remove them).
    """
    if fd == epfd:
        return True
    if fd < 0 or fd in registered_fds(epfd):
        return False
    return int(lib.ue_sys_epoll_ctl(epfd, abi.EPOLL_CTL_DEL, fd, 0, 0)) == -errno.EINVAL


def registered_fds(epfd: int) -> set[int]:
    """The target fds of an epoll fd's registrations, from /proc/self/fdinfo (no side effect).

    The kernel removes a registration when its file is closed; this is the one way to see
    that from user space without touching the registration itself.
    """
    fds: set[int] = set()
    with open(f"/proc/self/fdinfo/{epfd}") as f:
        for line in f:
            if line.startswith("tfd:"):
                fds.add(int(line.split()[1]))
    return fds


#: Every ring mapping not inherited by a fork child whose mmap object is alive:
#: id -> (weak reference, address, length).
_ring_maps: dict[int, tuple[weakref.ref[mmap.mmap], int, int]] = {}


def track_ring_map(buffer: mmap.mmap) -> mmap.mmap:
    """Note *buffer*, a mapping a fork child does not inherit (VM_DONTCOPY, MADV_DONTFORK),
    so that the child holds its range (see :func:`_hold_ring_ranges`)."""
    pointer = ffi.from_buffer(buffer)
    address = int(ffi.cast("uintptr_t", pointer))
    ffi.release(pointer)  # no export left: close() stays possible
    key = id(buffer)
    _ring_maps[key] = (
        weakref.ref(buffer, lambda _: _ring_maps.pop(key, None)),
        address,
        len(buffer),
    )
    return buffer


def _hold_ring_ranges() -> None:
    """In a fork child: put inaccessible placeholders where the rings were.

    The ring mappings are not inherited, but their mmap objects are, kept alive by whatever
    still refers to them (a view of the ring, a closed epoll's views), and the last reference
    to go unmaps the range: by then the child may have mapped something else there, most
    likely its own ring (the parent's is the first free hole). A placeholder holds each range
    until its mmap object goes, and goes with it; nothing else is ever mapped there.
    """
    for ref, address, length in list(_ring_maps.values()):
        if ref() is not None:
            lib.ue_sys_reserve(address, length)


os.register_at_fork(after_in_child=_hold_ring_ranges)


def anonymous_shared(length: int) -> mmap.mmap:
    """Zeroed MAP_SHARED|MAP_ANONYMOUS memory, like the kernel's vmalloc'd ring buffers."""
    return mmap.mmap(-1, length, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
