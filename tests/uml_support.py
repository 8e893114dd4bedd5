"""Helpers for tests that boot the project's User-Mode Linux kernel.

Policy: building the kernel needs apt (for the source and tools) or an installed source tarball.
Outside CI a machine that cannot build skips these tests with the reason; in CI (``CI=true``)
the same situation is a failure, because there the kernel tests are the point.

Inside the kernel (a nested ``pytest -m "not uml"`` run) nothing here may boot another kernel:
:func:`kernel` skips unconditionally there, which also covers someone running ``-m uml`` inside.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

import uring_epoll
from uring_epoll.kernel import (
    IN_UML_ENV,
    UML,
    KernelBuild,
    KernelBuildError,
    KernelCompletedProcess,
    KernelRunError,
    KernelSourceError,
    build,
    is_inside_uml,
    run_capture,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
#: The directory holding the uring_epoll under test (site-packages for an installed wheel, the
#: checkout for an editable one): what a child interpreter needs on PYTHONPATH to import it.
PACKAGE_PARENT = Path(uring_epoll.__file__).resolve().parent.parent


def child_pythonpath() -> str:
    """PYTHONPATH for a child interpreter: the package under test first, then the caller's."""
    return os.pathsep.join(filter(None, [str(PACKAGE_PARENT), os.environ.get("PYTHONPATH")]))


_kernel: KernelBuild | None = None
_error: KernelBuildError | None = None


def in_ci() -> bool:
    """True in CI, where kernel tests must run and never skip."""
    return os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> None:
    """Skip (developer machine) or fail (CI) because the kernel cannot be had."""
    if in_ci():
        pytest.fail(f"CI=true and the UML kernel is unavailable: {reason}", pytrace=False)
    pytest.skip(reason)


def kernel() -> KernelBuild:
    """The built kernel, built on first use and cached for the rest of the session.

    A build failure is remembered, so one broken build is reported once per test rather than
    rebuilt (for four minutes) by every test that asks.
    """
    global _kernel, _error
    if is_inside_uml():
        pytest.skip("already inside User-Mode Linux: not booting a kernel inside the kernel")
    if _kernel is None and _error is None:
        try:
            _kernel = build(UML, progress=sys.stderr)
        except KernelBuildError as exc:
            _error = exc
    if _kernel is None:
        if isinstance(_error, KernelSourceError):
            unavailable(f"cannot build the UML kernel here: {_error}")
        # A patch that does not apply or a compile error is a real failure everywhere.
        pytest.fail(f"kernel build failed: {_error}", pytrace=False)
    return _kernel


def run_in_kernel(
    argv: Sequence[str | os.PathLike[str]],
    timeout: float = 300.0,
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    extra_env: Mapping[str, str] | None = None,
    check_kernel: bool = True,
) -> KernelCompletedProcess:
    """Run ``argv`` inside the kernel with stdout/stderr captured (``subprocess.run``-like).

    ``cwd`` defaults to the repository root; ``extra_env`` is added to the environment (the
    caller's, or ``env``). The output is also echoed so a failing test shows it. With
    ``check_kernel`` an oops/WARN/BUG on the kernel console fails the test even if the command
    succeeded: that is a bug in the kernel under test. A panic or hang fails it too.
    """
    k = kernel()
    full_env = dict(os.environ if env is None else env)
    full_env.update(extra_env or {})
    try:
        result = run_capture(
            argv, timeout=timeout, kernel=k, env=full_env, cwd=REPO_ROOT if cwd is None else cwd
        )
    except KernelRunError as exc:  # KernelTimeout included
        pytest.fail(str(exc), pytrace=False)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    if check_kernel and result.kernel_problems:
        pytest.fail(
            f"the kernel reported a problem while running {list(map(str, argv))}:\n"
            f"{result.kernel_problems}",
            pytrace=False,
        )
    return result


def uring_epoll_cli(*args: str, timeout: float = 300.0) -> KernelCompletedProcess:
    """``uring-epoll ARGS`` inside the kernel, e.g. ``uring_epoll_cli("info")``."""
    return run_in_kernel(
        [sys.executable, "-m", "uring_epoll.cli", *args],
        timeout=timeout,
        extra_env={IN_UML_ENV: "1"},
    )
