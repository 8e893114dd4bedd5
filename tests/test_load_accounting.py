"""No lost or duplicated event under load: C producer threads, thousands of eventfds, millions
of writes, every write accounted for by the consumer."""

from __future__ import annotations

import resource
import select
import time

import numpy as np
import pytest
from backend_params import LOAD_SCALE, all_backends

import uring_epoll
from uring_epoll._native_lib import ffi, lib, os_error

NFDS = 2000
THREADS = 3
WRITES_PER_THREAD = 700_000 // LOAD_SCALE


def _raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        if hard < need:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


@all_backends
def test_every_write_is_accounted_for(backend: str) -> None:
    import os

    _raise_nofile(NFDS + 256)
    fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(NFDS)]
    fd_array = np.array(fds, dtype=np.int32)
    ep = uring_epoll.epoll(backend=backend, max_items=NFDS)
    buffer = np.zeros(512, uring_epoll.EVENT_DTYPE)
    buffer_ptr = ffi.from_buffer(buffer)
    total = ffi.new("uint64_t *")
    try:
        for fd in fds:
            ep.register(fd, select.EPOLLIN | select.EPOLLET)
        err = ffi.new("int *")
        group = lib.ue_producers_start(
            ffi.cast("int *", ffi.from_buffer(fd_array)), NFDS, THREADS, WRITES_PER_THREAD, 1,
            0, err,
        )
        if group == ffi.NULL:
            raise os_error(err[0], "starting producers")
        written = ffi.new("uint64_t *")
        joined = False
        try:
            # Consume while they write: every delivered eventfd is read (its counter summed).
            deadline = time.monotonic() + 120
            while total[0] < THREADS * WRITES_PER_THREAD and time.monotonic() < deadline:
                n = ep.poll_into(buffer, 0.05)
                if n and lib.ue_eventfd_consume(buffer_ptr, n, total) < 0:
                    pytest.fail("reading a delivered eventfd failed")
        finally:
            ret = lib.ue_producers_join(group, written)
            joined = True
        assert joined and ret == 0
        assert written[0] == THREADS * WRITES_PER_THREAD
        # Anything still pending after the producers stopped must still come out.
        deadline = time.monotonic() + 10
        while total[0] < written[0] and time.monotonic() < deadline:
            n = ep.poll_into(buffer, 0.05)
            lib.ue_eventfd_consume(buffer_ptr, n, total)
        assert total[0] == written[0]  # nothing lost, nothing counted twice
        assert ep.poll(0) == []
        for fd in fds:
            with pytest.raises(BlockingIOError):
                os.eventfd_read(fd)
    finally:
        ep.close()
        for fd in fds:
            os.close(fd)
