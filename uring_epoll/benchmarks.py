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
import platform
import resource
import select
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from . import __version__, abi, probe
from ._epoll import epoll
from ._native_lib import ffi, lib, os_error


@dataclass
class Measurement:
    """One figure: median and spread over repeats."""

    name: str
    unit: str
    median: float
    low: float
    high: float
    samples: list[float] = field(default_factory=list)


@dataclass
class Comparison:
    """The ring against its baseline, measured in the same run."""

    scenario: str
    label: str
    ring: Measurement
    baseline: Measurement
    #: baseline / ring for costs (ns), ring / baseline for rates: > 1 means the ring wins
    ratio: float


class Progress:
    """A one-line progress report on stderr, rate-limited, for anything over a second."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and sys.stderr is not None
        self.last = 0.0

    def __call__(self, message: str, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if force or now - self.last > 0.5:
            self.last = now
            sys.stderr.write(f"\r\x1b[K  {message}")
            sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def _summary(name: str, unit: str, samples: list[float]) -> Measurement:
    return Measurement(name, unit, statistics.median(samples), min(samples), max(samples), samples)


@contextmanager
def eventfds(count: int) -> Iterator[list[int]]:
    """*count* non-blocking eventfds, closed afterwards."""
    _raise_nofile(count + 64)
    fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(count)]
    try:
        yield fds
    finally:
        for fd in fds:
            os.close(fd)


def _raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(need, soft)), hard))


def _clock_overhead_ns() -> float:
    clock = time.perf_counter_ns
    samples = []
    for _ in range(2000):
        t0 = clock()
        t1 = clock()
        samples.append(t1 - t0)
    return float(statistics.median(samples))


# ---- drain scenario --------------------------------------------------------------------------


def refill(ep: epoll, fds: list[int]) -> None:
    """Make *fds* pending in the ring (untimed): the emulator's producer is called directly;
    on the kernel backend each eventfd is written, and the kernel appends it."""
    backend = ep._backend
    if backend.name == "thread":
        for fd in fds:
            backend.inject(fd, select.EPOLLIN)
    else:
        for fd in fds:
            os.eventfd_write(fd, 1)


def _ring_drain_ns(
    ep: epoll, fds: list[int], batch: int, calls: int, use_tuples: bool, overhead: float
) -> list[float]:
    """ns per event for draining *batch* ready entries, one timed call per refill."""
    buffer = np.zeros(batch, abi.EVENT_DTYPE)
    clock = time.perf_counter_ns
    samples = []
    ready = fds[:batch]
    for _ in range(calls):
        refill(ep, ready)
        if use_tuples:
            t0 = clock()
            got = len(ep.poll(0, batch))
            t1 = clock()
        else:
            t0 = clock()
            got = ep.poll_into(buffer, 0)
            t1 = clock()
        if got != batch:
            raise RuntimeError(f"ring drain returned {got} events, expected {batch}")
        samples.append(max(t1 - t0 - overhead, 0.0) / batch)
    return samples


@contextmanager
def _level_ready(fds: list[int]) -> Iterator[select.epoll]:
    """A select.epoll with *fds* registered level-triggered and kept ready."""
    ep = select.epoll()
    try:
        for fd in fds:
            os.eventfd_write(fd, 1)
            ep.register(fd, select.EPOLLIN)  # level-triggered: ready on every call
        yield ep
    finally:
        ep.close()
        for fd in fds:
            with suppress(BlockingIOError):
                os.eventfd_read(fd)


def _stdlib_poll_ns(fds: list[int], batch: int, calls: int, overhead: float) -> list[float]:
    with _level_ready(fds[:batch]) as ep:
        clock = time.perf_counter_ns
        samples = []
        poll = ep.poll
        for _ in range(calls):
            t0 = clock()
            got = len(poll(0, batch))
            t1 = clock()
            if got != batch:
                raise RuntimeError(f"select.epoll returned {got} events, expected {batch}")
            samples.append(max(t1 - t0 - overhead, 0.0) / batch)
        return samples


def _c_floor(value: float, what: str) -> float:
    if value < 0:
        raise os_error(int(value), what)
    return value


def _c_epoll_wait_ns(fds: list[int], batch: int, calls: int) -> float:
    with _level_ready(fds[:batch]) as ep:
        return _c_floor(lib.ue_bench_epoll_wait(ep.fileno(), batch, calls), "epoll_wait floor")


def _iouring_ns(fds: list[int], batch: int, calls: int) -> float | str:
    """io_uring multishot poll, completion ring drained in C; a reason string if unavailable."""
    array = np.array(fds[:batch], dtype=np.int32)
    value = lib.ue_bench_iouring_multishot(
        ffi.cast("int *", ffi.from_buffer(array)), batch, max(5, calls // 4)
    )
    if value < 0:
        code = int(-value)
        return f"io_uring unavailable: {os.strerror(code)}"
    return value


def _ratio(cost_baseline: float, cost_ring: float) -> float:
    return cost_baseline / cost_ring if cost_ring else float("inf")


def scenario_drain(
    batches: tuple[int, ...], calls: int, repeats: int, progress: Progress,
    backend: str = "thread",
) -> tuple[list[Comparison], list[str]]:
    """Drain cost per event at each batch size: the ring (poll_into, poll) against
    select.epoll.poll, raw epoll_wait from C, the C drain floor and io_uring's CQ ring."""
    results = []
    notes: list[str] = []
    overhead = _clock_overhead_ns()
    with eventfds(max(batches)) as fds:
        ep = epoll(backend=backend, max_items=max(max(batches), 1))
        try:
            for fd in fds:
                ep.register(fd, select.EPOLLIN | select.EPOLLET)
            for batch in batches:
                n_calls = max(20, calls // max(1, batch // 16))
                rows: dict[str, list[float]] = {
                    k: [] for k in ("into", "tuples", "stdlib", "c_epoll", "floor", "uring")
                }
                for rep in range(repeats):
                    progress(f"drain: batch {batch}, repeat {rep + 1}/{repeats}")
                    med = statistics.median
                    rows["into"].append(med(_ring_drain_ns(ep, fds, batch, n_calls, False,
                                                           overhead)))
                    rows["tuples"].append(med(_ring_drain_ns(ep, fds, batch, n_calls, True,
                                                             overhead)))
                    rows["stdlib"].append(med(_stdlib_poll_ns(fds, batch, n_calls, overhead)))
                    rows["c_epoll"].append(_c_epoll_wait_ns(fds, batch, n_calls))
                    rows["floor"].append(_c_floor(lib.ue_bench_drain_floor(batch, n_calls, 1),
                                                  "drain floor"))
                    uring = _iouring_ns(fds, batch, n_calls)
                    if isinstance(uring, str):
                        if uring not in notes:
                            notes.append(uring)
                    else:
                        rows["uring"].append(uring)
                unit = "ns/event"
                into = _summary(f"{backend} poll_into", unit, rows["into"])
                tuples = _summary(f"{backend} poll", unit, rows["tuples"])
                stdlib = _summary("select.epoll.poll", unit, rows["stdlib"])
                c_epoll = _summary("epoll_wait from C", unit, rows["c_epoll"])
                floor = _summary("C ring drain (atomic exchange)", unit, rows["floor"])
                pairs = [
                    ("poll_into vs select.epoll.poll", into, stdlib),
                    ("poll vs select.epoll.poll", tuples, stdlib),
                    ("poll_into vs epoll_wait in C", into, c_epoll),
                    ("poll_into vs C drain floor", into, floor),
                ]
                if rows["uring"]:
                    uring_m = _summary("io_uring multishot CQ drain (C)", unit, rows["uring"])
                    pairs.append(("C drain floor vs io_uring CQ", floor, uring_m))
                for label, ring, base in pairs:
                    results.append(Comparison("drain", f"{label}, batch {batch}", ring, base,
                                              _ratio(base.median, ring.median)))
        finally:
            ep.close()
    return results, notes


# ---- sustained scenario ----
# Edge-triggered eventfds coalesce: several writes before a drain make one event, on either
# side. The rate reported is events taken by the consumer; the CPU figure is the consumer
# thread's own CPU time (time.thread_time) per event, which is what the ring is meant to cut.
# The default spin is 0: on two cores a spinning consumer starves the emulator's poller.
# ---------------------------------------------------------------------------------------------


def _consume_for(
    poll_batch: Callable[[], int], seconds: float, progress: Progress, label: str
) -> tuple[int, float, float]:
    """Run the consumer loop for *seconds*; return (events, wall s, consumer CPU s)."""
    events = 0
    start = time.perf_counter()
    cpu0 = time.thread_time()
    deadline = start + seconds
    next_check = 0
    while True:
        events += poll_batch()
        next_check += 1
        if next_check >= 64:
            next_check = 0
            now = time.perf_counter()
            if now >= deadline:
                break
            progress(f"sustained {label}: {events / (now - start) / 1e6:.2f} M events/s")
    cpu = time.thread_time() - cpu0
    wall = time.perf_counter() - start
    return events, wall, cpu


@contextmanager
def c_producers(fds: list[int], threads: int, value: int = 1, mode: int = 0) -> Iterator[Any]:
    """C threads driving the fds round-robin until the block ends: mode 0 writes *value* as a
    u64 (eventfd, EFD_VPOLL command), mode 1 is ioctl(fd, value >> 32, value & 0xffffffff)."""
    array = np.array(fds, dtype=np.int32)
    err = ffi.new("int *")
    group = lib.ue_producers_start(
        ffi.cast("int *", ffi.from_buffer(array)), len(fds), threads, 0, value, mode, err
    )
    if group == ffi.NULL:
        raise os_error(err[0], "starting producer threads")
    written = ffi.new("uint64_t *")
    try:
        yield written
    finally:
        lib.ue_producers_stop(group)
        ret = lib.ue_producers_join(group, written)
        _ = array  # the threads read it until joined
        if ret < 0:
            raise os_error(ret, "producer thread")


@contextmanager
def event_sources(kind: str, count: int) -> Iterator[tuple[list[int], int, int]]:
    """*count* fds for C producer threads: (fds, value, mode) for :func:`c_producers`.

    ``eventfd`` writes 1; ``vpoll`` uses the kernel vpoll forms, whose every ADD wakes
    watchers with the whole set (EFD_VPOLL: an 8-byte ADD command; /dev/vpoll: the ADD
    ioctl). The emulation cannot be driven from C threads (its state lives in a socketpair
    managed under a Python lock), so it is refused with the reason.
    """
    if kind == "eventfd":
        with eventfds(count) as fds:
            yield fds, 1, 0
        return
    from . import vpoll

    sources = [vpoll.VPoll(0) for _ in range(count)]
    try:
        impl = sources[0].impl
        if impl == "eventfd":
            yield [s.fileno() for s in sources], vpoll.EFD_VPOLL_ADDEVENTS | select.EPOLLIN, 0
        elif impl == "device":
            yield ([s.fileno() for s in sources],
                   (vpoll.VPOLL_IO_ADDEVENTS << 32) | select.EPOLLIN, 1)
        else:
            raise RuntimeError(
                "vpoll sources from C threads need a kernel vpoll (EFD_VPOLL or /dev/vpoll); "
                "here only the emulation exists: use --source eventfd, or --kernel")
    finally:
        for source in sources:
            source.close()


def _sustained_one(
    backend: str, nfds: int, threads: int, seconds: float, progress: Progress, spin_us: float,
    source: str = "eventfd",
) -> tuple[float, float]:
    """(events/s, consumer CPU ns/event) for one backend; backend 'stdlib' is select.epoll."""
    with event_sources(source, nfds) as (fds, value, mode):
        buffer = np.zeros(1024, abi.EVENT_DTYPE)
        if backend == "stdlib":
            ep: Any = select.epoll()
            for fd in fds:
                ep.register(fd, select.EPOLLIN | select.EPOLLET)
            poll = ep.poll

            def poll_batch() -> int:
                return len(poll(0.05, 1024))
        else:
            ep = epoll(backend=backend, max_items=max(nfds, 1), spin_us=spin_us)
            for fd in fds:
                ep.register(fd, select.EPOLLIN | select.EPOLLET)
            poll_into = ep.poll_into

            def poll_batch() -> int:
                return poll_into(buffer, 0.05)

        try:
            with c_producers(fds, threads, value, mode):
                events, wall, cpu = _consume_for(poll_batch, seconds, progress, backend)
        finally:
            ep.close()
    if not events:
        raise RuntimeError(f"no events consumed on {backend}")
    return events / wall, cpu * 1e9 / events


def scenario_sustained(
    backends: list[str], nfds: int, threads: int, seconds: float, repeats: int,
    progress: Progress, spin_us: float = 0.0, source: str = "eventfd",
) -> list[Comparison]:
    """C producers feeding a Python consumer: events/s and consumer CPU/event per backend."""
    results = []
    base_rate: list[float] = []
    base_cpu: list[float] = []
    rates: dict[str, list[float]] = {b: [] for b in backends}
    cpus: dict[str, list[float]] = {b: [] for b in backends}
    for rep in range(repeats):
        # Interleave the sides so drift on a noisy machine hits both alike.
        progress(f"sustained: select.epoll, repeat {rep + 1}/{repeats}", force=True)
        rate, cpu = _sustained_one("stdlib", nfds, threads, seconds, progress, 0, source)
        base_rate.append(rate)
        base_cpu.append(cpu)
        for b in backends:
            progress(f"sustained: {b}, repeat {rep + 1}/{repeats}", force=True)
            rate, cpu = _sustained_one(b, nfds, threads, seconds, progress, spin_us, source)
            rates[b].append(rate)
            cpus[b].append(cpu)
    base_r = _summary("select.epoll.poll", "events/s", base_rate)
    base_c = _summary("select.epoll.poll", "CPU ns/event", base_cpu)
    for b in backends:
        ring_r = _summary(f"{b} poll_into", "events/s", rates[b])
        ring_c = _summary(f"{b} poll_into", "CPU ns/event", cpus[b])
        results.append(Comparison("sustained", f"{b} ({source}): events/s", ring_r, base_r,
                                  ring_r.median / base_r.median))
        results.append(Comparison("sustained", f"{b} ({source}): consumer CPU/event", ring_c,
                                  base_c, base_c.median / ring_c.median if ring_c.median else 0.0))
    return results


# ---- running and reporting -------------------------------------------------------------------


def environment() -> dict[str, Any]:
    """The machine, kernel and versions the figures were taken on."""
    uname = os.uname()
    return {
        "machine": uname.machine,
        "cpus": os.cpu_count(),
        "kernel": f"{uname.sysname} {uname.release}",
        "user_mode_linux": "um" in uname.machine or _is_uml(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "uring_epoll": __version__,
        "backends": probe.available_backends(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _is_uml() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return "User Mode Linux" in f.read()
    except OSError:
        return False


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


def format_table(report: dict[str, Any]) -> str:
    """The results as an aligned text table, ring beside baseline with the ratio."""
    env = report["environment"]
    lines = [
        f"uring-epoll {env['uring_epoll']} on {env['kernel']} ({env['machine']}, "
        f"{env['cpus']} CPUs), Python {env['python']}",
    ]
    if env.get("user_mode_linux"):
        lines.append(
            "User-Mode Linux figures: system calls cost ~60x more here; only ratios inside "
            "this run mean anything."
        )
    header = f"{'scenario':<10} {'what':<44} {'ring':>10} {'baseline':>10} {'unit':<13} ratio"
    lines += [header, "-" * len(header)]
    for r in report["results"]:
        ring, base = r["ring"], r["baseline"]
        lines.append(
            f"{r['scenario']:<10} {r['label']:<44} {_fmt(ring['median']):>10} "
            f"{_fmt(base['median']):>10} {ring['unit']:<13} {r['ratio']:.2f}x"
        )
    lines.append(
        "Medians over repeats; ratio = the second's cost / the first's (rates: first / second),"
        " so > 1 means the first is faster. All figures from this one run."
    )
    lines += [f"note: {note}" for note in report.get("notes", [])]
    return "\n".join(lines)


def _fmt(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.1f}"


def plot(report: dict[str, Any], path: str) -> None:
    """One panel per scenario: ring against baseline per comparison, log scale."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise SystemExit(
            "--plot needs matplotlib: python3 -m pip install 'uring-epoll[plot]'"
        ) from exc
    scenarios = list(dict.fromkeys(r["scenario"] for r in report["results"]))
    fig, axes = plt.subplots(len(scenarios), 1, figsize=(11, 4.2 * len(scenarios)),
                             squeeze=False)
    for ax, scenario in zip(axes[:, 0], scenarios, strict=True):
        rows = [r for r in report["results"] if r["scenario"] == scenario]
        ys = np.arange(len(rows))
        ring = [r["ring"]["median"] for r in rows]
        base = [r["baseline"]["median"] for r in rows]
        ring_err = [[r["ring"]["median"] - r["ring"]["low"] for r in rows],
                    [r["ring"]["high"] - r["ring"]["median"] for r in rows]]
        base_err = [[r["baseline"]["median"] - r["baseline"]["low"] for r in rows],
                    [r["baseline"]["high"] - r["baseline"]["median"] for r in rows]]
        ax.barh(ys - 0.2, ring, 0.4, xerr=ring_err, label="first (ring)")
        ax.barh(ys + 0.2, base, 0.4, xerr=base_err, label="second (baseline)")
        ax.set_yticks(ys, [f"{r['label']}  ({r['ratio']:.2f}x)" for r in rows], fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel(rows[0]["ring"]["unit"] if len({r["ring"]["unit"] for r in rows}) == 1
                      else "value (see labels)")
        ax.invert_yaxis()
        ax.set_title(scenario)
        ax.legend(fontsize=7)
    env = report["environment"]
    title = f"uring-epoll {env['uring_epoll']}: {env['kernel']}, {env['cpus']} CPUs"
    if env.get("user_mode_linux"):
        title += " (User-Mode Linux: compare ratios only)"
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


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
