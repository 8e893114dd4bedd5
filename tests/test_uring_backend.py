"""What is io_uring-specific in the ``uring`` backend (the parametrised suite covers the rest).

A full CQ (multishot polls end, completions wait on the kernel's overflow list) with exact
accounting, stale completions after MOD and DEL, the coalescing of a registration's CQEs in a
batch, the counters, the read-only ``cqes`` view, fork, registrations made by threads that
sleep or exit, and detection on kernels without (a usable) io_uring, simulated through the
probe.
"""

from __future__ import annotations

import errno
import os
import select
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from backends import AVAILABLE

import uring_epoll
from uring_epoll import EPOLLET, EPOLLIN, EPOLLONESHOT, EVENT_DTYPE, abi, cli, probe
from uring_epoll._bench_lib import ffi as bench_ffi
from uring_epoll._bench_lib import lib as bench_lib
from uring_epoll._native_lib import lib, os_error

pytestmark = pytest.mark.skipif(
    "uring" not in AVAILABLE, reason=f"uring backend unavailable: {probe.uring_status()[1]}"
)

ET_IN = EPOLLIN | EPOLLET


def drain_counts(ep: uring_epoll.epoll, buf: np.ndarray, counts: dict[int, int]) -> int:
    """poll_into(0) until empty, reading each delivered eventfd; returns the events seen.
    A batch must never name a registration twice (the CQEs of one are ORed)."""
    events = 0
    while n := ep.poll_into(buf, 0):
        data = buf["data"][:n].tolist()
        assert len(set(data)) == n, "a registration appeared twice in one batch"
        for fd in data:
            try:
                counts[fd] = counts.get(fd, 0) + os.eventfd_read(fd)
            except BlockingIOError:
                pass  # its count was taken with an earlier event's
        events += n
    return events


# ---- a full CQ ---------------------------------------------------------------------------------


def test_full_cq_loses_nothing_across_overflow_and_multishot_restarts(eventfds) -> None:
    """8 multishot polls on a 16-entry CQ, each file written 40 times before anything is
    drained: 320 wake-ups. The kernel ends a multishot poll that cannot post (its last CQE
    waits on the overflow list), the drain fetches what was held back and re-arms the ended
    polls; every count is read exactly once, and the re-armed polls work."""
    fds = eventfds(8)
    rounds = 40
    with uring_epoll.epoll(backend="uring", max_items=8) as ep:
        assert len(ep.cqes) == 16  # the CQ this test means to overflow
        for fd in fds:
            ep.register(fd, ET_IN)
        for _ in range(rounds):
            for fd in fds:
                os.eventfd_write(fd, 1)
        counts: dict[int, int] = {}
        buf = np.zeros(4, EVENT_DTYPE)  # smaller than the registrations: several batches
        drain_counts(ep, buf, counts)
        assert counts == dict.fromkeys(fds, rounds)
        for fd in fds:
            with pytest.raises(BlockingIOError):
                os.eventfd_read(fd)
        stats = ep.stats
        assert stats.overflows >= 1
        assert stats.multishot_restarts >= 1
        # Every registration is armed again: one more write each is one event each.
        for fd in fds:
            os.eventfd_write(fd, 2)
        counts = {}
        drain_counts(ep, np.zeros(16, EVENT_DTYPE), counts)
        assert counts == dict.fromkeys(fds, 2)


def test_level_triggered_file_read_empty_is_not_reported_after_an_overflow(eventfds) -> None:
    """A drain that fetches completions held back by a full CQ must not submit the re-arms it
    queued itself: the arming poll of a level-triggered file delivered in this batch would
    report it again in the next batch, after the caller read it empty."""
    fds = eventfds(8)
    r, w = os.pipe()
    try:
        with uring_epoll.epoll(backend="uring", max_items=9) as ep:
            assert len(ep.cqes) == 32
            ep.register(r, EPOLLIN)  # level-triggered: a single-shot poll, re-armed
            for fd in fds:
                ep.register(fd, ET_IN)
            os.write(w, b"x")  # 1 CQE
            for i in range(31):  # 31 more: the CQ is full
                os.eventfd_write(fds[i % 6], 1)
            os.eventfd_write(fds[6], 1)  # held back: the CQ is full
            os.eventfd_write(fds[7], 1)
            buf = np.zeros(8, EVENT_DTYPE)
            n = ep.poll_into(buf, 0)
            assert n == 8 and r in buf["data"][:n].tolist()
            assert ep.stats.overflows >= 1
            os.read(r, 1)  # read empty: select.epoll would not report it again
            seen: list[int] = []
            while n := ep.poll_into(buf, 0):
                seen += buf["data"][:n].tolist()
            assert r not in seen
            assert fds[7] in seen  # what the full batch could not hold comes next
    finally:
        os.close(r)
        os.close(w)


