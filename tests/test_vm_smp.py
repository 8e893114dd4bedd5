"""The series on two CPUs: the x86_64 VM vehicle with a PREEMPT + lockdep + KASAN kernel.

User-Mode Linux is uniprocessor and never preempts the kernel, so these are the tests that put
the series' lock-free append, its wake-ups and its locking on more than one CPU. Each kernel
boots once per session and runs a batch (:mod:`uring_epoll.kernel.guest_batch`); the tests
below read its results:

* the patched kernel (:data:`~uring_epoll.kernel.VM`): the series' own selftests, all 64 cases
  of 6.1's ``epoll_wakeup_test``, the cases known to be timing-sensitive under QEMU repeated
  :data:`REPEATS` times, and the package's test files that exercise the backends (the kernel
  backend required; the SMP stress and hostile-ring tests among them);
* the same kernel without the series (:data:`~uring_epoll.kernel.VM_CONTROL`): the repeated
  cases, as many times, as the control.

A case that fails on the patched kernel is a failure unless it is one of :data:`REPEATED`, and
those fail when the patched kernel fails them significantly more often than the control (a
one-sided Fisher exact test). Any lockdep, KASAN, WARN, BUG or RCU-stall report on either
console fails too.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from uring_epoll.kernel import (
    SELFTEST_DIR,
    VM,
    VM_CONTROL,
    KernelBuild,
    compile_selftest,
    guest_batch,
    vm,
)
from uring_epoll.kernel.cli import pytest_command
from uring_epoll.kernel.selftest import selftest_sources

try:
    import uml_support
    import vm_support
except ImportError:  # tests/ imported as a package
    from tests import uml_support, vm_support

pytestmark = pytest.mark.vm

HERE = Path(__file__).resolve().parent
WAKEUP_TEST = "epoll_wakeup_test.c"
#: Cases of epoll_wakeup_test seen failing under QEMU's emulated CPUs on the unpatched kernel
#: too (epoll56, epoll58: a thread must block within a fixed sleep of another), and epoll16,
#: seen failing only with the series in a first small sample. Each is repeated on both kernels.
REPEATED = ("epoll16", "epoll56", "epoll58")
#: Runs of each repeated case per kernel: with 60, a case failing 30% of the time on one kernel
#: and never on the other gives p ~ 1e-6; equal rates stay far above 0.001.
REPEATS = int(os.environ.get("URING_EPOLL_VM_REPEATS", "60"))
#: A repeated case fails when the patched kernel's excess of failures has p below this.
SIGNIFICANCE = 0.001
#: The harness timeout of each case: 6.1's 30 s is too short for epoll59's 100000 round trips
#: between two threads under CPU emulation with lockdep and KASAN.
CASE_TIMEOUT = 300
#: The timeout of one boot (everything of one kernel's batch).
BOOT_TIMEOUT = 2400.0


def fisher_greater(a_fail: int, a_total: int, b_fail: int, b_total: int) -> float:
    """P(a kernel fails at least ``a_fail`` of ``a_total`` | the 2x2 margins): the one-sided
    Fisher exact test that A's failure rate is higher than B's."""
    failures = a_fail + b_fail
    total = a_total + b_total
    denominator = math.comb(total, failures)
    return (
        sum(
            math.comb(a_total, k) * math.comb(b_total, failures - k)
            for k in range(a_fail, min(a_total, failures) + 1)
        )
        / denominator
    )


def test_fisher_greater_is_the_textbook_value() -> None:
    # 3/10 against 0/9 (the first sample that raised the question): not significant.
    assert fisher_greater(3, 10, 0, 9) == pytest.approx(120 / 969)  # C(10,3) / C(19,3)
    assert fisher_greater(18, 60, 0, 60) < 1e-5
    assert fisher_greater(5, 60, 5, 60) > 0.5


#: Test files that exercise the kernel backend or the kernel's vpoll without going through
#: tests/backends.py (which every other backend test file imports).
KERNEL_TEST_FILES = (
    "test_vpoll.py",
    "test_estale_bound.py",
    "test_threads.py",
    "test_ring_drain.py",
    "test_bounded_waits.py",
)


def _backend_test_files(root: Path) -> list[str]:
    """The test files that run against the backends: those importing tests/backends.py, and
    :data:`KERNEL_TEST_FILES`."""
    files = []
    for path in sorted((root / "tests").glob("test_*.py")):
        text = path.read_text()
        if path.name in KERNEL_TEST_FILES or re.search(
            r"^\s*(from backends import|import backends)", text, re.M
        ):
            files.append(f"tests/{path.name}")
    return files


class Campaign:
    """One kernel's batch: compiled on the host, run in one boot, results kept by job."""

    def __init__(self, result: vm.VMCompletedProcess) -> None:
        self.result = result
        self.runs: dict[str, list[dict[str, Any]]] = {}
        for run in guest_batch.read_results(result.stdout):
            self.runs.setdefault(run["job"], []).append(run)

    def only(self, job: str) -> dict[str, Any]:
        runs = self.runs.get(job, [])
        assert len(runs) == 1, f"job {job}: {len(runs)} results (the guest stopped early?)"
        return runs[0]


