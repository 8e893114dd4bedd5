"""Wake-up latency: how long after a producer's write the consumer has the event in hand.

One C thread (``csrc/latency.c``) pings an eventfd with its ``CLOCK_MONOTONIC`` time as the
value; the Python consumer, as soon as its poll returns, reads ``time.monotonic_ns()`` (the
same clock), then takes t0 with the ``eventfd_read`` it has to do anyway, records t1 - t0, and
acks (``ue_pinger_ack``: a counter, no system call, no wake-up). The producer waits for that
ack and a jittered gap before the next ping, so every ping finds the consumer back in its poll
and never coalesces with another.

The producer looks for the ack with timed sleeps (doubling from gap/2) instead of being woken
by the consumer: a wake-up sent from the consumer's CPU may queue the producer behind the
consumer, and a spinning consumer then holds that CPU for its whole spin bound, so the next
ping lands after the spin (on a 2-CPU host, 9 spins in 10 missed that way with an eventfd ack).

Two modes, each against ``select.epoll`` in the same run:

- ``sleep``: the consumer blocks. Ring: ``spin_us=0``, so it sleeps in the kernel
  (``epoll_wait(NULL, 0)`` then ESTALE) or, on the thread backend, on a futex, behind the
  emulator's poller thread, which is itself woken from ``poll(2)``: two wake-ups in a row.
  Baseline: ``poll(timeout)``.
- ``spin``: the ring epoll is created with ``spin_us``; its poll spins on the ring's tail
  for that long before sleeping. The gap is shorter than the spin, so most pings land in
  the spin. Baseline: the stdlib's nearest equivalent, ``poll(0)`` in a loop for the same
  time, then a blocking ``poll``: each turn of that loop is a system call.

Figures are percentiles (p50, p99, p99.9) of the samples of one run, medians over repeats
with the min..max spread; ratio = baseline / ring, > 1 means the ring wakes sooner. On a
single CPU (User-Mode Linux) a spin cannot see a write made by a thread that needs the same
CPU: there the spin mode mostly burns its bound, by design of the measurement, not a fault.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import numpy as np

from .. import abi, probe
from .._bench_lib import ffi, lib
from .._epoll import epoll
from .._native_lib import os_error
from .common import Comparison, Progress, ratio, summary

MODES = ("sleep", "spin")
PERCENTILES = (50.0, 99.0, 99.9)
#: Samples per run for a full bench: p99.9 of 10000 leaves 10 beyond it; ~1 s a run on a host.
DEFAULT_SAMPLES = 10000
#: Pings taken and dropped before each run's samples (thread start, first faults, caches).
WARMUP = 50
#: Every wait has this bound, so a lost event fails the run instead of hanging it.
POLL_TIMEOUT = 5.0


@contextmanager
def pinger(fd: int, count: int, gap_ns: int) -> Iterator[tuple[Callable[[], None], Any]]:
    """The C ping thread for the block: *count* pings of *fd*, each after the previous one's
    ack and a gap of ``gap_ns`` (jittered to [gap/2, 3 gap/2]). Yields ``(ack, sent)``: call
    ``ack()`` once the eventfd is read; ``sent[0]`` holds the number of pings written once the
    block is left. The thread is always stopped (it notices within a millisecond) and joined;
    a failure of its own is raised then."""
    err = ffi.new("int *")
    handle = lib.ue_pinger_start(fd, count, gap_ns, err)
    if handle == ffi.NULL:
        raise os_error(err[0], "starting the ping thread")
    sent = ffi.new("uint64_t *")
    try:
        yield partial(lib.ue_pinger_ack, handle), sent
    finally:
        lib.ue_pinger_stop(handle)
        joined = lib.ue_pinger_join(handle, sent)
        if joined < 0:
            raise os_error(joined, "ping thread")


def _lost(side: str, fd: int, got: Any) -> RuntimeError:
    return RuntimeError(
        f"latency {side}: expected one event for eventfd {fd} within {POLL_TIMEOUT} s, got {got!r}"
    )


def _consume_ring(
    ep: epoll, fd: int, ack: Callable[[], None], total: int, progress: Progress, label: str
) -> list[int]:
    buffer = np.zeros(4, abi.EVENT_DTYPE)
    poll_into = ep.poll_into
    now = time.monotonic_ns
    read = os.eventfd_read
    out = [0] * total
    for i in range(total):
        n = poll_into(buffer, POLL_TIMEOUT)
        t1 = now()
        if n != 1 or buffer[0]["data"] != fd:
            raise _lost(label, fd, buffer[:n].tolist())
        out[i] = t1 - read(fd)
        ack()
        if not i & 1023:
            progress(f"latency {label}: {i}/{total}")
    return out


def stdlib_waiter(ep: Any, spin_ns: int) -> Callable[[], list[tuple[int, int]]]:
    """select.epoll's nearest equivalent of the ring consumer's wait: with *spin_ns*, a
    bounded busy-poll with ``poll(0)`` (the ring spins on its tail in C for as long), then a
    blocking ``poll`` for at most POLL_TIMEOUT."""
    poll: Callable[[float, int], list[tuple[int, int]]] = ep.poll
    now = time.monotonic_ns
    if not spin_ns:
        return partial(poll, POLL_TIMEOUT, 1)

    def wait() -> list[tuple[int, int]]:
        end = now() + spin_ns
        got = poll(0, 1)
        while not got and now() < end:
            got = poll(0, 1)
        return got or poll(POLL_TIMEOUT, 1)

    return wait


def _consume_stdlib(
    ep: Any,
    fd: int,
    ack: Callable[[], None],
    total: int,
    spin_ns: int,
    progress: Progress,
    label: str,
) -> list[int]:
    wait = stdlib_waiter(ep, spin_ns)
    now = time.monotonic_ns
    read = os.eventfd_read
    out = [0] * total
    for i in range(total):
        got = wait()
        t1 = now()
        if len(got) != 1 or got[0][0] != fd:
            raise _lost(label, fd, got)
        out[i] = t1 - read(fd)
        ack()
        if not i & 1023:
            progress(f"latency {label}: {i}/{total}")
    return out


def latency_run(
    side: str, mode: str, samples: int, spin_us: float, gap_us: float, progress: Progress
) -> np.ndarray:
    """One run's wake-up latencies (ns, int64, *samples* of them) for ring backend *side*,
    or ``"stdlib"`` for select.epoll; *mode* is ``"sleep"`` or ``"spin"``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    spin_ns = int(spin_us * 1000) if mode == "spin" else 0
    label = f"{'select.epoll' if side == 'stdlib' else side} {mode}"
    total = WARMUP + samples
    fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    ep: Any = None
    try:
        if side == "stdlib":
            ep = select.epoll()
        else:
            ep = epoll(backend=side, max_items=4, spin_us=spin_ns / 1000)
        ep.register(fd, select.EPOLLIN | select.EPOLLET)
        with pinger(fd, total, int(gap_us * 1000)) as (ack, sent):
            if side == "stdlib":
                out = _consume_stdlib(ep, fd, ack, total, spin_ns, progress, label)
            else:
                out = _consume_ring(ep, fd, ack, total, progress, label)
        if sent[0] != total:
            raise RuntimeError(f"latency {label}: the ping thread sent {sent[0]} of {total}")
    finally:
        if ep is not None:
            ep.close()
        os.close(fd)
    values = np.array(out[WARMUP:], dtype=np.int64)
    # Both ends read CLOCK_MONOTONIC, so a sample <= 0 means the pairing of pings is wrong.
    if values.min() <= 0:
        raise RuntimeError(f"latency {label}: non-positive sample {int(values.min())} ns")
    return values


