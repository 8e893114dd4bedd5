"""uring_epoll.vpoll: every operation on every implementation available here.

The kernel forms (``eventfd``, ``device``) exist only inside the patched User-Mode Linux; there
``URING_EPOLL_REQUIRE_KERNEL=1`` is set and an unavailable kernel form fails instead of
skipping. Each test takes the implementation from the ``impl`` fixture.
"""

from __future__ import annotations

import errno
import os
import select
import selectors
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

import uring_epoll
from uring_epoll import vpoll as vp
from uring_epoll.vpoll import VPoll

IN, PRI, OUT, ERR, HUP = (
    select.EPOLLIN,
    select.EPOLLPRI,
    select.EPOLLOUT,
    select.EPOLLERR,
    select.EPOLLHUP,
)
RDHUP = select.EPOLLRDHUP
ALL_INTEREST = IN | PRI | OUT | ERR | HUP | RDHUP
REQUIRE_KERNEL = os.environ.get("URING_EPOLL_REQUIRE_KERNEL", "") not in ("", "0")
KERNEL_IMPLS = ("eventfd", "device")
#: Ring backends of uring_epoll.epoll to run against; inside the patched kernel "kernel" is
#: listed even if its probe fails, so those tests fail rather than quietly test less.
RING_BACKENDS = uring_epoll.available_backends()
if REQUIRE_KERNEL and "kernel" not in RING_BACKENDS:
    RING_BACKENDS.insert(0, "kernel")


def _use(name: str) -> str:
    status = vp.implementation_status()[name]
    if not status.available:
        if REQUIRE_KERNEL and name in KERNEL_IMPLS:
            pytest.fail(
                f"URING_EPOLL_REQUIRE_KERNEL=1 but vpoll {name} is unavailable: {status.reason}",
                pytrace=False,
            )
        pytest.skip(f"vpoll {name} unavailable: {status.reason}")
    return name


@pytest.fixture(params=vp.IMPLEMENTATIONS)
def impl(request: pytest.FixtureRequest) -> str:
    return _use(request.param)


@pytest.fixture(params=KERNEL_IMPLS)
def kernel_impl(request: pytest.FixtureRequest) -> str:
    return _use(request.param)


@pytest.fixture
def source(impl: str) -> Iterator[VPoll]:
    with VPoll(0, impl) as v:
        yield v


def polled(fd: int, mask: int = ALL_INTEREST) -> int:
    """What select.epoll reports for *fd* right now (0 for nothing)."""
    with select.epoll() as ep:
        ep.register(fd, mask)
        got = ep.poll(0)
    return got[0][1] if got else 0


def supported(v: VPoll) -> int:
    return v.supported_events


# ---- implementations and detection ----------------------------------------------------------


def test_emulation_always_available() -> None:
    assert "emulation" in vp.available_implementations()
    assert vp.available_implementations()[-1] == "emulation"


def test_required_kernel_forms_are_available() -> None:
    if not REQUIRE_KERNEL:
        pytest.skip("URING_EPOLL_REQUIRE_KERNEL is not set")
    assert vp.available_implementations() == ["eventfd", "device", "emulation"]
    assert vp.resolve_impl("auto") == "eventfd"


