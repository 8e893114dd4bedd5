"""Reading a guest kernel's console: what counts as a kernel problem, and the run's record.

A debug kernel (lockdep, KASAN, DEBUG_ATOMIC_SLEEP) reports what it finds only on its
console, and a test that passed while the kernel complained has not passed: the vehicles keep
every console and :func:`kernel_problems` finds the complaint in it.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from ._text import tail

__all__ = ["KernelCompletedProcess", "console_excerpt", "kernel_problems"]


# Lines the kernel prints when something is wrong in it (as opposed to boot chatter).
PROBLEM_RE = re.compile(
    r"(BUG:|Oops|WARNING:|Kernel panic|kernel BUG|UBSAN:|KASAN:|general protection|"
    r"INFO: task .* blocked|rcu: INFO|circular locking|Call Trace:|Modules linked in:|"
    r"Segfault with no mm)"
)


def kernel_problems(console: str, context: int = 40) -> str:
    """The part of a console log that reports a kernel problem (oops, WARN, BUG...), or "".

    Only what follows the start of init counts: boot messages are not the code under test.
    """
    lines = console.splitlines()
    start = next((i for i, line in enumerate(lines) if "as init process" in line), 0)
    for i in range(start, len(lines)):
        if PROBLEM_RE.search(lines[i]):
            return "\n".join(lines[max(start, i - 2) : i + context])
    return ""


class KernelCompletedProcess(subprocess.CompletedProcess[str]):
    """``subprocess.CompletedProcess`` plus the kernel's console log of the run."""

    console: str = ""

    @property
    def kernel_problems(self) -> str:
        """The console excerpt reporting an oops/WARN/BUG during the run, or ""."""
        return kernel_problems(self.console)


def console_excerpt(console_log: Path) -> str:
    """The kernel's complaint if it made one (an oops or panic starts there), else the tail."""
    problems = kernel_problems(tail(console_log, 400))
    if problems:
        return f"the kernel reported:\n{problems}"
    return f"console tail:\n{tail(console_log, 25)}"
