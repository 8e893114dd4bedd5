"""The benchmark and load-test native module: load it, refuse a stale build.

``uring_epoll._bench_native`` holds the C producer threads, the latency pinger and the C
floors (``csrc/ue_bench.h``); the runtime module does not ship them. Its functions that drive
the runtime's consumer or emulator take :data:`RUNTIME`, the runtime module's table of entry
points, so the one copy of that code is the one Python uses.
"""

from __future__ import annotations

from typing import Any

from ._native_lib import lib as runtime_lib
from ._native_lib import load_module

#: Must equal UE_BENCH_VERSION in csrc/ue_bench.h.
EXPECTED_BENCH_VERSION = 2

_bench = load_module("_bench_native", "UE_BENCH_VERSION", EXPECTED_BENCH_VERSION)
ffi: Any = _bench.ffi
lib: Any = _bench.lib
# It lays out the runtime's structs as they were when it was compiled: they must still be.
if lib.UE_BENCH_RUNTIME_VERSION != runtime_lib.UE_NATIVE_VERSION:  # pragma: no cover
    raise ImportError(
        f"stale uring_epoll benchmark build: compiled against runtime interface "
        f"{lib.UE_BENCH_RUNTIME_VERSION}, the runtime module has "
        f"{runtime_lib.UE_NATIVE_VERSION}; rebuild with `pip install .`"
    )

#: The runtime module's entry points (``const struct ue_runtime *``), for the functions here
#: that call its consumer or its emulator.
RUNTIME: Any = runtime_lib.ue_runtime_table()

__all__ = ["EXPECTED_BENCH_VERSION", "RUNTIME", "ffi", "lib"]
