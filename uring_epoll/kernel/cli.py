"""``uring-epoll kernel build|path|clean|run|test|selftest``: the kernel tooling's commands."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import vm
from .builder import build
from .cache import cache_key, clean_all, find_kernel, prune
from .errors import KernelBuildError, KernelCacheError, KernelRunError, KernelTimeout
from .selftest import compile_selftest, selftest_sources, selftest_verdict
from .targets import UML, VM, VM_CONTROL, KernelTarget
from .uml import IN_UML_ENV, run, run_capture

__all__ = ["add_cli", "main", "pytest_command"]


def _test_root(given: str | None) -> Path | None:
    """The checkout whose ``tests/`` the ``test`` subcommand runs: ``given`` (``--root``), else
    the current directory or the nearest parent with a ``tests/conftest.py``. The installed
    package has no tests of its own, so this never falls back to the package's location."""
    if given is not None:
        root = Path(given).expanduser().resolve()
        return root if (root / "tests" / "conftest.py").is_file() else None
    cwd = Path.cwd().resolve()
    for candidate in (cwd, *cwd.parents):
        if (candidate / "tests" / "conftest.py").is_file():
            return candidate
    return None


def _target(args: argparse.Namespace) -> KernelTarget:
    """The kernel the command is about: UML, or with ``--vm`` the x86_64 debug kernel (its
    unpatched control with ``--control``)."""
    if getattr(args, "vm", False):
        return VM_CONTROL if getattr(args, "control", False) else VM
    return UML


def _boot(args: argparse.Namespace, argv: Sequence[str], **kwargs: Any) -> int:
    """Run ``argv`` in the vehicle the options chose (``kwargs`` as for both ``run``s)."""
    if args.vm:
        return vm.run(argv, cpus=args.cpus, memory=args.mem or "2G", target=_target(args), **kwargs)
    return run(argv, mem=args.mem or "512M", **kwargs)


def _boot_capture(args: argparse.Namespace, argv: Sequence[str], **kwargs: Any) -> Any:
    if args.vm:
        return vm.run_capture(
            argv, cpus=args.cpus, memory=args.mem or "2G", target=_target(args), **kwargs
        )
    return run_capture(argv, mem=args.mem or "512M", **kwargs)


#: The markers of tests that boot a kernel themselves: a run inside a guest deselects them.
HOST_ONLY = "not uml and not vm"


def _cmd_build(args: argparse.Namespace) -> int:
    try:
        kernel = build(_target(args), force=args.force)
    except KernelBuildError as exc:
        print(f"uring-epoll kernel build: {exc}", file=sys.stderr)
        return 1
    print(kernel.linux)
    return 0


def _cmd_path(args: argparse.Namespace) -> int:
    try:
        kernel = find_kernel(_target(args))
    except KernelCacheError as exc:
        print(f"uring-epoll kernel path: {exc}", file=sys.stderr)
        return 1
    if kernel is None:
        try:
            key = cache_key(_target(args))
        except KernelBuildError as exc:
            print(f"uring-epoll kernel path: {exc}", file=sys.stderr)
            return 1
        print(
            f"uring-epoll kernel path: not built for the current patches (key {key}); "
            "run `uring-epoll kernel build`",
            file=sys.stderr,
        )
        return 1
    print(kernel.src if args.src else kernel.linux)
    return 0


def _cmd_clean(args: argparse.Namespace) -> int:
    if args.all:
        for removed in clean_all():
            print(f"removed {removed}")
        return 0
    for removed in prune(keep=args.keep):
        print(f"removed {removed}")
    return 0


