"""The User-Mode Linux tooling itself: cache key, series parsing, boot, run semantics.

None of this needs the patched behaviour, so it holds with an empty series (plain 6.1). The tests
that boot a kernel are marked ``uml`` and skip inside UML (see uml_support).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
from pathlib import Path

import pytest

import uring_epoll
from uring_epoll import kernel
from uring_epoll.kernel import UML, guest_init

try:
    import uml_support
except ImportError:  # tests/ imported as a package
    from tests import uml_support


# ---------------------------------------------------------------------------------------------
# Pure functions


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    """A fake source tarball and a patch directory with a two-patch series."""
    tarball = tmp_path / "linux-source-6.1.tar.xz"
    tarball.write_bytes(b"x" * 100)
    pdir = tmp_path / "kernel_patches"
    pdir.mkdir()
    (pdir / "0001-a.patch").write_text("a\n")
    (pdir / "0002-b.patch").write_text("b\n")
    (pdir / "series").write_text("# comment\n0001-a.patch\n\n0002-b.patch -p1\n")
    (pdir / "um.config").write_text("CONFIG_EPOLL=y\n")
    return tarball, pdir


def test_cache_key_is_stable(inputs: tuple[Path, Path]) -> None:
    tarball, pdir = inputs
    key = kernel.cache_key(UML, tarball, pdir)
    assert len(key) == 16 and int(key, 16) >= 0
    assert kernel.cache_key(UML, tarball, pdir) == key


@pytest.mark.parametrize("change", ["patch", "series order", "um.config", "tarball", "new patch"])
def test_cache_key_changes_with_every_input(inputs: tuple[Path, Path], change: str) -> None:
    tarball, pdir = inputs
    before = kernel.cache_key(UML, tarball, pdir)
    if change == "patch":
        (pdir / "0002-b.patch").write_text("b changed\n")
    elif change == "series order":
        (pdir / "series").write_text("0002-b.patch\n0001-a.patch\n")
    elif change == "um.config":
        (pdir / "um.config").write_text("CONFIG_EPOLL=y\nCONFIG_X=y\n")
    elif change == "tarball":
        tarball.write_bytes(b"x" * 101)
    else:
        (pdir / "0003-c.patch").write_text("c\n")
        with open(pdir / "series", "a") as f:
            f.write("0003-c.patch\n")
    assert kernel.cache_key(UML, tarball, pdir) != before


def test_uml_key_is_the_one_from_before_targets(inputs: tuple[Path, Path]) -> None:
    """UML builds cached before kernel targets existed keep their key (a rebuild takes a
    quarter of an hour): the key of these fixed inputs is pinned."""
    tarball, pdir = inputs
    assert kernel.cache_key(UML, tarball, pdir) == "fb490cf64cd9db9e"


TARGET_CHANGES = {
    "name": "other",
    "arch": "x86_64",
    "base_config": "tinyconfig",
    "config_fragments": ("um.config", "extra.config"),
    "tooling_config": UML.tooling_config + "CONFIG_EXTRA=y\n",
    "make_targets": ("linux", "modules"),
    "image": "vmlinux",
    "headers_arch": "x86",
    "apply_series": False,
}


@pytest.mark.parametrize("field", TARGET_CHANGES)
def test_cache_key_changes_with_every_target_field(inputs: tuple[Path, Path], field: str) -> None:
    assert set(TARGET_CHANGES) == {f.name for f in dataclasses.fields(kernel.KernelTarget)}
    tarball, pdir = inputs
    (pdir / "extra.config").write_text("CONFIG_EXTRA=y\n")
    other = dataclasses.replace(UML, **{field: TARGET_CHANGES[field]})
    assert kernel.cache_key(other, tarball, pdir) != kernel.cache_key(UML, tarball, pdir)


def test_target_fragments_are_part_of_the_series(inputs: tuple[Path, Path]) -> None:
    tarball, pdir = inputs
    other = dataclasses.replace(UML, config_fragments=("um.config", "extra.config"))
    with pytest.raises(kernel.KernelSeriesError, match=r"extra\.config") as info:
        kernel.cache_key(other, tarball, pdir)
    assert info.value.path == pdir / "extra.config"
    (pdir / "extra.config").write_text("CONFIG_EXTRA=y\n")
    before = kernel.cache_key(other, tarball, pdir)
    (pdir / "extra.config").write_text("CONFIG_EXTRA=m\n")
    assert kernel.cache_key(other, tarball, pdir) != before


def test_control_kernel_key_ignores_the_patches(inputs: tuple[Path, Path]) -> None:
    tarball, pdir = inputs
    control = dataclasses.replace(UML, name="um-control", apply_series=False)
    before = kernel.cache_key(control, tarball, pdir)
    (pdir / "0002-b.patch").write_text("b changed\n")
    assert kernel.cache_key(control, tarball, pdir) == before


def test_cache_key_ignores_unlisted_files(inputs: tuple[Path, Path]) -> None:
    tarball, pdir = inputs
    before = kernel.cache_key(UML, tarball, pdir)
    (pdir / "0009-draft.patch").write_text("not in the series\n")
    (pdir / "README").write_text("notes\n")
    assert kernel.cache_key(UML, tarball, pdir) == before


def test_empty_series(tmp_path: Path) -> None:
    (tmp_path / "series").write_text("# nothing yet\n\n")
    (tmp_path / "um.config").write_text("CONFIG_EPOLL=y\n")
    assert kernel.read_series(tmp_path) == []


def test_absent_series_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No series file means an incomplete install or a wrong override: never an unpatched
    kernel built in silence."""
    with pytest.raises(kernel.KernelSeriesError, match="is missing") as info:
        kernel.read_series(tmp_path)
    assert info.value.path == tmp_path / "series"
    assert str(tmp_path / "series") in str(info.value)
    # find_kernel reports "nothing built" rather than raising, and build refuses.
    monkeypatch.setenv(kernel.PATCHES_ENV, str(tmp_path))
    assert kernel.find_kernel(UML) is None
    with pytest.raises(kernel.KernelSeriesError):
        kernel.cache_key(UML, tmp_path / "linux-source-6.1.tar.xz")


