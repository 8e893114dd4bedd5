"""uring_epoll.epoll against select.epoll: same behaviour, same exceptions, on every backend."""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from backend_params import RINGS, all_backends, ring_backends

import uring_epoll
from uring_epoll import EPOLLET, EPOLLIN, EPOLLONESHOT, EPOLLOUT, EVENT_DTYPE


@pytest.fixture
def efd() -> Iterator[int]:
    fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    yield fd
    try:
        os.close(fd)
    except OSError:
        pass


def both(backend: str) -> tuple[uring_epoll.epoll, select.epoll]:
    return uring_epoll.epoll(backend=backend), select.epoll()


def same_exception(call_ours, call_std) -> type[BaseException]:
    """Both calls raise, and raise the same type (and errno): return it."""
    with pytest.raises(Exception) as std:
        call_std()
    with pytest.raises(Exception) as ours:
        call_ours()
    assert type(ours.value) is type(std.value), (ours.value, std.value)
    if isinstance(std.value, OSError):
        assert ours.value.errno == std.value.errno
    return type(std.value)


@all_backends
class TestSameMistakesSameExceptions:
    def test_register_twice(self, backend: str, efd: int) -> None:
        ours, std = both(backend)
        ours.register(efd, EPOLLIN | EPOLLET)
        std.register(efd, EPOLLIN | EPOLLET)
        kind = same_exception(lambda: ours.register(efd, EPOLLIN | EPOLLET),
                              lambda: std.register(efd, EPOLLIN | EPOLLET))
        assert kind is FileExistsError

    def test_modify_and_unregister_unknown(self, backend: str, efd: int) -> None:
        ours, std = both(backend)
        assert same_exception(lambda: ours.modify(efd, EPOLLIN),
                              lambda: std.modify(efd, EPOLLIN)) is FileNotFoundError
        assert same_exception(lambda: ours.unregister(efd),
                              lambda: std.unregister(efd)) is FileNotFoundError

    def test_regular_file(self, backend: str) -> None:
        ours, std = both(backend)
        with tempfile.TemporaryFile() as f:
            assert same_exception(lambda: ours.register(f, EPOLLIN | EPOLLET),
                                  lambda: std.register(f, EPOLLIN | EPOLLET)) is PermissionError

    def test_bad_fds(self, backend: str) -> None:
        ours, std = both(backend)
        r, w = os.pipe()
        os.close(r)
        os.close(w)
        assert same_exception(lambda: ours.register(r, EPOLLIN | EPOLLET),
                              lambda: std.register(r, EPOLLIN | EPOLLET)) is OSError
        assert same_exception(lambda: ours.register(-1), lambda: std.register(-1)) is ValueError
        assert same_exception(lambda: ours.register("x"), lambda: std.register("x")) is TypeError

    def test_bad_arguments(self, backend: str) -> None:
        ours, std = both(backend)
        for maxevents in (0, -2):
            assert same_exception(lambda m=maxevents: ours.poll(0, m),
                                  lambda m=maxevents: std.poll(0, m)) is ValueError
        with pytest.raises(ValueError):
            uring_epoll.epoll(0, backend=backend)
        with pytest.raises(ValueError):
            select.epoll(0)

    def test_closed_object(self, backend: str, efd: int) -> None:
        ours, std = both(backend)
        ours.close()
        std.close()
        assert ours.closed and std.closed
        ours.close()  # idempotent, like the stdlib
        for name, args in [("register", (efd,)), ("modify", (efd, EPOLLIN)),
                           ("unregister", (efd,)), ("poll", ()), ("fileno", ())]:
            kind = same_exception(lambda n=name, a=args: getattr(ours, n)(*a),
                                  lambda n=name, a=args: getattr(std, n)(*a))
            assert kind is ValueError
        with pytest.raises(ValueError):
            ours.poll_into(np.zeros(1, EVENT_DTYPE))
        with pytest.raises(ValueError), ours:
            pass

    def test_context_manager_and_fileno(self, backend: str) -> None:
        with uring_epoll.epoll(backend=backend) as ep:
            assert ep.fileno() >= 0 and not ep.closed
            assert ep.backend == backend
        assert ep.closed


