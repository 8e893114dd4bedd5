"""No poll waits without a bound, and none misses a signal: spin_us, a stuck protocol-3 slot.

The cases that hung before their fix run in a child process with a timeout, so that a
regression fails the test instead of hanging the suite.
"""

from __future__ import annotations

import errno
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import uring_epoll
from uring_epoll import EVENT_DTYPE
from uring_epoll._epoll import MAX_SPIN_US
from uring_epoll.ring import Ring, new_ring_buffers

CHILD_TIMEOUT = 30.0

PRELUDE = """
import errno, signal, sys, time
import numpy as np
import uring_epoll
from uring_epoll import abi

class Boom(Exception):
    pass

def boom(*_):
    raise Boom()

signal.signal(signal.SIGALRM, boom)

def corrupt_protocol3(ep):
    # A reservation whose slot is never written: tail one past head, the slot still 0.
    hdr = np.ndarray((), abi.HEADER_DTYPE, buffer=ep._backend._header_map)
    hdr["tail"] = (int(hdr["head"]) + 1) % 2**32
"""


def run_child(body: str) -> str:
    """Run *body* after PRELUDE in a fresh interpreter; its stdout (it must exit 0)."""
    code = PRELUDE + textwrap.dedent(body)
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=CHILD_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the child hung for {CHILD_TIMEOUT} s:\n{body}")
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_spin_us_has_a_documented_range() -> None:
    assert MAX_SPIN_US == 10_000
    for bad in (MAX_SPIN_US + 1, 1e6, 1e12, float("inf"), float("nan"), -1, -1e-9):
        with pytest.raises(ValueError, match="spin_us"):
            uring_epoll.epoll(backend="thread", spin_us=bad)
        with pytest.raises(ValueError, match="spin_us"):
            uring_epoll.epoll.fromfd(0, spin_us=bad)
    for bad_type in ("5", None, 1j, True):
        with pytest.raises(TypeError, match="spin_us"):
            uring_epoll.epoll(backend="thread", spin_us=bad_type)
    for good in (0, 0.5, MAX_SPIN_US, np.float64(3), np.int64(7)):
        uring_epoll.epoll(backend="thread", spin_us=good).close()


def test_spin_never_outlives_the_timeout() -> None:
    with uring_epoll.epoll(backend="thread", spin_us=MAX_SPIN_US) as ep:
        took = []
        for _ in range(5):
            start = time.monotonic()
            assert ep.poll(0.001) == []
            took.append(time.monotonic() - start)
        # Each poll spins 10 ms unless the 1 ms timeout cuts it short.
        assert min(took) < 0.008, took
        assert ep.stats.spins >= 5


def test_signal_during_a_spin_is_seen() -> None:
    """SIGALRM lands 3 ms into a 10 ms spin of poll(None): its handler's exception ends the
    poll (before, the signal was lost and the poll slept forever)."""
    out = run_child(
        """
        ep = uring_epoll.epoll(backend="thread", spin_us=10000)
        for _ in range(3):
            start = time.monotonic()
            signal.setitimer(signal.ITIMER_REAL, 0.003)
            try:
                ep.poll(None)
            except Boom:
                pass
            assert time.monotonic() - start < 1, time.monotonic() - start
        print("ok", ep.stats.spins)
        """
    )
    assert out.startswith("ok")


def test_protocol3_stuck_slot_ends_poll_with_ebadmsg() -> None:
    out = run_child(
        """
        ep = uring_epoll.epoll(backend="thread", protocol=3)
        corrupt_protocol3(ep)
        start = time.monotonic()
        try:
            ep.poll(None)
        except OSError as exc:
            print(exc.errno, round(time.monotonic() - start, 2), str(exc))
        """
    )
    code, elapsed, message = out.split(" ", 2)
    assert int(code) == errno.EBADMSG
    assert 0.9 <= float(elapsed) < 10
    assert "corrupt" in message and "never written" in message


def test_protocol3_stuck_slot_wait_sees_signals() -> None:
    out = run_child(
        """
        ep = uring_epoll.epoll(backend="thread", protocol=3)
        corrupt_protocol3(ep)
        start = time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        try:
            ep.poll(None)
        except Boom:
            print("boom", round(time.monotonic() - start, 3))
        """
    )
    word, elapsed = out.split()
    assert word == "boom" and float(elapsed) < 0.9


def test_ring_drain_of_a_stuck_protocol3_slot_fails_after_a_bound() -> None:
    ring = Ring(*new_ring_buffers(8), protocol=3)
    try:
        ring.writable_header["tail"] = 1  # reserved, never written
        out = np.zeros(4, EVENT_DTYPE)
        start = time.monotonic()
        while True:
            try:
                assert ring.drain(out) == 0
            except OSError as exc:
                assert exc.errno == errno.EBADMSG and "never written" in str(exc)
                break
            assert time.monotonic() - start < 5, "no error for a slot stuck 5 s"
            time.sleep(0.01)
        assert time.monotonic() - start >= 0.9
        # Written at last: the consumer carries on.
        ring.writable_items[2]["ready_events"] = uring_epoll.EPOLLIN
        ring.writable_items[2]["events"] = uring_epoll.EPOLLIN
        ring.writable_items[2]["data"] = 42
        ring.writable_index[0] = 2 + 1
        assert ring.drain(out) == 1 and int(out[0]["data"]) == 42
    finally:
        ring.close()
