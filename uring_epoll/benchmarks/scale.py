"""Scale: a fixed number of ready events among 1..65536 registered fds.

What it measures, per number *n* of registered eventfds with *ready* of them pending:

- the cost of one call taking those events (ns per call; per event in a note): the ring
  (``poll_into``, edge-triggered, the items queued outside the timed region) against
  ``select.epoll.poll`` (level-triggered, the same number of fds kept readable). Calls are
  timed in blocks of 32, see below;
- the cost of registering the *n* fds, ``epoll.register`` against ``select.epoll.register``;
- the memory each epfd takes: the ring (header + items + index, what the patched kernel charges
  to RLIMIT_MEMLOCK), and, where /proc/slabinfo shows them, the kernel's own per-registration
  objects (``struct epitem`` and ``struct eppoll_entry``), which every epoll has, ring or not.
  Their growth is read around registering max(n, 8192) fds in a plain ``select.epoll`` and
  scaled to n; merged slab caches (the default on most kernels) hide them, which a note says.

Why both sides should stay flat in *n*: ``epoll_wait`` walks the ready list, never the
registrations, and the ring consumer walks the index entries between head and tail, never the
items. The ready fds are spread over the whole registered set so the items the consumer
touches are not neighbours in one cache line. What does grow with *n* is memory: the ring
sizes itself for ``max_items`` up front (16 bytes an item, 4 bytes an index slot, rounded up to
pages and a power of two), on top of the epitems.
"""

from __future__ import annotations

import errno
import os
import resource
import select
import statistics
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import numpy as np

from .. import abi
from .._epoll import epoll
from .common import (
    Comparison,
    Progress,
    clock_overhead_ns,
    make_unreadable,
    open_fd_count,
    raise_nofile,
    ratio,
    summary,
)
from .drain import refill

#: The kernel's per-registration slab caches: one epitem per (epfd, fd), one eppoll_entry per
#: wait queue the file adds it to (one for an eventfd).
SLAB_CACHES = ("eventpoll_epi", "eventpoll_pwq")

#: Registration is timed over at least this many registrations (fresh objects for small n).
_REGISTER_MIN = 256
#: Slab counts move a whole slab at a time (32 epitems a page), so the slab delta is taken over
#: at least this many registrations and scaled to n.
_SLAB_MIN = 8192
#: Rings one timed block goes round at most (see _ring_layout), and the descriptors each ring
#: may hold (the epfd and its helpers: 2 on the thread backend, 3 on the kernel one today).
_BLOCK = 32
_FDS_PER_RING = 4
#: Descriptors kept free beside the eventfds: the rings', select.epoll's, Python's own.
_FD_HEADROOM = 64 + _BLOCK * _FDS_PER_RING


def _limit_text(limit: int) -> str:
    return "unlimited" if limit == resource.RLIM_INFINITY else str(limit)


def _open_eventfds(count: int) -> tuple[list[int], OSError | None]:
    """Up to *count* non-blocking eventfds; stops early (returning the error) when the process
    or the system runs out of descriptors. The caller closes what it got."""
    fds: list[int] = []
    try:
        for _ in range(count):
            fds.append(os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC))
    except OSError as exc:
        if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
            for fd in fds:
                os.close(fd)
            raise
        return fds, exc
    return fds, None


