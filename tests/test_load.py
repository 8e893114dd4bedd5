"""No lost and no duplicated event under load, on every backend.

Several C producer threads (no GIL) write 1 to thousands of non-blocking eventfds registered
edge-triggered, millions of writes in all, while the consumer drains with ``poll_into`` and
reads every delivered eventfd from C (``ue_eventfd_consume`` sums the counters). After the
producers are joined the consumer drains until the sum reaches the number of writes: the sum
must equal it exactly, nothing may be left readable, and a final ``poll(0)`` must be empty.
On the ring backends a few stale entries may still be pending when the sum is complete (a
read took the count of a write whose new entry was appended after the batch that named the
fd; the ring accumulates where epoll_wait re-polls): they are drained first, and must carry
no count (at most one per registration).

"Duplicated" is checked per batch: one drain can hold each registration at most once (a slot
has at most one ring entry pending, and epoll_wait reports each fd once). An eventfd read that
finds nothing (EAGAIN) is legitimate: a read can take the counts of writes whose events are
still on their way.

Inside User-Mode Linux every system call costs ~60x more, so the sizes are divided by
``LOAD_SCALE`` there; the assertions are the same.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Iterator

import numpy as np
import pytest
from backends import ALL, scaled
from fd_limits import raised_nofile

import uring_epoll
from uring_epoll._bench_lib import ffi, lib
from uring_epoll._native_lib import os_error

NFDS = 2000  # registering them is cheap even in UML; the writes are what scale
THREADS = 4
WRITES_PER_THREAD = scaled(500_000, minimum=5_000)
DEADLINE_S = 120


@pytest.fixture
def nofile() -> Iterator[None]:
    """RLIMIT_NOFILE raised for the eventfds of the test."""
    with raised_nofile(NFDS + 256):
        yield


@pytest.fixture
def eventfds(nofile) -> list[int]:
    fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(NFDS)]
    yield fds
    for fd in fds:
        os.close(fd)


class Consumer:
    def __init__(self, ep: uring_epoll.epoll, batch: int = 1024) -> None:
        self.ep = ep
        self.buffer = np.zeros(batch, uring_epoll.EVENT_DTYPE)
        self.buffer_ptr = ffi.from_buffer(self.buffer)
        self.sum = ffi.new("uint64_t *")
        self.events = 0
        self.batches = 0

    def step(self, timeout: float) -> int:
        n = self.ep.poll_into(self.buffer, timeout)
        if n:
            data = self.buffer["data"][:n]
            assert len(np.unique(data)) == n, "an fd appeared twice in one batch"
            assert (self.buffer["events"][:n] == select.EPOLLIN).all()
            got = lib.ue_eventfd_consume(self.buffer_ptr, n, self.sum)
            if got < 0:
                raise os_error(got, "reading a delivered eventfd")
            self.events += n
            self.batches += 1
        return n


def settle(consumer: Consumer, written: int, nfds: int, ring: bool) -> None:
    """Drain what is left once every write is accounted for: stale entries only."""
    stale = 0
    while n := consumer.step(0):
        stale += n
        assert stale <= nfds, "more leftover events than registrations"
    assert consumer.sum[0] == written, "a leftover event carried a count: it was counted late"
    if not ring:
        assert stale == 0  # epoll_wait re-polls each file when it delivers


#: Every backend, plus the thread backend speaking protocol 3 (its consumer waits for
#: reserved-but-unwritten index slots, which only contention exercises).
VARIANTS = [*ALL, "thread-p3"] if "thread" in ALL else list(ALL)


def open_epoll(variant: str, max_items: int) -> uring_epoll.epoll:
    name, _, protocol = variant.partition("-p")
    return uring_epoll.epoll(backend=name, max_items=max_items, protocol=int(protocol or 5))


#: The largest ring on the EPOLL_USERPOLL backends; uring's SQ and CQ stop growing at 4096
#: and 8192 entries long before that, so its 65536 run would repeat the NFDS one.
SIZES = [
    (backend, max_items)
    for backend in VARIANTS
    for max_items in (NFDS, 65536)
    if not (backend == "uring" and max_items == 65536)
]


@pytest.mark.parametrize(("backend", "max_items"), SIZES)
def test_every_write_is_accounted_for(backend: str, eventfds: list[int], max_items) -> None:
    expected = THREADS * WRITES_PER_THREAD
    fd_array = np.array(eventfds, dtype=np.int32)
    with open_epoll(backend, max_items) as ep:
        for fd in eventfds:
            ep.register(fd, select.EPOLLIN | select.EPOLLET)
        consumer = Consumer(ep)
        err = ffi.new("int *")
        group = lib.ue_producers_start(
            ffi.cast("int *", ffi.from_buffer(fd_array)),
            len(eventfds),
            THREADS,
            WRITES_PER_THREAD,
            1,
            0,
            err,
        )
        if group == ffi.NULL:
            raise os_error(err[0], "starting the producer threads")
        written = ffi.new("uint64_t *")
        deadline = time.monotonic() + DEADLINE_S
        try:
            # Consume while they write.
            while consumer.sum[0] < expected and time.monotonic() < deadline:
                consumer.step(0.05)
        finally:
            if consumer.sum[0] < expected:
                lib.ue_producers_stop(group)  # never leave threads behind on a failure
            ret = lib.ue_producers_join(group, written)
        assert ret == 0, os.strerror(-ret)
        assert written[0] == expected
        # What is still pending after the producers stopped must still come out.
        deadline = time.monotonic() + 10
        while consumer.sum[0] < written[0] and time.monotonic() < deadline:
            consumer.step(0.05)
        assert consumer.sum[0] == written[0], (
            f"{backend}: read {consumer.sum[0]} of {written[0]} writes "
            f"({written[0] - consumer.sum[0]} lost) in {consumer.events} events"
        )
        # Entries still in the ring now are stale: their counts were taken by a read that
        # followed a later write (the ring accumulates, and io_uring posted a CQE per wake-up;
        # epoll_wait would re-poll and drop them). They must carry nothing, and there is at
        # most one per registration.
        settle(consumer, written[0], len(eventfds), ring=ep.backend != "epoll")
        assert ep.poll(0) == []
        assert ep.poll_into(consumer.buffer, 0) == 0
        for fd in eventfds:
            with pytest.raises(BlockingIOError):
                os.eventfd_read(fd)
        # Every event was one ring entry handed out (or skipped) on the ring backends.
        if ep.header is not None:
            stats = ep.stats
            assert stats.ring_events == consumer.events
            assert int(ep.header["head"]) == int(ep.header["tail"])
        # And the ring keeps working afterwards.
        os.eventfd_write(eventfds[7], 3)
        assert ep.poll(2) == [(eventfds[7], select.EPOLLIN)]
        assert os.eventfd_read(eventfds[7]) == 3


@pytest.mark.parametrize("backend", VARIANTS)
def test_producers_on_few_fds_with_blocking_polls(backend: str, nofile) -> None:
    """Four threads hammering 4 eventfds: heavy coalescing, the consumer sleeping in between."""
    fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(4)]
    try:
        fd_array = np.array(fds, dtype=np.int32)
        per_thread = scaled(200_000, minimum=2_000)
        with open_epoll(backend, 4) as ep:
            for fd in fds:
                ep.register(fd, select.EPOLLIN | select.EPOLLET)
            consumer = Consumer(ep, batch=2)  # smaller than the number of fds
            err = ffi.new("int *")
            group = lib.ue_producers_start(
                ffi.cast("int *", ffi.from_buffer(fd_array)), 4, 4, per_thread, 1, 0, err
            )
            if group == ffi.NULL:
                raise os_error(err[0], "starting the producer threads")
            written = ffi.new("uint64_t *")
            deadline = time.monotonic() + DEADLINE_S
            try:
                while consumer.sum[0] < 4 * per_thread and time.monotonic() < deadline:
                    consumer.step(None if consumer.sum[0] < per_thread else 0.05)
            finally:
                lib.ue_producers_stop(group)
                ret = lib.ue_producers_join(group, written)
            assert ret == 0
            deadline = time.monotonic() + 10
            while consumer.sum[0] < written[0] and time.monotonic() < deadline:
                consumer.step(0.05)
            assert consumer.sum[0] == written[0] == 4 * per_thread
            settle(consumer, written[0], len(fds), ring=ep.backend != "epoll")
            assert ep.poll(0) == []
    finally:
        for fd in fds:
            os.close(fd)
