"""The cache of built kernels: keys, entries, their verification, the lock and publication.

A build is keyed by the hash of everything that determines it (the source tarball's name and
size, the ``series`` file, every patch it lists, the config fragments, the build recipe and the
:class:`~.targets.KernelTarget`), and published atomically to
``$XDG_CACHE_HOME/uring-epoll/kernel/<key>/``: it is built in a ``.tmp-build-*`` directory
next to the entries and renamed into place when complete, so a reader sees a whole entry or
none. The build tree stays in the entry as ``src/`` because the C selftests compile against its
exported headers and its ``tools/testing/selftests``. A file lock serialises builds between
processes (pytest workers, a CLI call in another terminal), and a finished build is reused
until the key changes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from . import source
from .errors import KernelBuildError, KernelCacheError
from .targets import TARGETS, KernelTarget

__all__ = [
    "KEEP_ENV",
    "MANIFEST",
    "KernelBuild",
    "cache_key",
    "cache_root",
    "find_kernel",
    "prune",
    "verify_kernel",
]

#: How many built kernels the cache keeps (default 3).
KEEP_ENV = "URING_EPOLL_KERNEL_KEEP"

# Bump when the build steps change in a way that changes the result, so caches are rebuilt.
_RECIPE_VERSION = "2"
# The build steps of recipe version 2, which predates targets and built User-Mode Linux only:
# its key did not hash them, the version number stood for them. A target whose steps are
# exactly these keeps that key (a UML build already in a cache stays valid instead of costing
# a quarter-hour rebuild); any other target has its description hashed into the key.
_RECIPE_2_STEPS: dict[str, Any] = {
    "name": "um",
    "arch": "um",
    "base_config": "defconfig",
    "config_fragments": ["um.config"],
    "make_targets": ["linux"],
    "image": "linux",
    "headers_arch": None,
    "apply_series": True,
}


# --------------------------------------------------------------------------------------------
# Locations and the cache key


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/uring-epoll/kernel`` (``~/.cache`` when the variable is unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "uring-epoll" / "kernel"


def cache_key(target: KernelTarget, tarball: Path | None = None, pdir: Path | None = None) -> str:
    """First 16 hex digits of the SHA-256 of every input of the build of ``target``.

    ``tarball`` and ``pdir`` default to the Debian source tarball and :func:`.patches_dir`.
    The tarball contributes its name and size only: hashing 140 MB on every test session would
    cost seconds, and a new Debian upload changes the size in practice. An incomplete series
    raises :class:`.KernelSeriesError`.
    """
    tarball = source.SOURCE_TARBALL if tarball is None else tarball
    pdir = source.patches_dir() if pdir is None else pdir
    h = hashlib.sha256()

    def part(label: str, data: bytes) -> None:
        # Length-prefixed so that moving bytes between parts can never give the same digest.
        h.update(f"{label}\0{len(data)}\0".encode())
        h.update(data)

    # The order and labels of the parts are those of recipe version 2: see _RECIPE_2_STEPS.
    part("recipe", (_RECIPE_VERSION + target.tooling_config).encode())
    size = tarball.stat().st_size if tarball.exists() else -1
    part("source", f"{tarball.name}:{size}".encode())
    if target.apply_series:
        series = pdir / "series"
        part("series", series.read_bytes() if series.is_file() else b"<absent>")
        for entry in source.read_series(pdir):
            part(f"patch:{entry.path.name}", entry.path.read_bytes())
    source.check_fragments(pdir, target.config_fragments)
    for name in target.config_fragments:
        part(name, (pdir / name).read_bytes())
    if target.describe() != _RECIPE_2_STEPS:
        part("target", target.fingerprint())
    return h.hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class KernelBuild:
    """A published build: the kernel image and the tree it was built from."""

    key: str
    root: Path

    @property
    def linux(self) -> Path:
        """The kernel image (for User-Mode Linux, the kernel executable)."""
        return self.root / "linux"

    @property
    def src(self) -> Path:
        """The configured, patched and built kernel tree."""
        return self.root / "src"

    @property
    def include(self) -> Path:
        """The exported uapi headers (``-I`` this for programs using the new ABI)."""
        return self.src / "usr" / "include"

    @property
    def log(self) -> Path:
        """The full build log."""
        return self.root / "build.log"


def find_kernel(target: KernelTarget, key: str | None = None) -> KernelBuild | None:
    """The published build for ``key`` (default: the current inputs of ``target``), or None if
    not built.

    Raises :class:`.KernelCacheError` when the entry exists but fails :func:`verify_kernel`.
    """
    try:
        key = cache_key(target) if key is None else key
    except KernelBuildError:
        return None
    candidate = KernelBuild(key, cache_root() / key)
    # Publication is a rename of the whole directory: an entry without its binary was damaged
    # after publication, it is not a build in progress.
    if not candidate.root.is_dir():
        return None
    verify_kernel(candidate)
    return candidate


# --------------------------------------------------------------------------------------------
# Verifying a cached build
#
# What a run relies on from a cache entry is recorded when it is published, in manifest.json:
# the size, mode and SHA-256 of ``linux`` and a digest of the exported headers (``src/usr/
# include``, which the C selftests and the in-kernel tests compile against). Before use, the
# size and mode are compared every time (one stat); the checksums once per process, and again
# when the binary's inode, size, mtime or ctime change (hashing the 70 MB binary takes ~0.1 s,
# the 2,000 header files as long).

MANIFEST = "manifest.json"
_HEADERS = Path("src/usr/include")
_MANIFEST_VERSION = 1
# Entry root -> the stat stamp of ``linux`` whose checksums were verified in this process.
_verified: dict[str, tuple[int, ...]] = {}


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _headers_digest(include: Path) -> dict[str, Any]:
    """File count, bytes and SHA-256 over the names and contents of every file under
    ``include`` (about 2,000 files and 6 MB: ~0.1 s)."""
    h = hashlib.sha256()
    count = total = 0
    for directory, dirs, files in os.walk(include):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                data = f.read()
            rel = os.fsencode(os.path.relpath(path, include))
            h.update(b"%d\0%s\0%d\0" % (len(rel), rel, len(data)))
            h.update(data)
            count += 1
            total += len(data)
    return {"files": count, "bytes": total, "sha256": h.hexdigest()}


def _stamp(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _manifest_for(root: Path) -> dict[str, Any]:
    """The record of the build in ``root``, as written at publication."""
    linux = root / "linux"
    st = linux.stat()
    record: dict[str, Any] = {
        "version": _MANIFEST_VERSION,
        "linux": {
            "size": st.st_size,
            "mode": stat.S_IMODE(st.st_mode),
            "sha256": _sha256_file(linux),
        },
    }
    if (root / _HEADERS).is_dir():
        record["headers"] = _headers_digest(root / _HEADERS)
    return record


def _write_manifest(root: Path, record: dict[str, Any]) -> None:
    tmp = root / f".{MANIFEST}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, root / MANIFEST)


def _elf_problem(path: Path, size: int) -> str | None:
    """Why ``path`` (``size`` bytes) is not a complete ELF file, or None.

    A linked executable ends with its section header table, and every loadable segment must lie
    inside the file: a truncated binary fails one of these, without reading more than a few
    hundred bytes.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if len(head) < 52 or head[:4] != b"\x7fELF" or head[4] not in (1, 2):
                return "`linux` is not an ELF executable"
            order = "<" if head[5] == 1 else ">"
            if head[4] == 2:
                if len(head) < 64:
                    return "`linux` is not an ELF executable"
                phoff, shoff = struct.unpack_from(order + "QQ", head, 32)
                phent, phnum, shent, shnum = struct.unpack_from(order + "HHHH", head, 54)
                layout = order + "I4xQ16xQ"  # p_type, p_offset, p_filesz
            else:
                phoff, shoff = struct.unpack_from(order + "II", head, 28)
                phent, phnum, shent, shnum = struct.unpack_from(order + "HHHH", head, 42)
                layout = order + "II8xI"
            if shoff + shent * shnum > size or phoff + phent * phnum > size:
                return f"`linux` is truncated ({size} bytes; its ELF tables end beyond that)"
            f.seek(phoff)
            table = f.read(phent * phnum)
            for i in range(phnum):
                p_type, p_offset, p_filesz = struct.unpack_from(layout, table, i * phent)
                if p_type == 1 and p_offset + p_filesz > size:  # PT_LOAD
                    return f"`linux` is truncated ({size} bytes; a segment ends beyond that)"
    except (OSError, struct.error) as exc:
        return f"`linux` cannot be read as ELF: {exc}"
    return None


