"""``uring_epoll.epoll``: a drop-in for ``select.epoll`` that consumes a shared ring.

Semantics, and why they look the way they do:

- On the ring backends every registration is edge-triggered underneath, because the RFC makes
  EPOLLET mandatory: the kernel appends an item to the ring when its ``ready_events`` goes from
  0 to non-zero, and the consumer clears it. Edge-triggered registrations therefore take the
  syscall-free path. Level-triggered ones keep ``select.epoll`` semantics by being re-armed with
  EPOLL_CTL_MOD at the start of the next poll for every LT item delivered by the previous one;
  MOD makes the kernel re-poll the file and queue it again if it is still ready. That costs one
  system call per delivered LT event, which is why the ring only pays off with EPOLLET.
- The ring may report an event for a file that is no longer ready (the RFC accumulates bits
  until the consumer takes them, where ``epoll_wait`` re-polls the file at delivery time).
  Edge-triggered code already copes with that: read until EAGAIN.
- The ``uring`` backend has no EPOLL_USERPOLL ring: its poll requests keep level-triggered
  registrations level-triggered themselves (``backends/uring.py`` says how, and how its
  batches coalesce), so none of the above re-arming happens here for it.
- EPOLLEXCLUSIVE cannot be combined with the ring (the RFC rejects it), so it is a ValueError.
- ``poll()`` returns ``(fd, events)`` like the stdlib; ``poll_into()`` delivers the 64-bit
  ``data`` given to ``register(..., data=)``, which defaults to the fd. Within one object every
  registration's data must be distinct so that ``poll()`` can name the fd.
"""

from __future__ import annotations

import errno
import functools
import math
import numbers
import operator
import os
import select
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from . import abi, backends, probe
from ._native_lib import ffi, lib, os_error
from .backends.base import closed_error

_DEFAULT_MASK = select.EPOLLIN | select.EPOLLPRI | select.EPOLLOUT
_FD_SETSIZE = 1024
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
_EPOLL_EVENT_SIZE = 12  # sizeof(struct epoll_event) on x86-64 (packed)
_EP_MAX_EVENTS = _INT_MAX // _EPOLL_EVENT_SIZE  # the kernel's epoll_wait maxevents limit
_NS_MIN = -(2**63)  # _PyTime_t
# What the kernel lets EPOLLEXCLUSIVE be combined with (EPOLLEXCLUSIVE_OK_BITS).
_EXCLUSIVE_OK = (
    select.EPOLLIN
    | select.EPOLLOUT
    | select.EPOLLERR
    | select.EPOLLHUP
    | abi.EPOLLWAKEUP
    | abi.EPOLLET
    | abi.EPOLLEXCLUSIVE
)
DEFAULT_MAX_ITEMS = 1024
_ZERO = 0  # the int 0 object: a timeout that is this one needs no conversion
_NO_KEY = object()  # the poll() cache's key when it has no binding: no argument is this

_live: weakref.WeakSet[epoll] = weakref.WeakSet()
_now = time.monotonic_ns
_from_buffer = ffi.from_buffer
_NO_BUFFER: tuple[Any, ...] = (None, None, None, -1, None)


_MOVED = -lib.UE_EMOVED


def _same_memory(buffer: Any, cache: tuple[Any, ...]) -> bool:
    """True if *buffer*'s memory is still where (and as long as) when *cache* was bound, and
    the binding's C check can tell if it moves (cache[3] is -1 where it cannot)."""
    if cache[3] < 0 or not buffer.flags.writeable:
        return False
    try:
        pointer = _from_buffer(buffer)
    except (TypeError, ValueError, BufferError):
        return False  # rebinding says what is wrong with it
    return bool(pointer == cache[2] and len(pointer) == cache[3])


