/*
 * The concurrent choreography: a vCPU that keeps writing while reclaim runs on another L1 CPU.
 *
 * The other choreographies (chor.c) act on the host side only between guest steps, so a race between a running
 * vCPU (or a fault in progress) and an invalidation on another CPU can never happen there.  Here the VMM's
 * main thread, pinned to L1 CPU 0, runs the vCPU (OP_SPIN: sweep after sweep over the batch, no exit), while a
 * pager thread pinned to the last L1 CPU pages the same pages out (MADV_PAGEOUT: notifier invalidation, zap, swap
 * write) and reclaims the VMM's cgroup (memory.reclaim: pages that are in the swap cache but no longer mapped
 * by the host, such as a page an SPTE still maps after its invalidation, are written out and freed).
 *
 * Windows it stages (v6.12/v7.x, arch/x86/kvm/mmu/{mmu,tdp_mmu}.c, virt/kvm/kvm_main.c):
 * - The fault path's mmu_notifier re-check: a write fault on a just-paged-out page swaps it in through GUP;
 *   if the pager's next MADV_PAGEOUT unmaps it before the fault takes mmu_lock, the invalidation has nothing
 *   to zap (no SPTE yet) and only mmu_invalidate_seq tells the fault to retry.  A kernel that skips that check
 *   installs an SPTE for a page the host no longer maps; reclaim frees it later (no notifier names it again)
 *   and every guest write after that is lost (or lands in a page L1 has reused).  A delay after the pfn
 *   lookup (scenario knob `delays`, e.g. {func: __kvm_faultin_pfn, ret: true}) widens the window.
 * - A zap without its TLB flush: the vCPU goes on writing the old pfn through a stale translation.  Under
 *   QEMU's TCG every world switch flushes the softmmu TLB, and the host's own TLB shootdown for the unmap
 *   interrupts the vCPU (an exit), so this window closes before the page's swap write starts (docs/races.md).
 *   The race line's exits and irq_exits (KVM's vCPU statistics over the race) show how often that happened.
 *
 * The verdict: when the vCPU returns, every page must hold generation gen + published (the last sweep the
 * guest completed) in the host's copy (read through the VMM's mapping: a swap-in of what reclaim wrote) and
 * through the guest's SPTEs; the host's copy is checked first and repaired, so a guest view that then differs
 * is an SPTE that outlived its page.  With one L1 CPU the same choreography runs the pager only while the
 * vCPU is preempted (a negative control); its race line says so (pager_cpu == vcpu_cpu).  With --vcpus V every
 * vCPU spins at once on its own slice of the batch, vCPU k on L1 CPU k mod (CPUs - 1), each in a thread.
 * With --race-split the cgroup's reclaim runs in a thread of its own on the CPU before the pager's, so that
 * lockless aging (kvm_age_gfn from MGLRU's walk) and the pager's zaps of the same gfns can overlap.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "vmm.h"

#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT 21
#endif
#define RECLAIM_EVERY 4 /* pager iterations per memory.reclaim */

struct pager {
	uint64_t first, n;
	int nspin;                    /* vCPUs spinning on the batch */
	struct mailbox *mb[MAX_VCPUS]; /* their mailboxes: published sweeps, stop flags */
	double until;                 /* elapsed() at which the pager stops the guest */
	int cpu, reclaim_fd;
	int reclaim_cpu;              /* --race-split: memory.reclaim in a thread of its own on this CPU, else -1 */
	/* counts */
	uint64_t pageouts, overlapped, reclaims, reclaim_errors;
};

struct spinner {
	int id, cpu;
	uint64_t n;
	pthread_t th;
};

static int pin_to(int cpu)
{
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	return sched_setaffinity(0, sizeof(set), &set);
}

/* The VMM's cgroup v2 leaf (start-micro.sh puts it in one): its memory.reclaim, or -1. */
static int open_reclaim(void)
{
	char buf[512], path[640];
	int fd = open("/proc/self/cgroup", O_RDONLY | O_CLOEXEC);
	ssize_t r = fd < 0 ? -1 : read(fd, buf, sizeof(buf) - 1);
	if (fd >= 0)
		close(fd);
	if (r <= 3 || strncmp(buf, "0::", 3))
		return -1;
	buf[r] = 0;
	buf[strcspn(buf, "\n")] = 0;
	snprintf(path, sizeof(path), "/sys/fs/cgroup%s/memory.reclaim", buf + 3);
	return open(path, O_WRONLY | O_CLOEXEC);
}

/* Page the batch out again and again; every few rounds reclaim the cgroup (what is in the swap cache and no
 * longer mapped goes out and is freed).  A page-out "overlapped" the guest when the guest completed a sweep
 * while it ran: the proof that vCPU and pager really ran at once. */
static uint64_t sweeps_published(const struct pager *p)
{
	uint64_t sum = 0;
	for (int k = 0; k < p->nspin; k++)
		sum += *(volatile uint64_t *)&p->mb[k]->published;
	return sum;
}

