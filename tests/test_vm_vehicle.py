"""The x86_64 VM vehicle's contract: the same as User-Mode Linux's `kernel run`.

The command runs with the caller's working directory and exact environment, its stdout and
stderr come back apart, its exit status is returned, a timeout kills the guest, and a guest
dies with the process that booted it (SIGKILL included), its run directory removed. Each boot
costs 10-40 s under emulation, so the contract is checked in as few boots as possible.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from uring_epoll.kernel import KernelTimeout, vm

try:
    import vm_support
    from test_uml_orphans import CLEANUP_LIMIT, group_members, processes, wait_for_line
except ImportError:  # tests/ imported as a package
    from tests import vm_support
    from tests.test_uml_orphans import CLEANUP_LIMIT, group_members, processes, wait_for_line

pytestmark = pytest.mark.vm


def test_kvm_is_used_only_where_it_works(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(vm.ACCEL_ENV, "tcg")
    assert vm.accelerator() == ("tcg", f"${vm.ACCEL_ENV}=tcg")
    monkeypatch.setenv(vm.ACCEL_ENV, "bogus")
    with pytest.raises(ValueError, match="kvm"):
        vm.accelerator()
    monkeypatch.delenv(vm.ACCEL_ENV)
    accel, why = vm.accelerator()
    problem = vm.kvm_problem()
    assert (accel == "kvm") == (problem is None)
    if problem is not None:
        assert why == problem
    with open("/proc/cpuinfo") as f:
        has_flag = any(
            w in ("vmx", "svm") for line in f if line.startswith("flags") for w in line.split()
        )
    if not has_flag:  # the trap: /dev/kvm present in a VM without nested virtualisation
        assert accel == "tcg"


def test_command_contract_in_one_boot(tmp_path: Path) -> None:
    (tmp_path / "here").write_text("cwd seen\n")
    script = (
        "import os, sys; "
        "sys.stdout.write(open('here').read()); "
        "sys.stdout.write(os.environ['VM_CONTRACT'] + '\\n'); "
        "sys.stdout.write(str(os.cpu_count()) + '\\n'); "
        "sys.stderr.write('to stderr\\n'); "
        "sys.exit(7)"
    )
    result = vm_support.run_in_vm(
        [sys.executable, "-I", "-c", script],
        timeout=600,
        cwd=tmp_path,
        extra_env={"VM_CONTRACT": "a value with spaces = and quotes '\""},
    )
    assert result.returncode == 7
    assert result.stdout.splitlines() == [
        "cwd seen",
        "a value with spaces = and quotes '\"",
        str(vm_support.CPUS),
    ]
    assert result.stderr == "to stderr\n"
    assert not result.kernel_problems, result.kernel_problems


def test_a_timeout_kills_the_guest(tmp_path: Path) -> None:
    kernel = vm_support.kernel()
    before = {pid for pid, _ in processes()}
    started = time.monotonic()
    with pytest.raises(KernelTimeout) as caught:
        vm.run(["sleep", "100000"], kernel=kernel, stdout=None, stderr=None, timeout=60)
    assert time.monotonic() - started < 60 + CLEANUP_LIMIT
    assert not group_members(caught.value.pgid)
    leftovers = {pid for pid, _ in processes()} - before
    assert not [p for p in leftovers if _is_qemu(p)], "a QEMU survived the timeout"


def _is_qemu(pid: int) -> bool:
    try:
        return "qemu-system" in os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return False


def test_guest_dies_with_its_parent_killed(tmp_path: Path) -> None:
    vm_support.kernel()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = dict(os.environ, TMPDIR=str(scratch))
    host = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uring_epoll.cli",
            "kernel",
            "run",
            "--vm",
            "--cpus",
            str(vm_support.CPUS),
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
    qemus: list[int] = []
    try:
        assert host.stdout is not None
        seen = wait_for_line(host.stdout.fileno(), b"ready", 300.0)
        assert b"ready\n" in seen, (seen, host.poll())
        qemus = [pid for pid, _ in processes() if _is_qemu(pid)]
        assert qemus, "no QEMU process while the guest runs"
        rundirs = list(scratch.glob("uring-epoll-vm-*"))
        assert len(rundirs) == 1, rundirs
        os.kill(host.pid, signal.SIGKILL)
        deadline = time.monotonic() + CLEANUP_LIMIT
        while time.monotonic() < deadline:
            alive = [pid for pid in qemus if _is_qemu(pid)]
            if not alive and not rundirs[0].exists():
                break
            time.sleep(0.1)
        assert not [pid for pid in qemus if _is_qemu(pid)], "QEMU survived its caller's SIGKILL"
        assert not rundirs[0].exists(), f"{rundirs[0]} survived"
    finally:
        if host.poll() is None:
            host.kill()
        host.wait()
        for pid in qemus:
            if _is_qemu(pid):
                os.kill(pid, signal.SIGKILL)
