/*
 * microvm: the micro-guest VMM.  A static userspace VMM (in the style of the KVM selftests' kvm_util) that runs
 * in L1, the kernel under test: one VM, 1..8 vCPUs in 64-bit long mode with paging on (an identity map of
 * 2 MiB guest pages: QEMU 7.2's TCG walks L1's nested page table only for a paged guest), a small mlocked slot
 * (code, page tables, stacks, mailboxes) and a data slot at GPA 0x100000000 backed by anon, THP, memfd or a
 * shared file.  The guest code (guest.c) writes, reads and verifies ledger pages (guest-images/ledger/ledger.c's
 * format and verdicts) on the VMM's command through a mailbox page and an `out` (KVM_EXIT_IO), as the
 * selftests' ucall.  Between guest steps the VMM acts synchronously on the host side of exactly the pages in
 * play (chor.c: page-out, host reads, collapse, dirty-log harvests), so each choreography stages one window of
 * the lost-write race deterministically.  Output: "@@LEDGER " lines (the ledger's schema: start, bad, selftest,
 * round, done) and "@@MICRO " lines (step, dirtylog, counters), one JSON object per line on stdout.
 *
 * Build (one gcc call; build.sh does exactly this and then checks the guest code is self-contained):
 *     gcc -static -O2 -Wall -pthread -o microvm microvm.c kvm.c host.c chor.c race.c guest.c
 * The guest code needs no special flags: guest.c's functions carry their own attributes (section guest_text,
 * general-regs-only, no stack protector, no jump tables, no memset calls).
 *
 * Usage: microvm --pages N --rounds R --seed S --backend anon|thp|memfd|file [--file PATH]
 *                --chor NAME[,NAME...] [--vcpus V] [--batch B] [--selftest K] [--race-ms MS] [--race-split] | --list
 * Exit: 0 every page good; 1 a bad page or a missing dirty-log entry; 2 bad arguments; 3 KVM/host failure.
 * --race-ms MS: how long the race-pageout choreography's pager runs against the spinning vCPU, per batch.
 * --race-split: race-pageout reclaims (and ages) in a thread of its own, on another CPU than the pager's.
 * --selftest K: in round 1 the VMM puts the previous generation back on K just-written pages (K stale pages).
 * Environment: MICROVM_CRC=sw makes the guest compute CRC32C from a table instead of the crc32 instruction (a
 * KVM that emulates guest instructions, like a paravirtual L0, cannot emulate crc32).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "vmm.h"

#define MAX_BAD_LINES 200
#define MAX_PAGES (MAX_DATA_GIB * (1ULL << 30) / PAGE)

struct ctx C = {.pagemap_fd = -1};
static uint64_t t0_ns;
static const char *const BACKENDS[] = {"anon", "thp", "memfd", "file"};
static const char *const VERDICTS[] = {"good", "stale", "zero", "corrupt"};

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

double elapsed(void) { return (now_ns() - t0_ns) / 1e9; }

void infra(const char *fmt, ...)
{
	va_list ap;
	fflush(stdout);
	fputs("microvm: infra: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(3);
}

__attribute__((noreturn, format(printf, 1, 2))) static void usage_error(const char *fmt, ...)
{
	va_list ap;
	fputs("microvm: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(2);
}

static void crc_init(void)
{
	for (uint32_t n = 0; n < 256; n++) {
		uint32_t c = n;
		for (int k = 0; k < 8; k++)
			c = c & 1 ? (c >> 1) ^ 0x82f63b78 : c >> 1;
		C.crc_table[n] = c;
	}
	for (uint32_t n = 0; n < 256; n++)
		for (int t = 1; t < 8; t++)
			C.crc_table[t * 256 + n] = (C.crc_table[(t - 1) * 256 + n] >> 8) ^
						   C.crc_table[C.crc_table[(t - 1) * 256 + n] & 0xff];
	__builtin_cpu_init();
	/* MICROVM_CRC=sw: the table version in the guest too (a KVM that must emulate a guest instruction cannot
	 * emulate crc32) */
	const char *force = getenv("MICROVM_CRC");
	C.vm.hw_crc = __builtin_cpu_supports("sse4.2") && !(force && !strcmp(force, "sw"));
}

/* ---- guest commands: each on the current batch's vCPU, chunked to its entry array ---- */

static void run_chunks(int op, const uint64_t *idx, uint64_t n, void (*after)(struct entry *, uint64_t))
{
	struct vcpu *v = &C.vm.vcpu[C.vcpu];
	for (uint64_t done = 0; done < n;) {
		uint64_t m = n - done < MAX_ENTRIES ? n - done : MAX_ENTRIES;
		for (uint64_t k = 0; k < m; k++) {
			uint64_t i = idx[done + k];
			v->entries[k] = (struct entry){.index = i, .gen = C.gen[i]};
		}
		uint64_t bad = vcpu_run(&C.vm, C.vcpu, op, m);
		if (after && (bad || op != OP_VERIFY))
			after(v->entries, m);
		done += m;
	}
}