class _Terminated(BaseException):
    """Raised in the main thread by SIGTERM, SIGHUP or SIGINT while a CLI command boots a
    kernel."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _terminate_cleanly() -> Any:
    """Turn SIGTERM, SIGHUP and SIGINT (Ctrl-C) into an exception, so that :func:`run` kills
    the guest and removes its directory on the way out; then die by that signal, as a shell
    expects of a program killed by it, without a traceback. A signal the caller ignores
    (``nohup``, a background job) stays ignored; a second signal during the cleanup is
    ignored too (the watchdog still covers a SIGKILL)."""
    signals = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        for s in signals:
            signal.signal(s, signal.SIG_IGN)
        raise _Terminated(signum)

    previous = {s: signal.getsignal(s) for s in signals}
    for s in signals:
        # SIGINT's usual handler is Python's (KeyboardInterrupt), the others' the default.
        if previous[s] in (signal.SIG_DFL, signal.default_int_handler):
            signal.signal(s, handler)
    try:
        yield
    except _Terminated as exc:
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(exc.signum, signal.SIG_DFL)
        os.kill(os.getpid(), exc.signum)
        raise SystemExit(128 + exc.signum) from None  # not reached unless blocked
    finally:
        for s in signals:
            signal.signal(s, previous[s])


def _run_cli(
    argv: Sequence[str],
    args: argparse.Namespace,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> int:
    try:
        with _terminate_cleanly():
            return _boot(
                args,
                argv,
                timeout=args.timeout,
                env=env,
                cwd=cwd,
                console=sys.stderr if args.console else None,
            )
    except KernelBuildError as exc:
        print(f"uring-epoll kernel: {exc}", file=sys.stderr)
        return 1
    except KernelTimeout as exc:
        print(f"uring-epoll kernel: {exc}", file=sys.stderr)
        return 124
    except KernelRunError as exc:
        print(f"uring-epoll kernel: {exc}", file=sys.stderr)
        return 125


def _cmd_run(args: argparse.Namespace) -> int:
    argv = list(args.cmd)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        print(
            "uring-epoll kernel run: no command given (usage: kernel run -- CMD...)",
            file=sys.stderr,
        )
        return 2
    return _run_cli(argv, args)


def pytest_command(*args: str) -> list[str]:
    """This interpreter running pytest quietly, without a cache folder in the tree it tests
    (the in-kernel runs and the tests' own child runs all use it)."""
    return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]


def _cmd_test(args: argparse.Namespace) -> int:
    extra = list(args.pytest_args)
    if extra and extra[0] == "--":
        extra = extra[1:]
    root = _test_root(args.root)
    if root is None:
        where = args.root if args.root is not None else f"{Path.cwd()} or its parents"
        print(
            f"uring-epoll kernel test: no tests/conftest.py in {where}; run it from a "
            "checkout (or an unpacked sdist) of uring-epoll, or pass --root DIR",
            file=sys.stderr,
        )
        return 2
    argv = pytest_command("tests", "-m", HOST_ONLY, *extra)
    guest_env = {"URING_EPOLL_IN_VM": "1"} if args.vm else {IN_UML_ENV: "1"}
    env = dict(os.environ, **guest_env, URING_EPOLL_REQUIRE_KERNEL="1")
    return _run_cli(argv, args, env=env, cwd=str(root))


