// SPDX-License-Identifier: MIT
/*
 * fpstate_check: do the vector registers of a process survive the kernel?
 *
 * Every worker (two threads in each of two processes: threads share an
 * address space, so User-Mode Linux runs them in one host process and must
 * swap their FP state on every switch; the processes run in two) loads all
 * vector registers with a pattern of its own that changes on every
 * iteration, enters the kernel with the registers loaded, and checks them
 * afterwards. The kernel entry is sched_yield(), so that the other workers
 * run in between, and every SIGNAL_EVERY-th time a tgkill() of the worker
 * itself: the signal handler checks the FP state the kernel put into the
 * signal frame, then clobbers every vector register, and sigreturn must
 * bring the worker's values back from the frame.
 *
 * The registers are the widest the CPU and the kernel enable: zmm0-31 and
 * k0-7 with AVX-512, ymm0-15 with AVX, xmm0-15 otherwise (--mode forces a
 * narrower set). The whole load / syscall / store sequence is one asm
 * statement, so no compiler-generated code can touch the registers.
 *
 *   fpstate_check [--mode sse|avx|avx512] [--iterations N] [--clobber]
 *   fpstate_check --xsave-size
 *
 * Exit status 0: every check passed. 1: a register or the signal frame was
 * wrong (a message on stderr says where). 2: usage or setup error.
 * --clobber changes one register between the syscall and the check, once,
 * in one worker: a run must then fail, which shows that the checker can.
 * --xsave-size prints the size of this CPU's XSAVE area for the features
 * the kernel enabled (CPUID leaf 0xD, EBX), or 512 (FXSAVE) without XSAVE.
 */
#define _GNU_SOURCE
#include <cpuid.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <ucontext.h>
#include <unistd.h>

#define NREGS_MAX 32		/* zmm0-31 */
#define REG_BYTES_MAX 64
#define K_OFFSET 2048		/* k0-7 follow zmm0-31, two bytes each (kmovw) */
#define STATE_MAX (K_OFFSET + 8 * 2)
#define SIGNAL_EVERY 64
#define FP_XSTATE_MAGIC1 0x46505853U
#define FP_XSTATE_MAGIC2 0x46505845U

enum mode { MODE_SSE, MODE_AVX, MODE_AVX512 };

static const char *const mode_names[] = { "sse", "avx", "avx512" };

static enum mode mode;
static long iterations = 5000;
static int clobber;

/* Per worker; the handler finds its own through the thread-local pointer. */
struct worker {
	int id;
	long iteration;
	/* What the registers hold while the worker is in the kernel. */
	uint8_t expect[STATE_MAX] __attribute__((aligned(64)));
	uint8_t got[STATE_MAX] __attribute__((aligned(64)));
	int failed;
	long signals;
	char message[256];
};

static __thread struct worker *self;
static __thread uint8_t junk[STATE_MAX] __attribute__((aligned(64)));
static __thread uint8_t junk_out[STATE_MAX] __attribute__((aligned(64)));

static int nregs(void)
{
	return mode == MODE_SSE || mode == MODE_AVX ? 16 : 32;
}

static int reg_bytes(void)
{
	return mode == MODE_SSE ? 16 : mode == MODE_AVX ? 32 : 64;
}

/* Bytes of register state compared: the vector registers, then k0-7. */
static size_t state_bytes(void)
{
	return (size_t)nregs() * reg_bytes() + (mode == MODE_AVX512 ? 16 : 0);
}

/* A byte pattern unique to (worker, iteration), never all zero. */
static void fill(struct worker *w)
{
	uint64_t x = 0x9e3779b97f4a7c15ULL * (uint64_t)(w->id + 1) +
		     0xbf58476d1ce4e5b9ULL * (uint64_t)(w->iteration + 1);
	size_t i;

	for (i = 0; i < state_bytes(); i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		w->expect[i] = (uint8_t)(x | 1);
	}
}

/*
 * Load the registers from in, make system call nr(a0, a1, a2), store the
 * registers into out. With do_clobber, xmm3 is changed after the call.
 */
