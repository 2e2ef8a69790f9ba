/*
 * ledger: a page-generation ledger that detects lost guest writes (runs in L2).
 *
 * Every page carries {magic, index, generation, seed, gfn} + a payload derived from (seed, index, generation)
 * + a CRC32C.  Round 0 writes every page.  Each later round walks the pages in batches: it READS and verifies
 * the batch first (so pages swapped in by L1 come back on a read fault: writable but clean host PTEs), then
 * rewrites the pages that a seeded hash of (seed, round, page) selects, at the next generation.  The expected
 * generation of a page is computed from that hash, never stored in guest memory (a stored table would lose
 * writes too).  Between rounds a "reclaim window" lets L1 push our memory out to swap.
 *
 * DMA exposure (--dma-frac F --dma-dev DEV, off by default): in rounds >= 1, just before a batch is read, the
 * ledger writes the pages of that batch that fall in a seeded fraction F of aligned 8-gfn groups to a virtio disk
 * with O_DIRECT, straight from the ledger's own pages, so L1's QEMU reads exactly those guest pages.  The batch
 * was last touched a round ago and has been pushed out to swap since (its SPTEs zapped); QEMU's read swaps the
 * pages back in on a read access (do_swap_page maps an exclusive anon page writable but clean), with no SPTE.
 * Reading the batch then faults on one gfn of each group, and the shadow MMU's prefetch (kvm.tdp_mmu=N) installs
 * writable SPTEs on the group's other gfns that are present: the ones QEMU just read.  The rewrite then writes
 * some of them through those SPTEs, with no fault, and the trailing check reads them after they were evicted
 * again: a kernel that releases prefetched pages clean loses those writes.  Whole groups are selected because a
 * prefetch takes the present pages of a group only up to the first absent one.  The disk is only written (its
 * offsets cycle), never read; verification is the same with or without it.
 *
 * Output: one JSON object per line, prefixed "@@LEDGER ", on stdout (L2's serial console).
 * Bad pages: stale (valid CRC, older generation = lost dirty data), zero (all-zero page), corrupt (anything else).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define MAGIC 0x4c45444745525047ULL /* "LEDGERPG" */
#define HDR_WORDS 5
#define CRC_OFF (PAGE - 8)
#define MAX_BAD_LINES 200 /* individually printed bad pages per run; the rest are counted */
#define GFN_UNKNOWN (~0ULL) /* no gfn from pagemap (unreadable, page absent, or a PFN hidden from non-root) */

struct page_hdr {
	uint64_t magic, index, generation, seed, gfn;
};

static long opt_node = -1;
static int opt_no_mlock;
static uint64_t opt_seed = 1, opt_pages = 1024, opt_rounds = 4, opt_batch = 256, opt_selftest, opt_trail;
static double opt_write_frac = 0.5, opt_window = 3.0, opt_dma_frac;
static const char *opt_dma_dev;
static int pagemap_fd = -1;
static uint32_t crc_table[8][256];
static int have_sse42;
static uint64_t bad_lines, t0_ns;
static uint64_t n_stale, n_zero, n_corrupt, n_verified, n_trail;
static int dma_fd = -1;
static uint64_t dma_size, dma_off, n_dma_pages, n_dma_writes;

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

static double elapsed(void) { return (now_ns() - t0_ns) / 1e9; }