def test_build_refuses_an_incomplete_series_without_waiting_for_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process's build holds the lock: a series that cannot be built is reported at
    once rather than after that build (minutes)."""
    import fcntl

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    kernel.cache_root().mkdir(parents=True)
    outcome: list[BaseException] = []

    def attempt() -> None:
        try:
            kernel.build(
                UML, tarball=tmp_path / "linux.tar.xz", pdir=tmp_path / "empty", progress=None
            )
        except BaseException as exc:
            outcome.append(exc)

    with open(kernel.cache_root() / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        worker = threading.Thread(target=attempt, daemon=True)
        worker.start()
        worker.join(timeout=30)
        still_waiting = worker.is_alive()
    worker.join(timeout=30)
    assert not still_waiting, "build() waited for the lock before checking the series"
    assert len(outcome) == 1 and isinstance(outcome[0], kernel.KernelSeriesError), outcome


def test_series_without_its_config_fragment_is_an_error(inputs: tuple[Path, Path]) -> None:
    _, pdir = inputs
    (pdir / "um.config").unlink()
    with pytest.raises(kernel.KernelSeriesError, match=r"um\.config") as info:
        kernel.read_series(pdir)
    assert info.value.path == pdir / "um.config"


def test_series_parsing(inputs: tuple[Path, Path]) -> None:
    _, pdir = inputs
    entries = kernel.read_series(pdir)
    assert [(e.path.name, e.strip) for e in entries] == [("0001-a.patch", 1), ("0002-b.patch", 1)]


def test_series_naming_a_missing_patch_is_an_error(inputs: tuple[Path, Path]) -> None:
    _, pdir = inputs
    (pdir / "series").write_text("0001-a.patch\n0005-missing.patch\n")
    with pytest.raises(kernel.KernelSeriesError, match=r"0005-missing\.patch") as info:
        kernel.read_series(pdir)
    assert info.value.path == pdir / "0005-missing.patch"
    assert isinstance(info.value, kernel.KernelBuildError)


def test_patches_dir_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(kernel.PATCHES_ENV, str(tmp_path))
    assert kernel.patches_dir() == tmp_path.resolve()
    monkeypatch.delenv(kernel.PATCHES_ENV)
    shipped = Path(uring_epoll.__file__).resolve().parent / "kernel_patches"
    checkout = Path(uring_epoll.__file__).resolve().parent.parent / "kernel_patches"
    # An installed wheel carries the series in the package; a source checkout has it on top.
    expected = shipped if (shipped / "series").is_file() else checkout
    assert kernel.patches_dir() == expected
    assert (kernel.patches_dir() / "series").is_file()


def test_cache_root_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert kernel.cache_root() == tmp_path / "uring-epoll" / "kernel"
    assert kernel.find_kernel(UML, "0123456789abcdef") is None


def test_ensure_source_explains_why_it_cannot_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "linux-source-6.1.tar.xz"
    monkeypatch.setattr(
        kernel.source.shutil, "which", lambda name: None if name == "apt-get" else "/x"
    )
    with pytest.raises(kernel.KernelSourceError, match="apt-get is not available"):
        kernel.ensure_source(missing)
    monkeypatch.setattr(kernel.source.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(kernel.source.os, "geteuid", lambda: 1000)
    with pytest.raises(kernel.KernelSourceError, match="needs root"):
        kernel.ensure_source(missing)
    assert issubclass(kernel.KernelSourceError, kernel.KernelBuildError)
    assert issubclass(kernel.KernelBuildError, RuntimeError)


def test_kernel_problems_finds_splats_after_init_only() -> None:
    boot = "WARNING: at boot, not ours\nRun /tmp/x/init as init process\n"
    assert kernel.kernel_problems(boot + "ordinary line\n") == ""
    splat = (
        "------------[ cut here ]------------\nWARNING: CPU: 0 PID: 7 at fs/eventpoll.c:1 x\n"
        "Call Trace:\n [<60000000>] ep_insert+0x1/0x2\n"
    )
    found = kernel.kernel_problems(boot + splat)
    assert "fs/eventpoll.c" in found and "ep_insert" in found and "at boot" not in found


def test_kernel_problems_ignores_the_guest_helpers_own_warnings() -> None:
    """virtme-ng's init prints "WARNING:" lines of its own (seen on a minimal Debian without
    `ip`); the kernel's reports, lockdep's and KASAN's included, still count."""
    boot = "Run /usr/lib/virtme-ng-init as init process\n"
    helper = (
        'virtme-ng-init: WARNING: failed to run: "ip" link set dev lo up\n'
        "virtme-run: failed to start virtiofsd, fallback to 9p\n"
    )
    assert kernel.kernel_problems(boot + helper) == ""
    for report in (
        "WARNING: possible circular locking dependency detected\n",
        "BUG: KASAN: slab-use-after-free in ep_remove+0x1/0x2\n",
        "BUG: sleeping function called from invalid context at mm/slab.h:1\n",
        "rcu: INFO: rcu_preempt self-detected stall on CPU\n",
    ):
        assert report.strip() in kernel.kernel_problems(boot + helper + report)


