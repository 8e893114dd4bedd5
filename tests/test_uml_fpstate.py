"""The guest's FP/vector registers survive the User-Mode Linux kernel.

UML keeps each task's FP state in a buffer it moves to and from the host with ptrace; the
series sizes that buffer from the host at boot (the XSAVE area is 11008 bytes with AMX, and the
host refuses any other size). ``fpstate_check.c`` loads every vector register of the CPU with a
per-worker pattern, makes thousands of ``sched_yield``s and self-signals, and checks the
registers after each; two processes of two threads each run it at once. Its ``--clobber`` mode
proves it can fail, and the size the kernel reports at boot is compared with the host CPU's.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from c_programs import compile_c

try:
    import uml_support
except ImportError:  # tests/ imported as a package
    from tests import uml_support

SOURCE = Path(__file__).resolve().parent / "fpstate_check.c"
#: The line arch/um/kernel/um_arch.c prints at boot with the size of a task's FP state.
SIZE_LINE = re.compile(r"FP state of a thread: (\d+) bytes")


@pytest.fixture(scope="module")
def checker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fpstate_check compiled on the host (the guest runs host binaries through hostfs)."""
    return compile_c(SOURCE, tmp_path_factory.mktemp("fpstate") / "fpstate_check")


def host_xsave_size(checker: Path) -> int:
    """The XSAVE area size of this CPU for the enabled features (CPUID 0xD), or 512."""
    out = subprocess.run(
        [str(checker), "--xsave-size"], capture_output=True, text=True, check=True
    ).stdout
    return int(out)


def test_checker_passes_on_the_host(checker: Path) -> None:
    """The host kernel is the reference: the checker must pass there."""
    proc = subprocess.run([str(checker)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "fpstate_check: PASS" in proc.stdout


@pytest.mark.parametrize("mode", ["sse", "avx", "avx512"])
def test_checker_detects_a_clobbered_register(checker: Path, mode: str) -> None:
    """One register changed between the syscall and the check must make it fail."""
    proc = subprocess.run(
        [str(checker), "--mode", mode, "--clobber", "--iterations", "512"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode == 2 and "has no" in proc.stderr:
        pytest.skip(f"this CPU has no {mode}")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert re.search(
        r"FAIL: worker 1 iteration 256 \(after sched_yield\): [xyz]mm3 differs", proc.stderr
    ), proc.stderr


def test_xsave_size_is_plausible(checker: Path) -> None:
    # FXSAVE alone is 512 bytes; XSAVE adds a 64-byte header and at least the AVX state.
    size = host_xsave_size(checker)
    assert size == 512 or size >= 576, size
    assert size % 8 == 0


@pytest.mark.uml
def test_fp_state_survives_context_switches_in_uml(checker: Path) -> None:
    """In the guest: the registers survive switches, signals, and match the host's size."""
    result = uml_support.run_in_kernel([str(checker), "--iterations", "4096"], timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fpstate_check: PASS" in result.stdout
    # On a host whose XSAVE area differs from the size UML uses, PTRACE_SETREGSET fails and
    # the guest panics before reaching this point; on other hosts a wrong size shows here.
    sizes = SIZE_LINE.findall(result.console)
    assert sizes, "the kernel did not report its FP state size:\n" + result.console[-2000:]
    assert int(sizes[0]) == host_xsave_size(checker)


@pytest.mark.uml
@pytest.mark.parametrize("mode", ["sse", "avx"])
def test_narrower_registers_survive_in_uml(checker: Path, mode: str) -> None:
    """The legacy and AVX encodings leave the wider parts to the kernel's save/restore too."""
    result = uml_support.run_in_kernel(
        [str(checker), "--mode", mode, "--iterations", "1024"], timeout=600
    )
    if result.returncode == 2 and "has no" in result.stderr:
        pytest.skip(f"this CPU has no {mode}")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.uml
def test_checker_detects_a_clobbered_register_in_uml(checker: Path) -> None:
    """The failure path works inside the guest as well (the pass above is not vacuous)."""
    result = uml_support.run_in_kernel(
        [str(checker), "--clobber", "--iterations", "512"], timeout=600
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "differs" in result.stderr
