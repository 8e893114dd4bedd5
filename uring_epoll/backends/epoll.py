"""The ``epoll`` backend: plain ``epoll_wait``, no ring. The fallback and the baseline."""

from __future__ import annotations

import select
from collections.abc import Callable
from typing import Any

from .._native_lib import ffi, lib
from .base import EpfdBackend, closed_error


class EpollBackend(EpfdBackend):
    """A ``select.epoll`` underneath; ``poll_into`` calls ``epoll_wait`` from C."""

    name = "epoll"
    max_items = None
    protocol = None

    def __init__(self, *, cloexec: bool = True, epfd: int | None = None) -> None:
        self.ep: select.epoll | None = select.epoll() if epfd is None else select.epoll.fromfd(epfd)
        self.epfd = self.ep.fileno()
        # The same consumer struct as the ring backends, in "no ring" mode: poll_into then
        # runs epoll_wait straight into the caller's buffer through the same entry point.
        consumer = ffi.new("struct ue_consumer *")
        lib.ue_consumer_init_epoll(consumer, self.epfd)
        self._memory: tuple[Any, ...] = (consumer,)

    @property
    def memory(self) -> tuple[Any, ...]:
        if not self._memory:
            raise closed_error()
        return self._memory

    @property
    def poll_pairs(self) -> Callable[[Any, int], list[tuple[int, int]]] | None:
        if self.ep is None:
            raise closed_error()
        return self.ep.poll

    def close(self) -> None:
        if self._memory:
            lib.ue_consumer_close(self._memory[0])
            self._memory = ()
        if self.ep is not None:
            self.ep.close()
            self.ep = None
        self.epfd = -1
