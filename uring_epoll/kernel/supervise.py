"""Keeping a guest tied to the process that booted it, and carrying its output.

Shared by the vehicles (:mod:`.uml`, :mod:`.vm`): a guest is a host process group (UML and its
helpers; virtme-ng and its QEMU) started in a session of its own. It must die with its caller
however the caller ends, SIGKILL included, and leave no run directory behind; its output
arrives on pipes that are copied, as it comes, to whatever the caller asked for.
"""

from __future__ import annotations

import contextlib
import io
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from typing import Any

__all__ = [
    "DEFAULT",
    "Watchdog",
    "guest_preexec",
    "isatty",
    "pump",
    "sink",
    "wait_group_gone",
    "wait_then_kill",
]

#: "The caller's own stream" for the ``stdout``/``stderr`` parameters of the vehicles' run().
DEFAULT: Any = object()


# A guard for the run directory and the guest's process group, so that a guest dies with the
# process that booted it, however that process ends (SIGKILL included, when none of its code
# runs). It is a separate host process in its own session (terminal signals for the caller's
# group do not reach it) reading a pipe whose only write end the caller holds: the caller's
# death closes it. Messages: "rundir PATH", "pgid N" (the guest's group, once started) and
# "done" (the caller cleaned up; exit quietly). End of file without "done": kill the group
# (helper processes, UML's or QEMU's, survive the main process otherwise), wait for its members
# to die, remove the run directory. Standard library only, and run with -I -S: it must start
# quickly.
WATCHDOG_SCRIPT = r"""
import os, shutil, signal, sys, time

for s in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGQUIT, signal.SIGPIPE):
    signal.signal(s, signal.SIG_IGN)
rundir, pgid, buf = None, 0, b""
while True:
    try:
        data = os.read(0, 4096)
    except OSError:
        data = b""
    if not data:
        break
    buf += data
    while b"\n" in buf:
        line, buf = buf.split(b"\n", 1)
        word, _, arg = line.partition(b" ")
        if word == b"rundir":
            rundir = os.fsdecode(arg)
        elif word == b"pgid":
            pgid = int(arg)
        elif word == b"done":
            sys.exit(0)


def alive(pgid):
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/" + entry + "/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                return True
    return False


if pgid > 1:
    deadline = time.monotonic() + 10
    while True:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            break
        if not alive(pgid) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
if rundir:
    for _ in range(3):
        shutil.rmtree(rundir, ignore_errors=True)
        if not os.path.exists(rundir):
            break
        time.sleep(0.1)
"""


class Watchdog:
    """The caller's end of :data:`WATCHDOG_SCRIPT`."""

    def __init__(self) -> None:
        read, self._write = os.pipe()  # both non-inheritable; the read end is passed as stdin
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", WATCHDOG_SCRIPT],
                stdin=read,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except BaseException:
            os.close(self._write)
            raise
        finally:
            os.close(read)

    def tell(self, word: str, arg: str | int) -> None:
        # A watchdog that died (killed by someone) costs the guarantee, not the run.
        with contextlib.suppress(OSError):
            os.write(self._write, f"{word} {arg}\n".encode())

    def done(self) -> None:
        """Everything is cleaned up: let the watchdog go without doing anything."""
        with contextlib.suppress(OSError):
            os.write(self._write, b"done\n")
        os.close(self._write)
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def wait_group_gone(pgid: int, limit: float) -> None:
    """Wait (bounded) until every process of the group has died and been reaped.

    A guest's helpers (UML's) are children of its main process; once it is gone they are
    reparented and reaped by the host's init, which takes a moment. Waiting means a caller that
    checks for leftovers (or measures CPU) right after run() sees a clean state.
    """
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.05)


def wait_then_kill(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for a guest's main process, then kill its whole group
    and wait until the group is gone; return whether the timeout expired.

    The group is killed whatever happened (a finished guest included, and an exception such
    as a terminating signal while waiting): helper processes may outlive the main one and
    hold the output pipes open.
    """
    try:
        proc.wait(timeout=timeout)
        return False
    except subprocess.TimeoutExpired:
        return True
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        wait_group_gone(proc.pid, 5.0)


def isatty(target: Any) -> bool:
    """Whether ``target`` (a file object or fd, or None) is a terminal."""
    if target is None:
        return False
    try:
        fd = target if isinstance(target, int) else target.fileno()
        return os.isatty(fd)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False


_PR_SET_PDEATHSIG = 1
_libc: Any = None


def guest_preexec(parent: int) -> Any:
    """What a guest's main process (UML, or virtme-ng's QEMU launcher) runs between fork and
    exec (``parent``: the caller's pid)."""
    global _libc
    if _libc is None:
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)  # loaded here, not in the forked child
    libc = _libc

    def preexec() -> None:
        # A guest panic can end UML with abort(): no point in writing a 500 MB core file.
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        # Dies with the calling thread (run() blocks in it until UML has ended). Second line
        # of defence: the watchdog kills the whole group, helpers included.
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the caller died before prctl took effect
            os._exit(1)

    return preexec


def sink(target: Any) -> Any:
    """A callable writing bytes to ``target`` (binary file, text file, or None for discard)."""
    if target is None:
        return lambda data: None
    if callable(target) and not hasattr(target, "write"):
        return target
    if isinstance(target, int):
        return lambda data: os.write(target, data)
    buffer = getattr(target, "buffer", None)
    if isinstance(target, io.TextIOBase) and buffer is None:

        def write_text(data: bytes) -> None:
            target.write(data.decode(errors="replace"))
            target.flush()

        return write_text
    dest = buffer if buffer is not None else target

    def write_bytes(data: bytes) -> None:
        # Text wrappers over a buffer may hold text of their own: keep the order.
        if dest is not target:
            with contextlib.suppress(Exception):
                target.flush()
        dest.write(data)
        dest.flush()

    return write_bytes


def pump(fd: int, write: Any) -> threading.Thread:
    """A daemon thread copying ``fd`` to ``write`` until end of file, then closing ``fd``."""

    def loop() -> None:
        with contextlib.suppress(OSError):
            while True:
                data = os.read(fd, 65536)
                if not data:
                    break
                with contextlib.suppress(Exception):
                    write(data)
        os.close(fd)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread
