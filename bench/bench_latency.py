"""pytest-benchmark: wake-up latency, one ping round trip per call.

A C thread writes its CLOCK_MONOTONIC time into an eventfd, waits for our ack and a ~20 us
gap, and pings again. Each benchmark call is one round trip: poll until the ping arrives, take
the time, read t0 from the eventfd, ack. The time pytest-benchmark reports is therefore the
producer's pacing plus the wake-ups; the one-way figure (write to poll returned) is kept per
call and its median and p99 are put in ``extra_info``.
``uring-epoll bench`` reports the one-way percentiles directly (scenario ``latency``).

Run with ``pytest bench --benchmark-enable``; the normal test run executes each once
(``--benchmark-disable``) so the suites cannot rot.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest

import uring_epoll
from uring_epoll import probe
from uring_epoll.benchmarks.latency import POLL_TIMEOUT, pinger, stdlib_waiter

GAP_NS = 20_000
SPIN_US = 100.0
ROUNDS = 2000
#: As in tests/backends.py: with the kernel backend required, a missing kernel fails here too.
REQUIRE_KERNEL = os.environ.get("URING_EPOLL_REQUIRE_KERNEL", "") not in ("", "0")
RINGS = [b for b in probe.available_backends() if b != "epoll"]
if REQUIRE_KERNEL and "kernel" not in RINGS:
    RINGS.insert(0, "kernel")
MODES = ["sleep", "spin"]


@pytest.fixture
def fd() -> Iterator[int]:
    """The pinged eventfd."""
    fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    yield fd
    os.close(fd)


def _run(benchmark, fd: int, wait: Callable[[], tuple[int, int, int, int]]) -> None:
    """Benchmark round trips where *wait* returns (time.monotonic_ns() as soon as its poll
    returned, events taken, fd and event mask of the first); then check every round trip got
    exactly the ping it was waiting for, in time."""
    read = os.eventfd_read
    seen: list[tuple[int, int, int, int]] = []
    # Unbounded count: the thread pings until the block ends, however many rounds ran.
    with pinger(fd, 2**62, GAP_NS) as (ack, sent):

        def round_trip() -> None:
            t1, n, got_fd, events = wait()
            if n != 1:
                raise AssertionError(f"no ping within {POLL_TIMEOUT} s ({n} events)")
            seen.append((n, got_fd, events, t1 - read(fd)))
            ack()

        benchmark.pedantic(round_trip, rounds=ROUNDS, warmup_rounds=10)
    assert seen and sent[0] >= len(seen)
    latencies = np.array([s[3] for s in seen], dtype=np.int64)
    assert all(n == 1 and got_fd == fd for n, got_fd, _, _ in seen)
    assert all(events & select.EPOLLIN for _, _, events, _ in seen)
    # Same clock at both ends: a sample outside (0, timeout) would mean a mispaired ping.
    assert latencies.min() > 0
    assert latencies.max() < POLL_TIMEOUT * 1e9
    benchmark.extra_info["latency_p50_ns"] = float(np.percentile(latencies, 50))
    benchmark.extra_info["latency_p99_ns"] = float(np.percentile(latencies, 99))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", RINGS)
def test_ring_wakeup(benchmark, fd: int, backend: str, mode: str) -> None:
    benchmark.group = f"wake-up {mode}"
    spin_us = SPIN_US if mode == "spin" else 0.0
    with uring_epoll.epoll(backend=backend, max_items=4, spin_us=spin_us) as ep:
        ep.register(fd, select.EPOLLIN | select.EPOLLET)
        buffer = np.zeros(4, uring_epoll.EVENT_DTYPE)
        poll_into = ep.poll_into

        now = time.monotonic_ns

        def wait() -> tuple[int, int, int, int]:
            n = poll_into(buffer, POLL_TIMEOUT)
            t1 = now()
            return t1, n, int(buffer[0]["data"]), int(buffer[0]["events"])

        _run(benchmark, fd, wait)


@pytest.mark.parametrize("mode", MODES)
def test_select_epoll_wakeup(benchmark, fd: int, mode: str) -> None:
    benchmark.group = f"wake-up {mode}"
    spin_ns = int(SPIN_US * 1000) if mode == "spin" else 0
    now = time.monotonic_ns
    with select.epoll() as ep:
        ep.register(fd, select.EPOLLIN | select.EPOLLET)
        take = stdlib_waiter(ep, spin_ns)

        def wait() -> tuple[int, int, int, int]:
            got = take()
            t1 = now()
            return (t1, len(got), *got[0]) if got else (t1, 0, -1, 0)

        _run(benchmark, fd, wait)