def test_cli_registers_kernel_subcommands() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    kernel.add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["kernel", "run", "--timeout", "5", "--", "true", "-x"])
    assert args.timeout == 5 and args.cmd[-2:] == ["true", "-x"]
    for sub in ("build", "path", "test", "selftest"):
        assert callable(parser.parse_args(["kernel", sub]).func)


def test_kernel_test_runs_the_tests_of_the_given_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An installed package has no tests: ``kernel test`` takes them from --root or the cwd
    (or a parent), and says so when there are none instead of booting for nothing."""
    checkout = tmp_path / "checkout"
    (checkout / "tests" / "sub").mkdir(parents=True)
    (checkout / "tests" / "conftest.py").write_text("")
    monkeypatch.chdir(checkout / "tests" / "sub")
    assert kernel.cli._test_root(None) == checkout.resolve()
    assert kernel.cli._test_root(str(checkout)) == checkout.resolve()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert kernel.cli._test_root(str(elsewhere)) is None
    monkeypatch.chdir(elsewhere)
    assert kernel.cli._test_root(None) is None

    import argparse

    parser = argparse.ArgumentParser()
    kernel.add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["kernel", "test"])
    assert args.func(args) == 2
    assert "no tests/conftest.py in" in capsys.readouterr().err
    args = parser.parse_args(["kernel", "test", "--root", str(elsewhere), "--", "-x"])
    assert args.pytest_args == ["--", "-x"]
    assert args.func(args) == 2
    assert str(elsewhere) in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The build pipeline, on a fake tree with a fake make (seconds, not minutes)

FAKE_MAKE = """#!/bin/sh
echo "$*" >> "$FAKE_MAKE_LOG"
for a in "$@"; do
  case "$a" in
    defconfig) echo "CONFIG_DEFAULT=y" > .config ;;
    linux) sleep "${FAKE_MAKE_SLEEP:-0}"; echo "  CC      fake.o"; cp hello.txt linux ;;
    headers_install) mkdir -p usr/include/linux; echo "  HDRINST usr/include/linux/x.h" ;;
  esac
