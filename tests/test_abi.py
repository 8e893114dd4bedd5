"""The ABI layer (uring_epoll.abi) against spec/userpoll-abi.md: layouts, lengths, constants.

These numbers are shared with the kernel (kernel_patches/) and the C consumer (csrc/ue.h); a
change here is an ABI break, so every offset is spelled out rather than derived.
"""

from __future__ import annotations

import mmap

import numpy as np
import pytest
from backends import ALL, AVAILABLE, REQUIRE_KERNEL, USERPOLL, kernel_missing_reason

import uring_epoll
from uring_epoll import abi
from uring_epoll.ring import Ring, new_ring_buffers

PAGE = mmap.PAGESIZE


def fields(dt: np.dtype) -> dict[str, tuple[str, int]]:
    return {name: (dt.fields[name][0].str, dt.fields[name][1]) for name in dt.names}


def test_header_dtype() -> None:
    dt = abi.HEADER_DTYPE
    assert dt.itemsize == 128 == abi.HEADER_SIZE
    assert fields(dt) == {
        "magic": ("<u4", 0),
        "header_length": ("<u4", 4),
        "index_length": ("<u4", 8),
        "max_items_nr": ("<u4", 12),
        "head": ("<u4", 16),
        "tail": ("<u4", 20),
        "repoll": ("<u4", 24),
    }
    assert dt.names == (
        "magic",
        "header_length",
        "index_length",
        "max_items_nr",
        "head",
        "tail",
        "repoll",
    )


def test_item_dtype() -> None:
    dt = abi.ITEM_DTYPE
    assert dt.itemsize == 16 == abi.ITEM_SIZE
    assert fields(dt) == {
        "ready_events": ("<u4", 0),
        "events": ("<u4", 4),
        "data": ("<u8", 8),
    }


def test_index_dtype() -> None:
    assert abi.INDEX_DTYPE.str == "<u4"
    assert abi.INDEX_DTYPE.itemsize == 4


def test_event_dtype_is_the_packed_epoll_event() -> None:
    dt = abi.EVENT_DTYPE
    assert dt.itemsize == 12  # packed on x86_64: data is not 8-byte aligned
    assert fields(dt) == {"events": ("<u4", 0), "data": ("<u8", 4)}
    assert uring_epoll.EVENT_DTYPE == dt == uring_epoll.epoll.EVENT_DTYPE
    raw = np.zeros(2, dt)
    raw[1] = (0x11223344, 0x0102030405060708)
    assert raw.tobytes()[12:] == bytes.fromhex("443322110807060504030201")


def test_public_dtypes_are_the_abi_ones() -> None:
    assert uring_epoll.HEADER_DTYPE is abi.HEADER_DTYPE
    assert uring_epoll.ITEM_DTYPE is abi.ITEM_DTYPE
    assert uring_epoll.INDEX_DTYPE is abi.INDEX_DTYPE


def test_constants() -> None:
    assert abi.EPOLLREMOVED == 1 << 27 == uring_epoll.EPOLLREMOVED
    assert abi.USERPOLL_MAGIC == 0xEB01EB01
    assert abi.EPOLL_USERPOLL == 1
    assert abi.EPOLL_CLOEXEC == 0o2000000
    assert abi.MAX_ITEMS_LIMIT == 65536
    assert (abi.EPOLL_CTL_ADD, abi.EPOLL_CTL_DEL, abi.EPOLL_CTL_MOD) == (1, 2, 3)
    # EPOLLREMOVED must not collide with any bit epoll itself defines.
    for name in (
        "EPOLLIN",
        "EPOLLPRI",
        "EPOLLOUT",
        "EPOLLERR",
        "EPOLLHUP",
        "EPOLLRDHUP",
        "EPOLLEXCLUSIVE",
        "EPOLLONESHOT",
        "EPOLLET",
        "EPOLLMSG",
    ):
        assert not getattr(abi, name) & abi.EPOLLREMOVED, name
    assert abi.EPOLLWAKEUP == 1 << 29


def test_protocols() -> None:
    assert abi.PROTOCOL_V5 == 5
    assert abi.PROTOCOL_V3 == 3
    assert set(abi.PROTOCOLS) == {5, 3}
    assert abi.PROTOCOLS[0] == 5  # the default comes first
    for bad in (0, 1, 2, 4, 6):
        with pytest.raises(ValueError):
            Ring(*new_ring_buffers(4), protocol=bad)


def spec_header_length(n: int) -> int:
    size = 128 + 16 * n
    return (size + PAGE - 1) // PAGE * PAGE  # PAGE_ALIGN


def spec_index_length(n: int) -> int:
    pow2 = 1
    while pow2 < 4 * n:
        pow2 *= 2
    return max(pow2, PAGE)  # max(roundup_pow_of_two(4N), PAGE_SIZE)


@pytest.mark.parametrize(
    "n", [1, 2, 7, 248, 249, 250, 255, 256, 1000, 1024, 1025, 4096, 16384, 65535, 65536]
)
def test_lengths_follow_the_spec_formulas(n: int) -> None:
    assert abi.header_length(n) == spec_header_length(n)
    assert abi.index_length(n) == spec_index_length(n)


def test_length_boundaries() -> None:
    # 248 items fill one page exactly with the header (128 + 16 * 248 == 4096).
    assert abi.header_length(248) == PAGE
    assert abi.header_length(249) == 2 * PAGE
    assert abi.index_length(1024) == PAGE
    assert abi.index_length(1025) == 2 * PAGE
    assert abi.index_length(65536) == 256 * 1024


@pytest.mark.parametrize("n", [1, 248, 249, 1025, 65536])
def test_hand_built_ring_header(n: int) -> None:
    header, index = new_ring_buffers(n)
    assert len(header) == spec_header_length(n) and len(index) == spec_index_length(n)
    h = np.frombuffer(header, "<u4", count=6)
    assert h.tolist() == [0xEB01EB01, len(header), len(index), n, 0, 0]
    ring = Ring(header, index)
    try:
        assert ring.max_items == n
        assert len(ring.items) == n and len(ring.index) == len(index) // 4
    finally:
        ring.close()


@pytest.mark.parametrize("backend", USERPOLL)
@pytest.mark.parametrize("n", [1, 249, 1025])
def test_backend_rings_have_the_spec_geometry(backend: str, n: int) -> None:
    with uring_epoll.epoll(backend=backend, max_items=n) as ep:
        h = ep.header
        assert int(h["magic"]) == abi.USERPOLL_MAGIC
        assert int(h["header_length"]) == spec_header_length(n)
        assert int(h["index_length"]) == spec_index_length(n)
        assert int(h["max_items_nr"]) == n
        assert int(h["head"]) == int(h["tail"]) == 0
        assert len(ep.items) == n
        assert len(ep.index) == spec_index_length(n) // 4
        assert ep.protocol == 5 and ep.max_items == n


def test_backend_list() -> None:
    # AVAILABLE, not ALL: URING_EPOLL_TEST_BACKENDS may narrow what the run tests.
    assert "epoll" in AVAILABLE and "thread" in AVAILABLE
    assert set(ALL) <= {"kernel", "thread", "uring", "epoll"}


def test_required_kernel_backend_is_available() -> None:
    """URING_EPOLL_REQUIRE_KERNEL=1 (inside our UML kernel): a missing kernel backend fails."""
    names = uring_epoll.available_backends()
    statuses = uring_epoll.backend_status()
    assert names == [s.name for s in statuses.values() if s.available]
    if REQUIRE_KERNEL:
        assert "kernel" in names, f"kernel backend required: {kernel_missing_reason()}"
