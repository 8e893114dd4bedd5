"""The guest side of a run: the first process in the booted kernel.

Run by the host's Python as a script, ``python3 -I guest_init.py [--stdout DEV]
[--stderr DEV] [--not-init] RUNDIR``, from the host's file system as the guest sees it (hostfs
under User-Mode Linux, 9p in a VM). It therefore uses the standard library only and never
imports the package, which need not be importable this early in boot.

The contract, through the shared directory ``RUNDIR`` (both sides are here: the host imports
this module for :func:`write_request` and :func:`read_status`):

* the request, written by the host before boot: ``argv`` and ``env`` (NUL-terminated items),
  ``cwd`` (a path), ``ttys`` (which of ``stdout``/``stderr`` the host caller has on a terminal);
* the result, written here: ``status`` (the command's exit status, ``128 + N`` for a signal),
  renamed into place after an fsync, so the host finds it complete or not at all.

In between it mounts the pseudo file systems the tests need, runs the command with exactly
that environment and working directory, and powers the machine off. The command's stdout and
stderr go to ``--stdout``/``--stderr`` (devices; UML wires ``/dev/tty1`` and ``/dev/tty2`` to
host pipes) or, by default, to this process's own. As PID 1 it must never exit (that panics the
kernel), so every path, failures included, ends in power-off.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import os
import sys
import termios
import threading
from collections.abc import Mapping, Sequence
from typing import Any

_LINUX_REBOOT_CMD_POWER_OFF = 0x4321FEDC
_libc: Any = None


def _c() -> Any:
    """libc, loaded on first use (importing this module has no side effects)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
    return _libc


def mount(src: str, target: str, fstype: str, flags: int = 0, data: str | None = None) -> None:
    """mount(2), creating ``target``; failures are reported, not fatal (EBUSY: already there)."""
    if not os.path.isdir(target):
        os.makedirs(target, exist_ok=True)
    if (
        _c().mount(
            src.encode(), target.encode(), fstype.encode(), flags, data.encode() if data else None
        )
        != 0
    ):
        err = ctypes.get_errno()
        if err != errno.EBUSY:
            sys.stderr.write(f"launcher: mount {fstype} on {target}: {os.strerror(err)}\n")


def mounted() -> set[str]:
    """The mount points in use (empty when /proc is not mounted yet)."""
    try:
        with open("/proc/self/mounts") as f:
            return {line.split()[1] for line in f}
    except OSError:
        return set()


def mount_pseudo_filesystems() -> None:
    """What the commands expect: /proc, /sys, /dev (devtmpfs), /dev/pts and /dev/shm (Python's
    multiprocessing needs it); each only where nothing is mounted yet, so a guest whose own
    init already did this keeps its mounts."""
    if "/proc" not in mounted():
        mount("proc", "/proc", "proc")
    have = mounted()
    if "/sys" not in have:
        mount("sysfs", "/sys", "sysfs")
    if "/dev" not in have:
        mount("devtmpfs", "/dev", "devtmpfs")
    if "/dev/pts" not in have:
        mount("devpts", "/dev/pts", "devpts", 0, "ptmxmode=666")
    if "/dev/shm" not in have:
        mount("tmpfs", "/dev/shm", "tmpfs", 0, "mode=1777")


def power_off() -> None:
    """Sync and power off: reboot(2), else sysrq, else ``poweroff -f``."""
    os.sync()
    _c().reboot(_LINUX_REBOOT_CMD_POWER_OFF)
    try:
        with open("/proc/sysrq-trigger", "w") as f:
            f.write("o")
    except OSError:
        pass
    os.execv("/sbin/poweroff", ["poweroff", "-f"])


def copy(src: int, dst: int) -> None:
    """Copy ``src`` to ``dst`` until end of file."""
    while True:
        data = os.read(src, 65536)
        if not data:
            break
        while data:
            data = data[os.write(dst, data) :]


def raw_output(fd: int) -> None:
    """Turn off output processing when ``fd`` is a terminal.

    A tty turns "\\n" into "\\r\\n" (OPOST/ONLCR); the host expects the bytes the program wrote.
    """
    if not os.isatty(fd):
        return
    attrs = termios.tcgetattr(fd)
    attrs[1] &= ~termios.OPOST
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


def write_request(
    rundir: str,
    argv: Sequence[str | os.PathLike[str]],
    env: Mapping[str, str],
    cwd: str,
    ttys: Sequence[str],
) -> None:
    """The host's side: write the request :func:`read_request` reads into ``rundir``.

    Raises ValueError for an environment variable that cannot be passed (a ``=`` in its name,
    a NUL anywhere).
    """
    with open(os.path.join(rundir, "argv"), "wb") as f:
        f.write(b"".join(os.fsencode(a) + b"\0" for a in argv))
    items = []
    for name, value in env.items():
        if "=" in name or "\0" in name or "\0" in value:
            raise ValueError(f"environment variable {name!r} cannot be passed")
        items.append(os.fsencode(name) + b"=" + os.fsencode(value) + b"\0")
    with open(os.path.join(rundir, "env"), "wb") as f:
        f.write(b"".join(items))
    with open(os.path.join(rundir, "cwd"), "wb") as f:
        f.write(os.fsencode(os.path.abspath(cwd)))
    with open(os.path.join(rundir, "ttys"), "w") as f:
        f.write(" ".join(ttys))


