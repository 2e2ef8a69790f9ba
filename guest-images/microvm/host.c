/*
 * The data region (one mapping per backend) and the VMM's synchronous host steps on it: page-out, host reads,
 * MADV_DONTNEED, MADV_COLLAPSE, the self-test's planted old copies and dirty-log harvests.  Each step prints an
 * "@@MICRO step" line with the pages' gfn, L1 pfns (from /proc/self/pagemap) and how many are swapped out.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "vmm.h"

#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT 21
#endif
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif
#define HPAGE (2ULL << 20)
#define PM_PRESENT (1ULL << 63)
#define PM_SWAP (1ULL << 62)
#define PM_PFN ((1ULL << 55) - 1)

uint8_t *data_map(const struct opts *o)
{
	uint64_t bytes = o->pages * PAGE;
	uint8_t *p = MAP_FAILED;
	int fd = -1;
	if (o->backend == B_ANON || o->backend == B_THP) {
		uint64_t extra = o->backend == B_THP ? HPAGE : 0; /* room to align to 2 MiB */
		p = mmap(NULL, bytes + extra, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (p == MAP_FAILED)
			infra("mmap of the data region (%llu bytes): %s", (unsigned long long)bytes, strerror(errno));
		if (extra)
			p = (uint8_t *)(((uintptr_t)p + HPAGE - 1) & ~(HPAGE - 1));
		if (madvise(p, bytes, o->backend == B_THP ? MADV_HUGEPAGE : MADV_NOHUGEPAGE))
			infra("madvise(%s): %s", o->backend == B_THP ? "MADV_HUGEPAGE" : "MADV_NOHUGEPAGE", strerror(errno));
		return p;
	}
	if (o->backend == B_MEMFD)
		fd = memfd_create("microvm-data", MFD_CLOEXEC);
	else
		fd = open(o->file, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		infra("%s: %s", o->backend == B_MEMFD ? "memfd_create" : o->file, strerror(errno));
	if (ftruncate(fd, bytes))
		infra("ftruncate of the data file to %llu bytes: %s", (unsigned long long)bytes, strerror(errno));
	p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED)
		infra("mmap of the shared data region: %s", strerror(errno));
	close(fd); /* the mapping keeps it */
	return p;
}

static uint64_t pagemap(uint64_t i)
{
	uint64_t ent = 0;
	if (C.pagemap_fd < 0 || pread(C.pagemap_fd, &ent, 8, ((uintptr_t)(C.data + i * PAGE) / PAGE) * 8) != 8)
		return 0;
	return ent;
}

uint64_t pfn_of(uint64_t i)
{
	uint64_t e = pagemap(i);
	return e & PM_PRESENT ? e & PM_PFN : 0;
}

/* Swapped out: a swap PTE (anon).  Shared memory (memfd, a tmpfs file) keeps no swap PTE: its page-out leaves
 * the PTE empty and mincore() still counts a page in the swap cache as resident, so for those backends a page
 * the page-out unmapped counts (the folio went through reclaim: written to swap or the file, or dropped clean). */
static int is_swapped(uint64_t i)
{
	uint64_t e = pagemap(i);
	if (e & PM_SWAP)
		return 1;
	return !(e & PM_PRESENT) && (C.o.backend == B_MEMFD || C.o.backend == B_FILE);
}

/* Count the swapped pages of [first, first + n), and note the pages seen back in since a page-out (`out`: this
 * step is one) put them out. */
static uint64_t count_swapped(uint64_t first, uint64_t n, int out)
{
	uint64_t k = 0;
	for (uint64_t i = first; i < first + n; i++) {
		int sw = is_swapped(i);
		if (sw && out) {
			C.seen_swapped[i] = 1;
		} else if (!sw && C.seen_swapped[i] && (pagemap(i) & PM_PRESENT)) {
			C.seen_swapped[i] = 0;
			C.pages_in++;
		}
		k += sw;
	}
	return k;
}

