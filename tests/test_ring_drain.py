"""The C consumer (csrc/ring.c) on hand-built rings, through ``uring_epoll.ring``.

The test plays the kernel: it ORs bits into an item's ``ready_events`` and appends the slot to
the index ring only on a 0 -> non-zero transition, exactly as spec/userpoll-abi.md says.
Protocol 5 writes the slot number and then moves ``tail``; protocol 3 moves ``tail`` first and
writes ``slot + 1``, which the consumer zeroes after use.
"""

from __future__ import annotations

import errno
import time

import numpy as np
import pytest

from uring_epoll import (
    EPOLLERR,
    EPOLLET,
    EPOLLHUP,
    EPOLLIN,
    EPOLLOUT,
    EPOLLPRI,
    EPOLLREMOVED,
    EVENT_DTYPE,
)
from uring_epoll.ring import Ring, new_ring_buffers

PROTOCOLS = pytest.mark.parametrize("protocol", [5, 3])
U32 = 2**32


class Producer:
    """A ring and the kernel's producer side, written in Python for the tests."""

    def __init__(self, max_items: int = 8, protocol: int = 5, start: int = 0) -> None:
        self.ring = Ring(*new_ring_buffers(max_items), protocol=protocol)
        self.protocol = protocol
        self.hdr = self.ring.writable_header
        self.items = self.ring.writable_items
        self.index = self.ring.writable_index
        self.hdr["head"] = start % U32
        self.hdr["tail"] = start % U32
        for slot in range(max_items):
            self.register(slot, EPOLLIN | EPOLLOUT | EPOLLET, data=1000 + slot)

    def register(self, slot: int, events: int, data: int) -> None:
        # ADD/MOD: ready_events is left alone (it may still hold EPOLLREMOVED).
        self.items[slot]["events"] = events | EPOLLERR | EPOLLHUP
        self.items[slot]["data"] = data

    def append(self, value: int) -> None:
        """Write *value* at tail and publish it (protocol 5 order: slot, then tail)."""
        tail = int(self.hdr["tail"])
        self.index[tail % len(self.index)] = value
        self.hdr["tail"] = (tail + 1) % U32

    def publish(self, slot: int, flags: int = EPOLLIN) -> bool:
        old = int(self.items[slot]["ready_events"])
        self.items[slot]["ready_events"] = (old & ~EPOLLREMOVED) | flags
        if old:
            return False
        self.append(slot if self.protocol == 5 else slot + 1)
        return True

    def delete(self, slot: int) -> None:
        """DEL: a pending entry's ready_events becomes exactly EPOLLREMOVED."""
        if int(self.items[slot]["ready_events"]):
            self.items[slot]["ready_events"] = EPOLLREMOVED

    @property
    def head(self) -> int:
        return int(self.hdr["head"])

    @property
    def tail(self) -> int:
        return int(self.hdr["tail"])

    def drain(self, size: int = 64) -> list[tuple[int, int]]:
        out = np.zeros(size, EVENT_DTYPE)
        n = self.ring.drain(out)
        return list(zip(out["data"][:n].tolist(), out["events"][:n].tolist(), strict=True))


@pytest.fixture
def rings():
    made: list[Producer] = []

    def make(*args, **kwargs) -> Producer:
        p = Producer(*args, **kwargs)
        made.append(p)
        return p

    yield make
    for p in made:
        p.ring.close()


@PROTOCOLS
def test_events_come_out_in_ring_order_with_their_data(rings, protocol: int) -> None:
    p = rings(protocol=protocol)
    for slot in (3, 0, 7, 5):
        assert p.publish(slot)
    assert not p.publish(3, EPOLLOUT)  # ORed into the pending entry: no second entry
    assert p.tail == 4
    assert p.drain() == [
        (1003, EPOLLIN | EPOLLOUT),
        (1000, EPOLLIN),
        (1007, EPOLLIN),
        (1005, EPOLLIN),
    ]
    assert p.head == p.tail == 4
    assert not p.ring.items["ready_events"].any()  # exchanged to 0
    assert p.ring.stats()["ring_events"] == 4
    if protocol == 3:
        assert not p.ring.index.any()  # the v3 consumer zeroes every slot it used
    else:
        assert p.ring.index[:4].tolist() == [3, 0, 7, 5]  # v5 leaves them
    assert p.drain() == []


