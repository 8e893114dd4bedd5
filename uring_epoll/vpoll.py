"""vpoll: file descriptors whose poll/epoll readiness is set by user code.

A library that implements a device or a network stack in userspace hands out a vpoll fd in
place of a real one and raises EPOLLIN, EPOLLOUT, EPOLLHUP... on it, so that unmodified
``select``/``poll``/``epoll`` code works (Renzo Davoli's 2019 proposal; see ``spec/vpoll.md``).

Three implementations, auto-detected once per process in this order:

``eventfd``
    ``eventfd2(initval, EFD_VPOLL)`` on our patched kernel. A write of 8 bytes is a command
    (``op << 32 | events``); a read of 8 bytes returns the current set without consuming it.
``device``
    ``/dev/vpoll`` on our patched kernel: ``ioctl(fd, _IO('^', op), events)`` returns the new set.
``emulation``
    Any kernel. A non-blocking AF_UNIX stream socketpair: the user polls one end ("user end"),
    the library keeps the other ("hidden end"). How each event is produced:

    - EPOLLIN: exactly one byte waiting on the user end (ADD and DEL are idempotent, unlike
      the reference C library, which counts bytes).
    - EPOLLOUT: a stream socket is writable while the bytes *it has sent* and the peer has not
      read yet stay under a quarter of its own SO_SNDBUF (``unix_writable()``). To clear OUT
      the library sends from the user end until EAGAIN, parking the bytes in the hidden end's
      receive queue; to raise OUT it reads them all back on the hidden end. SO_SNDBUF of the
      user end is shrunk to the kernel minimum so that costs a few KiB, not 200.
    - EPOLLHUP: ``shutdown(SHUT_RDWR)`` of the hidden end, which the kernel reports as
      IN|HUP|RDHUP (0x2011), plus OUT if OUT was raised. It cannot be undone, so every change
      afterwards raises :class:`BrokenPipeError`.
    - Nothing else (PRI, ERR, ...) can be produced: asking for it raises :class:`ValueError`.
      Deleting such a bit is accepted, because a bit that can never be present is already
      absent.

    Every operation looks at the sockets' actual contents rather than at a remembered state,
    so it stays right when the state was changed by another process sharing the fds (a forked
    child) or by the user: a user who reads the byte from their end clears EPOLLIN (the next
    ADD of EPOLLIN puts one back), and bytes the user writes to their end are discarded by the
    next ADD of EPOLLOUT. :attr:`VPoll.events` is read back from the socket with ``poll()``.
    The per-object lock serialises threads, not processes: two processes changing one fd at
    the same instant can interleave, and the next change restores the requested state.

    Edge-triggered watchers see a wake-up only when the state changes; the kernel forms wake
    them on every successful command.

Use :class:`VPoll` (a context manager with a ``fileno()``, usable in ``select.epoll``,
``uring_epoll.epoll``, ``selectors``, ``select.poll`` and ``select.select``) or the functional
trio :func:`vpoll_create` / :func:`vpoll_ctl` / :func:`vpoll_close` of the reference C library.
The environment variable ``URING_EPOLL_VPOLL`` (``eventfd``, ``device``, ``emulation`` or
``auto``) overrides the auto-detection; an explicit ``impl=`` argument overrides both.
"""

from __future__ import annotations

import errno
import fcntl
import operator
import os
import select
import socket
import stat
import struct
import threading
import warnings
import weakref
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = [
    "EFD_VPOLL",
    "EFD_VPOLL_ADDEVENTS",
    "EFD_VPOLL_DELEVENTS",
    "EFD_VPOLL_MODEVENTS",
    "EMULATED_EVENTS",
    "IMPLEMENTATIONS",
    "VPOLL_CTL_ADD",
    "VPOLL_CTL_ADDEVENTS",
    "VPOLL_CTL_DEL",
    "VPOLL_CTL_DELEVENTS",
    "VPOLL_CTL_SET",
    "VPOLL_CTL_SETEVENTS",
    "VPOLL_DEVICE",
    "VPOLL_ENV",
    "VPOLL_IO_ADDEVENTS",
    "VPOLL_IO_DELEVENTS",
    "VPOLL_IO_SETEVENTS",
    "VPOLL_VALID_EVENTS",
    "ImplStatus",
    "VPoll",
    "available_implementations",
    "describe_implementations",
    "implementation_status",
    "resolve_impl",
    "vpoll_close",
    "vpoll_create",
    "vpoll_ctl",
]

