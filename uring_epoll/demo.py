"""``uring-epoll demo``: the classic vpoll demonstration, consumed through ``uring_epoll.epoll``.

The parent registers a vpoll fd for IN|RDHUP|ERR|OUT|HUP|PRI and waits, printing
``timeout...`` or ``GOT event <hex>`` (lowercase, no ``0x``, as the reference program's
``printf("%x")``) and deleting from the vpoll set what it got; a forked child raises one step
every 2 s: IN; IN; IN|PRI; PRI; OUT; HUP. The kernel implementations print events 1, 1, 3, 2,
4, 10. The emulation cannot raise PRI: its child raises IN for IN|PRI and nothing for PRI, so
it prints 1, 1, 1, 4, 2011 (the emulated hangup reads IN|HUP|RDHUP).

Why the timing looks the way it does: the parent's 1 s timeouts fall on a fixed grid started
before the fork, and the child raises its steps half a tick off that grid (at 2.5 s, 4.5 s,
...). With timeouts counted from the last wake-up, as in the reference program, the second
timeout after an event and the next event are due at the same instant, and which one is
printed first is a coin toss; half a tick of margin makes the output the same on every run.

Fork before threads: the child is forked before the epoll object exists, because the
``thread`` ring backend runs a poller thread in the parent. The child only touches the vpoll
fd, never prints, and leaves with ``os._exit``. A parent whose child dies early reports it and
returns 1 instead of waiting forever.

The grid starts when the parent is ready, not at the fork: the child waits on a pipe for the
parent's start time, sent once the vpoll fd is registered. Forking a large process and creating
the ring can take longer than a step (a third of a second seen inside User-Mode Linux); a child
that counted from the fork would raise its first step before the registration, and the kernel
ring reports a step raised before ``EPOLL_CTL_ADD`` as the fd's polled state, not as the
wake-up key it reports afterwards. If the parent fails before sending, the child reads
end-of-file and leaves without raising anything.
"""

from __future__ import annotations

import argparse
import errno
import os
import select
import signal
import struct
import sys
import time
from typing import Any, TextIO

from . import vpoll as vp

INTEREST = (
    select.EPOLLIN
    | select.EPOLLRDHUP
    | select.EPOLLERR
    | select.EPOLLOUT
    | select.EPOLLHUP
    | select.EPOLLPRI
)
STEPS = (
    select.EPOLLIN,
    select.EPOLLIN,
    select.EPOLLIN | select.EPOLLPRI,
    select.EPOLLPRI,
    select.EPOLLOUT,
    select.EPOLLHUP,
)
RING_BACKENDS = ("auto", "kernel", "thread", "epoll")
#: (parent's tick, child's period) in seconds.
NORMAL_TIMING = (1.0, 2.0)
FAST_TIMING = (0.1, 0.2)
#: The start time the parent sends its child (a native double; both ends are this process).
_START = struct.Struct("d")


def _child(source: vp.VPoll, go: int, tick: float, period: float) -> None:
    """Wait for the parent's start time, then raise each step (what the implementation can of
    it) half a tick off the parent's grid."""
    sent = b""
    while len(sent) < _START.size:
        chunk = os.read(go, _START.size - len(sent))
        if not chunk:
            return  # the parent gave up before starting: raise nothing
        sent += chunk
    (start,) = _START.unpack(sent)
    can = source.supported_events
    for i, events in enumerate(STEPS):
        delay = start + (i + 1) * period + tick / 2 - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if events & can:
            source.add(events & can)


def _spawn(source: vp.VPoll, tick: float, period: float) -> tuple[int, int]:
    """Fork the child; return its pid and the pipe end to send it the start time through."""
    go_read, go_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no return from here
        code = 0
        try:
            os.close(go_write)
            _child(source, go_read, tick, period)
        except BaseException as exc:
            os.write(2, f"uring-epoll demo: child failed: {exc!r}\n".encode())
            code = 1
        finally:
            os._exit(code)
    os.close(go_read)
    return pid, go_write


