/*
 * The choreographies: each stages one window of the lost-write race on one batch [first, first + n), with the
 * host steps done synchronously between the guest's steps.  The last guest write of every choreography is the
 * one the self-test tampers with (round 1), and its last step is a verify after a page-out.
 *
 * Reading of the KVM MMU that decides each window (v6.12 and v7.x; arch/x86/kvm/mmu/{mmu,tdp_mmu,spte}.c,
 * virt/kvm/kvm_main.c):
 * - A guest read fault on a page the host has swapped out resolves the pfn with a read GUP; the host maps the
 *   swapped-in exclusive anon page writable but clean (do_swap_page), and KVM then asks for a writable mapping
 *   (hva_to_pfn_fast with FOLL_WRITE succeeds on a writable PTE), so make_spte() installs a writable SPTE with
 *   the dirty bit preset.  The guest's next write goes through it with no fault and never dirties the host PTE:
 *   the only record of that write is the SPTE.  6.12 transfers it to the folio when the mmu_notifier zaps
 *   the SPTE (MADV_PAGEOUT, reclaim, collapse): TDP MMU handle_changed_spte -> kvm_set_pfn_dirty, shadow MMU
 *   mmu_spte_clear_track_bits.  7.x marks the folio dirty at fault time instead, whenever the SPTE is made
 *   writable (kvm_mmu_finish_page_fault -> kvm_release_faultin_page(..., fault->map_writable)), so the same
 *   read fault is the window there.  If neither happens, the folio in the swap cache is clean with a valid
 *   swap copy of the old data, reclaim drops it, and the write is lost.
 * - The sequence is synchronous and has one vCPU per batch: race-class bugs (a missed mmu_notifier retry, a
 *   skipped TLB flush) need concurrency and are the Linux L2's job; no in-kernel LAPIC means no async page
 *   faults, so the faulting page itself is always the one exposed.
 * - The shadow MMU (tdp_mmu=N and nested shadow paging) prefetches the other gfns of the faulting gfn's
 *   8-aligned group (__direct_pte_prefetch: runs of non-present SPTEs, PTE_PREFETCH_NUM) when their host pages
 *   are present (gfn_to_page_many_atomic: GUP-fast, so only pages already mapped by the host, e.g. just
 *   swapped in by a host read), with writable SPTEs and no fault; a kernel that releases prefetched pages
 *   clean (or never marks them) loses writes there.  With dirty logging on there is no writable prefetch
 *   (gfn_to_memslot_dirty_bitmap), and AMD NPT has accessed bits, so prefetch is on under nested SVM.
 * - With dirty logging, KVM write-protects (or clears D in) the SPTEs at each harvest; a write must reach the
 *   dirty bitmap whether the SPTE was zapped by reclaim in between or not.
 */
#include <stdlib.h>
#include <string.h>

#include "vmm.h"

#define GROUP 8     /* the shadow MMU's prefetch group, PTE_PREFETCH_NUM */
#define HPAGE_PAGES 512

static uint64_t *range(uint64_t first, uint64_t n)
{
	static uint64_t *buf;
	static uint64_t cap;
	if (n > cap) {
		free(buf);
		buf = malloc(n * sizeof(*buf));
		if (!buf)
			infra("out of memory for a batch of %llu pages", (unsigned long long)n);
		cap = n;
	}
	for (uint64_t k = 0; k < n; k++)
		buf[k] = first + k;
	return buf;
}

/* The common tail: write g+1 through whatever SPTE the previous step left, page out, verify. */
static void write_pageout_verify(const uint64_t *idx, uint64_t m, uint64_t first, uint64_t n, const char *step)
{
	guest_write(idx, m, first, n);
	host_plant_old_copies(idx, m);
	host_wait_writeback();
	host_pageout(first, n);
	guest_verify(step, range(first, n), n, first, n);
}

/* Window: the RFC race.  (a) write g (write fault: host PTE dirty) -> (b) page out (SPTEs zapped, folio to the
 * swap cache) -> (c) guest reads + verifies g: a read fault after swap-out, host PTE writable but clean, KVM maps
 * it writable with D preset -> (d) writes g+1 with no fault -> (e) page out: the zap alone must dirty the
 * folio -> (f) verify g+1.  Any MMU (TDP MMU, shadow, legacy TDP), any backend. */