#define SYSCALL_BODY \
	"mov %[nr], %%rax\n\t" \
	"mov %[a0], %%rdi\n\t" \
	"mov %[a1], %%rsi\n\t" \
	"mov %[a2], %%rdx\n\t" \
	"syscall\n\t" \
	"test %[do_clobber], %[do_clobber]\n\t" \
	"jz 1f\n\t" \
	"pxor %%xmm15, %%xmm3\n\t" \
	"1:\n\t"

#define SYSCALL_OPERANDS \
	[nr] "r"(nr), [a0] "r"(a0), [a1] "r"(a1), [a2] "r"(a2), \
	[do_clobber] "r"(do_clobber), [in] "r"(in), [out] "r"(out)

#define XMM_CLOBBERS \
	"xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", \
	"xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15"

#define GP_CLOBBERS "rax", "rcx", "rdx", "rsi", "rdi", "r11", "memory", "cc"

/* Apply M to each register number: one asm line per register, written once. */
#define EACH8(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7)
#define EACH16(M) EACH8(M) M(8) M(9) M(10) M(11) M(12) M(13) M(14) M(15)
#define EACH32(M) EACH16(M) M(16) M(17) M(18) M(19) M(20) M(21) M(22) M(23) \
	M(24) M(25) M(26) M(27) M(28) M(29) M(30) M(31)

static void sse_call(const void *in, void *out, long nr, long a0, long a1,
		     long a2, long do_clobber)
{
	__asm__ volatile(
#define L(n) "movdqu " #n "*16(%[in]), %%xmm" #n "\n\t"
		EACH16(L)
#undef L
		SYSCALL_BODY
#define S(n) "movdqu %%xmm" #n ", " #n "*16(%[out])\n\t"
		EACH16(S)
#undef S
		: : SYSCALL_OPERANDS : XMM_CLOBBERS, GP_CLOBBERS);
}

__attribute__((target("avx")))
static void avx_call(const void *in, void *out, long nr, long a0, long a1,
		     long a2, long do_clobber)
{
	__asm__ volatile(
#define L(n) "vmovdqu " #n "*32(%[in]), %%ymm" #n "\n\t"
		EACH16(L)
#undef L
		SYSCALL_BODY
#define S(n) "vmovdqu %%ymm" #n ", " #n "*32(%[out])\n\t"
		EACH16(S)
#undef S
		"vzeroupper\n\t"
		: : SYSCALL_OPERANDS : XMM_CLOBBERS, GP_CLOBBERS);
}

__attribute__((target("avx512f")))
static void avx512_call(const void *in, void *out, long nr, long a0, long a1,
			long a2, long do_clobber)
{
	__asm__ volatile(
#define L(n) "vmovdqu64 " #n "*64(%[in]), %%zmm" #n "\n\t"
		EACH32(L)
#undef L
#define K(n) "kmovw 2048+" #n "*2(%[in]), %%k" #n "\n\t"
		EACH8(K)
#undef K
		SYSCALL_BODY
#define S(n) "vmovdqu64 %%zmm" #n ", " #n "*64(%[out])\n\t"
		EACH32(S)
#undef S
#define K(n) "kmovw %%k" #n ", 2048+" #n "*2(%[out])\n\t"
		EACH8(K)
#undef K
		"vzeroupper\n\t"
		: : SYSCALL_OPERANDS
		: XMM_CLOBBERS, "xmm16", "xmm17", "xmm18", "xmm19", "xmm20",
		  "xmm21", "xmm22", "xmm23", "xmm24", "xmm25", "xmm26", "xmm27",
		  "xmm28", "xmm29", "xmm30", "xmm31", "k0", "k1", "k2", "k3",
		  "k4", "k5", "k6", "k7", GP_CLOBBERS);
}

static void call_with_registers(const void *in, void *out, long nr, long a0,
				long a1, long a2, long do_clobber)
{
	switch (mode) {
	case MODE_SSE:
		sse_call(in, out, nr, a0, a1, a2, do_clobber);
		break;
	case MODE_AVX:
		avx_call(in, out, nr, a0, a1, a2, do_clobber);
		break;
	case MODE_AVX512:
		avx512_call(in, out, nr, a0, a1, a2, do_clobber);
		break;
	}
}

