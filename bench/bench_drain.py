"""pytest-benchmark: the cost of taking ready events, ring against select.epoll.

Run with ``pytest bench --benchmark-enable``; the normal test run executes each once
(``--benchmark-disable``) so the suites cannot rot. Compare the groups' figures as ratios
within one run; ``uring-epoll bench`` prints those ratios directly.
"""

from __future__ import annotations

import os
import select
from collections.abc import Iterator

import numpy as np
import pytest

import uring_epoll
from uring_epoll import testing
from uring_epoll.benchmarks.common import eventfds as open_eventfds

BATCHES = [1, 16, 256, 1024]


@pytest.fixture(scope="module")
def eventfds() -> Iterator[list[int]]:
    # Raises RLIMIT_NOFILE as needed: 1024 eventfds do not fit a default soft limit of 1024
    # (User-Mode Linux's).
    with open_eventfds(max(BATCHES)) as fds:
        yield fds


@pytest.fixture(scope="module")
def ring(eventfds: list[int]) -> Iterator[uring_epoll.epoll]:
    ep = uring_epoll.epoll(backend="thread", max_items=len(eventfds))
    for fd in eventfds:
        ep.register(fd, select.EPOLLIN | select.EPOLLET)
    yield ep
    ep.close()


def _refill(ep: uring_epoll.epoll, fds: list[int]) -> None:
    for fd in fds:
        testing.inject(ep, fd, select.EPOLLIN)


@pytest.mark.parametrize("batch", BATCHES)
def test_ring_poll_into(benchmark, ring, eventfds, batch: int) -> None:
    benchmark.group = f"drain {batch}"
    buffer = np.zeros(batch, uring_epoll.EVENT_DTYPE)
    ready = eventfds[:batch]

    def setup() -> tuple[tuple, dict]:
        _refill(ring, ready)
        return (buffer, 0), {}

    got = benchmark.pedantic(ring.poll_into, setup=setup, rounds=200)
    assert got == batch


@pytest.mark.parametrize("batch", BATCHES)
def test_ring_poll_tuples(benchmark, ring, eventfds, batch: int) -> None:
    benchmark.group = f"drain {batch}"
    ready = eventfds[:batch]

    def setup() -> tuple[tuple, dict]:
        _refill(ring, ready)
        return (0, batch), {}

    got = benchmark.pedantic(ring.poll, setup=setup, rounds=200)
    assert sorted(fd for fd, _ in got) == sorted(ready)


@pytest.mark.parametrize("batch", BATCHES)
def test_select_epoll_poll(benchmark, eventfds, batch: int) -> None:
    benchmark.group = f"drain {batch}"
    ep = select.epoll()
    ready = eventfds[:batch]
    try:
        for fd in ready:
            os.eventfd_write(fd, 1)
            ep.register(fd, select.EPOLLIN)  # level-triggered: ready on every call
        got = benchmark(ep.poll, 0, batch)
        assert len(got) == batch
    finally:
        ep.close()
        for fd in ready:
            os.eventfd_read(fd)
