/*
 * microvm: shared definitions of the micro-guest VMM (host side) and its guest code (guest.c).
 * See microvm.c for the build command and the overall design.
 */
#ifndef MICROVM_H
#define MICROVM_H

#include <stddef.h>
#include <stdint.h>

#define PAGE 4096ULL
#define MAGIC 0x4c45444745525047ULL /* "LEDGERPG": the ledger's page format (guest-images/ledger/ledger.c) */
#define HDR_WORDS 5
#define CRC_OFF (PAGE - 8)

/* Guest physical layout of the small slot (slot 0, GPA 0, mlocked) and of the data slot (slot 1). */
#define LOW_SIZE 0x100000ULL      /* 1 MiB */
#define GPA_PML4 0x1000ULL
#define GPA_PDPT 0x2000ULL
#define GPA_PD0 0x3000ULL         /* GiB 0: the small slot */
#define GPA_PD_DATA 0x4000ULL     /* GiB 4..7: the data slot, one PD page per GiB */
#define MAX_DATA_GIB 4
#define GPA_CRC_TABLE 0x8000ULL   /* 8 x 256 uint32 slice-by-8 table, 8 KiB */
#define GPA_CODE 0x10000ULL       /* guest code, at most 64 KiB */
#define CODE_MAX 0x10000ULL
#define GPA_STACKS 0x20000ULL     /* one 16 KiB stack per vCPU */
#define STACK_SIZE 0x4000ULL
#define GPA_MAILBOX 0x40000ULL    /* one page per vCPU */
#define GPA_ENTRIES 0x80000ULL    /* one 64 KiB entry array per vCPU */
#define ENTRIES_SIZE 0x10000ULL
#define MAX_VCPUS 8
#define DATA_GPA 0x100000000ULL   /* gfn 0x100000: the Linux L2's data DIMM range, same trace oracle range */
#define IO_PORT 0x10              /* the guest's `out` to this port is its "done" call (KVM_EXIT_IO) */

enum guest_op { OP_NONE = 0, OP_WRITE = 1, OP_VERIFY = 2, OP_READ = 3, OP_FILL = 4, OP_SPIN = 5 };
#define FILL_WORD 0x4d4943524f564d21ULL /* OP_FILL's content: the same in every page, so KSM can merge them */
enum verdict { V_GOOD = 0, V_STALE = 1, V_ZERO = 2, V_CORRUPT = 3 };

struct mailbox { /* written by the VMM before each command; `bad` is written by the guest */
	uint64_t op, n, seed, hw_crc, crc_table, data_gpa, entries, bad, done;
	/* OP_SPIN (race.c): the guest rewrites its pages sweep after sweep without an exit, generation gen + s in
	 * sweep s, publishes each completed sweep, and returns after the sweep in which it saw `stop` (set by the
	 * VMM's pager thread from another L1 CPU) or after sweep `max_sweeps` */
	uint64_t stop, published, max_sweeps;
};

struct entry { /* one page of a command: index and generation in; verdict, found generation, header gfn out */
	uint64_t index, gen, found, verdict, hdr_gfn;
};

#define MAX_ENTRIES (ENTRIES_SIZE / sizeof(struct entry))

struct page_hdr {
	uint64_t magic, index, generation, seed, gfn;
};

/* Guest code (guest.c), placed in section guest_text and copied to GPA_CODE; the page functions are also
 * called by the VMM on its own mapping (the self-test's old copies), so guest and host share one format. */
extern char __start_guest_text[], __stop_guest_text[];
void guest_main(struct mailbox *mb);
void page_write(uint8_t *p, uint64_t index, uint64_t gen, uint64_t seed, uint64_t gfn, uint64_t hw_crc,
		const uint32_t *table);
int page_classify(const uint8_t *p, uint64_t index, uint64_t want, uint64_t seed, uint64_t hw_crc,
		  const uint32_t *table, uint64_t *found);

#endif