def test_full_cq_under_c_producer_threads_exact_accounting(eventfds) -> None:
    """C producer threads (no GIL) write while the consumer drains a 16-entry CQ: the sum of
    the counts read equals the writes, and nothing is left readable."""
    fds = eventfds(8)
    fd_array = np.array(fds, dtype=np.int32)
    threads, per_thread = 2, 20_000
    with uring_epoll.epoll(backend="uring", max_items=8) as ep:
        for fd in fds:
            ep.register(fd, ET_IN)
        buf = np.zeros(8, EVENT_DTYPE)
        buf_ptr = bench_ffi.from_buffer(buf)
        total = bench_ffi.new("uint64_t *")
        err = bench_ffi.new("int *")
        group = bench_lib.ue_producers_start(
            bench_ffi.cast("int *", bench_ffi.from_buffer(fd_array)),
            len(fds),
            threads,
            per_thread,
            1,
            0,
            err,
        )
        if group == bench_ffi.NULL:
            raise os_error(err[0], "starting the producer threads")
        written = bench_ffi.new("uint64_t *")
        try:
            deadline = time.monotonic() + 60
            while total[0] < threads * per_thread and time.monotonic() < deadline:
                n = ep.poll_into(buf, 0.05)
                if n:
                    assert len(set(buf["data"][:n].tolist())) == n
                    got = bench_lib.ue_eventfd_consume(buf_ptr, n, total)
                    if got < 0:
                        raise os_error(got, "reading a delivered eventfd")
        finally:
            if total[0] < threads * per_thread:
                bench_lib.ue_producers_stop(group)
            ret = bench_lib.ue_producers_join(group, written)
        assert ret == 0
        assert written[0] == threads * per_thread
        assert total[0] == written[0], f"{written[0] - total[0]} writes lost"
        while n := ep.poll_into(buf, 0):  # leftovers: completions whose count was taken
            assert bench_lib.ue_eventfd_consume(buf_ptr, n, total) >= 0
        assert total[0] == written[0], "a leftover event carried a count"
        for fd in fds:
            with pytest.raises(BlockingIOError):
                os.eventfd_read(fd)


# ---- stale completions ---------------------------------------------------------------------------


def test_completion_from_before_modify_is_never_delivered(efd: int) -> None:
    with uring_epoll.epoll(backend="uring") as ep:
        ep.register(efd, ET_IN, data=1)
        os.eventfd_write(efd, 1)  # a CQE of the data=1 request is in the CQ now
        ep.modify(efd, ET_IN, data=2)  # still readable: the new request reports it
        buf = np.zeros(4, EVENT_DTYPE)
        assert ep.poll_into(buf, 2) == 1
        assert (int(buf[0]["data"]), int(buf[0]["events"])) == (2, EPOLLIN)
        assert ep.poll_into(buf, 0) == 0
        assert ep.stats.stale >= 1


def test_completion_from_before_unregister_is_never_delivered(efd: int, eventfds) -> None:
    (other,) = eventfds(1)
    with uring_epoll.epoll(backend="uring", max_items=1) as ep:
        ep.register(efd, ET_IN, data=7)
        os.eventfd_write(efd, 1)
        ep.unregister(efd)
        assert ep.poll(0) == []
        # The slot goes to another registration: the old CQEs are still not its events.
        os.eventfd_write(efd, 1)
        ep.register(other, ET_IN, data=8)
        buf = np.zeros(4, EVENT_DTYPE)
        assert ep.poll_into(buf, 0) == 0
        os.eventfd_write(other, 1)
        assert ep.poll_into(buf, 2) == 1 and int(buf[0]["data"]) == 8
        assert ep.stats.stale >= 1


