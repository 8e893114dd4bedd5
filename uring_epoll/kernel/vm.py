"""The VM vehicle: boot the series as an x86_64 kernel under QEMU, with N CPUs, through
virtme-ng, and run a command in it.

Why a second vehicle: User-Mode Linux is uniprocessor and never preempts the kernel, so the
series' lock-free multi-CPU append, its wake-up paths and its locking have never met a second
CPU there. Here the kernel is an ordinary x86_64 kernel (:data:`~.targets.VM`: SMP, PREEMPT,
lockdep, KASAN) booted by QEMU with ``cpus`` virtual CPUs.

* **Boot.** virtme-ng (``vng``) boots the kernel with the host's root file system over 9p
  (read-only, with writable overlays on /etc, /tmp, ...), so the host's Python and the
  caller's files are visible at the same paths. KVM is used only where it really works
  (:func:`accelerator`); otherwise QEMU emulates the CPUs (TCG), which is slower but exact.
* **The command.** vng starts its own init, which runs :mod:`.guest_init` with ``--not-init``
  on a run directory shared read-write (``--rwdir``). The request (argv, cwd, environment) and
  the exit status travel through that directory, and so do the command's stdout and stderr
  (two files the host copies as they grow): virtme-ng's own channel for them needs udev in the
  guest, which a host without udev does not have, and then vng reports 255 whatever the
  command returned.
* **The console.** The kernel's messages (vng ``--verbose``: the serial console) are kept in a
  log; :func:`~.console.kernel_problems` finds lockdep, KASAN, WARN, BUG or RCU-stall reports
  in it.
* **Lifetime.** As for UML (:mod:`.supervise`): vng and QEMU run in a session of their own, die
  with the caller (PDEATHSIG, and a watchdog process for the group and the run directory) and
  are killed when ``timeout`` expires.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import guest_init
from .builder import build
from .cache import KernelBuild, find_kernel, verify_kernel
from .console import KernelCompletedProcess, capture, outcome
from .errors import KernelRunError
from .source import ensure_vm_tools
from .supervise import DEFAULT, Watchdog, guest_preexec, pump, sink, wait_then_kill
from .targets import VM, KernelTarget

__all__ = [
    "ACCEL_ENV",
    "VMCompletedProcess",
    "accelerator",
    "is_inside_vm",
    "kvm_problem",
    "run",
    "run_capture",
]

#: ``kvm`` or ``tcg`` forces the accelerator; unset or empty: KVM where it works, else TCG.
ACCEL_ENV = "URING_EPOLL_VM_ACCEL"

# Kernel arguments added to virtme-ng's. The TSC is the clocksource QEMU gives the guest
# cheaply (a clock read costs ~0.8 us instead of ~6 us with the default under TCG); the root's
# 9p mount caches loosely (the host's files do not change under a run), which halves Python's
# start-up. The 9p options repeat virtme-ng's own, since a later rootflags= replaces them.
_KERNEL_ARGS = (
    "clocksource=tsc",
    "tsc=reliable",
    "rootflags=version=9p2000.L,trans=virtio,access=any,msize=524288,cache=loose",
)

_KVM_GET_API_VERSION = 0xAE00
_KVM_CREATE_VM = 0xAE01
_KVM_API_VERSION = 12


def kvm_problem() -> str | None:
    """Why KVM cannot run the guest here, or None when it can.

    ``/dev/kvm`` may exist and open while being useless: on a host that is itself a VM without
    nested virtualisation the CPU has no ``vmx``/``svm`` flag, and a guest started with KVM
    hangs at "Decompressing Linux...". So the flag, the API version and the creation of a VM
    are all checked.
    """
    if not os.path.exists("/dev/kvm"):
        return "/dev/kvm does not exist"
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(
                (line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []
            )
    except OSError as exc:
        return f"cannot read /proc/cpuinfo: {exc}"
    if "vmx" not in flags and "svm" not in flags:
        return "the CPU has no vmx/svm flag (a VM without nested virtualisation)"
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"cannot open /dev/kvm: {exc.strerror}"
    try:
        version = fcntl.ioctl(fd, _KVM_GET_API_VERSION, 0)
        if version != _KVM_API_VERSION:
            return f"KVM API version {version}, not {_KVM_API_VERSION}"
        vm_fd = fcntl.ioctl(fd, _KVM_CREATE_VM, 0)
        os.close(vm_fd)
    except OSError as exc:
        return f"KVM cannot create a VM: {exc.strerror}"
    finally:
        os.close(fd)
    return None


def accelerator() -> tuple[str, str]:
    """``("kvm" | "tcg", why)``: what the next run will use, and the reason, for reports."""
    forced = os.environ.get(ACCEL_ENV, "").strip().lower()
    if forced in ("kvm", "tcg"):
        return forced, f"${ACCEL_ENV}={forced}"
    if forced:
        raise ValueError(f"${ACCEL_ENV} must be 'kvm' or 'tcg', not {forced!r}")
    problem = kvm_problem()
    if problem is None:
        return "kvm", "/dev/kvm works"
    return "tcg", problem


def is_inside_vm() -> bool:
    """True inside a guest booted by this vehicle (virtme-ng marks its kernel command line)."""
    try:
        with open("/proc/cmdline") as f:
            return "virtme_hostname=" in f.read()
    except OSError:
        return False


def _vng_argv(
    kernel: KernelBuild, rundir: Path, command: str, cpus: int, memory: str, accel: str
) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "virtme_ng.run",
        "--run",
        str(kernel.linux),
        # microvm needs virtio-fs, which Debian 12 does not ship; the PC machine boots the
        # same kernel.
        "--disable-microvm",
        "--cpus",
        str(cpus),
        "--memory",
        memory,
        "--rwdir",
        str(rundir),
        # The kernel's messages on the console (loglevel 7): WARN splats are KERN_WARNING.
        "--verbose",
    ]
    if accel == "tcg":
        argv.append("--disable-kvm")
    for arg in _KERNEL_ARGS:
        argv += ["--append", arg]
    return [*argv, "--exec", command]


def _vng_env(rundir: Path) -> dict[str, str]:
    """vng runs its helpers (``virtme-run``) by name: the scripts of this interpreter's
    environment come first on PATH, so the installed virtme-ng is the one used."""
    scripts = sysconfig.get_path("scripts")
    path = os.pathsep.join(
        p for p in (scripts, os.path.dirname(sys.executable), os.environ.get("PATH", "")) if p
    )
    return {"PATH": path, "HOME": str(rundir), "TMPDIR": tempfile.gettempdir(), "LANG": "C.UTF-8"}


class _FileFollower:
    """Copies what the guest appends to a file in the run directory, as it grows."""

    def __init__(self, path: Path, write: Any) -> None:
        self._path = path
        self._write = write
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        with open(self._path, "rb") as f:
            while True:
                stopping = self._stop.is_set()  # read before the last read: nothing is missed
                data = f.read()
                if data:
                    with contextlib.suppress(Exception):
                        self._write(data)
                elif stopping:
                    return
                else:
                    self._stop.wait(0.1)

    def finish(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 900.0,
    cpus: int = 2,
    memory: str = "2G",
    stdout: Any = DEFAULT,
    stderr: Any = DEFAULT,
    console: Any = None,
    kernel: KernelBuild | None = None,
    target: KernelTarget = VM,
) -> int:
    """Boot the VM kernel with ``cpus`` CPUs, run ``argv`` inside it, return its exit status.

    The same contract as :func:`.uml.run`: ``cwd`` and ``env`` default to the caller's and are
    passed exactly; a command killed by a signal gives ``128 + signal``; ``stdout``/``stderr``
    receive the command's output as it is produced (a file object, a raw fd, or None);
    ``console`` receives the kernel's console. ``target`` chooses the kernel
    (:data:`~.targets.VM`, or :data:`~.targets.VM_CONTROL` for the unpatched one); ``kernel``
    overrides the build. Raises :class:`KernelTimeout` when the guest has not powered off
    after ``timeout`` seconds (vng and QEMU are killed) and :class:`KernelRunError` when it
    stops without reporting a status (a panic, for instance).
    """
    if is_inside_vm():
        raise KernelRunError("already running inside the VM vehicle: not booting another")
    if cpus < 1:
        raise ValueError(f"cpus must be at least 1, not {cpus}")
    if not argv:
        raise ValueError("run() needs a command")
    if kernel is None:
        kernel = find_kernel(target) or build(target)
    verify_kernel(kernel)
    ensure_vm_tools()
    if importlib.util.find_spec("virtme_ng") is None:
        raise KernelRunError(
            "virtme-ng is not installed in this environment (pip install virtme-ng); "
            "the VM vehicle boots its kernels with it"
        )
    accel, _ = accelerator()
    cwd = os.fspath(cwd) if cwd is not None else os.getcwd()
    env = dict(os.environ) if env is None else dict(env)
    out_target = sys.stdout if stdout is DEFAULT else stdout
    err_target = sys.stderr if stderr is DEFAULT else stderr

    watchdog = Watchdog()
    try:
        rundir = Path(tempfile.mkdtemp(prefix="uring-epoll-vm-"))
        watchdog.tell("rundir", str(rundir))
    except BaseException:
        watchdog.done()
        raise
    try:
        # The command never gets a terminal here (the guest writes files), so none is claimed.
        guest_init.write_request(str(rundir), argv, env, cwd, [])
        launcher = rundir / "guest_init.py"
        shutil.copyfile(guest_init.__file__, launcher)
        for name in ("stdout", "stderr"):
            (rundir / name).touch()
        command = shlex.join(
            [
                sys.executable,
                "-I",
                str(launcher),
                "--not-init",
                "--stdout",
                str(rundir / "stdout"),
                "--stderr",
                str(rundir / "stderr"),
                str(rundir),
            ]
        )
        console_log = rundir / "console.log"
        log_file = open(console_log, "wb")  # noqa: SIM115 - closed in the finally below
        console_write = sink(console)

        def console_sink(data: bytes) -> None:
            log_file.write(data)
            log_file.flush()
            console_write(data)

        con_r, con_w = os.pipe()
        try:
            proc = subprocess.Popen(
                _vng_argv(kernel, rundir, command, cpus, memory, accel),
                stdin=subprocess.DEVNULL,
                stdout=con_w,
                stderr=con_w,
                env=_vng_env(rundir),
                cwd=str(rundir),
                preexec_fn=guest_preexec(os.getpid()),
                start_new_session=True,
            )
        except BaseException:
            os.close(con_r)
            log_file.close()
            raise
        finally:
            os.close(con_w)
        watchdog.tell("pgid", proc.pid)
        followers = [
            _FileFollower(rundir / "stdout", sink(out_target)),
            _FileFollower(rundir / "stderr", sink(err_target)),
        ]
        console_pump = pump(con_r, console_sink)
        try:
            timed_out = wait_then_kill(proc, timeout)
        finally:
            console_pump.join(timeout=10)
            for follower in followers:
                follower.finish()
            log_file.close()
        return outcome(
            argv,
            guest="the VM",
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
        watchdog.done()


class VMCompletedProcess(KernelCompletedProcess):
    """A captured VM run: also says which accelerator and how many CPUs it had."""

    accel: str = ""
    cpus: int = 0
    seconds: float = 0.0


def run_capture(
    argv: Sequence[str | os.PathLike[str]], *, timeout: float = 900.0, **kwargs: Any
) -> VMCompletedProcess:
    """:func:`run` with stdout, stderr and the kernel console captured as text."""
    started = time.monotonic()
    result = capture(run, argv, VMCompletedProcess, timeout=timeout, **kwargs)
    result.accel = accelerator()[0]
    result.cpus = int(kwargs.get("cpus", 2))
    result.seconds = time.monotonic() - started
    return result
