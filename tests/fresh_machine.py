"""Helpers for running the README's commands on a fresh Debian 12 (a debootstrap chroot).

The README marks each set-up command with ``<!-- readme-command: NAME -->`` on the line before
its fenced code block, which holds exactly that one command. :func:`readme_commands` reads
them back, so the test runs the words a reader copies rather than a private copy of them.

The chroot is a ``debootstrap --variant=minbase bookworm`` base, cached under
``$XDG_CACHE_HOME/uring-epoll/debootstrap-bookworm`` and copied afresh for every command. Into
the copy goes only what a fresh machine on this network would have from its provider: the
resolver, the CA bundle, pip's and apt's configuration. Every tool the project needs beyond
that must be installed by the README's commands (or by the project itself).

One thing is shared with the host: the kernel build cache, bound into the chroot at the same
path, so that a CI run builds each kernel once (the first of the host's run and the chroot's
to need one builds it, under the cache's lock, and the other finds it verified).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

#: The names the README's markers must carry, each exactly once.
COMMAND_NAMES = ("bench", "test")

#: The kernel build cache of root inside the chroot (HOME=/root, no XDG_CACHE_HOME).
CHROOT_KERNEL_CACHE = "/root/.cache/uring-epoll/kernel"

#: Set inside the chroot, so the fresh-machine test skips there instead of recursing.
IN_FRESH_MACHINE_ENV = "URING_EPOLL_IN_FRESH_MACHINE"
#: Opt-in outside CI (the test takes half an hour: it builds the kernel from scratch).
OPT_IN_ENV = "URING_EPOLL_FRESH_MACHINE_TEST"
#: The tree to test (CI points it at the unpacked sdist); default: the checkout above tests/.
#: The checkout to copy (set by .ci/run; tests/test_packaging.py reads the same variable).
SOURCE_TREE_ENV = "URING_EPOLL_SOURCE"

SUITE = "bookworm"
#: Where the source tree goes inside the chroot (the commands run from there, as root).
CHROOT_CHECKOUT = "/root/uring-epoll"
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_MARKER_RE = re.compile(r"^<!--\s*readme-command:\s*([A-Za-z0-9_-]+)\s*-->\s*$")
_FENCE_OPEN_RE = re.compile(r"^```(sh|bash|console|shell)?\s*$")

#: Names never copied from the source tree: version control, environments, build output, caches.
_EXCLUDED_NAMES = {
    ".git",
    ".venv",
    "venv",
    "__pycache__",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".hypothesis",
    ".benchmarks",
}
_EXCLUDED_TOP_LEVEL = {"build", "dist"}
_EXCLUDED_SUFFIXES = (".egg-info", ".so", ".o", ".pyc")


class FreshMachineError(Exception):
    """Something the fresh-machine set-up needs (debootstrap, apt, mounts) did not work."""


# --------------------------------------------------------------------------------------------
# The README's commands


class ReadmeCommandError(ValueError):
    """The README's marked commands are missing, duplicated or malformed."""


def readme_commands(readme: Path) -> dict[str, str]:
    """Return ``{name: command}`` for every ``<!-- readme-command: NAME -->`` in ``readme``.

    Each marker must be followed by a fenced code block holding exactly one non-empty line,
    and the names must be exactly :data:`COMMAND_NAMES`, each once.
    """
    lines = readme.read_text(encoding="utf-8").splitlines()
    found: dict[str, list[str]] = {}
    for i, line in enumerate(lines):
        m = _MARKER_RE.match(line.strip())
        if m is None:
            continue
        name = m.group(1)
        if i + 1 >= len(lines) or not _FENCE_OPEN_RE.match(lines[i + 1].strip()):
            raise ReadmeCommandError(
                f"{readme}:{i + 1}: marker {name!r} is not followed by a fenced code block"
            )
        body: list[str] = []
        for j in range(i + 2, len(lines)):
            if lines[j].strip().startswith("```"):
                break
            body.append(lines[j])
        else:
            raise ReadmeCommandError(f"{readme}:{i + 2}: code block of {name!r} is not closed")
        code = [b.strip() for b in body if b.strip()]
        if len(code) != 1:
            raise ReadmeCommandError(
                f"{readme}:{i + 2}: code block of {name!r} must hold exactly one command line, "
                f"found {len(code)}"
            )
        found.setdefault(name, []).append(code[0])
    problems = []
    for name in COMMAND_NAMES:
        count = len(found.get(name, []))
        if count != 1:
            problems.append(f"{count} markers for {name!r}")
    extra = sorted(set(found) - set(COMMAND_NAMES))
    if extra:
        problems.append(f"unknown markers {extra}")
    if problems:
        raise ReadmeCommandError(
            f"{readme}: expected exactly one '<!-- readme-command: NAME -->' for each of "
            f"{list(COMMAND_NAMES)}: " + "; ".join(problems)
        )
    return {name: found[name][0] for name in COMMAND_NAMES}


