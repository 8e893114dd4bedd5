"""Random register/modify/unregister/produce/consume sequences: the ring backends report
exactly what select.epoll reports on the same fds.

The RFC's ring accumulates readiness bits until the consumer takes them, where epoll_wait
re-polls each file when it delivers. So "consume" here is the natural event loop: poll both
(timeout 0), then drain exactly the fds reported; "produce" writes at any time. Under that
model the two must agree step by step, for ET, LT, ONESHOT and ET|ONESHOT registrations.
On the thread backend the producer is a thread that publishes a few microseconds after the
write; the test lets it catch up (``sync``) before each poll, where the kernel has already
published inside write(). Batches are then compared exactly.
"""

from __future__ import annotations

import os
import select

from backend_params import LOAD_SCALE, RINGS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import uring_epoll
from uring_epoll import EPOLLET, EPOLLIN, EPOLLONESHOT

NFDS = 4
MASKS = [EPOLLIN, EPOLLIN | EPOLLET, EPOLLIN | EPOLLONESHOT, EPOLLIN | EPOLLET | EPOLLONESHOT]

op = st.one_of(
    st.tuples(st.just("register"), st.integers(0, NFDS - 1), st.sampled_from(MASKS)),
    st.tuples(st.just("modify"), st.integers(0, NFDS - 1), st.sampled_from(MASKS)),
    st.tuples(st.just("unregister"), st.integers(0, NFDS - 1), st.just(0)),
    st.tuples(st.just("produce"), st.integers(0, NFDS - 1), st.just(0)),
    st.tuples(st.just("poll"), st.just(0), st.just(0)),
)


def catch_up(ep: uring_epoll.epoll) -> None:
    sync = getattr(ep._backend, "sync", None)
    if sync is not None:
        sync()


def run_sequence(backend: str, ops: list[tuple[str, int, int]]) -> None:
    fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(NFDS)]
    ours = uring_epoll.epoll(backend=backend, max_items=NFDS)
    std = select.epoll()
    try:
        for step, (name, i, mask) in enumerate(ops):
            fd = fds[i]
            if name in ("register", "modify", "unregister"):
                outcomes = []
                for ep in (std, ours):
                    try:
                        getattr(ep, name)(fd, *([mask] if name != "unregister" else []))
                        outcomes.append(None)
                    except OSError as exc:
                        outcomes.append(type(exc))
                assert outcomes[0] == outcomes[1], (step, name, outcomes)
            elif name == "produce":
                os.eventfd_write(fd, 1)
            else:
                catch_up(ours)
                expected = sorted(std.poll(0))
                got = sorted(ours.poll(0))
                assert got == expected, (step, ops[: step + 1])
                for reported, _ in expected:
                    try:
                        os.eventfd_read(reported)
                    except BlockingIOError:
                        pass
        catch_up(ours)
        assert sorted(ours.poll(0)) == sorted(std.poll(0))
    finally:
        ours.close()
        std.close()
        for fd in fds:
            os.close(fd)


def make_test(backend: str):
    @settings(max_examples=max(10, 60 // LOAD_SCALE), deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(op, min_size=1, max_size=25))
    def test(ops: list[tuple[str, int, int]]) -> None:
        run_sequence(backend, ops)

    test.__name__ = f"test_parity_with_select_epoll_{backend}"
    return test


for _backend in RINGS:
    globals()[f"test_parity_with_select_epoll_{_backend}"] = make_test(_backend)


def test_known_sequence_lt_oneshot_et() -> None:
    """A fixed sequence covering every mask, so a failure is easy to read."""
    ops = [("register", 0, EPOLLIN), ("register", 1, EPOLLIN | EPOLLET),
           ("register", 2, EPOLLIN | EPOLLONESHOT), ("produce", 0, 0), ("produce", 1, 0),
           ("produce", 2, 0), ("poll", 0, 0), ("produce", 2, 0), ("poll", 0, 0),
           ("modify", 2, EPOLLIN | EPOLLONESHOT), ("produce", 1, 0), ("unregister", 1, 0),
           ("poll", 0, 0), ("poll", 0, 0)]
    for backend in RINGS:
        run_sequence(backend, ops)
