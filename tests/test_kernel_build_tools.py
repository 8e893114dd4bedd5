"""The kernel build's tool check: every missing tool named by its Debian package, all of them
installed by one ``apt-get install`` (after one ``apt-get update``), never a build that stops
halfway for want of a tool (``make headers_install`` needs rsync, which nothing else checks).

The fresh-machine test proves the list is complete on a real minimal Debian; these tests pin
down the logic without touching the machine.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from uring_epoll.kernel import KernelSourceError, source


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    """A pretend machine: root, apt-get present, every tool and header present but those named
    in ``machine["absent"]``; apt-get "installs" by emptying that set. Returns the state,
    including the commands run and the source tarball's path."""
    tarball = tmp_path / "linux-source-6.1.tar.xz"
    tarball.write_bytes(b"")
    state: dict[str, Any] = {"absent": set(), "commands": [], "tarball": tarball}
    real_is_file = Path.is_file

    def which(name: str) -> str | None:
        return None if name in state["absent"] else f"/usr/bin/{name}"

    def is_file(path: Path) -> bool:
        if str(path).startswith("/usr/include/"):
            return str(path) not in state["absent"]
        return real_is_file(path)

    def run(cmd: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        state["commands"].append(list(cmd))
        if cmd[1] == "install":
            state["absent"].clear()
        return subprocess.CompletedProcess(list(cmd), 0, "", "")

    monkeypatch.setattr(source.shutil, "which", which)
    monkeypatch.setattr(Path, "is_file", is_file)
    monkeypatch.setattr(source.subprocess, "run", run)
    monkeypatch.setattr(source.os, "geteuid", lambda: 0)
    monkeypatch.setattr(source, "_apt_updated", False)
    return state


def apt_answers(monkeypatch: pytest.MonkeyPatch, returncode: int, stderr: str) -> None:
    """Every apt-get run exits with ``returncode`` and prints ``stderr``, installing nothing."""
    monkeypatch.setattr(
        source.subprocess,
        "run",
        lambda cmd, **kwargs: subprocess.CompletedProcess(list(cmd), returncode, "", stderr),
    )


def test_nothing_missing_runs_nothing(machine: dict[str, Any]) -> None:
    assert source.missing_build_packages(machine["tarball"]) == []
    assert source.ensure_source(machine["tarball"]) == machine["tarball"]
    assert machine["commands"] == []


def test_each_tool_is_named_by_its_package(machine: dict[str, Any]) -> None:
    machine["absent"].update({"rsync", "xz", "/usr/include/libelf.h"})
    assert source.missing_build_packages(machine["tarball"]) == ["rsync", "xz-utils", "libelf-dev"]


def test_a_missing_source_tarball_asks_for_the_source_package(
    machine: dict[str, Any], tmp_path: Path
) -> None:
    assert source.missing_build_packages(tmp_path / "absent.tar.xz") == [source.SOURCE_PACKAGE]


def test_one_update_and_one_install_for_everything_missing(machine: dict[str, Any]) -> None:
    machine["absent"].update({"rsync", "bc", "flex"})
    source.ensure_source(machine["tarball"])
    apt = "/usr/bin/apt-get"
    assert machine["commands"] == [
        [apt, "update"],
        [apt, "install", "-y", "--no-install-recommends", "bc", "flex", "rsync"],
    ]
    # A second shortfall in the same process does not update the lists again.
    machine["absent"].add("rsync")
    source.ensure_source(machine["tarball"])
    assert machine["commands"][2:] == [[apt, "install", "-y", "--no-install-recommends", "rsync"]]


def test_a_tool_apt_did_not_provide_is_an_error(
    machine: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    machine["absent"].add("rsync")
    apt_answers(monkeypatch, 0, "")
    with pytest.raises(KernelSourceError, match="still missing after apt-get install: rsync"):
        source.ensure_source(machine["tarball"])


def test_a_failing_apt_is_an_error_with_its_output(
    machine: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    machine["absent"].add("bison")
    apt_answers(monkeypatch, 100, "E: no network\n")
    with pytest.raises(KernelSourceError, match=r"(?s)exit 100.*E: no network"):
        source.ensure_source(machine["tarball"])
