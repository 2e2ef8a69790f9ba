/*
 * microvm, host side: the VM (kvm.c), the data region and host steps (host.c), the guest commands and the
 * verdict output (microvm.c), the choreographies (chor.c).
 */
#ifndef VMM_H
#define VMM_H

#include <stdint.h>

#include "microvm.h"

struct vcpu {
	int fd, stats_fd;
	long pf_fixed_off, exits_off, irq_exits_off;
	struct kvm_run *run;
	struct mailbox *mb;       /* in the small slot */
	struct entry *entries;    /* in the small slot */
};

struct vm {
	int kvm_fd, vm_fd, nvcpus;
	uint8_t *low, *data;
	uint64_t data_bytes, seed, hw_crc;
	struct vcpu vcpu[MAX_VCPUS];
};

enum backend { B_ANON, B_THP, B_MEMFD, B_FILE };

struct opts {
	uint64_t pages, rounds, seed, batch, selftest, race_ms;
	int vcpus, backend, race_split;
	const char *file;
	int chors[16], nchors;
};

/* The run's state.  gen[i] is the generation page i must hold: the VMM's, never in guest memory. */
struct ctx {
	struct opts o;
	struct vm vm;
	uint8_t *data;
	uint64_t *gen;
	uint8_t *seen_swapped;    /* per page: pagemap showed it swapped out and it has not been seen back yet */
	uint8_t *dirty_expect;    /* per page: written since the last dirty-log harvest */
	int dirty_logging, pagemap_fd;
	/* the current batch */
	const char *chor;
	uint64_t round;
	int vcpu;
	/* counts */
	uint64_t written, verified, stale, zero, corrupt, bad_lines;
	uint64_t pageouts, pages_out, pages_in, dirty_log_missing, planted;
	double writeback_wait_s;
	uint32_t crc_table[8 * 256];
};

extern struct ctx C;

/* microvm.c */
__attribute__((noreturn, format(printf, 1, 2))) void infra(const char *fmt, ...);
double elapsed(void);

/* kvm.c */
void vm_create(struct vm *vm, int nvcpus, uint8_t *data, uint64_t data_bytes, const uint32_t *crc_table);
void set_data_slot(struct vm *vm, uint32_t flags);
uint64_t vcpu_run(struct vm *vm, int id, int op, uint64_t n);
uint64_t get_rip(struct vcpu *v);
void get_dirty_log(struct vm *vm, uint64_t *bitmap);
long stats_offset(int fd, const char *name);
long long guest_faults(struct vm *vm);
long long vcpu_stat(struct vcpu *v, long off);

/* host.c: the data region and the host's steps on a range of pages [first, first + n) */
uint8_t *data_map(const struct opts *o);
uint64_t pfn_of(uint64_t i);
void step_log(const char *step, uint64_t first, uint64_t n);
void host_pageout(uint64_t first, uint64_t n);
void host_wait_writeback(void);
void host_read(uint64_t first, uint64_t n);
void host_dontneed(uint64_t first, uint64_t n);
void host_collapse(uint64_t first, uint64_t n);
void host_split(uint64_t first, uint64_t n, uint64_t out);
void host_ksm_merge(uint64_t first, uint64_t n);
void host_ksm_unmerge(uint64_t first, uint64_t n);
void host_plant_old_copies(const uint64_t *idx, uint64_t n);
void dirty_harvest(uint64_t first, uint64_t n);

/* microvm.c: guest commands on a list of page indices (chunked to the entry array) */
void guest_write(const uint64_t *idx, uint64_t n, uint64_t first, uint64_t span);
void guest_read(const uint64_t *idx, uint64_t n, uint64_t first, uint64_t span);
void guest_fill(const uint64_t *idx, uint64_t n, uint64_t first, uint64_t span);
void guest_verify(const char *step, const uint64_t *idx, uint64_t n, uint64_t first, uint64_t span);
void report_bad_entries(const char *step, const struct entry *e, uint64_t m);

/* race.c: the concurrent choreography (a spinning vCPU on one L1 CPU, the pager on another) */
void chor_race_pageout(uint64_t first, uint64_t n);

/* chor.c */
struct chor {
	const char *name, *window;
	void (*run)(uint64_t first, uint64_t n);
	uint64_t unit;   /* pages and batch must be multiples of this */
	int backend;     /* -1: any backend */
	int dirty_log;   /* runs with KVM_MEM_LOG_DIRTY_PAGES on the data slot */
};
extern const struct chor CHORS[];
extern const int NCHORS;
int chor_find(const char *name);

#endif
