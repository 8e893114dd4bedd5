"""A damaged kernel cache entry is never trusted.

Every test works on a fake entry published by the real publication path (``builder.build`` with the
compile step replaced: its ``linux`` is a copy of a small host executable, its headers one file)
under a temporary ``XDG_CACHE_HOME``: the real cache is never touched. The per-process memory of
verified checksums is cleared after publication, as a new CLI process would start.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest

from uring_epoll.kernel import UML, builder, source, uml
from uring_epoll.kernel import cache as kernel_cache
from uring_epoll.kernel import cli as kernel_cli

ELF = Path(shutil.which("true") or "/bin/true").resolve()


class FakeCache:
    """The fake inputs, the build counter and the published entry."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tarball = tmp_path / "linux-source-fake.tar.xz"
        self.tarball.write_bytes(b"not really a tarball")
        self.pdir = tmp_path / "patches"
        self.pdir.mkdir()
        (self.pdir / "0001-fake.patch").write_text("fake\n")
        (self.pdir / "series").write_text("0001-fake.patch\n")
        (self.pdir / source.CONFIG_FRAGMENT).write_text("# a complete series has its fragment\n")
        self.builds = 0
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
        # The CLI builds for the default inputs: make those the fake ones.
        monkeypatch.setattr(source, "SOURCE_TARBALL", self.tarball)
        monkeypatch.setattr(source, "patches_dir", lambda: self.pdir)
        monkeypatch.setattr(
            source, "ensure_source", lambda tarball=None, **kw: tarball or self.tarball
        )
        monkeypatch.setattr(builder, "_build_into", self._build_into)
        monkeypatch.setattr(kernel_cache, "_verified", {})

    def _build_into(
        self, workdir: Path, tarball: Path, pdir: Path, builder: Any, target: Any
    ) -> None:
        self.builds += 1
        include = workdir / "src" / "usr" / "include" / "linux"
        include.mkdir(parents=True)
        (include / "eventpoll.h").write_text("#define EPOLL_USERPOLL 1\n")
        shutil.copy2(ELF, workdir / "linux")

    def build(self) -> kernel_cache.KernelBuild:
        kernel = builder.build(UML, progress=None)
        kernel_cache._verified.clear()  # what a new process would see
        return kernel


