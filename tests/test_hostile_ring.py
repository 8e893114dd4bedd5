"""A program that abuses its own EPOLL_USERPOLL ring must not hurt the kernel, nor later rings.

``hostile_ring.c`` (see its header comment) registers eventfds that producer threads write
while scribbler threads store random values over every shared word of its ring (the header's
magic, lengths, head and tail; the items' ready_events, hammered so the kernel's cmpxchg loops
retry; events; data; the index slots), a thread churns the registrations and waits on the
epoll fd, and the main thread mremaps (grow is refused, shrink, move), punches holes, unmaps
and maps again, forks a child that scribbles through its own mappings, and closes the epoll
fd while the producers still write. After the rounds, a fresh ring must deliver each of 100
written eventfds exactly once with EPOLLIN, twice over.

The ring tests need the kernel backend: they skip where it is unavailable, and fail instead
under ``URING_EPOLL_REQUIRE_KERNEL=1`` (the in-kernel run of ``test_in_kernel.py``), as
``backends.py`` does. The program's ``--no-ring`` mode (the same rounds on a plain epoll fd)
and its ``--sabotage`` negative control run everywhere. A kernel splat is caught by the
runner of the kernel vehicle, which checks the console.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from backends import AVAILABLE, IN_UML, REQUIRE_KERNEL, kernel_missing_reason
from c_programs import compile_c

from uring_epoll import abi

SOURCE = Path(__file__).resolve().parent / "hostile_ring.c"
#: Hostile rounds: at most this many, for at most this long (then the fresh check).
ROUNDS = 20 if IN_UML else 30
SECONDS = 40 if IN_UML else 20
ROUND_MS = 200 if IN_UML else 100
TIMEOUT_S = 150


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """hostile_ring compiled on the host (the guest runs host binaries through hostfs)."""
    return compile_c(SOURCE, tmp_path_factory.mktemp("hostile") / "hostile_ring")


@pytest.fixture
def kernel_ring() -> list[str]:
    """The program's arguments for the kernel's ring: the package's epoll_create2 number."""
    if "kernel" not in AVAILABLE:
        reason = kernel_missing_reason()
        if REQUIRE_KERNEL:
            pytest.fail(f"URING_EPOLL_REQUIRE_KERNEL=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    return ["--nr", str(abi.NR_EPOLL_CREATE2)]


def run(binary: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def test_hostile_ring_leaves_a_working_kernel(hostile: Path, kernel_ring: list[str]) -> None:
    proc = run(
        hostile,
        *kernel_ring,
        "--rounds",
        str(ROUNDS),
        "--seconds",
        str(SECONDS),
        "--round-ms",
        str(ROUND_MS),
    )
    print(proc.stdout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert re.search(r"^hostile_ring: PASS \(ring, [1-9]\d* rounds\)$", proc.stdout, re.M)
    # Every round ran all of its parts (scribbles and mapping steps happened).
    rounds = re.findall(
        r"^round \d+: (\d+) writes, (\d+) scribbles, (\d+) ctl ops", proc.stdout, re.M
    )
    assert rounds and all(int(w) and int(s) and int(c) for w, s, c in rounds), proc.stdout


def test_hostile_ring_check_can_fail(hostile: Path, kernel_ring: list[str]) -> None:
    """Negative control: one eventfd of the fresh ring left unwritten fails the check."""
    proc = run(hostile, *kernel_ring, "--rounds", "1", "--round-ms", "20", "--sabotage")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "fresh pass 1: eventfd 0 reported 0 times" in proc.stderr
    assert "hostile_ring: FAIL" in proc.stdout


@pytest.mark.parametrize("sabotage", [False, True])
def test_hostile_rounds_without_a_ring(hostile: Path, sabotage: bool) -> None:
    """The rounds' producers, churn, fork and close-while-writing on a plain epoll fd (any
    kernel); the fresh check there passes, or fails when sabotaged."""
    extra = ["--sabotage"] if sabotage else []
    proc = run(hostile, "--no-ring", "--rounds", "3", "--round-ms", "50", *extra)
    if sabotage:
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "eventfd 0 reported 0 times" in proc.stderr
    else:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "hostile_ring: PASS (no ring, 3 rounds)" in proc.stdout
