"""The ``uring`` backend: epoll readiness from io_uring poll requests, no helper thread.

Each registration is a poll request on an io_uring of the object's own (``csrc/uring.c`` has
the details and the memory ordering): EPOLLET is a multishot poll, level-triggered and
EPOLLONESHOT registrations are single-shot polls, and a level-triggered one is queued again
after each delivery and submitted with the next poll's ``io_uring_enter`` (one enter for the
whole batch of re-arms; none at all for a ``poll(0)`` with nothing to re-arm and nothing held
back by a full CQ). MOD is a POLL_REMOVE of the old request and a POLL_ADD of the new; DEL a
POLL_REMOVE. The drain is one C call per batch into the same ``EVENT_DTYPE`` buffer as the
other backends, and an empty CQ sleeps in ``io_uring_enter(IORING_ENTER_GETEVENTS)`` with the
timeout passed through IORING_ENTER_EXT_ARG.

Semantics where they differ from the ring backends, or could surprise:

- Batches coalesce. A multishot poll posts one CQE per wake-up (N writes to an eventfd give N
  CQEs where epoll reports the file once), so the drain ORs the CQEs of one registration
  within one batch into a single event: a batch names each registration at most once, as
  ``epoll_wait`` does. ``stats.cqes`` counts the CQEs, ``stats.ring_events`` the events.
- Stale completions are never delivered: every request's user_data carries the generation
  of its registration, which MOD and DEL change; the user's ``data`` is kept in a table, so
  it is delivered exactly as given.
- A multishot poll that ends (the kernel ends one when it cannot post to a full CQ, and
  cancels the requests of a thread that exited when they next fire) is re-armed, and its
  arming poll reports whatever is ready by then (``stats.multishot_restarts``). The kernel
  must have IORING_FEAT_NODROP, so a CQE that finds the CQ full waits on the kernel's
  overflow list instead of being dropped; a drain that sees IORING_SQ_CQ_OVERFLOW enters to
  fetch it (``stats.overflows``).
- A poll request holds a reference to its file. Closing a registered fd without
  ``unregister()`` therefore does not end the registration as it does with epoll: the file
  stays open and its events are delivered until the object notices the fd no longer names
  that file (a register needing room, or a data clash, looks; so does ``unregister``).
  Unregister before closing.
- A completion's mask is the wake-up's key when the waker gives one (a unix socket's data
  wake-up says IN|PRI), as on the kernel ring, and a poll of the file when it gives none;
  ``epoll_wait`` polls the file at delivery. Only asked-for bits (and ERR, HUP) are reported.
- EPOLLEXCLUSIVE is refused (ValueError) as on the other ring backends: an exclusive wake-up
  means nothing with one poll request per registration.
- ``spin_us``: a poll that finds the CQ empty spins on it (no system call) that long before
  sleeping in ``io_uring_enter``, as the ring backends spin on their ring.
- ``fileno()`` is an epoll fd holding the io_uring fd alone: readable while completions wait
  in the CQ, and an epoll like ``select.epoll``'s (``fromfd`` of a dup shares the object).
- A fork child cannot use the parent's object (RuntimeError, as on the other ring backends):
  the ring mappings are not inherited (MADV_DONTFORK) and the child closes its copy of the
  ring fd without submitting anything.

Setup mode: the default (no COOP_TASKRUN, no DEFER_TASKRUN), chosen for being correct for
the whole ``select.epoll`` API first. A completion is posted by task_work on the thread that
submitted the request, which the waker interrupts (an IPI when it runs elsewhere), so the CQE
is in the ring by the time the waker's system call has returned, whoever polls, and a
``poll(0)`` sees it without a system call. DEFER_TASKRUN posts completions only inside
``io_uring_enter`` of the one thread SINGLE_ISSUER allows to submit: every ``poll(0)`` would
have to enter the kernel, and registering or re-arming from a second thread (which
``select.epoll`` allows, and the tests do) fails with EEXIST. COOP_TASKRUN does not interrupt
the submitter: its completions wait until it next enters the kernel, so a ``poll(0)`` misses
events whose write has returned. (A multishot poll that cannot post to a full CQ ends in every
mode on this kernel: ``test_uring_backend`` sees all 8 of its polls restarted.)

Measured on host, AMD EPYC 2 cores, Linux 6.18, with a C program over the raw system calls
(16 eventfds with multishot polls; 7 runs each): a producer thread writing 200,000 times
while the submitting thread drains costs 463-1412 ns per write (median 887) in the default
mode, 383-1076 (936) with COOP_TASKRUN and 634-1199 (932) with DEFER_TASKRUN|SINGLE_ISSUER:
no difference a poller on two busy cores could use. What differs is correctness: after a
write on another thread has returned, the CQE was already in the CQ, with no system call by
the poller, in 6999 of 7000 tries in the default mode (the last within 100 us), in 2094 of
7000 with COOP_TASKRUN (4862 needed an enter) and in none with DEFER_TASKRUN; a submission
from a second thread gave EEXIST with SINGLE_ISSUER only.
"""

