"""``uring-epoll demo``: its exact output in --fast mode, per vpoll implementation and ring."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

import uring_epoll
from uring_epoll import demo
from uring_epoll import vpoll as vp

REQUIRE_KERNEL = os.environ.get("URING_EPOLL_REQUIRE_KERNEL", "") not in ("", "0")
T = "timeout..."
#: Ring backends to run the demo on (see test_vpoll.RING_BACKENDS).
RING_BACKENDS = uring_epoll.available_backends()
if REQUIRE_KERNEL and "kernel" not in RING_BACKENDS:
    RING_BACKENDS.insert(0, "kernel")

#: Every step is raised half a tick after the second of two ticks: two timeouts, then the event.
KERNEL_LINES = [
    line for ev in ("1", "1", "3", "2", "4", "10") for line in (T, T, f"GOT event {ev}")
]
#: The emulation raises IN for IN|PRI and nothing for PRI (two more ticks pass), and its hangup
#: reads IN|HUP|RDHUP.
EMULATION_LINES = [
    T,
    T,
    "GOT event 1",
    T,
    T,
    "GOT event 1",
    T,
    T,
    "GOT event 1",
    T,
    T,
    T,
    T,
    "GOT event 4",
    T,
    T,
    "GOT event 2011",
]


def expected(impl: str, backend: str) -> list[str]:
    first = f"vpoll implementation: {impl}"
    if impl == "emulation":
        first += " (cannot raise PRI: the child raises IN for IN|PRI and skips PRI)"
    body = EMULATION_LINES if impl == "emulation" else KERNEL_LINES
    if impl != "emulation" and backend == "uring":
        # io_uring ignores a wake-up whose key holds nothing but EPOLLPRI (io_poll_wake masks
        # IO_ASYNC_POLL_COMMON out of the match), so the child's PRI step wakes no poll
        # request: two more ticks pass, and PRI shows with the OUT step (6). See
        # test_uring_backend.test_a_pri_only_wakeup_is_not_seen_by_io_uring.
        steps = [(T, T, f"GOT event {ev}") for ev in ("1", "1", "3")]
        body = [x for step in steps for x in step] + [T, T, T, T, "GOT event 6"]
        body += [T, T, "GOT event 10"]
    if impl == "emulation" and backend in ("kernel", "uring"):
        # The kernel ring and io_uring report a wake-up's key, not a re-poll: a unix socket's
        # data wake-up says IN|PRI. Its key-less shutdown is polled: 2011 as on epoll_wait.
        # See test_vpoll.test_kernel_ring_reports_socket_wake_keys.
        body = [{"GOT event 1": "GOT event 3"}.get(x, x) for x in body]
    return [first, f"ring backend: {backend}", *body]


class StampedOut(io.StringIO):
    """Keeps the output, and when each line came (shown when a comparison fails)."""

    def __init__(self) -> None:
        super().__init__()
        self.start = time.monotonic()
        self.stamps: list[str] = []

    def write(self, text: str) -> int:
        if text.strip():
            self.stamps.append(f"{time.monotonic() - self.start:7.3f} {text.strip()}")
        return super().write(text)

    def check(self, want: list[str]) -> None:
        assert self.getvalue().splitlines() == want, "\n".join(self.stamps)


def run_and_check(run: Callable[[StampedOut], int], want: list[str]) -> None:
    """The events (and their order) must match on every run; the timeouts between them too,
    but they depend on the scheduler keeping each step within half a tick (50 ms) of its time,
    which a saturated machine does not always do: one rerun is allowed for timing alone."""
    for attempt in (1, 2):
        out = StampedOut()
        assert run(out) == 0, "\n".join(out.stamps)
        lines = out.getvalue().splitlines()
        assert [x for x in lines if x != T] == [x for x in want if x != T], "\n".join(out.stamps)
        if lines == want or attempt == 2:
            out.check(want)
            return


def _use(impl: str) -> None:
    status = vp.implementation_status()[impl]
    if not status.available:
        if REQUIRE_KERNEL and impl != "emulation":
            pytest.fail(f"vpoll {impl} must be available here: {status.reason}", pytrace=False)
        pytest.skip(f"vpoll {impl} unavailable: {status.reason}")


@pytest.mark.parametrize("backend", RING_BACKENDS)
@pytest.mark.parametrize("impl", vp.IMPLEMENTATIONS)
def test_fast_demo_output(impl: str, backend: str) -> None:
    _use(impl)
    run_and_check(
        lambda out: demo.run_demo(backend=backend, fast=True, impl=impl, out=out),
        expected(impl, backend),
    )


def test_auto_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    from uring_epoll import probe

    monkeypatch.delenv(vp.VPOLL_ENV, raising=False)
    monkeypatch.delenv(probe.BACKEND_ENV, raising=False)
    run_and_check(
        lambda out: demo.run_demo(fast=True, out=out),
        expected(vp.resolve_impl(None), probe.resolve_backend(None)),
    )


def command_runner(argv: list[str]) -> Callable[[StampedOut], int]:
    """A ``run`` for :func:`run_and_check` that runs the demo as a command."""

    def run(out: StampedOut) -> int:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        out.write(result.stdout)
        out.stamps.append(result.stderr)
        return result.returncode

    return run


def test_cli_demo_fast() -> None:
    """``uring-epoll demo --fast`` (through ``-m`` so an uninstalled checkout works too)."""
    backend = RING_BACKENDS[0]
    argv = [sys.executable, "-m", "uring_epoll.cli", "demo", "--fast", "--vpoll", "emulation"]
    run_and_check(command_runner([*argv, "--backend", backend]), expected("emulation", backend))


def test_console_script_demo_fast() -> None:
    """The installed ``uring-epoll`` command itself."""
    exe = shutil.which("uring-epoll")
    if exe is None:
        pytest.skip("the uring-epoll console script is not installed (pip install -e .)")
    backend = RING_BACKENDS[0]
    run_and_check(
        command_runner([exe, "demo", "--fast", "--backend", backend]),
        expected(vp.resolve_impl(None), backend),
    )


def test_cli_demo_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "uring_epoll.cli", "demo", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    for option in ("--fast", "--backend", "--vpoll"):
        assert option in result.stdout


def test_dead_child_does_not_hang_the_parent(monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(*args: object) -> None:
        raise RuntimeError("child crashed on purpose")

    monkeypatch.setattr(demo, "_child", crash)  # the forked child inherits the patch
    out = io.StringIO()
    assert demo.run_demo(backend="epoll", fast=True, impl="emulation", out=out) == 1
    assert "before the hangup" in out.getvalue()


def test_bad_arguments_fail_before_forking() -> None:
    with pytest.raises(ValueError, match="unknown backend"):
        demo.run_demo(backend="nonsense", fast=True, out=io.StringIO())
    with pytest.raises(ValueError, match="unknown vpoll implementation"):
        demo.run_demo(backend="epoll", fast=True, impl="nonsense", out=io.StringIO())