def read_request(rundir: str) -> tuple[list[bytes], dict[bytes, bytes], bytes, list[str]]:
    """(argv, env, cwd, ttys) as the host wrote them into ``rundir``."""
    with open(os.path.join(rundir, "argv"), "rb") as f:
        argv = f.read().split(b"\0")[:-1]
    with open(os.path.join(rundir, "env"), "rb") as f:
        items = f.read().split(b"\0")[:-1]
    env = dict(item.split(b"=", 1) for item in items)
    with open(os.path.join(rundir, "cwd"), "rb") as f:
        cwd = f.read()
    with open(os.path.join(rundir, "ttys")) as f:
        ttys = f.read().split()
    return argv, env, cwd, ttys


def write_status(rundir: str, status: int) -> None:
    """Publish the exit status: written, fsynced, then renamed into place."""
    tmp = os.path.join(rundir, "status.tmp")
    with open(tmp, "w") as f:
        f.write(f"{status}\n")
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, os.path.join(rundir, "status"))


def read_status(rundir: str) -> int | None:
    """The host's side: the status :func:`write_status` published, or None if there is none
    (the guest stopped without reporting)."""
    try:
        with open(os.path.join(rundir, "status")) as f:
            return int(f.read().strip())
    except FileNotFoundError:
        return None


def _open_output(path: str | None, default: int) -> int:
    if path is None:
        return default
    return os.open(path, os.O_WRONLY | os.O_NOCTTY)


def run(rundir: str, stdout: str | None, stderr: str | None) -> None:
    """Mount, run the request in ``rundir``, report its status, power off."""
    mount_pseudo_filesystems()
    argv, env, cwd, ttys = read_request(rundir)
    out = _open_output(stdout, 1)
    err = _open_output(stderr, 2)
    raw_output(out)
    raw_output(err)
    # The command sees a terminal only where the host caller has one: a tty changes programs'
    # behaviour (buffering, colours, progress bars), so captured runs get pipes, which the
    # launcher copies to the consoles.
    copiers = []
    child_fds = []
    for name, console in (("stdout", out), ("stderr", err)):
        if name in ttys:
            child_fds.append(console)
            continue
        r, w = os.pipe()
        child_fds.append(w)
        t = threading.Thread(target=copy, args=(r, console), daemon=True)
        t.start()
        copiers.append((t, w))
    null = os.open("/dev/null", os.O_RDONLY)
    status = 127
    try:
        os.chdir(cwd)
        pid = os.fork()
        if pid == 0:
            try:
                os.setsid()
                os.dup2(null, 0)
                os.dup2(child_fds[0], 1)
                os.dup2(child_fds[1], 2)
                os.execvpe(argv[0], argv, env)
            except BaseException as exc:
                os.write(2, f"uring-epoll kernel: cannot run {argv[0]!r}: {exc}\n".encode())
            os._exit(127)
        for _, w in copiers:
            os.close(w)
        while True:
            # PID 1 inherits orphans: reap until our own child is the one that ended.
            done, wstatus = os.wait()
            if done == pid:
                status = os.waitstatus_to_exitcode(wstatus)
                if status < 0:
                    status = 128 - status
                break
    except BaseException as exc:
        os.write(err, f"uring-epoll kernel: launcher failed: {exc!r}\n".encode())
    finally:
        # A background process left behind may hold the pipe open forever: bounded wait.
        for t, _ in copiers:
            t.join(2.0)
        for fd in (out, err):
            try:
                termios.tcdrain(fd)
            except (OSError, termios.error):  # not a terminal: nothing to drain
                pass
        write_status(rundir, status)
        power_off()


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and :func:`run`; power off whatever happens.

    Refuses (status 2, nothing mounted, no power-off) unless this process is PID 1 or
    ``--not-init`` is given: this file is a plain script in the installed package, and run by
    hand on a host as root it would power the host off.
    """
    parser = argparse.ArgumentParser(prog="guest_init.py")
    parser.add_argument("--stdout", metavar="DEV", help="where the command's stdout goes")
    parser.add_argument("--stderr", metavar="DEV", help="where the command's stderr goes")
    parser.add_argument(
        "--not-init",
        action="store_true",
        help="run although not PID 1 (a guest whose own init starts this)",
    )
    parser.add_argument("rundir", help="the shared directory with the request")
    args = parser.parse_args(argv)
    if os.getpid() != 1 and not args.not_init:
        sys.stderr.write("guest_init.py: not PID 1; this runs as a guest's init only\n")
        return 2
    try:
        run(args.rundir, args.stdout, args.stderr)
    except BaseException:
        import traceback

        traceback.print_exc()  # to the console log, whose tail the host reports
        sys.stderr.flush()
    finally:
        power_off()
    return 0  # not reached: power_off() does not return


if __name__ == "__main__":
    sys.exit(main())