from __future__ import annotations

import errno
import mmap
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import abi, probe
from .._native_lib import ffi, lib, os_error
from .base import BackendBase, closed_error, track_ring_map, writable_pointer

_PROT = mmap.PROT_READ | mmap.PROT_WRITE


def _map_ring(fd: int, length: int, offset: int) -> mmap.mmap:
    """Map one io_uring region, not inherited by a fork child: never a shared ring there."""
    region = mmap.mmap(fd, length, mmap.MAP_SHARED, _PROT, offset=offset)
    region.madvise(mmap.MADV_DONTFORK)
    return track_ring_map(region)


class UringBackend(BackendBase):
    """epoll readiness from io_uring poll requests, drained from the CQ by C."""

    name = "uring"
    is_ring = True
    rearms_level = True
    protocol = None
    poll_pairs: Callable[[Any, int], list[tuple[int, int]]] | None = None

    def __init__(self, *, max_items: int, protocol: int, spin_ns: int) -> None:
        if protocol != abi.PROTOCOL_V5:
            raise ValueError(
                f"the uring backend has no EPOLL_USERPOLL ring protocol to choose (got "
                f"protocol={protocol}); protocol 3 is available on the thread backend"
            )
        available, why = probe.uring_status()
        if not available:
            raise OSError(errno.ENOSYS, f"uring backend unavailable: {why}")
        info = ffi.new("struct ue_uring_info *")
        err = ffi.new("int *")
        uring = lib.ue_uring_new(max_items, info, err)
        if uring == ffi.NULL:
            raise os_error(err[0], "setting up the io_uring")
        self._uring: Any = uring
        self._memory: tuple[Any, ...] = ()
        try:
            fd = info.ring_fd
            sq_len, cq_len = info.sq_ring_size, info.cq_ring_size
            if info.features & abi.IORING_FEAT_SINGLE_MMAP:
                # One mapping holds both rings (and one mmap object is one fd fewer).
                sq_map = cq_map = _map_ring(fd, max(sq_len, cq_len), info.off_sq_ring)
            else:
                sq_map = _map_ring(fd, sq_len, info.off_sq_ring)
                cq_map = _map_ring(fd, cq_len, info.off_cq_ring)
            sqes_map = _map_ring(fd, info.sqes_size, info.off_sqes)
            sq_ptr = writable_pointer(sq_map, 8, "the SQ ring")
            cq_ptr = writable_pointer(cq_map, 8, "the CQ ring")
            sqes_ptr = writable_pointer(sqes_map, 8, "the SQEs")
            ret = lib.ue_uring_attach(
                uring, sq_ptr, len(sq_map), cq_ptr, len(cq_map), sqes_ptr, len(sqes_map)
            )
            if ret < 0:
                raise os_error(ret, "attaching the io_uring rings")
            consumer = ffi.new("struct ue_consumer *")
            ret = lib.ue_consumer_init_uring(consumer, uring, spin_ns)
            if ret < 0:
                raise os_error(ret)
        except BaseException:
            lib.ue_uring_free(uring)
            self._uring = None
            raise
        self._fd = int(fd)
        self._poll_fd = int(info.poll_fd)
        self.max_items = max_items
        self._cq_entries = info.cq_entries
        self._cqes_offset = info.cqes_offset
        self._cq_map = cq_map
        # Everything the C consumer points into: a poll in flight on another thread holds
        # this tuple, so close() dropping our references never unmaps memory under it.
        self._memory = (consumer, cq_map, sq_map, sqes_map, cq_ptr, sq_ptr, sqes_ptr)

    def _ring(self) -> Any:
        uring = self._uring
        if uring is None:
            raise closed_error()
        return uring

    @property
    def memory(self) -> tuple[Any, ...]:
        if not self._memory:
            raise closed_error()
        return self._memory

    @property
    def cqes(self) -> np.ndarray:
        """Read-only view of the CQ ring's CQEs (``abi.CQE_DTYPE``), indexed by position."""
        self._ring()
        view: np.ndarray = np.ndarray(
            (self._cq_entries,), abi.CQE_DTYPE, buffer=self._cq_map, offset=self._cqes_offset
        )
        view.flags.writeable = False
        return view

    def fileno(self) -> int:
        # An epoll fd of the ring's own holding the io_uring fd, as select.epoll's fileno()
        # is an epoll: readable while completions wait, and what fromfd recognises.
        self._ring()
        return self._poll_fd

    def ctl(self, op: int, fd: int, events: int, data: int) -> None:
        ret = lib.ue_uring_ctl(self._ring(), op, fd, events, data)
        if ret < 0:
            raise os_error(ret)

    def live_fds(self) -> set[int]:
        out = ffi.new("int32_t[]", self.max_items)
        n = lib.ue_uring_live_fds(self._ring(), out, self.max_items)
        return {int(out[i]) for i in range(n)}

    def forget(self, fd: int) -> None:
        if self._uring is not None:
            lib.ue_uring_forget(self._uring, fd)

    def stats(self) -> dict[str, int]:
        s = ffi.new("struct ue_uring_stats *")
        lib.ue_uring_stats(self._ring(), s)
        spun = self._memory[0].stats  # the consumer's spins on an empty CQ
        return {
            "spins": spun.spins,
            "spin_hits": spun.spin_hits,
            "ring_events": s.events,
            "cqes": s.cqes,
            "coalesced": s.coalesced,
            "stale": s.stale,
            "skipped": s.skipped,
            "rearms": s.rearms,
            "multishot_restarts": s.multishot_restarts,
            "overflows": s.overflows,
            "enters": s.enters,
            "sleeps": s.sleeps,
        }

    def corrupt_error(self) -> OSError:
        return OSError(
            errno.EBADMSG, "corrupt io_uring CQ: its tail is further ahead than the ring holds"
        )

    def close(self) -> None:
        uring = self._uring
        if uring is not None:
            consumer = self._memory[0]
            # Stop new polls and wake the sleeping ones (a NOP's completion), wait until no
            # thread is left inside the drain, and only then free the ring.
            lib.ue_consumer_close(consumer)
            lib.ue_consumer_quiesce(consumer)
            # The ring lives on while its mappings do (views): let go of the files now.
            lib.ue_uring_cancel_all(uring)
            lib.ue_uring_free(uring)
            self._uring = None
        self._memory = ()

    def after_fork_in_child(self) -> None:
        # The ring is the parent's: submit nothing, wake no one; the mappings were not
        # inherited (their ranges are held by base._hold_ring_ranges). Closing the child's
        # copies of the fds leaves the parent's ring alone.
        uring = self._uring
        self._uring = None
        self._memory = ()
        if uring is not None:
            lib.ue_uring_free(uring)
