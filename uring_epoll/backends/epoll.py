"""The ``epoll`` backend: plain ``epoll_wait``, no ring. The fallback and the baseline."""

from __future__ import annotations

import select

from .._native_lib import ffi, lib
from .base import EpfdBackend


class EpollBackend(EpfdBackend):
    """A ``select.epoll`` underneath; ``poll_into`` calls ``epoll_wait`` from C."""

    name = "epoll"

    def __init__(self, *, cloexec: bool = True, epfd: int | None = None) -> None:
        self.ep = select.epoll() if epfd is None else select.epoll.fromfd(epfd)
        self.epfd = self.ep.fileno()
        # The same consumer struct as the ring backends, in "no ring" mode: poll_into then
        # runs epoll_wait straight into the caller's buffer through the same entry point.
        self.consumer = ffi.new("struct ue_consumer *")
        lib.ue_consumer_init_epoll(self.consumer, self.epfd)
        self.memory = (self.consumer,)

    def close(self) -> None:
        lib.ue_consumer_close(self.consumer)
        self.ep.close()
