"""``uring-epoll bench --quick`` end to end: the table, --json and --plot (smoke tests; the
figures themselves are benchmarks, never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from uring_epoll.benchmarks import SCENARIOS


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "uring_epoll.cli", "bench", "--quick", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_table() -> None:
    result = bench("--scenario", "drain")
    assert result.returncode == 0, result.stderr
    assert "poll_into vs select.epoll.poll, batch 1" in result.stdout
    assert "ns/event" in result.stdout


def test_json_report(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    result = bench("--json", "--json-file", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report == json.loads(out.read_text())
    env = report["environment"]
    assert {"kernel", "cpus", "python", "numpy", "uring_epoll", "backends"} <= set(env)
    scenarios = {r["scenario"] for r in report["results"]}
    assert scenarios == set(SCENARIOS)
    # Every scenario compares the ring with a baseline from the same run.
    labels = [r["label"] for r in report["results"]]
    assert any("vs select.epoll.poll" in label for label in labels)
    assert any(label.endswith("p99.9") for label in labels)
    assert any("consumer sleeps per 1000 events" in label for label in labels)
    assert any(label.startswith("ring only, 5 vs 3") for label in labels)
    assert any(label.startswith("end to end, 5 vs 3") for label in labels)
    assert [row["registered"] for row in report["memory"]] == [1, 1024]
    for row in report["memory"]:
        assert row["ring_bytes"] >= 4096 * 2 and row["ring_bytes"] % 4096 == 0
    for r in report["results"]:
        for side in ("ring", "baseline"):
            m = r[side]
            # A per-call figure net of the clock's own cost can round to 0 (User-Mode Linux).
            assert 0 <= m["low"] <= m["median"] <= m["high"]
        assert r["ratio"] >= 0


def test_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "bench.png"
    result = bench("--scenario", "drain", "--plot", str(png))
    assert result.returncode == 0, result.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_vpoll_source() -> None:
    """Kernel vpoll fds are driven from the C threads; the emulation is refused, with why."""
    from uring_epoll import vpoll

    kernel_vpoll = any(
        s.available for name, s in vpoll.implementation_status().items() if name != "emulation"
    )
    result = bench("--scenario", "sustained", "--source", "vpoll")
    if kernel_vpoll:
        assert result.returncode == 0, result.stderr
        assert "(vpoll)" in result.stdout
    else:
        assert result.returncode == 2
        assert "kernel vpoll" in result.stderr


def test_markdown_from_saved_report(tmp_path: Path) -> None:
    """--load renders a saved report without running anything; --markdown gives one table per
    scenario with the spread beside each median."""
    out = tmp_path / "report.json"
    assert bench("--scenario", "drain", "--json-file", str(out)).returncode == 0
    report = json.loads(out.read_text())
    shown = subprocess.run(
        [sys.executable, "-m", "uring_epoll.cli", "bench", "--load", str(out), "--markdown"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert "**drain**" in shown.stdout
    assert "| what | first | second | unit | ratio |" in shown.stdout
    rows = [line for line in shown.stdout.splitlines() if line.startswith("| poll_into")]
    assert len(rows) == sum(r["label"].startswith("poll_into") for r in report["results"])
    assert not shown.stderr  # no progress output: nothing ran


@pytest.mark.parametrize(
    "args, message",
    [
        (("--load", "/nonexistent/report.json"), "cannot load"),
        (("--producers", "0"), "--producers must be at least 1"),
    ],
)
def test_bad_arguments(args: tuple[str, ...], message: str) -> None:
    result = bench(*args)
    assert result.returncode == 2
    assert message in result.stderr


def test_load_rejects_other_json(tmp_path: Path) -> None:
    other = tmp_path / "other.json"
    other.write_text("[1, 2, 3]")
    result = bench("--load", str(other))
    assert result.returncode == 2
    assert "not a uring-epoll bench report" in result.stderr


@pytest.mark.uml
def test_kernel_bench(tmp_path: Path) -> None:
    """``bench --kernel``: the same scenarios inside the patched User-Mode Linux, the kernel
    backend beside select.epoll in the same run, the figures labelled as User-Mode Linux's."""
    import uml_support

    uml_support.kernel()  # build or reuse it; in CI a kernel that cannot be had fails here
    out = tmp_path / "uml.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "uring_epoll.cli",
            "bench",
            "--kernel",
            "--quick",
            "--json-file",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("User-Mode Linux: system calls cost") == 1  # no guest table echo
    report = json.loads(out.read_text())
    env = report["environment"]
    assert env["user_mode_linux"] is True
    assert "kernel" in env["backends"]
    assert {r["scenario"] for r in report["results"]} == set(SCENARIOS)
    labels = [r["label"] for r in report["results"]]
    assert "kernel (eventfd): consumer CPU/event" in labels
    assert "kernel sleep p99.9" in labels
    assert {r["ring"]["name"] for r in report["results"] if r["scenario"] == "drain"} >= {
        "kernel poll_into",
        "kernel poll",
    }
    assert {row["backend"] for row in report["memory"]} == {"kernel"}
