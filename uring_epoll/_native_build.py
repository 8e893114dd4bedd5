"""cffi API-mode builder for ``uring_epoll._native``.

The declarations below are the whole C surface Python sees; the implementation lives in the
``csrc/`` sources beside this file. Run by setuptools through ``cffi_modules`` in setup.py.
"""

from __future__ import annotations

import re
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
CSRC = HERE / "csrc"
SOURCES = ["ring.c", "emu.c", "sys.c", "bench.c", "latency.c"]

CDEF = """
struct ue_ring { ...; };
struct ue_stats {
    uint64_t ring_events, sleeps, estale, spins, spin_hits, skipped, slot_waits;
};
struct ue_consumer {
    struct ue_stats stats;
    uint32_t bad_position, bad_value, bad_kind;
    ...;
};
struct ue_emu;
struct ue_producers;
struct ue_binding {
    struct ue_consumer *consumer;
    void *out;
    uint64_t *data_out;
    uint32_t max;
};

#define UE_NATIVE_VERSION ...
#define UE_WAIT_KERNEL ...
#define UE_WAIT_FUTEX ...
#define UE_WAIT_EPOLL ...

int ue_consumer_init(struct ue_consumer *c, void *header, size_t header_len, void *index,
                     size_t index_len, int protocol, int mode, int epfd, struct ue_emu *emu,
                     uint64_t spin_ns);
long ue_drain(struct ue_consumer *c, void *out, uint64_t *data_out, uint32_t maxevents);
long ue_poll(struct ue_consumer *c, void *out, uint64_t *data_out, uint32_t maxevents,
             int64_t timeout_ns);
int ue_consumer_init_epoll(struct ue_consumer *c, int epfd);
long ue_poll_bound(const struct ue_binding *b, int64_t timeout_ns);
void ue_consumer_close(struct ue_consumer *c);
void ue_consumer_quiesce(struct ue_consumer *c);

struct ue_emu *ue_emu_new(void *header, size_t header_len, void *index, size_t index_len,
                          uint32_t max_items, int protocol, int *err);
int ue_emu_start(struct ue_emu *emu);
int ue_emu_ctl(struct ue_emu *emu, int op, int fd, uint32_t events, uint64_t data);
int ue_emu_inject(struct ue_emu *emu, int fd, uint32_t events);
int ue_emu_sync(struct ue_emu *emu);
int ue_emu_forget(struct ue_emu *emu, int fd);
int ue_emu_inner_fd(struct ue_emu *emu);
int ue_emu_thread_error(struct ue_emu *emu);
int ue_emu_stop(struct ue_emu *emu);
void ue_emu_free(struct ue_emu *emu);

int ue_sys_epoll_create2(long nr, int flags, size_t size);
int ue_sys_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t data);
int ue_sys_epoll_wait(int epfd, void *events, int maxevents, int timeout_ms);
int ue_sys_epoll_wait_null(int epfd, int timeout_ms);
int ue_sys_epoll_wait_ns(int epfd, void *events, int maxevents, int64_t timeout_ns);
int ue_sys_eventfd(unsigned int initval, int flags);

struct ue_producers *ue_producers_start(const int *fds, uint32_t nfds, uint32_t nthreads,
                                        uint64_t writes_per_thread, uint64_t value, int mode,
                                        int *err);
struct ue_producers *ue_producers_start_inject(struct ue_emu *emu, const int *fds,
                                               uint32_t nfds, uint32_t nthreads,
                                               uint32_t events, int *err);
int ue_producers_join(struct ue_producers *p, uint64_t *written);
void ue_producers_stop(struct ue_producers *p);
long ue_eventfd_consume(const void *events, uint32_t n, uint64_t *sum);

struct ue_pinger;
struct ue_pinger *ue_pinger_start(int fd, uint64_t count, uint64_t gap_ns, int *err);
void ue_pinger_ack(struct ue_pinger *p);
void ue_pinger_stop(struct ue_pinger *p);
int ue_pinger_join(struct ue_pinger *p, uint64_t *sent);

double ue_bench_drain_floor(uint32_t nitems, uint32_t rounds, int exchange);
double ue_bench_epoll_wait(int epfd, uint32_t batch, uint32_t rounds);
double ue_bench_iouring_multishot(const int *fds, uint32_t n, uint32_t rounds);
"""


def native_version() -> int:
    """The interface version compiled into the module (from ue.h)."""
    match = re.search(r"#define UE_NATIVE_VERSION (\d+)", (CSRC / "ue.h").read_text())
    assert match, "UE_NATIVE_VERSION missing from ue.h"
    return int(match.group(1))


ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "uring_epoll._native",
    '#include "ue.h"',
    sources=[str((CSRC / name).relative_to(HERE.parent)) for name in SOURCES],
    include_dirs=[str(CSRC.relative_to(HERE.parent))],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
    libraries=["pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
