"""Runtime side of the native layer: load the cffi module, refuse a stale build, map errors.

The declarations live in ``csrc/ue.h``, which ``_native_build.py`` hands to cffi; this module
is what the rest of the package imports (the cryptography split between ``_cffi_src`` and
``bindings``). Benchmark and load-test C code is a separate module: see ``_bench_lib``.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

#: Must equal UE_NATIVE_VERSION in csrc/ue.h; a mismatch means the compiled module is older
#: (or newer) than the Python code calling it.
EXPECTED_NATIVE_VERSION = 21


def load_module(name: str, version_constant: str, expected: int) -> Any:
    """Import the compiled cffi module ``uring_epoll.<name>`` and check its interface version.

    A missing module means the package was not built (a source tree on ``sys.path``); a
    version other than *expected* means the compiled module and the Python code come from
    different builds. Both are an ImportError that says to reinstall.
    """
    try:
        module = importlib.import_module(f"uring_epoll.{name}")
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            f"uring_epoll's compiled module {name} is missing; install the package with "
            "`pip install .` (it compiles the module with cffi)"
        ) from exc
    found = getattr(module.lib, version_constant)
    if found != expected:  # pragma: no cover
        raise ImportError(
            f"stale uring_epoll build: {name} has interface version {found} "
            f"({version_constant}), this Python code needs {expected}; "
            "rebuild with `pip install .`"
        )
    return module


_native = load_module("_native", "UE_NATIVE_VERSION", EXPECTED_NATIVE_VERSION)
ffi: Any = _native.ffi
lib: Any = _native.lib
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


__all__ = ["NULL", "check", "ffi", "lib", "load_module", "os_error"]