def test_full_object_reports_epoll_errors_before_enospc(eventfds, tmp_path) -> None:
    a, b = eventfds(2)
    with (
        open(tmp_path / "regular", "w") as regular,
        uring_epoll.epoll(backend="uring", max_items=1) as ep,
    ):
        ep.register(a, ET_IN)
        with pytest.raises(PermissionError):  # EPERM, as select.epoll says
            ep.register(regular, ET_IN)
        with pytest.raises(FileExistsError):
            ep.register(a, ET_IN)
        with pytest.raises(OSError) as info:
            ep.register(b, ET_IN)
        assert info.value.errno == errno.ENOSPC


def test_modify_to_level_triggered_and_oneshot(efd: int) -> None:
    with uring_epoll.epoll(backend="uring") as ep, select.epoll() as std:
        for e in (ep, std):
            e.register(efd, ET_IN)
        os.eventfd_write(efd, 1)
        assert ep.poll(2) == std.poll(0) == [(efd, EPOLLIN)]
        for e in (ep, std):
            e.modify(efd, EPOLLIN)  # level-triggered: reported while readable
        for _ in range(3):
            assert ep.poll(0) == std.poll(0) == [(efd, EPOLLIN)]
        for e in (ep, std):
            e.modify(efd, EPOLLIN | EPOLLONESHOT)
        assert ep.poll(0) == std.poll(0) == [(efd, EPOLLIN)]
        assert ep.poll(0) == std.poll(0) == []  # disabled until the next modify
        for e in (ep, std):
            e.modify(efd, EPOLLIN | EPOLLONESHOT)
        assert ep.poll(0) == std.poll(0) == [(efd, EPOLLIN)]


# ---- counters and views ----------------------------------------------------------------------


def test_counters(efd: int) -> None:
    r, w = os.pipe()
    try:
        with uring_epoll.epoll(backend="uring") as ep:
            ep.register(efd, ET_IN)
            ep.register(r, EPOLLIN)
            s0 = ep.stats
            # Nothing to re-arm, nothing held back: poll(0) makes no system call.
            for _ in range(5):
                assert ep.poll(0) == []
            assert ep.stats.enters == s0.enters
            # Five wake-ups of one multishot poll: five CQEs, one event.
            for _ in range(5):
                os.eventfd_write(efd, 1)
            assert ep.poll(0) == [(efd, EPOLLIN)]
            s1 = ep.stats
            assert s1.cqes - s0.cqes == 5 and s1.ring_events - s0.ring_events == 1
            assert s1.enters == s0.enters
            # A level-triggered delivery queues a re-arm; the next poll submits it.
            os.write(w, b"x")
            assert ep.poll(0) == [(r, EPOLLIN)]
            assert ep.poll(0) == [(r, EPOLLIN)]
            s2 = ep.stats
            assert s2.rearms - s1.rearms >= 2 and s2.enters > s1.enters
            os.read(r, 1)
            assert ep.poll(0) == []
            # An empty CQ and a timeout: one sleep in io_uring_enter.
            s3 = ep.stats
            assert ep.poll(0.01) == []
            s4 = ep.stats
            assert s4.sleeps >= s3.sleeps + 1 and s4.enters >= s3.enters + 1
            assert s4.ring_events == s3.ring_events
    finally:
        os.close(r)
        os.close(w)


def test_spin_before_sleeping_is_counted(efd: int) -> None:
    with uring_epoll.epoll(backend="uring", spin_us=500) as ep:
        ep.register(efd, ET_IN)
        assert ep.poll(0.02) == []
        s = ep.stats
        assert s.spins >= 1 and s.sleeps >= 1
        os.eventfd_write(efd, 1)
        assert ep.poll(1) == [(efd, EPOLLIN)]  # ready before the call: no spin needed


