/*
 * The VM: /dev/kvm, two memslots, vCPUs in 64-bit long mode with paging on, the command channel (mailbox +
 * KVM_EXIT_IO), dirty logging and the vCPU's pf_fixed statistic.  In the style of the KVM selftests' kvm_util.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "vmm.h"

#define PTE_P 0x1ULL
#define PTE_RW 0x2ULL
#define PTE_A 0x20ULL
#define PTE_D 0x40ULL
#define PTE_PS 0x80ULL

static void kvm_ioctl(int fd, unsigned long req, void *arg, const char *what)
{
	while (ioctl(fd, req, arg) < 0) {
		if (errno != EINTR)
			infra("%s: %s", what, strerror(errno));
	}
}

/* Identity map with 2 MiB guest pages: GiB 0 (the small slot) and GiB 4.. (the data slot).  Accessed and dirty
 * bits preset, so the guest's page walks never write its page tables. */
static void build_page_tables(uint8_t *low, uint64_t data_bytes)
{
	uint64_t *pml4 = (uint64_t *)(low + GPA_PML4), *pdpt = (uint64_t *)(low + GPA_PDPT);
	uint64_t *pd0 = (uint64_t *)(low + GPA_PD0);
	pml4[0] = GPA_PDPT | PTE_P | PTE_RW | PTE_A;
	pdpt[0] = GPA_PD0 | PTE_P | PTE_RW | PTE_A;
	pd0[0] = 0 | PTE_P | PTE_RW | PTE_A | PTE_D | PTE_PS;
	uint64_t gib = (data_bytes + (1ULL << 30) - 1) >> 30;
	for (uint64_t g = 0; g < gib; g++) {
		uint64_t *pd = (uint64_t *)(low + GPA_PD_DATA + g * PAGE);
		pdpt[(DATA_GPA >> 30) + g] = (GPA_PD_DATA + g * PAGE) | PTE_P | PTE_RW | PTE_A;
		for (int k = 0; k < 512; k++)
			pd[k] = (DATA_GPA + (g << 30) + ((uint64_t)k << 21)) | PTE_P | PTE_RW | PTE_A | PTE_D | PTE_PS;
	}
}

static void set_seg(struct kvm_segment *s, uint16_t sel, uint8_t type, int code)
{
	memset(s, 0, sizeof(*s));
	s->selector = sel;
	s->limit = 0xffffffff;
	s->type = type;
	s->present = 1;
	s->s = 1;
	s->g = 1;
	s->l = code;      /* 64-bit code segment */
	s->db = !code;
}

/* Long mode: CR0 = PE|MP|ET|NE|WP|AM|PG, CR4 = PAE|OSFXSR|OSXMMEXCPT, EFER = LME|LMA; no GDT/IDT in memory (a
 * guest exception triple-faults: KVM_EXIT_SHUTDOWN). */
static void setup_vcpu(struct vm *vm, int id, struct kvm_cpuid2 *cpuid)
{
	struct vcpu *v = &vm->vcpu[id];
	v->fd = ioctl(vm->vm_fd, KVM_CREATE_VCPU, id);
	if (v->fd < 0)
		infra("KVM_CREATE_VCPU %d: %s", id, strerror(errno));
	int sz = ioctl(vm->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	v->run = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED, v->fd, 0);
	if (sz <= 0 || v->run == MAP_FAILED)
		infra("mmap of kvm_run for vCPU %d: %s", id, strerror(errno));
	kvm_ioctl(v->fd, KVM_SET_CPUID2, cpuid, "KVM_SET_CPUID2");
	struct kvm_sregs sr;
	kvm_ioctl(v->fd, KVM_GET_SREGS, &sr, "KVM_GET_SREGS");
	set_seg(&sr.cs, 0x8, 11, 1);
	set_seg(&sr.ds, 0x10, 3, 0);
	sr.es = sr.fs = sr.gs = sr.ss = sr.ds;
	memset(&sr.tr, 0, sizeof(sr.tr));
	sr.tr.selector = 0x18;
	sr.tr.type = 11; /* busy 64-bit TSS */
	sr.tr.present = 1;
	sr.tr.limit = 0x67;
	sr.cr0 = 0x80050033;
	sr.cr3 = GPA_PML4;
	sr.cr4 = 0x20 | 0x200 | 0x400;
	sr.efer = 0x500;
	kvm_ioctl(v->fd, KVM_SET_SREGS, &sr, "KVM_SET_SREGS");
	struct kvm_regs r;
	memset(&r, 0, sizeof(r));
	r.rflags = 2;
	r.rip = GPA_CODE + ((uintptr_t)guest_main - (uintptr_t)__start_guest_text);
	r.rsp = GPA_STACKS + (id + 1) * STACK_SIZE - 8;
	r.rdi = GPA_MAILBOX + id * PAGE;
	kvm_ioctl(v->fd, KVM_SET_REGS, &r, "KVM_SET_REGS");
	v->mb = (struct mailbox *)(vm->low + GPA_MAILBOX + id * PAGE);
	v->entries = (struct entry *)(vm->low + GPA_ENTRIES + id * ENTRIES_SIZE);
	v->stats_fd = ioctl(v->fd, KVM_GET_STATS_FD, NULL);
	v->pf_fixed_off = stats_offset(v->stats_fd, "pf_fixed");
	v->exits_off = stats_offset(v->stats_fd, "exits");
	v->irq_exits_off = stats_offset(v->stats_fd, "irq_exits");
	vcpu_run(vm, id, OP_NONE, 0); /* to the guest's first `out`: ready */
}

