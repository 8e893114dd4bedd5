"""Rules of the patched kernel that callers rely on, checked with plain system calls.

- Ordinary epoll callers see no change: ``epoll_wait(fd, NULL, 0, ...)`` on anything but an
  EPOLL_USERPOLL epoll fails exactly like any other ``maxevents == 0``, in the order of checks
  of the running kernel (6.1 checks ``maxevents`` before the descriptor, later kernels the
  descriptor first). This holds on every kernel, so it runs on the host too: a parity check.
- The ring mappings stay uninherited: ``madvise(MADV_DOFORK)`` on them fails with EINVAL, and
  a fork child faults on them. This needs the patched kernel; inside it
  (``URING_EPOLL_REQUIRE_KERNEL=1``) a missing kernel fails the test instead of skipping it.

Only ctypes/os/mmap are used, so nothing here depends on the package's compiled modules.
"""

from __future__ import annotations

import ctypes
import errno
import faulthandler
import mmap
import os
import platform
import select
import signal

import pytest
from backends import REQUIRE_KERNEL

X86_64 = platform.machine() == "x86_64"
NR_EPOLL_WAIT = 232
NR_EPOLL_PWAIT = 281
NR_EPOLL_PWAIT2 = 441
EPOLL_USERPOLL = 1
USERPOLL_NR_PATH = "/proc/sys/fs/epoll/userpoll_nr"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _errno_of(nr: int, *args: int | None) -> int:
    """errno of a system call that must fail (0 if it succeeded)."""
    ctypes.set_errno(0)
    ret = _libc.syscall(ctypes.c_long(nr), *(ctypes.c_long(a or 0) for a in args))
    return ctypes.get_errno() if ret == -1 else 0


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


@pytest.fixture
def descriptors():
    """A bad number, a closed descriptor, an eventfd and an ordinary epoll."""
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    closed = os.dup(efd)
    os.close(closed)
    plain = select.epoll()
    try:
        yield {"-1": -1, "closed": closed, "eventfd": efd, "plain epoll": plain.fileno()}
    finally:
        plain.close()
        os.close(efd)


@pytest.mark.skipif(not X86_64, reason="system call numbers of x86_64")
def test_wait_null_zero_fails_like_any_zero_maxevents(descriptors) -> None:
    buf = ctypes.create_string_buffer(12)
    zero = _Timespec(0, 0)
    bad = _Timespec(0, -1)
    have_pwait2 = (
        _errno_of(
            NR_EPOLL_PWAIT2,
            descriptors["plain epoll"],
            ctypes.addressof(buf),
            1,
            ctypes.addressof(zero),
            0,
            8,
        )
        == 0
    )
    for name, fd in descriptors.items():
        want = _errno_of(NR_EPOLL_WAIT, fd, ctypes.addressof(buf), 0, 0)
        assert want in (errno.EINVAL, errno.EBADF), name
        assert _errno_of(NR_EPOLL_WAIT, fd, None, 0, 0) == want, name
        assert _errno_of(NR_EPOLL_PWAIT, fd, None, 0, 0, None, 8) == want, name
        assert _errno_of(NR_EPOLL_PWAIT, fd, ctypes.addressof(buf), 0, 0, None, 8) == want, name
        if have_pwait2:
            assert _errno_of(NR_EPOLL_PWAIT2, fd, None, 0, ctypes.addressof(zero), None, 8) == want
            assert _errno_of(NR_EPOLL_PWAIT2, fd, None, 0, None, None, 8) == want, name
            # The timeout is checked before everything else.
            assert _errno_of(NR_EPOLL_PWAIT2, fd, None, 0, ctypes.addressof(bad), None, 8) == (
                errno.EINVAL
            ), name


@pytest.mark.skipif(not X86_64, reason="system call numbers of x86_64")
def test_wait_null_zero_on_a_bad_descriptor_is_einval_on_6_1() -> None:
    """The case of the report: 6.1 says EINVAL here, patched or not (later kernels: EBADF)."""
    major, minor = (int(x) for x in platform.release().split(".")[:2])
    if (major, minor) != (6, 1):
        pytest.skip(f"order of checks of 6.1 only; this is {platform.release()}")
    assert _errno_of(NR_EPOLL_WAIT, -1, None, 0, 0) == errno.EINVAL


def _userpoll_nr() -> int:
    """Number of epoll_create2, or a skip (a failure when the kernel is required)."""
    try:
        with open(USERPOLL_NR_PATH) as f:
            return int(f.read())
    except (OSError, ValueError) as exc:
        reason = f"no EPOLL_USERPOLL kernel ({USERPOLL_NR_PATH}: {exc})"
        if REQUIRE_KERNEL:
            pytest.fail(f"URING_EPOLL_REQUIRE_KERNEL=1 but {reason}", pytrace=False)
        pytest.skip(reason)


def _child_faults_on(m: mmap.mmap) -> bool:
    pid = os.fork()
    if pid == 0:
        try:
            faulthandler.disable()  # the SIGSEGV is expected: no traceback
            m[0]  # not inherited: SIGSEGV
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSEGV


@pytest.mark.skipif(not X86_64, reason="system call numbers of x86_64")
def test_madv_dofork_is_refused_on_the_rings() -> None:
    nr = _userpoll_nr()
    ctypes.set_errno(0)
    epfd = _libc.syscall(ctypes.c_long(nr), ctypes.c_long(EPOLL_USERPOLL), ctypes.c_long(8))
    assert epfd >= 0, os.strerror(ctypes.get_errno())
    try:
        header = mmap.mmap(epfd, mmap.PAGESIZE, flags=mmap.MAP_SHARED)
        header_length = int.from_bytes(header[4:8], "little")
        index = mmap.mmap(epfd, mmap.PAGESIZE, flags=mmap.MAP_SHARED, offset=header_length)
        for m in (header, index):
            with pytest.raises(OSError) as exc:
                m.madvise(mmap.MADV_DOFORK)
            assert exc.value.errno == errno.EINVAL
            assert _child_faults_on(m)
        assert int.from_bytes(header[0:4], "little") == 0xEB01EB01
        header.close()
        index.close()
    finally:
        os.close(epfd)
