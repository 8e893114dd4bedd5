"""What a user installs: the sdist and the wheel built from it carry everything.

One sdist and one wheel per session: ``python -m build`` of the source checkout (sdist, then
the wheel from that sdist), or the pair .ci/run already built (``$URING_EPOLL_DIST_DIR``), so
CI checks the very files it installed. The checkout is ``$URING_EPOLL_SOURCE`` (set by .ci/run,
whose tests run from a copy outside the checkout) or the directory above tests/.

A subpackage, a module, a C source, a patch of the series or a license file missing from the
wheel fails here; so does a missing ``build`` tool in CI.
"""

from __future__ import annotations

import email.parser
import importlib.resources
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

import uring_epoll
from uring_epoll import kernel

SOURCE_ENV = "URING_EPOLL_SOURCE"
DIST_ENV = "URING_EPOLL_DIST_DIR"
LICENSE_EXPRESSION = "MIT AND GPL-2.0-only"
LICENSE_FILES = ("LICENSE", "LICENSES/GPL-2.0-only.txt")
#: Where the wheel puts the repository's kernel_patches/.
PATCHES_IN_WHEEL = "uring_epoll/kernel_patches"
#: Directories of the checkout the sdist must hold in full: the test suite runs from them.
SDIST_TREES = ("tests", "bench", "kernel_patches", "uring_epoll", "LICENSES")
_BUILD_LEFTOVERS = (
    ".git",
    "*.egg-info",
    "build",
    "dist",
    "__pycache__",
    "*.so",
    "*.o",
    ".*cache",
    ".benchmarks",
    ".hypothesis",
)
_JUNK = re.compile(r"(^|/)(__pycache__|\.[^/]*)(/|$)|\.(py[cod]|so|o)$")


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def _unavailable(reason: str) -> None:
    if _in_ci():
        pytest.fail(f"CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


def _source_root() -> Path:
    given = os.environ.get(SOURCE_ENV)
    root = Path(given) if given else Path(__file__).resolve().parent.parent
    if not ((root / "setup.py").is_file() and (root / "uring_epoll" / "__init__.py").is_file()):
        _unavailable(
            f"no uring-epoll source checkout at {root} (set {SOURCE_ENV} to one): "
            "nothing to build the distributions from"
        )
    return root.resolve()


def _source_files(root: Path, top: str) -> set[str]:
    """The files under ``root/top`` as sdist-relative paths, build leftovers excluded."""
    found = set()
    for path in (root / top).rglob("*"):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not _JUNK.search(rel) and not rel.endswith(("_native.c",)):
            found.add(rel)
    return found


@dataclass(frozen=True)
class Dists:
    source: Path
    sdist: Path
    wheel: Path

    @property
    def wheel_names(self) -> set[str]:
        with zipfile.ZipFile(self.wheel) as zf:
            return set(zf.namelist())

    @property
    def sdist_names(self) -> set[str]:
        """Paths in the sdist, without its top directory (``uring_epoll-0.1.0/``)."""
        with tarfile.open(self.sdist) as tf:
            return {m.name.split("/", 1)[1] for m in tf.getmembers() if "/" in m.name}

    def dist_info(self, name: str) -> str:
        with zipfile.ZipFile(self.wheel) as zf:
            info = {n.split("/", 1)[0] for n in zf.namelist() if ".dist-info/" in n}
            assert len(info) == 1, f"expected one .dist-info directory, got {info}"
            return zf.read(f"{info.pop()}/{name}").decode()


def _one(directory: Path, pattern: str) -> Path:
    found = sorted(directory.glob(pattern))
    assert len(found) == 1, f"expected one {pattern} in {directory}, found {found}"
    return found[0]


@pytest.fixture(scope="session")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    if kernel.is_inside_uml():
        pytest.skip("packaging is checked on the host; nothing to learn from building in UML")
    source = _source_root()
    given = os.environ.get(DIST_ENV)
    if given:
        out = Path(given)
    else:
        try:
            import build  # noqa: F401  (only whether it is installed)
        except ImportError:
            _unavailable("the `build` package is missing (it is in the [test] extra)")
        out = tmp_path_factory.mktemp("dist")
        # From a copy without build leftovers: setuptools adds every file an old
        # *.egg-info/SOURCES.txt lists to a new sdist, which would hide a MANIFEST.in gap.
        clean = tmp_path_factory.mktemp("source") / "uring-epoll"
        shutil.copytree(source, clean, ignore=shutil.ignore_patterns(*_BUILD_LEFTOVERS))
        # Without arguments `python -m build` builds the sdist, then the wheel from the
        # unpacked sdist: a file the sdist lacks breaks the wheel build too.
        result = subprocess.run(
            [sys.executable, "-m", "build", "--outdir", str(out), str(clean)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, (
            f"python -m build failed (exit {result.returncode}):\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return Dists(source, _one(out, "*.tar.gz"), _one(out, "*.whl"))


def test_wheel_has_every_subpackage_and_module(dists: Dists) -> None:
    package = dists.source / "uring_epoll"
    subpackages = sorted(
        p.parent.relative_to(dists.source).as_posix() for p in package.rglob("__init__.py")
    )
    assert "uring_epoll/backends" in subpackages  # the walk itself works
    names = dists.wheel_names
    missing = [p for p in subpackages if f"{p}/__init__.py" not in names]
    assert not missing, f"subpackages missing from the wheel: {missing}"
    modules = {
        p.relative_to(dists.source).as_posix()
        for p in package.rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert sorted(modules - names) == [], "modules missing from the wheel"


def test_wheel_has_the_compiled_modules(dists: Dists) -> None:
    for module in ("_native", "_bench_native"):
        pattern = re.compile(rf"^uring_epoll/{module}\.[^/]*\.so$")
        assert any(pattern.match(n) for n in dists.wheel_names), f"no {module} extension"


def test_wheel_carries_the_whole_kernel_series(dists: Dists) -> None:
    names = dists.wheel_names
    patches = dists.source / "kernel_patches"
    entries = kernel.read_series(patches)
    assert entries, "the series lists no patch"
    listed = ["series", "um.config", *(e.path.relative_to(patches).as_posix() for e in entries)]
    missing = [n for n in listed if f"{PATCHES_IN_WHEEL}/{n}" not in names]
    assert not missing, f"series files missing from the wheel: {missing}"
    # And everything else of the directory (README.md), byte for byte.
    with zipfile.ZipFile(dists.wheel) as zf:
        for rel in sorted(_source_files(dists.source, "kernel_patches")):
            inside = f"{PATCHES_IN_WHEEL}/{rel.split('/', 1)[1]}"
            assert inside in names, f"{rel} is not in the wheel"
            assert zf.read(inside) == (dists.source / rel).read_bytes(), f"{inside} differs"


def test_wheel_has_c_sources_and_py_typed(dists: Dists) -> None:
    names = dists.wheel_names
    csrc = sorted(_source_files(dists.source, "uring_epoll/csrc"))
    assert "uring_epoll/csrc/ue.h" in csrc and any(n.endswith(".c") for n in csrc)
    assert sorted(set(csrc) - names) == [], "C sources missing from the wheel"
    assert "uring_epoll/py.typed" in names


def test_wheel_licenses_and_metadata(dists: Dists) -> None:
    names = dists.wheel_names
    for rel in LICENSE_FILES:
        assert (dists.source / rel).is_file(), f"{rel} missing from the checkout"
        assert any(n.endswith(f".dist-info/licenses/{rel}") for n in names), f"{rel} not shipped"
    meta = email.parser.Parser().parsestr(dists.dist_info("METADATA"))
    assert meta["Metadata-Version"] is not None
    assert meta["License-Expression"] == LICENSE_EXPRESSION
    assert sorted(meta.get_all("License-File") or []) == sorted(LICENSE_FILES)
    classifiers = meta.get_all("Classifier") or []
    assert "Typing :: Typed" in classifiers
    assert not any(c.startswith("License ::") for c in classifiers), (
        "PEP 639: no license classifier"
    )


def test_wheel_is_a_platform_wheel(dists: Dists) -> None:
    name, _version, python, abi, platform = dists.wheel.name[: -len(".whl")].split("-")
    here = f"cp{sys.version_info.major}{sys.version_info.minor}"
    assert (name, python, abi) == ("uring_epoll", here, here), dists.wheel.name
    assert platform.startswith("linux_") or "linux" in platform, dists.wheel.name
    wheel_file = email.parser.Parser().parsestr(dists.dist_info("WHEEL"))
    assert wheel_file["Root-Is-Purelib"] == "false"
    assert wheel_file["Tag"] == f"{python}-{abi}-{platform}"


def test_sdist_holds_what_the_test_suite_needs(dists: Dists) -> None:
    names = dists.sdist_names
    for top in ("README.md", "pyproject.toml", "setup.py", "MANIFEST.in", *LICENSE_FILES):
        assert top in names, f"{top} missing from the sdist"
    for tree in SDIST_TREES:
        wanted = _source_files(dists.source, tree)
        assert wanted, f"nothing under {tree}/ in the checkout"
        assert sorted(wanted - names) == [], f"files of {tree}/ missing from the sdist"
    assert "tests/conftest.py" in names and "bench/bench_drain.py" in names
    assert not [n for n in names if _JUNK.search(n) and not n.startswith("uring_epoll.egg-info")]


def test_read_series_names_a_missing_patch(dists: Dists, tmp_path: Path) -> None:
    """A copy of the real series with one patch gone: a clear error naming it, no build."""
    series_dir = tmp_path / "kernel_patches"
    shutil.copytree(dists.source / "kernel_patches", series_dir)
    entries = kernel.read_series(series_dir)
    victim = entries[len(entries) // 2].path
    victim.unlink()
    with pytest.raises(kernel.KernelSeriesError) as info:
        kernel.read_series(series_dir)
    assert isinstance(info.value, kernel.KernelBuildError)
    assert info.value.path == victim
    assert victim.name in str(info.value) and "missing" in str(info.value)
    # The cache key (computed before any build step) refuses the series too.
    with pytest.raises(kernel.KernelSeriesError, match=re.escape(victim.name)):
        kernel.cache_key(kernel.UML, tmp_path / "linux-source-6.1.tar.xz", series_dir)


def test_installed_wheel_finds_its_series_through_importlib_resources(
    dists: Dists, tmp_path: Path
) -> None:
    """The wheel, unpacked as an installer would (purelib = platlib here), imported from
    outside any checkout: patches_dir() is the package's kernel_patches/ and the series there
    gives the same kernel cache key as the checkout's."""
    target = tmp_path / "site"
    with zipfile.ZipFile(dists.wheel) as zf:
        zf.extractall(target)
    code = (
        "import importlib.resources, json, uring_epoll\n"
        "from uring_epoll import kernel\n"
        "shipped = importlib.resources.files('uring_epoll') / 'kernel_patches'\n"
        "print(json.dumps({'package': uring_epoll.__file__, 'shipped': str(shipped),\n"
        "    'patches_dir': str(kernel.patches_dir()), 'n': len(kernel.read_series()),\n"
        "    'key': kernel.cache_key(kernel.UML)}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in (kernel.PATCHES_ENV, "PYTHONPATH")}
    env["PYTHONPATH"] = str(target)
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert Path(got["package"]).resolve().is_relative_to(target.resolve())
    assert Path(got["patches_dir"]) == Path(got["shipped"]).resolve()
    assert Path(got["patches_dir"]) == (target / PATCHES_IN_WHEEL).resolve()
    assert got["n"] == len(kernel.read_series(dists.source / "kernel_patches"))
    assert got["key"] == kernel.cache_key(kernel.UML, pdir=dists.source / "kernel_patches")


def test_patches_dir_of_the_package_under_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """In this very run: the installed package's series (CI tests the installed wheel) or,
    for a source checkout, the checkout's kernel_patches/."""
    monkeypatch.delenv(kernel.PATCHES_ENV, raising=False)
    shipped = Path(str(importlib.resources.files("uring_epoll") / "kernel_patches")).resolve()
    if os.environ.get("URING_EPOLL_TEST_INSTALLED") == "1":
        assert (shipped / "series").is_file(), f"the installed package has no {shipped}/series"
    if (shipped / "series").is_file():
        assert kernel.patches_dir() == shipped
    else:
        assert (
            kernel.patches_dir()
            == Path(uring_epoll.__file__).resolve().parent.parent / "kernel_patches"
        )
    assert kernel.read_series(), "the series under test lists no patch"
