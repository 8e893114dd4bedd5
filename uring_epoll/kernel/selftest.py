"""The epoll C selftests of the series: find, compile and judge them.

The selftests live in the built tree (the stock 6.1 ones and those the series adds) and are
compiled standalone against the build's exported headers; a vehicle runs the binaries, and
:func:`selftest_verdict` reads the kselftest harness's TAP output.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from .cache import KernelBuild
from .console import kernel_problems

__all__ = [
    "SELFTEST_DIR",
    "UML_UNRUNNABLE",
    "compile_selftest",
    "selftest_sources",
    "selftest_verdict",
]

#: Where the C selftests of the series live, relative to the kernel tree.
SELFTEST_DIR = Path("tools/testing/selftests/filesystems/epoll")


def selftest_sources(kernel: KernelBuild) -> list[Path]:
    """Every ``*.c`` in the tree's epoll selftest directory (the 6.1 one and the series' own)."""
    return sorted((kernel.src / SELFTEST_DIR).glob("*.c"))


# Cases of the stock 6.1 epoll selftest that cannot finish on User-Mode Linux: UML is
# uniprocessor (no SMP before 6.16) and these hand a counter back and forth between busy-waiting
# threads (epoll59: 100000 round trips, each needing a timer-tick preemption; epoll60: a 1 s
# spin per round while the waiters it spins for cannot run). The harness ends them after 30 s.
# They are tolerated only when they fail that way; kernel_patches/README.md records the same
# result for the unpatched UML build.
UML_UNRUNNABLE: dict[str, frozenset[str]] = {
    "epoll_wakeup_test.c": frozenset({"global.epoll59", "global.epoll60"}),
}


def selftest_verdict(
    name: str, result: subprocess.CompletedProcess[str], *, uml: bool = True
) -> str | None:
    """None when the kselftest ``name`` passed (allowing, with ``uml``, only
    :data:`UML_UNRUNNABLE` cases that ended by the harness timeout), else a one-line reason.
    Kernel splats also fail."""
    problems = kernel_problems(getattr(result, "console", ""))
    if problems:
        return "the kernel reported a problem: " + problems.splitlines()[0]
    if result.returncode == 0:
        return None
    # Our own two expressions rather than the tree's tools/testing/kunit/kunit_parser.py. That
    # parser does read this TAP (the harness's "TAP version 13", "ok N name", "not ok N name"),
    # but what a verdict needs is not all in its input: the harness reports a timeout on stderr
    # ("# NAME: Test terminated by timeout", TH_LOG_STREAM), and kunit_parser parses one stream.
    # It would also need the built tree on sys.path (it imports its sibling kunit_printer by
    # top-level name) and prints its own report to stdout while parsing.
    failed = set(re.findall(r"^not ok \d+ (\S+)", result.stdout, re.M))
    timed_out = {
        t if "." in t else f"global.{t}"
        for t in re.findall(
            r"^# (\S+): Test terminated by timeout", result.stdout + result.stderr, re.M
        )
    }
    tolerated = UML_UNRUNNABLE.get(name, frozenset()) if uml else frozenset()
    if failed and failed <= tolerated and failed <= timed_out:
        return None
    return f"exit {result.returncode}; failed cases: {', '.join(sorted(failed)) or 'none'}" + (
        f" (tolerated on UML only by timeout: {', '.join(sorted(tolerated))})" if tolerated else ""
    )


def compile_selftest(source: Path, kernel: KernelBuild, outdir: Path) -> Path:
    """Compile one selftest standalone against the build's exported headers; return the binary.

    Raises :class:`subprocess.CalledProcessError` with gcc's output when it does not compile.
    """
    outdir.mkdir(parents=True, exist_ok=True)
    binary = outdir / source.stem
    cmd = [
        "gcc",
        "-O2",
        "-g",
        "-Wall",
        "-pthread",
        f"-I{kernel.include}",
        f"-I{kernel.src / 'tools/testing/selftests'}",
        str(source),
        "-o",
        str(binary),
    ]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return binary
