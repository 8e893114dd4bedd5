"""The exceptions of the kernel tooling.

They live apart from the code that raises them so that every layer (source, cache, build, the
vehicles that boot a build) and its callers can catch them without importing each other.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "KernelBuildError",
    "KernelCacheError",
    "KernelRunError",
    "KernelSeriesError",
    "KernelSourceError",
    "KernelTimeout",
]


class KernelBuildError(RuntimeError):
    """The kernel could not be obtained or built; the message says why."""


class KernelSeriesError(KernelBuildError):
    """The patch series is incomplete: its ``series`` file, a patch it lists or its config
    fragment is missing (``path`` names which). Nothing is built from such a series, since the
    result would be a kernel without the patches the package is about."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        #: The file that is missing.
        self.path = path


class KernelCacheError(KernelBuildError):
    """A cached build is damaged (truncated, emptied, changed, incomplete): the message says
    what is wrong and how to get a good one. ``kernel build`` replaces such an entry."""


class KernelSourceError(KernelBuildError):
    """The source or the build tools are missing and cannot be installed here (no apt, not root,
    apt failing): the machine cannot build, as opposed to a build that fails."""


class KernelRunError(RuntimeError):
    """The kernel booted but did not report the command's exit status."""


class KernelTimeout(KernelRunError):
    """The guest did not power off in time (hang or panic); it was killed."""

    #: The process group the guest ran in (all of it was killed); lets tests check nothing
    #: survived.
    pgid: int = 0
