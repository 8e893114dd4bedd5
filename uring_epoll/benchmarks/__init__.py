"""``uring-epoll bench``: the ring against ``select.epoll`` in the same run.

Five scenarios, each printing both sides and their ratio:

- ``drain``: the cost of taking N ready events (1..4096): ``poll_into`` and ``poll`` against
  ``select.epoll.poll``, raw ``epoll_wait`` from C, the C ring drain floor and io_uring
  multishot poll draining its completion ring in C.
- ``sustained``: C producer threads write eventfds (or vpoll fds) as fast as they can; a
  Python consumer loop takes the events. Events/s, the consumer thread's CPU per event, events
  per call and how often the consumer slept, for every ring backend.
- ``latency``: one C producer pinging one consumer; p50/p99/p99.9 of write-to-event time, with
  the consumer sleeping or spinning (bounded) on an empty ring.
- ``scale``: 1..65536 registered fds with a fixed number ready: the cost of a poll and of a
  registration, and the memory each epfd locks for its ring.
- ``protocol``: ring protocol 5 against 3 on the emulator with a spinning consumer.

Figures are medians over repeats with the spread (min..max) beside them; these machines are
noisy. Only ratios taken in the same run mean anything.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from typing import Any

from .. import probe
from .common import Comparison, Progress
from .drain import scenario_drain
from .latency import DEFAULT_SAMPLES, scenario_latency
from .protocol import scenario_protocol
from .report import environment, format_markdown, format_table, is_uml, plot
from .scale import scenario_scale
from .sustained import scenario_sustained

SCENARIOS = ("drain", "sustained", "latency", "scale", "protocol")


def run(
    scenarios: list[str],
    *,
    quick: bool = False,
    backends: list[str] | None = None,
    progress: Progress | None = None,
    threads: int = 1,
    sources: tuple[str, ...] = ("eventfd",),
) -> dict[str, Any]:
    """Run the scenarios; returns a JSON-ready dict with the environment and comparisons."""
    progress = progress or Progress()
    ring_backends = backends or [b for b in probe.available_backends() if b != "epoll"]
    # One backend for the scenarios that measure the ring itself: the real one when present.
    main_backend = "kernel" if "kernel" in ring_backends else "thread"
    repeats = 2 if quick else 5
    results: list[Comparison] = []
    memory: list[dict[str, Any]] = []
    notes: list[str] = []
    if "drain" in scenarios:
        batches = (1, 256) if quick else (1, 16, 256, 1024, 4096)
        found, more = scenario_drain(batches, 40 if quick else 400, repeats, progress, main_backend)
        results += found
        notes += more
    if "sustained" in scenarios:
        for source in sources:
            results += scenario_sustained(
                ring_backends,
                nfds=64,
                threads=threads,
                seconds=0.3 if quick else 2.0,
                repeats=1 if quick else 3,
                progress=progress,
                source=source,
            )
    if "latency" in scenarios:
        # Inside User-Mode Linux a ping costs ~30x more; p99.9 of 2000 still leaves 2 beyond.
        samples = 300 if quick else 2000 if is_uml() else DEFAULT_SAMPLES
        results += scenario_latency(
            ring_backends, samples=samples, repeats=1 if quick else 3, progress=progress
        )
    if "scale" in scenarios:
        sizes = (1, 1024) if quick else (1, 64, 1024, 16384, 65536)
        found, rows, more = scenario_scale(
            main_backend,
            sizes,
            ready=16,
            calls=40 if quick else 400,
            repeats=repeats,
            progress=progress,
        )
        results += found
        memory += rows
        notes += more
    if "protocol" in scenarios:
        # The emulator only: protocol 3 never existed in the kernel port.
        results += scenario_protocol(
            nfds=64,
            threads=threads,
            seconds=0.3 if quick else 2.0,
            repeats=1 if quick else 3,
            progress=progress,
        )
    progress.done()
    return {
        "environment": environment(),
        "results": [asdict(r) for r in results],
        "memory": memory,
        "notes": notes,
    }


def _run_in_kernel(args: Any) -> dict[str, Any]:
    """Run the same bench inside the patched kernel (User-Mode Linux, or with ``--vm`` the
    x86_64 VM); return its JSON report, labelled with the vehicle."""
    import io

    from .. import kernel
    from ..kernel import vm

    forwarded = ["--quick"] if args.quick else []
    for scenario in args.scenario or []:
        forwarded += ["--scenario", scenario]
    for backend in args.backend or []:
        forwarded += ["--backend", backend]
    forwarded += ["--producers", str(args.producers)]
    for source in args.source or []:
        forwarded += ["--source", source]
    # The report comes back on stdout (the VM's root is read-only); the guest's stderr shows
    # its errors.
    argv = [sys.executable, "-m", "uring_epoll.cli", "bench", *forwarded, "--json"]
    out = io.BytesIO()
    if args.vm:
        accel, _ = vm.accelerator()
        code = vm.run(argv, timeout=3600, stdout=out, cpus=args.cpus)
    else:
        code = kernel.run(argv, timeout=3600, stdout=out)
    if code != 0:
        raise SystemExit(f"bench inside the kernel failed with exit status {code}")
    try:
        report: dict[str, Any] = json.loads(out.getvalue())
    except ValueError as exc:
        raise RuntimeError(f"the bench inside the kernel printed no report: {exc}") from None
    if args.vm:
        report["environment"]["vm"] = {"accel": accel, "cpus": args.cpus}
    return report


def _load(path: str) -> dict[str, Any]:
    """A report saved with --json-file, checked enough to render."""
    try:
        with open(path) as f:
            report = json.load(f)
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"cannot load {path}: {exc}") from exc
    if not isinstance(report, dict) or not {"environment", "results"} <= set(report):
        raise RuntimeError(f"{path} is not a uring-epoll bench report")
    return report


def main(args: Any) -> int:
    """Entry point of ``uring-epoll bench``."""
    scenarios = args.scenario or list(SCENARIOS)
    if args.producers < 1:
        print("uring-epoll bench: --producers must be at least 1", file=sys.stderr)
        return 2
    try:
        if args.load:
            report = _load(args.load)
        elif args.vm and not args.kernel:
            print("uring-epoll bench: --vm goes with --kernel", file=sys.stderr)
            return 2
        elif args.kernel:
            report = _run_in_kernel(args)
        else:
            report = run(
                scenarios,
                quick=args.quick,
                backends=args.backend or None,
                progress=Progress(not args.json),
                threads=args.producers,
                sources=tuple(args.source or ["eventfd"]),
            )
    except RuntimeError as exc:
        print(f"uring-epoll bench: {exc}", file=sys.stderr)
        return 2
    if args.json_file:
        with open(args.json_file, "w") as f:
            json.dump(report, f, indent=2)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif args.markdown:
        print(format_markdown(report))
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
    p.add_argument(
        "--scenario",
        action="append",
        choices=SCENARIOS,
        help="run only this scenario (repeatable; default: all)",
    )
    p.add_argument(
        "--backend",
        action="append",
        choices=["kernel", "thread", "uring"],
        help="backend(s) for sustained and latency, beside select.epoll (default: every "
        "available one but epoll); drain and scale use kernel when listed, else thread",
    )
    p.add_argument("--producers", type=int, default=1, help="C producer threads (default 1)")
    p.add_argument(
        "--source",
        action="append",
        choices=["eventfd", "vpoll"],
        help="what the C producers write in the sustained scenario (repeatable; "
        "vpoll needs a kernel vpoll: EFD_VPOLL or /dev/vpoll)",
    )
    p.add_argument("--quick", action="store_true", help="short run (smoke test)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--json-file", metavar="FILE", help="also write the JSON report to FILE")
    p.add_argument(
        "--markdown",
        action="store_true",
        help="print Markdown tables (with spreads) instead of the terminal table",
    )
    p.add_argument(
        "--load", metavar="FILE", help="render a report saved with --json-file instead of running"
    )
    p.add_argument("--plot", metavar="FILE.png", help="draw one panel per scenario (matplotlib)")
    p.add_argument(
        "--kernel",
        action="store_true",
        help="run inside the patched User-Mode Linux (kernel backend included)",
    )
    p.add_argument(
        "--vm",
        action="store_true",
        help="with --kernel: inside the x86_64 VM (2 vCPUs, KVM or TCG) instead of UML",
    )
    p.add_argument("--cpus", type=int, default=2, metavar="N", help="with --kernel --vm: vCPUs (2)")
    p.set_defaults(func=main)
