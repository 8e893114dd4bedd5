"""Drain cost against batch size: how much it costs to take N ready events, the ring
(``poll_into``, ``poll``) against ``select.epoll.poll``, raw ``epoll_wait`` from C, the C ring
drain floor and io_uring multishot poll draining its completion ring in C."""

from __future__ import annotations

import os
import select
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from .. import abi, testing
from .._bench_lib import RUNTIME, ffi, lib
from .._epoll import epoll
from .common import (
    Comparison,
    Progress,
    c_floor,
    clock_overhead_ns,
    eventfds,
    make_unreadable,
    ratio,
    summary,
)

#: A clock read dearer than this (no vDSO) makes per-call figures at small batches unreliable.
CLOCK_NOTE_NS = 1000.0


def refill(ep: epoll, fds: list[int]) -> None:
    """Make *fds* pending in the ring (untimed): the emulator's producer is called directly;
    on the kernel backend each eventfd is written, and the kernel appends it."""
    if ep.backend == "thread":
        for fd in fds:
            testing.inject(ep, fd, select.EPOLLIN)
    else:
        for fd in fds:
            os.eventfd_write(fd, 1)


def _ring_drain_ns(
    ep: epoll, fds: list[int], batch: int, calls: int, use_tuples: bool, overhead: float
) -> list[float]:
    """ns per event for draining *batch* ready entries, one timed call per refill."""
    buffer = np.zeros(batch, abi.EVENT_DTYPE)
    clock = time.perf_counter_ns
    samples = []
    ready = fds[:batch]
    for _ in range(calls):
        refill(ep, ready)
        if use_tuples:
            t0 = clock()
            got = len(ep.poll(0, batch))
            t1 = clock()
        else:
            t0 = clock()
            got = ep.poll_into(buffer, 0)
            t1 = clock()
        if got != batch:
            raise RuntimeError(f"ring drain returned {got} events, expected {batch}")
        samples.append(max(t1 - t0 - overhead, 0.0) / batch)
    return samples


@contextmanager
def _level_ready(fds: list[int]) -> Iterator[select.epoll]:
    """A select.epoll with *fds* registered level-triggered and kept ready."""
    ep = select.epoll()
    try:
        for fd in fds:
            os.eventfd_write(fd, 1)
            ep.register(fd, select.EPOLLIN)  # level-triggered: ready on every call
        yield ep
    finally:
        ep.close()
        make_unreadable(fds)


def _stdlib_poll_ns(fds: list[int], batch: int, calls: int, overhead: float) -> list[float]:
    with _level_ready(fds[:batch]) as ep:
        clock = time.perf_counter_ns
        samples = []
        poll = ep.poll
        for _ in range(calls):
            t0 = clock()
            got = len(poll(0, batch))
            t1 = clock()
            if got != batch:
                raise RuntimeError(f"select.epoll returned {got} events, expected {batch}")
            samples.append(max(t1 - t0 - overhead, 0.0) / batch)
        return samples


def _c_epoll_wait_ns(fds: list[int], batch: int, calls: int) -> float:
    with _level_ready(fds[:batch]) as ep:
        return c_floor(lib.ue_bench_epoll_wait(ep.fileno(), batch, calls), "epoll_wait floor")


def _iouring_ns(fds: list[int], batch: int, calls: int) -> float | str:
    """io_uring multishot poll, completion ring drained in C; a reason string if unavailable."""
    array = np.array(fds[:batch], dtype=np.int32)
    value = lib.ue_bench_iouring_multishot(
        ffi.cast("int *", ffi.from_buffer(array)), batch, max(5, calls // 4)
    )
    if value < 0:
        code = int(-value)
        return f"io_uring unavailable: {os.strerror(code)}"
    return float(value)


def scenario_drain(
    batches: tuple[int, ...],
    calls: int,
    repeats: int,
    progress: Progress,
    backend: str = "thread",
) -> tuple[list[Comparison], list[str]]:
    """Drain cost per event at each batch size: the ring (poll_into, poll) against
    select.epoll.poll, raw epoll_wait from C, the C drain floor and io_uring's CQ ring."""
    results = []
    notes: list[str] = []
    overhead = clock_overhead_ns()
    if overhead > CLOCK_NOTE_NS:
        notes.append(
            f"drain: one clock read costs {overhead:.0f} ns here (a system call, not the vDSO: "
            "User-Mode Linux), so figures for one call are mostly clock, netted out by its "
            "median; read the batches of 256 and more, and the C floors (timed per round) "
            "only there"
        )
    with eventfds(max(batches)) as fds:
        ep = epoll(backend=backend, max_items=max(max(batches), 1))
        try:
            for fd in fds:
                ep.register(fd, select.EPOLLIN | select.EPOLLET)
            for batch in batches:
                n_calls = max(20, calls // max(1, batch // 16))
                rows: dict[str, list[float]] = {
                    k: [] for k in ("into", "tuples", "stdlib", "c_epoll", "floor", "uring")
                }
                for rep in range(repeats):
                    progress(f"drain: batch {batch}, repeat {rep + 1}/{repeats}")
                    med = statistics.median
                    rows["into"].append(
                        med(_ring_drain_ns(ep, fds, batch, n_calls, False, overhead))
                    )
                    rows["tuples"].append(
                        med(_ring_drain_ns(ep, fds, batch, n_calls, True, overhead))
                    )
                    rows["stdlib"].append(med(_stdlib_poll_ns(fds, batch, n_calls, overhead)))
                    rows["c_epoll"].append(_c_epoll_wait_ns(fds, batch, n_calls))
                    floor_ns = lib.ue_bench_drain_floor(RUNTIME, batch, n_calls, 1)
                    rows["floor"].append(c_floor(floor_ns, "drain floor"))
                    uring = _iouring_ns(fds, batch, n_calls)
                    if isinstance(uring, str):
                        if uring not in notes:
                            notes.append(uring)
                    else:
                        rows["uring"].append(uring)
                unit = "ns/event"
                into = summary(f"{backend} poll_into", unit, rows["into"])
                tuples = summary(f"{backend} poll", unit, rows["tuples"])
                stdlib = summary("select.epoll.poll", unit, rows["stdlib"])
                c_epoll = summary("epoll_wait from C", unit, rows["c_epoll"])
                floor = summary("C ring drain (atomic exchange)", unit, rows["floor"])
                pairs = [
                    ("poll_into vs select.epoll.poll", into, stdlib),
                    ("poll vs select.epoll.poll", tuples, stdlib),
                    ("poll_into vs epoll_wait in C", into, c_epoll),
                    ("poll_into vs C drain floor", into, floor),
                ]
                if rows["uring"]:
                    uring_m = summary("io_uring multishot CQ drain (C)", unit, rows["uring"])
                    pairs.append(("C drain floor vs io_uring CQ", floor, uring_m))
                for label, ring, base in pairs:
                    results.append(
                        Comparison(
                            "drain",
                            f"{label}, batch {batch}",
                            ring,
                            base,
                            ratio(base.median, ring.median),
                        )
                    )
        finally:
            ep.close()
    return results, notes