@PROTOCOLS
def test_full_64_bit_data(rings, protocol: int) -> None:
    p = rings(protocol=protocol)
    p.register(2, EPOLLIN | EPOLLET, data=2**64 - 1)
    p.register(4, EPOLLIN | EPOLLET, data=0)
    p.publish(2)
    p.publish(4)
    assert p.drain() == [(2**64 - 1, EPOLLIN), (0, EPOLLIN)]


@PROTOCOLS
def test_entry_can_be_reused_after_consumption(rings, protocol: int) -> None:
    p = rings(protocol=protocol)
    for _ in range(3):
        assert p.publish(1)
        assert p.drain() == [(1001, EPOLLIN)]
    assert p.head == p.tail == 3


@PROTOCOLS
def test_removed_entries_are_skipped(rings, protocol: int) -> None:
    p = rings(protocol=protocol)
    for slot in (0, 1, 2):
        p.publish(slot)
    p.delete(1)
    assert p.drain() == [(1000, EPOLLIN), (1002, EPOLLIN)]
    assert p.ring.stats()["skipped"] == 1
    assert p.head == p.tail == 3


@PROTOCOLS
def test_slot_reused_while_its_removed_entry_is_pending(rings, protocol: int) -> None:
    """DEL then ADD of a new owner in the same slot, then an event: the pending entry (still in
    the ring) carries the new owner's event and data, and no second entry is appended."""
    p = rings(protocol=protocol)
    p.publish(4)
    p.delete(4)
    p.register(4, EPOLLIN | EPOLLET, data=77)
    assert not p.publish(4, EPOLLIN)  # old != 0 (EPOLLREMOVED): no new entry
    assert int(p.items[4]["ready_events"]) == EPOLLIN  # REMOVED cleared by the OR
    assert p.drain() == [(77, EPOLLIN)]
    assert p.drain() == []


@PROTOCOLS
def test_masking_with_the_items_events(rings, protocol: int) -> None:
    p = rings(protocol=protocol)
    p.register(0, EPOLLIN | EPOLLET, data=10)
    p.register(1, EPOLLIN | EPOLLET, data=11)
    p.register(2, EPOLLOUT | EPOLLET, data=12)
    # Bits the item did not register for are dropped; ERR and HUP always count.
    p.publish(0, EPOLLIN | EPOLLOUT | EPOLLPRI | 0x400)
    p.publish(1, EPOLLOUT)  # nothing left after masking: consumed, skipped
    p.publish(2, EPOLLIN | EPOLLERR | EPOLLHUP)
    # ERR/HUP count even when the item's events lack them (a producer may not add them).
    p.items[3]["events"] = EPOLLIN | EPOLLET
    p.items[3]["data"] = 13
    p.publish(3, EPOLLHUP | EPOLLOUT)
    assert p.drain() == [(10, EPOLLIN), (12, EPOLLERR | EPOLLHUP), (13, EPOLLHUP)]
    assert p.ring.stats()["skipped"] == 1
    assert p.head == p.tail == 4
    assert not p.ring.items["ready_events"].any()


@PROTOCOLS
def test_zero_ready_events_entry_is_skipped(rings, protocol: int) -> None:
    p = rings(protocol=protocol)
    p.append(5 if protocol == 5 else 6)  # an entry whose item holds no bits
    p.publish(1)
    assert p.drain() == [(1001, EPOLLIN)]
    assert p.ring.stats()["skipped"] == 1


@PROTOCOLS
@pytest.mark.parametrize("start", [U32 - 3, U32 - 1, U32 - 8])
def test_head_and_tail_wrap_at_2_32(rings, protocol: int, start: int) -> None:
    p = rings(protocol=protocol, start=start)
    for slot in range(8):
        p.publish(slot)
    assert p.tail == (start + 8) % U32 < start  # wrapped
    got = p.drain(3)
    assert p.head == (start + 3) % U32
    got += p.drain(64)
    assert got == [(1000 + slot, EPOLLIN) for slot in range(8)]
    assert p.head == p.tail == (start + 8) % U32
    # And around again, past the wrap.
    for slot in (6, 2):
        p.publish(slot)
    assert p.drain() == [(1006, EPOLLIN), (1002, EPOLLIN)]


