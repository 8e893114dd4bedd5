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
most often, which is why this scenario spins. It runs twice:

- ``ring only``: C threads publish straight into the ring (as the kernel's wake-up callback
  does), no file and no poller thread: the protocols alone, producer and consumer on their own
  CPUs.
- ``end to end``: C threads write eventfds and the emulator's poller thread publishes, beside
  a select.epoll consumer fed the same way. On two CPUs the spinning consumer, the producer
  and the poller compete for them, which is a finding of its own.
"""

from __future__ import annotations

from .. import abi, testing
from .common import Comparison, Progress, Throughput, c_injectors, consume_for, eventfds
from .sustained import compare_runs, consumer, sustained_one


def ring_only_one(
    protocol: int, nfds: int, threads: int, seconds: float, progress: Progress, spin_us: float
) -> Throughput:
    """A spinning consumer fed by C threads publishing straight into the emulator's ring."""
    with (
        eventfds(nfds) as fds,
        consumer("thread", fds, spin_us, protocol) as (poll_batch, ep),
        c_injectors(testing.emulator(ep), fds, threads),
    ):
        return consume_for(poll_batch, seconds, progress, f"ring only, protocol {protocol}")


def scenario_protocol(
    nfds: int,
    threads: int,
    seconds: float,
    repeats: int,
    progress: Progress,
    spin_us: float = 50.0,
) -> list[Comparison]:
    """Protocol 5 against 3 on the thread backend with a spinning consumer: the ring alone,
    then end to end beside a select.epoll consumer; interleaved per repeat."""
    protocols = {"v5": abi.PROTOCOL_V5, "v3": abi.PROTOCOL_V3}
    ring_only: dict[str, list[Throughput]] = {name: [] for name in protocols}
    end_to_end: dict[str, list[Throughput]] = {name: [] for name in (*protocols, "stdlib")}
    for rep in range(repeats):
        for name, number in protocols.items():
            progress(f"protocol {number}, ring only: repeat {rep + 1}/{repeats}", force=True)
            ring_only[name].append(ring_only_one(number, nfds, threads, seconds, progress, spin_us))
        for name, found in end_to_end.items():
            progress(f"protocol: {name} end to end, repeat {rep + 1}/{repeats}", force=True)
            if name == "stdlib":
                found.append(sustained_one("stdlib", nfds, threads, seconds, progress, 0.0))
            else:
                found.append(
                    sustained_one(
                        "thread",
                        nfds,
                        threads,
                        seconds,
                        progress,
                        spin_us,
                        protocol=protocols[name],
                    )
                )
    spin = f"spin {spin_us:g} us"
    results = compare_runs(
        "protocol",
        f"ring only, 5 vs 3 ({spin})",
        "protocol 5",
        ring_only["v5"],
        "protocol 3",
        ring_only["v3"],
        metrics=("events_per_s", "cpu_ns_per_event", "events_per_call"),
    )
    results += compare_runs(
        "protocol",
        f"end to end, 5 vs 3 ({spin})",
        "thread protocol 5",
        end_to_end["v5"],
        "thread protocol 3",
        end_to_end["v3"],
    )
    for name, number in protocols.items():
        results += compare_runs(
            "protocol",
            f"end to end, {number} ({spin}) vs select.epoll",
            f"thread protocol {number}",
            end_to_end[name],
            "select.epoll.poll",
            end_to_end["stdlib"],
            metrics=("events_per_s", "cpu_ns_per_event"),
        )
    return results
