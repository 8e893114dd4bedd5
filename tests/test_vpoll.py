"""vpoll on every implementation available here (the kernel ones inside the patched kernel)."""

from __future__ import annotations

import errno
import os
import select
import selectors
import subprocess
import sys

import pytest
from backend_params import ALL, REQUIRE_KERNEL

import uring_epoll
from uring_epoll import vpoll as vp
from uring_epoll.vpoll import ADD, DEL, SET, VPoll

IN, OUT, HUP, PRI = select.EPOLLIN, select.EPOLLOUT, select.EPOLLHUP, select.EPOLLPRI
STATUS = vp.implementation_status()
if REQUIRE_KERNEL:
    missing = {k: v for k, v in STATUS.items() if v}
    if missing:
        raise RuntimeError(f"kernel vpoll implementations must work here: {missing}")
AVAILABLE = [name for name, why in STATUS.items() if not why]
KERNEL_FORMS = [name for name in AVAILABLE if name != "emulation"]

impls = pytest.mark.parametrize("impl", AVAILABLE)


def ready(source: VPoll) -> int:
    """What select.poll sees on the fd right now (epoll-numbered bits)."""
    p = select.poll()
    p.register(source, IN | OUT | HUP | PRI | select.EPOLLRDHUP)
    got = p.poll(0)
    return got[0][1] if got else 0


@impls
class TestOperations:
    def test_add_delete_set_are_idempotent(self, impl: str) -> None:
        with VPoll(0, impl=impl) as source:
            assert source.impl == impl and source.events == 0 and ready(source) == 0
            assert source.add(IN) == IN and source.add(IN) == IN
            assert ready(source) == IN
            assert source.delete(IN) == 0 and source.delete(IN) == 0  # one DEL suffices
            assert ready(source) == 0
            assert source.set(IN | OUT) == IN | OUT and ready(source) == IN | OUT
            assert source.set(OUT) == OUT and ready(source) == OUT  # SET replaces
            assert source.ctl(ADD, IN) == IN | OUT
            assert source.ctl(DEL, OUT) == IN
            assert source.ctl(SET, 0) == 0 and ready(source) == 0

    def test_initial_events(self, impl: str) -> None:
        with VPoll(IN | OUT, impl=impl) as source:
            assert source.events == IN | OUT and ready(source) == IN | OUT

    def test_hangup(self, impl: str) -> None:
        with VPoll(0, impl=impl) as source:
            got = source.add(HUP)
            if impl == "emulation":
                assert got == 0x2011 and ready(source) == 0x2011
                for op in (ADD, DEL, SET):
                    with pytest.raises(BrokenPipeError):
                        source.ctl(op, IN)  # never SIGPIPE, never silent
            else:
                assert got == HUP and ready(source) & HUP
                assert source.delete(HUP) == 0  # the kernel forms can take it back

    def test_bad_input(self, impl: str) -> None:
        with VPoll(0, impl=impl) as source:
            for events in (-1, 1 << 32, 1 << 28, 1 << 31):
                with pytest.raises(ValueError):
                    source.add(events)
            with pytest.raises(TypeError):
                source.add("IN")
            with pytest.raises(ValueError):
                source.ctl(4, IN)
            with pytest.raises(ValueError):
                source.ctl(0, IN)
            assert source.events == 0  # nothing changed
        with pytest.raises(ValueError):
            source.add(IN)
        with pytest.raises(ValueError):
            source.fileno()
        source.close()  # idempotent

    def test_in_every_waiting_api(self, impl: str) -> None:
        with VPoll(0, impl=impl) as source:
            sel = selectors.DefaultSelector()
            sel.register(source, selectors.EVENT_READ)
            assert sel.select(0) == []
            source.add(IN)
            assert [key.fileobj for key, _ in sel.select(0)] == [source]
            sel.close()
            r, _, _ = select.select([source], [], [], 0)
            assert r == [source]
            std = select.epoll()
            std.register(source, IN | select.EPOLLET)
            assert std.poll(0) == [(source.fileno(), IN)]
            std.close()
            for backend in ALL:
                with uring_epoll.epoll(backend=backend) as ep:
                    source.delete(IN)
                    ep.register(source, IN | select.EPOLLET)
                    assert ep.poll(0) == []
                    source.add(IN)
                    assert ep.poll(1) == [(source.fileno(), IN)]

    def test_close_while_registered(self, impl: str) -> None:
        for backend in ALL:
            source = VPoll(IN, impl=impl)
            with uring_epoll.epoll(backend=backend) as ep:
                ep.register(source, IN | select.EPOLLET)
                fd = source.fileno()
                source.close()
                assert ep.poll(0.05) in ([], [(fd, IN)])  # a pending event may still show
                assert ep.poll(0) == []

    def test_many_in_one_epoll(self, impl: str) -> None:
        sources = [VPoll(0, impl=impl) for _ in range(300)]
        try:
            for backend in ALL:
                with uring_epoll.epoll(backend=backend, max_items=len(sources)) as ep:
                    for s in sources:
                        ep.register(s, IN | select.EPOLLET)
                    for s in sources[::3]:
                        s.add(IN)
                    got = set()
                    for _ in range(50):
                        got |= {fd for fd, _ in ep.poll(0.1)}
                        if len(got) == len(sources[::3]):
                            break
                    assert got == {s.fileno() for s in sources[::3]}
                    for s in sources[::3]:
                        s.delete(IN)
        finally:
            for s in sources:
                s.close()


