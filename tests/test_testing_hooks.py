"""``uring_epoll.testing``: the producer hooks tests and benchmarks use, on every backend."""

from __future__ import annotations

import os
import select
from collections.abc import Iterator

import pytest
from backends import all_backends

import uring_epoll
from uring_epoll import EPOLLET, EPOLLIN, testing


@pytest.fixture
def efd() -> Iterator[int]:
    fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    yield fd
    os.close(fd)


@all_backends
def test_sync_completes_a_batch(backend, efd) -> None:
    """After a write and sync(), one poll(0) holds the event on every backend (a no-op where
    the kernel publishes inside the write)."""
    with uring_epoll.epoll(backend=backend) as ep:
        ep.register(efd, EPOLLIN | EPOLLET)
        for _ in range(20):
            os.eventfd_write(efd, 1)
            testing.sync(ep)
            assert ep.poll(0) == [(efd, EPOLLIN)]
            os.eventfd_read(efd)
    with pytest.raises(ValueError):
        testing.sync(ep)


@all_backends
def test_inject_and_emulator_need_the_thread_backend(backend, efd) -> None:
    with uring_epoll.epoll(backend=backend) as ep:
        ep.register(efd, EPOLLIN | EPOLLET)
        if backend != "thread":
            with pytest.raises(TypeError, match="thread backend"):
                testing.inject(ep, efd, EPOLLIN)
            with pytest.raises(TypeError, match="thread backend"):
                testing.emulator(ep)
            return
        # Published without touching the file: an eventfd never has EPOLLPRI.
        ep.modify(efd, EPOLLIN | select.EPOLLPRI | EPOLLET)
        testing.inject(ep, efd, select.EPOLLPRI)
        assert ep.poll(0) == [(efd, select.EPOLLPRI)]
        with pytest.raises(FileNotFoundError):  # not registered: ENOENT, as epoll_ctl says
            testing.inject(ep, efd + 1000, EPOLLIN)
        emu = testing.emulator(ep)
        assert emu == testing.emulator(ep)  # the same producer (cffi compares addresses)
        assert repr(emu).startswith("<cdata 'struct ue_emu *'")
    with pytest.raises(ValueError):
        testing.emulator(ep)


def test_hooks_refuse_other_objects() -> None:
    with select.epoll() as std:
        for hook in (testing.sync, testing.emulator):
            with pytest.raises(TypeError):
                hook(std)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            testing.inject(std, 0, EPOLLIN)  # type: ignore[arg-type]