void step_log(const char *step, uint64_t first, uint64_t n)
{
	int out = !strcmp(step, "pageout") || !strcmp(step, "split");
	uint64_t sw = count_swapped(first, n, out);
	printf("@@MICRO {\"ev\":\"step\",\"chor\":\"%s\",\"round\":%llu,\"step\":\"%s\",\"first_gfn\":%llu,"
	       "\"npages\":%llu,\"pfns\":[", C.chor, (unsigned long long)C.round, step,
	       (unsigned long long)(DATA_GPA / PAGE + first), (unsigned long long)n);
	for (uint64_t k = 0; k < 8 && k < n; k++)
		printf("%s%llu", k ? "," : "", (unsigned long long)pfn_of(first + k));
	/* faults: KVM's pf_fixed since the previous step (a guest step that should fault, or should not) */
	static long long last_faults;
	long long f = guest_faults(&C.vm), df = f < 0 ? -1 : f - last_faults;
	last_faults = f;
	printf("],\"swapped\":%llu,\"faults\":%lld,\"vcpu\":%d,\"t\":%.3f}\n", (unsigned long long)sw, df, C.vcpu,
	       elapsed());
	if (out)
		C.pages_out += sw;
}

/* MADV_PAGEOUT reclaims the range now: KVM's SPTEs are zapped through the mmu_notifier, and the folios are
 * written to swap (or dropped when clean with a swap copy).  It takes only folios mapped once. */
void host_pageout(uint64_t first, uint64_t n)
{
	if (madvise(C.data + first * PAGE, n * PAGE, MADV_PAGEOUT))
		infra("madvise(MADV_PAGEOUT): %s", strerror(errno));
	C.pageouts++;
	step_log("pageout", first, n);
}

static long vmstat_writeback(void)
{
	char buf[16384];
	int fd = open("/proc/vmstat", O_RDONLY | O_CLOEXEC);
	ssize_t r = fd < 0 ? -1 : read(fd, buf, sizeof(buf) - 1);
	if (fd >= 0)
		close(fd);
	if (r <= 0)
		return -1;
	buf[r] = 0;
	char *p = strstr(buf, "\nnr_writeback ");
	return p ? strtol(p + 14, NULL, 10) : -1;
}

/* Wait (up to 3 s) until no page is under writeback.  Before the page-out that follows a write with no fault:
 * the first page-out's swap writeback must be over, so that a folio the kernel forgot to dirty is clean in the
 * swap cache and this page-out drops it (a folio still under writeback is kept, and the loss would hide). */
void host_wait_writeback(void)
{
	double t = elapsed();
	while (vmstat_writeback() > 0 && elapsed() - t < 3)
		usleep(2000);
	C.writeback_wait_s += elapsed() - t;
}

/* Host reads (the VMM's own loads): swap the pages back in by a read fault, mapped writable but clean, with
 * no SPTE (as QEMU's device emulation or a vhost read of guest memory would). */
void host_read(uint64_t first, uint64_t n)
{
	volatile uint64_t sink = 0;
	for (uint64_t i = first; i < first + n; i++)
		sink += *(volatile uint64_t *)(C.data + i * PAGE);
	(void)sink;
	step_log("host-read", first, n);
}

/* Make the pages never-written: MADV_DONTNEED on private memory (zero-fill on the next touch: a read maps the
 * shared zero page), MADV_REMOVE on shared memory (punches the hole; DONTNEED would only unmap). */
void host_dontneed(uint64_t first, uint64_t n)
{
	int shared = C.o.backend == B_MEMFD || C.o.backend == B_FILE;
	if (madvise(C.data + first * PAGE, n * PAGE, shared ? MADV_REMOVE : MADV_DONTNEED))
		infra("madvise(%s): %s", shared ? "MADV_REMOVE" : "MADV_DONTNEED", strerror(errno));
	for (uint64_t i = first; i < first + n; i++) {
		C.gen[i] = 0;
		C.seen_swapped[i] = 0;
	}
	step_log("discard", first, n);
}

/* MADV_COLLAPSE: a new THP replaces the 4 KiB pages (copied; the SPTEs of the range are zapped). */
void host_collapse(uint64_t first, uint64_t n)
{
	if (madvise(C.data + first * PAGE, n * PAGE, MADV_COLLAPSE))
		infra("madvise(MADV_COLLAPSE): %s", strerror(errno));
	step_log("collapse", first, n);
}

/* A THP split: MADV_PAGEOUT of only the first `out` pages of a THP splits the folio (and zaps the huge SPTE)
 * before it pages out those pages. */
