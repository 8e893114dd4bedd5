"""cffi needs setup.py for ``cffi_modules``; all metadata lives in pyproject.toml."""

from setuptools import setup

setup(cffi_modules=["uring_epoll/_native_build.py:ffibuilder"])