/* memory.reclaim of about the batch's size: what is in the swap cache and no longer mapped goes out and is
 * freed; with MGLRU, its aging walk clears the Accessed bits of KVM's SPTEs (kvm_age_gfn, lockless in 7.x). */
static void reclaim_once(struct pager *p)
{
	char amount[32];
	int len = snprintf(amount, sizeof(amount), "%llu", (unsigned long long)(p->n * PAGE));
	/* EAGAIN: less than asked could be reclaimed, the usual answer for a small cgroup */
	if (write(p->reclaim_fd, amount, len) == len || errno == EAGAIN)
		__atomic_fetch_add(&p->reclaims, 1, __ATOMIC_RELAXED);
	else
		__atomic_fetch_add(&p->reclaim_errors, 1, __ATOMIC_RELAXED);
}

/* --race-split: reclaim (aging included) on its own CPU, so that aging and the pager's zaps run at once. */
static void *reclaimer_main(void *arg)
{
	struct pager *p = arg;
	if (pin_to(p->reclaim_cpu))
		p->reclaim_cpu = -1;
	while (elapsed() < p->until)
		reclaim_once(p);
	return NULL;
}

static void *pager_main(void *arg)
{
	struct pager *p = arg;
	if (pin_to(p->cpu))
		p->cpu = -1;
	for (uint64_t it = 0; elapsed() < p->until; it++) {
		uint64_t before = sweeps_published(p);
		if (madvise(C.data + p->first * PAGE, p->n * PAGE, MADV_PAGEOUT) == 0)
			p->pageouts++;
		if (sweeps_published(p) != before)
			p->overlapped++;
		if (p->reclaim_cpu < 0 && p->reclaim_fd >= 0 && it % RECLAIM_EVERY == RECLAIM_EVERY - 1)
			reclaim_once(p);
	}
	for (int k = 0; k < p->nspin; k++)
		*(volatile uint64_t *)&p->mb[k]->stop = 1;
	return NULL;
}

/* The host's view: classify every page of the batch on the VMM's own mapping (a swap-in when reclaim put it
 * out), report the bad ones as the guest's verify does, and repair them so that the guest's view is checked
 * against the host's. */
static void host_verify(uint64_t first, uint64_t n)
{
	struct entry e[64];
	uint64_t m = 0;
	for (uint64_t i = first; i < first + n; i++) {
		uint8_t *pg = C.data + i * PAGE;
		struct entry x = {.index = i, .gen = C.gen[i], .hdr_gfn = ((struct page_hdr *)pg)->gfn};
		x.verdict = page_classify(pg, i, C.gen[i], C.o.seed, C.vm.hw_crc, C.crc_table, &x.found);
		C.verified++;
		if (x.verdict == V_GOOD)
			continue;
		page_write(pg, i, C.gen[i], C.o.seed, DATA_GPA / PAGE + i, C.vm.hw_crc, C.crc_table);
		e[m++] = x;
		if (m == 64) {
			report_bad_entries("host-view-after-race", e, m);
			m = 0;
		}
	}
	report_bad_entries("host-view-after-race", e, m);
	step_log("host-read", first, n);
}

static int online_cpus(void)
{
	long c = sysconf(_SC_NPROCESSORS_ONLN);
	return c < 1 ? 1 : (int)c;
}

/* vCPU `id` spins on its slice of the batch (its entries are set): pinned to its CPU, until the pager stops it. */
static void *spinner_main(void *arg)
{
	struct spinner *sp = arg;
	if (pin_to(sp->cpu))
		sp->cpu = -1;
	vcpu_run(&C.vm, sp->id, OP_SPIN, sp->n);
	return NULL;
}

/* Deal the batch to `nspin` vCPUs (contiguous slices) and arm their mailboxes; returns vCPU k's first page. */
static uint64_t arm_slice(int k, int nspin, uint64_t first, uint64_t n, struct spinner *sp)
{
	uint64_t lo = n * k / nspin, hi = n * (k + 1) / nspin;
	struct vcpu *v = &C.vm.vcpu[k];
	for (uint64_t j = lo; j < hi; j++)
		v->entries[j - lo] = (struct entry){.index = first + j, .gen = C.gen[first + j]};
	v->mb->stop = 0;
	v->mb->published = 0;
	v->mb->max_sweeps = UINT64_MAX;
	sp->id = k;
	sp->n = hi - lo;
	return first + lo;
}

static void vcpu_stats(int nspin, long long *exits, long long *irq_exits)
{
	*exits = *irq_exits = 0;
	for (int k = 0; k < nspin; k++) {
		struct vcpu *v = &C.vm.vcpu[k];
		long long x = vcpu_stat(v, v->exits_off), i = vcpu_stat(v, v->irq_exits_off);
		*exits = *exits < 0 || x < 0 ? -1 : *exits + x;
		*irq_exits = *irq_exits < 0 || i < 0 ? -1 : *irq_exits + i;
	}
}

