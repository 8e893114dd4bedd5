"""The kernel-mode consumer never spins on ESTALE without progress (issue 10 item 8).

``epoll_wait(epfd, NULL, 0, t)`` on an EPOLL_USERPOLL epfd returns ESTALE when the kernel sees
entries in the ring. If the ring mapped here is not the one the kernel fills (seen in fork
children under User-Mode Linux, whose host address space kept the parent's ring pages), every
sleep ends in ESTALE at once while the ring here stays empty: a CPU-burning loop until the
timeout, or forever. The consumer must give up with an error saying so.

The host has no EPOLL_USERPOLL kernel, so a seccomp filter plays it, in a child process: every
``epoll_wait`` with maxevents 0 fails with ESTALE, whatever the ring holds.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import textwrap

import pytest

from uring_epoll._native_lib import lib

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or platform.machine() != "x86_64",
    reason="the seccomp fake filters x86_64 system call numbers",
)

CHILD = textwrap.dedent(
    """
    import ctypes, errno, json, select, time
    import numpy as np
    from uring_epoll import abi
    from uring_epoll._native_lib import ffi, lib
    from uring_epoll.backends.base import RingMemory
    from uring_epoll.ring import new_ring_buffers

    class Insn(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8),
                    ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Insn))]

    # epoll_wait (232) with maxevents (args[2], at offset 32) == 0: ESTALE; all else allowed.
    code = [(0x20, 0, 0, 0), (0x15, 0, 3, 232), (0x20, 0, 0, 32), (0x15, 0, 1, 0),
            (0x06, 0, 0, 0x00050000 | errno.ESTALE), (0x06, 0, 0, 0x7FFF0000)]
    insns = (Insn * len(code))(*(Insn(*c) for c in code))
    prog = Prog(len(code), insns)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) or libc.prctl(22, 2, ctypes.byref(prog), 0, 0):
        print(json.dumps({"skip": f"seccomp unavailable: errno {ctypes.get_errno()}"}))
        raise SystemExit(0)

    ep = select.epoll()
    header, index = new_ring_buffers(8)
    ring = RingMemory()
    ring._attach(header, index, abi.PROTOCOL_V5, lib.UE_WAIT_KERNEL, ep.fileno(), None, 0)
    out = ffi.new("char[]", 12 * 8)
    start = time.monotonic()
    ret = lib.ue_poll(ring.consumer, out, ffi.NULL, 8, TIMEOUT_NS)
    elapsed = time.monotonic() - start
    result = {"ret": ret, "elapsed": elapsed, "stats": ring.stats()}
    if ret == -errno.EBADMSG:
        result["error"] = str(ring.corrupt_error())
    # The bound holds across calls too: the next poll fails again, and a zero timeout
    # (which never sleeps) just finds the ring empty.
    result["again"] = lib.ue_poll(ring.consumer, out, ffi.NULL, 8, TIMEOUT_NS)
    result["zero"] = lib.ue_poll(ring.consumer, out, ffi.NULL, 8, 0)
    print(json.dumps(result))
    """
)


def run_child(timeout_ns: int) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD.replace("TIMEOUT_NS", str(timeout_ns))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    # Under tests/test_sanitizers.py the child loads the sanitizer build: its reports count.
    assert "Sanitizer" not in proc.stderr and "runtime error:" not in proc.stderr, proc.stderr
    result: dict = json.loads(proc.stdout.splitlines()[-1])
    if "skip" in result:
        pytest.skip(result["skip"])
    return result


@pytest.mark.parametrize("timeout_ns", [-1, 5_000_000_000])
def test_endless_estale_on_an_empty_ring_is_an_error(timeout_ns: int) -> None:
    """Before the bound: a 5 s poll spun 5 s through ESTALE returns and returned nothing, and
    poll(None) never returned. Now both fail at once with EBADMSG, naming the disagreement."""
    r = run_child(timeout_ns)
    assert r["ret"] == -74, r  # -EBADMSG
    assert r["stats"]["estale"] == lib.UE_ESTALE_STUCK
    assert r["elapsed"] < 2.0
    assert "ESTALE" in r["error"] and "disagree" in r["error"], r["error"]
    assert r["again"] == -74
    assert r["zero"] == 0
