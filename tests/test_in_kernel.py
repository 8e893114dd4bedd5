"""Everything that needs the patched kernel, run inside it from the normal host test run.

Each check is its own test so the report names what ran: the package's suite inside the kernel
(``pytest -m "not uml and not vm"`` with the kernel backend required), each C selftest of the epoll
selftest directory, and the CLI. Inside UML these tests skip (``uml_support.kernel``), so the
nested run cannot recurse even without ``-m "not uml"``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from uring_epoll.kernel import (
    IN_UML_ENV,
    SELFTEST_DIR,
    KernelBuildError,
    compile_selftest,
    pytest_command,
    read_series,
    selftest_sources,
    selftest_verdict,
)

try:
    import uml_support
except ImportError:  # tests/ imported as a package
    from tests import uml_support

pytestmark = pytest.mark.uml

SELFTEST_PREFIX = SELFTEST_DIR.as_posix() + "/"
# Shipped with 6.1 itself; the series adds its own next to it.
STOCK_SELFTESTS = ("epoll_wakeup_test.c",)


def _selftests_of_series() -> list[str]:
    """Selftest sources the series creates, read from the patches (no build at collection)."""
    names = set(STOCK_SELFTESTS)
    try:
        entries = read_series()
    except KernelBuildError:
        return sorted(names)  # reported by the build itself
    pattern = re.compile(r"^\+\+\+ b/" + re.escape(SELFTEST_PREFIX) + r"([^/\s]+\.c)\s*$", re.M)
    for entry in entries:
        names.update(pattern.findall(entry.path.read_text(errors="replace")))
    return sorted(names)


SELFTESTS = _selftests_of_series()


def test_kernel_is_uml() -> None:
    result = uml_support.run_in_kernel(
        [
            sys.executable,
            "-c",
            "from uring_epoll.kernel import is_inside_uml; print(is_inside_uml())",
        ],
        timeout=120,
    )
    assert result.returncode == 0 and result.stdout.strip() == "True"


def test_package_suite_inside_kernel(tmp_path: Path) -> None:
    """The whole non-uml suite and the benchmark suites (once each) against the real kernel,
    with the kernel backend required."""
    result = uml_support.run_in_kernel(
        pytest_command("tests", "bench", "-m", "not uml and not vm"),
        timeout=1800,
        extra_env={
            IN_UML_ENV: "1",
            "URING_EPOLL_REQUIRE_KERNEL": "1",
            # The guest shares the host's /tmp; keep its pytest temp dirs out of the host
            # pytest's numbered basetemp rotation.
            "TMPDIR": str(tmp_path),
        },
    )
    assert result.returncode == 0, f"pytest inside the kernel exited {result.returncode}"


def test_selftest_list_matches_tree() -> None:
    """Every *.c in the built tree's selftest dir is run below (nothing silently skipped)."""
    kernel = uml_support.kernel()
    in_tree = sorted(p.name for p in selftest_sources(kernel))
    assert in_tree == SELFTESTS


@pytest.mark.parametrize("name", SELFTESTS)
def test_epoll_selftest(name: str, tmp_path: Path) -> None:
    kernel = uml_support.kernel()
    source = kernel.src / SELFTEST_DIR / name
    assert source.is_file(), f"{name} is not in the built tree {kernel.src}"
    try:
        binary = compile_selftest(source, kernel, tmp_path)
    except Exception as exc:  # CalledProcessError: show gcc's diagnostics
        pytest.fail(f"{name} does not compile:\n{getattr(exc, 'stderr', exc)}", pytrace=False)
    # epoll_wakeup_test sleeps and spins in many of its cases, and UML system calls are ~60x
    # slower than the host's: a generous limit, so a timeout means a hang.
    result = uml_support.run_in_kernel([str(binary)], timeout=900, cwd=tmp_path)
    # Tolerates only UML_UNRUNNABLE cases ending by the harness timeout (busy-waiting
    # threads on a uniprocessor guest); a kernel splat fails even a passing run.
    verdict = selftest_verdict(name, result)
    assert verdict is None, f"{name}: {verdict}"


def test_cli_info_inside_kernel() -> None:
    result = uml_support.uring_epoll_cli("info")
    assert result.returncode == 0
    assert "uring-epoll" in result.stdout
