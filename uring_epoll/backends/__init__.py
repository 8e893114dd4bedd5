"""Backends of :class:`uring_epoll.epoll`, one module each, behind one small interface.

- ``kernel``: the patched kernel's EPOLL_USERPOLL (``epoll_create2``, mmap, ESTALE).
- ``thread``: any kernel; a C poller thread fills the same ring in anonymous memory.
- ``uring``: io_uring poll requests (Linux 5.13 and later), no helper thread.
- ``epoll``: plain ``epoll_wait``, no ring: the fallback and the baseline.
"""

from __future__ import annotations

from .base import Backend, RingBackend


def create(
    name: str, *, max_items: int, protocol: int, spin_ns: int, cloexec: bool = True
) -> Backend:
    """Create the backend called *name* (already resolved, never ``"auto"``)."""
    if name == "kernel":
        from .kernel import KernelBackend

        return KernelBackend(max_items=max_items, protocol=protocol, spin_ns=spin_ns)
    if name == "thread":
        from .thread import ThreadBackend

        return ThreadBackend(max_items=max_items, protocol=protocol, spin_ns=spin_ns)
    if name == "uring":
        from .uring import UringBackend

        return UringBackend(max_items=max_items, protocol=protocol, spin_ns=spin_ns)
    if name == "epoll":
        from .epoll import EpollBackend

        return EpollBackend(cloexec=cloexec)
    raise ValueError(f"unknown backend {name!r}")


__all__ = ["Backend", "RingBackend", "create"]