void guest_write(const uint64_t *idx, uint64_t n, uint64_t first, uint64_t span)
{
	for (uint64_t k = 0; k < n; k++) {
		C.gen[idx[k]]++;
		if (C.dirty_logging)
			C.dirty_expect[idx[k]] = 1;
	}
	run_chunks(OP_WRITE, idx, n, NULL);
	C.written += n;
	step_log("guest-write", first, span);
}

void guest_read(const uint64_t *idx, uint64_t n, uint64_t first, uint64_t span)
{
	run_chunks(OP_READ, idx, n, NULL);
	step_log("guest-read", first, span);
}

/* Identical content, no ledger page: the generation becomes 0 (a later verify would need a write first). */
void guest_fill(const uint64_t *idx, uint64_t n, uint64_t first, uint64_t span)
{
	for (uint64_t k = 0; k < n; k++)
		C.gen[idx[k]] = 0;
	run_chunks(OP_FILL, idx, n, NULL);
	step_log("guest-write", first, span);
}

static const char *verify_step;

/* Count and print the bad entries of a verify (the guest's, or the host's own view: race.c). */
void report_bad_entries(const char *step, const struct entry *e, uint64_t m)
{
	for (uint64_t k = 0; k < m; k++) {
		if (e[k].verdict == V_GOOD)
			continue;
		if (e[k].verdict == V_STALE) C.stale++;
		else if (e[k].verdict == V_ZERO) C.zero++;
		else C.corrupt++;
		if (C.bad_lines++ >= MAX_BAD_LINES)
			continue;
		printf("@@LEDGER {\"ev\":\"bad\",\"class\":\"%s\",\"round\":%llu,\"index\":%llu,\"gfn\":%llu,"
		       "\"expected\":%llu,\"found\":%llu,\"hdr_gfn\":%llu,\"t\":%.3f,\"chor\":\"%s\",\"step\":\"%s\","
		       "\"pfn\":%llu,\"vcpu\":%d}\n",
		       VERDICTS[e[k].verdict & 3], (unsigned long long)C.round, (unsigned long long)e[k].index,
		       (unsigned long long)(DATA_GPA / PAGE + e[k].index), (unsigned long long)e[k].gen,
		       (unsigned long long)e[k].found, (unsigned long long)e[k].hdr_gfn, elapsed(), C.chor, step,
		       (unsigned long long)pfn_of(e[k].index), C.vcpu);
	}
}

static void report_bad(struct entry *e, uint64_t m) { report_bad_entries(verify_step, e, m); }

/* `step` names the window in bad lines (e.g. verify-after-pageout); the step line says guest-verify. */
void guest_verify(const char *step, const uint64_t *idx, uint64_t n, uint64_t first, uint64_t span)
{
	verify_step = step;
	run_chunks(OP_VERIFY, idx, n, report_bad);
	C.verified += n;
	step_log("guest-verify", first, span);
}

/* ---- arguments ---- */

static uint64_t parse_num(const char *opt, const char *s, uint64_t min, uint64_t max)
{
	char *end;
	errno = 0;
	if (!*s || *s < '0' || *s > '9')
		usage_error("--%s: '%s' is not a decimal number", opt, s);
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || *end)
		usage_error("--%s: '%s' is not a decimal number", opt, s);
	if (v < min || v > max)
		usage_error("--%s: %llu is out of range [%llu, %llu]", opt, v, (unsigned long long)min,
			    (unsigned long long)max);
	return v;
}

static void parse_chors(struct opts *o, char *list)
{
	for (char *save = NULL, *name = strtok_r(list, ",", &save); name; name = strtok_r(NULL, ",", &save)) {
		int c = chor_find(name);
		if (c < 0)
			usage_error("unknown choreography '%s' (microvm --list names them)", name);
		if (o->nchors == (int)(sizeof(o->chors) / sizeof(o->chors[0])))
			usage_error("--chor: too many choreographies");
		o->chors[o->nchors++] = c;
	}
	if (!o->nchors)
		usage_error("--chor: no choreography named");
}

static void list_chors(void)
{
	for (int c = 0; c < NCHORS; c++)
		printf("%s\t%s\n", CHORS[c].name, CHORS[c].window);
	exit(0);
}

