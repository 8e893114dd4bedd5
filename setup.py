"""cffi needs setup.py for ``cffi_modules``; all metadata lives in pyproject.toml."""

from setuptools import setup

setup(
    cffi_modules=[
        # The runtime module: the consumer, the userspace producer, system call wrappers.
        "uring_epoll/_native_build.py:ffibuilder",
        # Benchmark and load-test producers, kept out of the runtime module.
        "uring_epoll/_bench_native_build.py:ffibuilder",
    ]
)
