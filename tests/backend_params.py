"""Which backends the parametrised tests run on, and the UML scaling knobs.

Inside the patched User-Mode Linux (``URING_EPOLL_REQUIRE_KERNEL=1``) the kernel backend must
be available: a missing one fails the run instead of quietly testing less.
"""

from __future__ import annotations

import os

import pytest

import uring_epoll

IN_UML = bool(os.environ.get("URING_EPOLL_IN_UML"))
REQUIRE_KERNEL = bool(os.environ.get("URING_EPOLL_REQUIRE_KERNEL"))
#: System calls cost ~60x more inside User-Mode Linux: load tests shrink by this factor there.
LOAD_SCALE = 50 if IN_UML else 1


def available() -> list[str]:
    names = uring_epoll.available_backends()
    if REQUIRE_KERNEL and "kernel" not in names:
        reason = uring_epoll.backend_status()["kernel"].reason
        raise RuntimeError(f"the kernel backend must be available here: {reason}")
    return names


ALL = available()
RINGS = [b for b in ALL if b != "epoll"]

all_backends = pytest.mark.parametrize("backend", ALL)
ring_backends = pytest.mark.parametrize("backend", RINGS)