/* Cross-checks: each choreography's page unit and backend. */
static void check_opts(struct opts *o, unsigned seen)
{
	static const char *const required[] = {"pages", "rounds", "seed", "backend", "chor"};
	for (int k = 0; k < 5; k++)
		if (!(seen & (1u << k)))
			usage_error("--%s is required", required[k]);
	if (o->selftest > o->pages)
		usage_error("--selftest %llu is more than --pages %llu", (unsigned long long)o->selftest,
			    (unsigned long long)o->pages);
	if (o->batch > o->pages)
		o->batch = o->pages;
	for (int k = 0; k < o->nchors; k++) {
		const struct chor *c = &CHORS[o->chors[k]];
		if (c->backend >= 0 && c->backend != o->backend)
			usage_error("choreography %s needs --backend %s", c->name, BACKENDS[c->backend]);
		if (o->pages % c->unit || o->batch % c->unit)
			usage_error("choreography %s needs --pages and --batch to be multiples of %llu (got %llu, %llu)",
				    c->name, (unsigned long long)c->unit, (unsigned long long)o->pages,
				    (unsigned long long)o->batch);
	}
}

static void parse_args(int argc, char **argv, struct opts *o)
{
	static const struct option lo[] = {
		{"pages", 1, 0, 'p'}, {"rounds", 1, 0, 'r'}, {"seed", 1, 0, 's'}, {"backend", 1, 0, 'B'},
		{"chor", 1, 0, 'c'}, {"file", 1, 0, 'f'}, {"vcpus", 1, 0, 'v'}, {"batch", 1, 0, 'b'},
		{"selftest", 1, 0, 'T'}, {"list", 0, 0, 'l'}, {"race-ms", 1, 0, 'R'}, {"race-split", 0, 0, 'S'},
		{0, 0, 0, 0}};
	unsigned seen = 0;
	int ch;
	*o = (struct opts){.batch = 256, .vcpus = 1, .race_ms = 1000, .file = "/run/microvm.data", .backend = -1};
	opterr = 0;
	while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (ch) {
		case 'p': o->pages = parse_num("pages", optarg, 1, MAX_PAGES); seen |= 1; break;
		case 'r': o->rounds = parse_num("rounds", optarg, 1, 1000000); seen |= 2; break;
		case 's': o->seed = parse_num("seed", optarg, 0, UINT64_MAX); seen |= 4; break;
		case 'B':
			for (int b = 0; b < 4; b++)
				if (!strcmp(optarg, BACKENDS[b]))
					o->backend = b;
			if (o->backend < 0)
				usage_error("--backend: unknown backend '%s' (anon, thp, memfd, file)", optarg);
			seen |= 8;
			break;
		case 'c': parse_chors(o, optarg); seen |= 16; break;
		case 'f': o->file = optarg; break;
		case 'v': o->vcpus = parse_num("vcpus", optarg, 1, MAX_VCPUS); break;
		case 'b': o->batch = parse_num("batch", optarg, 1, MAX_PAGES); break;
		case 'T': o->selftest = parse_num("selftest", optarg, 0, MAX_PAGES); break;
		case 'R': o->race_ms = parse_num("race-ms", optarg, 1, 600000); break;
		case 'S': o->race_split = 1; break;
		case 'l': list_chors();
		default:
			usage_error("unknown or incomplete option '%s' (usage: microvm --pages N --rounds R --seed S "
				    "--backend anon|thp|memfd|file --chor NAME[,...] [--vcpus V] [--batch B] [--selftest K] "
				    "[--race-ms MS] [--race-split] [--file PATH] | --list)", argv[optind - 1]);
		}
	}
	if (optind < argc)
		usage_error("unexpected argument '%s'", argv[optind]);
	check_opts(o, seen);
}

/* ---- the run ---- */

static void print_start(void)
{
	printf("@@LEDGER {\"ev\":\"start\",\"pages\":%llu,\"rounds\":%llu,\"seed\":%llu,\"batch\":%llu,"
	       "\"selftest\":%llu,\"race_ms\":%llu,\"guest\":\"micro\",\"backend\":\"%s\",\"vcpus\":%d,\"crc\":\"%s\",\"chors\":[",
	       (unsigned long long)C.o.pages, (unsigned long long)C.o.rounds, (unsigned long long)C.o.seed,
	       (unsigned long long)C.o.batch, (unsigned long long)C.o.selftest, (unsigned long long)C.o.race_ms, BACKENDS[C.o.backend], C.o.vcpus,
	       C.vm.hw_crc ? "crc32c-hw" : "crc32c-sw");
	for (int k = 0; k < C.o.nchors; k++)
		printf("%s\"%s\"", k ? "," : "", CHORS[C.o.chors[k]].name);
	printf("]}\n");
}

