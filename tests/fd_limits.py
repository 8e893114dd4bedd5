"""Tests that open thousands of descriptors raise RLIMIT_NOFILE for their duration."""

from __future__ import annotations

import contextlib
import resource
from collections.abc import Iterator

import pytest


@contextlib.contextmanager
def raised_nofile(need: int) -> Iterator[None]:
    """RLIMIT_NOFILE's soft limit raised to at least ``need`` (to the hard limit where there
    is one), restored afterwards; a hard limit below ``need`` fails the test."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.fail(f"RLIMIT_NOFILE hard limit {hard} < {need} needed")
    # An infinite hard limit cannot be a soft one (fs.nr_open caps it): ask for what we need.
    target = max(soft, need) if hard == resource.RLIM_INFINITY else hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
