"""No poll waits without a bound, and none misses a signal.

The cases that hung before their fix run in a child process with a timeout, so that a
regression fails the test instead of hanging the suite.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import uring_epoll
from uring_epoll._epoll import MAX_SPIN_US

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

signal.signal(signal.SIGALRM, boom)"""


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