#: Operations (the reference library's names and the short ones).
VPOLL_CTL_ADD = VPOLL_CTL_ADDEVENTS = 1
VPOLL_CTL_DEL = VPOLL_CTL_DELEVENTS = 2
VPOLL_CTL_SET = VPOLL_CTL_SETEVENTS = 3
_OPS = {VPOLL_CTL_ADD: "ADD", VPOLL_CTL_DEL: "DEL", VPOLL_CTL_SET: "SET"}

#: eventfd2() flag of the patched kernel, and its write commands (``op << 32``).
EFD_VPOLL = 1 << 1
EFD_VPOLL_ADDEVENTS = VPOLL_CTL_ADD << 32
EFD_VPOLL_DELEVENTS = VPOLL_CTL_DEL << 32
EFD_VPOLL_MODEVENTS = VPOLL_CTL_SET << 32

#: ioctls of /dev/vpoll: ``_IO('^', op)`` (no direction, no size: ``'^' << 8 | op``).
VPOLL_DEVICE = "/dev/vpoll"
VPOLL_IO_ADDEVENTS = 0x5E01
VPOLL_IO_DELEVENTS = 0x5E02
VPOLL_IO_SETEVENTS = 0x5E03

#: Bits a kernel vpoll source accepts: 0..27 minus POLLFREE (0x4000), POLL_BUSY_LOOP (0x8000)
#: and EPOLL_URING_WAKE (1 << 27), which mean something else inside the kernel's wake paths.
VPOLL_VALID_EVENTS = 0x07FF3FFF
#: Bits the emulation can produce.
EMULATED_EVENTS = select.EPOLLIN | select.EPOLLOUT | select.EPOLLHUP

VPOLL_ENV = "URING_EPOLL_VPOLL"
IMPLEMENTATIONS = ("eventfd", "device", "emulation")

_EFD_CLOEXEC = os.EFD_CLOEXEC
_EFD_NONBLOCK = os.EFD_NONBLOCK
_U64 = struct.Struct("=Q")  # native byte order, as the kernel reads a __u64
_HUP_REPORT = select.EPOLLIN | select.EPOLLHUP | select.EPOLLRDHUP
_BIT_NAMES = {
    getattr(select, n): n
    for n in (
        "EPOLLIN",
        "EPOLLPRI",
        "EPOLLOUT",
        "EPOLLERR",
        "EPOLLHUP",
        "EPOLLRDNORM",
        "EPOLLRDBAND",
        "EPOLLWRNORM",
        "EPOLLWRBAND",
        "EPOLLMSG",
        "EPOLLRDHUP",
        "EPOLLEXCLUSIVE",
        "EPOLLONESHOT",
        "EPOLLET",
    )
}
_BIT_NAMES.update(
    {
        0x4000: "POLLFREE",
        0x8000: "POLL_BUSY_LOOP",
        1 << 27: "EPOLL_URING_WAKE",
        1 << 29: "EPOLLWAKEUP",
    }
)


def _names(bits: int) -> str:
    """``0x5 (EPOLLIN|EPOLLOUT)``: a mask with the names of its bits, for error messages."""
    parts = [_BIT_NAMES.get(1 << i, f"bit {i}") for i in range(32) if bits >> i & 1]
    return f"{bits:#x} ({'|'.join(parts)})"


def _check_events(events: Any) -> int:
    """Validate an event set the same way for every implementation (before any syscall)."""
    try:
        value = operator.index(events)
    except TypeError:
        raise TypeError(f"events must be an integer, not {type(events).__name__}") from None
    if value < 0 or value >= 1 << 32:
        raise ValueError(f"events must be a 32-bit unsigned mask, got {value}")
    if value & 0xF0000000:
        raise ValueError(
            f"events {_names(value & 0xF0000000)}: bits 28..31 are epoll_ctl flags, not events"
        )
    bad = value & ~VPOLL_VALID_EVENTS
    if bad:
        raise ValueError(f"events {_names(bad)} are reserved by the kernel's wake-up paths")
    return value


def _check_op(op: Any) -> int:
    try:
        value = operator.index(op)
    except TypeError:
        raise TypeError(f"op must be an integer, not {type(op).__name__}") from None
    if value not in _OPS:
        raise ValueError(
            f"unknown vpoll op {value}: use VPOLL_CTL_ADD (1), VPOLL_CTL_DEL (2) or "
            "VPOLL_CTL_SET (3)"
        )
    return value