def _cache_problem(kernel: KernelBuild) -> str | None:
    """What is wrong with the cache entry ``kernel``, or None when it is usable."""
    root = str(kernel.root)
    try:
        st = kernel.linux.stat()
    except FileNotFoundError:
        return "the kernel binary `linux` is missing"
    except OSError as exc:
        return f"the kernel binary cannot be examined: {exc}"
    if not stat.S_ISREG(st.st_mode):
        return "`linux` is not a regular file"
    if st.st_size == 0:
        return "`linux` is empty (0 bytes)"
    try:
        record: dict[str, Any] | None = json.loads((kernel.root / MANIFEST).read_text())
    except FileNotFoundError:
        record = None
    except (OSError, ValueError) as exc:
        return f"its record {MANIFEST} is unreadable ({exc})"
    if record is None:
        return _adopt(kernel, st)
    try:
        want = record["linux"]
        size, mode, digest = int(want["size"]), int(want["mode"]), str(want["sha256"])
        headers = record.get("headers")
    except (KeyError, TypeError, ValueError, AttributeError):
        return f"its record {MANIFEST} is malformed"
    if st.st_size != size:
        return f"`linux` is {st.st_size} bytes but {size} were built (truncated or overwritten)"
    if stat.S_IMODE(st.st_mode) != mode:
        return f"`linux` has mode {stat.S_IMODE(st.st_mode):o} but was built with {mode:o}"
    if headers is not None and not (kernel.root / _HEADERS).is_dir():
        return f"the exported headers {_HEADERS} are missing"
    if _verified.get(root) == _stamp(st):
        return None
    if _sha256_file(kernel.linux) != digest:
        return "the SHA-256 of `linux` differs from the one recorded when it was built"
    if headers is not None and _headers_digest(kernel.root / _HEADERS) != headers:
        return f"the exported headers under {_HEADERS} differ from the ones built"
    _verified[root] = _stamp(st)
    return None


