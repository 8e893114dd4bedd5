"""The project's Linux 6.1 with the patch series: build it, cache it, boot it, test it.

One job per module: :mod:`.source` (the Debian source tarball, the build tools, the patch
series), :mod:`.targets` (what to build: :data:`UML`, :data:`VM`, :data:`VM_CONTROL`),
:mod:`.cache` (keys, verified entries, the lock, atomic publication), :mod:`.builder` (the
build steps), :mod:`.guest_init` (the first process inside a booted guest), :mod:`.uml` (the
User-Mode Linux vehicle), :mod:`.vm` (the x86_64 VM vehicle: QEMU through virtme-ng, N CPUs),
:mod:`.guest_batch` (many commands in one boot), :mod:`.supervise` and :mod:`.console` (what
both vehicles share), :mod:`.selftest` (the C selftests) and :mod:`.cli` (``uring-epoll
kernel ...``). The public names of most of them are re-exported here; the VM vehicle's are in
:mod:`.vm`.
"""

from __future__ import annotations

from .builder import NICE_ENV, build
from .cache import (
    KEEP_ENV,
    MANIFEST,
    KernelBuild,
    cache_key,
    cache_root,
    find_kernel,
    prune,
    verify_kernel,
)
from .cli import add_cli, main, pytest_command
from .console import KernelCompletedProcess, kernel_problems
from .errors import (
    KernelBuildError,
    KernelCacheError,
    KernelRunError,
    KernelSeriesError,
    KernelSourceError,
    KernelTimeout,
)
from .selftest import (
    SELFTEST_DIR,
    UML_UNRUNNABLE,
    compile_selftest,
    selftest_sources,
    selftest_verdict,
)
from .source import (
    BUILD_TOOLS,
    CONFIG_FRAGMENT,
    PATCHES_ENV,
    SOURCE_PACKAGE,
    SOURCE_TARBALL,
    SeriesEntry,
    ensure_source,
    missing_build_packages,
    patches_dir,
    read_series,
)
from .targets import TARGETS, UML, VM, VM_CONTROL, KernelTarget
from .uml import IN_UML_ENV, is_inside_uml, run, run_capture

__all__ = [
    "BUILD_TOOLS",
    "CONFIG_FRAGMENT",
    "IN_UML_ENV",
    "KEEP_ENV",
    "MANIFEST",
    "NICE_ENV",
    "PATCHES_ENV",
    "SELFTEST_DIR",
    "SOURCE_PACKAGE",
    "SOURCE_TARBALL",
    "TARGETS",
    "UML",
    "UML_UNRUNNABLE",
    "VM",
    "VM_CONTROL",
    "KernelBuild",
    "KernelBuildError",
    "KernelCacheError",
    "KernelCompletedProcess",
    "KernelRunError",
    "KernelSeriesError",
    "KernelSourceError",
    "KernelTarget",
    "KernelTimeout",
    "SeriesEntry",
    "add_cli",
    "build",
    "cache_key",
    "cache_root",
    "compile_selftest",
    "ensure_source",
    "find_kernel",
    "is_inside_uml",
    "kernel_problems",
    "main",
    "missing_build_packages",
    "patches_dir",
    "prune",
    "pytest_command",
    "read_series",
    "run",
    "run_capture",
    "selftest_sources",
    "selftest_verdict",
    "verify_kernel",
]
