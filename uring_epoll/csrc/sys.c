// SPDX-License-Identifier: MIT
/*
 * Fixed-argument system call wrappers (never a variadic syscall() prototype crossing into
 * Python).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "ue.h"

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

int ue_sys_epoll_create2(long nr, int flags, size_t size)
{
	/* Python only passes the number the running kernel announced (see probe.py). */
	long ret = syscall(nr, flags, size);

	return ret < 0 ? -errno : (int)ret;
}

int ue_sys_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t data)
{
	struct epoll_event ev = { .events = events, .data.u64 = data };

	return epoll_ctl(epfd, op, fd, op == EPOLL_CTL_DEL ? NULL : &ev) ? -errno : 0;
}

int ue_sys_epoll_wait(int epfd, void *events, int maxevents, int timeout_ms)
{
	int ret = epoll_wait(epfd, events, maxevents, timeout_ms);

	return ret < 0 ? -errno : ret;
}

/* epoll_wait with a nanosecond timeout (negative: forever), rounded up to whole ms. */
int ue_sys_epoll_wait_ns(int epfd, void *events, int maxevents, int64_t timeout_ns)
{
	int64_t ms = timeout_ns < 0 ? -1 : (timeout_ns + 999999) / 1000000;

	return ue_sys_epoll_wait(epfd, events, maxevents, ms > INT_MAX ? INT_MAX : (int)ms);
}

int ue_sys_epoll_wait_null(int epfd, int timeout_ms)
{
	/* The userpoll form: no events array; -ESTALE means "entries in the ring". */
	long ret = syscall(SYS_epoll_wait, epfd, NULL, 0, timeout_ms);

	return ret < 0 ? -errno : (int)ret;
}

int ue_sys_eventfd(unsigned int initval, int flags)
{
	int ret = eventfd(initval, flags);

	return ret < 0 ? -errno : ret;
}

int ue_sys_reserve(uintptr_t addr, size_t length)
{
	void *want = (void *)addr;
	void *got = mmap(want, length, PROT_NONE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);

	if (got == MAP_FAILED)
		return -errno;
	if (got != want) {
		/* A kernel before 4.17 took the address as a hint only. */
		munmap(got, length);
		return -EEXIST;
	}
	return 0;
}
