"""The ``uring-epoll`` command: info, bench, demo, kernel."""

from __future__ import annotations

import argparse
import os
import resource
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__, abi, probe


def cmd_info(args: Any) -> int:
    """What this machine offers: kernel, backends (and why not), protocol, RLIMIT_MEMLOCK."""
    uname = os.uname()
    print(f"uring-epoll {__version__}")
    print(f"kernel:          {uname.sysname} {uname.release} {uname.machine}")
    print(f"epoll_create2:   syscall {abi.NR_EPOLL_CREATE2} (announced in {abi.USERPOLL_SYSCTL})")
    statuses = probe.backend_status()
    try:
        auto = probe.resolve_backend(None)
    except ValueError as exc:
        auto = f"error: {exc}"
    print(
        f"backend (auto):  {auto}"
        + (
            f"  [{probe.BACKEND_ENV}={os.environ[probe.BACKEND_ENV]}]"
            if os.environ.get(probe.BACKEND_ENV)
            else ""
        )
    )
    for status in statuses.values():
        state = "available" if status.available else f"unavailable: {status.reason}"
        print(f"  {status.name:<7} {state}")
    print("protocols:       5 (default; kernel and thread), 3 (thread only)")
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    print(
        f"RLIMIT_MEMLOCK:  soft {_limit(soft)}, hard {_limit(hard)} "
        f"(a ring of 1024 items locks {abi.header_length(1024) + abi.index_length(1024)} bytes)"
    )
    try:
        from . import vpoll

        print(f"vpoll:           {vpoll.describe_implementations()}")
    except (ImportError, AttributeError):
        pass
    return 0


def _limit(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else f"{value} bytes"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="uring-epoll",
        description="Consume, measure and study epoll readiness through the EPOLL_USERPOLL ring.",
    )
    parser.add_argument("--version", action="version", version=f"uring-epoll {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("info", help="kernel, available backends and limits")
    p.set_defaults(func=cmd_info)
    from . import benchmarks

    benchmarks.add_cli(sub)
    for module in ("demo", "kernel"):
        try:
            mod = __import__(f"uring_epoll.{module}", fromlist=["add_cli"])
        except ImportError:
            continue
        add_cli = getattr(mod, "add_cli", None)
        if add_cli is not None:
            add_cli(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``uring-epoll`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