static uint64_t mix64(uint64_t x)
{
	/* splitmix64 finaliser: a cheap, well-distributed hash */
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

/* Does round r (r >= 1) rewrite page i?  Pure function of (seed, round, page). */
static int selected(uint64_t r, uint64_t i)
{
	uint64_t h = mix64(opt_seed ^ mix64(r * 0x100000001b3ULL ^ mix64(i)));
	return (double)(h >> 11) / (double)(1ULL << 53) < opt_write_frac;
}

/* Generation a page must hold after `done` rounds have completed their writes (round 0 writes gen 1). */
static uint64_t expected_gen(uint64_t i, uint64_t done)
{
	for (uint64_t r = done; r >= 1; r--)
		if (selected(r, i))
			return r + 1;
	return 1;
}

static void crc_init(void)
{
	for (uint32_t n = 0; n < 256; n++) {
		uint32_t c = n;
		for (int k = 0; k < 8; k++)
			c = c & 1 ? (c >> 1) ^ 0x82f63b78 : c >> 1;
		crc_table[0][n] = c;
	}
	for (uint32_t n = 0; n < 256; n++)
		for (int t = 1; t < 8; t++)
			crc_table[t][n] = (crc_table[t - 1][n] >> 8) ^ crc_table[0][crc_table[t - 1][n] & 0xff];
	__builtin_cpu_init();
	have_sse42 = __builtin_cpu_supports("sse4.2");
}

__attribute__((target("sse4.2"))) static uint32_t crc32c_hw(const uint64_t *w, size_t n)
{
	uint64_t c = 0xffffffff;
	for (size_t k = 0; k < n; k++)
		c = __builtin_ia32_crc32di(c, w[k]);
	return (uint32_t)c ^ 0xffffffff;
}

static uint32_t crc32c_sw(const uint64_t *w, size_t n)
{
	uint32_t c = 0xffffffff;
	for (size_t k = 0; k < n; k++) {
		uint64_t v = w[k] ^ c;
		c = crc_table[7][v & 0xff] ^ crc_table[6][(v >> 8) & 0xff] ^ crc_table[5][(v >> 16) & 0xff] ^
		    crc_table[4][(v >> 24) & 0xff] ^ crc_table[3][(v >> 32) & 0xff] ^
		    crc_table[2][(v >> 40) & 0xff] ^ crc_table[1][(v >> 48) & 0xff] ^ crc_table[0][v >> 56];
	}
	return c ^ 0xffffffff;
}

static uint32_t page_crc(const void *p)
{
	const uint64_t *w = p;
	return have_sse42 ? crc32c_hw(w, CRC_OFF / 8) : crc32c_sw(w, CRC_OFF / 8);
}

static uint64_t gfn_of(const void *addr)
{
	uint64_t ent = 0;
	if (pagemap_fd < 0 ||
	    pread(pagemap_fd, &ent, 8, ((uintptr_t)addr / PAGE) * 8) != 8 || !(ent & (1ULL << 63)))
		return GFN_UNKNOWN;
	ent &= (1ULL << 55) - 1;
	return ent ? ent : GFN_UNKNOWN; /* 0: the kernel hides PFNs from a reader without CAP_SYS_ADMIN */
}

/* A gfn as a JSON value: its number, or null when unknown (never 2^64-1 passed off as a frame). */
static const char *gfn_json(uint64_t gfn, char *out, size_t len)
{
	if (gfn == GFN_UNKNOWN)
		return "null";
	snprintf(out, len, "%lu", gfn);
	return out;
}

/* Does round r DMA-write the pages of 8-gfn group g (the shadow MMU prefetches within such a group)?  Seeded,
 * independent of the rewrite selection.  Without a gfn (no pagemap: not root) the index stands in for it. */
static int dma_selected(uint64_t r, uint64_t g)
{
	uint64_t h = mix64(opt_seed ^ 0x444d41ULL ^ mix64(r * 0x9e3779b97f4a7c15ULL ^ mix64(g)));
	return (double)(h >> 11) / (double)(1ULL << 53) < opt_dma_frac;
}

static int dma_open(void)
{
	dma_fd = open(opt_dma_dev, O_WRONLY | O_DIRECT);
	if (dma_fd < 0) {
		fprintf(stderr, "ledger: %s: %m\n", opt_dma_dev);
		return -1;
	}
	off_t end = lseek(dma_fd, 0, SEEK_END);
	if (end < PAGE) {
		fprintf(stderr, "ledger: %s: %s\n", opt_dma_dev, end < 0 ? "cannot size it" : "smaller than a page");
		return -1;
	}
	dma_size = (uint64_t)end / PAGE * PAGE;
	return 0;
}

/* Write the selected pages of batch [b, e) of round r to the DMA disk, the ledger's own pages as the buffers. */
static int dma_batch(uint8_t *buf, uint64_t b, uint64_t e, uint64_t r)
{
	struct iovec iov[IOV_MAX];
	int n = 0;
	for (uint64_t i = b; i <= e; i++) {
		uint64_t gfn = i < e ? gfn_of(buf + i * PAGE) : 0;
		int take = i < e && dma_selected(r, (gfn == GFN_UNKNOWN ? i : gfn) / 8);
		if (take) {
			iov[n].iov_base = buf + i * PAGE;
			iov[n].iov_len = PAGE;
			n++;
		}
		/* one request per batch (pwritev gathers the scattered pages), split where the disk ends: offsets wrap */
		if (n && (i == e || n == IOV_MAX || dma_off + (uint64_t)n * PAGE >= dma_size)) {
			ssize_t w = pwritev(dma_fd, iov, n, (off_t)dma_off);
			if (w != (ssize_t)n * PAGE) {
				fprintf(stderr, "ledger: DMA write of %d pages at %lu to %s: %s\n", n, dma_off, opt_dma_dev,
					w < 0 ? strerror(errno) : "short write");
				return -1;
			}
			n_dma_pages += n;
			n_dma_writes++;
			dma_off = (dma_off + w) % dma_size;
			n = 0;
		}
	}
	return 0;
}

static void write_page(uint8_t *p, uint64_t i, uint64_t gen)
{
	struct page_hdr *h = (struct page_hdr *)p;
	uint64_t *w = (uint64_t *)p;
	/* Touch first so the page is present and pagemap knows its gfn. */
	h->magic = MAGIC;
	h->index = i;
	h->generation = gen;
	h->seed = opt_seed;
	h->gfn = gfn_of(p);
	uint64_t s = mix64(opt_seed ^ mix64(i ^ (gen << 40)));
	for (size_t k = HDR_WORDS; k < CRC_OFF / 8; k++) {
		s ^= s << 13; s ^= s >> 7; s ^= s << 17; /* xorshift64 */
		w[k] = s;
	}
	w[CRC_OFF / 8] = page_crc(p);
}

static const char *classify(const uint8_t *p, uint64_t i, uint64_t want, uint64_t *found)
{
	const struct page_hdr *h = (const struct page_hdr *)p;
	const uint64_t *w = (const uint64_t *)p;
	*found = h->generation;
	if (h->magic == MAGIC && h->index == i && h->seed == opt_seed && h->generation == want &&
	    w[CRC_OFF / 8] == page_crc(p))
		return NULL;
	int zero = 1;
	for (size_t k = 0; k < PAGE / 8; k++)
		if (w[k]) { zero = 0; break; }
	if (zero)
		return "zero";
	if (h->magic == MAGIC && h->index == i && h->seed == opt_seed && h->generation >= 1 &&
	    h->generation < want && w[CRC_OFF / 8] == page_crc(p))
		return "stale";
	return "corrupt";
}

/* Verify one page; report and repair a bad one so each loss is counted once. */
static void verify_page(uint8_t *p, uint64_t i, uint64_t want, uint64_t round)
{
	uint64_t found;
	const char *cls = classify(p, i, want, &found);
	if (round & (1ULL << 62))
		n_trail++;
	else
		n_verified++;
	round &= ~(1ULL << 62);
	if (!cls)
		return;
	if (!strcmp(cls, "stale")) n_stale++;
	else if (!strcmp(cls, "zero")) n_zero++;
	else n_corrupt++;
	if (bad_lines++ < MAX_BAD_LINES) {
		char g[24], hg[24];
		printf("@@LEDGER {\"ev\":\"bad\",\"class\":\"%s\",\"round\":%lu,\"index\":%lu,\"gfn\":%s,"
		       "\"expected\":%lu,\"found\":%lu,\"hdr_gfn\":%s,\"t\":%.3f}\n",
		       cls, round, i, gfn_json(gfn_of(p), g, sizeof(g)), want, found,
		       gfn_json(((const struct page_hdr *)p)->gfn, hg, sizeof(hg)), elapsed());
	}
	write_page(p, i, want);
}

static void window(uint64_t round)
{
	printf("@@LEDGER {\"ev\":\"window\",\"round\":%lu,\"seconds\":%.1f,\"t\":%.3f}\n", round, opt_window,
	       elapsed());
	fflush(stdout);
	usleep((useconds_t)(opt_window * 1e6));
}

static void progress(const char *phase, uint64_t round, uint64_t done)
{
	printf("@@LEDGER {\"ev\":\"progress\",\"phase\":\"%s\",\"round\":%lu,\"pages\":%lu,\"bad\":%lu,\"t\":%.3f}\n",
	       phase, round, done, n_stale + n_zero + n_corrupt, elapsed());
	fflush(stdout);
}

/* A whole non-negative number for option --name, or a message and exit 2 (never a silent 0 from "abc"). */
static uint64_t parse_u64(const char *name, const char *arg)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(arg, &end, 0);
	if (errno || end == arg || *end || strchr(arg, '-')) {
		fprintf(stderr, "ledger: --%s: not a whole number >= 0: '%s'\n", name, arg);
		exit(2);
	}
	return v;
}

