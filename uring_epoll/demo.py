"""``uring-epoll demo``: the classic vpoll demonstration, consumed through the ring.

The parent registers a vpoll fd for IN|RDHUP|ERR|OUT|HUP|PRI in a ``uring_epoll.epoll`` and
waits with a timeout, printing "timeout..." or "GOT event <hex>" and clearing what it got; a
forked child raises, one step per interval: IN; IN; IN|PRI; PRI; OUT; HUP. On the kernel
vpoll implementations the parent prints events 1, 1, 3, 2, 4, 10. The emulation cannot raise
PRI (the child raises what it can of each step), and its hangup reads 2011.
"""

from __future__ import annotations

import os
import select
import sys
import time
from typing import Any, TextIO

from . import vpoll as vp
from ._epoll import epoll

INTEREST = (select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLERR | select.EPOLLOUT
            | select.EPOLLHUP | select.EPOLLPRI)
STEPS = [select.EPOLLIN, select.EPOLLIN, select.EPOLLIN | select.EPOLLPRI, select.EPOLLPRI,
         select.EPOLLOUT, select.EPOLLHUP]


def _child(source: vp.VPoll, interval: float) -> None:
    """Raise each step's events, as far as the implementation can."""
    can = vp.EMULATED_EVENTS if source.impl == "emulation" else vp.VALID_EVENTS
    for events in STEPS:
        time.sleep(interval)
        if events & can:
            source.add(events & can)
    time.sleep(interval)


def run_demo(backend: str | None = None, fast: bool = False, impl: str | None = None,
             out: TextIO | None = None) -> int:
    """Run the demonstration; returns 0 when the parent saw the hangup."""
    out = out or sys.stdout
    interval, timeout = (0.2, 0.1) if fast else (2.0, 1.0)
    source = vp.VPoll(0, impl=impl)
    out.flush()
    # Fork before the epoll object exists: the thread backend's poller thread must not be
    # half-copied into the child, which only needs the vpoll fd.
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            _child(source, interval)
        except BaseException as exc:
            print(f"child: {exc!r}", file=sys.stderr)
            code = 1
        finally:
            os._exit(code)
    status = 1
    try:
        with epoll(backend=backend) as ep:
            print(f"vpoll implementation: {source.impl}; ring backend: {ep.backend}", file=out)
            ep.register(source, INTEREST | select.EPOLLET)
            deadline = time.monotonic() + interval * (len(STEPS) + 4) + 5
            while time.monotonic() < deadline:
                events = ep.poll(timeout)
                if not events:
                    print("timeout...", file=out)
                    continue
                for _, got in events:
                    print(f"GOT event {got:x}", file=out)
                    if got & select.EPOLLHUP:
                        status = 0
                        break
                    source.delete(got & vp.VALID_EVENTS & ~select.EPOLLRDHUP)
                if status == 0:
                    break
            out.flush()
    finally:
        _reap(pid)
        source.close()
    return status


def _reap(pid: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return
        time.sleep(0.02)
    os.kill(pid, 9)
    os.waitpid(pid, 0)


def _main(args: Any) -> int:
    return run_demo(backend=args.backend, fast=args.fast, impl=args.vpoll)


def add_cli(subparsers: Any) -> None:
    """Add the ``demo`` subcommand."""
    p = subparsers.add_parser("demo", help="the classic vpoll demonstration through the ring")
    p.add_argument("--fast", action="store_true", help="short sleeps (for tests)")
    p.add_argument("--backend", choices=["auto", "kernel", "thread", "epoll"], default=None,
                   help="ring backend (default: auto)")
    p.add_argument("--vpoll", choices=list(vp.IMPLEMENTATIONS), default=None,
                   help="vpoll implementation (default: detected)")
    p.set_defaults(func=_main)
