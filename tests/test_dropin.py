"""Drop-in gaps CPython's own test_epoll finds: ``fromfd`` sharing, and teardown at exit.

``select.epoll.fromfd(ep.fileno())`` gives a second object over the same epoll instance: the
same registrations, the same events, and the fd closed under one object is closed for the
other. Every scenario here runs on a ``select.epoll`` first and on ours second, and requires
the same outcome.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from backends import ALL, all_backends

import uring_epoll
from uring_epoll import EPOLLET, EPOLLIN, EPOLLOUT

Factory = Callable[[], Any]


def factories(backend: str) -> list[tuple[str, Factory, Callable[[int], Any]]]:
    """(name, new object, fromfd) for the stdlib and for ours on *backend*."""
    return [
        ("select.epoll", select.epoll, select.epoll.fromfd),
        (backend, lambda: uring_epoll.epoll(backend=backend), uring_epoll.epoll.fromfd),
    ]


@pytest.fixture
def connected() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


@all_backends
class TestFromfd:
    def test_same_fd_number_as_cpython_test_epoll(self, backend, connected) -> None:
        """CPython's test_fromfd: both objects see what either registered (level-triggered,
        so both get the events), and closing the first closes the fd under the second."""
        server, client = connected
        for name, new, fromfd in factories(backend):
            with new() as ep:
                ep2 = fromfd(ep.fileno())
                assert ep2.fileno() == ep.fileno()
                ep2.register(server.fileno(), EPOLLIN | EPOLLOUT)
                ep2.register(client.fileno(), EPOLLIN | EPOLLOUT)
                events = ep.poll(1, 4)
                events2 = ep2.poll(0.9, 4)
                assert len(events) == 2, name
                assert sorted(events) == sorted(events2), name
            assert not ep2.closed, name  # its fd went, not the object
            with pytest.raises(OSError) as info:
                ep2.poll(1, 4)
            assert info.value.errno == errno.EBADF, name
            ep2.close()  # after its fd went: harmless

    def test_dup_shares_registrations_and_events(self, backend, connected) -> None:
        """A dup is a second handle on the same instance: registrations and events are shared
        both ways, each object owns (and closes) its own fd, and the instance lives on until
        the last is closed."""
        server, client = connected
        for name, new, fromfd in factories(backend):
            ep = new()
            ep2 = fromfd(os.dup(ep.fileno()))
            own = ep2.fileno()
            assert own != ep.fileno()
            ep.register(server.fileno(), EPOLLIN | EPOLLET)
            # The instance already holds it: a second ADD through the other object fails.
            with pytest.raises(FileExistsError):
                ep2.register(server.fileno(), EPOLLIN | EPOLLET)
            client.send(b"x")
            assert ep2.poll(2) == [(server.fileno(), EPOLLIN)], name
            assert ep.poll(0) == [], name  # edge-triggered: delivered once, to ep2
            ep2.modify(server.fileno(), EPOLLIN)  # level-triggered from now on
            assert ep.poll(2) == [(server.fileno(), EPOLLIN)], name
            assert ep2.poll(2) == [(server.fileno(), EPOLLIN)], name  # still readable
            ep.close()
            assert not ep2.closed
            assert ep2.poll(2) == [(server.fileno(), EPOLLIN)], name
            ep2.unregister(server.fileno())
            assert ep2.poll(0) == [], name
            ep2.close()
            with pytest.raises(OSError) as info:
                os.fstat(own)  # closed with the object that owned it
            assert info.value.errno == errno.EBADF
            server.recv(16)

    def test_closing_the_dup_leaves_the_original(self, backend, connected) -> None:
        server, client = connected
        for name, new, fromfd in factories(backend):
            with new() as ep:
                fromfd(os.dup(ep.fileno())).close()
                ep.register(server.fileno(), EPOLLIN | EPOLLET)
                client.send(b"x")
                assert ep.poll(2) == [(server.fileno(), EPOLLIN)], name
                server.recv(16)


def test_thread_backend_fromfd_drains_the_same_ring() -> None:
    """The events do not vanish into a second consumer of the inner epoll: the new object
    is the same backend over the same ring (so the ring extras agree too)."""
    fd = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        ep = uring_epoll.epoll(backend="thread", max_items=5)
        with ep, uring_epoll.epoll.fromfd(os.dup(ep.fileno())) as again:
            assert again.backend == "thread" and again.max_items == 5
            ep.register(fd, EPOLLIN | EPOLLET, data=1234)
            os.eventfd_write(fd, 1)
            assert again.poll(2) == [(fd, EPOLLIN)]  # data 1234 named back to the fd
            assert again.stats.ring_events == ep.stats.ring_events == 1
    finally:
        os.close(fd)


def test_fromfd_of_an_unrelated_epoll_is_not_shared() -> None:
    with uring_epoll.epoll(backend="thread") as ep, select.epoll() as std:
        with uring_epoll.epoll.fromfd(os.dup(std.fileno())) as other:
            assert other.backend == "epoll"
        assert not ep.closed


def test_close_twice_and_after_fork(tmp_path) -> None:
    """close() is idempotent on every backend, also in a fork child (where the objects are
    the parent's and only report so)."""
    objects = [uring_epoll.epoll(backend=b) for b in ALL]
    objects.append(uring_epoll.epoll.fromfd(os.dup(objects[0].fileno())))
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            for ep in objects:
                ep.close()
                ep.close()
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    for ep in objects:
        ep.poll(0)  # the parent's objects are untouched by the child
        ep.close()
        ep.close()
        assert ep.closed


TEARDOWN = textwrap.dedent(
    """
    import asyncio, os, select, selectors, sys
    import numpy as np
    import uring_epoll

    backends = sys.argv[1].split(",")

    class RingSelector(selectors.EpollSelector):
        def __init__(self, backend):
            super().__init__()
            self._selector.close()
            self._selector = uring_epoll.epoll(backend=backend)

    keep = []
    for backend in backends:
        fd = os.eventfd(0, os.EFD_NONBLOCK)
        ep = uring_epoll.epoll(backend=backend)
        ep.register(fd, select.EPOLLIN)
        os.eventfd_write(fd, 1)
        buf = np.zeros(4, uring_epoll.EVENT_DTYPE)
        ep.poll_into(buf, 1)
        ep.poll(1)
        twin = uring_epoll.epoll.fromfd(os.dup(ep.fileno()))
        loop = asyncio.SelectorEventLoop(RingSelector(backend))
        loop.run_until_complete(asyncio.sleep(0.01))
        keep += [ep, twin, loop, buf]
        # And some dropped at once, with a cycle, so the collector finds them at exit.
        cyc = [uring_epoll.epoll(backend=backend)]
        cyc.append(cyc)
        asyncio.SelectorEventLoop(RingSelector(backend))
    """
)


def test_unclosed_objects_tear_down_silently() -> None:
    """Objects and event loops left open at exit (finalizers, atexit and module teardown in
    whatever order the interpreter picks) print nothing and exit 0."""
    result = subprocess.run(
        [
            sys.executable,
            "-X",
            "dev",
            "-W",
            "ignore::ResourceWarning",
            "-c",
            TEARDOWN,
            ",".join(ALL),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
