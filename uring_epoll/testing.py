"""Hooks for tests and benchmarks: feed and flush an epoll object's producer directly.

These reach below the ``select.epoll`` surface on purpose, to make a ring hold a known batch
without going through files, or to make the emulator's asynchronous producer deterministic.
Only the ``thread`` backend has a producer of its own to drive; where the kernel (or plain
``epoll_wait``) produces, events are published inside the waker's system call already.
"""

from __future__ import annotations

from typing import Any

from ._epoll import epoll
from .backends.thread import ThreadBackend


def _thread_backend(ep: epoll, what: str) -> ThreadBackend:
    if not isinstance(ep, epoll):
        raise TypeError(f"expected a uring_epoll.epoll, got {type(ep).__name__}")
    ep._check_open()
    backend = ep._backend
    if not isinstance(backend, ThreadBackend):
        raise TypeError(
            f"{what} needs the thread backend's userspace producer; this epoll object uses "
            f"the {ep.backend!r} backend, where the kernel publishes"
        )
    return backend


def inject(ep: epoll, fd: int, events: int) -> None:
    """Publish *events* for the registered *fd* into *ep*'s ring, as the producer would on a
    wake-up, without touching the file: for filling a ring with an exact batch cheaply
    (benchmarks of the drain) or with events its file does not have.

    Thread backend only (TypeError otherwise: the kernel publishes only what files report).
    OSError(ENOENT) if *fd* is not registered.
    """
    _thread_backend(ep, "inject()").inject(fd, events)


def sync(ep: epoll) -> None:
    """Return once every event already raised on *ep*'s files is in its ring.

    The kernel (and ``epoll_wait``) publish inside the waker's system call, so this is a
    no-op on the ``kernel`` and ``epoll`` backends. The thread backend's poller publishes a
    few microseconds later; this publishes what it has not yet, from the calling thread
    (and ``ep.fileno()`` polls readable when it returns, if anything is in the ring).
    Call it before comparing one ``poll(0)`` batch with another epoll's.
    """
    if not isinstance(ep, epoll):
        raise TypeError(f"expected a uring_epoll.epoll, got {type(ep).__name__}")
    ep._check_open()
    backend = ep._backend
    if isinstance(backend, ThreadBackend):
        backend.sync()


def emulator(ep: epoll) -> Any:
    """The ``struct ue_emu *`` (a cffi pointer) of *ep*'s userspace producer, for C injector
    threads that publish straight into the ring (``ue_producers_start_inject`` and the like).

    It stays valid only while *ep* is open. Thread backend only (TypeError otherwise).
    """
    return _thread_backend(ep, "emulator()").emu


__all__ = ["emulator", "inject", "sync"]