# --------------------------------------------------------------------------------------------
# The source tree


def source_tree() -> Path | None:
    """``$URING_EPOLL_SOURCE``, else the checkout above tests/ if it is one (a copy of tests/
    beside a pyproject.toml, as CI runs them, is not)."""
    env = os.environ.get(SOURCE_TREE_ENV)
    if env:
        return Path(env).resolve()
    root = Path(__file__).resolve().parent.parent
    is_checkout = (root / "pyproject.toml").is_file() and (root / "uring_epoll").is_dir()
    return root if is_checkout else None


def copy_source_tree(src: Path, dest: Path) -> None:
    """Copy the tracked-looking content of ``src`` to ``dest`` (no .git, venvs, builds, caches)."""

    def ignore(directory: str, names: list[str]) -> set[str]:
        top = Path(directory).resolve() == src.resolve()
        return {
            n
            for n in names
            if n in _EXCLUDED_NAMES
            or (top and n in _EXCLUDED_TOP_LEVEL)
            or n.endswith(_EXCLUDED_SUFFIXES)
        }

    shutil.copytree(src, dest, symlinks=True, ignore=ignore)


# --------------------------------------------------------------------------------------------
# Mounts


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below ``root`` according to /proc/mounts, deepest first."""
    prefix = str(root.resolve())
    points = []
    with open("/proc/mounts", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if len(fields) < 2:
                continue
            point = fields[1].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
            if point == prefix or point.startswith(prefix + "/"):
                points.append(point)
    return sorted(set(points), key=lambda p: p.count("/"), reverse=True)


def unmount_all(root: Path) -> list[str]:
    """Unmount everything at or below ``root``; return what is still mounted (ideally nothing)."""
    for _ in range(3):
        points = mounts_under(root)
        if not points:
            return []
        for point in points:
            if subprocess.run(["umount", point], capture_output=True, check=False).returncode:
                # Busy (a straggler still has a file open): detach it now, it goes when freed.
                subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    return mounts_under(root)


def remove_tree(path: Path) -> None:
    """``rm -rf`` a chroot, but only once nothing is mounted inside it (never the host's /dev)."""
    if not path.exists():
        return
    left = unmount_all(path)
    if left:
        raise FreshMachineError(f"refusing to delete {path}: still mounted: {', '.join(left)}")
    shutil.rmtree(path, ignore_errors=False)


@contextlib.contextmanager
def chroot_mounts(root: Path, shared: Sequence[tuple[Path, str]] = ()) -> Iterator[None]:
    """/proc, a bind of /dev and a private tmpfs on /dev/shm inside ``root``, and each
    ``(host folder, path inside)`` of ``shared`` bound there; always undone."""
    plan = [
        ["mount", "-t", "proc", "proc", str(root / "proc")],
        ["mount", "--bind", "/dev", str(root / "dev")],
        # Private, so the tmpfs below can never propagate to the host's /dev/shm.
        ["mount", "--make-private", str(root / "dev")],
        ["mount", "-t", "tmpfs", "-o", "mode=1777", "tmpfs", str(root / "dev" / "shm")],
    ]
    for host_dir, inside in shared:
        host_dir.mkdir(parents=True, exist_ok=True)
        plan.append(["mount", "--bind", str(host_dir), str(root / inside.lstrip("/"))])
    try:
        for cmd in plan:
            Path(cmd[-1]).mkdir(parents=True, exist_ok=True)
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise FreshMachineError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
        yield
    finally:
        left = unmount_all(root)
        if left:
            raise FreshMachineError(f"could not unmount: {', '.join(left)}")


# --------------------------------------------------------------------------------------------
# The debootstrap base


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "uring-epoll"


def host_mirror() -> str:
    """The host's Debian archive URI for bookworm, from sources.list or sources.list.d."""
    files = [Path("/etc/apt/sources.list")]
    d = Path("/etc/apt/sources.list.d")
    if d.is_dir():
        files += sorted(d.glob("*.list")) + sorted(d.glob("*.sources"))
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line:
                        continue
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
                if fields.get("enabled", "yes").lower() == "no":
                    continue
                if "deb" not in fields.get("types", "").split():
                    continue
                if SUITE in fields.get("suites", "").split():
                    return fields.get("uris", "").split()[0]
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", "", line).split()
                if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                    return words[1]
    raise FreshMachineError(f"no 'deb ... {SUITE}' source in the host's apt configuration")


def _run_logged(cmd: list[str], log: IO[str], timeout: float) -> None:
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        proc = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise FreshMachineError(f"{' '.join(cmd)} timed out after {timeout:.0f} s") from exc
    except OSError as exc:
        raise FreshMachineError(f"{' '.join(cmd)}: {exc}") from exc
    if proc.returncode != 0:
        raise FreshMachineError(f"{' '.join(cmd)} failed (exit {proc.returncode})")


def ensure_debootstrap(log: IO[str]) -> str:
    """The debootstrap program, apt-get installed first when the host lacks it."""
    found = shutil.which("debootstrap", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None:
        raise FreshMachineError("debootstrap is missing and apt-get is not available")
    _run_logged([apt, "update"], log, timeout=600)
    _run_logged([apt, "install", "-y", "--no-install-recommends", "debootstrap"], log, 600)
    found = shutil.which("debootstrap", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if not found:
        raise FreshMachineError("debootstrap still missing after apt-get install")
    return found


def debootstrap_base(log: IO[str], timeout: float = 1800) -> tuple[Path, bool]:
    """Return ``(base, cached)``: the cached minbase bookworm root, built on first use.

    It is built in a temporary sibling and renamed into place, so a killed run never leaves a
    half-built base where a later run would take it for a whole one.
    """
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    base = root / f"debootstrap-{SUITE}"
    with open(root / f"debootstrap-{SUITE}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if base.is_dir():  # only ever renamed into place whole
            return base, True
        for stale in root.glob(f"debootstrap-{SUITE}.tmp-*"):
            remove_tree(stale)  # left by a killed run (debootstrap mounts /proc inside)
        program = ensure_debootstrap(log)
        tmp = root / f"debootstrap-{SUITE}.tmp-{os.getpid()}"
        try:
            _run_logged(
                [program, "--variant=minbase", SUITE, str(tmp), host_mirror()], log, timeout
            )
        finally:
            left = unmount_all(tmp)
            if left:
                raise FreshMachineError(f"debootstrap left mounts behind: {', '.join(left)}")
        os.rename(tmp, base)
        return base, False


# --------------------------------------------------------------------------------------------
# A fresh machine from the base


def copy_base(base: Path, root: Path) -> None:
    """``cp -a`` the base: device nodes, ownership and hard links as debootstrap made them."""
    proc = subprocess.run(
        ["cp", "-a", str(base), str(root)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise FreshMachineError(f"cp -a {base} {root} failed: {proc.stderr.strip()}")


def _copy_host_file(src: Path, root: Path) -> None:
    if not src.exists():
        return
    dest = root / str(src).lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_symlink() or dest.is_file():
        dest.unlink()
    if src.is_dir():
        if dest.is_dir():
            shutil.rmtree(dest)
        shutil.copytree(src, dest)
    else:
        shutil.copy2(src, dest)  # follows symlinks: /etc/resolv.conf often is one


def provision(root: Path) -> None:
    """Give ``root`` what a fresh machine on this network gets from its provider.

    The resolver, the CA bundle (with the local CAs it was built from), pip's configuration and
    apt's sources and proxy settings: nothing the project itself should install.
    """
    home_pip = Path.home() / ".config" / "pip"
    for path in (
        Path("/etc/resolv.conf"),
        Path("/etc/ssl/certs/ca-certificates.crt"),
        Path("/usr/local/share/ca-certificates"),
        Path("/etc/pip.conf"),
        Path("/etc/xdg/pip"),
    ):
        _copy_host_file(path, root)
    if home_pip.is_dir():
        dest = root / "root" / ".config" / "pip"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(home_pip, dest, dirs_exist_ok=True)
    # apt: the host's sources replace debootstrap's, so the chroot uses the same mirrors.
    chroot_apt = root / "etc" / "apt"
    (chroot_apt / "sources.list").unlink(missing_ok=True)
    _copy_host_file(Path("/etc/apt/sources.list"), root)
    sources_d = Path("/etc/apt/sources.list.d")
    if sources_d.is_dir():
        for src in sorted(sources_d.glob("*.list")) + sorted(sources_d.glob("*.sources")):
            _copy_host_file(src, root)
    conf_d = Path("/etc/apt/apt.conf.d")
    if conf_d.is_dir():
        for src in sorted(conf_d.iterdir()):
            if src.is_file() and "proxy" in src.read_text(errors="replace").lower():
                _copy_host_file(src, root)
    for src in (Path("/etc/apt/apt.conf"),):
        _copy_host_file(src, root)


def chroot_argv(root: Path, command: str) -> list[str]:
    """``chroot root env -i ... bash -c 'cd CHECKOUT && command'``: a root login's clean env."""
    return [
        "chroot",
        str(root),
        "env",
        "-i",
        "HOME=/root",
        f"PATH={CHROOT_PATH}",
        "LANG=C.UTF-8",
        "CI=true",
        f"{IN_FRESH_MACHINE_ENV}=1",
        # The SMP campaign (tests/test_vm_smp.py: a quarter of an hour of emulated CPUs) runs
        # in the host's run of the same CI against the same cached kernels; here the VM
        # vehicle's own tests prove that a fresh machine installs QEMU and boots the VM.
        "PYTEST_ADDOPTS=--deselect tests/test_vm_smp.py",
        "bash",
        "-c",
        f"cd {CHROOT_CHECKOUT} && {command}",
    ]


def run_in_chroot(root: Path, command: str, log_path: Path, timeout: float) -> int | None:
    """Run ``command`` in ``root`` with its output in ``log_path``; exit status, None on timeout.

    The command runs in its own session; on timeout the whole session is killed, so no
    straggler (a compiler, a booted kernel) keeps the chroot's mounts busy.
    """
    with open(log_path, "w", encoding="utf-8") as log:
        log.write(f"$ {command}\n")
        log.flush()
        proc = subprocess.Popen(
            chroot_argv(root, command),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        finally:
            if proc.poll() is None or _session_alive(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            kill_chroot_processes(root)


def kill_chroot_processes(root: Path) -> list[int]:
    """SIGKILL every process whose root directory is ``root`` (stragglers that left the
    command's session, e.g. through setsid); return their ids."""
    target = str(root.resolve())
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "root") != target:
                continue
            os.kill(int(entry.name), signal.SIGKILL)
        except OSError:  # gone meanwhile, or not ours to inspect
            continue
        killed.append(int(entry.name))
    return killed


def _session_alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def log_tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


class Timer:
    """Named phase durations, in the order they ran."""

    def __init__(self, report: Callable[[str], None]) -> None:
        self.phases: list[tuple[str, float]] = []
        self._report = report

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[list[str]]:
        """Time the block; it may replace the yielded ``[name]`` (e.g. to say "cache hit")."""
        label = [name]
        start = time.monotonic()
        try:
            yield label
        finally:
            elapsed = time.monotonic() - start
            self.phases.append((label[0], elapsed))
            self._report(f"fresh machine: {label[0]}: {elapsed:.1f} s")

    def summary(self) -> str:
        return "fresh machine phases: " + ", ".join(f"{n} {t:.0f} s" for n, t in self.phases)
