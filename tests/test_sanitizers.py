"""The C layer under AddressSanitizer and UndefinedBehaviorSanitizer.

Builds both native modules with ``URING_EPOLL_SANITIZE=1`` (see ``_native_build.py``) into a
copy of the package in a temporary directory, then runs the tests that drive the C code
(the ring drain and its fuzz test, threads, bounded waits, the testing hooks and the C load
producers) against that copy in a child interpreter with the ASan runtime preloaded. Any
sanitizer report fails the test: UBSan halts on the first error, ASan on every one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import uring_epoll
from uring_epoll.kernel import is_inside_uml, pytest_command, vm

#: The tests beside this file (a checkout's, or CI's copy of the sdist's), and the package they
#: test: its directory holds the C sources and both builders, installed or not.
TESTS = Path(__file__).resolve().parent
PACKAGE = Path(uring_epoll.__file__).resolve().parent
#: The test files run under the sanitizers, and what each exercises in C.
SUITE = [
    "tests/test_ring_drain.py",  # the drain on hand-built rings (ring.c)
    "tests/test_ring_fuzz.py",  # the drain on random ring states
    "tests/test_threads.py",  # consumers on several threads, close while polling (emu.c)
    "tests/test_bounded_waits.py",  # spin, stuck protocol-3 slots, signals
    "tests/test_estale_bound.py",  # the kernel-mode sleep loop against a faked ESTALE
    "tests/test_testing_hooks.py",  # inject/sync into the emulator
    "tests/test_epoll_api.py",  # the whole select.epoll surface, poll_into's buffer checks
    "tests/test_load.py",  # the C producer threads (producers.c) against the consumer
    "tests/test_uring_backend.py",  # uring.c: a full CQ, stale CQEs, threads, fork
]
#: Tests left out of the sanitized run (none at present).
DESELECT: list[str] = []
BUILD_TIMEOUT = 600
RUN_TIMEOUT = 900
REPORT_MARKERS = ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer")


def _asan_runtime() -> str | None:
    gcc = shutil.which("gcc")
    if gcc is None:
        return None
    found = subprocess.run(
        [gcc, "-print-file-name=libasan.so"], capture_output=True, text=True
    ).stdout.strip()
    return found if os.path.isabs(found) and os.path.exists(found) else None


ASAN = _asan_runtime()
pytestmark = [
    pytest.mark.skipif(ASAN is None, reason="gcc with libasan is needed for the sanitizer build"),
    pytest.mark.skipif(
        os.environ.get("URING_EPOLL_SANITIZED") == "1", reason="already the sanitizer run"
    ),
    # User-Mode Linux lays out its processes' address space where ASan wants its shadow
    # memory ("Shadow memory range interleaves with an existing memory mapping"); the host
    # run of the same suite covers the C layer.
    pytest.mark.skipif(is_inside_uml(), reason="ASan cannot map its shadow inside UML"),
    # Under QEMU's emulation a second sanitized build and run would cost minutes; the C layer
    # is the same as on the host, where this runs.
    pytest.mark.skipif(vm.is_inside_vm(), reason="the host's run covers the sanitized build"),
]


def _ignore(directory: str, names: list[str]) -> set[str]:
    built = {n for n in names if n.endswith((".so", ".o")) or n == "__pycache__"}
    if Path(directory).name == "uring_epoll":
        built |= {"_native.c", "_bench_native.c"}
    return built


@pytest.fixture(scope="module")
def sanitized_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the package and its tests, with ASan/UBSan builds of both native modules."""
    tree = tmp_path_factory.mktemp("sanitized")
    shutil.copytree(PACKAGE, tree / "uring_epoll", ignore=_ignore)
    shutil.copytree(TESTS, tree / "tests", ignore=_ignore)
    env = {**os.environ, "URING_EPOLL_SANITIZE": "1", "URING_EPOLL_WERROR": "1"}
    for builder in ("_native_build.py", "_bench_native_build.py"):
        done = subprocess.run(
            [sys.executable, f"uring_epoll/{builder}"],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
        )
        assert done.returncode == 0, f"sanitizer build failed:\n{done.stdout}\n{done.stderr}"
    # The pytest configuration, copied only now: setuptools (which cffi compiles with) reads
    # a pyproject.toml in its working directory, and an older one than the package's build
    # needs refuses its PEP 639 license field.
    shutil.copy(TESTS.parent / "pyproject.toml", tree / "pyproject.toml")
    return tree


def _child_env(tree: Path) -> dict[str, str]:
    assert ASAN is not None
    return {
        **os.environ,
        "PYTHONPATH": str(tree),
        "PYTHONDONTWRITEBYTECODE": "1",
        "URING_EPOLL_SANITIZED": "1",
        # The child tests this copy, not the installed package (tests/conftest.py checks).
        "URING_EPOLL_TEST_INSTALLED": "0",
        "LD_PRELOAD": ASAN,
        # Python's allocations live until exit by design: leak reports would be noise.
        "ASAN_OPTIONS": "detect_leaks=0:halt_on_error=0:print_summary=1",
        "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
    }


def test_sanitized_module_is_the_one_loaded(sanitized_tree: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import uring_epoll._native as n; print(n.__file__)"],
        cwd=sanitized_tree,
        env=_child_env(sanitized_tree),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).is_relative_to(sanitized_tree)
    # The module really is instrumented.
    assert b"__asan_" in Path(done.stdout.strip()).read_bytes()


def test_c_layer_is_clean_under_asan_and_ubsan(sanitized_tree: Path) -> None:
    done = subprocess.run(
        pytest_command(
            *SUITE,
            *(f"--deselect={test}" for test in DESELECT),
        ),
        cwd=sanitized_tree,
        env=_child_env(sanitized_tree),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    output = done.stdout + done.stderr
    reports = [line for line in output.splitlines() if any(m in line for m in REPORT_MARKERS)]
    assert not reports, "sanitizer reports:\n" + output[-20000:]
    assert done.returncode == 0, output[-20000:]