@all_backends
class TestTimeouts:
    def test_zero_and_positive(self, backend: str) -> None:
        with uring_epoll.epoll(backend=backend) as ep:
            assert ep.poll(0) == []
            for timeout in (0.05, 0.12):
                started = time.monotonic()
                assert ep.poll(timeout) == []
                elapsed = time.monotonic() - started
                assert timeout <= elapsed + 0.002 and elapsed < timeout + 2.0

    @pytest.mark.parametrize("timeout", [None, -1, -0.5])
    def test_forever_until_an_event(self, backend: str, efd: int, timeout) -> None:
        with uring_epoll.epoll(backend=backend) as ep:
            ep.register(efd, EPOLLIN | EPOLLET)
            threading.Timer(0.1, os.eventfd_write, (efd, 1)).start()
            assert ep.poll(timeout) == [(efd, EPOLLIN)]

    def test_bad_timeout_type(self, backend: str) -> None:
        with uring_epoll.epoll(backend=backend) as ep, pytest.raises(TypeError):
            ep.poll("soon")

    @pytest.mark.skipif(sys.platform != "linux", reason="signals")
    def test_eintr_retries_and_handler_exceptions_propagate(self, backend: str) -> None:
        calls = []
        previous = signal.signal(signal.SIGALRM, lambda *_: calls.append(1))
        try:
            with uring_epoll.epoll(backend=backend) as ep:
                signal.setitimer(signal.ITIMER_REAL, 0.05)
                started = time.monotonic()
                assert ep.poll(0.3) == []  # the signal does not end the wait early
                assert time.monotonic() - started >= 0.29
                assert calls

                def boom(*_: object) -> None:
                    raise KeyboardInterrupt

                signal.signal(signal.SIGALRM, boom)
                signal.setitimer(signal.ITIMER_REAL, 0.05)
                with pytest.raises(KeyboardInterrupt):
                    ep.poll(5)
                signal.setitimer(signal.ITIMER_REAL, 0.05)
                with pytest.raises(KeyboardInterrupt):
                    ep.poll_into(np.zeros(4, EVENT_DTYPE), 5)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


