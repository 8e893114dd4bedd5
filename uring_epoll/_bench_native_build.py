"""cffi API-mode builder for ``uring_epoll._bench_native``, the benchmark and load-test module.

Producer threads, the latency pinger and the C floors live here, out of the runtime module.
The module's interface is ``csrc/ue_bench.h``, read the way ``_native_build.py`` reads
``ue.h``, with the same compiler flags. It includes the runtime's cdef (``ffi.include``): the
types of ``ue.h`` are shared, and importing this module imports ``uring_epoll._native`` first.
What it calls in the runtime (the consumer, the emulator's inject) it reaches through the
runtime's table of entry points, so neither is compiled in twice.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType


def _runtime_builder() -> ModuleType:
    # setuptools runs build scripts by path, with no package to import from: load the runtime
    # builder the same way (its ffibuilder is the one this module includes).
    path = Path(__file__).resolve().parent / "_native_build.py"
    spec = importlib.util.spec_from_file_location("_uring_epoll_native_build", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the runtime module's builder from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


runtime = _runtime_builder()

HEADER = runtime.CSRC / "ue_bench.h"
SOURCES = ["bench.c", "latency.c", "producers.c"]

ffibuilder = runtime.FFI()
ffibuilder.include(runtime.ffibuilder)
runtime.cdef_from_header(ffibuilder, HEADER)
ffibuilder.set_source(
    "uring_epoll._bench_native",
    runtime.module_prelude("_bench_native", HEADER.name),
    sources=runtime.sources(SOURCES),
    include_dirs=[str(runtime.CSRC.relative_to(runtime.HERE.parent))],
    extra_compile_args=runtime.CFLAGS,
    extra_link_args=runtime.LDFLAGS,
    libraries=["pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
