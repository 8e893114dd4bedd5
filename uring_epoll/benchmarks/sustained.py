"""Sustained throughput: C producer threads feeding a Python consumer loop, events/s and
the consumer thread's CPU time per event, for every ring backend against ``select.epoll``.
"""

from __future__ import annotations

import select
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from .. import abi
from .._epoll import epoll
from .common import (
    Comparison,
    Progress,
    Throughput,
    c_producers,
    consume_for,
    event_sources,
    summary,
)

# Edge-triggered eventfds coalesce: several writes before a drain make one event, on either
# side. The rate reported is events taken by the consumer; the CPU figure is the consumer
# thread's own CPU time (time.thread_time) per event, which is what the ring is meant to cut.
# The default spin is 0: on two cores a spinning consumer starves the emulator's poller.
# ---------------------------------------------------------------------------------------------


@contextmanager
def consumer(
    backend: str,
    fds: list[int],
    spin_us: float = 0.0,
    protocol: int = abi.PROTOCOL_V5,
) -> Iterator[tuple[Callable[[], int], Any]]:
    """``(take_batch, ep)``: *fds* registered edge-triggered on *backend* ('stdlib' is
    select.epoll) and a function taking one batch of events from it (up to 1024, waiting at
    most 50 ms); the epoll is closed afterwards."""
    if backend == "stdlib":
        ep: Any = select.epoll()
        for fd in fds:
            ep.register(fd, select.EPOLLIN | select.EPOLLET)
        poll = ep.poll

        def poll_batch() -> int:
            return len(poll(0.05, 1024))
    else:
        ep = epoll(backend=backend, max_items=max(len(fds), 1), spin_us=spin_us, protocol=protocol)
        for fd in fds:
            ep.register(fd, select.EPOLLIN | select.EPOLLET)
        buffer = np.zeros(1024, abi.EVENT_DTYPE)
        poll_into = ep.poll_into

        def poll_batch() -> int:
            return int(poll_into(buffer, 0.05))

    try:
        yield poll_batch, ep
    finally:
        ep.close()


def sustained_one(
    backend: str,
    nfds: int,
    threads: int,
    seconds: float,
    progress: Progress,
    spin_us: float,
    source: str = "eventfd",
    protocol: int = abi.PROTOCOL_V5,
) -> Throughput:
    """One consumer run on *backend* ('stdlib' is select.epoll) fed by C producer threads."""
    with (
        event_sources(source, nfds) as (fds, value, mode),
        consumer(backend, fds, spin_us, protocol) as (poll_batch, _),
        c_producers(fds, threads, value, mode),
    ):
        return consume_for(poll_batch, seconds, progress, f"sustained {backend}")


#: (field of Throughput, label, unit, True if more is better)
METRICS = (
    ("events_per_s", "events/s", "events/s", True),
    ("cpu_ns_per_event", "consumer CPU/event", "CPU ns/event", False),
    ("events_per_call", "events per poll call", "events/call", True),
    ("sleeps_per_kevent", "consumer sleeps per 1000 events", "sleeps/kevent", False),
)


def compare_runs(
    scenario: str,
    label: str,
    ring_name: str,
    ring: list[Throughput],
    base_name: str,
    base: list[Throughput],
    metrics: tuple[str, ...] | None = None,
) -> list[Comparison]:
    """One Comparison per metric (all of METRICS, or those named), ratio > 1 when the first
    side is better."""
    results = []
    for attr, what, unit, more_is_better in METRICS:
        if metrics is not None and attr not in metrics:
            continue
        first = summary(ring_name, unit, [getattr(t, attr) for t in ring])
        second = summary(base_name, unit, [getattr(t, attr) for t in base])
        better, worse = (first, second) if more_is_better else (second, first)
        value = better.median / worse.median if worse.median > 0 else 0.0
        results.append(Comparison(scenario, f"{label}: {what}", first, second, value))
    return results


def scenario_sustained(
    backends: list[str],
    nfds: int,
    threads: int,
    seconds: float,
    repeats: int,
    progress: Progress,
    spin_us: float = 0.0,
    source: str = "eventfd",
) -> list[Comparison]:
    """C producers feeding a Python consumer, per backend against select.epoll."""
    base: list[Throughput] = []
    runs: dict[str, list[Throughput]] = {b: [] for b in backends}
    for rep in range(repeats):
        # Interleave the sides so drift on a noisy machine hits both alike.
        progress(f"sustained: select.epoll, repeat {rep + 1}/{repeats}", force=True)
        base.append(sustained_one("stdlib", nfds, threads, seconds, progress, 0, source))
        for b in backends:
            progress(f"sustained: {b}, repeat {rep + 1}/{repeats}", force=True)
            runs[b].append(sustained_one(b, nfds, threads, seconds, progress, spin_us, source))
    results = []
    for b in backends:
        results += compare_runs(
            "sustained", f"{b} ({source})", f"{b} poll_into", runs[b], "select.epoll.poll", base
        )
    return results