@all_backends
class TestDataAndEvents:
    def test_data_defaults_to_fd_and_poll_names_the_fd(self, backend: str, efd: int) -> None:
        other = os.eventfd(0, os.EFD_NONBLOCK)
        try:
            with uring_epoll.epoll(backend=backend) as ep:
                ep.register(efd, EPOLLIN | EPOLLET)
                ep.register(other, EPOLLIN | EPOLLET, data=2**64 - 1)
                os.eventfd_write(efd, 1)
                os.eventfd_write(other, 1)
                buf = np.zeros(4, EVENT_DTYPE)
                assert ep.poll_into(buf, 1) == 2
                assert sorted(buf["data"][:2].tolist()) == sorted([efd, 2**64 - 1])
                os.eventfd_write(efd, 1)
                os.eventfd_write(other, 1)
                assert sorted(ep.poll(1)) == sorted([(efd, EPOLLIN), (other, EPOLLIN)])
                ep.modify(other, EPOLLIN | EPOLLET)  # keeps its data
                os.eventfd_write(other, 1)
                assert ep.poll_into(buf, 1) == 1 and int(buf[0]["data"]) == 2**64 - 1
        finally:
            os.close(other)

    def test_duplicate_or_bad_data(self, backend: str, efd: int) -> None:
        other = os.eventfd(0, os.EFD_NONBLOCK)
        try:
            with uring_epoll.epoll(backend=backend) as ep:
                ep.register(efd, EPOLLIN | EPOLLET, data=5)
                with pytest.raises(ValueError, match="already used"):
                    ep.register(other, EPOLLIN | EPOLLET, data=5)
                with pytest.raises(ValueError):
                    ep.register(other, EPOLLIN | EPOLLET, data=-1)
                with pytest.raises(ValueError):
                    ep.register(other, EPOLLIN | EPOLLET, data=2**64)
        finally:
            os.close(other)

    def test_poll_into_rejects_wrong_buffers(self, backend: str) -> None:
        with uring_epoll.epoll(backend=backend) as ep:
            with pytest.raises(TypeError):
                ep.poll_into(np.zeros(4, np.uint64))
            with pytest.raises(ValueError):
                ep.poll_into(np.zeros((2, 2), EVENT_DTYPE))
            with pytest.raises(ValueError):
                ep.poll_into(np.zeros(8, EVENT_DTYPE)[::2])
            with pytest.raises(ValueError):
                ep.poll_into(np.zeros(0, EVENT_DTYPE))

    def test_oneshot_needs_a_modify(self, backend: str, efd: int) -> None:
        with uring_epoll.epoll(backend=backend) as ep:
            ep.register(efd, EPOLLIN | EPOLLET | EPOLLONESHOT)
            os.eventfd_write(efd, 1)
            assert ep.poll(1) == [(efd, EPOLLIN)]
            os.eventfd_write(efd, 1)
            assert ep.poll(0.05) == []
            ep.modify(efd, EPOLLIN | EPOLLET | EPOLLONESHOT)
            assert ep.poll(1) == [(efd, EPOLLIN)]

    def test_fd_closed_then_number_reused(self, backend: str) -> None:
        with uring_epoll.epoll(backend=backend) as ep:
            fd = os.eventfd(0, os.EFD_NONBLOCK)
            ep.register(fd, EPOLLIN | EPOLLET)
            os.close(fd)  # the kernel drops the registration with the file
            again = os.eventfd(1, os.EFD_NONBLOCK)
            try:
                assert again == fd
                ep.register(again, EPOLLIN | EPOLLET)
                assert ep.poll(1) == [(again, EPOLLIN)]
            finally:
                os.close(again)

    def test_fromfd(self, backend: str) -> None:
        std = select.epoll()
        dup = uring_epoll.epoll.fromfd(os.dup(std.fileno()))
        try:
            assert dup.backend == "epoll"
        finally:
            dup.close()
            std.close()


