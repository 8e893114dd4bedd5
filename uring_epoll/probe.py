"""Which backends work on this kernel, decided without ever guessing a syscall number.

The RFC's own numbers (336, 428, 437) belong to other syscalls on today's kernels, so calling
one to "see if it works" could do something else entirely. The patched kernel announces its
``epoll_create2`` number in a read-only sysctl; we call the syscall only when that file exists
and holds exactly the number this package was built for.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from . import abi

BACKEND_ENV = "URING_EPOLL_BACKEND"
BACKENDS = ("kernel", "thread", "uring", "epoll")

#: The sysctl that disables io_uring (Linux 6.6+): 0 allowed, 1 only for io_uring_group, 2 off.
IO_URING_DISABLED_SYSCTL = "/proc/sys/kernel/io_uring_disabled"


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


_uring_probed: tuple[int, int] | None = None


def _uring_probe_raw() -> tuple[int, int]:
    """``(io_uring_setup result, missing features)`` from ``lib.ue_uring_probe``, once per
    process: 0 and the ``UE_URING_NO_*`` bits this kernel's io_uring lacks, or -errno."""
    global _uring_probed
    if _uring_probed is None:
        from ._native_lib import ffi, lib

        missing = ffi.new("uint32_t *")
        ret = int(lib.ue_uring_probe(missing))
        _uring_probed = (ret, int(missing[0]))
    return _uring_probed


def _io_uring_disabled() -> str | None:
    try:
        with open(IO_URING_DISABLED_SYSCTL) as f:
            return f.read().strip()
    except OSError:
        return None


def uring_status() -> tuple[bool, str]:
    """``(True, "")`` if io_uring here has what the uring backend needs, else ``(False, why)``.

    Decided by what the kernel says, never by its version: io_uring_setup's error (ENOSYS: no
    io_uring; EPERM: disabled by sysctl, seccomp or an LSM), its feature bits and the opcodes
    IORING_REGISTER_PROBE reports.
    """
    try:
        ret, missing = _uring_probe_raw()
    except ImportError as exc:
        return False, str(exc)
    release = os.uname().release
    if ret == -errno.ENOSYS:
        return False, f"kernel {release} has no io_uring (io_uring_setup: ENOSYS)"
    if ret == -errno.EPERM:
        disabled = _io_uring_disabled()
        if disabled == "2":
            return False, f"io_uring is disabled ({IO_URING_DISABLED_SYSCTL} = 2)"
        if disabled == "1":
            return False, (
                f"io_uring is limited to the io_uring_group ({IO_URING_DISABLED_SYSCTL} = 1) "
                "and this process is not in it"
            )
        return False, "io_uring_setup refused with EPERM (a seccomp filter or security module)"
    if ret < 0:
        return False, f"io_uring_setup failed: {os.strerror(-ret)}"
    from ._native_lib import lib

    lacks = [
        text
        for bit, text in (
            (lib.UE_URING_NO_POLL_OPS, "IORING_OP_POLL_ADD/POLL_REMOVE"),
            (lib.UE_URING_NO_MULTISHOT, "multishot poll (Linux 5.13)"),
            (lib.UE_URING_NO_NODROP, "IORING_FEAT_NODROP"),
            (lib.UE_URING_NO_EXT_ARG, "IORING_FEAT_EXT_ARG"),
        )
        if missing & bit
    ]
    if lacks:
        return False, f"io_uring of kernel {release} lacks {', '.join(lacks)}"
    return True, ""


def backend_status() -> dict[str, BackendStatus]:
    """Status of every backend on this machine, in preference order."""
    number, why = kernel_userpoll_syscall()
    statuses = {"kernel": BackendStatus("kernel", number is not None, why)}
    try:
        from . import _native_lib  # noqa: F401

        statuses["thread"] = BackendStatus("thread", True, "")
    except ImportError as exc:
        statuses["thread"] = BackendStatus("thread", False, str(exc))
    available, why = uring_status()
    statuses["uring"] = BackendStatus("uring", available, why)
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
