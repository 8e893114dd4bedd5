"""What every scenario shares: measurements with their spread, progress output, eventfd
sources and the C producer threads that drive them."""

from __future__ import annotations

import os
import resource
import select
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._bench_lib import RUNTIME, ffi, lib
from .._native_lib import os_error


@dataclass
class Measurement:
    """One figure: median and spread over repeats."""

    name: str
    unit: str
    median: float
    low: float
    high: float
    samples: list[float] = field(default_factory=list)


@dataclass
class Comparison:
    """The ring against its baseline, measured in the same run."""

    scenario: str
    label: str
    ring: Measurement
    baseline: Measurement
    #: baseline / ring for costs (ns), ring / baseline for rates: > 1 means the ring wins
    ratio: float


class Progress:
    """A one-line progress report on stderr, rate-limited, for anything over a second."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and sys.stderr is not None
        self.last = 0.0

    def __call__(self, message: str, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if force or now - self.last > 0.5:
            self.last = now
            sys.stderr.write(f"\r\x1b[K  {message}")
            sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def summary(name: str, unit: str, samples: list[float]) -> Measurement:
    return Measurement(name, unit, statistics.median(samples), min(samples), max(samples), samples)


@contextmanager
def eventfds(count: int) -> Iterator[list[int]]:
    """*count* non-blocking eventfds, closed afterwards."""
    raise_nofile(count + 64)
    fds: list[int] = []
    try:
        for _ in range(count):
            fds.append(os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC))
        yield fds
    finally:
        for fd in fds:
            os.close(fd)


def open_fd_count() -> int:
    """Descriptors this process has open now (a guess of 16 where /proc is missing)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 16


def make_unreadable(fds: list[int]) -> None:
    """Read the eventfds that are readable, so they are not ready any more."""
    for fd in fds:
        with suppress(BlockingIOError):
            os.eventfd_read(fd)


def raise_nofile(need: int) -> tuple[int, int]:
    """Raise RLIMIT_NOFILE towards *need* as far as allowed; return (soft, hard) afterwards.

    The soft limit may go up to the hard one freely. Raising the hard limit needs
    CAP_SYS_RESOURCE (root in User-Mode Linux has it; a container's root often does not), and
    is tried only when the hard limit is too low.
    """
    # The limit bounds descriptor numbers, so count the ones already open (a test run may
    # hold hundreds) on top of what the caller needs.
    need += open_fd_count()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinite = resource.RLIM_INFINITY
    if soft != infinite and soft < need:
        if hard != infinite and hard < need:
            with suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != infinite and soft < need:
            target = need if hard == infinite else min(need, hard)
            with suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def clock_overhead_ns() -> float:
    clock = time.perf_counter_ns
    samples = []
    for _ in range(2000):
        t0 = clock()
        t1 = clock()
        samples.append(t1 - t0)
    return float(statistics.median(samples))


def c_floor(value: float, what: str) -> float:
    if value < 0:
        raise os_error(int(value), what)
    return value


def ratio(cost_baseline: float, cost_ring: float) -> float:
    """baseline / ring for costs; 0 when the ring's cost netted to 0 (below what the clock can
    resolve), which the table shows as n/a. Never inf: the JSON must stay strict."""
    return cost_baseline / cost_ring if cost_ring > 0 else 0.0


@dataclass
class Throughput:
    """What one consumer run did: the rate, and what each event cost the consumer thread."""

    events_per_s: float
    cpu_ns_per_event: float
    events_per_call: float
    #: voluntary context switches of the consumer thread per 1000 events: how often it slept
    sleeps_per_kevent: float