/* One choreography over every batch; batch b runs on vCPU b mod V (each vCPU its own pages). */
static void run_chor(const struct chor *c)
{
	C.chor = c->name;
	if (c->dirty_log) {
		set_data_slot(&C.vm, 1 /* KVM_MEM_LOG_DIRTY_PAGES */);
		uint64_t *bm = calloc((C.o.pages + 63) / 64, 8);
		get_dirty_log(&C.vm, bm); /* start from an empty log */
		free(bm);
		C.dirty_logging = 1;
	}
	for (uint64_t b = 0; b < C.o.pages; b += C.o.batch) {
		C.vcpu = (int)((b / C.o.batch) % C.o.vcpus);
		c->run(b, C.o.batch < C.o.pages - b ? C.o.batch : C.o.pages - b);
	}
	if (c->dirty_log) {
		set_data_slot(&C.vm, 0);
		C.dirty_logging = 0;
		memset(C.dirty_expect, 0, C.o.pages);
	}
}

/* After the last round: every page once more, whatever choreography last touched it. */
static void final_verify(void)
{
	uint64_t *idx = malloc(C.o.batch * sizeof(*idx));
	C.chor = "final";
	for (uint64_t b = 0; b < C.o.pages; b += C.o.batch) {
		uint64_t n = C.o.batch < C.o.pages - b ? C.o.batch : C.o.pages - b;
		C.vcpu = (int)((b / C.o.batch) % C.o.vcpus);
		for (uint64_t k = 0; k < n; k++)
			idx[k] = b + k;
		guest_verify("final-verify", idx, n, b, n);
	}
	free(idx);
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	parse_args(argc, argv, &C.o);
	t0_ns = now_ns();
	crc_init();
	C.vm.seed = C.o.seed;
	C.pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	/* A concurrent choreography frees pages that an SPTE may still map on a racy kernel: keep the VMM's own
	 * memory (stacks, heap, text) out of reclaim so that such a page is reused by someone else than the VMM
	 * itself (a guest write into the VMM's stack would end the run as a crash, not as a ledger verdict). */
	int racing = 0;
	for (int k = 0; k < C.o.nchors; k++)
		racing |= CHORS[C.o.chors[k]].run == chor_race_pageout;
	if (racing && mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT))
		infra("mlockall: %s", strerror(errno));
	C.data = data_map(&C.o);
	if (racing && munlock(C.data, C.o.pages * PAGE))
		infra("munlock of the data region: %s", strerror(errno));
	C.gen = calloc(C.o.pages, sizeof(*C.gen));
	C.seen_swapped = calloc(C.o.pages, 1);
	C.dirty_expect = calloc(C.o.pages, 1);
	if (!C.gen || !C.seen_swapped || !C.dirty_expect)
		infra("out of memory for %llu pages of bookkeeping", (unsigned long long)C.o.pages);
	vm_create(&C.vm, C.o.vcpus, C.data, C.o.pages * PAGE, C.crc_table);
	print_start();
	for (C.round = 1; C.round <= C.o.rounds; C.round++) {
		uint64_t w0 = C.written;
		for (int k = 0; k < C.o.nchors; k++)
			run_chor(&CHORS[C.o.chors[k]]);
		if (C.round == 1 && C.o.selftest)
			printf("@@LEDGER {\"ev\":\"selftest\",\"stale\":%llu,\"zero\":0,\"corrupt\":0}\n",
			       (unsigned long long)C.planted);
		printf("@@LEDGER {\"ev\":\"round\",\"round\":%llu,\"written\":%llu,\"bad\":%llu,\"t\":%.3f}\n",
		       (unsigned long long)C.round, (unsigned long long)(C.written - w0),
		       (unsigned long long)(C.stale + C.zero + C.corrupt), elapsed());
	}
	C.round = C.o.rounds;
	final_verify();
	printf("@@MICRO {\"ev\":\"counters\",\"pageouts\":%llu,\"pages_out\":%llu,\"pages_in\":%llu,"
	       "\"guest_faults\":%lld,\"dirty_log_missing\":%llu,\"writeback_wait_s\":%.3f,\"t\":%.3f}\n",
	       (unsigned long long)C.pageouts, (unsigned long long)C.pages_out, (unsigned long long)C.pages_in,
	       guest_faults(&C.vm), (unsigned long long)C.dirty_log_missing, C.writeback_wait_s, elapsed());
	printf("@@LEDGER {\"ev\":\"done\",\"pages\":%llu,\"rounds\":%llu,\"verified\":%llu,\"trail_verified\":0,"
	       "\"stale\":%llu,\"zero\":%llu,\"corrupt\":%llu,\"t\":%.3f}\n",
	       (unsigned long long)C.o.pages, (unsigned long long)C.o.rounds, (unsigned long long)C.verified,
	       (unsigned long long)C.stale, (unsigned long long)C.zero, (unsigned long long)C.corrupt, elapsed());
	return C.stale + C.zero + C.corrupt + C.dirty_log_missing ? 1 : 0;
}
