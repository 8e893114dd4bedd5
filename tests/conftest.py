"""Shared pytest configuration: say which backends and kernel this run exercises."""

from __future__ import annotations

import os

import uring_epoll


def pytest_report_header(config: object) -> list[str]:
    statuses = uring_epoll.backend_status()
    lines = [f"kernel: {os.uname().release}"]
    for status in statuses.values():
        lines.append(
            f"backend {status.name}: "
            + ("available" if status.available else f"unavailable ({status.reason})")
        )
    if os.environ.get("URING_EPOLL_IN_UML"):
        lines.append("running inside the patched User-Mode Linux kernel")
    return lines