def _adopt(kernel: KernelBuild, st: os.stat_result) -> str | None:
    """An entry published before builds were recorded: check what can be checked without a
    record (executable, a complete ELF file, headers present) and, if it passes, record it now.

    Rebuilding every such entry would cost every existing checkout a 15-minute build; the
    damage seen in practice (a truncated, emptied or non-executable binary) is caught here.
    What is not: a same-size corruption that predates the record. Such entries are UML builds
    (the record predates every other target), hence the ELF check.
    """
    if not st.st_mode & stat.S_IXUSR or not os.access(kernel.linux, os.X_OK):
        return "`linux` is not executable"
    problem = _elf_problem(kernel.linux, st.st_size)
    if problem is not None:
        return problem
    if not (kernel.root / _HEADERS / "linux").is_dir():
        return f"the exported headers {_HEADERS} are missing"
    record = _manifest_for(kernel.root)
    if record["linux"]["size"] != st.st_size:
        return "`linux` changed while it was being checked"
    # A read-only cache still works; it is just checked this way again by the next process.
    with contextlib.suppress(OSError):
        _write_manifest(kernel.root, record)
    _verified[str(kernel.root)] = _stamp(st)
    return None


def verify_kernel(kernel: KernelBuild) -> None:
    """Raise :class:`.KernelCacheError` unless the cache entry ``kernel`` is intact."""
    problem = _cache_problem(kernel)
    if problem is not None:
        raise KernelCacheError(
            f"the cached kernel build {kernel.root} is damaged: {problem}. "
            "Rebuild it with `uring-epoll kernel build --force` "
            "(or delete it with `uring-epoll kernel clean --all`)."
        )


# --------------------------------------------------------------------------------------------
# The lock, staging and publication (used by the build, under the lock)


def lock_path() -> Path:
    """The file whose ``flock`` serialises builds and cache-wide deletions."""
    return cache_root() / ".build.lock"