static double parse_double(const char *name, const char *arg)
{
	char *end;
	errno = 0;
	double v = strtod(arg, &end);
	if (errno || end == arg || *end || v != v) {
		fprintf(stderr, "ledger: --%s: not a number: '%s'\n", name, arg);
		exit(2);
	}
	return v;
}

/* The options' ranges: a bad one is a message and exit 2 (--batch 0 would loop forever). */
static int check_options(void)
{
	const char *bad = NULL;
	if (opt_pages < 1 || opt_pages > SIZE_MAX / PAGE / 2)
		bad = "--pages must be at least 1 (and fit in memory)";
	else if (opt_rounds < 1)
		bad = "--rounds must be at least 1";
	else if (opt_batch < 1 || opt_batch > SIZE_MAX / PAGE)
		bad = "--batch must be at least 1 (and fit in memory)";
	else if (opt_trail > opt_pages)
		bad = "--trail must not exceed --pages";
	else if (opt_selftest > opt_pages)
		bad = "--selftest must not exceed --pages";
	else if (opt_write_frac < 0 || opt_write_frac > 1)
		bad = "--write-frac must be in [0, 1]";
	else if (opt_window < 0 || opt_window > 86400)
		bad = "--window must be in [0, 86400] seconds";
	else if (opt_node < -1 || opt_node >= (long)(8 * sizeof(unsigned long)))
		bad = "--node must be -1 (no binding) or a NUMA node number below 64";
	else if (opt_dma_frac < 0 || opt_dma_frac > 1 || (opt_dma_frac > 0 && !opt_dma_dev))
		bad = "--dma-frac must be in [0, 1] and needs --dma-dev";
	if (bad)
		fprintf(stderr, "ledger: %s\n", bad);
	return bad != NULL;
}