void host_split(uint64_t first, uint64_t n, uint64_t out)
{
	if (madvise(C.data + first * PAGE, out * PAGE, MADV_PAGEOUT))
		infra("madvise(MADV_PAGEOUT) of part of a THP: %s", strerror(errno));
	C.pageouts++;
	step_log("split", first, n);
}

static long ksm_knob(const char *name)
{
	char path[128], buf[32];
	snprintf(path, sizeof(path), "/sys/kernel/mm/ksm/%s", name);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t r = fd < 0 ? -1 : read(fd, buf, sizeof(buf) - 1);
	if (fd >= 0)
		close(fd);
	if (r <= 0)
		return -1;
	buf[r] = 0;
	return strtol(buf, NULL, 10);
}

/* MADV_MERGEABLE, then wait (up to 20 s) for ksmd to merge the batch's identical pages: all mapped to one pfn,
 * read-only in the host.  ksmd must run (/sys/kernel/mm/ksm/run = 1: the scenario's ksm knob). */
void host_ksm_merge(uint64_t first, uint64_t n)
{
	if (ksm_knob("run") != 1)
		infra("KSM is not running (/sys/kernel/mm/ksm/run is not 1): the ksm choreography needs ksm on");
	if (madvise(C.data + first * PAGE, n * PAGE, MADV_MERGEABLE))
		infra("madvise(MADV_MERGEABLE): %s", strerror(errno));
	uint64_t merged = 0;
	for (double t = elapsed(); elapsed() - t < 20;) {
		uint64_t pfn0 = pfn_of(first);
		merged = 0;
		for (uint64_t i = first; i < first + n; i++)
			merged += pfn0 && pfn_of(i) == pfn0;
		if (merged == n)
			break;
		usleep(20000);
	}
	step_log("ksm-merge", first, n);
	if (merged != n)
		infra("ksmd merged %llu of %llu identical pages within 20 s", (unsigned long long)merged,
		      (unsigned long long)n);
}

void host_ksm_unmerge(uint64_t first, uint64_t n)
{
	if (madvise(C.data + first * PAGE, n * PAGE, MADV_UNMERGEABLE))
		infra("madvise(MADV_UNMERGEABLE): %s", strerror(errno));
}

/* Self-test: put the previous generation's copy back behind the guest's back on up to --selftest pages of
 * round 1, just after the guest wrote them: exactly what a lost write looks like when the page comes back. */
void host_plant_old_copies(const uint64_t *idx, uint64_t n)
{
	static uint8_t old[PAGE] __attribute__((aligned(4096)));
	if (C.round != 1)
		return;
	for (uint64_t k = 0; k < n && C.planted < C.o.selftest; k++) {
		uint64_t i = idx[k];
		if (C.gen[i] < 2)
			continue;
		page_write(old, i, C.gen[i] - 1, C.o.seed, DATA_GPA / PAGE + i, C.vm.hw_crc, C.crc_table);
		memcpy(C.data + i * PAGE, old, PAGE);
		C.planted++;
	}
}

/* KVM_GET_DIRTY_LOG: every page the guest wrote since the last harvest must be in the log, whatever reclaim
 * did in between (a missing entry is data a live migration would not resend). */
void dirty_harvest(uint64_t first, uint64_t n)
{
	uint64_t words = (C.o.pages + 63) / 64, written = 0, logged = 0, missing = 0, first_missing = 0;
	uint64_t *bm = calloc(words, 8);
	if (!bm)
		infra("out of memory for the dirty bitmap");
	get_dirty_log(&C.vm, bm);
	for (uint64_t i = 0; i < C.o.pages; i++) {
		if (!C.dirty_expect[i])
			continue;
		written++;
		if (bm[i / 64] >> (i % 64) & 1) {
			logged++;
		} else if (!missing++) {
			first_missing = DATA_GPA / PAGE + i;
		}
		C.dirty_expect[i] = 0;
	}
	free(bm);
	C.dirty_log_missing += missing;
	step_log("dirty-harvest", first, n);
	printf("@@MICRO {\"ev\":\"dirtylog\",\"chor\":\"%s\",\"round\":%llu,\"written\":%llu,\"logged\":%llu,"
	       "\"missing\":%llu,\"first_missing_gfn\":%llu,\"t\":%.3f}\n", C.chor, (unsigned long long)C.round,
	       (unsigned long long)written, (unsigned long long)logged, (unsigned long long)missing,
	       (unsigned long long)first_missing, elapsed());
}
