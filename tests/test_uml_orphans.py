"""A guest dies with the process that booted it, and its scratch directory goes with it.

``uring-epoll kernel run`` is started in its own session, the guest runs a command that says
"ready" and sleeps, and the host process is then killed by SIGKILL, SIGTERM, SIGHUP or SIGINT
(Ctrl-C: it too must end the run cleanly, by that signal and without a traceback). Within
a bounded time no process of UML's process group may remain (zombies waiting for the host's init
to reap them hold nothing and are not counted) and the run directory must be gone.

Why the group and not just the main process: when the main UML process dies, its ptraced
userspace processes die with it, but its helper threads (separate host processes made with
clone(CLONE_VM)) survive, reparented to init, until something kills them.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from uring_epoll.kernel import KernelTimeout, run

try:
    import uml_support
except ImportError:  # tests/ imported as a package
    from tests import uml_support

#: How long cleanup may take once the signal has been sent.
CLEANUP_LIMIT = 15.0

#: Runs the CLI with the default handling of the signals under test, as a shell in a terminal
#: starts it. Ignored signals stay ignored across exec, and ``kernel run`` rightly keeps a
#: signal its caller ignores (``nohup``, a background job of a script): started that way, this
#: test would otherwise measure its launcher. The exec keeps the pid the test signals.
AS_FROM_A_TERMINAL = (
    "import os, signal, sys\n"
    "for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):\n"
    "    signal.signal(s, signal.SIG_DFL)\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'uring_epoll.cli', *sys.argv[1:]])\n"
)


def processes() -> Iterator[tuple[int, list[str]]]:
    """(pid, the fields of /proc/PID/stat after the command name) of every process now."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name is in parentheses and may contain spaces: split after it.
        yield int(entry), stat[stat.rindex(")") + 2 :].split()


def group_members(pgid: int) -> list[tuple[int, str]]:
    """(pid, state) of every live (non-zombie) process whose process group is ``pgid``."""
    return [
        (pid, fields[0])
        for pid, fields in processes()
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X")
    ]


def uml_child(parent: int, linux: Path) -> int | None:
    """The pid of the UML main process started by ``parent``, if it exists yet."""
    for pid, fields in processes():
        if int(fields[1]) != parent:
            continue
        try:
            if os.readlink(f"/proc/{pid}/exe") == str(linux):
                return pid
        except OSError:
            continue
    return None


def wait_for_line(stream: int, expected: bytes, limit: float) -> bytes:
    """Read ``stream`` until a line equal to ``expected`` arrived; return what was read."""
    seen = b""
    deadline = time.monotonic() + limit
    while expected + b"\n" not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([stream], [], [], left)
        if ready:
            data = os.read(stream, 4096)
            if not data:
                break
            seen += data
    return seen


@pytest.mark.uml
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_guest_dies_with_its_parent(signum: int, tmp_path: Path) -> None:
    kernel = uml_support.kernel()
    scratch = tmp_path / "scratch"  # TMPDIR of the host process: its run directory goes here
    scratch.mkdir()
    env = dict(
        os.environ,
        TMPDIR=str(scratch),
        PYTHONPATH=uml_support.child_pythonpath(),
    )
    host = subprocess.Popen(
        [
            sys.executable,
            "-c",
            AS_FROM_A_TERMINAL,
            "kernel",
            "run",
            "--",
            "sh",
            "-c",
            "echo ready; exec sleep 100000",
        ],
        env=env,
        cwd=str(tmp_path),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    pgid = 0
    try:
        assert host.stdout is not None and host.stderr is not None
        # Ready: the command inside the guest has printed its line, so the guest has booted,
        # UML's helpers exist and the run directory is in use.
        seen = wait_for_line(host.stdout.fileno(), b"ready", 120.0)
        assert b"ready\n" in seen, (seen, host.poll())
        main = uml_child(host.pid, kernel.linux)
        assert main is not None, "no UML process under the host process"
        pgid = os.getpgid(main)
        assert pgid == main, "UML is expected to lead its own process group"
        assert len(group_members(pgid)) > 1, "UML has helper processes while it runs"
        rundirs = list(scratch.glob("uring-epoll-uml-*"))
        assert len(rundirs) == 1, rundirs

        started = time.monotonic()
        os.kill(host.pid, signum)
        deadline = started + CLEANUP_LIMIT
        while time.monotonic() < deadline:
            if not group_members(pgid) and not rundirs[0].exists():
                break
            time.sleep(0.1)
        left = group_members(pgid)
        assert not left, f"UML processes survived {CLEANUP_LIMIT:g}s after {signum!r}: {left}"
        assert not rundirs[0].exists(), f"{rundirs[0]} survived {signum!r}"

        code = host.wait(timeout=CLEANUP_LIMIT)
        # A terminating signal that the host handles still ends it by that signal, as a
        # shell expects of a well-behaved program (after it has cleaned up).
        assert code == -signum, (code, host.stderr.read().decode(errors="replace"))
        if signum != signal.SIGKILL:
            assert b"Traceback" not in host.stderr.read()
    finally:
        if host.poll() is None:
            host.kill()
            host.wait()
        if pgid:
            # Never leave a guest behind from a failing test.
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def children() -> set[int]:
    """The pids of this process's children."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == os.getpid():
                found.add(int(entry))
    return found


@pytest.mark.uml
def test_a_finished_run_leaves_no_watchdog_behind() -> None:
    kernel = uml_support.kernel()
    before = children()
    assert run(["true"], kernel=kernel, stdout=None, stderr=None, timeout=120) == 0
    with pytest.raises(KernelTimeout):
        run(["sleep", "1000"], kernel=kernel, stdout=None, stderr=None, timeout=5)
    assert children() == before


# The watchdog on its own, without a kernel (so it is also exercised where UML cannot run): a
# caller tells it about a directory and a process group of two sleeping processes, then dies by
# SIGKILL.
CALLER = """
import os, subprocess, sys, time
from uring_epoll.kernel.supervise import Watchdog
rundir, = sys.argv[1:]
watchdog = Watchdog()
watchdog.tell("rundir", rundir)
group = subprocess.Popen(["sh", "-c", "sleep 1000 & exec sleep 1000"], start_new_session=True)
watchdog.tell("pgid", group.pid)
print(group.pid, flush=True)
time.sleep(1000)
"""


def test_the_watchdog_kills_the_group_and_removes_the_directory(tmp_path: Path) -> None:
    rundir = tmp_path / "uring-epoll-uml-test"
    (rundir / "sub").mkdir(parents=True)
    (rundir / "sub" / "file").write_text("x")
    env = dict(
        os.environ,
        PYTHONPATH=uml_support.child_pythonpath(),
    )
    caller = subprocess.Popen(
        [sys.executable, "-c", CALLER, str(rundir)], env=env, stdout=subprocess.PIPE
    )
    assert caller.stdout is not None
    pgid = int(caller.stdout.readline())
    try:
        deadline = time.monotonic() + 10
        while len(group_members(pgid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(group_members(pgid)) == 2
        caller.kill()
        caller.wait()
        deadline = time.monotonic() + CLEANUP_LIMIT
        while (group_members(pgid) or rundir.exists()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not group_members(pgid)
        assert not rundir.exists()
    finally:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
