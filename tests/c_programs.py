"""Compiling the C programs the tests run (on the host, and in the guests, which see the host's
files): one place for the compiler flags, and a skip where there is no compiler."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

#: Warnings are errors: these programs check kernels, so a silent mistake in one is a wrong
#: verdict.
FLAGS = ("-O2", "-Wall", "-Wextra", "-Werror", "-pthread")


def compile_c(source: Path, binary: Path) -> Path:
    """``gcc FLAGS -o binary source``; skip without gcc, fail with its diagnostics."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed")
    proc = subprocess.run(
        [gcc, *FLAGS, "-o", str(binary), str(source)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return binary
