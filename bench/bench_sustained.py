"""pytest-benchmark: sustained consumption, C producer threads feeding a Python consumer.

One round = take EVENTS events, with one C thread writing 64 edge-triggered eventfds as fast
as it can throughout. The consumer thread's CPU time per event is recorded as ``extra_info``
(wall time alone hides what the ring is for: a consumer that sleeps less). The protocol
suite is the same loop on the emulator with a spinning consumer, protocol 5 against 3.

Run with ``pytest bench --benchmark-enable``; the normal test run executes each once.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

import uring_epoll
from uring_epoll import abi
from uring_epoll.benchmarks.common import c_producers, eventfds
from uring_epoll.benchmarks.sustained import consumer

EVENTS = 20000
RINGS = [name for name in uring_epoll.available_backends() if name != "epoll"]


def consume(poll_batch: Callable[[], int], events: int, cpu: list[float]) -> int:
    """Take at least *events* events; append the consumer's CPU ns/event to *cpu*."""
    got = 0
    cpu0 = time.thread_time_ns()
    deadline = time.monotonic() + 30
    while got < events:
        got += poll_batch()
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {got} of {events} events in 30 s")
    cpu.append((time.thread_time_ns() - cpu0) / got)
    return got


def run_rounds(benchmark, backend: str, spin_us: float = 0.0,
               protocol: int = abi.PROTOCOL_V5) -> None:
    cpu: list[float] = []
    with eventfds(64) as fds, consumer(backend, fds, spin_us, protocol) as poll_batch, \
            c_producers(fds, 1) as written:
        got = benchmark.pedantic(consume, args=(poll_batch, EVENTS, cpu), rounds=5)
    # Edge-triggered eventfds coalesce writes, never invent events.
    assert EVENTS <= got <= written[0]
    benchmark.extra_info["consumer_cpu_ns_per_event"] = min(cpu)
    assert all(value > 0 for value in cpu)


@pytest.mark.parametrize("backend", ["stdlib", *RINGS])
def test_sustained(benchmark, backend: str) -> None:
    benchmark.group = f"sustained: {EVENTS} events, 1 C producer"
    run_rounds(benchmark, backend)


@pytest.mark.parametrize("protocol", abi.PROTOCOLS)
def test_protocol_spinning_consumer(benchmark, protocol: int) -> None:
    benchmark.group = f"protocol: {EVENTS} events, thread backend, consumer spins 50 us"
    run_rounds(benchmark, "thread", spin_us=50.0, protocol=protocol)