int main(int argc, char **argv)
{
	static struct option opts[] = {
		{"pages", 1, 0, 'p'}, {"rounds", 1, 0, 'r'}, {"seed", 1, 0, 's'}, {"write-frac", 1, 0, 'w'},
		{"window", 1, 0, 'W'}, {"batch", 1, 0, 'b'}, {"selftest", 1, 0, 'T'}, {"trail", 1, 0, 't'},
		{"node", 1, 0, 'n'}, {"dma-frac", 1, 0, 'D'}, {"dma-dev", 1, 0, 'd'}, {"no-mlock", 0, 0, 'M'},
		{0, 0, 0, 0}};
	int c;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'p': opt_pages = parse_u64("pages", optarg); break;
		case 'r': opt_rounds = parse_u64("rounds", optarg); break;
		case 's': opt_seed = parse_u64("seed", optarg); break;
		case 'w': opt_write_frac = parse_double("write-frac", optarg); break;
		case 'W': opt_window = parse_double("window", optarg); break;
		case 'b': opt_batch = parse_u64("batch", optarg); break;
		case 'T': opt_selftest = parse_u64("selftest", optarg); break;
		case 't': opt_trail = parse_u64("trail", optarg); break;
		case 'n': opt_node = !strcmp(optarg, "-1") ? -1 : (long)parse_u64("node", optarg); break;
		case 'D': opt_dma_frac = parse_double("dma-frac", optarg); break;
		case 'd': opt_dma_dev = optarg; break;
		case 'M': opt_no_mlock = 1; break;
		default: fprintf(stderr, "usage: ledger --pages N --rounds R --seed S [--write-frac F] "
					 "[--window SEC] [--batch N] [--selftest N] [--trail BATCHES] [--node N] "
					 "[--dma-frac F --dma-dev DEV] [--no-mlock]\n");
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "ledger: unexpected argument '%s'\n", argv[optind]);
		return 2;
	}
	if (check_options())
		return 2;
	if (opt_dma_frac > 0 && dma_open())
		return 3;
	setvbuf(stdout, NULL, _IOLBF, 0);
	crc_init();
	t0_ns = now_ns();
	pagemap_fd = open("/proc/self/pagemap", O_RDONLY);
	/* mlock: L2 has no swap, and it keeps gfns stable for the report. */
	uint8_t *buf = mmap(NULL, opt_pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED) {
		perror("mmap");
		return 3;
	}
	/* 4 KiB pages: a THP would make one lost write look like 512, and change what reclaim does */
	if (madvise(buf, opt_pages * PAGE, MADV_NOHUGEPAGE)) {
		perror("ledger: madvise(MADV_NOHUGEPAGE)");
		return 3;
	}
	if (opt_node >= 0) {
		/* Bind our pages to the data node (L1 keeps L2's kernel on node 0, out of reclaim's way). */
		unsigned long mask = 1UL << opt_node;
		if (syscall(SYS_mbind, buf, opt_pages * PAGE, 2 /* MPOL_BIND */, &mask, sizeof(mask) * 8, 0)) {
			perror("mbind");
			return 3;
		}
	}
	/* Lock on fault, not up front: a populate pass would write every page once more before round 0. */
	if (!opt_no_mlock && syscall(SYS_mlock2, buf, opt_pages * PAGE, 1 /* MLOCK_ONFAULT */) &&
	    mlock(buf, opt_pages * PAGE)) {
		fprintf(stderr, "ledger: mlock of %lu pages: %s (RLIMIT_MEMLOCK? run as root, or --no-mlock off L2)\n",
			opt_pages, strerror(errno));
		return 3;
	}
	printf("@@LEDGER {\"ev\":\"start\",\"pages\":%lu,\"rounds\":%lu,\"seed\":%lu,\"write_frac\":%.3f,"
	       "\"window\":%.1f,\"batch\":%lu,\"selftest\":%lu,\"trail\":%lu,\"node\":%ld,\"crc\":\"%s\"}\n",
	       opt_pages, opt_rounds, opt_seed, opt_write_frac, opt_window, opt_batch, opt_selftest, opt_trail, opt_node,
	       have_sse42 ? "crc32c-hw" : "crc32c-sw");

	for (uint64_t i = 0; i < opt_pages; i++)
		write_page(buf + i * PAGE, i, 1);
	printf("@@LEDGER {\"ev\":\"round\",\"round\":0,\"written\":%lu,\"t\":%.3f}\n", opt_pages, elapsed());
	window(0);

	/* Self-test: simulated lost writes.  Keep the old copy of up to N pages that round 1 rewrites and put it
	 * back after the write, exactly what a dropped dirty page looks like after swap-in. */
	uint8_t *saved = opt_selftest ? malloc(opt_selftest * PAGE) : NULL;
	uint64_t n_saved = 0, st_stale = 0, st_zero = 0, st_corrupt = 0;

	for (uint64_t r = 1; r <= opt_rounds; r++) {
		uint64_t written = 0;
		for (uint64_t b = 0; b < opt_pages; b += opt_batch) {
			uint64_t e = b + opt_batch < opt_pages ? b + opt_batch : opt_pages;
			if (dma_fd >= 0 && dma_batch(buf, b, e, r)) /* QEMU reads these pages before we do */
				return 3;
			for (uint64_t i = b; i < e; i++) /* read first */
				verify_page(buf + i * PAGE, i, expected_gen(i, r - 1), r);
			for (uint64_t i = b; i < e; i++) {
				if (!selected(r, i))
					continue;
				int keep = r == 1 && n_saved < opt_selftest;
				if (keep)
					memcpy(saved + n_saved * PAGE, buf + i * PAGE, PAGE);
				write_page(buf + i * PAGE, i, r + 1);
				if (keep) {
					/* With N >= 3 the last two tampered pages become one dropped swap entry (zeroed)
					 * and one flipped payload byte (corruption); the rest get their old copy back. */
					if (opt_selftest >= 3 && n_saved == opt_selftest - 1) {
						memset(buf + i * PAGE, 0, PAGE);
						st_zero++;
					} else if (opt_selftest >= 3 && n_saved == opt_selftest - 2) {
						buf[i * PAGE + 1000] ^= 0x5a;
						st_corrupt++;
					} else {
						memcpy(buf + i * PAGE, saved + n_saved * PAGE, PAGE);
						st_stale++;
					}
					n_saved++;
				}
				written++;
			}
			/* Trailing check: re-verify the batch rewritten `trail` batches ago.  Its pages have had time to
			 * be reclaimed and read back, so a lost write shows up within the round, not a round later
			 * (under a broken L1, L2's own kernel may die of its lost writes before then). */
			if (opt_trail && b >= opt_trail * opt_batch) {
				uint64_t tb = b - opt_trail * opt_batch;
				for (uint64_t i = tb; i < tb + opt_batch && i < opt_pages; i++)
					verify_page(buf + i * PAGE, i, expected_gen(i, r), r | (1ULL << 62));
			}
			if ((b / opt_batch) % 64 == 63)
				progress("rewrite", r, e);
		}
		if (r == 1 && n_saved)
			printf("@@LEDGER {\"ev\":\"selftest\",\"stale\":%lu,\"zero\":%lu,\"corrupt\":%lu}\n", st_stale,
			       st_zero, st_corrupt);
		printf("@@LEDGER {\"ev\":\"round\",\"round\":%lu,\"written\":%lu,\"bad\":%lu,\"t\":%.3f}\n", r, written,
		       n_stale + n_zero + n_corrupt, elapsed());
		window(r);
	}
	for (uint64_t i = 0; i < opt_pages; i++)
		verify_page(buf + i * PAGE, i, expected_gen(i, opt_rounds), opt_rounds + 1);
	if (dma_fd >= 0)
		printf("@@LEDGER {\"ev\":\"dma\",\"dev\":\"%s\",\"frac\":%.3f,\"pages\":%lu,\"writes\":%lu,"
		       "\"disk_bytes\":%lu,\"t\":%.3f}\n",
		       opt_dma_dev, opt_dma_frac, n_dma_pages, n_dma_writes, dma_size, elapsed());
	printf("@@LEDGER {\"ev\":\"done\",\"pages\":%lu,\"rounds\":%lu,\"verified\":%lu,\"trail_verified\":%lu,"
	       "\"stale\":%lu,\"zero\":%lu,\"corrupt\":%lu,\"t\":%.3f}\n",
	       opt_pages, opt_rounds, n_verified, n_trail, n_stale, n_zero, n_corrupt, elapsed());
	return n_stale + n_zero + n_corrupt ? 1 : 0;
}
