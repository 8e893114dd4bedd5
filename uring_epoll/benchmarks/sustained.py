"""Sustained throughput: C producer threads feeding a Python consumer loop, events/s and
the consumer thread's CPU time per event, for every ring backend against ``select.epoll``.
"""

from __future__ import annotations

import select
from typing import Any

import numpy as np

from .. import abi
from .._epoll import epoll
from .common import Comparison, Progress, c_producers, consume_for, event_sources, summary

# ---- sustained scenario ----
# Edge-triggered eventfds coalesce: several writes before a drain make one event, on either
# side. The rate reported is events taken by the consumer; the CPU figure is the consumer
# thread's own CPU time (time.thread_time) per event, which is what the ring is meant to cut.
# The default spin is 0: on two cores a spinning consumer starves the emulator's poller.
# ---------------------------------------------------------------------------------------------



def _sustained_one(
    backend: str, nfds: int, threads: int, seconds: float, progress: Progress, spin_us: float,
    source: str = "eventfd",
) -> tuple[float, float]:
    """(events/s, consumer CPU ns/event) for one backend; backend 'stdlib' is select.epoll."""
    with event_sources(source, nfds) as (fds, value, mode):
        buffer = np.zeros(1024, abi.EVENT_DTYPE)
        if backend == "stdlib":
            ep: Any = select.epoll()
            for fd in fds:
                ep.register(fd, select.EPOLLIN | select.EPOLLET)
            poll = ep.poll

            def poll_batch() -> int:
                return len(poll(0.05, 1024))
        else:
            ep = epoll(backend=backend, max_items=max(nfds, 1), spin_us=spin_us)
            for fd in fds:
                ep.register(fd, select.EPOLLIN | select.EPOLLET)
            poll_into = ep.poll_into

            def poll_batch() -> int:
                return poll_into(buffer, 0.05)

        try:
            with c_producers(fds, threads, value, mode):
                events, wall, cpu = consume_for(poll_batch, seconds, progress, backend)
        finally:
            ep.close()
    if not events:
        raise RuntimeError(f"no events consumed on {backend}")
    return events / wall, cpu * 1e9 / events


def scenario_sustained(
    backends: list[str], nfds: int, threads: int, seconds: float, repeats: int,
    progress: Progress, spin_us: float = 0.0, source: str = "eventfd",
) -> list[Comparison]:
    """C producers feeding a Python consumer: events/s and consumer CPU/event per backend."""
    results = []
    base_rate: list[float] = []
    base_cpu: list[float] = []
    rates: dict[str, list[float]] = {b: [] for b in backends}
    cpus: dict[str, list[float]] = {b: [] for b in backends}
    for rep in range(repeats):
        # Interleave the sides so drift on a noisy machine hits both alike.
        progress(f"sustained: select.epoll, repeat {rep + 1}/{repeats}", force=True)
        rate, cpu = _sustained_one("stdlib", nfds, threads, seconds, progress, 0, source)
        base_rate.append(rate)
        base_cpu.append(cpu)
        for b in backends:
            progress(f"sustained: {b}, repeat {rep + 1}/{repeats}", force=True)
            rate, cpu = _sustained_one(b, nfds, threads, seconds, progress, spin_us, source)
            rates[b].append(rate)
            cpus[b].append(cpu)
    base_r = summary("select.epoll.poll", "events/s", base_rate)
    base_c = summary("select.epoll.poll", "CPU ns/event", base_cpu)
    for b in backends:
        ring_r = summary(f"{b} poll_into", "events/s", rates[b])
        ring_c = summary(f"{b} poll_into", "CPU ns/event", cpus[b])
        results.append(Comparison("sustained", f"{b} ({source}): events/s", ring_r, base_r,
                                  ring_r.median / base_r.median))
        results.append(Comparison("sustained", f"{b} ({source}): consumer CPU/event", ring_c,
                                  base_c, base_c.median / ring_c.median if ring_c.median else 0.0))
    return results


