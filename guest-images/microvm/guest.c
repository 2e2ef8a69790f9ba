/*
 * The micro-guest's code: a command loop that writes, reads and verifies ledger pages on the VMM's command.
 *
 * Every function here lives in section "guest_text" and is copied verbatim to GPA_CODE, so it must be
 * position-independent and self-contained: no globals, no string literals, no jump tables, no libc calls (gcc
 * would turn a fill loop into memset: no-tree-loop-distribute-patterns), no stack protector, and no SSE (the
 * guest has no FPU state set up: general-regs-only).  build.sh checks the disassembly for references out of the
 * section.  The same functions run in the VMM (the self-test's old copies): one page format for both.
 */
#include "microvm.h"

#define GUEST_FN                                                                                              \
	__attribute__((section("guest_text"), target("general-regs-only"), no_stack_protector,              \
		       optimize("no-tree-loop-distribute-patterns", "no-jump-tables",                        \
				"no-reorder-blocks-and-partition", "no-optimize-sibling-calls")))

GUEST_FN static uint64_t mix64(uint64_t x)
{
	/* splitmix64 finaliser, as ledger.c */
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

GUEST_FN static uint32_t crc32c(const uint64_t *w, uint64_t n, uint64_t hw, const uint32_t *t)
{
	uint64_t c = 0xffffffff;
	if (hw) { /* the SSE4.2 crc32 instruction works on general registers */
		for (uint64_t k = 0; k < n; k++)
			__asm__("crc32q %1, %0" : "+r"(c) : "rm"(w[k]));
		return (uint32_t)c ^ 0xffffffff;
	}
	for (uint64_t k = 0; k < n; k++) { /* slice-by-8, table t[8][256] as ledger.c's crc_table */
		uint64_t v = w[k] ^ c;
		c = t[7 * 256 + (v & 0xff)] ^ t[6 * 256 + ((v >> 8) & 0xff)] ^ t[5 * 256 + ((v >> 16) & 0xff)] ^
		    t[4 * 256 + ((v >> 24) & 0xff)] ^ t[3 * 256 + ((v >> 32) & 0xff)] ^
		    t[2 * 256 + ((v >> 40) & 0xff)] ^ t[1 * 256 + ((v >> 48) & 0xff)] ^ t[v >> 56];
	}
	return (uint32_t)c ^ 0xffffffff;
}

/* ledger.c's write_page: header, xorshift64 payload from (seed, index, generation), CRC32C in the last word. */
GUEST_FN void page_write(uint8_t *p, uint64_t index, uint64_t gen, uint64_t seed, uint64_t gfn, uint64_t hw_crc,
			 const uint32_t *table)
{
	volatile struct page_hdr *h = (volatile struct page_hdr *)p;
	uint64_t *w = (uint64_t *)p;
	h->magic = MAGIC; /* the first store faults the page in */
	h->index = index;
	h->generation = gen;
	h->seed = seed;
	h->gfn = gfn;
	uint64_t s = mix64(seed ^ mix64(index ^ (gen << 40)));
	for (uint64_t k = HDR_WORDS; k < CRC_OFF / 8; k++) {
		s ^= s << 13;
		s ^= s >> 7;
		s ^= s << 17;
		w[k] = s;
	}
	w[CRC_OFF / 8] = crc32c(w, CRC_OFF / 8, hw_crc, table);
}

/* ledger.c's classify: good, zero (all-zero page), stale (valid page of an older generation), else corrupt. */
GUEST_FN int page_classify(const uint8_t *p, uint64_t index, uint64_t want, uint64_t seed, uint64_t hw_crc,
			   const uint32_t *table, uint64_t *found)
{
	const volatile struct page_hdr *h = (const volatile struct page_hdr *)p;
	const uint64_t *w = (const uint64_t *)p;
	*found = h->generation;
	int hdr_ok = h->magic == MAGIC && h->index == index && h->seed == seed;
	int crc_ok = hdr_ok && w[CRC_OFF / 8] == crc32c(w, CRC_OFF / 8, hw_crc, table);
	if (crc_ok && h->generation == want)
		return V_GOOD;
	uint64_t any = 0;
	for (uint64_t k = 0; k < PAGE / 8; k++)
		any |= w[k];
	if (!any)
		return V_ZERO;
	if (crc_ok && h->generation >= 1 && h->generation < want)
		return V_STALE;
	return V_CORRUPT;
}

GUEST_FN static void guest_done(void)
{
	__asm__ volatile("outb %b0, %w1" : : "a"(0), "Nd"(IO_PORT) : "memory");
}

/* One command: each entry's page at data_gpa + index * 4 KiB.  A bad page is repaired (rewritten at the
 * expected generation) so that one loss is reported once, as the ledger does. */
GUEST_FN static void guest_command(struct mailbox *mb)
{
	struct entry *e = (struct entry *)mb->entries;
	const uint32_t *t = (const uint32_t *)mb->crc_table;
	uint64_t bad = 0;
	for (uint64_t k = 0; k < mb->n; k++) {
		uint8_t *p = (uint8_t *)(mb->data_gpa + e[k].index * PAGE);
		uint64_t gfn = (uint64_t)p / PAGE;
		if (mb->op == OP_WRITE) {
			page_write(p, e[k].index, e[k].gen, mb->seed, gfn, mb->hw_crc, t);
		} else if (mb->op == OP_FILL) { /* identical pages, no ledger header */
			for (uint64_t w = 0; w < PAGE / 8; w++)
				((volatile uint64_t *)p)[w] = FILL_WORD;
		} else if (mb->op == OP_READ) { /* one load: a read fault on the page, nothing verified */
			e[k].found = ((volatile struct page_hdr *)p)->generation;
		} else if (mb->op == OP_VERIFY) {
			e[k].hdr_gfn = ((volatile struct page_hdr *)p)->gfn;
			e[k].verdict = page_classify(p, e[k].index, e[k].gen, mb->seed, mb->hw_crc, t, &e[k].found);
			if (e[k].verdict != V_GOOD) {
				bad++;
				page_write(p, e[k].index, e[k].gen, mb->seed, gfn, mb->hw_crc, t);
			}
		}
	}
	mb->bad = bad;
	mb->done++;
}

/* OP_SPIN: sweep after sweep over the entries' pages with no exit in between (the VMM pages them out from
 * another L1 CPU meanwhile).  Sweep s writes generation gen + s; `published` = the last sweep completed, so
 * when the guest returns every page must hold gen + published, in the host's copy as through the SPTEs. */
GUEST_FN static void guest_spin(struct mailbox *mb)
{
	struct entry *e = (struct entry *)mb->entries;
	const uint32_t *t = (const uint32_t *)mb->crc_table;
	volatile uint64_t *stop = &mb->stop, *published = &mb->published;
	for (uint64_t s = 1;; s++) {
		for (uint64_t k = 0; k < mb->n; k++) {
			uint8_t *p = (uint8_t *)(mb->data_gpa + e[k].index * PAGE);
			page_write(p, e[k].index, e[k].gen + s, mb->seed, (uint64_t)p / PAGE, mb->hw_crc, t);
		}
		*published = s;
		if (*stop || s >= mb->max_sweeps)
			break;
	}
	mb->bad = 0;
	mb->done++;
}

/* Entry point (RDI = this vCPU's mailbox): announce readiness, then one command per `out`. */
GUEST_FN __attribute__((used, noinline)) void guest_main(struct mailbox *mb)
{
	for (;;) {
		guest_done();
		if (mb->op == OP_SPIN)
			guest_spin(mb);
		else
			guest_command(mb);
	}
}