static void chor_wprw(uint64_t first, uint64_t n)
{
	uint64_t *idx = range(first, n);
	guest_write(idx, n, first, n);
	host_pageout(first, n);
	guest_verify("read-after-pageout", idx, n, first, n);
	write_pageout_verify(range(first, n), n, first, n, "verify-after-pageout");
}

/* Which gfn of the 8-gfn group at page g faults: seeded, so that over seeds the prefetched runs lie before,
 * after and on both sides of the faulting gfn (__direct_pte_prefetch maps runs of absent SPTEs around it). */
static uint64_t head_of(uint64_t g)
{
	uint64_t h = (C.o.seed + 1) * 0x9e3779b97f4a7c15ULL ^ (C.round << 32) ^ g;
	h ^= h >> 29;
	h *= 0xbf58476d1ce4e5b9ULL;
	return (h ^ (h >> 32)) % GROUP;
}

/* Window: shadow-MMU prefetch of pages swapped in by the host.  (a) write g -> (b) page out -> (c) the VMM
 * reads the batch: swap-in by a host read fault, writable-clean PTEs, no SPTE -> (d) the guest reads one
 * (seeded) gfn of each 8-gfn group: the fault maps it, and __direct_pte_prefetch maps the 7 present
 * neighbours writable without a fault -> (e) the guest writes the neighbours only (through the prefetched
 * SPTEs) -> (f) page out -> (g) verify the batch.  Under the TDP MMU (no prefetch) the neighbours take
 * ordinary write faults: still a valid clean-kernel check. */
static void chor_prefetch(uint64_t first, uint64_t n)
{
	uint64_t *idx = range(first, n);
	guest_write(idx, n, first, n);
	host_pageout(first, n);
	host_read(first, n);
	uint64_t heads[n / GROUP + 1], neigh[n], nh = 0, nn = 0;
	for (uint64_t k = 0; k < n; k++) {
		if (k % GROUP == head_of(first + k - k % GROUP))
			heads[nh++] = first + k;
		else
			neigh[nn++] = first + k;
	}
	guest_read(heads, nh, first, n);
	write_pageout_verify(neigh, nn, first, n, "verify-after-prefetch");
}

/* Window: the dirty log under reclaim.  KVM_MEM_LOG_DIRTY_PAGES on the data slot; (a) write g -> (b) page out
 * -> harvest: every page of (a) logged -> (c) read + verify after swap-out (with logging on, a read fault maps
 * read-only) -> (d) write g+1 -> (e) page out -> harvest: every page of (d) logged -> (f) verify g+1.  A missing
 * bitmap entry is a lost page for live migration even when the data survived. */
static void chor_dirtylog(uint64_t first, uint64_t n)
{
	uint64_t *idx = range(first, n);
	guest_write(idx, n, first, n);
	host_pageout(first, n);
	dirty_harvest(first, n);
	guest_verify("read-after-pageout", idx, n, first, n);
	guest_write(idx, n, first, n);
	host_plant_old_copies(idx, n);
	host_wait_writeback();
	host_pageout(first, n);
	dirty_harvest(first, n);
	guest_verify("verify-after-pageout", idx, n, first, n);
}

/* Window: a page the host maps read-only, then written by the guest.  MADV_DONTNEED makes the batch never
 * written -> the guest reads it: the host maps the shared zero page (anon) and KVM a read-only SPTE -> the
 * guest writes g: a write fault on a present read-only SPTE (COW, host PTE dirty) -> page out -> read-after-
 * swap-out -> write g+1 -> page out -> verify. */
static void chor_readonly(uint64_t first, uint64_t n)
{
	uint64_t *idx = range(first, n);
	host_dontneed(first, n);
	guest_read(idx, n, first, n);
	guest_write(idx, n, first, n);
	host_pageout(first, n);
	guest_verify("read-after-pageout", idx, n, first, n);
	write_pageout_verify(range(first, n), n, first, n, "verify-after-pageout");
}

/* Window: THP collapse (backend thp, one 2 MiB unit per batch).  Write g (a THP when L1's THP allows, mapped
 * by a 2 MiB SPTE) -> page out (split to the swap cache) -> read-after-swap-out (4 KiB, writable clean) ->
 * MADV_COLLAPSE (copied into a new THP, the 4 KiB SPTEs zapped: their dirty state must reach the old folios
 * before the copy) -> verify -> write g+1 (a 2 MiB SPTE) -> page out -> verify. */