def _check_backends(backends: list[str]) -> None:
    statuses = probe.backend_status()
    for b in backends:
        status = statuses.get(b)
        if status is None:
            raise RuntimeError(f"latency: unknown backend {b!r}")
        if not status.available:
            raise RuntimeError(f"latency: backend {b} cannot run here: {status.reason}")


def scenario_latency(
    backends: list[str],
    samples: int,
    repeats: int,
    progress: Progress,
    *,
    spin_us: float = 100.0,
    gap_us: float = 20.0,
) -> list[Comparison]:
    """Wake-up latency percentiles, ring backends against select.epoll, sleeping and
    spinning: one Comparison per backend, mode and percentile (label "thread sleep p99.9")."""
    if samples < 1 or repeats < 1:
        raise ValueError("samples and repeats must be >= 1")
    if spin_us <= 0 or gap_us < 0:
        raise ValueError("spin_us must be > 0 and gap_us >= 0")
    _check_backends(backends)
    # figures[(side, mode)][pct] = that percentile of each repeat
    figures: dict[tuple[str, str], dict[float, list[float]]] = {
        (side, mode): {p: [] for p in PERCENTILES}
        for side in ("stdlib", *backends)
        for mode in MODES
    }
    for rep in range(repeats):
        # Interleave the sides (and modes) so drift on a noisy machine hits all alike.
        for mode in MODES:
            for side in ("stdlib", *backends):
                name = "select.epoll" if side == "stdlib" else side
                progress(f"latency {name} {mode}, repeat {rep + 1}/{repeats}", force=True)
                values = latency_run(side, mode, samples, spin_us, gap_us, progress)
                found = np.percentile(values, PERCENTILES)
                for p, v in zip(PERCENTILES, found, strict=True):
                    figures[side, mode][p].append(float(v))
    results = []
    for b in backends:
        for mode in MODES:
            for p in PERCENTILES:
                ring_m = summary(f"{b} poll_into {mode} p{p:g}", "ns", figures[b, mode][p])
                base_m = summary(
                    f"select.epoll.poll {mode} p{p:g}", "ns", figures["stdlib", mode][p]
                )
                results.append(
                    Comparison(
                        "latency",
                        f"{b} {mode} p{p:g}",
                        ring_m,
                        base_m,
                        ratio(base_m.median, ring_m.median),
                    )
                )
    return results
