"""Every public method racing ``close()`` from other threads: ValueError or normal completion.

The racing runs in a child process, so that a crash (a use-after-free in C) is a test failure
naming its signal rather than a dead pytest, and a hang is a timeout rather than a stuck run.
Each backend gets a few seconds (``URING_EPOLL_CLOSE_RACE_SECONDS``, default 2.5).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from backends import ALL, IN_UML

SECONDS = float(os.environ.get("URING_EPOLL_CLOSE_RACE_SECONDS", "2.5"))

CHILD = textwrap.dedent(
    r"""
    import os, random, select, sys, threading, time
    import numpy as np
    import uring_epoll

    backend, seconds = sys.argv[1], float(sys.argv[2])
    # poll(None) must be woken by close() where the backend can do it (the emulator's
    # futex, uring's NOP completion); on epoll and kernel a blocked epoll_wait sleeps on as
    # select.epoll's does.
    forever = None if backend in ("thread", "uring") else 0.02
    CLOSED = "I/O operation on closed epoll object"
    problems = []
    quiet = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)  # never ready
    busy = os.eventfd(1, os.EFD_NONBLOCK | os.EFD_CLOEXEC)  # always ready (level-triggered)

    def op_register(ep, own):
        ep.register(own, select.EPOLLIN | select.EPOLLET)
        ep.unregister(own)

    def op_modify(ep, own):
        ep.modify(quiet, select.EPOLLIN | select.EPOLLET)

    def op_modify_lt(ep, own):
        ep.modify(busy, select.EPOLLIN)

    def op_unregister_missing(ep, own):
        try:
            ep.unregister(own)
        except FileNotFoundError:
            pass

    def op_poll0(ep, own):
        ep.poll(0)

    def op_poll_block(ep, own):
        ep.poll(forever if random.random() < 0.5 else 0.001)

    def op_poll_max(ep, own):
        ep.poll(0, 4)

    def op_poll_into(ep, own, buf=np.zeros(8, uring_epoll.EVENT_DTYPE)):
        ep.poll_into(buf, 0)

    def op_poll_into_block(ep, own):
        ep.poll_into(np.zeros(4, uring_epoll.EVENT_DTYPE), forever)

    def op_fileno(ep, own):
        ep.fileno()

    def op_closed(ep, own):
        ep.closed

    def op_stats(ep, own):
        ep.stats

    def op_views(ep, own):
        ep.header, ep.items, ep.index

    def op_fromfd(ep, own):
        fd = ep.fileno()
        try:
            fd = os.dup(fd)
        except OSError:
            return  # closed between our two calls: nothing of ours was called
        other = uring_epoll.epoll.fromfd(fd)
        try:
            other.poll(0)
        finally:
            other.close()

    def op_exit(ep, own):
        ep.__exit__(None, None, None)

    def op_enter(ep, own):
        ep.__enter__()

    OPS = [v for k, v in sorted(globals().items()) if k.startswith("op_")]
    counts = dict.fromkeys((op.__name__ for op in OPS), 0)

    def worker(ep, op, go):
        own = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        go.wait()
        try:
            while True:
                after = ep.closed
                op(ep, own)
                counts[op.__name__] += 1
                if after:
                    break  # a call that completes normally once closed (closed, __exit__)
        except ValueError as exc:
            if str(exc) != CLOSED:
                problems.append(f"{op.__name__}: ValueError({exc})")
        except BaseException as exc:
            problems.append(f"{op.__name__}: {type(exc).__name__}({exc})")
        finally:
            os.close(own)

    end = time.monotonic() + seconds
    rounds = 0
    while time.monotonic() < end and not problems:
        ep = uring_epoll.epoll(backend=backend)
        ep.register(quiet, select.EPOLLIN | select.EPOLLET)
        ep.register(busy, select.EPOLLIN)
        go = threading.Event()
        ops = random.sample(OPS, 4)
        threads = [threading.Thread(target=worker, args=(ep, op, go)) for op in ops]
        for t in threads:
            t.start()
        go.set()
        time.sleep(random.random() * 0.002)
        ep.close()
        for t in threads:
            t.join(10)
            if t.is_alive():
                problems.append(f"a thread is stuck after close: {ops}")
                print("\n".join(problems), flush=True)
                os._exit(3)
        rounds += 1
    print(f"{rounds} rounds", {k: v for k, v in counts.items()}, flush=True)
    if problems:
        print("\n".join(sorted(set(problems))), flush=True)
        sys.exit(1)
    """
)


@pytest.mark.parametrize("backend", ALL)
def test_every_method_racing_close_raises_only_value_error(backend: str) -> None:
    seconds = SECONDS / (4 if IN_UML else 1)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, backend, str(seconds)],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    output = proc.stdout + proc.stderr
    if proc.returncode < 0:
        pytest.fail(f"the child died of {signal.Signals(-proc.returncode).name}:\n{output}")
    assert proc.returncode == 0, output
    assert " rounds" in proc.stdout


EXIT_WITH_BLOCKED_DAEMONS = textwrap.dedent(
    r"""
    import sys, threading, time
    import numpy as np
    import uring_epoll

    started = []
    keep = []
    for backend in sys.argv[1].split(","):
        ep = uring_epoll.epoll(backend=backend)
        keep.append(ep)
        buf = np.zeros(4, uring_epoll.EVENT_DTYPE)
        for target, args in ((ep.poll, ()), (ep.poll, (None, 8)), (ep.poll_into, (buf,))):
            t = threading.Thread(target=target, args=args, daemon=True)
            t.start()
            started.append(t)
    time.sleep(0.2)  # let them block in C
    print("exiting", flush=True)
    """
)


def test_daemon_threads_blocked_in_poll_exit_quietly() -> None:
    """Daemon threads asleep in poll(None) at interpreter exit print nothing, as with
    select.epoll (whose threads sleep on in epoll_wait until the process is gone)."""
    proc = subprocess.run(
        [sys.executable, "-c", EXIT_WITH_BLOCKED_DAEMONS, ",".join(ALL)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "exiting\n"
    assert proc.stderr == ""