@PROTOCOLS
def test_index_ring_wraps_many_laps(rings, protocol: int) -> None:
    p = rings(max_items=4, protocol=protocol, start=U32 - 2500)
    slots = len(p.index)
    delivered = []
    for i in range(3 * slots):
        p.publish(i % 4)
        delivered += p.drain(2) if i % 3 == 2 else []
    delivered += p.drain(64)
    # Each slot has at most one entry pending, so ring order: publish order with repeats
    # folded into the pending entry.
    assert len(delivered) == p.ring.stats()["ring_events"]
    assert p.head == p.tail == (U32 - 2500 + p.ring.stats()["ring_events"]) % U32


def test_full_ring_is_not_corrupt(rings) -> None:
    """tail - head == ring size is legal (every slot pending); one more is corruption."""
    n = 1024  # index of 1024 u32 slots: one page
    p = rings(max_items=n, start=U32 - 10)
    assert len(p.index) == n
    for slot in range(n):
        p.publish(slot)
    assert (p.tail - p.head) % U32 == n
    got = p.drain(2 * n)
    assert [d for d, _ in got] == [1000 + s for s in range(n)]


@PROTOCOLS
def test_batch_limited_by_buffer_leaves_the_rest(rings, protocol: int) -> None:
    p = rings(protocol=protocol)
    for slot in range(7):
        p.publish(slot)
    assert [d for d, _ in p.drain(3)] == [1000, 1001, 1002]
    assert p.head == 3 and p.tail == 7
    assert int(p.ring.items[3]["ready_events"]) == EPOLLIN  # untouched
    assert [d for d, _ in p.drain(3)] == [1003, 1004, 1005]
    assert [d for d, _ in p.drain(3)] == [1006]
    assert p.drain(3) == []


@PROTOCOLS
def test_skipped_entries_do_not_count_against_the_buffer(rings, protocol: int) -> None:
    p = rings(protocol=protocol)
    for slot in range(6):
        p.publish(slot)
    for slot in (0, 1, 2):
        p.delete(slot)
    assert [d for d, _ in p.drain(2)] == [1003, 1004]
    assert [d for d, _ in p.drain(2)] == [1005]


def corrupt_index_value(protocol: int, slot: int) -> int:
    return slot if protocol == 5 else slot + 1


@PROTOCOLS
@pytest.mark.parametrize("bad_slot", [8, 9, 4000, U32 - 2])
def test_corrupt_slot_after_good_entries(rings, protocol: int, bad_slot: int) -> None:
    p = rings(max_items=8, protocol=protocol, start=100)
    p.publish(2)
    p.publish(6)
    p.append(corrupt_index_value(protocol, bad_slot))
    p.publish(1)  # behind the corrupt entry
    # The good events come first, never lost with the error...
    assert p.drain() == [(1002, EPOLLIN), (1006, EPOLLIN)]
    assert p.head == 102
    # ...and the corrupt one is reported by the next call, as often as it is asked.
    for _ in range(2):
        with pytest.raises(OSError) as info:
            p.drain()
        assert info.value.errno == errno.EBADMSG
        message = str(info.value)
        assert "corrupt" in message and "max_items 8" in message and "102" in message
        assert p.head == 102  # not consumed
    # Repairing the entry lets the consumer carry on with what follows it.
    p.index[102 % len(p.index)] = corrupt_index_value(protocol, 5)
    p.items[5]["ready_events"] = EPOLLIN
    assert p.drain() == [(1005, EPOLLIN), (1001, EPOLLIN)]


@PROTOCOLS
def test_corrupt_slot_first(rings, protocol: int) -> None:
    p = rings(protocol=protocol)
    p.append(corrupt_index_value(protocol, 8))  # max_items is 8: slots 0..7
    with pytest.raises(OSError) as info:
        p.drain()
    assert info.value.errno == errno.EBADMSG
    assert p.head == 0


@PROTOCOLS
def test_corrupt_slot_names_the_item(rings, protocol: int) -> None:
    """The message names the item (slot) number the entry points at, in both protocols."""
    p = rings(protocol=protocol)
    p.append(corrupt_index_value(protocol, 4000))
    with pytest.raises(OSError, match="names item 4000,"):
        p.drain()