/* Store the first difference between expect and got into w->message. */
static int compare(struct worker *w, const char *when)
{
	size_t i, n = state_bytes(), vec = (size_t)nregs() * reg_bytes();
	size_t first, reg, j;
	int len;

	if (!memcmp(w->expect, w->got, n))
		return 0;
	for (first = 0; first < n && w->expect[first] == w->got[first]; first++)
		;
	if (first < vec) {
		reg = first / reg_bytes();
		len = snprintf(w->message, sizeof(w->message),
			       "worker %d iteration %ld (%s): %s%zu differs at byte %zu: expected",
			       w->id, w->iteration, when,
			       mode == MODE_SSE ? "xmm" : mode == MODE_AVX ? "ymm" : "zmm",
			       reg, first % reg_bytes());
		i = reg * reg_bytes();
	} else {
		reg = (first - vec) / 2;
		len = snprintf(w->message, sizeof(w->message),
			       "worker %d iteration %ld (%s): k%zu differs: expected",
			       w->id, w->iteration, when, reg);
		i = vec + reg * 2;
	}
	for (j = 0; j < 16 && i + j < n && len < 200; j++)
		len += snprintf(w->message + len, sizeof(w->message) - len,
				" %02x", w->expect[i + j]);
	len += snprintf(w->message + len, sizeof(w->message) - len, ", got");
	for (j = 0; j < 16 && i + j < n && len < 240; j++)
		len += snprintf(w->message + len, sizeof(w->message) - len,
				" %02x", w->got[i + j]);
	return 1;
}

/*
 * The kernel saved the worker's registers into the signal frame: check the
 * xmm part there (the layout is FXSAVE's, common to every mode), and on an
 * XSAVE frame the magic number the size in the frame points at. Then
 * clobber every vector register: sigreturn must restore them.
 */
static void handler(int sig, siginfo_t *si, void *ucv)
{
	ucontext_t *uc = ucv;
	struct worker *w = self;
	const uint8_t *fx = (const uint8_t *)uc->uc_mcontext.fpregs;
	uint32_t magic1, extended_size, magic2;
	int r, nxmm = 16;

	(void)sig;
	(void)si;
	w->signals++;
	if (w->failed || !fx)
		goto clobber;
	for (r = 0; r < nxmm; r++) {
		if (memcmp(fx + 160 + 16 * r, w->expect + (size_t)r * reg_bytes(), 16)) {
			snprintf(w->message, sizeof(w->message),
				 "worker %d iteration %ld: xmm%d in the signal frame differs",
				 w->id, w->iteration, r);
			w->failed = 1;
			goto clobber;
		}
	}
	/* struct _fpx_sw_bytes at offset 464 of the FXSAVE area */
	memcpy(&magic1, fx + 464, 4);
	memcpy(&extended_size, fx + 468, 4);
	if (magic1 == FP_XSTATE_MAGIC1) {
		if (extended_size < 576 + 4 || extended_size > (1U << 20))
			magic2 = 0;
		else
			memcpy(&magic2, fx + extended_size - 4, 4);
		if (magic2 != FP_XSTATE_MAGIC2) {
			snprintf(w->message, sizeof(w->message),
				 "worker %d: signal frame: no FP_XSTATE_MAGIC2 at fpstate + %u - 4",
				 w->id, extended_size);
			w->failed = 1;
		}
	}
clobber:
	/* Every register of the mode gets 0xa5 bytes (getppid does nothing). */
	memset(junk, 0xa5, sizeof(junk));
	call_with_registers(junk, junk_out, SYS_getppid, 0, 0, 0, 0);
}

static void *run_worker(void *arg)
{
	struct worker *w = arg;
	pid_t pid = getpid(), tid = (pid_t)syscall(SYS_gettid);
	long clobber_at = clobber && w->id == 1 ? iterations / 2 : -1;

	self = w;
	for (w->iteration = 0; w->iteration < iterations && !w->failed; w->iteration++) {
		int sig = w->iteration % SIGNAL_EVERY == SIGNAL_EVERY - 1;

		fill(w);
		if (sig)
			call_with_registers(w->expect, w->got, SYS_tgkill, pid,
					    tid, SIGUSR1, w->iteration == clobber_at);
		else
			call_with_registers(w->expect, w->got, SYS_sched_yield,
					    0, 0, 0, w->iteration == clobber_at);
		if (!w->failed && compare(w, sig ? "after a signal" : "after sched_yield"))
			w->failed = 1;
	}
	return NULL;
}

