"""Files that wake epoll without saying which events: every backend reports what ``poll()``
says about them, as ``select.epoll`` does.

signalfd (``signalfd_notify`` is a plain ``wake_up``), inotify (fsnotify) and pidfd wake their
waiters without a key. ``select.epoll`` polls such a file when it delivers; the RFC's ring
cannot poll from the wakeup callback, so the 6.1 port queues the item for the ring's owner and
sets the header's ``repoll`` word, and the consumer has the kernel poll those files with one
``epoll_wait(NULL, 0, 0)``. What must hold, on every backend:

- the bits are the file's (EPOLLIN), never the registered interest with the EPOLLERR|EPOLLHUP
  the kernel adds to every registration;
- a wakeup that leaves the file not ready (a signal outside a signalfd's mask) reports nothing;
- EPOLLONESHOT disarms after the one report;
- ``poll(0)``, which drains the ring without a system call, still sees them, even when the
  ring is never empty.

The hang-up paths of pipes and sockets (also key-less) are in ``test_parity.py``.
"""

from __future__ import annotations

import ctypes
import os
import select
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator

import pytest
from backends import ALL

import uring_epoll
from uring_epoll import EPOLLET, EPOLLIN, EPOLLONESHOT, EPOLLOUT, testing

_libc = ctypes.CDLL(None, use_errno=True)
_IN_CREATE = 0x100
_SIGSET_WORDS = 1024 // 64  # glibc's sigset_t

all_backends = pytest.mark.parametrize("backend", ALL)


