"""The installed ``uring-epoll`` command, run from a directory outside any source tree.

This is what a user meets first after ``pip install .``: the console script must find every
subpackage, both compiled modules and the package data without the checkout on ``sys.path``.
Where the suite runs against an installed wheel (``URING_EPOLL_TEST_INSTALLED=1``, as in CI)
a missing script is a failure; from an editable or source checkout without it, a skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

INSTALLED = os.environ.get("URING_EPOLL_TEST_INSTALLED", "") not in ("", "0")


def console_script() -> str:
    """The ``uring-epoll`` beside this interpreter (a venv's bin/), else the one on PATH."""
    beside = Path(sys.executable).with_name("uring-epoll")
    found = str(beside) if beside.is_file() else shutil.which("uring-epoll")
    if found is None:
        if INSTALLED:
            pytest.fail("the installed package has no uring-epoll console script", pytrace=False)
        pytest.skip("the uring-epoll console script is not installed (pip install .)")
    return found


def run_script(tmp_path: Path, *args: str, timeout: float = 300) -> str:
    """Run ``uring-epoll ARGS`` in an empty directory; return its stdout, failing on exit != 0."""
    result = subprocess.run(
        [console_script(), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert result.returncode == 0, f"uring-epoll {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result.stdout


def test_info_names_the_version_and_every_backend(tmp_path: Path) -> None:
    import uring_epoll

    out = run_script(tmp_path, "info")
    assert out.startswith(f"uring-epoll {uring_epoll.__version__}")
    for backend in ("kernel", "thread", "epoll"):
        assert f"  {backend}  " in out


def test_demo_reaches_the_hangup(tmp_path: Path) -> None:
    out = run_script(tmp_path, "demo", "--fast", "--vpoll", "emulation")
    lines = out.splitlines()
    assert lines[0].startswith("vpoll implementation: emulation")
    assert any(line.startswith("GOT event") for line in lines)
    assert "before the hangup" not in out


def test_quick_bench_prints_its_table(tmp_path: Path) -> None:
    out = run_script(tmp_path, "bench", "--quick")
    assert "select.epoll" in out
    assert "ratio" in out