def test_cqes_view_is_read_only_and_shows_the_completions(efd: int) -> None:
    with uring_epoll.epoll(backend="uring", max_items=8) as ep:
        cqes = ep.cqes
        assert isinstance(cqes, np.ndarray) and cqes.dtype == abi.CQE_DTYPE
        assert abi.CQE_DTYPE.itemsize == 16
        assert not cqes.flags.writeable
        with pytest.raises(ValueError):
            cqes["res"][0] = 1
        assert ep.header is None and ep.items is None and ep.index is None
        assert ep.max_items == 8 and ep.protocol is None
        ep.register(efd, ET_IN, data=99)
        os.eventfd_write(efd, 1)
        mine = [c for c in cqes.tolist() if c[0] & 0xFFFFFFFF == 0 and c[0] >> 32]
        assert mine, "the multishot poll's completion is in the CQ"
        _, res, flags = mine[-1]
        assert res & EPOLLIN and flags & abi.IORING_CQE_F_MORE
        assert ep.poll(0) == [(efd, EPOLLIN)]


def test_fileno_is_an_epoll_readable_while_completions_wait(efd: int) -> None:
    with uring_epoll.epoll(backend="uring") as ep, select.epoll() as outer:
        outer.register(ep.fileno(), EPOLLIN)
        ep.register(efd, ET_IN)
        assert outer.poll(0) == []
        os.eventfd_write(efd, 1)
        assert outer.poll(2) == [(ep.fileno(), EPOLLIN)]
        assert ep.poll(0) == [(efd, EPOLLIN)]
        assert outer.poll(0) == []


def _reader_is_closed(w: int) -> bool:
    """True once no file is left open on the read end of the pipe *w* writes to."""
    try:
        os.write(w, b"x")
    except BrokenPipeError:
        return True
    return False


def test_poll_requests_hold_files_until_unregister_or_close() -> None:
    """A poll request holds its file: close() of a registered fd leaves the file open (unlike
    epoll) until unregister or the object's close, which removes every request even while
    a view keeps the ring mapped."""
    r, w = os.pipe()
    r2, w2 = os.pipe()
    try:
        ep = uring_epoll.epoll(backend="uring")
        ep.register(r, EPOLLIN)
        ep.register(r2, EPOLLIN)
        ep.unregister(r2)
        os.close(r2)
        assert _reader_is_closed(w2)
        view = ep.cqes
        os.close(r)
        assert not _reader_is_closed(w)  # the documented difference from epoll
        ep.close()
        assert _reader_is_closed(w)
        assert view is not None and not view.flags.writeable  # still mapped, still readable
    finally:
        os.close(w)
        os.close(w2)


def test_unknown_protocol_choice_is_value_error() -> None:
    with pytest.raises(ValueError):
        uring_epoll.epoll(backend="uring", protocol=3)


# ---- threads and fork ------------------------------------------------------------------------


def test_registration_by_a_thread_that_sleeps_or_exits_still_delivers(eventfds) -> None:
    """Completions are posted by task_work on the thread that submitted the request: one
    asleep is interrupted for it (the default setup mode), and the kernel cancels the polls
    of one that exited when they fire, which the drain re-arms."""
    sleeper_fd, gone_fd = eventfds(2)
    with uring_epoll.epoll(backend="uring") as ep:
        release = threading.Event()
        registered = threading.Event()

        def sleeper() -> None:
            ep.register(sleeper_fd, ET_IN)
            registered.set()
            release.wait(30)

        asleep = threading.Thread(target=sleeper)
        asleep.start()
        gone = threading.Thread(target=ep.register, args=(gone_fd, ET_IN))
        gone.start()
        gone.join()
        try:
            assert registered.wait(10)
            writer = threading.Timer(0.05, os.eventfd_write, (sleeper_fd, 1))
            writer.start()
            assert ep.poll(5) == [(sleeper_fd, EPOLLIN)]
            writer.join()
            os.eventfd_write(gone_fd, 1)
            assert ep.poll(5) == [(gone_fd, EPOLLIN)]
            os.eventfd_write(gone_fd, 1)  # and the re-armed poll goes on
            assert ep.poll(5) == [(gone_fd, EPOLLIN)]
        finally:
            release.set()
            asleep.join()