def _cmd_selftest(args: argparse.Namespace) -> int:
    try:
        kernel = build(_target(args))
    except KernelBuildError as exc:
        print(f"uring-epoll kernel selftest: {exc}", file=sys.stderr)
        return 1
    sources = selftest_sources(kernel)
    if args.names:
        sources = [s for s in sources if s.stem in args.names or s.name in args.names]
    if not sources:
        print("uring-epoll kernel selftest: no selftests found", file=sys.stderr)
        return 1
    failed = []
    with tempfile.TemporaryDirectory(prefix="uring-epoll-selftests-") as tmp:
        for source in sources:
            try:
                binary = compile_selftest(source, kernel, Path(tmp))
            except subprocess.CalledProcessError as exc:
                print(
                    f"--- {source.name}: does not compile\n{exc.stdout}{exc.stderr}",
                    file=sys.stderr,
                )
                failed.append(source.name)
                continue
            print(f"--- {source.name}", flush=True)
            try:
                with _terminate_cleanly():
                    result = _boot_capture(
                        args,
                        [str(binary)],
                        timeout=args.timeout,
                        cwd=tmp,
                        kernel=kernel,
                        console=sys.stderr if args.console else None,
                    )
            except KernelRunError as exc:
                print(f"--- {source.name}: {exc}", file=sys.stderr)
                failed.append(source.name)
                continue
            sys.stdout.write(result.stdout)
            sys.stderr.write(result.stderr)
            verdict = selftest_verdict(source.name, result, uml=not args.vm)
            print(f"--- {source.name}: exit {result.returncode}: {verdict or 'ok'}", flush=True)
            if verdict is not None:
                failed.append(source.name)
    print(
        f"{len(sources) - len(failed)}/{len(sources)} selftests passed"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``kernel build|path|run|test|selftest`` to the ``uring-epoll`` command."""
    kernel: argparse.ArgumentParser = subparsers.add_parser(
        "kernel",
        help="build the patched kernel as User-Mode Linux and run things in it",
        description="Build Linux 6.1 with kernel_patches/ as User-Mode Linux (cached by the "
        "hash of the patches and config) and run commands inside it.",
    )
    sub = kernel.add_subparsers(dest="kernel_command", metavar="SUBCOMMAND")

    def vehicle_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--vm",
            action="store_true",
            help="the x86_64 debug kernel (PREEMPT, lockdep, KASAN) in a QEMU VM through "
            "virtme-ng, instead of User-Mode Linux",
        )
        p.add_argument(
            "--control",
            action="store_true",
            help="with --vm: the same kernel without the patch series",
        )

    # Options of the subcommands that boot a kernel.
    def boot_options(p: argparse.ArgumentParser, timeout: float) -> None:
        vehicle_options(p)
        p.add_argument(
            "--cpus", type=int, default=2, metavar="N", help="with --vm: virtual CPUs (2)"
        )
        p.add_argument(
            "--timeout",
            type=float,
            default=timeout,
            metavar="S",
            help=f"kill the kernel after S seconds (default {timeout:g})",
        )
        p.add_argument("--mem", help="guest memory (default 512M for UML, 2G for --vm)")
        p.add_argument(
            "--console",
            action="store_true",
            help="show the kernel console (boot messages) on stderr",
        )

    p = sub.add_parser("build", help="build the kernel, or reuse the cached one; print its path")
    vehicle_options(p)
    p.add_argument("--force", action="store_true", help="rebuild even if cached")
    p.set_defaults(func=_cmd_build)

    p = sub.add_parser("path", help="print the cached kernel's path (exit 1 if not built)")
    vehicle_options(p)
    p.add_argument("--src", action="store_true", help="print the build tree instead")
    p.set_defaults(func=_cmd_path)

    p = sub.add_parser("clean", help="delete old kernel builds from the cache")
    p.add_argument("--keep", type=int, default=1, help="builds to keep, current first (1)")
    p.add_argument("--all", action="store_true", help="delete every build, current included")
    p.set_defaults(func=_cmd_clean)

    p = sub.add_parser(
        "run",
        help="run a command inside the kernel; exit with its status",
        usage="%(prog)s [--vm [--control] [--cpus N]] [--timeout S] [--mem M] [--console] "
        "-- CMD...",
    )
    boot_options(p, 600.0)
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="the command and its arguments")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("test", help="run the test suite (pytest -m 'not uml') inside the kernel")
    boot_options(p, 1800.0)
    p.add_argument(
        "--root",
        metavar="DIR",
        help="the checkout whose tests/ to run (default: the current directory or the "
        "nearest parent holding tests/conftest.py)",
    )
    p.add_argument("pytest_args", nargs=argparse.REMAINDER, help="extra pytest arguments")
    p.set_defaults(func=_cmd_test)

    p = sub.add_parser("selftest", help="compile the epoll C selftests and run them inside")
    boot_options(p, 900.0)
    p.add_argument("names", nargs="*", help="only these selftests (file names or stems)")
    p.set_defaults(func=_cmd_selftest)

    def no_subcommand(args: argparse.Namespace) -> int:
        kernel.print_help()
        return 2

    kernel.set_defaults(func=no_subcommand)
    return kernel


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m uring_epoll.kernel ...``: the kernel subcommands without the package CLI."""
    parser = argparse.ArgumentParser(prog="python -m uring_epoll.kernel")
    add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["kernel", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args) or 0)