def consume_for(
    poll_batch: Callable[[], int], seconds: float, progress: Progress, label: str
) -> Throughput:
    """Run the consumer loop for *seconds* and measure it from the consumer thread."""
    events = calls = 0
    start = time.perf_counter()
    cpu0 = time.thread_time()
    switches0 = resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw
    deadline = start + seconds
    next_check = 0
    while True:
        events += poll_batch()
        calls += 1
        next_check += 1
        if next_check >= 64:
            next_check = 0
            now = time.perf_counter()
            if now >= deadline:
                break
            progress(f"{label}: {events / (now - start) / 1e6:.2f} M events/s")
    cpu = time.thread_time() - cpu0
    wall = time.perf_counter() - start
    switches = resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw - switches0
    if not events:
        raise RuntimeError(f"no events consumed on {label}")
    return Throughput(events / wall, cpu * 1e9 / events, events / calls, switches * 1000 / events)


@contextmanager
def _thread_group(fds: list[int], what: str, start: Callable[[Any, Any], Any]) -> Iterator[Any]:
    """Run a C producer group (``start(fds_pointer, err)``) for the block; yield the counter
    that holds its total once joined, and raise the first thread's error then."""
    array = np.array(fds, dtype=np.int32)
    err = ffi.new("int *")
    group = start(ffi.cast("int *", ffi.from_buffer(array)), err)
    if group == ffi.NULL:
        raise os_error(err[0], f"starting {what} threads")
    total = ffi.new("uint64_t *")
    try:
        yield total
    finally:
        lib.ue_producers_stop(group)
        ret = lib.ue_producers_join(group, total)
        _ = array  # the threads read it until joined
        if ret < 0:
            raise os_error(ret, f"{what} thread")


def c_producers(
    fds: list[int], threads: int, value: int = 1, mode: int = 0
) -> AbstractContextManager[Any]:
    """C threads driving the fds round-robin until the block ends: mode 0 writes *value* as a
    u64 (eventfd, EFD_VPOLL command), mode 1 is ioctl(fd, value >> 32, value & 0xffffffff).
    ``total[0]`` is the number of writes once the block is left."""
    return _thread_group(
        fds,
        "producer",
        lambda array, err: lib.ue_producers_start(array, len(fds), threads, 0, value, mode, err),
    )


def c_injectors(
    emu: Any, fds: list[int], threads: int, events: int = select.EPOLLIN
) -> AbstractContextManager[Any]:
    """C threads publishing *events* for the registered *fds* straight into a thread
    backend's ring (``emu`` is its producer) until the block ends: the ring protocol with no
    file and no poller thread in the way."""
    return _thread_group(
        fds,
        "injector",
        lambda array, err: lib.ue_producers_start_inject(
            RUNTIME, emu, array, len(fds), threads, events, err
        ),
    )


@contextmanager
def event_sources(kind: str, count: int) -> Iterator[tuple[list[int], int, int]]:
    """*count* fds for C producer threads: (fds, value, mode) for :func:`c_producers`.

    ``eventfd`` writes 1; ``vpoll`` uses the kernel vpoll forms, whose every ADD wakes
    watchers with the whole set (EFD_VPOLL: an 8-byte ADD command; /dev/vpoll: the ADD
    ioctl). The emulation cannot be driven from C threads (its state lives in a socketpair
    managed under a Python lock), so it is refused with the reason.
    """
    if kind == "eventfd":
        with eventfds(count) as fds:
            yield fds, 1, 0
        return
    from .. import vpoll

    sources: list[vpoll.VPoll] = []
    try:
        sources += (vpoll.VPoll(0) for _ in range(count))
        impl = sources[0].impl
        if impl == "eventfd":
            yield [s.fileno() for s in sources], vpoll.EFD_VPOLL_ADDEVENTS | select.EPOLLIN, 0
        elif impl == "device":
            yield (
                [s.fileno() for s in sources],
                (vpoll.VPOLL_IO_ADDEVENTS << 32) | select.EPOLLIN,
                1,
            )
        else:
            raise RuntimeError(
                "vpoll sources from C threads need a kernel vpoll (EFD_VPOLL or /dev/vpoll); "
                "here only the emulation exists: use --source eventfd, or --kernel"
            )
    finally:
        for source in sources:
            source.close()
