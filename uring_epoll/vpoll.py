"""vpoll: file descriptors whose epoll readiness user code sets.

A library that implements a network stack or a device in user space hands out a vpoll fd in
place of a socket, and raises EPOLLIN, EPOLLOUT, EPOLLHUP... on it, so that unmodified
poll/select/epoll code waits on it. Three implementations, picked in this order:

- ``eventfd``: ``eventfd2(initval, EFD_VPOLL)`` of the patched kernel. Commands are 8-byte
  writes (ADD/DEL/MOD in the high bits, events below bit 28); a read returns the set.
- ``device``: ``/dev/vpoll`` of the patched kernel, driven by ioctls that return the new set.
- ``emulation``: any kernel. A non-blocking AF_UNIX socketpair; the user gets one end. EPOLLIN
  is one byte waiting on it, EPOLLOUT is "its sends would not block", EPOLLHUP is shutting the
  hidden end down, which the kernel reports as IN|HUP|RDHUP (0x2011) and which cannot be
  undone. Other events cannot be produced this way: asking for them is a ValueError. The
  state is read back from the socket itself, so ADD and DEL are idempotent (the reference C
  library counts bytes instead) and a forked child driving the fd stays consistent with
  its parent. The user must not read from or write to the fd: it is a readiness source only.

Detection runs once per process; ``impl=`` or ``URING_EPOLL_VPOLL`` forces one, and a forced
implementation that is not available is an OSError saying why. Detection never writes a vpoll
command to an ordinary eventfd (an unpatched kernel would just add it to the counter): the
probe is the EINVAL an unpatched kernel gives ``eventfd2`` for the EFD_VPOLL flag.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import socket
import struct
import threading
from typing import Any

from . import abi

#: Operations, as in the reference library: ``op << 32`` is the EFD_VPOLL command and
#: ``_IO('^', op)`` the /dev/vpoll ioctl.
VPOLL_CTL_ADD = 1
VPOLL_CTL_DEL = 2
VPOLL_CTL_SET = 3
ADD, DEL, SET = VPOLL_CTL_ADD, VPOLL_CTL_DEL, VPOLL_CTL_SET
OPS = {ADD: "ADD", DEL: "DEL", SET: "SET"}

EFD_VPOLL = 1 << 1
EFD_VPOLL_ADDEVENTS = VPOLL_CTL_ADD << 32
EFD_VPOLL_DELEVENTS = VPOLL_CTL_DEL << 32
EFD_VPOLL_MODEVENTS = VPOLL_CTL_SET << 32
VPOLL_IO_ADDEVENTS = 0x5E01
VPOLL_IO_DELEVENTS = 0x5E02
VPOLL_IO_SETEVENTS = 0x5E03
DEVICE_PATH = "/dev/vpoll"

#: Event bits a vpoll set may hold (bits 28..31 are reserved and always refused).
VALID_EVENTS = (1 << 28) - 1

IMPLEMENTATIONS = ("eventfd", "device", "emulation")
VPOLL_ENV = "URING_EPOLL_VPOLL"

EMULATED_EVENTS = abi.EPOLLIN | abi.EPOLLOUT | abi.EPOLLHUP
#: What the kernel reports for the emulation's hangup.
EMULATED_HUP = abi.EPOLLIN | abi.EPOLLHUP | abi.EPOLLRDHUP

_detected: str | None = None
_detect_lock = threading.Lock()
_reasons: dict[str, str] = {}


def _probe_eventfd() -> str:
    """'' if EFD_VPOLL works, else why not. Creates (and closes) a vpoll eventfd only."""
    try:
        fd = os.eventfd(0, EFD_VPOLL | os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return f"kernel {os.uname().release} has no EFD_VPOLL (eventfd2 says EINVAL)"
        return f"eventfd2(EFD_VPOLL) failed: {exc.strerror}"
    os.close(fd)
    return ""


def _probe_device() -> str:
    try:
        fd = os.open(DEVICE_PATH, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return f"{DEVICE_PATH} does not exist (no vpoll device in this kernel)"
    except OSError as exc:
        return f"cannot open {DEVICE_PATH}: {exc.strerror}"
    os.close(fd)
    return ""


def implementation_status() -> dict[str, str]:
    """Every implementation with '' if it works here, else the reason it does not."""
    return {"eventfd": _probe_eventfd(), "device": _probe_device(), "emulation": ""}


def describe_implementations() -> str:
    """One line for ``uring-epoll info``."""
    parts = []
    for name, why in implementation_status().items():
        parts.append(name if not why else f"{name} (no: {why})")
    return f"{detect()} in use; " + ", ".join(parts)


def detect() -> str:
    """The implementation used by default: the environment override, else the first that works
    (probed once per process)."""
    global _detected
    forced = os.environ.get(VPOLL_ENV)
    if forced:
        return _check_forced(forced)
    with _detect_lock:
        if _detected is None:
            for name in IMPLEMENTATIONS:
                why = implementation_status()[name] if name != "emulation" else ""
                if not why:
                    _detected = name
                    break
                _reasons[name] = why
        return _detected or "emulation"


def _check_forced(name: str) -> str:
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"unknown vpoll implementation {name!r}; choose one of "
                         f"{', '.join(IMPLEMENTATIONS)}")
    why = implementation_status()[name]
    if why:
        raise OSError(errno.ENODEV, f"vpoll implementation {name!r} is not available: {why}")
    return name


def check_events(events: Any) -> int:
    """Validate an event set: an int in 0..2**28-1 (bits 28..31 are reserved)."""
    if isinstance(events, bool) or not isinstance(events, int):
        raise TypeError(f"events must be an int, not {type(events).__name__}")
    if events < 0 or events > 0xFFFFFFFF:
        raise ValueError(f"events must be a 32-bit unsigned set, got {events:#x}")
    if events & ~VALID_EVENTS:
        raise ValueError(f"event bits 28..31 are reserved (got {events:#x})")
    return events


def check_op(op: Any) -> int:
    if op not in OPS:
        raise ValueError(f"unknown vpoll op {op!r}; use ADD (1), DEL (2) or SET (3)")
    return int(op)


class VPoll:
    """A vpoll event source. ``fileno()`` is what poll/select/epoll watch.

    Args:
        events: the initial event set.
        impl: ``"eventfd"``, ``"device"``, ``"emulation"``, or None for the detected one.
    """

    def __init__(self, events: int = 0, *, impl: str | None = None) -> None:
        events = check_events(events)
        self.impl = _check_forced(impl) if impl is not None else detect()
        self._lock = threading.Lock()
        self._closed = False
        self._hidden: socket.socket | None = None
        self._device_events = 0
        self._user: socket.socket | None = None
        if self.impl == "eventfd":
            self._fd = os.eventfd(events, EFD_VPOLL | os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        elif self.impl == "device":
            self._fd = os.open(DEVICE_PATH, os.O_RDWR | os.O_CLOEXEC)
            try:
                if events:
                    self._ioctl(SET, events)
            except BaseException:
                os.close(self._fd)
                raise
        else:
            self._check_emulable(events)
            user, hidden = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            user.setblocking(False)
            hidden.setblocking(False)
            # Small buffers: clearing EPOLLOUT means filling them.
            user.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            hidden.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            self._user, self._hidden = user, hidden
            self._fd = user.fileno()
            self._emulate(SET, events)

    # ---- the public surface ------------------------------------------------------------------

    def fileno(self) -> int:
        self._check_open()
        return self._fd

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def events(self) -> int:
        """The current event set."""
        self._check_open()
        if self.impl == "eventfd":
            return struct.unpack("=Q", os.read(self._fd, 8))[0]
        if self.impl == "device":
            # No ioctl reads the set without waking watchers: report the last one returned.
            return self._device_events
        return self._emulated_state()

    def add(self, events: int) -> int:
        """OR *events* into the set; returns the new set."""
        return self.ctl(ADD, events)

    def delete(self, events: int) -> int:
        """Clear *events* from the set; returns the new set."""
        return self.ctl(DEL, events)

    def set(self, events: int) -> int:
        """Replace the set with *events*; returns the new set."""
        return self.ctl(SET, events)

    def ctl(self, op: int, events: int) -> int:
        """ADD (1), DEL (2) or SET (3) *events*; returns the new set."""
        op = check_op(op)
        events = check_events(events)
        self._check_open()
        if self.impl == "eventfd":
            os.write(self._fd, struct.pack("=Q", (op << 32) | events))
            return struct.unpack("=Q", os.read(self._fd, 8))[0]
        if self.impl == "device":
            return self._ioctl(op, events)
        with self._lock:
            return self._emulate(op, events)

    def close(self) -> None:
        """Close the fd (a registration in an epoll goes with it). Idempotent."""
        if self._closed:
            return
        self._closed = True
        _registry.pop(self._fd, None)
        if self._user is not None:
            self._user.close()
            assert self._hidden is not None
            self._hidden.close()
        else:
            os.close(self._fd)

    def __enter__(self) -> VPoll:
        self._check_open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self._fd} events={self.events:#x}"
        return f"<VPoll {self.impl} {state}>"

    # ---- internals -----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("I/O operation on closed vpoll object")

    def _ioctl(self, op: int, events: int) -> int:
        request = {ADD: VPOLL_IO_ADDEVENTS, DEL: VPOLL_IO_DELEVENTS, SET: VPOLL_IO_SETEVENTS}[op]
        self._device_events = fcntl.ioctl(self._fd, request, events)
        return self._device_events

    @staticmethod
    def _check_emulable(events: int) -> None:
        extra = events & ~(EMULATED_EVENTS | abi.EPOLLRDHUP)
        if extra:
            raise ValueError(
                f"the vpoll emulation cannot produce events {extra:#x}: it has EPOLLIN, "
                "EPOLLOUT and EPOLLHUP only (kernel vpoll has them all)"
            )

    def _poll_user_end(self) -> int:
        p = select.poll()
        p.register(self._fd, select.POLLIN | select.POLLOUT | select.POLLRDHUP)
        got = p.poll(0)
        return got[0][1] if got else 0

    def _emulated_state(self) -> int:
        revents = self._poll_user_end()
        if revents & select.POLLHUP:
            return EMULATED_HUP | (abi.EPOLLOUT if revents & select.POLLOUT else 0)
        state = 0
        if revents & select.POLLIN:
            state |= abi.EPOLLIN
        if revents & select.POLLOUT:
            state |= abi.EPOLLOUT
        return state

    def _emulate(self, op: int, events: int) -> int:
        """Make the socket show the requested set. Called with self._lock held."""
        assert self._user is not None and self._hidden is not None
        self._check_emulable(events)
        current = self._emulated_state()
        if current & abi.EPOLLHUP:
            raise BrokenPipeError(
                errno.EPIPE, "the vpoll emulation has hung up (EPOLLHUP cannot be undone); "
                "no further changes are possible")
        if events & abi.EPOLLRDHUP and not events & abi.EPOLLHUP and op != DEL:
            raise ValueError("the vpoll emulation raises EPOLLRDHUP only with EPOLLHUP")
        if op == ADD:
            wanted = current | events
        elif op == DEL:
            wanted = current & ~events
        else:
            wanted = events
        wanted &= EMULATED_EVENTS
        if wanted & abi.EPOLLOUT and not current & abi.EPOLLOUT:
            self._drain(self._hidden)  # room again: the user end becomes writable
        if wanted & abi.EPOLLIN and not current & abi.EPOLLIN:
            self._hidden.send(b"\0", socket.MSG_NOSIGNAL)
        if not wanted & abi.EPOLLIN and current & abi.EPOLLIN:
            self._drain(self._user)
        if not wanted & abi.EPOLLOUT and current & abi.EPOLLOUT:
            self._fill(self._user)
        if wanted & abi.EPOLLHUP:
            # Reported by the kernel as IN|HUP|RDHUP on the user end; irreversible.
            self._hidden.shutdown(socket.SHUT_RDWR)
        return self._emulated_state()

    @staticmethod
    def _drain(sock: socket.socket) -> None:
        while True:
            try:
                if not sock.recv(65536):
                    return
            except BlockingIOError:
                return

    @staticmethod
    def _fill(sock: socket.socket) -> None:
        chunk = b"\0" * 1024
        while True:
            try:
                sock.send(chunk, socket.MSG_NOSIGNAL)
            except BlockingIOError:
                break
        # The last bytes may fit once the peer's queue accounting settles: fill to the brim.
        while True:
            try:
                sock.send(b"\0", socket.MSG_NOSIGNAL)
            except BlockingIOError:
                return


vpoll = VPoll

# ---- the functional API of the reference C library ---------------------------------------------

_registry: dict[int, VPoll] = {}


def vpoll_create(init_events: int = 0, flags: int = 0) -> int:
    """Create a vpoll source; returns its fd (close it with :func:`vpoll_close`).

    *flags* may hold ``os.O_CLOEXEC`` (always set anyway); anything else is a ValueError.
    """
    if flags & ~os.O_CLOEXEC:
        raise ValueError(f"unsupported vpoll_create flags {flags:#x} (only O_CLOEXEC)")
    source = VPoll(init_events)
    _registry[source.fileno()] = source
    return source.fileno()


def _lookup(fd: int) -> VPoll:
    source = _registry.get(fd)
    if source is None or source.closed:
        raise OSError(errno.EBADF, f"fd {fd} is not a vpoll fd created by vpoll_create")
    return source


def vpoll_ctl(fd: int, op: int, events: int) -> int:
    """ADD/DEL/SET *events* on a vpoll fd; returns the new set."""
    return _lookup(fd).ctl(op, events)


def vpoll_close(fd: int) -> None:
    """Close a vpoll fd made by :func:`vpoll_create`."""
    _lookup(fd).close()


__all__ = [
    "ADD", "DEL", "EFD_VPOLL", "EFD_VPOLL_ADDEVENTS", "EFD_VPOLL_DELEVENTS",
    "EFD_VPOLL_MODEVENTS", "IMPLEMENTATIONS", "SET", "VALID_EVENTS", "VPOLL_CTL_ADD",
    "VPOLL_CTL_DEL", "VPOLL_CTL_SET", "VPOLL_IO_ADDEVENTS", "VPOLL_IO_DELEVENTS",
    "VPOLL_IO_SETEVENTS", "VPoll", "describe_implementations", "detect",
    "implementation_status", "vpoll", "vpoll_close", "vpoll_create", "vpoll_ctl",
]
