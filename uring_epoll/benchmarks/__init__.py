"""``uring-epoll bench``: the ring against ``select.epoll`` in the same run.

Two scenarios, each printing both sides and their ratio:

- ``drain``: the cost of taking ready events, at batch sizes 1..1024. The ring side is filled
  by the userspace producer (``inject``, outside the timed region) and drained with
  ``poll_into`` and ``poll``; the stdlib side polls level-triggered eventfds that stay ready,
  so each of its calls returns a full batch with no refilling.
- ``sustained``: C producer threads write eventfds as fast as they can; a Python consumer
  loop takes the events (edge-triggered, no reads needed: every eventfd write is a new edge).
  Reported: events/s and the consumer thread's CPU time per event.

Figures are medians over repeats with the spread (min..max) beside them; these machines are
noisy. Only ratios taken in the same run mean anything.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from typing import Any

from .. import probe
from .common import Comparison, Progress
from .drain import scenario_drain
from .report import environment, format_table, plot
from .sustained import scenario_sustained


def run(
    scenarios: list[str], *, quick: bool = False, backends: list[str] | None = None,
    progress: Progress | None = None, threads: int = 1, sources: tuple[str, ...] = ("eventfd",),
) -> dict[str, Any]:
    """Run the scenarios; returns a JSON-ready dict with the environment and comparisons."""
    progress = progress or Progress()
    ring_backends = backends or [b for b in probe.available_backends() if b != "epoll"]
    results: list[Comparison] = []
    notes: list[str] = []
    if "drain" in scenarios:
        batches = (1, 16, 256, 1024, 4096) if not quick else (1, 256)
        drain_backend = "kernel" if "kernel" in ring_backends else "thread"
        found, more = scenario_drain(batches, 40 if quick else 400, 2 if quick else 5, progress,
                                     drain_backend)
        results += found
        notes += more
    if "sustained" in scenarios:
        for source in sources:
            results += scenario_sustained(
                ring_backends, nfds=64, threads=threads, seconds=0.3 if quick else 2.0,
                repeats=1 if quick else 3, progress=progress, source=source,
            )
    progress.done()
    return {
        "environment": environment(),
        "results": [asdict(r) for r in results],
        "notes": notes,
    }



def _run_in_kernel(args: Any) -> dict[str, Any]:
    """Run the same bench inside the patched User-Mode Linux; return its JSON report."""
    import tempfile

    from . import uml

    forwarded = ["--quick"] if args.quick else []
    for scenario in args.scenario or []:
        forwarded += ["--scenario", scenario]
    for backend in args.backend or []:
        forwarded += ["--backend", backend]
    forwarded += ["--producers", str(args.producers)]
    for source in args.source or []:
        forwarded += ["--source", source]
    # The guest's root is the host's filesystem, so a host path carries the report back.
    with tempfile.TemporaryDirectory(prefix="uring-epoll-bench-", dir=os.getcwd()) as tmp:
        out = os.path.join(tmp, "report.json")
        argv = [sys.executable, "-m", "uring_epoll.cli", "bench", *forwarded, "--json-file", out]
        code = uml.run(argv, timeout=3600)
        if code != 0:
            raise SystemExit(f"bench inside the kernel failed with exit status {code}")
        with open(out) as f:
            return json.load(f)


def main(args: Any) -> int:
    """Entry point of ``uring-epoll bench``."""
    scenarios = args.scenario or ["drain", "sustained"]
    try:
        if args.kernel:
            report = _run_in_kernel(args)
        else:
            report = run(scenarios, quick=args.quick, backends=args.backend or None,
                         progress=Progress(not args.json), threads=args.producers,
                         sources=tuple(args.source or ["eventfd"]))
    except RuntimeError as exc:
        print(f"uring-epoll bench: {exc}", file=sys.stderr)
        return 2
    if args.json_file:
        with open(args.json_file, "w") as f:
            json.dump(report, f, indent=2)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_table(report))
    if args.plot:
        plot(report, args.plot)
        if not args.json:
            print(f"plot written to {args.plot}")
    return 0


def add_cli(subparsers: Any) -> None:
    """Add the ``bench`` subcommand."""
    p = subparsers.add_parser("bench", help="benchmark the ring against select.epoll")
    p.add_argument("--scenario", action="append", choices=["drain", "sustained"],
                   help="run only this scenario (repeatable; default: all)")
    p.add_argument("--backend", action="append", choices=["kernel", "thread"],
                   help="ring backend(s) for the sustained scenario (default: all available)")
    p.add_argument("--producers", type=int, default=1, help="C producer threads (default 1)")
    p.add_argument("--source", action="append", choices=["eventfd", "vpoll"],
                   help="what the C producers write in the sustained scenario (repeatable; "
                   "vpoll needs a kernel vpoll: EFD_VPOLL or /dev/vpoll)")
    p.add_argument("--quick", action="store_true", help="short run (smoke test)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--json-file", metavar="FILE", help="also write the JSON report to FILE")
    p.add_argument("--plot", metavar="FILE.png", help="draw one panel per scenario (matplotlib)")
    p.add_argument("--kernel", action="store_true",
                   help="run inside the patched User-Mode Linux (kernel backend included)")
    p.set_defaults(func=main)

