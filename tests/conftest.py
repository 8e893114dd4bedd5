"""Shared pytest configuration: check which uring_epoll is under test, and say which backends
and kernel this run exercises."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

#: Set by .ci/run: the suite must test the installed wheel, not a source tree on sys.path.
INSTALLED_ENV = "URING_EPOLL_TEST_INSTALLED"

# Child interpreters the tests start (``python -m uring_epoll.cli``, in-kernel pytest runs)
# often have the checkout as their working directory, and ``-m``/``-c`` would put it first on
# sys.path: after `pip install .` that is a source tree without the compiled modules, not the
# package under test. Python 3.11's safe-path mode leaves the working directory out.
os.environ["PYTHONSAFEPATH"] = "1"


def _problem_with_package_under_test() -> str | None:
    """Why the run must stop before collection, or None. It must when the ``uring_epoll`` on
    sys.path cannot be the one meant: a source tree whose C extension was never built (every
    test would fail with an ImportError of ``uring_epoll._native``), or, in CI, anything but
    the installed copy."""
    spec = importlib.util.find_spec("uring_epoll")
    if spec is None or not spec.submodule_search_locations:
        return "uring_epoll is not importable: install it first (`python -m pip install '.[test]'`)"
    package_dir = Path(next(iter(spec.submodule_search_locations))).resolve()
    # Looked up by file name: importing uring_epoll._native would import the package first,
    # which fails on that very module with a less helpful ImportError.
    native = [package_dir / f"_native{suffix}" for suffix in importlib.machinery.EXTENSION_SUFFIXES]
    if not any(path.is_file() for path in native):
        return (
            f"uring_epoll at {package_dir} has no compiled _native module: it is a source tree "
            "that was never built. Install the package (`python -m pip install '.[test]'`, or "
            "`python -m pip install -e '.[test]'` for development) and run pytest again."
        )
    if os.environ.get(INSTALLED_ENV) == "1":
        site_dirs = {
            Path(p).resolve()
            for key in ("purelib", "platlib")
            if (p := sysconfig.get_paths().get(key))
        }
        if not any(package_dir.is_relative_to(d) for d in site_dirs):
            return (
                f"{INSTALLED_ENV}=1 but the uring_epoll under test is {package_dir}, not the "
                f"copy installed in {', '.join(map(str, sorted(site_dirs)))} for "
                f"{sys.executable}: run pytest from outside the source tree"
            )
    return None


def pytest_configure(config: pytest.Config) -> None:
    # Before any test module (all of which import uring_epoll) is collected.
    problem = _problem_with_package_under_test()
    if problem is not None:
        raise pytest.UsageError(problem)


def pytest_report_header(config: pytest.Config) -> list[str]:
    import uring_epoll

    statuses = uring_epoll.backend_status()
    lines = [
        f"kernel: {os.uname().release}",
        f"uring_epoll under test: {Path(uring_epoll.__file__).resolve().parent}",
    ]
    for status in statuses.values():
        lines.append(
            f"backend {status.name}: "
            + ("available" if status.available else f"unavailable ({status.reason})")
        )
    if os.environ.get("URING_EPOLL_IN_UML"):
        lines.append("running inside the patched User-Mode Linux kernel")
    return lines


@pytest.fixture
def eventfds() -> Iterator[Callable[[int], list[int]]]:
    """A factory of non-blocking eventfds, all closed after the test (those it closed itself
    are skipped)."""
    made: list[int] = []

    def make(n: int) -> list[int]:
        fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(n)]
        made.extend(fds)
        return fds

    yield make
    for fd in made:
        try:
            os.close(fd)
        except OSError:
            pass
