"""The kernel source: Debian's 6.1 source tarball, the build tools, and the patch series.

Debian's ``linux-source-6.1`` package ships the tree as a tarball under ``/usr/src``;
:func:`ensure_source` installs it (and the build tools) through apt when missing. The patch
series is a quilt-style folder (``series``, the patches, the config fragments) shipped in the
package as ``uring_epoll/kernel_patches/``; :func:`read_series` parses and checks it.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO

from .errors import KernelBuildError, KernelSeriesError, KernelSourceError

__all__ = [
    "BUILD_TOOLS",
    "CONFIG_FRAGMENT",
    "PATCHES_ENV",
    "SOURCE_PACKAGE",
    "SOURCE_TARBALL",
    "SeriesEntry",
    "check_fragments",
    "ensure_source",
    "extract_tree",
    "missing_build_packages",
    "patch_tree",
    "patches_dir",
    "read_series",
    "snapshot_series",
]

#: Overrides the location of the patch series (default: the series shipped in the package).
PATCHES_ENV = "URING_EPOLL_PATCHES"
#: Where the package carries the series: ``uring_epoll/kernel_patches/`` (the repository's
#: top-level ``kernel_patches/``, mapped there by setup.py).
PACKAGE_PATCHES = "kernel_patches"
#: The config fragment every series carries next to its ``series`` file.
CONFIG_FRAGMENT = "um.config"

SOURCE_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
#: What the build runs, and the Debian package that provides it. ``make headers_install``
#: copies with rsync; tar needs xz for the source tarball; objtool and the ELF notes need
#: libelf's header. One ``apt-get install`` of every missing package (and the source) fixes a
#: fresh machine.
BUILD_TOOLS: tuple[tuple[str, str], ...] = (
    ("make", "make"),
    ("gcc", "gcc"),
    ("ld", "binutils"),
    ("patch", "patch"),
    ("bc", "bc"),
    ("flex", "flex"),
    ("bison", "bison"),
    ("perl", "perl"),
    ("rsync", "rsync"),
    ("tar", "tar"),
    ("xz", "xz-utils"),
    ("/usr/include/libelf.h", "libelf-dev"),
    ("/usr/include/openssl/ssl.h", "libssl-dev"),
    ("/usr/include/stdio.h", "libc6-dev"),
)
SOURCE_PACKAGE = "linux-source-6.1"

# The top of the ``uring_epoll`` package; this module lives one level below it.
_PACKAGE = (__package__ or "uring_epoll.kernel").rpartition(".")[0] or "uring_epoll"
_PACKAGE_DIR = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------------
# The patch series


def patches_dir() -> Path:
    """The patch series directory.

    ``$URING_EPOLL_PATCHES`` when set; else the series shipped in the package
    (``uring_epoll/kernel_patches/`` of an installed wheel, found through
    :mod:`importlib.resources`); else, for a source or editable checkout, whose package
    directory has no copy, the checkout's top-level ``kernel_patches/``. When neither has a
    ``series`` file the package's location is returned, and :func:`read_series` names it.
    """
    override = os.environ.get(PATCHES_ENV)
    if override:
        return Path(override).expanduser().resolve()
    shipped = importlib.resources.files(_PACKAGE).joinpath(PACKAGE_PATCHES)
    # A wheel installs on a file system (the cffi modules are not importable from a zip).
    shipped_path = Path(str(shipped)).resolve()
    if (shipped_path / "series").is_file():
        return shipped_path
    checkout = _PACKAGE_DIR.parent / "kernel_patches"
    if (checkout / "series").is_file():
        return checkout
    return shipped_path


@dataclasses.dataclass(frozen=True)
class SeriesEntry:
    """One line of a quilt ``series`` file: the patch and its strip level."""

    path: Path
    strip: int = 1


def read_series(pdir: Path | None = None) -> list[SeriesEntry]:
    """The patches listed in ``pdir/series``, in order.

    Quilt syntax: one patch per line, optional ``-pN``, ``#`` starts a comment. An empty series
    (comments only) is allowed. A missing ``series`` file, a listed patch that does not exist
    or a missing ``um.config`` raises :class:`KernelSeriesError` naming the file: building
    without them would give a kernel that silently lacks the series.
    """
    pdir = patches_dir() if pdir is None else pdir
    series = pdir / "series"
    if not series.is_file():
        raise KernelSeriesError(
            f"the kernel patch series is incomplete: {series} is missing (set "
            f"${PATCHES_ENV} to a kernel_patches/ directory, or reinstall uring-epoll)",
            series,
        )
    entries = []
    for lineno, raw in enumerate(series.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, *opts = line.split()
        strip = 1
        for opt in opts:
            if re.fullmatch(r"-p\d+", opt):
                strip = int(opt[2:])
            else:
                raise KernelBuildError(f"{series}:{lineno}: unsupported option {opt!r}")
        path = pdir / name
        if not path.is_file():
            raise KernelSeriesError(
                f"the kernel patch series is incomplete: {series}:{lineno} lists {name!r}, "
                f"but {path} is missing",
                path,
            )
        entries.append(SeriesEntry(path, strip))
    check_fragments(pdir, (CONFIG_FRAGMENT,))
    return entries


def check_fragments(pdir: Path, names: Iterable[str]) -> None:
    """Raise :class:`KernelSeriesError` for the first config fragment ``pdir/NAME`` missing."""
    for name in names:
        config = pdir / name
        if not config.is_file():
            raise KernelSeriesError(
                f"the kernel patch series is incomplete: its config fragment {config} is missing",
                config,
            )


def snapshot_series(pdir: Path, dest: Path, fragments: Iterable[str] = ()) -> Path:
    """Copy the series file, the patches it lists, ``um.config`` and ``fragments`` from
    ``pdir`` into ``dest``; return ``dest``.

    A build works from such a copy: the patches may be edited while it runs, and the result
    must match the key it is published under.
    """
    dest.mkdir(parents=True)
    entries = read_series(pdir)
    for name in dict.fromkeys(("series", CONFIG_FRAGMENT, *fragments)):
        if (pdir / name).is_file():
            shutil.copy2(pdir / name, dest / name)
    for entry in entries:
        target = dest / entry.path.relative_to(pdir)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(entry.path, target)
    return dest


# --------------------------------------------------------------------------------------------
# Source tarball and build tools


_apt_updated = False


def missing_build_packages(tarball: Path | None = None) -> list[str]:
    """The Debian packages the kernel build needs that this machine lacks (the source
    package too when its tarball is missing), in :data:`BUILD_TOOLS` order."""
    tarball = SOURCE_TARBALL if tarball is None else tarball
    missing = [SOURCE_PACKAGE] if not tarball.is_file() else []
    for need, package in BUILD_TOOLS:
        present = Path(need).is_file() if need.startswith("/") else shutil.which(need) is not None
        if not present and package not in missing:
            missing.append(package)
    return missing


def ensure_source(tarball: Path | None = None, *, log: IO[str] | None = None) -> Path:
    """Return the 6.1 source tarball, installing it and the build tools through apt if needed.

    Raises :class:`KernelSourceError` naming the reason when that is impossible (no apt-get,
    not root, apt failing), so callers can turn it into a skip or a failure as they see fit.
    """
    tarball = SOURCE_TARBALL if tarball is None else tarball
    _apt_install(lambda: missing_build_packages(tarball), log)
    return tarball


#: What the VM vehicle runs, and the Debian package that provides it (virtme-ng itself is a
#: Python dependency of the package).
VM_TOOLS: tuple[tuple[str, str], ...] = (("qemu-system-x86_64", "qemu-system-x86"),)


def missing_vm_packages() -> list[str]:
    """The Debian packages the VM vehicle needs that this machine lacks."""
    return [package for need, package in VM_TOOLS if shutil.which(need) is None]


def ensure_vm_tools(*, log: IO[str] | None = None) -> None:
    """Install QEMU through apt if it is missing (:class:`KernelSourceError` if impossible)."""
    _apt_install(missing_vm_packages, log)


def _apt_install(missing_now: Callable[[], list[str]], log: IO[str] | None) -> None:
    """One ``apt-get install`` of what ``missing_now()`` lists (after one ``apt-get update`` per
    process), then check that nothing is missing any more."""
    global _apt_updated
    missing = missing_now()
    if not missing:
        return
    what = ", ".join(missing)
    apt = shutil.which("apt-get")
    if apt is None:
        raise KernelSourceError(f"missing {what} and apt-get is not available to install it")
    if os.geteuid() != 0:
        raise KernelSourceError(f"missing {what}; installing it with apt-get needs root")
    out = log if log is not None else sys.stderr
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = [apt, "install", "-y", "--no-install-recommends", *missing]
    # A fresh machine has empty package lists: update first, once per process.
    commands = [install] if _apt_updated else [[apt, "update"], install]
    for cmd in commands:
        print(f"uring-epoll kernel: {' '.join(cmd)}", file=sys.stderr, flush=True)
        proc = subprocess.run(
            cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
        )
        out.write(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
            raise KernelSourceError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{tail}")
        if cmd[1] == "update":
            _apt_updated = True
    still = missing_now()
    if still:
        raise KernelSourceError(f"still missing after apt-get install: {', '.join(still)}")


# --------------------------------------------------------------------------------------------
# Preparing a tree

#: How the build runs one logged step: ``step(label, cmd, cwd=..., what=...)``.
StepRunner = Callable[..., None]


def extract_tree(tarball: Path, workdir: Path, step: StepRunner) -> Path:
    """Unpack ``tarball`` into ``workdir/src`` (through ``step``, so it is logged); return it."""
    unpack = workdir / "unpack"
    unpack.mkdir()
    step("extract", ["tar", "-xf", str(tarball), "-C", str(unpack)], cwd=workdir)
    tops = list(unpack.iterdir())
    if len(tops) != 1 or not tops[0].is_dir():
        raise KernelBuildError(f"{tarball} did not unpack to a single directory: {tops}")
    src = workdir / "src"
    tops[0].rename(src)
    unpack.rmdir()
    return src


def patch_tree(src: Path, entries: Sequence[SeriesEntry], step: StepRunner) -> None:
    """Apply the series ``entries`` to the tree ``src`` in order, one logged step each."""
    for entry in entries:
        step(
            f"patch {entry.path.name}",
            ["patch", f"-p{entry.strip}", "--forward", "--batch", "-i", str(entry.path)],
            cwd=src,
            what=f"applying {entry.path.name} (see kernel_patches/series)",
        )
