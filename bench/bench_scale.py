"""pytest-benchmark: a fixed number of ready events among more and more registered fds.

The ring's ``poll_into`` against ``select.epoll.poll`` with READY eventfds ready among N
registered: both should cost the same whatever N, since neither walks the registrations. The
ready fds are spread over the registered set. Sizes that do not fit in RLIMIT_NOFILE are
skipped with the limit as reason. The kernel backend is included where the running kernel has
the RFC (inside User-Mode Linux). ``uring-epoll bench`` prints the same comparison as ratios,
with the memory each epfd takes.

Run with ``pytest bench --benchmark-enable``; the normal test run executes each once
(``--benchmark-disable``) so the suite cannot rot.
"""

from __future__ import annotations

import os
import resource
import select
from collections.abc import Iterator
from contextlib import suppress

import numpy as np
import pytest

import uring_epoll
from uring_epoll import probe
from uring_epoll.benchmarks.common import eventfds as open_eventfds
from uring_epoll.benchmarks.common import raise_nofile
from uring_epoll.benchmarks.drain import refill
from uring_epoll.benchmarks.scale import spread

SIZES = [1, 256, 4096]
READY = 16
BACKENDS = [b for b in ("thread", "kernel") if b in probe.available_backends()]
#: what the suite needs beside the eventfds (epoll fds, pytest's own)
HEADROOM = 256


@pytest.fixture(scope="module")
def eventfds() -> Iterator[list[int]]:
    """As many eventfds as the largest size that RLIMIT_NOFILE lets us open."""
    soft, _ = raise_nofile(max(SIZES) + HEADROOM)
    count = max(SIZES)
    if soft != resource.RLIM_INFINITY:
        count = min(count, max(0, soft - HEADROOM))
    with open_eventfds(count) as fds:
        yield fds


def _registered(eventfds: list[int], n: int) -> list[int]:
    if n > len(eventfds):
        _, hard = raise_nofile(0)
        pytest.skip(f"{n} eventfds do not fit in RLIMIT_NOFILE (hard limit {hard})")
    return eventfds[:n]


def _unready(fds: list[int]) -> None:
    for fd in fds:
        with suppress(BlockingIOError):
            os.eventfd_read(fd)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_ring_poll_into(benchmark, eventfds, backend: str, n: int) -> None:
    benchmark.group = f"scale {n} registered"
    fds = _registered(eventfds, n)
    ready = spread(fds, READY)
    buffer = np.zeros(len(ready), uring_epoll.EVENT_DTYPE)
    ep = uring_epoll.epoll(backend=backend, max_items=n)
    try:
        for fd in fds:
            ep.register(fd, select.EPOLLIN | select.EPOLLET)

        def setup() -> tuple[tuple, dict]:
            refill(ep, ready)  # inject (thread) or write the eventfds (kernel)
            return (buffer, 0), {}

        got = benchmark.pedantic(ep.poll_into, setup=setup, rounds=200)
        assert got == len(ready)
        assert sorted(int(d) for d in buffer["data"]) == sorted(ready)
        assert ep.poll_into(buffer, 0) == 0
    finally:
        ep.close()
        _unready(ready)  # the kernel backend refills by writing them


@pytest.mark.parametrize("n", SIZES)
def test_select_epoll_poll(benchmark, eventfds, n: int) -> None:
    benchmark.group = f"scale {n} registered"
    fds = _registered(eventfds, n)
    ready = spread(fds, READY)
    ep = select.epoll()
    try:
        for fd in fds:
            ep.register(fd, select.EPOLLIN)  # level-triggered: the ready ones stay ready
        for fd in ready:
            os.eventfd_write(fd, 1)
        got = benchmark(ep.poll, 0, len(ready))
        assert sorted(fd for fd, _ in got) == sorted(ready)
    finally:
        ep.close()
        _unready(ready)
