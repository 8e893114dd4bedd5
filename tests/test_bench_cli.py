"""``uring-epoll bench --quick`` end to end: the table, --json and --plot (smoke tests; the
figures themselves are benchmarks, never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "uring_epoll.cli", "bench", "--quick", *args],
        capture_output=True, text=True, timeout=600,
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
    assert scenarios == {"drain", "sustained"}
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

    kernel_vpoll = any(s.available for name, s in vpoll.implementation_status().items()
                       if name != "emulation")
    result = bench("--scenario", "sustained", "--source", "vpoll")
    if kernel_vpoll:
        assert result.returncode == 0, result.stderr
        assert "(vpoll)" in result.stdout
    else:
        assert result.returncode == 2
        assert "kernel vpoll" in result.stderr
