"""uring_epoll: consume epoll readiness through the EPOLL_USERPOLL shared ring.

``uring_epoll.epoll`` is a drop-in for ``select.epoll`` whose events come from a ring shared
with the producer (the patched kernel, or a userspace emulation of it on stock kernels), so
a busy loop drains events without a system call.
"""

from __future__ import annotations

from . import abi, vpoll
from ._epoll import PollStats, epoll
from .abi import (
    EPOLL_CLOEXEC,
    EPOLLERR,
    EPOLLET,
    EPOLLEXCLUSIVE,
    EPOLLHUP,
    EPOLLIN,
    EPOLLMSG,
    EPOLLONESHOT,
    EPOLLOUT,
    EPOLLPRI,
    EPOLLRDBAND,
    EPOLLRDHUP,
    EPOLLRDNORM,
    EPOLLREMOVED,
    EPOLLWRBAND,
    EPOLLWRNORM,
    EVENT_DTYPE,
    HEADER_DTYPE,
    INDEX_DTYPE,
    ITEM_DTYPE,
)
from .probe import available_backends, backend_status

__version__ = "0.1.0"

__all__ = [
    "EPOLLERR",
    "EPOLLET",
    "EPOLLEXCLUSIVE",
    "EPOLLHUP",
    "EPOLLIN",
    "EPOLLMSG",
    "EPOLLONESHOT",
    "EPOLLOUT",
    "EPOLLPRI",
    "EPOLLRDBAND",
    "EPOLLRDHUP",
    "EPOLLRDNORM",
    "EPOLLREMOVED",
    "EPOLLWRBAND",
    "EPOLLWRNORM",
    "EPOLL_CLOEXEC",
    "EVENT_DTYPE",
    "HEADER_DTYPE",
    "INDEX_DTYPE",
    "ITEM_DTYPE",
    "PollStats",
    "abi",
    "available_backends",
    "backend_status",
    "epoll",
    "vpoll",
]
