"""Runtime side of the native layer: load the cffi module, refuse a stale build, map errors.

The declarations live in ``csrc/ue.h``, which ``_native_build.py`` hands to cffi; this module
is what the rest of the package imports (the cryptography split between ``_cffi_src`` and
``bindings``). Benchmark and load-test C code is a separate module: see ``_bench_lib``.
"""

from __future__ import annotations

import os

#: Must equal UE_NATIVE_VERSION in csrc/ue.h; a mismatch means the compiled module is older
#: (or newer) than the Python code calling it.
EXPECTED_NATIVE_VERSION = 13

try:
    from uring_epoll._native import ffi, lib
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "uring_epoll's native module is missing; install the package with `pip install .` "
        "(it compiles the module with cffi)"
    ) from exc

if lib.UE_NATIVE_VERSION != EXPECTED_NATIVE_VERSION:  # pragma: no cover
    raise ImportError(
        f"stale uring_epoll native build: the module has interface version "
        f"{lib.UE_NATIVE_VERSION}, this Python code needs {EXPECTED_NATIVE_VERSION}; "
        "rebuild with `pip install .`"
    )

NULL = ffi.NULL


def os_error(neg_errno: int, what: str = "") -> OSError:
    """An OSError (of the stdlib's subclass for that errno) from a ``-errno`` result."""
    code = -neg_errno
    message = os.strerror(code)
    # Same message as the stdlib's own errors ("[Errno 17] File exists") unless we know more.
    return OSError(code, f"{message} ({what})" if what else message)


def check(result: int, what: str = "") -> int:
    """Return *result* if non-negative, else raise the matching OSError."""
    if result < 0:
        raise os_error(result, what)
    return result


__all__ = ["NULL", "check", "ffi", "lib", "os_error"]
