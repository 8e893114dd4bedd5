"""The ABI layer: dtypes, offsets and constants exactly as in the spec."""

from __future__ import annotations

import mmap

import pytest

from uring_epoll import abi


def test_header_layout() -> None:
    dt = abi.HEADER_DTYPE
    assert dt.itemsize == 128
    offsets = {name: dt.fields[name][1] for name in dt.names}
    assert offsets == {
        "magic": 0, "header_length": 4, "index_length": 8, "max_items_nr": 12,
        "head": 16, "tail": 20,
    }
    assert all(dt.fields[n][0].str == "<u4" for n in dt.names)


def test_item_layout() -> None:
    dt = abi.ITEM_DTYPE
    assert dt.itemsize == 16
    assert {n: (dt.fields[n][0].str, dt.fields[n][1]) for n in dt.names} == {
        "ready_events": ("<u4", 0), "events": ("<u4", 4), "data": ("<u8", 8),
    }


def test_index_and_event_layout() -> None:
    assert abi.INDEX_DTYPE.itemsize == 4 and abi.INDEX_DTYPE.str == "<u4"
    dt = abi.EVENT_DTYPE
    # Packed x86_64 struct epoll_event: data is not 8-byte aligned.
    assert dt.itemsize == 12
    assert dt.fields["events"][1] == 0 and dt.fields["data"][1] == 4


def test_constants() -> None:
    assert abi.EPOLLREMOVED == 1 << 27
    assert abi.USERPOLL_MAGIC == 0xEB01EB01
    assert abi.EPOLL_USERPOLL == 1
    assert abi.PROTOCOLS == (5, 3)
    assert abi.MAX_ITEMS_LIMIT == 65536


@pytest.mark.parametrize("n", [1, 7, 248, 249, 1024, 65536])
def test_lengths(n: int) -> None:
    page = mmap.PAGESIZE
    hl = abi.header_length(n)
    assert hl % page == 0 and hl >= 128 + 16 * n and hl - (128 + 16 * n) < page
    il = abi.index_length(n)
    assert il >= page and il & (il - 1) == 0 and il >= 4 * n
    assert il == page or il // 2 < 4 * n