#: ``kernel run`` refuses to boot a kernel from inside User-Mode Linux, so the tests that go as
#: far as booting run on the host only (the suite's host run, in the same CI run, covers them).
host_only = pytest.mark.skipif(
    uml.is_inside_uml(), reason="kernel run does not boot a kernel inside User-Mode Linux"
)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeCache:
    return FakeCache(tmp_path, monkeypatch)


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``uring-epoll kernel ARGV`` in this process: (status, stdout, stderr)."""
    code = kernel_cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_publication_records_the_binary_and_the_headers(cache: FakeCache) -> None:
    kernel = cache.build()
    record = json.loads((kernel.root / kernel_cache.MANIFEST).read_text())
    data = kernel.linux.read_bytes()
    assert record["linux"] == {
        "size": len(data),
        "mode": stat.S_IMODE(kernel.linux.stat().st_mode),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    assert record["headers"]["files"] == 1
    assert kernel_cache.find_kernel(UML) == kernel


def truncate(kernel: kernel_cache.KernelBuild) -> None:
    with open(kernel.linux, "r+b") as f:
        f.truncate(kernel.linux.stat().st_size // 2)


def empty(kernel: kernel_cache.KernelBuild) -> None:
    kernel.linux.write_bytes(b"")


def not_executable(kernel: kernel_cache.KernelBuild) -> None:
    kernel.linux.chmod(0o644)


def same_size_other_bytes(kernel: kernel_cache.KernelBuild) -> None:
    data = bytearray(kernel.linux.read_bytes())
    data[len(data) // 2] ^= 0xFF
    kernel.linux.write_bytes(bytes(data))


def binary_missing(kernel: kernel_cache.KernelBuild) -> None:
    kernel.linux.unlink()


def headers_missing(kernel: kernel_cache.KernelBuild) -> None:
    shutil.rmtree(kernel.include)


def headers_changed(kernel: kernel_cache.KernelBuild) -> None:
    (kernel.include / "linux" / "eventpoll.h").write_text("#define EPOLL_USERPOLL 2\n")


DAMAGE = {
    "truncated": (truncate, "truncated"),
    "empty": (empty, "empty"),
    "not executable": (not_executable, "mode 644"),
    "same size, other bytes": (same_size_other_bytes, "SHA-256"),
    "binary missing": (binary_missing, "missing"),
    "headers missing": (headers_missing, "headers"),
    "headers changed": (headers_changed, "headers"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_path_names_the_damage_and_the_remedy(
    cache: FakeCache, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    kernel = cache.build()
    assert cli(capsys, "path")[:2] == (0, f"{kernel.linux}\n")
    kernel_cache._verified.clear()
    damage_it, reason = DAMAGE[damage]
    damage_it(kernel)
    code, out, err = cli(capsys, "path")
    assert (code, out) == (1, "")
    assert "damaged" in err and reason in err, err
    assert "uring-epoll kernel build --force" in err


@host_only
@pytest.mark.parametrize("damage", ["truncated", "empty", "not executable"])
def test_run_refuses_a_damaged_kernel_before_booting(
    cache: FakeCache, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    kernel = cache.build()
    DAMAGE[damage][0](kernel)
    code, _, err = cli(capsys, "run", "--", "true")
    assert code == 1
    assert err.startswith("uring-epoll kernel: the cached kernel build") and "--force" in err
    # Through the library too, with the build passed explicitly (as the tests do).
    with pytest.raises(kernel_cache.KernelCacheError, match=DAMAGE[damage][1]):
        uml.run(["true"], kernel=kernel, stdout=None, stderr=None)


@host_only
def test_a_kernel_that_cannot_start_is_a_clean_error(
    cache: FakeCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel = cache.build()
    kernel.linux.chmod(0o644)
    monkeypatch.setattr(uml, "verify_kernel", lambda kernel: None)
    with pytest.raises(uml.KernelRunError, match="cannot start the kernel"):
        uml.run(["true"], kernel=kernel, stdout=None, stderr=None)


@pytest.mark.parametrize("damage", ["truncated", "empty", "same size, other bytes"])
def test_build_replaces_a_damaged_entry(
    cache: FakeCache, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    kernel = cache.build()
    good = kernel.linux.read_bytes()
    DAMAGE[damage][0](kernel)
    code, out, _ = cli(capsys, "build")
    assert (code, out) == (0, f"{kernel.linux}\n")
    assert cache.builds == 2
    assert kernel.linux.read_bytes() == good
    assert not list(kernel_cache.cache_root().glob(".tmp-*"))
    kernel_cache._verified.clear()
    assert kernel_cache.find_kernel(UML) == kernel
    # And the library call reports what it replaced.
    DAMAGE[damage][0](kernel)
    kernel_cache._verified.clear()
    messages = []

    class Progress:
        def write(self, text: str) -> None:
            messages.append(text)

        def flush(self) -> None:
            pass

    builder.build(UML, progress=Progress())  # type: ignore[arg-type]
    assert cache.builds == 3
    assert "damaged" in "".join(messages) and "rebuilding" in "".join(messages)


def test_an_entry_from_before_the_record_is_checked_and_recorded(cache: FakeCache) -> None:
    kernel = cache.build()
    record = json.loads((kernel.root / kernel_cache.MANIFEST).read_text())
    (kernel.root / kernel_cache.MANIFEST).unlink()
    assert kernel_cache.find_kernel(UML) == kernel
    assert json.loads((kernel.root / kernel_cache.MANIFEST).read_text()) == record
    assert cache.builds == 1


@pytest.mark.parametrize(
    "damage", ["truncated", "empty", "not executable", "not ELF", "headers missing"]
)
def test_an_entry_from_before_the_record_is_refused_when_damaged(
    cache: FakeCache, damage: str
) -> None:
    kernel = cache.build()
    (kernel.root / kernel_cache.MANIFEST).unlink()
    if damage == "not ELF":
        kernel.linux.write_bytes(b"#!/bin/sh\nexit 0\n" * 100)
    else:
        DAMAGE[damage][0](kernel)
    with pytest.raises(kernel_cache.KernelCacheError, match="damaged"):
        kernel_cache.find_kernel(UML)
    assert not (kernel.root / kernel_cache.MANIFEST).exists()


def test_the_checksum_is_computed_once_per_process_and_binary(
    cache: FakeCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel = cache.build()
    hashed: list[Path] = []
    real = kernel_cache._sha256_file

    def counting(path: Path) -> str:
        hashed.append(path)
        return real(path)

    monkeypatch.setattr(kernel_cache, "_sha256_file", counting)
    for _ in range(3):
        assert kernel_cache.find_kernel(UML) == kernel
    assert hashed == [kernel.linux]
    st = kernel.linux.stat()
    os.utime(kernel.linux, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert kernel_cache.find_kernel(UML) == kernel
    assert hashed == [kernel.linux, kernel.linux]


def test_a_damaged_entry_that_cannot_be_moved_is_a_clean_error(
    cache: FakeCache, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel = cache.build()
    truncate(kernel)
    real_rename = os.rename

    def rename(src: Any, dst: Any) -> None:
        if ".tmp-damaged-" in str(dst):
            raise PermissionError(13, "Permission denied", str(src))
        real_rename(src, dst)

    monkeypatch.setattr(kernel_cache.os, "rename", rename)
    code, out, err = cli(capsys, "build")
    assert (code, out) == (1, "")
    assert "cannot move the damaged build" in err and "Permission denied" in err