done
"""
MERGE_CONFIG = """#!/bin/sh
shift 2
cat "$@" >> .config
"""
GOOD_PATCH = """--- a/hello.txt
+++ b/hello.txt
@@ -1 +1 @@
-hello
+hello, patched
"""


@pytest.fixture
def fake_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, Path]:
    """(tarball, patch dir, make log) with make replaced and the cache in tmp_path."""
    import tarfile

    top = tmp_path / "tree" / "linux-source-fake"
    (top / "scripts" / "kconfig").mkdir(parents=True)
    (top / "hello.txt").write_text("hello\n")
    (top / "scripts" / "kconfig" / "merge_config.sh").write_text(MERGE_CONFIG)
    (top / "scripts" / "kconfig" / "merge_config.sh").chmod(0o755)
    tarball = tmp_path / "linux-source-fake.tar.xz"
    with tarfile.open(tarball, "w:xz") as tar:
        tar.add(top, arcname=top.name)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "make").write_text(FAKE_MAKE)
    (bindir / "make").chmod(0o755)
    pdir = tmp_path / "patches"
    pdir.mkdir()
    (pdir / "0001-greet.patch").write_text(GOOD_PATCH)
    (pdir / "series").write_text("0001-greet.patch\n")
    (pdir / "um.config").write_text("CONFIG_FROM_SERIES=y\n")
    log = tmp_path / "make.log"
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_MAKE_LOG", str(log))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv(kernel.NICE_ENV, "0")
    return tarball, pdir, log


def test_build_applies_series_merges_config_and_publishes(
    fake_tree: tuple[Path, Path, Path],
) -> None:
    tarball, pdir, log = fake_tree
    built = kernel.build(UML, tarball=tarball, pdir=pdir, progress=None)
    assert built.key == kernel.cache_key(UML, tarball, pdir)
    assert built.root == kernel.cache_root() / built.key
    assert built.linux.read_text() == "hello, patched\n"
    config = (built.src / ".config").read_text()
    assert "CONFIG_HOSTFS=y" in config and "CONFIG_FROM_SERIES=y" in config
    assert (built.include / "linux").is_dir()
    # What was built is recorded next to it, and hashes to the key it is published under.
    assert (built.root / "kernel_patches" / "0001-greet.patch").read_text() == GOOD_PATCH
    assert kernel.cache_key(UML, tarball, built.root / "kernel_patches") == built.key
    assert [line.split()[-1] for line in log.read_text().splitlines()] == [
        "defconfig",
        "olddefconfig",
        "linux",
        "headers_install",
    ]
    assert not list(kernel.cache_root().glob(".tmp-*"))
    # Cached: no make at all the second time.
    before = log.read_text()
    assert kernel.build(UML, tarball=tarball, pdir=pdir, progress=None) == built
    assert log.read_text() == before
    # A changed patch is a new key and a new build next to the old one.
    (pdir / "0001-greet.patch").write_text(GOOD_PATCH.replace("patched", "again"))
    rebuilt = kernel.build(UML, tarball=tarball, pdir=pdir, progress=None)
    assert rebuilt.key != built.key and rebuilt.linux.read_text() == "hello, again\n"
    assert built.linux.is_file()


def test_control_kernel_is_built_without_the_series(fake_tree: tuple[Path, Path, Path]) -> None:
    tarball, pdir, _ = fake_tree
    control = dataclasses.replace(UML, name="um-control", apply_series=False)
    built = kernel.build(control, tarball=tarball, pdir=pdir, progress=None)
    assert built.key == kernel.cache_key(control, tarball, pdir)
    assert built.linux.read_text() == "hello\n"
    assert "CONFIG_FROM_SERIES=y" in (built.src / ".config").read_text()
    assert built.key != kernel.cache_key(UML, tarball, pdir)


def test_old_builds_are_pruned(
    fake_tree: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    tarball, pdir, _ = fake_tree
    monkeypatch.setenv(kernel.KEEP_ENV, "2")
    builds = []
    for n in range(3):
        (pdir / "0001-greet.patch").write_text(GOOD_PATCH.replace("patched", f"v{n}"))
        builds.append(kernel.build(UML, tarball=tarball, pdir=pdir, progress=None))
        time.sleep(0.05)  # distinct mtimes
    assert [b.linux.is_file() for b in builds] == [False, True, True]


def test_build_names_the_patch_that_does_not_apply(fake_tree: tuple[Path, Path, Path]) -> None:
    tarball, pdir, _ = fake_tree
    (pdir / "0002-bad.patch").write_text(GOOD_PATCH.replace("-hello", "-goodbye"))
    (pdir / "series").write_text("0001-greet.patch\n0002-bad.patch\n")
    with pytest.raises(kernel.KernelBuildError, match=r"applying 0002-bad\.patch") as info:
        kernel.build(UML, tarball=tarball, pdir=pdir, progress=None)
    key = kernel.cache_key(UML, tarball, pdir)
    failed_log = kernel.cache_root() / f"{key}.failed.log"
    assert str(failed_log) in str(info.value) and failed_log.is_file()
    assert not (kernel.cache_root() / key).exists()
    assert not list(kernel.cache_root().glob(".tmp-*"))


def test_concurrent_builds_build_once(fake_tree: tuple[Path, Path, Path], tmp_path: Path) -> None:
    import subprocess

    tarball, pdir, log = fake_tree
    code = (
        "import sys; from pathlib import Path; from uring_epoll import kernel; "
        "print(kernel.build(kernel.UML, tarball=Path(sys.argv[1]), pdir=Path(sys.argv[2]), "
        "progress=None).linux)"
    )
    env = dict(
        os.environ,
        FAKE_MAKE_SLEEP="2",
        PYTHONPATH=uml_support.child_pythonpath(),
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tarball), str(pdir)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outputs[0] == outputs[1] and outputs[0].endswith("/linux")
    assert [line.split()[-1] for line in log.read_text().splitlines()].count("linux") == 1


# ---------------------------------------------------------------------------------------------
# Booting the kernel

needs_kernel = pytest.mark.uml


@needs_kernel
def test_exit_status_zero_and_nonzero() -> None:
    k = uml_support.kernel()
    assert kernel.run(["true"], kernel=k, stdout=None, stderr=None, timeout=120) == 0
    assert kernel.run(["sh", "-c", "exit 3"], kernel=k, stdout=None, stderr=None, timeout=120) == 3


@needs_kernel
def test_signal_gives_128_plus_signal() -> None:
    code = kernel.run(
        ["sh", "-c", "kill -TERM $$"],
        kernel=uml_support.kernel(),
        stdout=None,
        stderr=None,
        timeout=120,
    )
    assert code == 128 + 15


@needs_kernel
def test_missing_command_gives_127() -> None:
    result = kernel.run_capture(["/nonexistent/command"], kernel=uml_support.kernel(), timeout=120)
    assert result.returncode == 127
    assert "/nonexistent/command" in result.stderr


@needs_kernel
def test_runs_inside_uml_in_callers_cwd(tmp_path: Path) -> None:
    (tmp_path / "marker").write_text("here\n")
    script = (
        "import os, sys\nfrom uring_epoll import kernel\n"
        "print(os.getcwd()); print(open('marker').read().strip()); "
        "print(kernel.is_inside_uml()); print(os.uname().release)"
    )
    result = kernel.run_capture(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        kernel=uml_support.kernel(),
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(uml_support.PACKAGE_PARENT)),
    )
    assert result.returncode == 0, result.stderr
    cwd, marker, inside, release = result.stdout.split("\n")[:4]
    assert cwd == str(tmp_path) and marker == "here" and inside == "True"
    assert release.startswith("6.1.")
    assert not kernel.is_inside_uml()


@needs_kernel
def test_environment_is_passed_exactly() -> None:
    env = {"PATH": os.environ["PATH"], "URING_EPOLL_T": "a b\tc=d\n'\"$x", "EMPTY": ""}
    result = kernel.run_capture(
        [sys.executable, "-c", "import os; print(repr(dict(os.environ)))"],
        env=env,
        kernel=uml_support.kernel(),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    seen = eval(result.stdout)  # repr of a dict of str
    seen.pop("LC_CTYPE", None)  # Python's C-locale coercion may add it in the child
    assert seen == env


@needs_kernel
def test_stdout_and_stderr_are_separate_and_exact() -> None:
    script = (
        "import sys\nsys.stdout.write('out 1\\nout 2\\n'); sys.stdout.flush()\n"
        "sys.stderr.write('err\\n'); sys.stdout.buffer.write(bytes(range(256)))"
    )
    result = kernel.run(
        [sys.executable, "-c", script],
        kernel=uml_support.kernel(),
        timeout=120,
        stdout=(out := __import__("io").BytesIO()),
        stderr=(err := __import__("io").BytesIO()),
    )
    assert result == 0
    assert out.getvalue() == b"out 1\nout 2\n" + bytes(range(256))
    assert err.getvalue() == b"err\n"


@needs_kernel
def test_large_output_is_complete() -> None:
    result = kernel.run_capture(
        ["sh", "-c", "seq 1 200000"], kernel=uml_support.kernel(), timeout=300
    )
    assert result.returncode == 0
    lines = result.stdout.split("\n")
    assert lines[0] == "1" and lines[-2] == "200000" and len(lines) == 200001


@needs_kernel
def test_output_streams_while_the_command_runs() -> None:
    arrivals: list[tuple[float, bytes]] = []

    class Recorder:
        def write(self, data: bytes) -> None:
            arrivals.append((time.monotonic(), data))

        def flush(self) -> None:
            pass

    kernel.run(
        ["sh", "-c", "echo first; sleep 4; echo second"],
        kernel=uml_support.kernel(),
        stdout=Recorder(),
        stderr=None,
        timeout=120,
    )
    ended = time.monotonic()
    text = b"".join(d for _, d in arrivals)
    assert text == b"first\nsecond\n"
    first_at = next(t for t, d in arrivals if b"first" in d)
    assert ended - first_at > 3, "the first line arrived only when the command ended"


@needs_kernel
def test_timeout_kills_a_hung_guest() -> None:
    k = uml_support.kernel()
    started = time.monotonic()
    with pytest.raises(kernel.KernelTimeout, match="within 10s") as info:
        kernel.run(["sleep", "1000"], kernel=k, stdout=None, stderr=None, timeout=10)
    assert time.monotonic() - started < 40
    # Nothing of that kernel may survive: its helper processes would keep CPU and memory.
    assert info.value.pgid > 0
    with pytest.raises(ProcessLookupError):
        os.killpg(info.value.pgid, 0)


@needs_kernel
def test_kernel_panic_is_reported() -> None:
    with pytest.raises(kernel.KernelRunError, match="sysrq triggered crash"):
        kernel.run_capture(
            ["sh", "-c", "echo c > /proc/sysrq-trigger; sleep 100"],
            kernel=uml_support.kernel(),
            timeout=120,
        )


@needs_kernel
def test_boot_is_quick() -> None:
    """Not a benchmark: a guard against a boot that waits for something (a timeout, a device)."""
    k = uml_support.kernel()
    started = time.monotonic()
    assert kernel.run(["true"], kernel=k, stdout=None, stderr=None, timeout=120) == 0
    assert time.monotonic() - started < 30


@needs_kernel
def test_concurrent_runs() -> None:
    k = uml_support.kernel()
    codes: list[int] = []

    def one(n: int) -> None:
        codes.append(
            kernel.run(["sh", "-c", f"exit {n}"], kernel=k, stdout=None, stderr=None, timeout=120)
        )

    threads = [threading.Thread(target=one, args=(n,)) for n in (4, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [4, 5]


# ---------------------------------------------------------------------------------------------
# The guest's init, on the host: its request and result files, and its refusal to run there


def test_guest_init_reads_the_request_as_written(tmp_path: Path) -> None:
    rundir = str(tmp_path)
    guest_init.write_request(
        rundir, ["sh", "-c", "echo a b"], {"A": "1", "B": "x=y", "EMPTY": ""}, "/w", ["stderr"]
    )
    argv, env, cwd, ttys = guest_init.read_request(rundir)
    assert argv == [b"sh", b"-c", b"echo a b"]
    assert env == {b"A": b"1", b"B": b"x=y", b"EMPTY": b""}
    assert (cwd, ttys) == (b"/w", ["stderr"])
    with pytest.raises(ValueError, match="cannot be passed"):
        guest_init.write_request(rundir, ["true"], {"A": "x\0y"}, "/", [])
    assert guest_init.read_status(rundir) is None
    guest_init.write_status(rundir, 130)
    assert guest_init.read_status(rundir) == 130
    assert not (tmp_path / "status.tmp").exists()


def test_guest_init_refuses_to_run_unless_it_is_init(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Run by hand on a host (as root) it would power the host off: it must refuse. The
    dangerous parts are replaced, so a broken refusal fails this test and nothing else."""

    def forbidden(*args: object) -> None:
        raise AssertionError("guest_init went past its PID 1 check")

    monkeypatch.setattr(guest_init, "run", forbidden)
    monkeypatch.setattr(guest_init, "power_off", forbidden)
    assert guest_init.main([str(tmp_path)]) == 2
    assert "not PID 1" in capsys.readouterr().err