def spread(fds: list[int], ready: int) -> list[int]:
    """*ready* fds spread evenly over *fds* (every len//ready-th one), not the first few."""
    n = len(fds)
    k = min(ready, n)
    return [fds[(i * n) // k] for i in range(k)]


# ---- registration ------------------------------------------------------------------------


def _time_register(
    make: Callable[[], Any], mask: int, fds: list[int], overhead: float, keep: int = 1
) -> tuple[float, list[Any]]:
    """ns per fd for registering *fds* into fresh objects from *make*, one after the other,
    until at least ``_REGISTER_MIN`` registrations were timed (the median over objects is
    returned). Returns the last *keep* objects, registered, for the caller to use and close."""
    rounds = max(keep, -(-_REGISTER_MIN // len(fds)))
    clock = time.perf_counter_ns
    samples = []
    kept: list[Any] = []
    try:
        for _ in range(rounds):
            if len(kept) == keep:
                kept.pop(0).close()
            ep = make()
            kept.append(ep)
            register = ep.register
            t0 = clock()
            for fd in fds:
                register(fd, mask)
            t1 = clock()
            samples.append(max(t1 - t0 - overhead, 0.0) / len(fds))
    except BaseException:
        for ep in kept:
            ep.close()
        raise
    return statistics.median(samples), kept


# ---- taking the ready events ---------------------------------------------------------------
#
# Calls are timed in blocks of about _BLOCK, never one by one: inside User-Mode Linux reading the
# clock is itself a system call (~13 us, 256 ns steps), which would bury a 300 ns poll_into.
# select.epoll stays ready (level-triggered), so a block is _BLOCK polls in a row. The ring
# needs its entries queued before the block (untimed), k of them per call; one ring holds at
# most one entry per registration, so the block's k-sets are disjoint fds of the same n, and
# where n < _BLOCK * k the block goes round several rings, each with the n fds registered.


def _ring_layout(n: int, k: int) -> tuple[int, int]:
    """(rings, k-sets per ring) for one block of at least _BLOCK calls."""
    sets = max(1, min(_BLOCK, n // k))
    return -(-_BLOCK // sets), sets


def _ring_sets(fds: list[int], k: int, sets: int) -> list[list[int]]:
    """*sets* disjoint sets of *k* fds, each spread over the whole of *fds*."""
    every = spread(fds, k * sets)
    return [every[j::sets] for j in range(sets)]


def _ring_poll_ns(
    backend: str, rings: list[epoll], sets: list[list[int]], blocks: int, overhead: float
) -> list[float]:
    """ns per poll_into call taking k ready entries, one sample per block."""
    k = len(sets[0])
    queued = [fd for group in sets for fd in group]
    # The kernel appends to every epfd holding the fd on one write; the emulator is told each.
    fill_via = rings if backend == "thread" else rings[:1]
    buffer = np.zeros(k, abi.EVENT_DTYPE)
    calls = [ring.poll_into for ring in rings for _ in sets]
    expected = [sorted(group) for _ in rings for group in sets]

    def fill() -> None:
        for ring in fill_via:
            refill(ring, queued)

    # Once untimed: each call gets its k-set in order, and nothing else is queued.
    fill()
    for poll_into, want in zip(calls, expected, strict=True):
        got = poll_into(buffer, 0)
        data = sorted(int(d) for d in buffer["data"][:got])
        if data != want:
            raise RuntimeError(f"ring returned {data}, expected {want}")
    clock = time.perf_counter_ns
    samples = []
    for _ in range(blocks):
        fill()
        total = 0
        t0 = clock()
        for poll_into in calls:
            total += poll_into(buffer, 0)
        t1 = clock()
        if total != len(calls) * k:
            raise RuntimeError(f"ring drain returned {total} events, expected {len(calls) * k}")
        samples.append(max(t1 - t0 - overhead, 0.0) / len(calls))
    if any(ring.poll_into(buffer, 0) for ring in rings):
        raise RuntimeError("ring not empty after taking every queued event")
    return samples


def _stdlib_poll_ns(
    ep: select.epoll, ready: list[int], blocks: int, overhead: float
) -> list[float]:
    """ns per select.epoll.poll call; *ep* holds every fd level-triggered, *ready* readable."""
    k = len(ready)
    for fd in ready:
        os.eventfd_write(fd, 1)
    try:
        poll = ep.poll
        got_fds = sorted(fd for fd, _ in poll(0, k + 1))
        if got_fds != sorted(ready):
            raise RuntimeError(f"select.epoll returned {got_fds}, expected {sorted(ready)}")
        clock = time.perf_counter_ns
        calls = range(_BLOCK)
        samples = []
        for _ in range(blocks):
            total = 0
            t0 = clock()
            for _ in calls:
                total += len(poll(0, k))
            t1 = clock()
            if total != _BLOCK * k:
                raise RuntimeError(f"select.epoll returned {total} events, expected {_BLOCK * k}")
            samples.append(max(t1 - t0 - overhead, 0.0) / _BLOCK)
        return samples
    finally:
        make_unreadable(ready)


# ---- kernel slab memory of the registrations -----------------------------------------------


def _read_slabinfo() -> dict[str, tuple[int, int]]:
    """name -> (active_objs, objsize) from /proc/slabinfo (OSError if unreadable)."""
    caches = {}
    with open("/proc/slabinfo") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 4 and not line.startswith(("#", "slabinfo")):
                with suppress(ValueError):
                    caches[parts[0]] = (int(parts[1]), int(parts[3]))
    return caches


def _slab_problem() -> str | None:
    """Why the epitem slab delta cannot be measured here, or None if it can."""
    try:
        caches = _read_slabinfo()
    except OSError as exc:
        return f"/proc/slabinfo unreadable ({exc.strerror}; it needs root)"
    missing = [name for name in SLAB_CACHES if name not in caches]
    if missing:
        return (
            f"{' and '.join(missing)} absent from /proc/slabinfo (merged into another "
            "cache; boot with slab_nomerge to see them)"
        )
    for name in SLAB_CACHES:
        # SLUB: a mergeable cache is a symlink to its real cache; "aliases" counts the others.
        link = f"/sys/kernel/slab/{name}"
        if not os.path.islink(link):
            continue
        target = os.path.realpath(link)
        try:
            with open(os.path.join(target, "aliases")) as f:
                aliases = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        if aliases > 0:
            others = sorted(
                entry
                for entry in os.listdir("/sys/kernel/slab")
                if entry != name
                and not entry.startswith(":")
                and os.path.realpath(f"/sys/kernel/slab/{entry}") == target
            )
            shared = ", ".join(others) if others else f"{aliases} other caches"
            return (
                f"{name} is merged with {shared} (SLUB cache merging; boot with "
                "slab_nomerge to measure it)"
            )
    return None


def _object_sizes() -> str:
    """The per-registration object sizes from SLUB's sysfs, even for merged caches."""
    sizes = []
    for name in SLAB_CACHES:
        try:
            with open(f"/sys/kernel/slab/{name}/slab_size") as f:
                sizes.append((name, int(f.read())))
        except (OSError, ValueError):
            return ""
    total = sum(size for _, size in sizes)
    parts = " + ".join(f"{size} ({name})" for name, size in sizes)
    return f"; by object size one eventfd registration takes {parts} = {total} bytes of slab"


def _slab_bytes(fds: list[int]) -> int:
    """Growth of the epitem and eppoll_entry slabs while *fds* are registered in a plain
    select.epoll (active objects times object size)."""

    def total() -> int:
        caches = _read_slabinfo()
        return sum(caches[name][0] * caches[name][1] for name in SLAB_CACHES)

    ep = select.epoll()
    try:
        before = total()
        for fd in fds:
            ep.register(fd, select.EPOLLIN)
        after = total()
    finally:
        ep.close()
    return after - before


# ---- the scenario ------------------------------------------------------------------------


def scenario_scale(
    backend: str,
    sizes: tuple[int, ...],
    ready: int,
    calls: int,
    repeats: int,
    progress: Progress,
) -> tuple[list[Comparison], list[dict], list[str]]:
    """Taking *ready* events among *n* registered fds for each n in *sizes*, ring against
    select.epoll (ns per call), registration (ns per fd), and the memory per epfd.

    *calls* timed calls per side and repeat (rounded up to whole blocks of 32, at least 3
    blocks); figures are medians over *repeats* of the per-repeat median. Where n < *ready*,
    all n are ready (the label says so). Returns (comparisons, memory rows, notes). Sizes that
    cannot be opened here (RLIMIT_NOFILE, fs.epoll.max_user_watches, RLIMIT_MEMLOCK, the RFC's
    65536 limit) are skipped with a note.
    """
    if ready < 1:
        raise ValueError("ready must be >= 1")
    notes: list[str] = []
    wanted = []
    for n in sorted(set(sizes)):
        if not 1 <= n <= abi.MAX_ITEMS_LIMIT:
            notes.append(f"{n} registered: skipped, max_items must be 1..{abi.MAX_ITEMS_LIMIT}")
        else:
            wanted.append(n)
    if not wanted:
        return [], [], notes
    headroom = open_fd_count() + _FD_HEADROOM
    soft, hard = raise_nofile(max(wanted) + _FD_HEADROOM)  # it adds what is open already
    fits = [n for n in wanted if soft == resource.RLIM_INFINITY or n + headroom <= soft]
    for n in wanted:
        if n not in fits:
            notes.append(
                f"{n} registered: skipped, RLIMIT_NOFILE hard limit {_limit_text(hard)} "
                f"(soft {_limit_text(soft)}; raising it needs CAP_SYS_RESOURCE)"
            )
    if not fits:
        return [], [], notes

    comparisons: list[Comparison] = []
    memory: list[dict] = []
    per_event: list[str] = []
    overhead = clock_overhead_ns()
    slab_problem = _slab_problem()
    slab_cache: dict[int, int] = {}  # registrations -> slab bytes
    progress(f"scale: opening {max(fits)} eventfds", force=True)
    all_fds, error = _open_eventfds(max(fits))
    try:
        if error is not None:
            for n in fits:
                if n > len(all_fds):
                    notes.append(
                        f"{n} registered: skipped, only {len(all_fds)} eventfds could "
                        f"be opened ({error.strerror})"
                    )
            fits = [n for n in fits if n <= len(all_fds)]
        for n in fits:
            k = min(ready, n)
            try:
                row, found = _one_size(backend, all_fds[:n], k, calls, repeats, overhead, progress)
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.ENOMEM, errno.EMFILE, errno.ENFILE):
                    raise
                notes.append(f"{n} registered: skipped, {_why(exc)}")
                continue
            comparisons += found
            poll_cmp = found[0]
            per_event.append(
                f"{n}: {poll_cmp.ring.median / k:.0f} vs {poll_cmp.baseline.median / k:.0f}"
            )
            if slab_problem is None:
                # Measured over at least _SLAB_MIN registrations (as many as are open) and
                # scaled to n: the counts move a whole slab at a time.
                count = max(n, min(_SLAB_MIN, len(all_fds)))
                progress(f"scale: {n} registered, slab memory of {count} registrations")
                if count not in slab_cache:
                    slab_cache[count] = _slab_bytes(all_fds[:count])
                grown = round(slab_cache[count] * n / count)
                row["epitem_bytes"] = grown if grown > 0 else None
                if grown <= 0:
                    note = "epitem bytes: the slabs did not grow while registering (noise?)"
                    if note not in notes:
                        notes.append(note)
            memory.append(row)
    finally:
        for fd in all_fds:
            os.close(fd)
    if slab_problem is not None:
        notes.append(f"epitem bytes not measured: {slab_problem}{_object_sizes()}")
    if per_event:
        notes.append(
            f"scale, ns per event ({backend} poll_into vs select.epoll.poll) by "
            f"registered: {', '.join(per_event)}"
        )
    if memory:
        notes.append(_memlock_note(backend, memory[-1]))
    if backend == "kernel":
        notes.append(
            "kernel backend: besides the ring, each registration on a userpoll epfd "
            "takes a 16-byte eventpoll_uentry and the epfd a bitmap of max_items bits; "
            "neither is charged to RLIMIT_MEMLOCK"
        )
    return comparisons, memory, notes


def _why(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        try:
            with open("/proc/sys/fs/epoll/max_user_watches") as f:
                watches = f.read().strip()
        except OSError:
            watches = "?"
        return f"fs.epoll.max_user_watches ({watches}) reached"
    if exc.errno == errno.ENOMEM:
        return "ENOMEM (RLIMIT_MEMLOCK too low for the ring without CAP_IPC_LOCK?)"
    return f"{exc.strerror}"


def _memlock_note(backend: str, row: dict) -> str:
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    size = row["ring_bytes"]
    where = (
        "charged to RLIMIT_MEMLOCK unless CAP_IPC_LOCK"
        if backend == "kernel"
        else "the size the kernel would charge to RLIMIT_MEMLOCK (the thread backend maps the "
        "same layout, not locked)"
    )
    if soft == resource.RLIM_INFINITY:
        room = "RLIMIT_MEMLOCK is unlimited here"
    else:
        room = (
            f"RLIMIT_MEMLOCK here {soft // 1024} KiB: room for {soft // size} such epfds per user"
        )
    return f"ring at {row['registered']} registered: {size} bytes per epfd, {where}; {room}"


def _ring_bytes(ep: epoll) -> int:
    """header_length + index_length from the ring's header. The view is dropped on return: a
    live view keeps the mapping, hence the epoll file and all its epitems, after close()."""
    header = ep.header
    if header is None:
        raise ValueError(f"the {ep.backend} backend has no ring")
    return int(header["header_length"]) + int(header["index_length"])


def _one_size(
    backend: str,
    fds: list[int],
    k: int,
    calls: int,
    repeats: int,
    overhead: float,
    progress: Progress,
) -> tuple[dict, list[Comparison]]:
    """Every repeat: the ring (registered, polled, closed), then select.epoll likewise. The two
    never hold the registrations at the same time (fs.epoll.max_user_watches)."""
    n = len(fds)
    n_rings, n_sets = _ring_layout(n, k)
    sets = _ring_sets(fds, k, n_sets)
    ready = spread(fds, k)
    blocks = max(3, -(-calls // _BLOCK))
    rows: dict[str, list[float]] = {key: [] for key in ("ring", "stdlib", "ring_reg", "std_reg")}
    row: dict[str, Any] = {"registered": n, "backend": backend}
    med = statistics.median
    for rep in range(repeats):
        progress(f"scale: {n} registered, repeat {rep + 1}/{repeats}: ring")
        reg_ns, rings = _time_register(
            lambda: epoll(backend=backend, max_items=n),
            select.EPOLLIN | select.EPOLLET,
            fds,
            overhead,
            n_rings,
        )
        try:
            if "ring_bytes" not in row:
                ring_bytes = _ring_bytes(rings[0])
                row.update(ring_bytes=ring_bytes, bytes_per_fd=ring_bytes / n, epitem_bytes=None)
            rows["ring_reg"].append(reg_ns)
            rows["ring"].append(med(_ring_poll_ns(backend, rings, sets, blocks, overhead)))
        finally:
            for ring in rings:
                ring.close()
            make_unreadable([fd for group in sets for fd in group])  # kernel: refilled by writes
        progress(f"scale: {n} registered, repeat {rep + 1}/{repeats}: select.epoll")
        reg_ns, (std,) = _time_register(select.epoll, select.EPOLLIN, fds, overhead)
        try:
            rows["std_reg"].append(reg_ns)
            rows["stdlib"].append(med(_stdlib_poll_ns(std, ready, blocks, overhead)))
        finally:
            std.close()
    ring_m = summary(f"{backend} poll_into", "ns/call", rows["ring"])
    std_m = summary("select.epoll.poll", "ns/call", rows["stdlib"])
    ring_reg = summary(f"{backend} epoll.register", "ns/fd", rows["ring_reg"])
    std_reg = summary("select.epoll.register", "ns/fd", rows["std_reg"])
    return row, [
        Comparison(
            "scale",
            f"poll_into vs select.epoll.poll, {n} registered, {k} ready",
            ring_m,
            std_m,
            ratio(std_m.median, ring_m.median),
        ),
        Comparison(
            "scale",
            f"register, {n} registered",
            ring_reg,
            std_reg,
            ratio(std_reg.median, ring_reg.median),
        ),
    ]