void set_data_slot(struct vm *vm, uint32_t flags)
{
	struct kvm_userspace_memory_region r = {.slot = 1, .flags = flags, .guest_phys_addr = DATA_GPA,
						  .memory_size = vm->data_bytes, .userspace_addr = (uintptr_t)vm->data};
	kvm_ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &r, "KVM_SET_USER_MEMORY_REGION (data slot)");
}

void vm_create(struct vm *vm, int nvcpus, uint8_t *data, uint64_t data_bytes, const uint32_t *crc_table)
{
	vm->data = data;
	vm->data_bytes = data_bytes;
	vm->nvcpus = nvcpus;
	vm->kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (vm->kvm_fd < 0)
		infra("/dev/kvm: %s", strerror(errno));
	if (ioctl(vm->kvm_fd, KVM_GET_API_VERSION, 0) != KVM_API_VERSION)
		infra("KVM API version is not %d", KVM_API_VERSION);
	vm->vm_fd = ioctl(vm->kvm_fd, KVM_CREATE_VM, 0);
	if (vm->vm_fd < 0)
		infra("KVM_CREATE_VM: %s", strerror(errno));
	/* VMX without unrestricted guest needs a TSS area; harmless on SVM */
	kvm_ioctl(vm->vm_fd, KVM_SET_TSS_ADDR, (void *)0xfffbd000UL, "KVM_SET_TSS_ADDR");
	vm->low = mmap(NULL, LOW_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (vm->low == MAP_FAILED || mlock(vm->low, LOW_SIZE))
		infra("small slot: %s", strerror(errno));
	size_t code = __stop_guest_text - __start_guest_text;
	if (code > CODE_MAX)
		infra("guest code is %zu bytes, more than %llu", code, CODE_MAX);
	memcpy(vm->low + GPA_CODE, __start_guest_text, code);
	memcpy(vm->low + GPA_CRC_TABLE, crc_table, 8 * 256 * 4);
	build_page_tables(vm->low, data_bytes);
	struct kvm_userspace_memory_region r0 = {.slot = 0, .guest_phys_addr = 0, .memory_size = LOW_SIZE,
						   .userspace_addr = (uintptr_t)vm->low};
	kvm_ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &r0, "KVM_SET_USER_MEMORY_REGION (small slot)");
	set_data_slot(vm, 0);
	struct kvm_cpuid2 *cpuid = calloc(1, sizeof(*cpuid) + 256 * sizeof(struct kvm_cpuid_entry2));
	cpuid->nent = 256;
	kvm_ioctl(vm->kvm_fd, KVM_GET_SUPPORTED_CPUID, cpuid, "KVM_GET_SUPPORTED_CPUID");
	for (int id = 0; id < nvcpus; id++)
		setup_vcpu(vm, id, cpuid);
	free(cpuid);
}