def _check(ret: int) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def signalfd(*signals: int) -> int:
    """A non-blocking signalfd for *signals* (the stdlib has no wrapper)."""
    mask = (ctypes.c_ulong * _SIGSET_WORDS)()
    for sig in signals:
        mask[(sig - 1) // 64] |= 1 << ((sig - 1) % 64)
    return _check(_libc.signalfd(-1, ctypes.byref(mask), os.O_NONBLOCK | os.O_CLOEXEC))


def inotify_watching(folder: str) -> int:
    """A non-blocking inotify fd told about files created in *folder*."""
    fd = _check(_libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
    _check(_libc.inotify_add_watch(fd, folder.encode(), _IN_CREATE))
    return fd


def drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


@pytest.fixture
def folder() -> Iterator[str]:
    # A tmpfs where there is one: inside User-Mode Linux the default temporary folder is on
    # hostfs (the host's files), where creating a file raises no inotify event.
    shm = "/dev/shm"
    where = shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None
    path = tempfile.mkdtemp(prefix="uring-epoll-inotify-", dir=where)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def blocked_sigusr() -> Iterator[None]:
    """SIGUSR1 and SIGUSR2 blocked in this thread: sent to it, they stay pending for a
    signalfd to report (thread-directed, so no other thread of the process takes them)."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGUSR2})
    try:
        yield
    finally:
        for sig in (signal.SIGUSR1, signal.SIGUSR2):
            while sig in signal.sigpending():
                signal.sigtimedwait([sig], 0)
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _thread_signalfd_xfail(backend: str, request: pytest.FixtureRequest) -> None:
    if backend == "thread":
        # signalfd reports the pending signals of the task that polls it. The emulator's
        # poller thread polls it for itself (as select.epoll used from another thread would)
        # and may take the wakeup; testing.sync() and poll(0) poll from the caller's thread
        # and find the signal only if the poller has not taken the wakeup first.
        request.applymarker(
            pytest.mark.xfail(
                strict=False,
                reason="the emulator polls from its own thread: a signalfd answers for it",
            )
        )


def _both(backend: str) -> tuple[uring_epoll.epoll, select.epoll]:
    return uring_epoll.epoll(backend=backend), select.epoll()


@all_backends
@pytest.mark.parametrize("mode", [EPOLLET, 0], ids=["ET", "LT"])
def test_signalfd_reports_in_and_only_for_its_signals(
    backend: str, mode: int, blocked_sigusr: None, request: pytest.FixtureRequest
) -> None:
    _thread_signalfd_xfail(backend, request)
    sfd = signalfd(signal.SIGUSR1)
    ours, std = _both(backend)
    try:
        for ep in (ours, std):
            ep.register(sfd, EPOLLIN | EPOLLOUT | mode)
        assert ours.poll(0) == std.poll(0) == []

        # A signal outside the mask wakes the signalfd and leaves it not ready.
        signal.pthread_kill(threading.get_ident(), signal.SIGUSR2)
        testing.sync(ours)
        assert std.poll(0) == []
        assert ours.poll(0) == []

        signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)
        testing.sync(ours)
        expected = std.poll(0)
        assert expected == [(sfd, EPOLLIN)]
        assert ours.poll(0) == expected
        drain(sfd)
        assert ours.poll(0) == std.poll(0) == []
    finally:
        ours.close()
        std.close()
        os.close(sfd)


@all_backends
def test_signalfd_found_while_sleeping(
    backend: str, blocked_sigusr: None, request: pytest.FixtureRequest
) -> None:
    _thread_signalfd_xfail(backend, request)
    sfd = signalfd(signal.SIGUSR1)
    me = threading.get_ident()
    timer = threading.Timer(0.2, signal.pthread_kill, (me, signal.SIGUSR1))
    try:
        with uring_epoll.epoll(backend=backend) as ours:
            ours.register(sfd, EPOLLIN | EPOLLET)
            timer.start()
            assert ours.poll(3) == [(sfd, EPOLLIN)]
    finally:
        timer.cancel()
        timer.join()
        os.close(sfd)


@all_backends
@pytest.mark.parametrize("mode", [EPOLLET, 0, EPOLLONESHOT], ids=["ET", "LT", "ONESHOT"])
def test_inotify_reports_in(backend: str, mode: int, folder: str) -> None:
    ifd = inotify_watching(folder)
    ours, std = _both(backend)
    try:
        for ep in (ours, std):
            ep.register(ifd, EPOLLIN | EPOLLOUT | mode)
        open(os.path.join(folder, "a"), "w").close()
        testing.sync(ours)
        expected = std.poll(0)
        assert expected == [(ifd, EPOLLIN)]
        assert ours.poll(1) == expected
        if mode == EPOLLONESHOT:
            # Disarmed by the report: a second event stays unreported until MOD.
            open(os.path.join(folder, "b"), "w").close()
            testing.sync(ours)
            assert ours.poll(0) == std.poll(0) == []
            for ep in (ours, std):
                ep.modify(ifd, EPOLLIN | EPOLLONESHOT)
            testing.sync(ours)
            assert ours.poll(1) == std.poll(0) == [(ifd, EPOLLIN)]
    finally:
        ours.close()
        std.close()
        os.close(ifd)


@all_backends
def test_pidfd_reports_in_when_the_process_exits(backend: str) -> None:
    child = subprocess.Popen(["sleep", "0.3"])
    try:
        pidfd = os.pidfd_open(child.pid)
    except BaseException:
        child.kill()
        child.wait()
        raise
    ours, std = _both(backend)
    try:
        for ep in (ours, std):
            ep.register(pidfd, EPOLLIN | EPOLLET)
        assert ours.poll(30) == [(pidfd, EPOLLIN)]
        assert std.poll(0) == [(pidfd, EPOLLIN)]
    finally:
        ours.close()
        std.close()
        os.close(pidfd)
        child.kill()
        child.wait()


@all_backends
def test_a_ring_that_never_empties_does_not_hold_them_back(backend: str, folder: str) -> None:
    """A level-triggered eventfd that stays readable puts an entry in the ring at every poll,
    so poll(0) never finds the ring empty; a key-less wakeup must still come through."""
    efd = os.eventfd(1, os.EFD_NONBLOCK)
    ifd = inotify_watching(folder)
    try:
        with uring_epoll.epoll(backend=backend) as ours:
            ours.register(efd, EPOLLIN)
            ours.register(ifd, EPOLLIN | EPOLLET)
            assert ours.poll(1) == [(efd, EPOLLIN)]
            open(os.path.join(folder, "a"), "w").close()
            testing.sync(ours)
            assert sorted(ours.poll(0)) == sorted([(efd, EPOLLIN), (ifd, EPOLLIN)])
            assert ours.poll(0) == [(efd, EPOLLIN)]
            # Only the kernel ring needs the repoll system call; nothing else counts any.
            assert (ours.stats.repolls > 0) == (backend == "kernel")
    finally:
        os.close(efd)
        os.close(ifd)
