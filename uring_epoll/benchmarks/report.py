"""Reporting: the environment the figures were taken on, the terminal table and the plot."""

from __future__ import annotations

import os
import platform
import time
from typing import Any

import numpy as np

from .. import __version__, probe


def environment() -> dict[str, Any]:
    """The machine, kernel and versions the figures were taken on."""
    uname = os.uname()
    return {
        "machine": uname.machine,
        "cpus": os.cpu_count(),
        "kernel": f"{uname.sysname} {uname.release}",
        "user_mode_linux": "um" in uname.machine or is_uml(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "uring_epoll": __version__,
        "backends": probe.available_backends(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def vehicle_note(env: dict[str, Any]) -> str:
    """Where the figures were taken, when that is not a plain host, and what that distorts."""
    if env.get("user_mode_linux"):
        return "User-Mode Linux: system calls cost ~60x more here; compare ratios only."
    vm = env.get("vm")
    if vm:
        return f"x86_64 VM ({vm['accel'].upper()}, {vm['cpus']} vCPUs, lockdep+KASAN kernel): " + (
            "emulated CPUs, a system call costs ~2x the host's in Python loop iterations; "
            "compare ratios only."
            if vm["accel"] == "tcg"
            else "compare ratios only."
        )
    return ""


def is_uml() -> bool:
    """True inside User-Mode Linux, where only ratios taken in the same run mean anything."""
    try:
        with open("/proc/cpuinfo") as f:
            return "User Mode Linux" in f.read()
    except OSError:
        return False


def format_table(report: dict[str, Any]) -> str:
    """The results as an aligned text table, ring beside baseline with the ratio."""
    env = report["environment"]
    lines = [
        f"uring-epoll {env['uring_epoll']} on {env['kernel']} ({env['machine']}, "
        f"{env['cpus']} CPUs), Python {env['python']}",
    ]
    if vehicle_note(env):
        lines.append(vehicle_note(env))
    what = max([44] + [len(r["label"]) for r in report["results"]])
    header = f"{'scenario':<10} {'what':<{what}} {'ring':>10} {'baseline':>10} {'unit':<13} ratio"
    lines += [header, "-" * len(header)]
    for r in report["results"]:
        ring, base = r["ring"], r["baseline"]
        lines.append(
            f"{r['scenario']:<10} {r['label']:<{what}} {_fmt(ring['median']):>10} "
            f"{_fmt(base['median']):>10} {ring['unit']:<13} {_ratio_text(r['ratio'])}"
        )
    lines.append(
        "Medians over repeats; ratio = the second's cost / the first's (rates: first / second),"
        " so > 1 means the first is faster. All figures from this one run."
    )
    lines += _memory_table(report.get("memory") or [])
    lines += [f"note: {note}" for note in report.get("notes", [])]
    return "\n".join(lines)


def _memory_table(rows: list[dict[str, Any]]) -> list[str]:
    """The "memory per epfd" section of the scale scenario; nothing without rows."""
    if not rows:
        return []
    header = (
        f"{'backend':<8} {'registered':>10} {'ring bytes':>12} {'bytes/fd':>10} "
        f"{'epitem bytes':>13}"
    )
    lines = [
        "",
        "memory per epfd",
        header,
        "-" * len(header),
    ]
    for row in rows:
        epitem = row.get("epitem_bytes")
        lines.append(
            f"{row['backend']:<8} {row['registered']:>10} {row['ring_bytes']:>12,} "
            f"{row['bytes_per_fd']:>10.1f} "
            f"{'n/a' if epitem is None else format(round(epitem), ','):>13}"
        )
    lines += [
        "Ring bytes: header_length + index_length, charged to RLIMIT_MEMLOCK per epfd by the",
        "patched kernel unless CAP_IPC_LOCK (the thread backend maps the same layout, not locked).",
        "The ring comes on top of the kernel's epitems (a struct epitem and an eppoll_entry per",
        "registration, in every epoll), not instead of them. Epitem bytes: their slab growth;",
        "n/a where /proc/slabinfo cannot show it (see the notes).",
    ]
    return lines


def format_markdown(report: dict[str, Any]) -> str:
    """The results as Markdown: one table per scenario, each figure with its spread, for a
    README or an issue. Re-render a saved report with ``uring-epoll bench --load FILE``."""
    env = report["environment"]
    lines = [
        f"uring-epoll {env['uring_epoll']}, {env['kernel']} ({env['machine']}, {env['cpus']} "
        f"CPUs), Python {env['python']}, numpy {env['numpy']}, {env['time']}."
    ]
    if vehicle_note(env):
        lines.append(vehicle_note(env))
    for scenario in dict.fromkeys(r["scenario"] for r in report["results"]):
        lines += [
            "",
            f"**{scenario}**",
            "",
            "| what | first | second | unit | ratio |",
            "|---|---|---|---|---|",
        ]
        for r in report["results"]:
            if r["scenario"] != scenario:
                continue
            lines.append(
                f"| {r['label']} | {_spread(r['ring'])} | {_spread(r['baseline'])} "
                f"| {r['ring']['unit']} | {_ratio_text(r['ratio'])} |"
            )
    memory = report.get("memory") or []
    if memory:
        lines += [
            "",
            "**memory per epfd**",
            "",
            "| backend | registered | ring bytes (locked) | bytes/fd | epitem bytes |",
            "|---|---|---|---|---|",
        ]
        for row in memory:
            epitem = row.get("epitem_bytes")
            lines.append(
                f"| {row['backend']} | {row['registered']} | {row['ring_bytes']:,} "
                f"| {row['bytes_per_fd']:.1f} | {'n/a' if epitem is None else f'{epitem:,.0f}'} |"
            )
    lines += ["", "Medians over repeats, min..max in brackets; ratio > 1: the first is better."]
    lines += [f"- note: {note}" for note in report.get("notes", [])]
    return "\n".join(lines)


def _spread(m: dict[str, Any]) -> str:
    if m["low"] == m["high"]:
        return _fmt(m["median"])
    return f"{_fmt(m['median'])} ({_fmt(m['low'])}..{_fmt(m['high'])})"


def _fmt(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.1f}"


def plot(report: dict[str, Any], path: str) -> None:
    """One panel per scenario. Drain: ns per event against batch size, one line per method.
    A scenario whose figures share one unit: both sides as bars on a log axis. Mixed units:
    the ratios, with 1 (no difference) marked. Then the memory per epfd, when measured."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise SystemExit(
            "--plot needs matplotlib: python3 -m pip install 'uring-epoll[plot]'"
        ) from exc
    scenarios = list(dict.fromkeys(r["scenario"] for r in report["results"]))
    memory = report.get("memory") or []
    panels = len(scenarios) + (1 if memory else 0)
    fig, axes = plt.subplots(panels, 1, figsize=(13, 4.6 * panels), squeeze=False)
    if memory:
        _plot_memory(axes[-1, 0], memory)
    for ax, scenario in zip(axes[: len(scenarios), 0], scenarios, strict=True):
        rows = [r for r in report["results"] if r["scenario"] == scenario]
        if scenario == "drain":
            _plot_drain(ax, rows)
        elif len({r["ring"]["unit"] for r in rows}) == 1:
            _plot_sides(ax, rows)
        else:
            _plot_ratios(ax, rows)
        ax.set_title(scenario)
    env = report["environment"]
    title = f"uring-epoll {env['uring_epoll']}: {env['kernel']}, {env['cpus']} CPUs"
    if env.get("user_mode_linux"):
        title += " (User-Mode Linux: compare ratios only)"
    elif env.get("vm"):
        title += f" (x86_64 VM, {env['vm']['accel'].upper()}: compare ratios only)"
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    fig.savefig(path, dpi=110)


def _plot_drain(ax: Any, rows: list[dict[str, Any]]) -> None:
    """Every measured method's ns/event against the batch size, log-log."""
    lines: dict[str, dict[int, dict[str, Any]]] = {}
    for r in rows:
        batch = int(r["label"].rsplit("batch ", 1)[1])
        for side in ("ring", "baseline"):
            lines.setdefault(r[side]["name"], {})[batch] = r[side]
    for name, points in lines.items():
        batches = sorted(points)
        medians = np.array([points[b]["median"] for b in batches])
        errors = [
            medians - [points[b]["low"] for b in batches],
            np.array([points[b]["high"] for b in batches]) - medians,
        ]
        ax.errorbar(batches, medians, yerr=errors, marker="o", capsize=3, label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("ready events per call")
    ax.set_ylabel(rows[0]["ring"]["unit"])
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)


def _plot_sides(ax: Any, rows: list[dict[str, Any]]) -> None:
    """Both sides of every comparison as bars with their spread, log scale."""
    ys = np.arange(len(rows))
    for offset, side, label in (
        (-0.2, "ring", "first (ring)"),
        (0.2, "baseline", "second (baseline)"),
    ):
        medians = [r[side]["median"] for r in rows]
        spread = [
            [r[side]["median"] - r[side]["low"] for r in rows],
            [r[side]["high"] - r[side]["median"] for r in rows],
        ]
        ax.barh(ys + offset, medians, 0.4, xerr=spread, label=label)
    ax.set_yticks(ys, [f"{r['label']}  ({_ratio_text(r['ratio'])})" for r in rows], fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel(rows[0]["ring"]["unit"])
    ax.invert_yaxis()
    ax.legend(fontsize=7)


def _plot_ratios(ax: Any, rows: list[dict[str, Any]]) -> None:
    """Mixed units: one bar per comparison, its ratio (> 1: the first side is better)."""
    ys = np.arange(len(rows))
    ratios = [max(r["ratio"], 1e-3) for r in rows]
    colors = ["tab:green" if value >= 1 else "tab:red" for value in ratios]
    ax.barh(ys, ratios, 0.6, color=colors)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(ys, [r["label"] for r in rows], fontsize=7)
    for y, r in zip(ys, rows, strict=True):
        ax.annotate(
            f" {_ratio_text(r['ratio'])}", (max(r["ratio"], 1e-3), y), va="center", fontsize=7
        )
    ax.set_xscale("log")
    ax.set_xlabel(
        "ratio, first / second for rates and counts per call, second / first for "
        "costs (> 1: the first is better)"
    )
    ax.invert_yaxis()


def _ratio_text(value: float) -> str:
    if value <= 0:
        return "n/a"  # one side netted to 0: below the clock's resolution
    return f"{value:.2f}x" if value >= 0.1 else f"{value:.3f}x"


def _plot_memory(ax: Any, rows: list[dict[str, Any]]) -> None:
    """Ring bytes (and epitem slab bytes where known) against registered fds, log-log."""
    for backend in dict.fromkeys(row["backend"] for row in rows):
        mine = sorted((r for r in rows if r["backend"] == backend), key=lambda r: r["registered"])
        ax.plot(
            [r["registered"] for r in mine],
            [r["ring_bytes"] for r in mine],
            "o-",
            label=f"ring, header + index ({backend})",
        )
        known = [r for r in mine if r.get("epitem_bytes")]
        if known:
            ax.plot(
                [r["registered"] for r in known],
                [r["epitem_bytes"] for r in known],
                "s--",
                label=f"epitems, kernel slab ({backend})",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("registered fds")
    ax.set_ylabel("bytes per epfd")
    ax.set_title("memory per epfd (the ring comes on top of the epitems)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
