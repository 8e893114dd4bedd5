"""The User-Mode Linux vehicle: boot a built :data:`~.targets.UML` kernel and run a command in it.

Why User-Mode Linux: the EPOLL_USERPOLL ring and vpoll exist only in the patched kernel of
``kernel_patches/``. UML turns that kernel into an ordinary host executable, so the real kernel
code can be exercised from a normal test run, without root on a VM, in about a second per boot.

* **Boot.** The guest's root file system is the host's ``/`` through hostfs, so the host's
  Python, the repository and a per-run directory are visible at the same paths. The init
  process is :mod:`.guest_init`, copied into that directory: it mounts the pseudo file systems,
  runs the command with the caller's exact environment and working directory, writes the exit
  status into the run directory, syncs and powers off. The command's stdout and stderr are two
  UML virtual consoles wired to host pipes, so they stay separate and kernel messages
  (console 0) go to a log instead of mixing with the command's output.
* **Lifetime.** A guest dies with the process that booted it, however that ends. UML's main
  process gets PR_SET_PDEATHSIG=SIGKILL, but its helper processes outlive it, so a small
  watchdog process (its own session, blocked on a pipe only the caller can write to) kills UML's
  whole process group and removes the run directory when the caller disappears without saying
  it is done: SIGKILL included. The CLI turns SIGTERM and SIGHUP into a clean shutdown that
  ends by the same signal.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import guest_init
from .builder import build
from .cache import KernelBuild, find_kernel, verify_kernel
from .console import KernelCompletedProcess, capture, outcome
from .errors import KernelRunError
from .supervise import (
    DEFAULT,
    Watchdog,
    guest_preexec,
    isatty,
    pump,
    sink,
    wait_then_kill,
)
from .targets import UML

__all__ = [
    "IN_UML_ENV",
    "KernelCompletedProcess",
    "is_inside_uml",
    "run",
    "run_capture",
]

#: Set by the test suite for runs inside the kernel (load is scaled down there).
IN_UML_ENV = "URING_EPOLL_IN_UML"


def _uml_tmpdir() -> str:
    """Where UML may create its memory file: it must be writable and allow PROT_EXEC maps."""
    for candidate in ("/dev/shm", tempfile.gettempdir()):
        if os.access(candidate, os.W_OK | os.X_OK):
            return candidate
    return tempfile.gettempdir()


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 600.0,
    mem: str = "512M",
    stdout: Any = DEFAULT,
    stderr: Any = DEFAULT,
    console: Any = None,
    kernel: KernelBuild | None = None,
) -> int:
    """Boot the kernel, run ``argv`` inside it, return its exit status.

    ``cwd`` and ``env`` default to the caller's (the environment is passed exactly: nothing is
    added or removed). A command killed by a signal gives ``128 + signal``, like a shell.
    ``stdout``/``stderr`` receive the command's output as it is produced: a file object (text
    or binary), a raw fd, or None to discard; the default is this process's stdout/stderr.
    ``console`` receives the kernel's own console (boot messages, oopses), default discarded;
    it is also kept in a log whose tail is part of the error when the run fails.
    The kernel is built first if needed (``kernel`` overrides which build is booted).

    Raises :class:`KernelTimeout` when the guest has not powered off after ``timeout`` seconds
    (the whole UML process group is killed) and :class:`KernelRunError` when it stops without
    reporting a status (a panic, for instance).
    """
    if is_inside_uml():
        # Nested UML is unsupported, and the usual cause is a test run inside the kernel
        # that forgot -m "not uml": say so instead of failing obscurely.
        raise KernelRunError("already running inside User-Mode Linux: not booting another")
    if kernel is None:
        # A damaged entry raises KernelCacheError here, saying what to do: rebuilding it
        # silently would turn a run into a quarter-hour build.
        kernel = find_kernel(UML) or build(UML)
    verify_kernel(kernel)
    cwd = os.fspath(cwd) if cwd is not None else os.getcwd()
    env = dict(os.environ) if env is None else dict(env)
    out_target = sys.stdout if stdout is DEFAULT else stdout
    err_target = sys.stderr if stderr is DEFAULT else stderr
    if not argv:
        raise ValueError("run() needs a command")

    # Started first, so that no moment exists where a run directory or a guest has no guard.
    watchdog = Watchdog()
    try:
        rundir = Path(tempfile.mkdtemp(prefix="uring-epoll-uml-"))
        watchdog.tell("rundir", str(rundir))
    except BaseException:
        watchdog.done()
        raise
    try:
        guest_init.write_request(
            str(rundir),
            argv,
            env,
            cwd,
            [
                name
                for name, target in (("stdout", out_target), ("stderr", err_target))
                if isatty(target)
            ],
        )
        # A copy in the run directory: a run depends on nothing of the package's installation
        # staying put while the guest boots (an editable checkout may be switching branches).
        launcher = rundir / "guest_init.py"
        shutil.copyfile(guest_init.__file__, launcher)
        init = rundir / "init"
        # -I: the launcher must not be affected by the caller's PYTHON* variables or site dir
        # (nor import siblings of its own directory). /dev/tty1 and /dev/tty2 are the consoles
        # wired to the host's stdout and stderr pipes below.
        init.write_text(
            f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -I {shlex.quote(str(launcher))} "
            f"--stdout /dev/tty1 --stderr /dev/tty2 {shlex.quote(str(rundir))}\n"
        )
        init.chmod(0o755)

        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        con_r, con_w = os.pipe()
        # con=null: every console unused unless named. Console 0 (the kernel's messages) goes to
        # a log pipe at the default log level: no "quiet", because WARN splats are printed at
        # KERN_WARNING, which quiet hides, and the host scans the log for them.
        # Consoles 1 and 2 are the guest's /dev/tty1 and /dev/tty2: the command's stdout and
        # stderr. Input is null everywhere: the guest's stdin is /dev/null.
        cmdline = [
            str(kernel.linux),
            f"mem={mem}",
            "rootfstype=hostfs",
            "rootflags=/",
            "rw",
            f"init={init}",
            "con=null",
            f"con0=null,fd:{con_w}",
            f"con1=null,fd:{out_w}",
            f"con2=null,fd:{err_w}",
            "ssl=null",
        ]
        console_log = rundir / "console.log"
        log_file = open(console_log, "wb")  # noqa: SIM115 - closed in the finally below
        console_write = sink(console)

        def console_sink(data: bytes) -> None:
            log_file.write(data)
            log_file.flush()
            console_write(data)

        # UML keeps a per-instance directory (pid file, mconsole socket) under $HOME/.uml and
        # panics without $HOME: give it the run directory, which is removed afterwards.
        uml_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "TMPDIR": _uml_tmpdir(),
            "HOME": str(rundir),
        }
        try:
            proc = subprocess.Popen(
                cmdline,
                stdin=subprocess.DEVNULL,
                stdout=con_w,
                stderr=con_w,
                pass_fds=(out_w, err_w, con_w),
                env=uml_env,
                cwd=str(rundir),
                preexec_fn=guest_preexec(os.getpid()),
                start_new_session=True,
            )  # its own process group: UML forks helper processes
        except BaseException as exc:
            for fd in (out_r, out_w, err_r, err_w, con_r, con_w):
                os.close(fd)
            log_file.close()
            if isinstance(exc, OSError):
                raise KernelRunError(
                    f"cannot start the kernel {kernel.linux}: {exc}; rebuild it with "
                    "`uring-epoll kernel build --force`"
                ) from None
            raise
        watchdog.tell("pgid", proc.pid)
        for fd in (out_w, err_w, con_w):
            os.close(fd)
        pumps = [
            pump(out_r, sink(out_target)),
            pump(err_r, sink(err_target)),
            pump(con_r, console_sink),
        ]
        try:
            timed_out = wait_then_kill(proc, timeout)
        finally:
            for copier in pumps:
                copier.join(timeout=10)
            log_file.close()
        return outcome(
            argv,
            guest="the kernel",
            rundir=rundir,
            console_log=console_log,
            timed_out=timed_out,
            timeout=timeout,
            pgid=proc.pid,
            returncode=proc.returncode,
            err_target=err_target,
        )
    finally:
        shutil.rmtree(rundir, ignore_errors=True)
        # Only now: the group is gone (killed and waited for above) and so is the directory.
        watchdog.done()


def run_capture(
    argv: Sequence[str | os.PathLike[str]], *, timeout: float = 600.0, **kwargs: Any
) -> KernelCompletedProcess:
    """:func:`run` with stdout, stderr and the kernel console captured as text.

    Returns a ``subprocess.CompletedProcess`` (``args``, ``returncode``, ``stdout``,
    ``stderr``) with a ``console`` attribute.
    """
    return capture(run, argv, KernelCompletedProcess, timeout=timeout, **kwargs)


def is_inside_uml() -> bool:
    """True when this process runs on a User-Mode Linux kernel.

    UML reports the host's machine in uname, so the reliable sign is /proc/cpuinfo, whose
    ``vendor_id`` / ``model name`` lines say "User Mode Linux" / "UML".
    """
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read(8192)
    except OSError:
        return False
    if "User Mode Linux" in text:
        return True
    return re.search(r"^model name\s*:\s*UML\b", text, re.M) is not None