def run_demo(
    backend: str | None = None,
    fast: bool = False,
    impl: str | None = None,
    out: TextIO | None = None,
) -> int:
    """Run the demonstration; return 0 when the parent saw the hangup, 1 otherwise.

    Args:
        backend: ring backend for ``uring_epoll.epoll`` (``auto``/None, kernel, thread, epoll).
        fast: a 0.1 s tick and 0.2 s steps instead of 1 s and 2 s.
        impl: vpoll implementation (see :func:`uring_epoll.vpoll.resolve_impl`).
        out: where to print (default ``sys.stdout``).
    """
    from ._epoll import epoll  # late: the native module is not needed for --help

    out = sys.stdout if out is None else out
    tick, period = FAST_TIMING if fast else NORMAL_TIMING
    backend = None if backend == "auto" else backend
    # Resolve names before forking, so a bad argument is an exception here, not in the child.
    from . import probe

    backend_name = probe.resolve_backend(backend)
    status = probe.backend_status()[backend_name]
    if not status.available:
        raise OSError(errno.ENOSYS, f"ring backend {backend_name!r} unavailable: {status.reason}")
    with vp.VPoll(0, impl) as source:
        note = ""
        if source.impl == "emulation":
            note = " (cannot raise PRI: the child raises IN for IN|PRI and skips PRI)"
        print(f"vpoll implementation: {source.impl}{note}", file=out)
        out.flush()  # the fork below must not duplicate buffered output
        pid, go = _spawn(source, tick, period)
        try:
            with epoll(backend=backend_name) as ep:
                print(f"ring backend: {ep.backend}", file=out)
                ep.register(source.fileno(), INTEREST)
                start = time.monotonic()  # CLOCK_MONOTONIC: the same clock in the child
                try:
                    os.write(go, _START.pack(start))
                except BrokenPipeError:
                    pass  # the child already died: the loop's first timeout reports it
                os.close(go)
                go = -1
                return _parent_loop(ep, source, pid, start, tick, period, out)
        finally:
            if go >= 0:
                os.close(go)  # the child reads end-of-file and leaves
            _reap(pid)


def _parent_loop(
    ep: Any, source: vp.VPoll, pid: int, start: float, tick: float, period: float, out: TextIO
) -> int:
    deadline = start + (len(STEPS) + 2) * period  # the hangup is due at 6.25 periods
    k = 1
    while True:
        now = time.monotonic()
        while start + k * tick <= now - tick / 2:
            k += 1  # we fell behind (a stalled machine): skip ticks rather than burst
        events = ep.poll(max(0.0, start + k * tick - now))
        if events:
            for _fd, got in events:
                print(f"GOT event {got:x}", file=out)
                if got & select.EPOLLHUP:
                    return 0
                source.delete(got & source.supported_events)
            continue
        print("timeout...", file=out)
        k += 1
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            # Its last step happened before it exited and may have landed just after our
            # poll timed out: whatever it raised is pending now, so look once more.
            for _fd, got in ep.poll(0):
                print(f"GOT event {got:x}", file=out)
                if got & select.EPOLLHUP:
                    return 0
            print(f"the child exited (status {status:#x}) before the hangup", file=out)
            return 1
        if time.monotonic() > deadline:
            print("no hangup by the deadline: giving up", file=out)
            return 1


def _reap(pid: int) -> None:
    """Wait for our child; after the hangup it is about to exit, otherwise stop it."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if not done:
            time.sleep(0.05)
            done, _ = os.waitpid(pid, os.WNOHANG)
        if not done:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(backend=args.backend, fast=args.fast, impl=args.vpoll)


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``demo`` command to the ``uring-epoll`` argument parser."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "demo",
        help="the classic vpoll demonstration through a ring",
        description="A forked child raises IN; IN; IN|PRI; PRI; OUT; HUP on a vpoll fd, one "
        "step every 2 s; the parent waits on it in uring_epoll.epoll with 1 s timeouts and "
        "prints what it gets (kernel vpoll: 1 1 3 2 4 10; emulation: 1 1 1 4 2011).",
    )
    p.add_argument("--fast", action="store_true", help="0.1 s ticks and 0.2 s steps")
    p.add_argument(
        "--backend",
        choices=RING_BACKENDS,
        default="auto",
        help="ring backend of uring_epoll.epoll (default: auto)",
    )
    p.add_argument(
        "--vpoll",
        choices=("auto", *vp.IMPLEMENTATIONS),
        default=None,
        help=f"vpoll implementation (default: ${vp.VPOLL_ENV}, else auto)",
    )
    p.set_defaults(func=_cmd_demo)
    return p
