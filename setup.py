"""cffi needs setup.py for ``cffi_modules``; the metadata lives in pyproject.toml.

The package list is here too, because one package is not found by walking ``uring_epoll/``:
``uring_epoll.kernel_patches`` is the repository's top-level ``kernel_patches/`` (the Linux
patch series, its config fragment and README), mapped into the package so that a wheel carries
it and ``uring_epoll.kernel.patches_dir()`` finds it through importlib.resources. Every other
package is found, so a new subpackage cannot be left out of the wheel.
"""

from setuptools import find_namespace_packages, setup

PATCHES_PACKAGE = "uring_epoll.kernel_patches"

setup(
    # Namespace-style discovery: csrc/ (C sources, no __init__.py) is a package-data directory.
    packages=[
        *find_namespace_packages(
            include=["uring_epoll", "uring_epoll.*"], exclude=["*.__pycache__"]
        ),
        PATCHES_PACKAGE,
    ],
    package_dir={PATCHES_PACKAGE: "kernel_patches"},
    package_data={
        "uring_epoll": ["py.typed", "csrc/*.c", "csrc/*.h"],
        # Everything in kernel_patches/: series, patches, um.config, README.
        PATCHES_PACKAGE: ["*"],
    },
    cffi_modules=[
        # The runtime module: the consumer, the userspace producer, system call wrappers.
        "uring_epoll/_native_build.py:ffibuilder",
        # Benchmark and load-test producers, kept out of the runtime module.
        "uring_epoll/_bench_native_build.py:ffibuilder",
    ],
)
