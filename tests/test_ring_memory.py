"""The C consumer on hand-built rings: both protocols, wrap-around, corrupt indices."""

from __future__ import annotations

import errno
import time

import numpy as np
import pytest

from uring_epoll import EPOLLERR, EPOLLET, EPOLLIN, EPOLLOUT, EPOLLREMOVED, EVENT_DTYPE
from uring_epoll.ring import Ring, new_ring_buffers


def make(max_items: int = 8, protocol: int = 5, start: int = 0) -> Ring:
    ring = Ring(*new_ring_buffers(max_items), protocol=protocol)
    ring.writable_header["head"] = start
    ring.writable_header["tail"] = start
    for slot in range(max_items):
        ring.writable_items[slot] = (0, EPOLLIN | EPOLLOUT | EPOLLET, 1000 + slot)
    return ring


def publish(ring: Ring, slot: int, events: int = EPOLLIN) -> None:
    """Play the producer: OR the bits, append on 0 -> non-zero."""
    items, hdr, index = ring.writable_items, ring.writable_header, ring.writable_index
    old = int(items[slot]["ready_events"])
    items[slot]["ready_events"] = (old & ~EPOLLREMOVED) | events
    if old == 0:
        tail = int(hdr["tail"])
        index[tail & (len(index) - 1)] = slot if ring.protocol == 5 else slot + 1
        hdr["tail"] = (tail + 1) & 0xFFFFFFFF


@pytest.mark.parametrize("protocol", [5, 3])
def test_drain_delivers_data_and_events_in_order(protocol: int) -> None:
    ring = make(protocol=protocol)
    for slot in (3, 0, 5):
        publish(ring, slot)
    publish(ring, 3, EPOLLOUT)  # ORed into the pending entry, no second entry
    out = np.zeros(8, EVENT_DTYPE)
    assert ring.drain(out) == 3
    assert out["data"][:3].tolist() == [1003, 1000, 1005]
    assert out["events"][:3].tolist() == [EPOLLIN | EPOLLOUT, EPOLLIN, EPOLLIN]
    assert int(ring.header["head"]) == int(ring.header["tail"]) == 3
    assert not ring.items["ready_events"].any()  # exchanged to 0
    if protocol == 3:
        assert not ring.index[:3].any()  # the v3 consumer zeroes what it consumed
    assert ring.drain(out) == 0


@pytest.mark.parametrize("protocol", [5, 3])
def test_wraparound_of_head_and_tail(protocol: int) -> None:
    ring = make(protocol=protocol, start=2**32 - 2)
    for slot in range(5):
        publish(ring, slot)
    assert int(ring.header["tail"]) == 3  # wrapped
    out = np.zeros(8, EVENT_DTYPE)
    assert ring.drain(out) == 5
    assert out["data"][:5].tolist() == [1000, 1001, 1002, 1003, 1004]
    assert int(ring.header["head"]) == 3


def test_removed_and_masked_entries_are_skipped() -> None:
    ring = make()
    publish(ring, 1)
    publish(ring, 2)
    ring.writable_items[1]["ready_events"] = EPOLLREMOVED  # DEL with a pending entry
    publish(ring, 4, 0x400)  # a wake bit nobody registered for
    publish(ring, 6, EPOLLERR)  # ERR always counts
    out = np.zeros(8, EVENT_DTYPE)
    assert ring.drain(out) == 2
    assert out["data"][:2].tolist() == [1002, 1006]
    assert out["events"][:2].tolist() == [EPOLLIN, EPOLLERR]
    assert ring.stats()["skipped"] == 2


def test_batch_limited_by_buffer_leaves_the_rest() -> None:
    ring = make()
    for slot in range(6):
        publish(ring, slot)
    out = np.zeros(4, EVENT_DTYPE)
    assert ring.drain(out) == 4
    assert ring.drain(out) == 2
    assert out["data"][:2].tolist() == [1004, 1005]


@pytest.mark.parametrize("protocol", [5, 3])
def test_corrupt_slot_is_a_clear_error_after_the_good_ones(protocol: int) -> None:
    ring = make(protocol=protocol)
    publish(ring, 2)
    hdr, index = ring.writable_header, ring.writable_index
    index[1] = 4000  # a slot number far beyond max_items
    hdr["tail"] = 2
    out = np.zeros(8, EVENT_DTYPE)
    assert ring.drain(out) == 1  # the good event first, never lost
    with pytest.raises(OSError) as info:
        ring.drain(out)
    assert info.value.errno == errno.EBADMSG
    assert "max_items 8" in str(info.value)
    assert int(ring.header["head"]) == 1  # the corrupt entry was not consumed


def test_tail_far_ahead_of_head_is_a_clear_error() -> None:
    ring = make()
    ring.writable_header["tail"] = 1_000_000
    with pytest.raises(OSError) as info:
        ring.drain(np.zeros(4, EVENT_DTYPE))
    assert info.value.errno == errno.EBADMSG
    assert "ahead of head" in str(info.value)


def test_bad_header_is_refused_before_any_index_is_read() -> None:
    header, index = new_ring_buffers(8)
    np.frombuffer(header, "<u4")[0] = 0x12345678
    with pytest.raises(OSError) as info:
        Ring(header, index)
    assert info.value.errno == errno.EBADMSG
    header, index = new_ring_buffers(8)
    np.frombuffer(header, "<u4")[3] = 1_000_000  # more items than the mapping holds
    with pytest.raises(OSError):
        Ring(header, index)


def test_protocol3_unwritten_slot_does_not_hang() -> None:
    ring = make(protocol=3)
    publish(ring, 0)
    ring.writable_header["tail"] = 2  # a reservation whose slot was never written
    out = np.zeros(4, EVENT_DTYPE)
    started = time.monotonic()
    assert ring.drain(out) == 1
    assert ring.drain(out) == 0  # gives up after a bounded wait
    assert time.monotonic() - started < 5
    ring.writable_index[1] = 3 + 1
    ring.writable_items[3]["ready_events"] = EPOLLIN
    assert ring.drain(out) == 1 and int(out[0]["data"]) == 1003


def test_drain_refuses_wrong_buffers() -> None:
    ring = make()
    with pytest.raises(TypeError):
        ring.drain(np.zeros(4, np.uint64))
