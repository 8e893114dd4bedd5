"""Ring protocol 3 against protocol 5 on the emulator, with a spinning consumer.

The two revisions differ only in how an entry is appended and found:

- protocol 5 (the final RFC): the producer reserves a position on a private counter, writes
  the index slot, and the last appender to leave advances ``tail``; the consumer trusts every
  slot below ``tail`` and never waits.
- protocol 3: the producer reserves a position with a fetch-add on ``tail`` and writes
  ``slot + 1`` there afterwards; the consumer may see ``tail`` move before the slot is written,
  and must wait for the non-zero value (then zero it for the next lap).

So protocol 3 costs the consumer an extra store per entry and, under a live producer, the odd
wait for a reserved but unwritten slot. A consumer that spins on an empty ring sees that wait
most often, which is why this scenario spins. The producer is the real path (C threads writing
eventfds, the emulator's poller publishing), so the figure is end to end, not the ring alone;
select.epoll in the same run gives the scale.
"""

from __future__ import annotations

from .. import abi
from .common import Comparison, Progress, Throughput
from .sustained import compare_runs, sustained_one


def scenario_protocol(
    nfds: int, threads: int, seconds: float, repeats: int, progress: Progress,
    spin_us: float = 50.0,
) -> list[Comparison]:
    """Protocol 5 against 3 (thread backend, spinning consumer), and each against a
    select.epoll consumer, interleaved per repeat."""
    protocols = {"v5": abi.PROTOCOL_V5, "v3": abi.PROTOCOL_V3}
    runs: dict[str, list[Throughput]] = {name: [] for name in (*protocols, "stdlib")}
    for rep in range(repeats):
        for name, found in runs.items():
            progress(f"protocol: {name}, repeat {rep + 1}/{repeats}", force=True)
            if name == "stdlib":
                found.append(sustained_one("stdlib", nfds, threads, seconds, progress, 0.0))
            else:
                found.append(sustained_one("thread", nfds, threads, seconds, progress, spin_us,
                                           protocol=protocols[name]))
    spin = f"spin {spin_us:g} us"
    results = compare_runs("protocol", f"protocol 5 vs 3 ({spin})", "thread protocol 5",
                           runs["v5"], "thread protocol 3", runs["v3"])
    for name, number in protocols.items():
        results += compare_runs(
            "protocol", f"protocol {number} ({spin}) vs select.epoll", f"thread protocol {number}",
            runs[name], "select.epoll.poll", runs["stdlib"],
            metrics=("events_per_s", "cpu_ns_per_event"))
    return results
