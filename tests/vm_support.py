"""Helpers for tests that boot the project's kernels in the x86_64 VM vehicle (QEMU, 2+ CPUs).

Same policy as :mod:`uml_support`: a machine that cannot build or boot them skips with the
reason, except in CI (``CI=true``), where that is a failure. Inside a guest (UML or the VM)
nothing here boots another kernel.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from uring_epoll.kernel import (
    VM,
    KernelBuild,
    KernelBuildError,
    KernelRunError,
    KernelSourceError,
    KernelTarget,
    build,
    is_inside_uml,
    vm,
)

try:
    import uml_support
except ImportError:  # tests/ imported as a package
    from tests import uml_support

#: Virtual CPUs of every VM test run: the point of the vehicle is more than one.
CPUS = int(os.environ.get("URING_EPOLL_VM_CPUS", "2"))

_kernels: dict[str, KernelBuild] = {}
_errors: dict[str, KernelBuildError] = {}


def kernel(target: KernelTarget = VM) -> KernelBuild:
    """``target`` built (once per session; a failure is remembered and reported once)."""
    if is_inside_uml() or vm.is_inside_vm():
        pytest.skip("already inside a guest kernel: not booting a VM inside it")
    if target.name not in _kernels and target.name not in _errors:
        try:
            _kernels[target.name] = build(target, progress=sys.stderr)
        except KernelBuildError as exc:
            _errors[target.name] = exc
    if target.name not in _kernels:
        error = _errors[target.name]
        if isinstance(error, KernelSourceError):
            uml_support.unavailable(f"cannot build the {target.name} kernel here: {error}")
        pytest.fail(f"{target.name} kernel build failed: {error}", pytrace=False)
    return _kernels[target.name]


def run_in_vm(
    argv: Sequence[str | os.PathLike[str]],
    timeout: float = 900.0,
    *,
    target: KernelTarget = VM,
    cwd: str | os.PathLike[str] | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> vm.VMCompletedProcess:
    """Run ``argv`` in a VM with :data:`CPUS` CPUs, output captured. A panic, a hang or a
    machine that cannot run QEMU fails the test (skips outside CI for the last)."""
    k = kernel(target)
    env = dict(os.environ)
    env.update(extra_env or {})
    try:
        result = vm.run_capture(
            argv,
            timeout=timeout,
            kernel=k,
            target=target,
            cpus=CPUS,
            env=env,
            cwd=uml_support.REPO_ROOT if cwd is None else Path(cwd),
        )
    except KernelSourceError as exc:  # QEMU missing and not installable
        uml_support.unavailable(f"cannot run the VM here: {exc}")
        raise  # not reached
    except KernelRunError as exc:  # KernelTimeout included
        pytest.fail(str(exc), pytrace=False)
    return result
