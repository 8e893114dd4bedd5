"""The ``thread`` backend: the RFC's ring on any kernel.

The ring lives in anonymous shared memory laid out exactly as the kernel lays it out. A C
poller thread (no GIL) waits on an ordinary epoll fd holding every registration
edge-triggered, and publishes each event with the kernel's producer algorithm (see
``csrc/emu.c``). The consumer is the same C code as on the kernel backend; when the ring is
empty it sleeps on a futex on ``tail`` and "ESTALE" is emulated, so the consumer loop is the
kernel one.
"""

from __future__ import annotations

import errno
from typing import Any

from .. import abi
from .._native_lib import ffi, lib, os_error
from .base import RingBackend, anonymous_shared, closed_error, registered_fds


class ThreadBackend(RingBackend):
    """EPOLL_USERPOLL emulated in userspace by a C poller thread."""

    name = "thread"

    def __init__(self, *, max_items: int, protocol: int, spin_ns: int) -> None:
        super().__init__()
        header_map = anonymous_shared(abi.header_length(max_items))
        index_map = anonymous_shared(abi.index_length(max_items))
        header_ptr = ffi.from_buffer(header_map)
        index_ptr = ffi.from_buffer(index_map)
        err = ffi.new("int *")
        emu = lib.ue_emu_new(
            header_ptr, len(header_map), index_ptr, len(index_map), max_items, protocol, err
        )
        if emu == ffi.NULL:
            raise os_error(err[0], "creating the userspace producer")
        # From here on the C producer holds pointers into the maps: free it before them.
        self.emu: Any = emu
        try:
            self._attach(header_map, index_map, protocol, lib.UE_WAIT_FUTEX, -1, emu, spin_ns)
            ret = lib.ue_emu_start(emu)
            if ret < 0:
                raise os_error(ret, "starting the poller thread")
        except BaseException:
            lib.ue_emu_free(emu)
            self.emu = None
            raise

    def _emu(self) -> Any:
        """The C producer; OSError(EBADF) once closed (finalizers may run in any order)."""
        emu = self.emu
        if emu is None:
            raise closed_error()
        return emu

    def fileno(self) -> int:
        # An epoll of the producer's own, readable while the ring holds entries not yet
        # taken or the poller has events still to harvest, as a nested poll of a kernel
        # userpoll epfd reports "ring non-empty" (the protocol is at the top of emu.c). Being
        # an epoll file, it is what fromfd's identity check (shares_file) asks about.
        return int(lib.ue_emu_poll_fd(self._emu()))

    def live_fds(self) -> set[int]:
        # The registrations live in the inner epoll, not in the one fileno() returns.
        return registered_fds(int(lib.ue_emu_inner_fd(self._emu())))

    def ctl(self, op: int, fd: int, events: int, data: int) -> None:
        emu = self._emu()
        ret = lib.ue_emu_ctl(emu, op, fd, events, data)
        if ret < 0:
            raise os_error(ret)
        err = lib.ue_emu_thread_error(emu)
        if err:
            raise OSError(err, f"the poller thread stopped: {errno.errorcode.get(err, err)}")

    def forget(self, fd: int) -> None:
        # The producer's table still maps fd to a slot; free it as the kernel would have.
        if self.emu is not None:
            lib.ue_emu_forget(self.emu, fd)

    def inject(self, fd: int, events: int) -> None:
        """Publish *events* for *fd* as the poller would on a wake-up (tests, benchmarks)."""
        ret = lib.ue_emu_inject(self._emu(), fd, events)
        if ret < 0:
            raise os_error(ret)

    def sync(self) -> None:
        """Publish, from this thread, everything the poller thread has not published yet.

        The kernel publishes inside the waker's system call; the emulator's poller thread a few
        microseconds later. ``poll(0)`` already does this when the ring looks empty; call it
        to make a batch complete (tests that compare batches with ``select.epoll`` do).
        """
        ret = lib.ue_emu_sync(self._emu())
        if ret < 0:
            raise os_error(ret)

    def close(self) -> None:
        if self.emu is not None:
            # Stop new polls, join the poller thread, wait for polls still running on other
            # threads to leave, and only then free the producer.
            lib.ue_consumer_close(self.consumer)
            lib.ue_emu_stop(self.emu)
            lib.ue_consumer_quiesce(self.consumer)
            lib.ue_emu_free(self.emu)
            self.emu = None
        self._release_maps()

    def after_fork_in_child(self) -> None:
        # The poller thread does not exist here, and its stop eventfd is shared with the
        # parent: never signal it, never free what the parent's thread may still use.
        self.emu = None
        self._release_maps()