# --------------------------------------------------------------------------------------------
# Detection


@dataclass(frozen=True)
class ImplStatus:
    """Whether a vpoll implementation works here, and why not when it does not."""

    name: str
    available: bool
    reason: str
    errno: int = 0


def _probe_eventfd() -> ImplStatus:
    # Creating one is the probe: an unpatched kernel rejects the unknown flag with EINVAL.
    # Nothing is ever written. Reading twice and polling also proves it is not a counter:
    # a counting eventfd would consume 4 on the first read and poll IN|OUT.
    try:
        fd = os.eventfd(select.EPOLLOUT, EFD_VPOLL | _EFD_CLOEXEC | _EFD_NONBLOCK)
    except OSError as exc:
        why = (
            "the kernel has no EFD_VPOLL (eventfd2 answered EINVAL)"
            if exc.errno == errno.EINVAL
            else f"eventfd2(EFD_VPOLL) failed: {exc.strerror}"
        )
        return ImplStatus("eventfd", False, why, exc.errno or errno.EINVAL)
    try:
        p = select.poll()
        p.register(fd, select.POLLIN | select.POLLOUT | select.POLLPRI)
        polled = p.poll(0)
        first, second = os.read(fd, 8), os.read(fd, 8)
    except OSError as exc:
        return ImplStatus(
            "eventfd", False, f"EFD_VPOLL eventfd misbehaves: {exc}", exc.errno or errno.EIO
        )
    finally:
        os.close(fd)
    expected = _U64.pack(select.EPOLLOUT)
    if polled != [(fd, select.POLLOUT)] or first != expected or second != expected:
        return ImplStatus(
            "eventfd",
            False,
            "eventfd2(EFD_VPOLL) gave an fd that does not behave as a vpoll source",
            errno.EINVAL,
        )
    return ImplStatus("eventfd", True, "")