class _Share:
    """A backend and the registrations made through it, with the epoll objects using it.

    Usually one object; more when ``epoll.fromfd`` was given (a dup of) the fd of one of
    ours. Wrapping that fd anew would lose events on the thread backend (its poller alone
    consumes the inner epoll's events) and, on any backend, the registrations' data and
    level-triggered re-arms, which live here. The last object to go closes the backend.

    Closing while other threads use the backend: every call into the backend but the
    drain itself (ctl, stats, views, fileno checks, binding) runs between :meth:`enter` and
    :meth:`leave`, and :meth:`shut` closes the backend only once no other thread is between
    them, so a C producer is never freed under a call (calls are short: nothing between
    them blocks). The drain is not counted here, as it may sleep for ever: the C consumer
    counts its own callers, wakes them on close (thread backend) and returns -EBADF from
    then on, and each binding keeps the memory it points into alive.
    """

    def __init__(self, backend: backends.Backend) -> None:
        self.backend = backend
        self.users = 0
        self.dead = False  # the last user left: nobody may join any more
        self.lock = threading.Lock()
        # The lifecycle guard: threads inside the backend (thread id -> depth), and
        # whether the backend is closing / closed.
        self.gate = threading.Condition(threading.Lock())
        self.inside: dict[int, int] = {}
        self.closing = False
        self.backend_closed = False
        self.data_of_fd: dict[int, int] = {}  # every registration, fd -> data
        self.fd_of_data: dict[int, int] = {}  # only registrations whose data != fd
        self.lt: dict[int, tuple[int, int]] = {}  # level-triggered ring registrations
        self.rearm: list[int] = []  # delivered LT registrations to re-arm at the next poll
        self.objects: weakref.WeakSet[epoll] = weakref.WeakSet()

    def join(self, ep: epoll) -> bool:
        """Count *ep* as a user; False if the backend is already going (last user left)."""
        with self.lock:
            if self.dead:
                return False
            self.users += 1
            self.objects.add(ep)
            return True

    def enter(self) -> bool:
        """Count this thread as inside the backend; False once it is closing."""
        tid = threading.get_ident()
        with self.gate:
            if self.closing:
                return False
            self.inside[tid] = self.inside.get(tid, 0) + 1
            return True

    def leave(self) -> None:
        tid = threading.get_ident()
        with self.gate:
            depth = self.inside[tid] - 1
            if depth:
                self.inside[tid] = depth
            else:
                del self.inside[tid]
            if not self.closing:
                return
            self.gate.notify_all()
            last = not self.inside and not self.backend_closed
            self.backend_closed = self.backend_closed or last
        if last:
            self.backend.close()  # shut() left it to us: this thread was inside (a signal)

    def shut(self) -> None:
        """Close the backend once no other thread is inside it.

        If this very thread is inside (close() from a signal handler or a finalizer that
        interrupted a call), waiting would deadlock: the last :meth:`leave` closes it.
        """
        tid = threading.get_ident()
        with self.gate:
            self.closing = True
            self.gate.wait_for(lambda: self.inside.keys() <= {tid})
            if self.inside or self.backend_closed:
                return
            self.backend_closed = True
        self.backend.close()

    def after_fork_in_child(self) -> None:
        """The parent's threads are gone: so is what they held of the guard."""
        self.gate = threading.Condition(threading.Lock())
        self.inside = {}
        self.lock = threading.Lock()


class _Inside:
    """``with _Inside(ep):`` -- a call into the backend, which close() waits for.

    Raises what a closed object raises (ValueError) if the object is closed, and
    OSError(EBADF) if its backend was closed under it (finalizers at exit), as select.epoll
    does once its fd is closed under it (selectors swallow that one at teardown).
    """

    __slots__ = ("ep",)

    def __init__(self, ep: epoll) -> None:
        self.ep = ep

    def __enter__(self) -> None:
        ep = self.ep
        ep._check_open()  # first, without the guard: a fork child never touches its locks
        if not ep._share.enter():
            ep._raise_gone()
        if ep._closed:
            ep._share.leave()
            ep._check_open()

    def __exit__(self, *exc: object) -> None:
        self.ep._share.leave()


def _release(share: _Share, own_fd: int) -> None:
    """Finalizer of one epoll object: close the fd it owns (if any), and the backend with
    the last user. Never refers to the object, so it may run when the object is gone."""
    if own_fd >= 0:
        try:
            os.close(own_fd)
        except OSError:
            pass
    with share.lock:
        share.users -= 1
        last = share.users == 0
        share.dead = share.dead or last
    if last:
        share.shut()


def _after_fork_in_child() -> None:
    for ep in list(_live):
        ep._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _c_int(value: Any) -> int:
    """CPython's ``int`` argument conversion (_PyLong_AsInt): __index__, then a C int."""
    number: int = operator.index(value)
    if not _INT_MIN <= number <= _INT_MAX:
        raise OverflowError("Python int too large to convert to C int")
    return number


def _as_fd(obj: Any) -> int:
    """Like CPython's PyObject_AsFileDescriptor: an int, or an object with fileno()."""
    if isinstance(obj, int):
        fd = obj
    elif hasattr(obj, "fileno"):
        fd = obj.fileno()
        if not isinstance(fd, int):
            raise TypeError("fileno() returned a non-integer")
    else:
        raise TypeError("argument must be an int, or have a fileno() method.")
    fd = _c_int(fd)
    if fd < 0:
        raise ValueError(f"file descriptor cannot be a negative integer ({fd})")
    return fd


@functools.cache
def _float_timeout_overflow_text() -> str:
    """CPython's message for a float timeout outside ``_PyTime_t``: it changed within 3.11
    (3.11.2 says "timestamp too large to convert to C _PyTime_t", 3.11.7 "timestamp out of
    range for platform time_t"), so it is read once from this interpreter's select.epoll.
    The probe polls an always-writable pipe end, so it could not block even if a Python
    accepted an infinite timeout."""
    r, w = os.pipe()
    try:
        with select.epoll() as probe:
            probe.register(w, select.EPOLLOUT)
            try:
                probe.poll(math.inf)
            except OverflowError as exc:
                return str(exc)
    finally:
        os.close(r)
        os.close(w)
    return "timestamp out of range for platform time_t"


