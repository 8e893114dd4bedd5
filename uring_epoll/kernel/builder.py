"""Building a :class:`~.targets.KernelTarget` from the source and the series into the cache.

The steps: unpack the tarball, apply the series (unless the target is a control kernel), make
the base configuration, merge the tooling's options and the series' fragments, ``olddefconfig``,
build the image, export the uapi headers. Each runs niced, with its output in the build log
and a condensed progress line every few seconds (a build takes a quarter of an hour on two
cores, and silence for that long looks like a hang).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from . import cache, source
from ._text import tail
from .cache import KernelBuild, cache_key, find_kernel
from .errors import KernelBuildError, KernelCacheError
from .targets import KernelTarget

__all__ = ["NICE_ENV", "build"]

#: Niceness of the kernel build; the build machines are shared and small.
NICE_ENV = "URING_EPOLL_BUILD_NICE"

_PROGRESS_RE = re.compile(rb"^\s+(CC|AS|LD|AR|HOSTCC|GEN|SYSHDR|SYSTBL|HDRINST|UPD)\b")


class _Builder:
    """Runs the build steps in ``workdir``, logging everything and reporting progress."""

    def __init__(self, workdir: Path, log: IO[bytes], progress: IO[str] | None) -> None:
        self.workdir = workdir
        self.log = log
        self.progress = progress
        self.started = time.monotonic()
        try:
            self.nice = int(os.environ.get(NICE_ENV, "10"))
        except ValueError:
            self.nice = 10

    def say(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        line = f"uring-epoll kernel [{int(elapsed) // 60}m{int(elapsed) % 60:02d}s] {text}"
        self.log.write((line + "\n").encode())
        self.log.flush()
        if self.progress is not None:
            print(line, file=self.progress, flush=True)

    def step(self, label: str, cmd: Sequence[str], *, cwd: Path, what: str | None = None) -> None:
        """Run ``cmd``; output to the log, a condensed progress line every few seconds."""
        self.say(f"{label}: {shlex.join(cmd)}")
        self.log.flush()
        nice = self.nice

        def lower_priority() -> None:
            # Kernel builds share two cores with other people's builds and tests.
            with contextlib.suppress(OSError):
                os.nice(nice)

        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=lower_priority,
        )
        count = 0
        last: bytes = b""
        lock = threading.Lock()

        def pump() -> None:
            nonlocal count, last
            assert proc.stdout is not None
            for line in proc.stdout:
                self.log.write(line)
                if _PROGRESS_RE.match(line):
                    with lock:
                        count += 1
                        last = line.strip()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        step_start = time.monotonic()
        while True:
            try:
                proc.wait(timeout=5)
                break
            except subprocess.TimeoutExpired:
                with lock:
                    n, current = count, last.decode(errors="replace")
                self.say(
                    f"{label}: {n} steps, {int(time.monotonic() - step_start)}s"
                    + (f" ({current[:60]})" if current else "")
                )
        reader.join()
        self.log.flush()
        if proc.returncode != 0:
            raise KernelBuildError(
                f"{what or label} failed (exit {proc.returncode}): {shlex.join(cmd)}"
            )
        self.say(f"{label}: done ({count} steps, {int(time.monotonic() - step_start)}s)")


def _check_config(config: Path, fragments: Sequence[Path], builder: _Builder) -> None:
    """Warn about fragment options that did not survive olddefconfig (unmet dependencies)."""
    have = set(config.read_text().splitlines())
    for fragment in fragments:
        for line in fragment.read_text().splitlines():
            line = line.strip()
            if not line.startswith(("CONFIG_", "# CONFIG_")):
                continue
            if line not in have:
                builder.say(f"warning: {fragment.name}: {line!r} is not in the final .config")


def _headers_arch(target: KernelTarget) -> str:
    """``ARCH=`` for ``headers_install``: the target's, or the host's architecture."""
    if target.headers_arch is not None:
        return target.headers_arch
    return "x86" if platform.machine() in ("x86_64", "i686", "i386") else platform.machine()


def _build_into(
    workdir: Path, tarball: Path, pdir: Path, builder: _Builder, target: KernelTarget
) -> None:
    """Build ``target`` in ``workdir`` from ``tarball`` and the series in ``pdir``, leaving
    the tree in ``workdir/src`` and the image in ``workdir/linux``."""
    jobs = str(os.cpu_count() or 1)
    src = source.extract_tree(tarball, workdir, builder.step)
    if target.apply_series:
        source.patch_tree(src, source.read_series(pdir), builder.step)
    make = ["make", f"ARCH={target.arch}"]
    builder.step(target.base_config, [*make, target.base_config], cwd=src)
    tooling = workdir / "tooling.config"
    tooling.write_text(target.tooling_config)
    fragments = [tooling]
    fragments += [pdir / name for name in target.config_fragments if (pdir / name).is_file()]
    builder.step(
        "merge config",
        ["scripts/kconfig/merge_config.sh", "-m", ".config", *map(str, fragments)],
        cwd=src,
    )
    builder.step("olddefconfig", [*make, "olddefconfig"], cwd=src)
    _check_config(src / ".config", fragments, builder)
    builder.step(
        f"make {' '.join(target.make_targets)}",
        [*make, f"-j{jobs}", *target.make_targets],
        cwd=src,
    )
    # headers_install is a no-config target, so exporting with another ARCH (UML's case, see
    # targets.UML) does not disturb the configuration just built.
    builder.step(
        "headers_install", ["make", f"ARCH={_headers_arch(target)}", "headers_install"], cwd=src
    )
    shutil.copy2(src / target.image, workdir / "linux")


def build(
    target: KernelTarget,
    *,
    force: bool = False,
    progress: IO[str] | None = sys.stderr,
    tarball: Path | None = None,
    pdir: Path | None = None,
) -> KernelBuild:
    """Build ``target`` for the current inputs, or return the cached build.

    Safe to call from several processes at once: one builds, the others wait on the lock and
    then find the published result. ``tarball`` and ``pdir`` override the source tarball and
    the patch directory (tests use them).
    """
    if not force:
        # An incomplete series (KernelSeriesError) is reported now, not after waiting for the
        # lock; a damaged cache entry is rebuilt below.
        try:
            found = find_kernel(target, cache_key(target, tarball, pdir))
        except KernelCacheError as exc:
            found = None
            if progress is not None:
                print(f"uring-epoll kernel: {exc}; rebuilding", file=progress, flush=True)
        if found is not None:
            return found
    with cache.locked(progress):
        tarball = source.ensure_source(tarball)
        pdir = source.patches_dir() if pdir is None else pdir
        with cache.staging() as workdir:
            # Build from a snapshot of the series: the patches may be edited while we build,
            # and the result must match the key it is published under. The snapshot stays
            # in the cache as the record of what was built.
            snapshot = source.snapshot_series(
                pdir, workdir / "kernel_patches", target.config_fragments
            )
            key = cache_key(target, tarball, snapshot)
            if not force:
                existing = cache.reuse(key)
                if existing is not None:
                    return existing
            failed_log = cache.failed_log(key)
            patches = source.read_series(snapshot) if target.apply_series else []
            with open(workdir / "build.log", "wb") as log:
                builder = _Builder(workdir, log, progress)
                builder.say(
                    f"building {key} from {tarball} with {len(patches)} patch(es) from {pdir}"
                )
                try:
                    _build_into(workdir, tarball, snapshot, builder, target)
                except KernelBuildError as exc:
                    log.flush()
                    shutil.copy2(workdir / "build.log", failed_log)
                    raise KernelBuildError(
                        f"{exc}\nfull log: {failed_log}\n--- last lines ---\n{tail(failed_log, 40)}"
                    ) from None
                builder.say(f"built {key}")
            info = {
                "key": key,
                "target": target.name,
                "tarball": str(tarball),
                "tarball_size": tarball.stat().st_size,
                "patches_dir": str(pdir),
                "patches": [e.path.name for e in patches],
                "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            (workdir / "build-info.json").write_text(json.dumps(info, indent=2) + "\n")
            return cache.publish(workdir, key)