@contextlib.contextmanager
def locked(progress: IO[str] | None = None) -> Iterator[None]:
    """Hold the cache lock (creating the cache directory); say on ``progress`` when another
    process holds it and this one waits."""
    cache_root().mkdir(parents=True, exist_ok=True)
    with open(lock_path(), "w") as lockfile:
        try:
            fcntl.flock(lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress is not None:
                print(
                    "uring-epoll kernel: waiting for another build to finish...",
                    file=progress,
                    flush=True,
                )
            fcntl.flock(lockfile, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def staging() -> Iterator[Path]:
    """A fresh build directory inside the cache (same file system, so publication is a
    rename), removed on the way out unless :func:`publish` moved it into place.

    Call with the lock held: leftovers of builds that were killed are removed first, which is
    safe only because nobody else can be using them.
    """
    root = cache_root()
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    workdir = Path(tempfile.mkdtemp(prefix=".tmp-build-", dir=root))
    try:
        yield workdir
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def reuse(key: str) -> KernelBuild | None:
    """The intact entry ``key``, or None after moving a damaged one out of the way.

    Call with the lock held. A damaged entry is renamed at once (a reader sees no entry rather
    than a bad one), then deleted: nobody else is replacing it.
    """
    final = cache_root() / key
    if not final.exists():
        return None
    try:
        verify_kernel(KernelBuild(key, final))
        return KernelBuild(key, final)
    except KernelCacheError:
        doomed = cache_root() / f".tmp-damaged-{key}-{os.getpid()}"
        try:
            os.rename(final, doomed)
        except OSError as exc:
            raise KernelCacheError(
                f"cannot move the damaged build {final} out of the way: {exc}"
            ) from None
        shutil.rmtree(doomed, ignore_errors=True)
        return None


def failed_log(key: str) -> Path:
    """Where the log of a failed build of ``key`` is kept (until a build of it succeeds)."""
    return cache_root() / f"{key}.failed.log"


def publish(workdir: Path, key: str) -> KernelBuild:
    """Record the build in ``workdir`` and rename it into place as entry ``key``.

    Call with the lock held. A previous entry for ``key`` (only with a forced rebuild) is
    replaced. Older builds are pruned afterwards (see :func:`prune`).
    """
    final = cache_root() / key
    # What a run relies on, recorded before publication so that it is never missing.
    _write_manifest(workdir, _manifest_for(workdir))
    if final.exists():
        shutil.rmtree(final)
    os.rename(workdir, final)
    _verified[str(final)] = _stamp((final / "linux").stat())
    failed_log(key).unlink(missing_ok=True)
    prune(keep=_keep_count(), current=key)
    return KernelBuild(key, final)


def _keep_count() -> int:
    try:
        return max(1, int(os.environ.get(KEEP_ENV, "3")))
    except ValueError:
        return 3


def prune(keep: int = 3, current: str | None = None) -> list[Path]:
    """Delete all but the ``keep`` most recently built kernels (about 2 GB each); return them.

    ``current`` and the key of the current inputs of every known target (the UML kernel, the
    VM kernel and its control) are always kept. Called after every build, because iterating on
    the patch series makes a new key per change.
    """
    root = cache_root()
    protected: set[str] = set()
    if current is not None:
        protected.add(current)
    for target in TARGETS:
        with contextlib.suppress(KernelBuildError):
            protected.add(cache_key(target))
    builds = [
        p
        for p in root.glob("*")
        if p.is_dir() and re.fullmatch(r"[0-9a-f]{16}", p.name) and (p / "linux").is_file()
    ]
    builds.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    kept = [p for p in builds if p.name in protected]
    removed = []
    for build_dir in builds:
        if build_dir.name in protected:
            continue
        if len(kept) < keep:
            kept.append(build_dir)
            continue
        # Rename first so a concurrent reader never sees a half-deleted build as complete.
        doomed = root / f".tmp-prune-{build_dir.name}-{os.getpid()}"
        try:
            os.rename(build_dir, doomed)
        except OSError:
            continue
        shutil.rmtree(doomed, ignore_errors=True)
        removed.append(build_dir)
    for stale_log in root.glob("*.failed.log"):
        if stale_log.stem.split(".")[0] not in protected:
            stale_log.unlink(missing_ok=True)
    return removed


def clean_all() -> list[Path]:
    """Delete every entry of the cache, current builds included (under the lock, so no build
    is half-way); return what was removed."""
    removed = []
    with locked():
        root = cache_root()
        for entry in root.iterdir() if root.is_dir() else []:
            if entry.name != lock_path().name:
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed.append(entry)
    return removed