def _timeout_ns(timeout: Any) -> int:
    """select.epoll's timeout rules, errors included: None, or fewer than 0 whole
    milliseconds, is forever (-1); else nanoseconds (never fewer than asked for)."""
    if timeout is None:
        return -1
    # The common cases first: a plain int or float of seconds, well within every limit.
    if timeout.__class__ is int:
        if 0 <= timeout <= 2_000_000:
            return timeout * 1_000_000_000
    elif timeout.__class__ is float and 0.0 <= timeout <= 2_000_000.0:  # NaN is not
        return math.ceil(timeout * 1e9)
    if isinstance(timeout, float):  # _PyTime_FromSecondsObject's float half
        if math.isnan(timeout):
            raise ValueError("Invalid value NaN (not a number)")
        d = timeout * 1e9
        if not _NS_MIN <= d < -_NS_MIN:  # infinities included
            raise OverflowError(_float_timeout_overflow_text())
        ns = math.ceil(d) if d >= 0 else math.floor(d)  # away from zero
    else:  # its integer half: __index__ (never a str that float() would parse)
        try:
            seconds = operator.index(timeout)
        except TypeError:
            raise TypeError("timeout must be an integer or None") from None
        ns = seconds * 1_000_000_000
        if not _NS_MIN <= ns <= -_NS_MIN - 1:
            raise OverflowError("timestamp too large to convert to C _PyTime_t")
    # select.epoll then wants milliseconds (the ceiling) in a C int: so -1e-9 is no
    # wait at all, and -1e-3 is for ever.
    ms = -(-ns // 1_000_000)
    if not _INT_MIN <= ms <= _INT_MAX:
        raise OverflowError("timeout is too large")
    return -1 if ms < 0 else max(ns, 0)


#: Most ``spin_us`` accepted (10 ms): a spin pays only while it is short against the sleep
#: and wake-up it saves (microseconds); a longer one burns a CPU for nothing, and it is also
#: how long a poll may take to return to Python and see a signal.
MAX_SPIN_US = lib.UE_SPIN_MAX_NS // 1000


def _spin_ns(spin_us: Any) -> int:
    """``spin_us`` checked (a real number of microseconds in 0..MAX_SPIN_US), in ns."""
    if isinstance(spin_us, bool) or not isinstance(spin_us, numbers.Real):
        raise TypeError(f"spin_us must be a number of microseconds, not {type(spin_us).__name__}")
    value = float(spin_us)
    if not 0 <= value <= MAX_SPIN_US:  # NaN fails both
        raise ValueError(f"spin_us must be in 0..{MAX_SPIN_US} (microseconds), got {spin_us!r}")
    return int(value * 1000)


@dataclass(frozen=True)
class PollStats:
    """Counters of one epoll object (ring backends; zeros on the epoll backend)."""

    #: events handed out from the ring
    ring_events: int
    #: times the consumer slept in the kernel (futex or epoll_wait(NULL, 0))
    sleeps: int
    #: sleeps that ended with "entries in the ring" (ESTALE)
    estale: int
    #: bounded spins on an empty ring, and how many of them saw an event arrive
    spins: int
    spin_hits: int
    #: ring entries consumed without an event (EPOLLREMOVED, or masked out)
    skipped: int
    #: protocol 3: drains that stopped at an index slot reserved but not yet written
    slot_waits: int
    #: re-arms of delivered level-triggered registrations (EPOLL_CTL_MOD on the RFC rings,
    #: a queued poll request on uring)
    rearms: int
    #: uring: CQEs consumed (more than ring_events: a batch ORs one registration's CQEs)
    cqes: int = 0
    #: uring: multishot polls that ended (CQ full) or were cancelled, and were re-armed
    multishot_restarts: int = 0
    #: uring: drains that found completions held back by a full CQ, and fetched them
    overflows: int = 0
    #: uring: io_uring_enter calls (submissions of re-arms and changes, and sleeps)
    enters: int = 0
    #: uring: CQEs of a removed or modified registration, dropped
    stale: int = 0
    #: kernel backend: epoll_wait(NULL, 0, 0) calls made because the header's ``repoll`` said
    #: files woke without a key and wait to be polled (see ``abi.HEADER_DTYPE``)
    repolls: int = 0


class epoll:
    """Epoll readiness through an EPOLL_USERPOLL ring; a drop-in for :class:`select.epoll`.

    Args:
        sizehint: as for ``select.epoll`` (-1 or positive); on ring backends also the default
            ``max_items``.
        flags: as for ``select.epoll`` (0 or ``EPOLL_CLOEXEC``; the fd is always close-on-exec).
        backend: ``"auto"`` (default: ``kernel`` where the kernel has the RFC, else
            ``thread``), ``"kernel"``, ``"thread"``, ``"uring"`` (io_uring poll requests) or
            ``"epoll"``. The environment variable
            ``URING_EPOLL_BACKEND`` overrides ``auto``.
        max_items: most registrations at once on a ring backend (1..65536; more give ENOSPC).
        protocol: ring protocol revision, 5 (default, the final RFC) or 3 (thread backend).
        spin_us: how long ``poll`` spins on an empty ring before sleeping (microseconds,
            0..:data:`MAX_SPIN_US`, never longer than the poll's timeout).
    """

    backend: str
    max_items: int | None
    protocol: int | None
    EVENT_DTYPE: ClassVar[np.dtype] = abi.EVENT_DTYPE

    def __init__(
        self,
        sizehint: int = -1,
        flags: int = 0,
        *,
        backend: str | None = None,
        max_items: int | None = None,
        protocol: int = abi.PROTOCOL_V5,
        spin_us: float = 0.0,
        _share: _Share | None = None,
        _fd: int = -1,
    ) -> None:
        # select.epoll's checks, in its order and with its errors.
        sizehint = _c_int(sizehint)
        flags = _c_int(flags)
        if sizehint == 0 or sizehint < -1:
            raise ValueError("negative sizehint")
        if flags and flags != select.EPOLL_CLOEXEC:
            raise OSError("invalid flags")
        if protocol not in abi.PROTOCOLS:
            raise ValueError(f"protocol must be 5 or 3, got {protocol!r}")
        spin_ns = _spin_ns(spin_us)
        if max_items is None:
            max_items = sizehint if sizehint > 0 else DEFAULT_MAX_ITEMS
            max_items = min(max_items, abi.MAX_ITEMS_LIMIT)
        elif not isinstance(max_items, int) or not 1 <= max_items <= abi.MAX_ITEMS_LIMIT:
            raise ValueError(f"max_items must be in 1..{abi.MAX_ITEMS_LIMIT}, got {max_items!r}")
        self._closed = True  # until fully built, so __del__/close are harmless
        self._in_fork_child = False
        self._fd_gone = False
        if _share is None:
            name = probe.resolve_backend(backend)
            _share = _Share(
                backends.create(name, max_items=max_items, protocol=protocol, spin_ns=spin_ns)
            )
        share = self._share = _share
        backend_object = share.backend
        self._backend: backends.Backend = backend_object
        self.backend = backend_object.name
        ring = backend_object.is_ring
        self.max_items = backend_object.max_items if ring else None
        self.protocol = backend_object.protocol if ring else None
        self._ring = ring
        # The EPOLL_USERPOLL rings force EPOLLET, and level-triggered registrations are
        # re-armed here; a backend that keeps them level-triggered itself needs neither.
        self._force_et = ring and not backend_object.rearms_level
        # The fd fileno() reports, and the one this object closes (-1: the backend's own).
        self._fileno = backend_object.fileno() if _fd < 0 else _fd
        own_fd = _fd if _fd >= 0 and _fd != backend_object.fileno() else -1
        # The share's tables, mutated in place only, so that every object sharing them
        # sees each change through these direct references.
        self._data_of_fd = share.data_of_fd
        self._fd_of_data = share.fd_of_data
        self._lt = share.lt
        self._rearm = share.rearm
        self._rearms = 0
        self._poll_bound: Any = lib.ue_poll_bound
        # poll_into: (buffer, binding, what it uses) of the last buffer seen; poll(): the
        # maxevents argument and binding of its reusable arrays, one thread at a time (lock).
        # poll_into's cache is (buffer, binding, pointer, byte length, memory): the memory the
        # binding was made for (length -1: its array cannot be checked in C, so never reused).
        self._into_cache: tuple[Any, ...] = _NO_BUFFER
        self._into_fast: tuple[Any, ...] = _NO_BUFFER
        # (maxevents, binding): one attribute, so that a poll racing close() never pairs
        # a key with another binding (or with None).
        self._pairs_cache: tuple[Any, Any] = (_NO_KEY, None)
        self._pairs_lock = threading.Lock()
        # poll() and poll_into() take their fast path unless these are set: closed object,
        # level-triggered ring registrations to re-arm, or (poll() only) the epoll backend.
        self._slow = False
        if not ring:
            stdlib = backend_object.poll_pairs
            assert stdlib is not None, "a backend without a ring polls through select.epoll"
            self._stdlib = stdlib
        if not share.join(self):
            return  # fromfd raced the last close of the share: stay closed (fromfd goes on)
        self._closed = False
        self._update_paths()
        self._finalizer = weakref.finalize(self, _release, share, own_fd)
        _live.add(self)

    # ---- select.epoll surface -------------------------------------------------------------

    @classmethod
    def fromfd(cls, fd: Any, *, spin_us: float = 0.0) -> epoll:
        """Wrap an existing epoll fd, which the new object owns (closes), as select.epoll does.

        (A dup of) the fd of a live object of ours gets that object's backend, so both see
        the same registrations and events, and the backend stays up until the last of them
        is closed. Any other userpoll epfd gets the kernel backend over its ring; any other
        epoll fd the epoll backend.
        """
        fd = _as_fd(fd)
        spin_ns = _spin_ns(spin_us)
        seen: set[int] = set()
        for other in list(_live):
            share = other._share
            if id(share) in seen or other._closed:
                continue
            seen.add(id(share))
            if not share.enter():
                continue  # closing: its fd is no longer ours to share
            try:
                if share.backend.shares_file(fd):
                    ep = cls(_share=share, _fd=fd)
                    if not ep._closed:
                        return ep
            finally:
                share.leave()
        from .backends.epoll import EpollBackend
        from .backends.kernel import KernelBackend

        backend_object: backends.Backend
        try:
            backend_object = KernelBackend(
                max_items=1, protocol=abi.PROTOCOL_V5, spin_ns=spin_ns, epfd=fd
            )
        except (OSError, ValueError):
            backend_object = EpollBackend(epfd=fd)
        return cls(_share=_Share(backend_object))

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run."""
        return self._closed and not self._fd_gone

    def fileno(self) -> int:
        """The epoll fd, or the dup given to fromfd (thread backend: an epoll fd readable while
        the ring holds events not yet taken)."""
        fd = self._fileno
        self._check_open()
        return fd

    def close(self) -> None:
        """Stop the producer (thread backend), unmap the ring and close the fd. Idempotent.

        Objects sharing a thread backend (``fromfd``) keep it until the last is closed; one
        over the very same fd number loses its fd now, as with ``select.epoll``.
        """
        if self._closed:
            return
        objects = self._share.objects
        others = [ep for ep in objects if ep is not self] if len(objects) > 1 else []
        self._shut()
        for other in others:
            if other._fileno == self._fileno and not other._closed:
                other._fd_gone = True
                other._shut()

    def _shut(self) -> None:
        self._closed = True
        self._update_paths()
        self._into_cache = self._into_fast = _NO_BUFFER
        self._pairs_cache = (_NO_KEY, None)
        self._share.objects.discard(self)
        self._finalizer()
        _live.discard(self)

    def __enter__(self) -> epoll:
        self._check_open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self._fileno}"
        return f"<uring_epoll.epoll backend={self.backend} {state}>"

    def register(self, fd: Any, eventmask: int = _DEFAULT_MASK, *, data: int | None = None) -> None:
        """Register *fd* for *eventmask*; *data* (64-bit, default: the fd) goes to poll_into."""
        self._ctl(abi.EPOLL_CTL_ADD, fd, eventmask, data)

    def modify(self, fd: Any, eventmask: int, *, data: int | None = None) -> None:
        """Change the events (and optionally the data) of a registered fd."""
        self._ctl(abi.EPOLL_CTL_MOD, fd, eventmask, data)

    def unregister(self, fd: Any) -> None:
        """Remove *fd*. A ring entry still pending for it is skipped (EPOLLREMOVED)."""
        fd = _as_fd(fd)
        with _Inside(self):
            self._backend.ctl(abi.EPOLL_CTL_DEL, fd, 0, 0)
            self._forget(fd)

    def poll(self, timeout: float | None = None, maxevents: int = -1) -> list[tuple[int, int]]:
        """Wait for events, as ``select.epoll.poll``: a list of ``(fd, events)``."""
        key, binding = self._pairs_cache
        if (
            # The same int object as last time needs no check; an equal one must be an int
            # (4.0 == 4, but select.epoll refuses a float).
            (maxevents is not key and (maxevents.__class__ is not int or maxevents != key))
            or self._slow
            or not self._pairs_lock.acquire(False)
        ):
            return self._poll_slow(timeout, maxevents)
        try:
            # 0 is the int 0 itself (CPython has one); an equal Decimal(0), 0j or
            # Fraction(0) goes through the checks, which refuse them as select.epoll does.
            tns = -1 if timeout is None else 0 if timeout is _ZERO else _timeout_ns(timeout)
            return self._pairs(binding, tns)
        finally:
            self._pairs_lock.release()

    def _pairs(self, binding: tuple[Any, ...], tns: int) -> list[tuple[int, int]]:
        """One drain into a binding's split arrays, turned into (fd, events) tuples."""
        # The start of a timed wait, for the deadline an EINTR retry needs (one vDSO clock
        # read, and only when there is a timeout to keep).
        start = _now() if tns > 0 else 0
        n = self._poll_bound(binding[0], tns)
        if n <= 0:
            if n < 0:
                n = self._poll_error(n, tns, start, binding[0])
            if n == 0 and tns > 0:
                n = self._last_look(binding[0])
            if n == 0:
                return []
        mv_data, mv_events = binding[1], binding[2]
        if n == 1:
            data = mv_data[0]
            if self._fd_of_data:
                data = self._fd_of_data.get(data, data)
            return [(data, mv_events[0])]
        fds = mv_data[:n].tolist()
        if self._fd_of_data:
            get = self._fd_of_data.get
            fds = [get(d, d) for d in fds]
        return list(zip(fds, mv_events[:n].tolist(), strict=True))

    def _pairs_binding_for(self, count: int) -> tuple[Any, ...]:
        """Split result arrays for *count* events and their C binding (with what it uses)."""
        try:
            # One block of the size select.epoll allocates (12 bytes per event), so that a
            # machine that cannot give it one cannot give it us either: the same MemoryError
            # for the same maxevents, not two smaller allocations that happen to fit.
            block = np.zeros(count * _EPOLL_EVENT_SIZE, np.uint8)
        except MemoryError:
            raise MemoryError from None  # as select.epoll: the plain one, not numpy's subclass
        data = block[: 8 * count].view(np.uint64)  # first: numpy's allocation is aligned
        events = block[8 * count :].view(np.uint32)
        data_ptr, events_ptr = ffi.from_buffer(data), ffi.from_buffer(events)
        with _Inside(self):
            memory = self._backend.memory
        binding = ffi.new(
            "struct ue_binding *",
            {
                "consumer": memory[0],
                "out": events_ptr,
                "data_out": ffi.cast("uint64_t *", data_ptr),
                "max": count,
            },
        )
        return (binding, data.data, events.data, data_ptr, events_ptr, memory)

    def _poll_slow(self, timeout: Any, maxevents: Any) -> list[tuple[int, int]]:
        """Argument checks, LT re-arms and (re)binding; then the same drain as the fast path."""
        # select.epoll's checks, in its order and with its errors.
        if maxevents.__class__ is not int or not _INT_MIN <= maxevents <= _INT_MAX:
            maxevents = _c_int(maxevents)
        self._check_open()
        tns = _timeout_ns(timeout)
        if maxevents != -1 and maxevents <= 0:
            raise ValueError(f"maxevents must be greater than 0, got {maxevents}")
        count = _FD_SETSIZE - 1 if maxevents == -1 else maxevents
        if count > _EP_MAX_EVENTS:
            # select.epoll allocates that many events (MemoryError if it cannot), and then
            # epoll_wait refuses more than it can copy out (EINVAL).
            try:
                np.empty(count * _EPOLL_EVENT_SIZE, np.uint8)
            except MemoryError:
                raise MemoryError from None  # the plain one, not numpy's subclass
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        if not self._ring and not self._fd_of_data:
            try:
                return self._stdlib(timeout, maxevents)  # its data is the fd: no mapping
            except OSError as exc:
                # Its epoll_wait ran on the fd a close() on another thread had just closed.
                if exc.errno == errno.EBADF and (self._closed or self._share.closing):
                    self._poll_gone()
                raise
        if self._rearm:
            with _Inside(self):
                self._do_rearm()
        if self._pairs_lock.acquire(False):
            try:
                key, binding = self._pairs_cache
                if key != maxevents:
                    binding = self._pairs_binding_for(count)
                    self._pairs_cache = (maxevents, binding)
                result = self._pairs(binding, tns)
            finally:
                self._pairs_lock.release()
        else:
            # Another thread is polling with the shared arrays: use arrays of our own.
            result = self._pairs(self._pairs_binding_for(count), tns)
        if self._lt:
            self._note_lt([fd for fd, _ in result])
        self._update_paths()
        return result

    # ---- the ring extras --------------------------------------------------------------------

    def poll_into(self, buffer: np.ndarray, timeout: float | None = None) -> int:
        """Fill *buffer* (a 1-d C-contiguous array of :data:`EVENT_DTYPE`) and return the count.

        One C call, no allocation: the ring is drained straight into the buffer (``data`` is
        the registration's 64-bit data, the fd by default).
        """
        cache = self._into_fast  # (None, ...) whenever the slow path must run
        if buffer is not cache[0]:
            return self._poll_into_slow(buffer, timeout)
        tns = -1 if timeout is None else 0 if timeout is _ZERO else _timeout_ns(timeout)
        start = _now() if tns > 0 else 0  # as in _pairs
        n: int = self._poll_bound(cache[1], tns)
        if n <= 0:
            if n == _MOVED:  # resized in place (or made read-only) since it was bound
                return self._poll_into_slow(buffer, timeout)
            if n < 0:
                n = self._poll_error(n, tns, start, cache[1])
            if n == 0 and tns > 0:
                n = self._last_look(cache[1])
        return n

    def _poll_into_slow(self, buffer: np.ndarray, timeout: Any) -> int:
        self._check_open()
        cache = self._into_cache
        if buffer is not cache[0] or not _same_memory(buffer, cache):
            cache = self._into_cache = (buffer, *self._into_binding_for(buffer))
            self._update_paths()
        if self._rearm:
            with _Inside(self):
                self._do_rearm()
        tns = -1 if timeout is None else _timeout_ns(timeout)
        start = _now() if tns > 0 else 0
        n: int = self._poll_bound(cache[1], tns)
        while n == _MOVED:  # another thread resized it since: bind it again
            cache = self._into_cache = (buffer, *self._into_binding_for(buffer))
            self._update_paths()
            n = self._poll_bound(cache[1], tns)
        if n < 0:
            n = self._poll_error(n, tns, start, cache[1])
        if n == 0 and tns > 0:
            n = self._last_look(cache[1])
        if self._lt and n:
            data = buffer["data"][:n].tolist()
            if self._fd_of_data:
                get = self._fd_of_data.get
                data = [get(d, d) for d in data]
            self._note_lt(data)
        return n

    def _into_binding_for(self, buffer: np.ndarray) -> tuple[Any, ...]:
        if not isinstance(buffer, np.ndarray):
            raise TypeError("buffer must be a numpy array of uring_epoll.EVENT_DTYPE")
        if buffer.dtype != abi.EVENT_DTYPE:
            raise TypeError(f"buffer dtype must be uring_epoll.EVENT_DTYPE, not {buffer.dtype}")
        if buffer.ndim != 1 or not buffer.flags.c_contiguous or not buffer.flags.writeable:
            raise ValueError("buffer must be a 1-d, C-contiguous, writeable array")
        if len(buffer) == 0:
            raise ValueError("buffer must hold at least one event")
        ptr = ffi.from_buffer(buffer)
        with _Inside(self):
            memory = self._backend.memory
        fields = {
            "consumer": memory[0],
            "out": ptr,
            "data_out": ffi.NULL,
            "max": min(len(buffer), 2**31 - 1),
        }
        # Every call checks, in C, that the array still lies where it did (see struct
        # ue_binding), through numpy's array struct; where that layout is not the one
        # expected (a debug or free-threaded Python), every call rebinds instead.
        head = ffi.cast("const struct ue_ndarray_head *", id(buffer))
        descr = ffi.cast("void *", id(buffer.dtype))
        checked = (
            type(buffer) is np.ndarray
            and head.data == ffi.cast("char *", ptr)
            and head.nd == 1
            and head.dimensions[0] == len(buffer)
            and head.descr == descr
            and head.flags & lib.UE_NPY_ARRAY_WRITEABLE
        )
        if checked:
            fields.update(array=head, descr=descr, length=len(buffer))
        binding = ffi.new("struct ue_binding *", fields)
        return (binding, ptr, len(ptr), memory) if checked else (binding, ptr, -1, memory)

    @property
    def header(self) -> np.ndarray | None:
        """Read-only view of the ring header (``HEADER_DTYPE``); None on the epoll backend."""
        with _Inside(self):
            return self._backend.header

    @property
    def items(self) -> np.ndarray | None:
        """Read-only view of the shared items (``ITEM_DTYPE``), indexed by slot number."""
        with _Inside(self):
            return self._backend.items

    @property
    def index(self) -> np.ndarray | None:
        """Read-only view of the index ring (u32 slots)."""
        with _Inside(self):
            return self._backend.index

    @property
    def cqes(self) -> np.ndarray | None:
        """uring backend: read-only view of the CQ ring's CQEs (``abi.CQE_DTYPE``), by
        position; None on the other backends."""
        with _Inside(self):
            return self._backend.cqes

    @property
    def stats(self) -> PollStats:
        """Counters: ring events, sleeps, ESTALE returns, spins, LT re-arms (and on uring,
        CQEs, multishot restarts, overflows, enters, stale CQEs)."""
        with _Inside(self):
            counters = self._backend.stats()
        return PollStats(
            ring_events=counters.get("ring_events", 0),
            sleeps=counters.get("sleeps", 0),
            estale=counters.get("estale", 0),
            spins=counters.get("spins", 0),
            spin_hits=counters.get("spin_hits", 0),
            skipped=counters.get("skipped", 0),
            slot_waits=counters.get("slot_waits", 0),
            rearms=self._rearms + counters.get("rearms", 0),
            cqes=counters.get("cqes", 0),
            multishot_restarts=counters.get("multishot_restarts", 0),
            overflows=counters.get("overflows", 0),
            enters=counters.get("enters", 0),
            stale=counters.get("stale", 0),
            repolls=counters.get("repolls", 0),
        )

    # ---- internals --------------------------------------------------------------------------

    def _update_paths(self) -> None:
        lt = bool(self._lt)
        self._slow = self._closed or lt or not self._ring
        unchecked = self._into_cache[3] < 0
        self._into_fast = _NO_BUFFER if self._closed or lt or unchecked else self._into_cache

    def _registrations_changed(self) -> None:
        """Re-pick the poll paths of every object that shares the registrations."""
        objects = self._share.objects
        if len(objects) > 1:
            for ep in list(objects):
                ep._update_paths()
        else:
            self._update_paths()

    def _check_open(self) -> None:
        if self._closed:
            self._raise_closed()

    def _raise_closed(self) -> None:
        """What every call raises once close() began (or the backend went at exit)."""
        if self._in_fork_child:
            _forked_poll()
        if self._fd_gone:
            # Another object over the same fd number closed it (fromfd), as the stdlib.
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        raise ValueError("I/O operation on closed epoll object")

    def _poll_gone(self) -> None:
        """A poll that found the backend closed: ValueError after close(); at exit, sleep.

        A backend closed under an object nobody closed is the exit-time finalizers' doing,
        and a thread other than the main one still polling then is a daemon thread (the
        others were joined first). select.epoll's would sleep on in epoll_wait until the
        process is gone, silently; ours was woken by the close, so it sleeps here instead
        of printing a traceback for every such thread.
        """
        if (
            not self._closed
            and self._share.closing
            and threading.current_thread() is not threading.main_thread()
        ):
            threading.Event().wait()
        self._raise_gone()

    def _raise_gone(self) -> None:
        """The backend is closed or closing: by close() (ValueError), or under a live
        object (exit-time finalizers: OSError(EBADF), as a select.epoll whose fd went)."""
        if self._closed:
            self._raise_closed()
        raise closed_error()

    def _forked(self) -> None:
        """In a fork child: this object belongs to the parent; fail clearly from now on."""
        self._finalizer.detach()
        self._in_fork_child = True
        self._share.after_fork_in_child()
        self._backend.after_fork_in_child()
        self._closed = True
        self._update_paths()
        self._poll_bound = _forked_poll
        self._into_cache = self._into_fast = _NO_BUFFER
        self._pairs_cache = (_NO_KEY, None)

    def _ctl(self, op: int, fd: Any, eventmask: int, data: int | None) -> None:
        # select.epoll's conversions (an unsigned int mask keeps its low 32 bits), then
        # its closed check.
        fd = _as_fd(fd)
        eventmask = operator.index(eventmask) & 0xFFFFFFFF
        with _Inside(self):
            self._ctl_inside(op, fd, eventmask, data)

    def _ctl_inside(self, op: int, fd: int, eventmask: int, data: int | None) -> None:
        old_data = self._data_of_fd.get(fd)
        if data is None:
            data = old_data if (op == abi.EPOLL_CTL_MOD and old_data is not None) else fd
        elif not isinstance(data, int) or not 0 <= data < 2**64:
            raise ValueError(f"data must be an integer in 0..2**64-1, got {data!r}")
        if self._ring and eventmask & abi.EPOLLEXCLUSIVE:
            if op == abi.EPOLL_CTL_MOD or eventmask & ~_EXCLUSIVE_OK:
                # What a stock kernel refuses, it refuses with its own errno (EBADF for a
                # bad fd before EINVAL, ...): ask one, on a scratch epoll.
                with select.epoll() as scratch:
                    if op == abi.EPOLL_CTL_MOD:
                        scratch.modify(fd, eventmask)
                    scratch.register(fd, eventmask)
            raise ValueError(
                "EPOLLEXCLUSIVE cannot be used on a ring backend: the EPOLL_USERPOLL RFC "
                "rejects it (EINVAL), as exclusive wake-ups have no meaning for a shared ring"
            )
        owner = self._fd_of_data.get(data, data if data in self._data_of_fd else None)
        if owner is not None and owner != fd and self._data_of_fd.get(owner) == data:
            if owner in self._backend.live_fds():
                raise ValueError(f"data {data} is already used by fd {owner} on this epoll object")
            self._drop_closed(owner)  # its file was closed: the kernel dropped it
        level = not eventmask & abi.EPOLLET
        # EPOLLREMOVED is the ring's own bit: a stock kernel ignores it in a mask, so do we.
        mask = (eventmask | abi.EPOLLET) & ~abi.EPOLLREMOVED if self._force_et else eventmask
        try:
            self._backend.ctl(op, fd, mask, data)
        except OSError as exc:
            if exc.errno != errno.ENOSPC or not self._reclaim_closed():
                raise
            self._backend.ctl(op, fd, mask, data)  # room again after closed files went
        # Only now that the kernel agreed: update what poll() needs to name fds.
        if old_data is not None and old_data != fd:
            self._fd_of_data.pop(old_data, None)
        self._data_of_fd[fd] = data
        if data != fd:
            self._fd_of_data[data] = fd
        if self._force_et and level and not eventmask & abi.EPOLLONESHOT:
            self._lt[fd] = (mask, data)
        else:
            self._lt.pop(fd, None)
        self._registrations_changed()

    def _reclaim_closed(self) -> bool:
        """Forget registrations whose files were closed without unregister; True if any."""
        stale = set(self._data_of_fd) - self._backend.live_fds()
        for fd in stale:
            self._drop_closed(fd)
        return bool(stale)

    def _drop_closed(self, fd: int) -> None:
        self._backend.forget(fd)
        self._forget(fd)

    def _forget(self, fd: int) -> None:
        data = self._data_of_fd.pop(fd, None)
        if data is not None and data != fd:
            self._fd_of_data.pop(data, None)
        self._lt.pop(fd, None)
        self._registrations_changed()

    def _note_lt(self, fds: list[int]) -> None:
        lt = self._lt
        self._rearm.extend(fd for fd in fds if fd in lt)

    def _do_rearm(self) -> None:
        pending = self._rearm[:]
        self._rearm.clear()  # in place: objects sharing the registrations share the list
        for fd in dict.fromkeys(pending):
            reg = self._lt.get(fd)
            if reg is None:
                continue
            try:
                self._backend.ctl(abi.EPOLL_CTL_MOD, fd, reg[0], reg[1])
                self._rearms += 1
            except OSError as exc:
                # Closed or unregistered since it was delivered: nothing left to re-arm.
                if exc.errno not in (errno.ENOENT, errno.EBADF):
                    raise

    def _last_look(self, binding: Any) -> int:
        """After a timed wait ran out: one more drain that cannot wait.

        With timeout 0 the emulator first publishes what its poller thread has not yet, so
        an event made ready before poll() was called is never missed, however short the
        timeout (select.epoll waits at least a millisecond; poll(1e-9) waits 1 ns).
        """
        n: int = self._poll_bound(binding, 0)
        if n == _MOVED:  # the buffer moved since this call bound it: nothing was written
            return 0
        return self._poll_error(n, 0, 0, binding) if n < 0 else n

    def _poll_error(self, n: int, tns: int, start: int, binding: Any) -> int:
        """Handle a negative result: EINTR retries (PEP 475), EBADMSG names the corruption.

        *tns* is the poll's timeout in ns (-1: none) and *start* the clock reading taken
        before its first wait: the one deadline every retry keeps to, so that signals never
        make the total wait longer than the timeout.
        """
        deadline = start + tns if tns > 0 else -1
        while n == -errno.EINTR:
            # Entering this function (and each pass of the loop) ran the signal handlers;
            # an exception from one propagates from here. Otherwise retry with what is left.
            if deadline >= 0:
                tns = max(0, deadline - _now())
            n = self._poll_bound(binding, tns)
        if n >= 0:
            return n
        if self._closed or self._share.closing:
            # close() began while we were in C: the consumer returned -EBADF, or the
            # producer it would have waited for had already stopped (-EPIPE).
            self._poll_gone()
        if n == -errno.EBADMSG:
            raise self._backend.corrupt_error()
        raise os_error(n)


def _forked_poll(*_args: Any) -> int:
    raise RuntimeError(
        "this uring_epoll.epoll object was created in the parent process; after fork() its "
        "ring and producer belong to the parent: create a new epoll object in the child"
    )