@PROTOCOLS
@pytest.mark.parametrize("ahead", [1025, 2000, 2**31, U32 - 1])
def test_tail_too_far_ahead(rings, protocol: int, ahead: int) -> None:
    p = rings(protocol=protocol, start=U32 - 5)
    assert len(p.index) == 1024
    p.hdr["tail"] = (p.head + ahead) % U32
    for _ in range(2):
        with pytest.raises(OSError) as info:
            p.drain()
        assert info.value.errno == errno.EBADMSG
        assert "ahead of head" in str(info.value) and "corrupt" in str(info.value)
    assert p.head == U32 - 5
    p.hdr["tail"] = p.head  # repaired: an empty ring again
    assert p.drain() == []


def test_protocol3_reserved_but_unwritten_slot_does_not_hang(rings) -> None:
    p = rings(protocol=3)
    p.publish(0)
    p.publish(1)
    p.hdr["tail"] = p.tail + 1  # a reservation whose slot + 1 was never written
    started = time.monotonic()
    assert p.drain() == [(1000, EPOLLIN), (1001, EPOLLIN)]
    assert p.head == 2  # stops at the unwritten entry
    assert p.drain() == []  # gives up after a bounded spin, no error
    assert p.head == 2
    assert time.monotonic() - started < 5
    assert p.ring.stats()["slot_waits"] == 2  # both drains stopped at the unwritten slot
    # The producer finishes its write: the consumer picks it up.
    p.items[3]["ready_events"] = EPOLLIN
    p.index[2] = 3 + 1
    assert p.drain() == [(1003, EPOLLIN)]
    assert p.head == p.tail == 3


def test_ring_refuses_bad_headers() -> None:
    header, index = new_ring_buffers(8)
    np.frombuffer(header, "<u4")[0] = 0x12345678
    with pytest.raises(OSError) as info:
        Ring(header, index)
    assert info.value.errno == errno.EBADMSG
    for word, value in [(3, 0), (3, 1_000_000), (2, 12345), (2, 2 * len(index))]:
        header, index = new_ring_buffers(8)
        np.frombuffer(header, "<u4")[word] = value
        with pytest.raises(OSError) as info:
            Ring(header, index)
        assert info.value.errno == errno.EBADMSG, (word, value)
    with pytest.raises(ValueError):
        new_ring_buffers(0)
    with pytest.raises(ValueError):
        new_ring_buffers(65537)


def test_drain_refuses_wrong_buffers(rings) -> None:
    p = rings()
    for bad in (
        np.zeros(4, np.uint64),
        np.zeros((2, 2), EVENT_DTYPE),
        np.zeros(8, EVENT_DTYPE)[::2],
    ):
        with pytest.raises(TypeError):
            p.ring.drain(bad)


def test_ring_refuses_read_only_memory() -> None:
    """The consumer writes head (and, protocol 3, index slots): immutable memory is refused."""
    header, index = new_ring_buffers(8)
    for bad_header, bad_index in [
        (bytes(header), index),
        (header, bytes(index)),
        (memoryview(bytearray(header)).toreadonly(), index),
    ]:
        with pytest.raises(TypeError, match="writable"):
            Ring(bad_header, bad_index)


def test_ring_refuses_misaligned_memory() -> None:
    """Header words are read and written atomically: they must be naturally aligned."""
    header, index = new_ring_buffers(8)
    shifted = bytearray(len(header) + 1)
    shifted[1:] = header
    with pytest.raises(ValueError, match="aligned"):
        Ring(memoryview(shifted)[1:], index)
    shifted_index = bytearray(len(index) + 1)
    shifted_index[1:] = index
    with pytest.raises(ValueError, match="aligned"):
        Ring(header, memoryview(shifted_index)[1:])


def test_drain_refuses_read_only_buffers(rings) -> None:
    """drain() writes into its argument: never into immutable or read-only memory."""
    p = rings()
    p.publish(0)
    frozen = bytes(24)
    with pytest.raises(TypeError, match="writ"):
        p.ring.drain(np.frombuffer(frozen, EVENT_DTYPE))
    assert frozen == bytes(24)
    read_only = np.zeros(4, EVENT_DTYPE)
    read_only.flags.writeable = False
    with pytest.raises(TypeError, match="writ"):
        p.ring.drain(read_only)
    assert read_only.tobytes() == bytes(read_only.nbytes)
    with pytest.raises(TypeError):
        p.ring.drain(bytearray(24))  # type: ignore[arg-type]
    assert p.drain() == [(1000, EPOLLIN)]  # nothing was consumed by the refused calls