static const char *exit_name(uint32_t r)
{
	switch (r) {
	case KVM_EXIT_SHUTDOWN: return "KVM_EXIT_SHUTDOWN (guest exception)";
	case KVM_EXIT_MMIO: return "KVM_EXIT_MMIO (access outside the memslots)";
	case KVM_EXIT_HLT: return "KVM_EXIT_HLT";
	case KVM_EXIT_FAIL_ENTRY: return "KVM_EXIT_FAIL_ENTRY";
	case KVM_EXIT_INTERNAL_ERROR: return "KVM_EXIT_INTERNAL_ERROR";
	default: return "an unexpected exit";
	}
}

/* Run one command on vCPU `id` over vcpu->entries[0..n): returns the number of bad pages the guest saw. */
uint64_t vcpu_run(struct vm *vm, int id, int op, uint64_t n)
{
	struct vcpu *v = &vm->vcpu[id];
	struct mailbox *mb = v->mb;
	mb->op = op;
	mb->n = n;
	mb->seed = vm->seed;
	mb->hw_crc = vm->hw_crc;
	mb->crc_table = GPA_CRC_TABLE;
	mb->data_gpa = DATA_GPA;
	mb->entries = GPA_ENTRIES + id * ENTRIES_SIZE;
	mb->bad = 0;
	uint64_t done = mb->done;
	while (ioctl(v->fd, KVM_RUN, 0) < 0) {
		if (errno != EINTR && errno != EAGAIN)
			infra("KVM_RUN on vCPU %d: %s", id, strerror(errno));
	}
	struct kvm_run *run = v->run;
	if (run->exit_reason != KVM_EXIT_IO || run->io.port != IO_PORT || run->io.direction != KVM_EXIT_IO_OUT)
		infra("vCPU %d, command %d: %s (exit reason %u, rip in guest code at +0x%llx)", id, op,
		      exit_name(run->exit_reason), run->exit_reason, get_rip(v) - GPA_CODE);
	if (op != OP_NONE && mb->done != done + 1)
		infra("vCPU %d: the guest did not complete command %d", id, op);
	return mb->bad;
}

uint64_t get_rip(struct vcpu *v)
{
	struct kvm_regs r;
	return ioctl(v->fd, KVM_GET_REGS, &r) ? 0 : r.rip;
}

/* KVM_GET_DIRTY_LOG of the data slot into `bitmap` (one bit per page; the call also clears KVM's log). */
void get_dirty_log(struct vm *vm, uint64_t *bitmap)
{
	struct kvm_dirty_log d = {.slot = 1, .dirty_bitmap = bitmap};
	kvm_ioctl(vm->vm_fd, KVM_GET_DIRTY_LOG, &d, "KVM_GET_DIRTY_LOG");
}

/* Offset of a named u64 statistic in the binary stats file (KVM_GET_STATS_FD), or -1. */
long stats_offset(int fd, const char *name)
{
	struct kvm_stats_header h;
	if (fd < 0 || pread(fd, &h, sizeof(h), 0) != sizeof(h))
		return -1;
	size_t dsz = sizeof(struct kvm_stats_desc) + h.name_size;
	char *buf = calloc(h.num_desc, dsz);
	long off = -1;
	if (buf && pread(fd, buf, h.num_desc * dsz, h.desc_offset) == (ssize_t)(h.num_desc * dsz)) {
		for (uint32_t k = 0; k < h.num_desc; k++) {
			struct kvm_stats_desc *d = (struct kvm_stats_desc *)(buf + k * dsz);
			if (!strcmp(d->name, name) && d->size == 1)
				off = h.data_offset + d->offset;
		}
	}
	free(buf);
	return off;
}

/* One u64 statistic of a vCPU by its offset (stats_offset), or -1. */
long long vcpu_stat(struct vcpu *v, long off)
{
	uint64_t val;
	if (off < 0 || pread(v->stats_fd, &val, 8, off) != 8)
		return -1;
	return (long long)val;
}

/* Sum of pf_fixed over the vCPUs (faults KVM fixed by installing an SPTE), or -1 when unavailable. */
long long guest_faults(struct vm *vm)
{
	long long sum = 0;
	for (int id = 0; id < vm->nvcpus; id++) {
		uint64_t val;
		struct vcpu *v = &vm->vcpu[id];
		if (v->pf_fixed_off < 0 || pread(v->stats_fd, &val, 8, v->pf_fixed_off) != 8)
			return -1;
		sum += val;
	}
	return sum;
}