def test_emulation_refuses_what_it_cannot_produce() -> None:
    with VPoll(0, impl="emulation") as source:
        for events in (PRI, select.EPOLLERR, IN | PRI, select.EPOLLRDBAND):
            with pytest.raises(ValueError, match="cannot produce"):
                source.add(events)
        assert source.events == 0
    with pytest.raises(ValueError):
        VPoll(PRI, impl="emulation")


@pytest.mark.parametrize("impl", KERNEL_FORMS)
def test_kernel_forms_raise_every_event(impl: str) -> None:
    with VPoll(0, impl=impl) as source:
        assert source.add(PRI | select.EPOLLERR) == PRI | select.EPOLLERR
        assert ready(source) & PRI


def test_forced_implementation_must_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, why in STATUS.items():
        if why:
            with pytest.raises(OSError) as info:
                VPoll(0, impl=name)
            assert info.value.errno == errno.ENODEV and why in str(info.value)
            monkeypatch.setenv(vp.VPOLL_ENV, name)
            with pytest.raises(OSError):
                vp.detect()
            monkeypatch.delenv(vp.VPOLL_ENV)
    with pytest.raises(ValueError):
        VPoll(0, impl="nonsense")
    monkeypatch.setenv(vp.VPOLL_ENV, "emulation")
    assert VPoll(0).impl == "emulation"


def test_functional_api() -> None:
    fd = vp.vpoll_create(0, 0)
    try:
        assert vp.vpoll_ctl(fd, vp.VPOLL_CTL_ADD, IN) == IN
        assert vp.vpoll_ctl(fd, vp.VPOLL_CTL_SET, OUT) == OUT
        assert vp.vpoll_ctl(fd, vp.VPOLL_CTL_DEL, OUT) == 0
        with pytest.raises(ValueError):
            vp.vpoll_ctl(fd, 9, IN)
        with pytest.raises(ValueError):
            vp.vpoll_create(0, 0x80)
    finally:
        vp.vpoll_close(fd)
    with pytest.raises(OSError) as info:
        vp.vpoll_ctl(fd, vp.VPOLL_CTL_ADD, IN)
    assert info.value.errno == errno.EBADF
    assert (vp.EFD_VPOLL, vp.EFD_VPOLL_ADDEVENTS, vp.VPOLL_IO_SETEVENTS) == (2, 1 << 32, 0x5E03)


def test_never_writes_commands_to_an_ordinary_eventfd() -> None:
    """Detection must leave plain eventfds alone (an unpatched kernel adds to the counter)."""
    plain = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        vp.implementation_status()
        vp.detect()
        with pytest.raises(BlockingIOError):
            os.eventfd_read(plain)
    finally:
        os.close(plain)


@pytest.mark.parametrize("impl", AVAILABLE)
def test_demo_output(impl: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "uring_epoll.cli", "demo", "--fast", "--vpoll", impl],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"vpoll implementation: {impl}; ring backend: ")
    got = [line.split()[-1] for line in lines if line.startswith("GOT event")]
    if impl == "emulation":
        assert got == ["1", "1", "1", "4", "2011"]
    else:
        assert got == ["1", "1", "3", "2", "4", "10"]
    assert set(lines[1:]) <= {f"GOT event {g}" for g in got} | {"timeout..."}
