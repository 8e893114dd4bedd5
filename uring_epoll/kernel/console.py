"""Reading a guest kernel's console: what counts as a kernel problem, and the run's record.

A debug kernel (lockdep, KASAN, DEBUG_ATOMIC_SLEEP) reports what it finds only on its
console, and a test that passed while the kernel complained has not passed: the vehicles keep
every console and :func:`kernel_problems` finds the complaint in it.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from . import guest_init
from ._text import tail
from .errors import KernelRunError, KernelTimeout
from .supervise import sink

__all__ = [
    "KernelCompletedProcess",
    "capture",
    "console_excerpt",
    "kernel_problems",
    "outcome",
]


# Lines the kernel prints when something is wrong in it (as opposed to boot chatter).
PROBLEM_RE = re.compile(
    r"(BUG:|Oops|WARNING:|Kernel panic|kernel BUG|UBSAN:|KASAN:|general protection|"
    r"INFO: task .* blocked|rcu: INFO|circular locking|Call Trace:|Modules linked in:|"
    r"Segfault with no mm)"
)


# Lines written to the console by user space, not by the kernel: virtme-ng's init and
# launcher print their own "WARNING:" lines (a missing `ip` on a minimal Debian, say).
USER_SPACE_RE = re.compile(r"^\s*(\+\s*)?virtme[-\w]*:")


def kernel_problems(console: str, context: int = 40) -> str:
    """The part of a console log that reports a kernel problem (oops, WARN, BUG...), or "".

    Only what follows the start of init counts: boot messages are not the code under test.
    Nor do the messages of the guest's user-space helpers (:data:`USER_SPACE_RE`).
    """
    lines = console.splitlines()
    start = next((i for i, line in enumerate(lines) if "as init process" in line), 0)
    for i in range(start, len(lines)):
        if PROBLEM_RE.search(lines[i]) and not USER_SPACE_RE.match(lines[i]):
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


def outcome(
    argv: Sequence[str | os.PathLike[str]],
    *,
    guest: str,
    rundir: Path,
    console_log: Path,
    timed_out: bool,
    timeout: float,
    pgid: int,
    returncode: int | None,
    err_target: Any,
) -> int:
    """How a run ended, the same for every vehicle: :class:`.KernelTimeout` if it timed out,
    :class:`.KernelRunError` if the guest stopped without reporting a status (a panic), else
    the command's status. A kernel problem on the console is reported on ``err_target`` even
    when the command passed: an oops or a WARN in the kernel under test is news."""
    what = shlex.join(map(str, argv))
    if timed_out:
        error = KernelTimeout(
            f"{guest} did not finish {what!r} within {timeout:g}s and was killed; "
            f"{console_excerpt(console_log)}"
        )
        error.pgid = pgid
        raise error
    status = guest_init.read_status(str(rundir))
    if status is None:
        raise KernelRunError(
            f"{guest} exited (status {returncode}) without reporting the exit status of "
            f"{what!r}; {console_excerpt(console_log)}"
        )
    problems = kernel_problems(console_log.read_bytes().decode(errors="replace"))
    if problems:
        sink(err_target)(
            (
                "uring-epoll kernel: the kernel reported problems during the run "
                "(console excerpt):\n" + problems + "\n"
            ).encode()
        )
    return status


Result = TypeVar("Result", bound=KernelCompletedProcess)


def capture(
    run: Callable[..., int],
    argv: Sequence[str | os.PathLike[str]],
    result_type: type[Result],
    **kwargs: Any,
) -> Result:
    """``run(argv, **kwargs)`` (a vehicle's run) with stdout, stderr and the kernel console
    captured as text, as a ``subprocess.CompletedProcess`` with a ``console`` attribute. A
    ``console`` in ``kwargs`` still receives the console as it comes."""
    out, err, con = io.BytesIO(), io.BytesIO(), io.BytesIO()
    user_sink = sink(kwargs.pop("console", None))

    def console(data: bytes) -> None:
        con.write(data)
        user_sink(data)

    code = run(argv, stdout=out, stderr=err, console=console, **kwargs)
    result = result_type(
        [os.fspath(a) for a in argv],
        code,
        out.getvalue().decode(errors="replace"),
        err.getvalue().decode(errors="replace"),
    )
    result.console = con.getvalue().decode(errors="replace")
    return result