def _compile(source: Path, kernel: KernelBuild, outdir: Path) -> Path:
    try:
        return compile_selftest(source, kernel, outdir)
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"{source.name} does not compile:\n{exc.stderr}", pytrace=False)


def _compile_only(kernel: KernelBuild, outdir: Path) -> Path:
    """kselftest_only.c around the tree's epoll_wakeup_test.c (see that file)."""
    selftests = kernel.src / "tools/testing/selftests"
    binary = outdir / "epoll_wakeup_only"
    proc = subprocess.run(
        [
            "gcc",
            "-O2",
            "-pthread",
            f"-I{selftests}",
            f'-DKSELFTEST_SOURCE="{kernel.src / SELFTEST_DIR / WAKEUP_TEST}"',
            str(HERE / "kselftest_only.c"),
            "-o",
            str(binary),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    return binary


@pytest.fixture(scope="module")
def binaries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every C program of the campaign, compiled on the host against the patched tree (the
    guest sees the host's /tmp). The stock epoll_wakeup_test is the same file in both trees."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    kernel = vm_support.kernel(VM)
    outdir = tmp_path_factory.mktemp("vm-binaries")
    found = {source.name: _compile(source, kernel, outdir) for source in selftest_sources(kernel)}
    found["only"] = _compile_only(kernel, outdir)
    return found


def _repeat_jobs(binaries: dict[str, Path]) -> list[guest_batch.Job]:
    return [
        {
            "name": f"wakeup-{case}",
            "argv": [str(binaries["only"]), case],
            "timeout": 120,
            "repeat": REPEATS,
        }
        for case in REPEATED
    ]


def _boot(jobs: list[guest_batch.Job], target: Any, plan_dir: Path) -> Campaign:
    plan = plan_dir / f"plan-{target.name}.json"
    facts: guest_batch.Job = {
        "name": "facts",
        "argv": ["sh", "-c", "nproc; cat /proc/sys/fs/epoll/userpoll_nr 2>/dev/null || echo -"],
    }
    guest_batch.write_plan(str(plan), [facts, *jobs])
    result = vm_support.run_in_vm(
        [sys.executable, "-I", guest_batch.__file__, str(plan)],
        timeout=BOOT_TIMEOUT,
        target=target,
    )
    assert result.returncode == 0, f"the batch driver failed:\n{result.stderr[-3000:]}"
    return Campaign(result)


@pytest.fixture(scope="module")
def patched(binaries: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Campaign:
    root = uml_support.REPO_ROOT
    guest_tmp = "/tmp"  # the guest's own, writable overlay
    jobs: list[guest_batch.Job] = [
        {"name": f"selftest-{name}", "argv": [str(path)], "timeout": 600}
        for name, path in sorted(binaries.items())
        if name not in (WAKEUP_TEST, "only")
    ]
    jobs += [
        # Every case, through kselftest_only.c for its longer harness timeout (see there).
        {
            "name": "wakeup-all",
            "argv": [str(binaries["only"])],
            "env": {"KSELFTEST_TIMEOUT": str(CASE_TIMEOUT)},
            "timeout": 1200,
        },
        *_repeat_jobs(binaries),
    ]
    jobs.append(
        {
            "name": "package-tests",
            "argv": pytest_command(*_backend_test_files(root), "-m", "not uml and not vm"),
            "cwd": str(root),
            "timeout": 1500,
            "env": {
                "URING_EPOLL_IN_VM": "1",
                "URING_EPOLL_REQUIRE_KERNEL": "1",
                "URING_EPOLL_TEST_BACKENDS": "kernel",
                "TMPDIR": guest_tmp,
            },
        }
    )
    return _boot(jobs, VM, tmp_path_factory.mktemp("vm-plan"))


@pytest.fixture(scope="module")
def control(binaries: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Campaign:
    vm_support.kernel(VM_CONTROL)
    return _boot(_repeat_jobs(binaries), VM_CONTROL, tmp_path_factory.mktemp("vm-plan"))


def _cases(output: str) -> dict[str, bool]:
    """{case: passed} from a kselftest harness's TAP output."""
    return {
        m.group(2).removeprefix("global."): m.group(1) == "ok"
        for m in re.finditer(r"^(ok|not ok) \d+ (\S+)", output, re.M)
    }


def test_the_vm_has_the_cpus_and_the_series(patched: Campaign, control: Campaign) -> None:
    nproc, userpoll = patched.only("facts")["stdout"].split()
    assert int(nproc) == vm_support.CPUS >= 2
    assert userpoll == "500"
    nproc, userpoll = control.only("facts")["stdout"].split()
    assert int(nproc) == vm_support.CPUS and userpoll == "-"
    print(f"VM: {patched.result.accel}, {patched.result.cpus} CPUs")


@pytest.mark.parametrize("kernel_name", ["patched", "control"])
def test_no_kernel_problem_on_the_console(
    kernel_name: str, patched: Campaign, control: Campaign
) -> None:
    campaign = patched if kernel_name == "patched" else control
    problems = campaign.result.kernel_problems
    assert not problems, f"the {kernel_name} kernel reported:\n{problems}"


def test_series_selftests_pass(patched: Campaign, binaries: dict[str, Path]) -> None:
    names = sorted(n for n in binaries if n not in (WAKEUP_TEST, "only"))
    assert names, "the series adds selftests; none were found in the built tree"
    for name in names:
        run = patched.only(f"selftest-{name}")
        cases = _cases(run["stdout"])
        assert cases and all(cases.values()), (
            f"{name}: exit {run['returncode']}, failed: "
            f"{[c for c, ok in cases.items() if not ok]}\n{run['stdout'][-2000:]}"
        )
        assert run["returncode"] == 0 and not run["timed_out"]


def test_every_epoll_wakeup_case_passes_on_two_cpus(patched: Campaign) -> None:
    """All 64 cases, epoll59/60 included (they time out on uniprocessor UML); only the
    repeated cases are judged by their rates instead (next test)."""
    run = patched.only("wakeup-all")
    cases = _cases(run["stdout"])
    assert len(cases) == 64, run["stdout"][-2000:]
    failed = sorted(c for c, ok in cases.items() if not ok and c not in REPEATED)
    assert not failed, f"failed on the patched kernel: {failed}\n{run['stdout'][-3000:]}"


def _failures(campaign: Campaign, case: str) -> tuple[int, int]:
    runs = campaign.runs.get(f"wakeup-{case}", [])
    return sum(not _cases(r["stdout"]).get(case, False) for r in runs), len(runs)


@pytest.mark.parametrize("case", REPEATED)
def test_repeated_case_fails_no_more_often_than_on_the_control(
    case: str, patched: Campaign, control: Campaign
) -> None:
    p_fail, p_total = _failures(patched, case)
    c_fail, c_total = _failures(control, case)
    assert p_total == c_total == REPEATS
    p = fisher_greater(p_fail, p_total, c_fail, c_total)
    print(f"{case}: patched {p_fail}/{p_total} failed, control {c_fail}/{c_total}; p = {p:.3g}")
    assert p >= SIGNIFICANCE, (
        f"{case} fails more often with the series: {p_fail}/{p_total} against "
        f"{c_fail}/{c_total} on the unpatched kernel (one-sided Fisher p = {p:.2g})"
    )


def test_package_backend_tests_pass_with_the_kernel_backend(patched: Campaign) -> None:
    run = patched.only("package-tests")
    assert run["returncode"] == 0 and not run["timed_out"], (
        f"pytest in the VM exited {run['returncode']} (timed out: {run['timed_out']}):\n"
        f"{run['stdout'][-6000:]}\n{run['stderr'][-2000:]}"
    )
    summary = run["stdout"].strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary), summary
    print(f"in the VM: {summary}")