def test_fork_child_gets_an_error_and_a_ring_of_its_own(efd: int) -> None:
    ep = uring_epoll.epoll(backend="uring")
    try:
        ep.register(efd, ET_IN)
        view = ep.cqes
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                os.close(r)
                try:
                    ep.poll(0)
                except RuntimeError as exc:
                    code = 0 if "fork" in str(exc) else 2
                with uring_epoll.epoll(backend="uring") as mine:
                    fd = os.eventfd(1, os.EFD_NONBLOCK)
                    mine.register(fd, ET_IN)
                    if mine.poll(2) != [(fd, EPOLLIN)]:
                        code = 3
                # The parent's ring is not mapped here (MADV_DONTFORK): its range is held.
                with open("/proc/self/maps") as maps:
                    address = view.__array_interface__["data"][0]
                    for line in maps:
                        lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                        if lo <= address < hi and "io_uring" in line:
                            code = 4
                os.write(w, b"done")
            finally:
                os._exit(code)
        os.close(w)
        _, status = os.waitpid(pid, 0)
        assert os.read(r, 4) == b"done"
        os.close(r)
        assert os.waitstatus_to_exitcode(status) == 0
        os.eventfd_write(efd, 1)  # the parent's ring is untouched
        assert ep.poll(2) == [(efd, EPOLLIN)]
    finally:
        ep.close()


# ---- detection -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "disabled", "words"),
    [
        ((-errno.ENOSYS, 0), None, "has no io_uring"),
        ((-errno.EPERM, 0), "2", "io_uring_disabled = 2"),
        ((-errno.EPERM, 0), "1", "io_uring_group"),
        ((-errno.EPERM, 0), "0", "seccomp"),
        ((0, lib.UE_URING_NO_MULTISHOT), None, "multishot poll"),
        ((0, lib.UE_URING_NO_NODROP | lib.UE_URING_NO_POLL_OPS), None, "IORING_FEAT_NODROP"),
    ],
)
def test_detection_without_a_usable_io_uring(monkeypatch, capsys, raw, disabled, words) -> None:
    auto_before = probe.resolve_backend("auto")
    monkeypatch.delenv(probe.BACKEND_ENV, raising=False)
    monkeypatch.setattr(probe, "_uring_probe_raw", lambda: raw)
    monkeypatch.setattr(probe, "_io_uring_disabled", lambda: disabled)
    status = uring_epoll.backend_status()["uring"]
    assert not status.available and words in status.reason
    assert "uring" not in uring_epoll.available_backends()
    assert probe.resolve_backend("auto") == auto_before  # auto does not pick uring anyway
    with pytest.raises(OSError) as info:
        uring_epoll.epoll(backend="uring")
    assert info.value.errno == errno.ENOSYS and words in str(info.value)
    assert cli.main(["info"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.split()[:1] == ["uring"])
    assert "unavailable" in line and words in line


def test_detection_here_reports_it_available(capsys) -> None:
    assert uring_epoll.backend_status()["uring"].available
    assert cli.main(["info"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.split()[:1] == ["uring"])
    assert line.split()[1] == "available"


@pytest.fixture
def efd() -> Iterator[int]:
    fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    yield fd
    try:
        os.close(fd)
    except OSError:
        pass


def test_a_pri_only_wakeup_is_not_seen_by_io_uring() -> None:
    """A known io_uring limit, kept visible: io_poll_wake() ignores a wake-up whose key holds
    only EPOLLPRI (it masks IO_ASYNC_POLL_COMMON, ONESHOT|PRI, out of the match), so a poll
    request misses it, where epoll reports it. A kernel vpoll raising PRI alone wakes with
    exactly that key; the PRI shows with the next wake-up that has another bit. If a kernel
    ever changes this, this test fails and the README's note can go."""
    from uring_epoll.vpoll import VPoll, implementation_status

    kernel_forms = [
        impl for impl in ("eventfd", "device") if implementation_status()[impl].available
    ]
    if not kernel_forms:
        pytest.skip("needs a kernel vpoll (EFD_VPOLL or /dev/vpoll): the patched kernel")
    pri = select.EPOLLPRI
    for impl in kernel_forms:
        with VPoll(0, impl) as source, uring_epoll.epoll(backend="uring") as ours:
            std = select.epoll()
            try:
                for ep in (ours, std):
                    ep.register(source, EPOLLIN | pri | select.EPOLLOUT)
                source.add(pri)
                assert std.poll(0) == [(source.fileno(), pri)]
                assert ours.poll(0.2) == [], impl
                source.add(EPOLLIN)
                assert ours.poll(2) == [(source.fileno(), EPOLLIN | pri)], impl
            finally:
                std.close()
