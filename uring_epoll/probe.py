"""Which backends work on this kernel, decided without ever guessing a syscall number.

The RFC's own numbers (336, 428, 437) belong to other syscalls on today's kernels, so calling
one to "see if it works" could do something else entirely. The patched kernel announces its
``epoll_create2`` number in a read-only sysctl; we call the syscall only when that file exists
and holds exactly the number this package was built for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from . import abi

BACKEND_ENV = "URING_EPOLL_BACKEND"
BACKENDS = ("kernel", "thread", "epoll")


@dataclass(frozen=True)
class BackendStatus:
    """Whether a backend can be used here, and why not when it cannot."""

    name: str
    available: bool
    reason: str


def kernel_userpoll_syscall() -> tuple[int | None, str]:
    """``(number, "")`` if the running kernel has our EPOLL_USERPOLL, else ``(None, why)``."""
    try:
        with open(abi.USERPOLL_SYSCTL) as f:
            text = f.read().strip()
    except FileNotFoundError:
        release = os.uname().release
        return None, f"kernel {release} has no EPOLL_USERPOLL ({abi.USERPOLL_SYSCTL} missing)"
    except OSError as exc:
        return None, f"cannot read {abi.USERPOLL_SYSCTL}: {exc.strerror}"
    try:
        number = int(text)
    except ValueError:
        return None, f"{abi.USERPOLL_SYSCTL} holds {text!r}, not a syscall number"
    if number != abi.NR_EPOLL_CREATE2:
        return None, (
            f"kernel announces epoll_create2 as syscall {number}, this package speaks "
            f"{abi.NR_EPOLL_CREATE2}: rebuild one of them"
        )
    return number, ""


def backend_status() -> dict[str, BackendStatus]:
    """Status of every backend on this machine, in preference order."""
    number, why = kernel_userpoll_syscall()
    statuses = {"kernel": BackendStatus("kernel", number is not None, why)}
    try:
        from . import _native_lib  # noqa: F401

        statuses["thread"] = BackendStatus("thread", True, "")
    except ImportError as exc:
        statuses["thread"] = BackendStatus("thread", False, str(exc))
    statuses["epoll"] = BackendStatus("epoll", True, "")
    return statuses


def available_backends() -> list[str]:
    """Names of the backends that work here, best first."""
    return [s.name for s in backend_status().values() if s.available]


def resolve_backend(name: str | None) -> str:
    """Turn ``None``/``"auto"`` (or the environment override) into a concrete backend name."""
    if name is None:
        name = os.environ.get(BACKEND_ENV) or "auto"
    if name == "auto":
        number, _ = kernel_userpoll_syscall()
        return "kernel" if number is not None else "thread"
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of auto, {', '.join(BACKENDS)}")
    return name
