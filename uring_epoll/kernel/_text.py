"""Small text helpers shared by the build and the vehicles."""

from __future__ import annotations

from pathlib import Path


def tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of the text file ``path`` ("" when it cannot be read).

    Only the last 64 KiB are read: build and console logs run to megabytes, and an error
    message needs their end only.
    """
    try:
        data = path.read_bytes()[-65536:]
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])
