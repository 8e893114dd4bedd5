// SPDX-License-Identifier: MIT
/*
 * Run only some cases of a kselftest_harness program.
 *
 * The harness of Linux 6.1 has no test filter: a binary always runs every case, and a suite
 * that wants to repeat one flaky case a hundred times (to tell a regression from noise) would
 * repeat all 64 of epoll_wakeup_test, several of which take seconds. This file includes the
 * selftest's source, renaming its main, and unlinks from the harness's list of the global
 * fixture every case not named on the command line before handing over to the harness.
 *
 *   gcc -pthread -I<tree>/tools/testing/selftests \
 *       -DKSELFTEST_SOURCE='"<tree>/.../epoll_wakeup_test.c"' kselftest_only.c -o only
 *   ./only epoll16 epoll58        (no names: every case, as the original binary)
 *
 * An unknown name is an error (exit 2), so that a renamed case cannot turn into a silent
 * "0 tests passed".
 *
 * KSELFTEST_TIMEOUT=S in the environment replaces every case's harness timeout (30 s in 6.1,
 * a compile-time constant there): under CPU emulation with lockdep and KASAN, epoll59's
 * 100000 thread-to-thread round trips take longer than that without anything being wrong.
 */
#define main kselftest_main
#include KSELFTEST_SOURCE
#undef main

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int wanted(const char *name, int argc, char **argv)
{
	for (int i = 1; i < argc; i++)
		if (strcmp(argv[i], name) == 0)
			return 1;
	return 0;
}

static void set_timeouts(void)
{
	const char *value = getenv("KSELFTEST_TIMEOUT");
	struct __test_metadata *t;
	char *end;
	long seconds;

	if (!value)
		return;
	seconds = strtol(value, &end, 10);
	if (*value == '\0' || *end != '\0' || seconds <= 0 || seconds > 86400) {
		fprintf(stderr, "kselftest_only: bad KSELFTEST_TIMEOUT %s\n", value);
		exit(2);
	}
	for (t = _fixture_global.tests; t; t = t->next)
		t->timeout = (int)seconds;
}

int main(int argc, char **argv)
{
	struct __test_metadata *t, *next, *head = NULL, *last = NULL;
	int found = 0;

	set_timeouts();
	if (argc < 2)
		return kselftest_main(argc, argv);
	for (int i = 1; i < argc; i++) {
		int known = 0;

		for (t = _fixture_global.tests; t; t = t->next)
			known |= strcmp(t->name, argv[i]) == 0;
		if (!known) {
			fprintf(stderr, "kselftest_only: no case named %s\n", argv[i]);
			return 2;
		}
	}
	/*
	 * Rebuild the list the way the harness keeps it: linked forward through next, with
	 * only the head's prev pointing back at the last element.
	 */
	for (t = _fixture_global.tests; t; t = next) {
		next = t->next;
		if (!wanted(t->name, argc, argv))
			continue;
		t->next = NULL;
		if (!head) {
			head = t;
		} else {
			t->prev = last;
			last->next = t;
		}
		last = t;
		found++;
	}
	head->prev = last;
	_fixture_global.tests = head;
	return found ? kselftest_main(1, argv) : 2;
}