@ring_backends
class TestRingRules:
    def test_exclusive_is_refused(self, backend: str, efd: int) -> None:
        with uring_epoll.epoll(backend=backend) as ep, pytest.raises(ValueError, match="RFC"):
            ep.register(efd, EPOLLIN | select.EPOLLEXCLUSIVE)

    def test_delete_with_pending_entry_is_skipped(self, backend: str, efd: int) -> None:
        with uring_epoll.epoll(backend=backend) as ep:
            ep.register(efd, EPOLLIN | EPOLLET)
            os.eventfd_write(efd, 1)
            deadline = time.monotonic() + 2
            while int(ep.header["tail"]) == int(ep.header["head"]) and time.monotonic() < deadline:
                time.sleep(0.001)  # the thread backend publishes asynchronously
            assert int(ep.header["tail"]) - int(ep.header["head"]) == 1
            ep.unregister(efd)
            assert ep.poll(0) == []
            assert ep.stats.skipped == 1
            assert int(ep.header["head"]) == int(ep.header["tail"])

    def test_slots_reused_lowest_first(self, backend: str) -> None:
        fds = [os.eventfd(0, os.EFD_NONBLOCK) for _ in range(4)]
        try:
            with uring_epoll.epoll(backend=backend) as ep:
                for fd in fds[:3]:
                    ep.register(fd, EPOLLIN | EPOLLET)
                assert ep.items["data"][:3].tolist() == fds[:3]
                ep.unregister(fds[1])
                ep.register(fds[3], EPOLLIN | EPOLLET)
                assert ep.items["data"][:3].tolist() == [fds[0], fds[3], fds[2]]
        finally:
            for fd in fds:
                os.close(fd)

    def test_enospc_and_max_items_bounds(self, backend: str) -> None:
        fds = [os.eventfd(0, os.EFD_NONBLOCK) for _ in range(3)]
        try:
            with uring_epoll.epoll(backend=backend, max_items=2) as ep:
                ep.register(fds[0], EPOLLIN | EPOLLET)
                ep.register(fds[1], EPOLLIN | EPOLLET)
                with pytest.raises(OSError) as info:
                    ep.register(fds[2], EPOLLIN | EPOLLET)
                assert info.value.errno == errno.ENOSPC
                assert ep.max_items == 2 and int(ep.header["max_items_nr"]) == 2
        finally:
            for fd in fds:
                os.close(fd)
        for bad in (0, 65537, -1):
            with pytest.raises(ValueError):
                uring_epoll.epoll(backend=backend, max_items=bad)

    def test_views_are_read_only_and_describe_the_ring(self, backend: str) -> None:
        with uring_epoll.epoll(backend=backend, max_items=100) as ep:
            assert int(ep.header["magic"]) == uring_epoll.abi.USERPOLL_MAGIC
            assert int(ep.header["max_items_nr"]) == 100
            assert len(ep.items) == 100
            assert len(ep.index) * 4 == int(ep.header["index_length"])
            for view in (ep.header, ep.items, ep.index):
                assert not view.flags.writeable

    def test_level_triggered_keeps_select_semantics(self, backend: str) -> None:
        r, w = os.pipe()
        try:
            with uring_epoll.epoll(backend=backend) as ep:
                ep.register(r, EPOLLIN)
                os.write(w, b"x")
                assert ep.poll(1) == [(r, EPOLLIN)]
                assert ep.poll(0) == [(r, EPOLLIN)]  # still ready: reported again
                os.read(r, 1)
                assert ep.poll(0) == []
                assert ep.stats.rearms >= 2
        finally:
            os.close(r)
            os.close(w)

    def test_stats_count_sleeps_and_spins(self, backend: str, efd: int) -> None:
        with uring_epoll.epoll(backend=backend, spin_us=200) as ep:
            ep.register(efd, EPOLLIN | EPOLLET)
            assert ep.poll(0.05) == []
            stats = ep.stats
            assert stats.sleeps >= 1 and stats.spins >= 1

    def test_fork_child_gets_a_clear_error(self, backend: str) -> None:
        ep = uring_epoll.epoll(backend=backend)
        try:
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child
                code = 3
                try:
                    ep.poll(5)
                except RuntimeError as exc:
                    code = 0 if "parent" in str(exc) else 4
                except BaseException:
                    code = 5
                os._exit(code)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                time.sleep(0.01)
            else:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail("the fork child hung")
            assert os.waitstatus_to_exitcode(status) == 0
            assert ep.poll(0) == []  # the parent is unaffected
        finally:
            ep.close()


def test_protocol3_is_thread_only() -> None:
    if "kernel" in RINGS:
        with pytest.raises(ValueError):
            uring_epoll.epoll(backend="kernel", protocol=3)
    with uring_epoll.epoll(backend="thread", protocol=3) as ep:
        assert ep.protocol == 3
    with pytest.raises(ValueError):
        uring_epoll.epoll(backend="thread", protocol=4)


def test_socket_objects_are_accepted() -> None:
    a, b = socket.socketpair()
    with a, b, uring_epoll.epoll() as ep:
        ep.register(a, EPOLLIN | EPOLLOUT | EPOLLET)
        assert ep.poll(1) == [(a.fileno(), EPOLLOUT)]
        b.send(b"x")
        # The kernel's ring carries the wake-up's own bits (IN here); epoll_wait and the
        # emulator re-poll the socket and add OUT. Both report IN.
        [(fd, events)] = ep.poll(1)
        assert fd == a.fileno() and events & EPOLLIN