/* Every vCPU spins on its slice (vCPU k on L1 CPU k mod (CPUs - 1)), the pager runs on the last L1 CPU (CPU 0
 * when there is only one), for race_ms; the vCPUs' pages then hold gen + their published sweeps. */
static void run_race(uint64_t first, uint64_t n)
{
	int ncpu = online_cpus(), nspin = C.o.vcpus < (int)n ? C.o.vcpus : (int)n;
	int vcpu_cpus = ncpu > 1 ? ncpu - 1 : 1;
	struct spinner sp[MAX_VCPUS];
	uint64_t slice_first[MAX_VCPUS];
	struct pager p = {.first = first, .n = n, .nspin = nspin, .until = elapsed() + C.o.race_ms / 1000.0,
			  .cpu = ncpu > 1 ? ncpu - 1 : 0, .reclaim_fd = open_reclaim(), .reclaim_cpu = -1};
	if (C.o.race_split && p.reclaim_fd >= 0) /* the CPU before the pager's: a vCPU's, with two L1 CPUs */
		p.reclaim_cpu = ncpu > 1 ? ncpu - 2 : 0;
	for (int k = 0; k < nspin; k++) {
		slice_first[k] = arm_slice(k, nspin, first, n, &sp[k]);
		sp[k].cpu = k % vcpu_cpus;
		p.mb[k] = C.vm.vcpu[k].mb;
	}
	long long f0 = guest_faults(&C.vm), x0, i0, x1, i1;
	vcpu_stats(nspin, &x0, &i0);
	double t0 = elapsed();
	pthread_t pager, reclaimer;
	if (pthread_create(&pager, NULL, pager_main, &p) ||
	    (p.reclaim_cpu >= 0 && pthread_create(&reclaimer, NULL, reclaimer_main, &p)))
		infra("race-pageout: pthread_create: %s", strerror(errno));
	for (int k = 1; k < nspin; k++)
		if (pthread_create(&sp[k].th, NULL, spinner_main, &sp[k]))
			infra("race-pageout: pthread_create: %s", strerror(errno));
	spinner_main(&sp[0]);
	for (int k = 1; k < nspin; k++)
		pthread_join(sp[k].th, NULL);
	pthread_join(pager, NULL);
	if (p.reclaim_cpu >= 0)
		pthread_join(reclaimer, NULL);
	if (p.reclaim_fd >= 0)
		close(p.reclaim_fd);
	long long f1 = guest_faults(&C.vm);
	vcpu_stats(nspin, &x1, &i1);
	uint64_t sweeps = 0;
	for (int k = 0; k < nspin; k++) {
		uint64_t s = C.vm.vcpu[k].mb->published;
		for (uint64_t j = 0; j < sp[k].n; j++)
			C.gen[slice_first[k] + j] += s;
		C.written += sp[k].n * s;
		sweeps += s;
	}
	C.pageouts += p.pageouts;
	printf("@@MICRO {\"ev\":\"race\",\"chor\":\"%s\",\"round\":%llu,\"first_gfn\":%llu,\"npages\":%llu,"
	       "\"spinning\":%d,\"sweeps\":%llu,\"pageouts\":%llu,\"overlapped\":%llu,\"reclaims\":%llu,"
	       "\"reclaim_errors\":%llu,\"faults\":%lld,\"exits\":%lld,\"irq_exits\":%lld,\"vcpu_cpu\":%d,"
	       "\"pager_cpu\":%d,\"reclaim_cpu\":%d,\"cpus\":%d,\"ms\":%.1f,\"t\":%.3f}\n",
	       C.chor, (unsigned long long)C.round, (unsigned long long)(DATA_GPA / PAGE + first),
	       (unsigned long long)n, nspin, (unsigned long long)sweeps, (unsigned long long)p.pageouts,
	       (unsigned long long)p.overlapped, (unsigned long long)p.reclaims, (unsigned long long)p.reclaim_errors,
	       f0 < 0 || f1 < 0 ? -1 : f1 - f0, x0 < 0 || x1 < 0 ? -1 : x1 - x0, i0 < 0 || i1 < 0 ? -1 : i1 - i0,
	       sp[0].cpu, p.cpu, p.reclaim_cpu, ncpu, (elapsed() - t0) * 1000, elapsed());
}

void chor_race_pageout(uint64_t first, uint64_t n)
{
	uint64_t *idx = malloc(n * sizeof(*idx));
	if (!idx || n > MAX_ENTRIES)
		infra("race-pageout: a batch of %llu pages (at most %llu)", (unsigned long long)n,
		      (unsigned long long)MAX_ENTRIES);
	for (uint64_t k = 0; k < n; k++)
		idx[k] = first + k;
	guest_write(idx, n, first, n); /* generation g, every page present and mapped */
	run_race(first, n);
	host_verify(first, n);
	guest_verify("guest-view-after-race", idx, n, first, n);
	host_pageout(first, n);
	guest_verify("verify-after-pageout", idx, n, first, n);
	free(idx);
}