/* Two workers (threads) in this process; ids first and first + 1. */
static int run_process(int first)
{
	struct worker *w = aligned_alloc(64, 2 * sizeof(*w));
	pthread_t thread;
	int i, failed = 0;

	if (!w) {
		perror("aligned_alloc");
		return 2;
	}
	memset(w, 0, 2 * sizeof(*w));
	w[0].id = first;
	w[1].id = first + 1;
	errno = pthread_create(&thread, NULL, run_worker, &w[1]);
	if (errno) {
		perror("pthread_create");
		return 2;
	}
	run_worker(&w[0]);
	pthread_join(thread, NULL);
	for (i = 0; i < 2; i++) {
		if (w[i].failed) {
			fprintf(stderr, "fpstate_check: FAIL: %s\n", w[i].message);
			failed = 1;
		} else if (w[i].signals != iterations / SIGNAL_EVERY) {
			fprintf(stderr, "fpstate_check: FAIL: worker %d handled %ld signals, not %ld\n",
				w[i].id, w[i].signals, iterations / SIGNAL_EVERY);
			failed = 1;
		}
	}
	free(w);
	return failed;
}

static unsigned int xsave_size(void)
{
	unsigned int eax, ebx, ecx, edx;

	/* CPUID.1:ECX.OSXSAVE[bit 27]: the kernel enabled XSAVE */
	if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !(ecx & (1U << 27)))
		return 512;
	/* EBX: the size for the features enabled in XCR0 */
	__cpuid_count(0xd, 0, eax, ebx, ecx, edx);
	return ebx;
}

static void usage(void)
{
	fprintf(stderr, "usage: fpstate_check [--mode sse|avx|avx512] [--iterations N] [--clobber]\n"
			"       fpstate_check --xsave-size\n");
	exit(2);
}

int main(int argc, char **argv)
{
	struct sigaction sa;
	int i, status, failed;
	pid_t child;

	__builtin_cpu_init();
	if (__builtin_cpu_supports("avx512f"))
		mode = MODE_AVX512;
	else if (__builtin_cpu_supports("avx"))
		mode = MODE_AVX;
	else
		mode = MODE_SSE;

	for (i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--xsave-size")) {
			printf("%u\n", xsave_size());
			return 0;
		} else if (!strcmp(argv[i], "--clobber")) {
			clobber = 1;
		} else if (!strcmp(argv[i], "--iterations") && i + 1 < argc) {
			char *end;

			iterations = strtol(argv[++i], &end, 10);
			if (*end || iterations < SIGNAL_EVERY)
				usage();
		} else if (!strcmp(argv[i], "--mode") && i + 1 < argc) {
			enum mode m;

			i++;
			for (m = MODE_SSE; m <= MODE_AVX512; m++)
				if (!strcmp(argv[i], mode_names[m]))
					break;
			if (m > MODE_AVX512)
				usage();
			if (m > mode) {
				fprintf(stderr, "fpstate_check: this CPU has no %s\n", argv[i]);
				return 2;
			}
			mode = m;
		} else {
			usage();
		}
	}

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = handler;
	sa.sa_flags = SA_SIGINFO;
	if (sigaction(SIGUSR1, &sa, NULL)) {
		perror("sigaction");
		return 2;
	}

	printf("fpstate_check: mode %s, 2 processes x 2 threads x %ld iterations\n",
	       mode_names[mode], iterations);
	fflush(stdout);

	child = fork();
	if (child < 0) {
		perror("fork");
		return 2;
	}
	if (child == 0)
		_exit(run_process(2));
	failed = run_process(0);
	if (waitpid(child, &status, 0) != child) {
		perror("waitpid");
		return 2;
	}
	if (!WIFEXITED(status) || WEXITSTATUS(status) == 2) {
		fprintf(stderr, "fpstate_check: child process ended with status 0x%x\n", status);
		return 2;
	}
	failed |= WEXITSTATUS(status);
	if (failed)
		return 1;
	printf("fpstate_check: PASS\n");
	return 0;
}
