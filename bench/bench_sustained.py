"""pytest-benchmark: sustained consumption, C producer threads feeding a Python consumer.

One round = take EVENTS events, with one C thread writing 64 edge-triggered eventfds as fast
as it can throughout. The consumer thread's CPU time per event is recorded as ``extra_info``
(wall time alone hides what the ring is for: a consumer that sleeps less). The protocol
suites are the same loop on the emulator with a spinning consumer, protocol 5 against 3:
end to end (eventfds, the emulator's poller), and the ring alone (C threads publishing
straight into it).

Run with ``pytest bench --benchmark-enable``; the normal test run executes each once.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

import uring_epoll
from uring_epoll import abi, testing
from uring_epoll.benchmarks.common import c_injectors, c_producers, eventfds
from uring_epoll.benchmarks.sustained import consumer

EVENTS = 20000
RINGS = [name for name in uring_epoll.available_backends() if name != "epoll"]


def consume(poll_batch: Callable[[], int], events: int, runs: list[tuple[int, float]]) -> int:
    """Take at least *events* events; append (events taken, consumer CPU ns/event) to *runs*."""
    got = 0
    cpu0 = time.thread_time_ns()
    deadline = time.monotonic() + 30
    while got < events:
        got += poll_batch()
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {got} of {events} events in 30 s")
    runs.append((got, (time.thread_time_ns() - cpu0) / got))
    return got


def run_rounds(
    benchmark, backend: str, spin_us: float = 0.0, protocol: int = abi.PROTOCOL_V5
) -> None:
    runs: list[tuple[int, float]] = []
    with (
        eventfds(64) as fds,
        consumer(backend, fds, spin_us, protocol) as (poll_batch, _),
        c_producers(fds, 1) as written,
    ):
        benchmark.pedantic(consume, args=(poll_batch, EVENTS, runs), rounds=5)
    # Edge-triggered eventfds coalesce writes, never invent events.
    assert all(got >= EVENTS for got, _ in runs)
    assert sum(got for got, _ in runs) <= written[0]
    assert all(cpu > 0 for _, cpu in runs)
    benchmark.extra_info["consumer_cpu_ns_per_event"] = min(cpu for _, cpu in runs)


@pytest.mark.parametrize("backend", ["stdlib", *RINGS])
def test_sustained(benchmark, backend: str) -> None:
    benchmark.group = f"sustained: {EVENTS} events, 1 C producer"
    run_rounds(benchmark, backend)


@pytest.mark.parametrize("protocol", abi.PROTOCOLS)
def test_protocol_spinning_consumer(benchmark, protocol: int) -> None:
    benchmark.group = f"protocol: {EVENTS} events, thread backend, consumer spins 50 us"
    run_rounds(benchmark, "thread", spin_us=50.0, protocol=protocol)


@pytest.mark.parametrize("protocol", abi.PROTOCOLS)
def test_protocol_ring_only(benchmark, protocol: int) -> None:
    benchmark.group = f"protocol, ring only: {EVENTS} events, consumer spins 50 us"
    runs: list[tuple[int, float]] = []
    with eventfds(64) as fds, consumer("thread", fds, 50.0, protocol) as (poll_batch, ep):
        with c_injectors(testing.emulator(ep), fds, 1) as published:
            benchmark.pedantic(consume, args=(poll_batch, EVENTS, runs), rounds=5)
        taken = sum(got for got, _ in runs)
        # One entry per publish that found the item idle: never more events than publishes,
        # and every event the ring handed out was counted by the loop.
        assert taken <= published[0]
        assert ep.stats.ring_events == taken
    assert all(got >= EVENTS for got, _ in runs)
    benchmark.extra_info["consumer_cpu_ns_per_event"] = min(cpu for _, cpu in runs)
