"""Which backends the parametrised tests in test_abi/test_ring_drain/test_epoll_api/test_parity/
test_load run on, and how big the load is.

- Every backend ``uring_epoll.available_backends()`` reports is tested ("thread" and "epoll" on
  any kernel, "uring" where io_uring has multishot poll, "kernel" inside the patched
  User-Mode Linux). ``ring_backends`` are all but "epoll"; ``userpoll_backends`` those with
  an EPOLL_USERPOLL ring to look at (not "uring", whose ring is io_uring's CQ).
- ``URING_EPOLL_REQUIRE_KERNEL=1``: "kernel" is put in the list even when the probe says it is
  unavailable, so every kernel-parametrised test *fails* (with the probe's reason) instead of
  the run quietly testing less; ``test_abi.py::test_required_kernel_backend_is_available``
  fails on its own as well.
- ``URING_EPOLL_IN_UML=1``: system calls cost ~60x more, so load sizes shrink by
  :data:`LOAD_SCALE` (the assertions stay the same).
- ``URING_EPOLL_IN_VM=1``: inside the x86_64 VM vehicle, where QEMU emulates the CPUs (Python
  runs ~10-20x slower than on the host) under a lockdep+KASAN kernel: loads shrink by 20.
- ``URING_EPOLL_LOAD_SCALE=N`` overrides the divisor; ``URING_EPOLL_TEST_BACKENDS=a,b`` limits
  the parametrised tests to those backends (the VM run tests the kernel backend only: the
  others are the host's business).
"""

from __future__ import annotations

import os

import pytest

import uring_epoll

IN_UML = os.environ.get("URING_EPOLL_IN_UML", "") not in ("", "0")
IN_VM = os.environ.get("URING_EPOLL_IN_VM", "") not in ("", "0")
REQUIRE_KERNEL = os.environ.get("URING_EPOLL_REQUIRE_KERNEL", "") not in ("", "0")
#: Divide load sizes by this inside a kernel vehicle (see above).
LOAD_SCALE = int(os.environ.get("URING_EPOLL_LOAD_SCALE") or (50 if IN_UML else 20 if IN_VM else 1))

AVAILABLE: list[str] = uring_epoll.available_backends()


def _with_required(names: list[str]) -> list[str]:
    if REQUIRE_KERNEL and "kernel" not in names:
        names = ["kernel", *names]
    only = os.environ.get("URING_EPOLL_TEST_BACKENDS", "").strip()
    if only:
        names = [name for name in names if name in only.split(",")]
    return list(names)


#: Every backend to test, best first.
ALL: list[str] = _with_required(AVAILABLE)
#: The backends drained from a ring by C (everything but "epoll"): the io_uring CQ included.
RINGS: list[str] = [name for name in ALL if name != "epoll"]
#: The backends with an EPOLL_USERPOLL ring (header, items, index views): not "uring".
USERPOLL: list[str] = [name for name in RINGS if name != "uring"]

all_backends = pytest.mark.parametrize("backend", ALL)
ring_backends = pytest.mark.parametrize("backend", RINGS)
userpoll_backends = pytest.mark.parametrize("backend", USERPOLL)


def scaled(n: int, minimum: int = 1) -> int:
    """*n* divided by :data:`LOAD_SCALE`, at least *minimum*."""
    return max(minimum, n // LOAD_SCALE)


def kernel_missing_reason() -> str:
    return uring_epoll.backend_status()["kernel"].reason
