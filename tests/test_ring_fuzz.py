"""Random ring states fed to the C drain (csrc/ring.c), both protocols, against a model.

Each example builds a ring whose shared words hold anything: head and tail anywhere (in and
out of range), index slots naming items inside, past ``max_items`` or in the items page
beyond it, protocol-3 slots left 0, ``ready_events`` and ``events`` random, and the header's
write-once fields overwritten after the consumer attached. Every drain must return what the
model of the consumer (below, from spec/userpoll-abi.md and ring.c's rules) says: the same
events in the same order, the same head, index and ``ready_events`` afterwards, or the same
OSError(EBADMSG). Never an event from an item at or past ``max_items``, never a crash, each
call bounded in time.

The sanitizer run (test_sanitizers.py) runs this file against an ASan/UBSan build as well.
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from uring_epoll import abi
from uring_epoll.ring import Ring, new_ring_buffers

U32 = 2**32
ERR_HUP = abi.EPOLLERR | abi.EPOLLHUP
REMOVED = 1 << 27
#: One drain must never take longer than this (protocol 3 spins a bounded 1024 times on a
#: zero slot; the stuck-slot error needs a second of drains at one head, never reached here).
DRAIN_BOUND_S = 0.5
#: Examples per run: a few seconds by default; set URING_EPOLL_FUZZ_EXAMPLES for a longer hunt.
EXAMPLES = int(os.environ.get("URING_EPOLL_FUZZ_EXAMPLES", "100"))
#: data of the items past max_items (inside the items page): must never come out.
FORBIDDEN = 0xBAD0_0000_0000_0000


@dataclass
class Outcome:
    events: list[tuple[int, int]]
    error: bool
    head: int
    index: list[int]
    ready: list[int]


def model_drain(
    protocol: int,
    max_items: int,
    head: int,
    tail: int,
    index: list[int],
    ready: list[int],
    interest: list[int],
    data: list[int],
    maxevents: int,
) -> Outcome:
    """What drain_locked does, in Python (index and ready are changed in place)."""
    index, ready = list(index), list(ready)
    mask = len(index) - 1
    if head == tail:
        return Outcome([], False, head, index, ready)
    if (tail - head) % U32 > len(index):
        return Outcome([], True, head, index, ready)
    out: list[tuple[int, int]] = []
    bad = False
    while head != tail and len(out) < maxevents:
        value = index[head & mask]
        if protocol == 5:
            slot = value
        else:
            if value == 0:
                break  # reserved, not written: the next call
            slot = value - 1
        if slot >= max_items:
            bad = True
            break
        if protocol == 3:
            index[head & mask] = 0
        events, ready[slot] = ready[slot], 0
        head = (head + 1) % U32
        events &= (interest[slot] | ERR_HUP) & ~REMOVED
        if events:
            out.append((data[slot], events))
    return Outcome(out, bad and not out, head, index, ready)


u32 = st.integers(0, U32 - 1)


@st.composite
def ring_states(draw: st.DrawFn) -> dict:
    protocol = draw(st.sampled_from([5, 3]))
    max_items = draw(st.sampled_from([1, 2, 3, 8, 64]))
    nindex = abi.index_length(max_items) // 4
    page_items = (abi.header_length(max_items) - abi.HEADER_SIZE) // abi.ITEM_SIZE
    head = draw(st.one_of(u32, st.integers(U32 - 8, U32 - 1), st.integers(0, 8)))
    span = draw(
        st.one_of(
            st.integers(0, 16),
            st.integers(nindex - 2, nindex + 2),
            u32,
        )
    )
    tail = (head + span) % U32
    # Index values: in range, just past max_items, past the items page, huge, 0.
    value = st.one_of(
        st.integers(0, max_items + 1),
        st.integers(0, page_items + 1),
        u32,
        st.just(0),
    )
    writes = draw(st.lists(st.tuples(st.integers(0, 24), value), max_size=24))
    # Random for the items in range and a few past them; the rest of the page is left
    # ready with every bit of interest (so that a stray read of one would show).
    drawn = min(page_items, max_items + 4)
    ready = draw(
        st.lists(
            st.one_of(st.just(0), u32, st.sampled_from([abi.EPOLLIN, REMOVED, ERR_HUP])),
            min_size=drawn,
            max_size=drawn,
        )
    )
    ready += [abi.EPOLLIN] * (page_items - drawn)
    interest = draw(st.lists(u32, min_size=drawn, max_size=drawn))
    interest += [U32 - 1] * (page_items - drawn)
    clobber = draw(st.lists(st.tuples(st.integers(0, 3), u32), max_size=4))
    return {
        "protocol": protocol,
        "max_items": max_items,
        "head": head,
        "tail": tail,
        "writes": writes,
        "ready": ready,
        "interest": interest,
        "clobber": clobber,
        "sizes": draw(st.lists(st.integers(1, 40), min_size=1, max_size=3)),
    }


@settings(
    max_examples=EXAMPLES,
    deadline=2000,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(ring_states())
def test_drain_of_any_ring_state_matches_the_model(state: dict) -> None:
    protocol, max_items = state["protocol"], state["max_items"]
    ring = Ring(*new_ring_buffers(max_items), protocol=protocol)
    try:
        hdr = ring.writable_header
        # The whole items page, including the items past max_items.
        page = np.ndarray(
            ((len(ring._header_map) - abi.HEADER_SIZE) // abi.ITEM_SIZE,),
            abi.ITEM_DTYPE,
            buffer=ring._header_map,
            offset=abi.HEADER_SIZE,
        )
        index = ring.writable_index
        data = [1000 + s if s < max_items else FORBIDDEN + s for s in range(len(page))]
        page["ready_events"] = state["ready"]
        page["events"] = state["interest"]
        page["data"] = data
        head, tail = state["head"], state["tail"]
        for offset, value in state["writes"]:
            index[(head + offset) % len(index)] = value
        hdr["head"], hdr["tail"] = head, tail
        # Write-once fields overwritten after attach: the consumer keeps its own copy.
        for word, value in state["clobber"]:
            hdr[["magic", "header_length", "index_length", "max_items_nr"][word]] = value

        for size in state["sizes"]:
            head = int(hdr["head"])
            expected = model_drain(
                protocol,
                max_items,
                head,
                tail,
                index.tolist(),
                page["ready_events"].tolist(),
                page["events"].tolist(),
                data,
                size,
            )
            out = np.zeros(size, abi.EVENT_DTYPE)
            started = time.monotonic()
            try:
                n = ring.drain(out)
                error = False
            except OSError as exc:
                assert exc.errno == errno.EBADMSG, exc
                assert "corrupt EPOLL_USERPOLL ring" in str(exc)
                n, error = 0, True
            assert time.monotonic() - started < DRAIN_BOUND_S
            assert 0 <= n <= size
            got = list(zip(out["data"][:n].tolist(), out["events"][:n].tolist(), strict=True))
            assert all(d < FORBIDDEN for d, _ in got), got
            assert (got, error) == (expected.events, expected.error)
            assert int(hdr["head"]) == expected.head
            assert int(hdr["tail"]) == tail  # the consumer never writes tail
            assert index.tolist() == expected.index
            assert page["ready_events"].tolist() == expected.ready
            # Past max_items nothing is ever touched.
            assert page["data"][max_items:].tolist() == data[max_items:]
    finally:
        ring.close()