static void chor_thp_collapse(uint64_t first, uint64_t n)
{
	uint64_t *idx = range(first, n);
	guest_write(idx, n, first, n);
	host_pageout(first, n);
	guest_verify("read-after-pageout", idx, n, first, n);
	guest_write(idx, n, first, n);
	host_collapse(first, n);
	guest_verify("verify-after-collapse", idx, n, first, n);
	write_pageout_verify(range(first, n), n, first, n, "verify-after-pageout");
}

/* Window: THP split under a huge SPTE.  Write g on a THP (2 MiB SPTE) -> page out the first 8 pages only:
 * MADV_PAGEOUT splits the folio, the huge SPTE is zapped and its dirty state must reach all 512 pages ->
 * verify every page (8 after swap-out, the rest after the split) -> write g+1 -> page out -> verify. */
static void chor_thp_split(uint64_t first, uint64_t n)
{
	uint64_t *idx = range(first, n);
	guest_write(idx, n, first, n);
	host_split(first, n, GROUP);
	guest_verify("verify-after-split", idx, n, first, n);
	guest_write(idx, n, first, n);
	host_pageout(first, n);
	guest_verify("read-after-pageout", idx, n, first, n);
	write_pageout_verify(range(first, n), n, first, n, "verify-after-pageout");
}

/* Window: KSM-merged pages (read-only in the host, one pfn) written by the guest.  The guest fills the batch
 * with identical content -> ksmd merges it (MADV_MERGEABLE; the VMM waits for one pfn) -> the guest reads it
 * (read-only SPTE on the KSM page) -> writes g (a write fault breaks COW: a new anon page, host PTE dirty) ->
 * page out -> read-after-swap-out -> write g+1 -> page out -> verify.  Needs ksmd on (scenario knob ksm). */
static void chor_ksm(uint64_t first, uint64_t n)
{
	uint64_t *idx = range(first, n);
	guest_fill(idx, n, first, n);
	host_ksm_merge(first, n);
	guest_read(idx, n, first, n);
	guest_write(idx, n, first, n);
	host_ksm_unmerge(first, n);
	host_pageout(first, n);
	guest_verify("read-after-pageout", idx, n, first, n);
	write_pageout_verify(range(first, n), n, first, n, "verify-after-pageout");
}

const struct chor CHORS[] = {
	{"write-pageout-read-write", "write, page out, read fault after swap-out (writable-clean host PTE, "
	 "writable SPTE), write with no fault, page out, verify: the zap must dirty the folio", chor_wprw, 1, -1, 0},
	{"host-read-prefetch", "page out, host reads swap the batch in (no SPTE), guest faults one gfn per 8-gfn "
	 "group (shadow-MMU prefetch maps the neighbours), writes the neighbours, page out, verify",
	 chor_prefetch, GROUP, -1, 0},
	{"dirty-log", "dirty logging on; write, page out, harvest, read after swap-out, write, page out, harvest: "
	 "every written page must be in KVM_GET_DIRTY_LOG, and verify", chor_dirtylog, 1, -1, 1},
	{"readonly-then-write", "never-written pages read by the guest (zero page, read-only SPTE), then written "
	 "(COW), page out, read after swap-out, write, page out, verify", chor_readonly, 1, -1, 0},
	{"thp-collapse", "THP backend: write, page out, read after swap-out, MADV_COLLAPSE, verify, write (2 MiB "
	 "SPTE), page out, verify", chor_thp_collapse, HPAGE_PAGES, B_THP, 0},
	{"thp-split", "THP backend: write a THP (2 MiB SPTE), page out 8 of its pages (split), verify, write, "
	 "page out, read after swap-out, write, page out, verify", chor_thp_split, HPAGE_PAGES, B_THP, 0},
	{"ksm-then-write", "identical pages merged by ksmd (one read-only pfn), read by the guest (read-only "
	 "SPTE), written (COW break), page out, read after swap-out, write, page out, verify (needs ksm on)",
	 chor_ksm, 1, B_ANON, 0},
	{"race-pageout", "the vCPU rewrites the batch sweep after sweep on L1 CPU 0 while a pager thread on L1 CPU 1 "
	 "pages it out and reclaims (race.c); host view then guest view against the last completed sweep",
	 chor_race_pageout, 1, -1, 0},
};
const int NCHORS = sizeof(CHORS) / sizeof(CHORS[0]);

int chor_find(const char *name)
{
	for (int c = 0; c < NCHORS; c++)
		if (!strcmp(CHORS[c].name, name))
			return c;
	return -1;
}