def test_auto_picks_the_first_available(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(vp.VPOLL_ENV, raising=False)
    with VPoll() as v:
        assert v.impl == vp.available_implementations()[0]
    assert vp.resolve_impl(None) == vp.resolve_impl("auto")


def test_env_overrides_auto_and_impl_overrides_env(
    monkeypatch: pytest.MonkeyPatch, impl: str
) -> None:
    monkeypatch.setenv(vp.VPOLL_ENV, impl)
    with VPoll() as v:
        assert v.impl == impl
    monkeypatch.setenv(vp.VPOLL_ENV, "nonsense")
    with VPoll(impl="emulation") as v:
        assert v.impl == "emulation"
    with pytest.raises(ValueError, match=r"nonsense.*URING_EPOLL_VPOLL"):
        VPoll()


def test_unknown_impl_is_value_error() -> None:
    with pytest.raises(ValueError, match="unknown vpoll implementation 'epoll'"):
        VPoll(impl="epoll")


@pytest.mark.parametrize("name", KERNEL_IMPLS)
def test_forced_unavailable_impl_says_why(name: str) -> None:
    status = vp.implementation_status()[name]
    if status.available:
        pytest.skip(f"{name} is available here")
    with pytest.raises(OSError, match=f"'{name}'.*unavailable: ") as info:
        VPoll(impl=name)
    assert info.value.errno == status.errno != 0


def test_describe_implementations_names_the_choice() -> None:
    text = vp.describe_implementations()
    assert text.startswith(vp.resolve_impl(None))
    for status in vp.implementation_status().values():
        assert (f"{status.name} unavailable: {status.reason}" in text) is not status.available


def test_probe_never_writes_to_an_ordinary_eventfd() -> None:
    """Refreshing detection leaves a counting eventfd's counter alone (and opens none)."""
    fd = os.eventfd(5, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    try:
        vp.implementation_status(refresh=True)
        assert os.eventfd_read(fd) == 5
    finally:
        os.close(fd)


# ---- the object ------------------------------------------------------------------------------


def test_object_surface(source: VPoll, impl: str) -> None:
    assert source.impl == impl
    assert not source.closed
    assert isinstance(source.fileno(), int) and source.fileno() >= 0
    assert source.events == 0
    assert polled(source.fileno()) == 0
    assert impl in repr(source)
    assert os.get_inheritable(source.fileno()) is False
    assert os.get_blocking(source.fileno()) is False


def test_initial_events(impl: str) -> None:
    for events in (IN, OUT, IN | OUT):
        with VPoll(events, impl) as v:
            assert v.events == events
            assert polled(v.fileno()) == events


def test_initial_hup(impl: str) -> None:
    with VPoll(HUP, impl) as v:
        expected = HUP if impl in KERNEL_IMPLS else IN | HUP | RDHUP
        assert v.events == expected == polled(v.fileno())


def test_add_delete_set_return_the_new_set(source: VPoll) -> None:
    assert source.add(IN) == IN
    assert source.add(OUT) == IN | OUT
    assert source.delete(IN) == OUT
    assert source.set(IN) == IN
    assert source.ctl(vp.VPOLL_CTL_ADD, OUT) == IN | OUT
    assert source.ctl(vp.VPOLL_CTL_DEL, IN | OUT) == 0
    assert source.ctl(vp.VPOLL_CTL_SET, OUT) == OUT
    assert source.events == OUT == polled(source.fileno())


def test_idempotent_add_and_delete(source: VPoll) -> None:
    """Two ADDs of IN need one DEL (the reference emulation counted bytes)."""
    source.add(IN)
    source.add(IN)
    source.add(IN)
    assert polled(source.fileno()) == IN
    assert source.delete(IN) == 0
    assert polled(source.fileno()) == 0
    assert source.delete(IN) == 0
    source.delete(OUT)
    source.delete(OUT)
    assert source.add(OUT) == OUT
    assert source.add(OUT) == OUT
    assert source.delete(OUT) == 0
    assert polled(source.fileno()) == 0


def test_set_replaces(source: VPoll) -> None:
    source.set(IN | OUT)
    assert polled(source.fileno()) == IN | OUT
    assert source.set(OUT) == OUT
    assert polled(source.fileno()) == OUT
    assert source.set(IN) == IN
    assert polled(source.fileno()) == IN
    assert source.set(0) == 0
    assert polled(source.fileno()) == 0


def test_classic_sequence_through_epoll(source: VPoll) -> None:
    """The demo's steps, each seen by a level-triggered select.epoll and then cleared."""
    got = []
    with select.epoll() as ep:
        ep.register(source.fileno(), ALL_INTEREST)
        assert ep.poll(0) == []
        for step in (IN, IN, IN | PRI, PRI, OUT, HUP):
            events = step & supported(source)
            if not events:
                continue
            source.add(events)
            result = ep.poll(1)
            assert len(result) == 1
            got.append(result[0][1])
            if not result[0][1] & HUP:
                source.delete(result[0][1])
                assert ep.poll(0) == []
    if source.impl in KERNEL_IMPLS:
        assert got == [IN, IN, IN | PRI, PRI, OUT, HUP]
    else:
        assert got == [IN, IN, IN, OUT, IN | HUP | RDHUP]


def test_kernel_forms_carry_any_valid_bit(kernel_impl: str) -> None:
    with VPoll(0, kernel_impl) as v:
        for bit in range(28):
            mask = 1 << bit
            if mask & vp.VPOLL_VALID_EVENTS:
                assert v.set(mask) == mask
        assert v.set(vp.VPOLL_VALID_EVENTS) == vp.VPOLL_VALID_EVENTS
        assert v.delete(HUP) == vp.VPOLL_VALID_EVENTS & ~HUP  # a kernel hangup is undoable


def test_kernel_forms_wake_edge_triggered_on_every_command(kernel_impl: str) -> None:
    with VPoll(0, kernel_impl) as v, select.epoll() as ep:
        ep.register(v.fileno(), IN | select.EPOLLET)
        v.add(IN)
        assert ep.poll(0) == [(v.fileno(), IN)]
        assert ep.poll(0) == []
        v.add(IN)  # no change, still a wake-up with the whole set as key
        assert ep.poll(0) == [(v.fileno(), IN)]


def test_reading_the_set_wakes_no_one(impl: str) -> None:
    """``events`` is a read: an edge-triggered watcher must not see an event for it (the
    ioctl that also returns the set, ADD 0, wakes every watcher). A bit above the 16 that
    poll(2) can report must read back too."""
    initial = IN if impl == "emulation" else IN | 1 << 16
    with VPoll(initial, impl) as v, select.epoll() as ep:
        ep.register(v.fileno(), IN | select.EPOLLET)
        assert ep.poll(0) == [(v.fileno(), IN)]  # the initial state
        for _ in range(3):
            assert v.events == initial
            assert ep.poll(0) == []


def test_eventfd_form_reads_the_set_without_consuming(kernel_impl: str) -> None:
    if kernel_impl != "eventfd":
        pytest.skip("the eventfd form only")
    with VPoll(IN | OUT, "eventfd") as v:
        for _ in range(3):
            assert struct.unpack("=Q", os.read(v.fileno(), 8))[0] == IN | OUT


# ---- the emulation's particulars -------------------------------------------------------------


@pytest.fixture
def emu() -> Iterator[VPoll]:
    with VPoll(0, "emulation") as v:
        yield v


def test_emulation_holds_exactly_one_byte(emu: VPoll) -> None:
    user = socket.socket(fileno=os.dup(emu.fileno()))
    try:
        for _ in range(5):
            emu.add(IN)
        assert user.recv(100, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"\x01"
    finally:
        user.close()


def test_emulation_out_by_select_poll(emu: VPoll) -> None:
    p = select.poll()
    p.register(emu.fileno(), select.POLLOUT)
    assert p.poll(0) == []
    emu.add(OUT)
    assert p.poll(0) == [(emu.fileno(), select.POLLOUT)]
    emu.delete(OUT)
    assert p.poll(0) == []
    emu.add(OUT)
    assert p.poll(0) == [(emu.fileno(), select.POLLOUT)]


@pytest.mark.parametrize("bits", [PRI, ERR, RDHUP, select.EPOLLRDNORM, select.EPOLLMSG, IN | PRI])
@pytest.mark.parametrize("op", ["create", "add", "set"])
def test_emulation_refuses_what_it_cannot_produce(emu: VPoll, bits: int, op: str) -> None:
    with pytest.raises(ValueError, match="emulation cannot produce events") as info:
        if op == "create":
            VPoll(bits, "emulation")
        else:
            getattr(emu, op)(bits)
    assert "EPOLLIN|" not in str(info.value)  # only the offending bits are named
    assert emu.events == 0  # nothing changed, not even the producible part


def test_emulation_delete_of_unproducible_bits_is_a_no_op(emu: VPoll) -> None:
    emu.add(IN)
    assert emu.delete(PRI | ERR) == IN
    assert emu.delete(IN | PRI) == 0


def test_emulation_hangup_is_final(emu: VPoll) -> None:
    emu.add(IN)
    assert emu.add(HUP) == IN | HUP | RDHUP == 0x2011
    for method, bits in (("add", IN), ("delete", IN), ("set", 0), ("add", HUP), ("delete", HUP)):
        with pytest.raises(BrokenPipeError, match="hung up"):
            getattr(emu, method)(bits)
    assert emu.events == 0x2011  # and no SIGPIPE killed us


def test_emulation_hangup_keeps_a_raised_out(emu: VPoll) -> None:
    emu.add(OUT)
    assert emu.add(HUP) == IN | OUT | HUP | RDHUP


def test_emulation_user_reading_the_byte(emu: VPoll) -> None:
    """Documented: reading the byte clears IN; the next ADD of IN puts one back."""
    emu.add(IN)
    os.read(emu.fileno(), 10)
    assert emu.events == 0
    assert emu.add(IN) == IN
    assert polled(emu.fileno()) == IN


def test_emulation_user_writing_is_discarded_by_add_out(emu: VPoll) -> None:
    emu.add(OUT)
    os.write(emu.fileno(), b"x" * 100)
    assert emu.add(OUT) == OUT


def test_state_shared_with_a_forked_child(impl: str) -> None:
    """A child drives the fd; the parent sees and clears the result (the demo's pattern)."""
    with VPoll(0, impl) as v:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                v.add(IN)
                v.add(IN)
                code = 0
            finally:
                os._exit(code)
        assert os.waitpid(pid, 0)[1] == 0
        assert v.events == IN
        assert v.delete(IN) == 0
        assert polled(v.fileno()) == 0


def test_threads_hammering_one_object(source: VPoll) -> None:
    def work() -> None:
        for _ in range(200):
            source.add(IN | OUT)
            source.delete(OUT)
            source.set(IN)
            source.delete(IN)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert source.events == 0 == polled(source.fileno())


# ---- in every poller -------------------------------------------------------------------------


def test_selectors(source: VPoll) -> None:
    with selectors.DefaultSelector() as sel:
        sel.register(source, selectors.EVENT_READ | selectors.EVENT_WRITE, "data")
        assert sel.select(0) == []
        source.add(IN)
        [(key, mask)] = sel.select(0)
        assert key.fileobj is source and key.data == "data" and mask == selectors.EVENT_READ
        source.set(OUT)
        [(key, mask)] = sel.select(0)
        assert mask == selectors.EVENT_WRITE
        sel.unregister(source)


def test_select_poll(source: VPoll) -> None:
    p = select.poll()
    p.register(source, select.POLLIN | select.POLLOUT)
    assert p.poll(0) == []
    source.add(IN | OUT)
    assert p.poll(0) == [(source.fileno(), select.POLLIN | select.POLLOUT)]


def test_select_select(source: VPoll) -> None:
    assert select.select([source], [source], [], 0) == ([], [], [])
    source.add(IN)
    assert select.select([source], [source], [], 0) == ([source], [], [])
    source.set(OUT)
    assert select.select([source], [source], [], 0) == ([], [source], [])


def test_wakes_a_blocked_waiter(source: VPoll) -> None:
    with select.epoll() as ep:
        ep.register(source.fileno(), IN)
        timer = threading.Timer(0.05, source.add, (IN,))
        timer.start()
        try:
            assert ep.poll(5) == [(source.fileno(), IN)]
        finally:
            timer.join()


@pytest.mark.parametrize("backend", RING_BACKENDS)
def test_uring_epoll(source: VPoll, backend: str) -> None:
    with uring_epoll.epoll(backend=backend) as ep:
        # Not PRI: see test_kernel_ring_reports_socket_wake_keys for the emulation's case.
        ep.register(source, IN | OUT | ERR | HUP | RDHUP)
        assert ep.poll(0) == []
        source.add(IN)
        assert ep.poll(1) == [(source.fileno(), IN)]
        assert ep.poll(0) == [(source.fileno(), IN)]  # level-triggered: still there
        source.delete(IN)
        assert ep.poll(0) == []
        source.add(OUT)
        assert ep.poll(1) == [(source.fileno(), OUT)]


def test_close_while_registered_in_select_epoll(source: VPoll) -> None:
    with select.epoll() as ep:
        fd = source.fileno()
        ep.register(fd, IN)
        source.add(IN)
        source.close()
        assert source.closed
        assert ep.poll(0) == []  # epoll forgets a closed file
        with pytest.raises(OSError) as info:
            ep.unregister(fd)
        assert info.value.errno == errno.EBADF


@pytest.mark.parametrize("backend", RING_BACKENDS)
def test_close_while_registered_in_uring_epoll(
    source: VPoll, backend: str, request: pytest.FixtureRequest
) -> None:
    if backend == "thread":
        # The emulator cannot see a close(): an entry its poller published just before it is
        # still delivered (documented; see test_epoll_api). Whether it had published depends
        # on timing, hence not strict.
        request.applymarker(
            pytest.mark.xfail(
                strict=False, reason="the emulator cannot see a close(); unregister before closing"
            )
        )
    if backend == "uring":
        # A poll request holds a reference to its file: the close leaves it open, and the
        # completion posted for add(IN) is delivered (documented in backends/uring.py).
        request.applymarker(
            pytest.mark.xfail(
                strict=True, reason="an io_uring poll request keeps its file open; unregister first"
            )
        )
    with uring_epoll.epoll(backend=backend) as ep:
        ep.register(source, IN)
        source.add(IN)
        source.close()
        assert ep.poll(0.05) == []
        with VPoll(IN, source.impl) as other:  # the loop goes on working
            ep.register(other, IN)
            assert ep.poll(1) == [(other.fileno(), IN)]


@pytest.mark.parametrize("backend", ["select.epoll", *RING_BACKENDS])
def test_many_sources_in_one_epoll(impl: str, backend: str) -> None:
    count = 500
    sources = [VPoll(0, impl) for _ in range(count)]
    try:
        ep = select.epoll() if backend == "select.epoll" else uring_epoll.epoll(backend=backend)
        with ep:
            for v in sources:
                ep.register(v.fileno(), IN | OUT)
            assert ep.poll(0) == []
            raised = {v.fileno() for v in sources[::3]}
            for v in sources[::3]:
                v.add(IN)
            # A ring backend's poll returns what its producer has published so far: gather.
            got: dict[int, int] = {}
            deadline = time.monotonic() + 10
            while set(got) != raised and time.monotonic() < deadline:
                got.update(ep.poll(1, count))
            assert set(got) == raised and set(got.values()) == {IN}
            for v in sources[::3]:
                v.delete(IN)
            assert ep.poll(0) == []
    finally:
        for v in sources:
            v.close()


# ---- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize("events", [-1, -(1 << 40), 1 << 32, 1 << 64])
def test_out_of_range_masks(source: VPoll, events: int) -> None:
    with pytest.raises(ValueError, match="32-bit unsigned"):
        source.add(events)
    with pytest.raises(ValueError, match="32-bit unsigned"):
        VPoll(events, source.impl)


@pytest.mark.parametrize("bit", range(28, 32))
def test_flag_bits_28_to_31(source: VPoll, bit: int) -> None:
    for method in (source.add, source.delete, source.set):
        with pytest.raises(ValueError, match=r"bits 28\.\.31"):
            method(IN | 1 << bit)
    assert source.events == 0


@pytest.mark.parametrize("bits", [0x4000, 0x8000, 1 << 27])
def test_reserved_kernel_bits(source: VPoll, bits: int) -> None:
    with pytest.raises(ValueError, match="reserved"):
        source.add(bits)


@pytest.mark.parametrize("op", [0, 4, -1, 1 << 32])
def test_unknown_op(source: VPoll, op: int) -> None:
    with pytest.raises(ValueError, match="unknown vpoll op"):
        source.ctl(op, IN)
    with pytest.raises(ValueError, match="unknown vpoll op"):
        vp.vpoll_ctl(source.fileno(), op, IN)
    assert source.events == 0


@pytest.mark.parametrize("value", [1.0, "1", None])
def test_non_integers_are_type_errors(source: VPoll, value: object) -> None:
    with pytest.raises(TypeError):
        source.add(value)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        source.ctl(value, IN)  # type: ignore[arg-type]


def test_closed_object(impl: str) -> None:
    v = VPoll(IN, impl)
    v.close()
    v.close()  # idempotent
    assert v.closed
    for call in (
        v.fileno,
        lambda: v.events,
        lambda: v.add(IN),
        lambda: v.delete(IN),
        lambda: v.set(IN),
        lambda: v.ctl(1, IN),
    ):
        with pytest.raises(ValueError, match="closed"):
            call()
    with pytest.raises(ValueError, match="closed"), v:
        pass


def test_context_manager_closes(impl: str) -> None:
    with VPoll(0, impl) as v:
        fd = v.fileno()
    assert v.closed
    with pytest.raises(OSError):
        os.fstat(fd)


# ---- functional API --------------------------------------------------------------------------


def test_constants() -> None:
    assert (vp.VPOLL_CTL_ADD, vp.VPOLL_CTL_DEL, vp.VPOLL_CTL_SET) == (1, 2, 3)
    assert (vp.VPOLL_CTL_ADDEVENTS, vp.VPOLL_CTL_DELEVENTS, vp.VPOLL_CTL_SETEVENTS) == (1, 2, 3)
    assert vp.EFD_VPOLL == 2
    assert (vp.EFD_VPOLL_ADDEVENTS, vp.EFD_VPOLL_DELEVENTS, vp.EFD_VPOLL_MODEVENTS) == (
        1 << 32,
        2 << 32,
        3 << 32,
    )
    io = ord("^") << 8
    assert (
        (vp.VPOLL_IO_ADDEVENTS, vp.VPOLL_IO_DELEVENTS, vp.VPOLL_IO_SETEVENTS)
        == (io | 1, io | 2, io | 3)
        == (0x5E01, 0x5E02, 0x5E03)
    )
    assert vp.VPOLL_VALID_EVENTS == ((1 << 28) - 1) & ~(0x4000 | 0x8000 | 1 << 27)


def test_functional_trio(impl: str) -> None:
    fd = vp.vpoll_create(IN, 0, impl=impl)
    try:
        assert polled(fd) == IN
        assert vp.vpoll_ctl(fd, vp.VPOLL_CTL_ADD, OUT) == IN | OUT
        assert vp.vpoll_ctl(fd, vp.VPOLL_CTL_DEL, IN) == OUT
        assert vp.vpoll_ctl(fd, vp.VPOLL_CTL_SET, IN) == IN
        assert polled(fd) == IN
    finally:
        vp.vpoll_close(fd)
    with pytest.raises(OSError) as info:
        vp.vpoll_ctl(fd, vp.VPOLL_CTL_ADD, IN)
    assert info.value.errno == errno.EBADF
    with pytest.raises(OSError) as info:
        vp.vpoll_close(fd)
    assert info.value.errno == errno.EBADF


def test_functional_flags(impl: str) -> None:
    import fcntl

    for flags in (0, fcntl.FD_CLOEXEC, os.O_CLOEXEC):
        fd = vp.vpoll_create(0, flags, impl=impl)
        assert os.get_inheritable(fd) is False
        vp.vpoll_close(fd)
    with pytest.raises(ValueError, match="flags"):
        vp.vpoll_create(0, os.O_NONBLOCK, impl=impl)


def test_functional_refuses_a_foreign_fd() -> None:
    """Never write a vpoll command to an fd we did not create (an eventfd would count it)."""
    fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    try:
        with pytest.raises(OSError) as info:
            vp.vpoll_ctl(fd, vp.VPOLL_CTL_ADD, IN)
        assert info.value.errno == errno.EINVAL
        with pytest.raises(OSError):
            vp.vpoll_close(fd)
        os.fstat(fd)  # still open
        with pytest.raises(BlockingIOError):
            os.eventfd_read(fd)  # counter untouched
    finally:
        os.close(fd)


def test_functional_works_on_an_object_fd(source: VPoll) -> None:
    assert vp.vpoll_ctl(source.fileno(), vp.VPOLL_CTL_ADD, IN) == IN
    assert source.events == IN


def test_kernel_ring_reports_socket_wake_keys() -> None:
    """The emulation is a socket, and the kernel ring carries the wake-up's key, not a re-poll.

    A unix socket's data wake-up key is IN|PRI|RDNORM|RDBAND, so through the kernel ring the
    emulation shows PRI with IN where epoll_wait shows 0x1. Its shutdown wake-up has no key:
    the kernel polls the socket for the ring's owner (the header's repoll word), so the hangup
    reads 0x2011 (IN|HUP|RDHUP) as epoll_wait reports it. The kernel forms wake with their
    exact set and are not affected.
    """
    if "kernel" not in RING_BACKENDS:
        pytest.skip("needs the kernel ring backend")
    with VPoll(0, "emulation") as v, uring_epoll.epoll(backend="kernel") as ep:
        ep.register(v, ALL_INTEREST)
        v.add(IN)
        assert ep.poll(1) == [(v.fileno(), IN | PRI)]
        v.delete(IN)
        assert ep.poll(0) == []
        v.add(HUP)
        assert ep.poll(1) == [(v.fileno(), IN | HUP | RDHUP)]