def _probe_device() -> ImplStatus:
    try:
        fd = os.open(VPOLL_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return ImplStatus(
            "device",
            False,
            f"cannot open {VPOLL_DEVICE}: {exc.strerror}",
            exc.errno or errno.ENODEV,
        )
    try:
        if not stat.S_ISCHR(os.fstat(fd).st_mode):
            return ImplStatus(
                "device", False, f"{VPOLL_DEVICE} is not a character device", errno.ENODEV
            )
        try:
            current = fcntl.ioctl(fd, VPOLL_IO_ADDEVENTS, 0)
        except OSError as exc:
            return ImplStatus(
                "device",
                False,
                f"{VPOLL_DEVICE} does not answer the vpoll ioctls: {exc.strerror}",
                exc.errno or errno.ENOTTY,
            )
        if current != 0:
            return ImplStatus(
                "device", False, f"{VPOLL_DEVICE} starts with events {current:#x}", errno.ENODEV
            )
        return ImplStatus("device", True, "")
    finally:
        os.close(fd)


_status_cache: dict[str, ImplStatus] | None = None
_status_lock = threading.Lock()


def implementation_status(refresh: bool = False) -> dict[str, ImplStatus]:
    """Status of every implementation, in preference order (probed once per process)."""
    global _status_cache
    with _status_lock:
        if _status_cache is None or refresh:
            _status_cache = {
                "eventfd": _probe_eventfd(),
                "device": _probe_device(),
                "emulation": ImplStatus("emulation", True, ""),
            }
        return dict(_status_cache)


def available_implementations() -> list[str]:
    """Names of the implementations that work here, best first."""
    return [s.name for s in implementation_status().values() if s.available]


def resolve_impl(impl: str | None = None) -> str:
    """The implementation to use: *impl*, else ``$URING_EPOLL_VPOLL``, else the best available.

    Raises:
        ValueError: an unknown name.
        OSError: a named implementation is unavailable here (errno and message say why).
    """
    source = "impl"
    if impl is None:
        impl = os.environ.get(VPOLL_ENV) or "auto"
        source = VPOLL_ENV
    if impl == "auto":
        return available_implementations()[0]
    if impl not in IMPLEMENTATIONS:
        raise ValueError(
            f"unknown vpoll implementation {impl!r} ({source}); choose auto, "
            + ", ".join(IMPLEMENTATIONS)
        )
    status = implementation_status()[impl]
    if not status.available:
        raise OSError(
            status.errno or errno.ENODEV,
            f"vpoll implementation {impl!r} ({source}) is unavailable: {status.reason}",
        )
    return impl


def describe_implementations() -> str:
    """One line for ``uring-epoll info``: what is used here, and why the others are not."""
    try:
        chosen = resolve_impl(None)
    except (OSError, ValueError) as exc:
        chosen = f"error: {exc}"
    out = [s for s in implementation_status().values() if not s.available]
    return chosen + "".join(f"; {s.name} unavailable: {s.reason}" for s in out)


# --------------------------------------------------------------------------------------------
# Implementations: each owns its fds; VPoll serialises calls with its lock.


class _Eventfd:
    name = "eventfd"
    supported = VPOLL_VALID_EVENTS

    def __init__(self, events: int) -> None:
        self.fd = os.eventfd(events, EFD_VPOLL | _EFD_CLOEXEC | _EFD_NONBLOCK)

    def fileno(self) -> int:
        return self.fd

    def ctl(self, op: int, events: int) -> int:
        os.write(self.fd, _U64.pack(op << 32 | events))
        return self.events()

    def events(self) -> int:
        return int(_U64.unpack(os.read(self.fd, 8))[0])

    def close(self) -> None:
        os.close(self.fd)


class _Device:
    name = "device"
    supported = VPOLL_VALID_EVENTS
    _IOCTL: ClassVar[dict[int, int]] = {
        VPOLL_CTL_ADD: VPOLL_IO_ADDEVENTS,
        VPOLL_CTL_DEL: VPOLL_IO_DELEVENTS,
        VPOLL_CTL_SET: VPOLL_IO_SETEVENTS,
    }

    def __init__(self, events: int) -> None:
        self.fd = os.open(VPOLL_DEVICE, os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            if events:
                self.ctl(VPOLL_CTL_SET, events)
        except BaseException:
            os.close(self.fd)
            raise

    def fileno(self) -> int:
        return self.fd

    def ctl(self, op: int, events: int) -> int:
        # The set travels by value; events < 1 << 28 always fits the C int fcntl passes.
        return int(fcntl.ioctl(self.fd, self._IOCTL[op], events))

    def events(self) -> int:
        # Not ioctl(ADD, 0), which returns the set too but, like every successful command,
        # wakes every watcher with the whole set as its key: an edge-triggered watcher would
        # see an event for each read. A private epoll asking for every valid bit polls the
        # file without waking anyone.
        with select.epoll() as probe:
            probe.register(self.fd, VPOLL_VALID_EVENTS)
            ready = probe.poll(0)
        return ready[0][1] if ready else 0

    def close(self) -> None:
        os.close(self.fd)


_SEND_FLAGS = socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL  # never block, never SIGPIPE
_FILL_CHUNK = b"\0" * 1024
_DRAIN_SIZE = 1 << 16
_MAX_LOOPS = 100_000  # the buffers hold a few KiB: hitting this means something is wrong


class _Emulation:
    name = "emulation"
    supported = EMULATED_EVENTS

    def __init__(self, events: int) -> None:
        if events & ~EMULATED_EVENTS:
            raise _unsupported(events)
        self.user, self.hidden = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            for s in (self.user, self.hidden):
                s.setblocking(False)
                # The kernel raises these to its minimum (a few KiB): what clearing OUT costs.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
            self.ctl(VPOLL_CTL_SET, events)  # a fresh socket is writable: clear OUT if unasked
        except BaseException:
            self.close()
            raise

    def fileno(self) -> int:
        return self.user.fileno()

    def events(self) -> int:
        p = select.poll()
        p.register(self.user, select.POLLIN | select.POLLOUT | select.POLLRDHUP)
        got = p.poll(0)
        mask = got[0][1] if got else 0
        # poll's bits equal epoll's; RDNORM/WRNORM... are not part of the vpoll vocabulary.
        return mask & (EMULATED_EVENTS | select.EPOLLRDHUP)

    def ctl(self, op: int, events: int) -> int:
        current = self.events()
        if current & select.EPOLLHUP:
            raise BrokenPipeError(
                errno.EPIPE,
                f"vpoll fd {self.fileno()} (emulation) has hung up; a hangup cannot be undone",
            )
        if op != VPOLL_CTL_DEL and events & ~EMULATED_EVENTS:
            raise _unsupported(events)
        if op == VPOLL_CTL_ADD:
            on, off = events, 0
        elif op == VPOLL_CTL_DEL:
            on, off = 0, events
        else:
            on, off = events, EMULATED_EVENTS & ~events
        if off & select.EPOLLIN:
            self._drain(self.user)
        if on & select.EPOLLIN and not self._byte_waiting():
            self.hidden.send(b"\x01", _SEND_FLAGS)
        if on & select.EPOLLOUT:
            self._drain(self.hidden)
        if off & select.EPOLLOUT:
            self._fill()
        if on & select.EPOLLHUP:
            # shutdown, not close: close would purge the hidden end's receive queue and so
            # raise OUT on the user end behind the caller's back.
            self.hidden.shutdown(socket.SHUT_RDWR)
        return self.events()

    def _byte_waiting(self) -> bool:
        try:
            return bool(self.user.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except BlockingIOError:
            return False

    @staticmethod
    def _drain(s: socket.socket) -> None:
        # One recv takes everything queued (a stream recv walks all queued skbs up to the size
        # asked; the queues hold a few KiB). Stop at the first short read, never "until
        # EAGAIN": another process sharing the fds (the demo's forked parent) may be refilling
        # the queue to clear OUT, and reading on would undo its change again and again.
        for _ in range(_MAX_LOOPS):
            try:
                if len(s.recv(_DRAIN_SIZE, socket.MSG_DONTWAIT)) < _DRAIN_SIZE:
                    return
            except BlockingIOError:
                return
        raise OSError(errno.EIO, "vpoll emulation: a socket never ran dry")

    def _fill(self) -> None:
        # Park bytes in the hidden end's receive queue until the user end's send buffer is
        # full: from then on poll() does not report it writable.
        for _ in range(_MAX_LOOPS):
            try:
                self.user.send(_FILL_CHUNK, _SEND_FLAGS)
            except BlockingIOError:
                return
        raise OSError(errno.EIO, "vpoll emulation: the send buffer never filled")

    def close(self) -> None:
        for s in (getattr(self, "user", None), getattr(self, "hidden", None)):
            if s is not None:
                s.close()


def _unsupported(events: int) -> ValueError:
    bad = events & ~EMULATED_EVENTS
    return ValueError(
        f"the vpoll emulation cannot produce events {_names(bad)}; it supports EPOLLIN, "
        "EPOLLOUT and EPOLLHUP (use the eventfd or device implementation for the others)"
    )


_IMPL_CLASSES: dict[str, type[_Eventfd] | type[_Device] | type[_Emulation]] = {
    "eventfd": _Eventfd,
    "device": _Device,
    "emulation": _Emulation,
}


# --------------------------------------------------------------------------------------------
# Public object API

# Every open VPoll by fd: vpoll_ctl() needs it, and after fork() the child needs new locks.
_by_fd: weakref.WeakValueDictionary[int, VPoll] = weakref.WeakValueDictionary()
# Objects created by vpoll_create(): the caller holds only the fd, so we hold the object.
_owned: dict[int, VPoll] = {}
_registry_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _registry_lock, _status_lock
    # A lock held by another thread at fork() would stay held forever in the child.
    _registry_lock = threading.Lock()
    _status_lock = threading.Lock()
    for obj in list(_by_fd.values()):
        obj._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


class VPoll:
    """A synthetic event source: a file descriptor whose readiness you set.

    Args:
        events: the initial event set (``select.EPOLLIN | ...``; 0 by default).
        impl: ``"eventfd"``, ``"device"``, ``"emulation"`` or ``"auto"``/None (then
            ``$URING_EPOLL_VPOLL``, else the best available; see :func:`resolve_impl`).

    Raises:
        ValueError: an invalid event set, or one the chosen implementation cannot produce.
        OSError: the requested implementation is unavailable, or creating the fd failed.

    The fd is non-blocking and close-on-exec. All methods are thread-safe. Every change returns
    the resulting event set.
    """

    def __init__(self, events: int = 0, impl: str | None = None) -> None:
        self._closed = True  # until built, so __del__ and close() are harmless
        self._lock = threading.Lock()
        events = _check_events(events)
        name = resolve_impl(impl)
        self._impl = _IMPL_CLASSES[name](events)
        self._fd = self._impl.fileno()
        self._closed = False
        with _registry_lock:
            _by_fd[self._fd] = self

    @property
    def impl(self) -> str:
        """Which implementation backs this object: eventfd, device or emulation."""
        return self._impl.name

    @property
    def supported_events(self) -> int:
        """The event bits this implementation can raise."""
        return self._impl.supported

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run."""
        return self._closed

    def fileno(self) -> int:
        """The fd to poll. Raises ValueError once closed."""
        self._check_open()
        return self._fd

    @property
    def events(self) -> int:
        """The current event set (on the emulation, read back from the socket)."""
        with self._lock:
            self._check_open()
            return self._impl.events()

    def ctl(self, op: int, events: int) -> int:
        """Apply ``VPOLL_CTL_ADD`` (1), ``DEL`` (2) or ``SET`` (3); return the new set.

        Raises:
            TypeError: a non-integer op or events.
            ValueError: unknown op, an invalid mask (negative, over 32 bits, bits 28..31, bits
                reserved by the kernel), events the emulation cannot produce, or a closed object.
            BrokenPipeError: emulation after a hangup (it cannot be undone).
        """
        op = _check_op(op)
        events = _check_events(events)
        with self._lock:
            self._check_open()
            return self._impl.ctl(op, events)

    def add(self, events: int) -> int:
        """Raise *events* (OR them into the set); return the new set."""
        return self.ctl(VPOLL_CTL_ADD, events)

    def delete(self, events: int) -> int:
        """Clear *events*; return the new set."""
        return self.ctl(VPOLL_CTL_DEL, events)

    def set(self, events: int) -> int:
        """Replace the whole set with *events*; return it."""
        return self.ctl(VPOLL_CTL_SET, events)

    def close(self) -> None:
        """Close the fd (and the emulation's hidden end). Idempotent.

        Like any fd, close it only after unregistering it from a poll set, or at least
        knowing that epoll forgets a closed fd silently.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            with _registry_lock:
                if _by_fd.get(self._fd) is self:
                    del _by_fd[self._fd]
                if _owned.get(self._fd) is self:
                    del _owned[self._fd]
            self._impl.close()

    def __enter__(self) -> VPoll:
        self._check_open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            text = f"unclosed {self!r}"
            try:
                self.close()
                warnings.warn(text, ResourceWarning, stacklevel=2, source=self)
            except Exception:  # interpreter shutdown: module globals may be gone already
                pass

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self._fd}"
        impl = getattr(self, "_impl", None)
        return f"<uring_epoll.vpoll.VPoll impl={impl.name if impl else '?'} {state}>"

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("I/O operation on closed vpoll object")


# --------------------------------------------------------------------------------------------
# Functional API (the reference C library's create / ctl / close)


def vpoll_create(init_events: int = 0, flags: int = 0, *, impl: str | None = None) -> int:
    """Create a vpoll fd with *init_events*; return the fd (close it with :func:`vpoll_close`).

    *flags* may be 0, ``FD_CLOEXEC`` or ``O_CLOEXEC``: the fd is close-on-exec in any case
    (PEP 446; use ``os.set_inheritable`` to hand it to a child program).
    """
    flags = operator.index(flags)
    if flags & ~(fcntl.FD_CLOEXEC | os.O_CLOEXEC):
        raise ValueError(f"unsupported vpoll_create flags {flags:#x} (only FD_CLOEXEC)")
    obj = VPoll(init_events, impl)
    with _registry_lock:
        _owned[obj._fd] = obj
    return obj._fd


def _lookup(fd: Any) -> VPoll:
    fd = operator.index(fd)
    with _registry_lock:
        obj = _by_fd.get(fd)
    if obj is None or obj.closed:
        try:
            os.fstat(fd)
        except OSError:
            raise OSError(errno.EBADF, f"fd {fd} is not open") from None
        # Never guess: a command written to an ordinary eventfd would just add to its counter.
        raise OSError(errno.EINVAL, f"fd {fd} is not a vpoll fd of this process")
    return obj


def vpoll_ctl(fd: int, op: int, events: int) -> int:
    """Apply *op* (VPOLL_CTL_ADD/DEL/SET) with *events* to a vpoll fd; return the new set.

    The reference library returns 0; errors here are exceptions, so the return value carries
    the resulting set instead, as ``/dev/vpoll``'s ioctls do.
    """
    return _lookup(fd).ctl(op, events)


def vpoll_close(fd: int) -> None:
    """Close a vpoll fd from :func:`vpoll_create` (or a :class:`VPoll`'s fileno)."""
    _lookup(fd).close()
